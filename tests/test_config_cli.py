"""``pyaxvisor config check|generate`` and ``pyaxvisor run FILE.toml`` as a user runs them:
in a subprocess, judged by exit status, standard output and standard error (one
``pyaxvisor: ...`` line on an error, never a traceback)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from pyaxvisor.engine.kvm.probe import kvm_usable
from tests.guest_build import build

GUESTS = Path(str(resources.files("pyaxvisor.guests")))
SMP_ELF = GUESTS / "x86_64" / "smp.elf"
HELLO_BIN = GUESTS / "aarch64" / "hello.bin"
_kvm, _why = kvm_usable()
needs_kvm = pytest.mark.skipif(not _kvm, reason=f"KVM not usable: {_why}")

AARCH64_FILE = """\
[pyaxvisor]
arch = "aarch64"

[base]
id = 1
name = "pic"
vm_type = 1
cpu_num = 1

[kernel]
entry_point = 0x8008_0000
kernel_path = "guest.bin"
kernel_load_addr = 0x8008_0000
memory_regions = [[0x8000_0000, 0x1000_0000, 0x7, 0]]

[devices]
emu_devices = []
passthrough_devices = []
"""

X86_FILE = f"""\
[base]
id = 2
name = "smp"
vm_type = 1
cpu_num = 1

[kernel]
entry_point = 0x10_0000
kernel_path = "{SMP_ELF}"
kernel_load_addr = 0x10_0000
cmdline = "hello from the config"
memory_regions = [[0, 0x1000_0000, 0x7, 0]]

[devices]
emu_devices = [["isa-debug-exit", 0xf4, 4, 0, 0, []]]
passthrough_devices = []
"""


def pyaxvisor(*args: str | Path, cwd: Path | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", *map(str, args)],
                       capture_output=True, text=True, timeout=timeout, cwd=cwd,
                       stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def fails(p: subprocess.CompletedProcess[str], message: str, status: int = 1) -> None:
    assert (p.returncode, p.stdout, p.stderr) == (status, "", f"pyaxvisor: {message}\n")


@pytest.fixture
def arm_file(tmp_path: Path) -> Path:
    (tmp_path / "guest.bin").write_bytes(build("aarch64", "hello_pic", 0x8008_0000))
    path = tmp_path / "vm.toml"
    path.write_text(AARCH64_FILE)
    return path


# -- config check ------------------------------------------------------------------------------

def test_check_prints_the_vm(arm_file):
    p = pyaxvisor("config", "check", arm_file)
    assert (p.returncode, p.stderr) == (0, "")
    lines = p.stdout.splitlines()
    assert lines[0] == f"{arm_file}: aarch64 VM 1 'pic' (RTOS) on the virt board"
    assert "  [0x80000000, 0x90000000) 256 MiB rwx--- RAM (alloc)" in lines
    assert f"  kernel  {arm_file.parent / 'guest.bin'}, at 0x80080000" in lines
    assert "interrupt mode: no_irq" in lines


@pytest.mark.parametrize(("text", "problem"), [
    (AARCH64_FILE.replace("cpu_num = 1", 'cpu_num = "1"'),
     '[base] cpu_num: expected an integer, found a string ("1")'),
    (AARCH64_FILE.replace("[devices]", "[device]"),
     "[device]: unknown table (known: [base], [kernel], [devices], [pyaxvisor])"),
    (AARCH64_FILE.replace("0x7, 0]]", "0x7, 0]"),
     "TOML syntax error: Unclosed array (at line 16, column 1)"),
    (AARCH64_FILE + 'disk_path = "disk.img"\n',
     "[devices] disk_path: unknown key (known: emu_devices, passthrough_devices, "
     "passthrough_addresses, passthrough_ports, excluded_devices, interrupt_mode, "
     "address_space_policy)"),
], ids=["kind", "table", "syntax", "key"])
def test_check_reports_a_bad_file_in_one_line(arm_file, text, problem):
    arm_file.write_text(text)
    fails(pyaxvisor("config", "check", arm_file), f"{arm_file}: {problem}")


def test_check_reports_missing_files_and_directories(tmp_path):
    fails(pyaxvisor("config", "check", tmp_path / "none.toml"),
          f"{tmp_path / 'none.toml'}: no such file")
    fails(pyaxvisor("config", "check", tmp_path),
          f"{tmp_path}: is a directory, not a VM config file")


def test_check_takes_the_architecture_and_machine_from_the_command_line(tmp_path):
    path = tmp_path / "x86.toml"
    path.write_text(X86_FILE.replace(str(SMP_ELF), "not-here.elf"))  # arch not guessable
    p = pyaxvisor("config", "check", path, "--arch", "x86_64")
    assert p.returncode == 0 and p.stdout.startswith(f"{path}: x86_64 VM 2 'smp' (RTOS) on "
                                                     "the pc board\n")
    p = pyaxvisor("config", "check", path, "-M", "q35")
    assert p.returncode == 0 and "on the q35 board" in p.stdout
    fails(pyaxvisor("config", "check", path),
          f"{path}: [kernel] kernel_path: {tmp_path / 'not-here.elf'}: No such file or "
          'directory (pyaxvisor reads it to tell the guest architecture; or add [pyaxvisor] '
          'arch = "aarch64" (or riscv64, x86_64) or pass --arch)')


# -- config generate ---------------------------------------------------------------------------

def test_generate_writes_a_file_that_check_accepts(tmp_path):
    p = pyaxvisor("config", "generate", "--arch", "aarch64", "--kernel", HELLO_BIN, "-m", "1G",
                  "--smp", "2", "--append", 'console=ttyAMA0 "x"')
    assert (p.returncode, p.stderr) == (0, "")
    doc = tomllib.loads(p.stdout)
    assert doc["pyaxvisor"] == {"arch": "aarch64", "machine": "virt"}
    assert doc["base"] == {"id": 1, "name": "hello.bin", "vm_type": 1, "cpu_num": 2,
                           "phys_cpu_ids": [0, 1]}
    assert doc["kernel"] == {"entry_point": 0x4008_0000, "kernel_path": str(HELLO_BIN),
                             "kernel_load_addr": 0x4008_0000,
                             "cmdline": 'console=ttyAMA0 "x"',
                             "memory_regions": [[0x4000_0000, 1 << 30, 7, 0]]}
    out = tmp_path / "gen.toml"
    out.write_text(p.stdout)
    checked = pyaxvisor("config", "check", out)
    assert checked.returncode == 0
    assert "cmdline: 'console=ttyAMA0 \"x\"'" in checked.stdout


def test_generate_to_a_file_keeps_an_existing_one_unless_forced(tmp_path):
    out = tmp_path / "vm.toml"
    args = ("config", "generate", "--arch", "x86_64", "--kernel", SMP_ELF, "-o", out)
    p = pyaxvisor(*args)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", f"wrote {out}\n")
    assert tomllib.loads(out.read_text())["kernel"]["kernel_load_addr"] == 0x10_0000
    out.write_text("mine")
    fails(pyaxvisor(*args), f"{out} exists; pass --force to overwrite it")
    assert out.read_text() == "mine"
    assert pyaxvisor(*args, "--force").returncode == 0
    assert out.read_text().startswith("# AxVisor VM config")


@pytest.mark.parametrize(("args", "message"), [
    (("-m", "lots"), "cannot parse memory size 'lots': use e.g. 512M, 1G or 256"),
    (("--smp", "0"), "cannot parse -smp '0': cpus must be a count such as 2"),
    (("--smp", "9"), "a virt VM has 1..8 CPUs, not 9"),
    (("-M", "pc"), "machine 'pc' is not supported: only 'virt'"),
    (("--kernel", "/nonexistent/Image"), "kernel /nonexistent/Image: no such file"),
])
def test_generate_reports_bad_arguments_in_one_line(args, message):
    base = ["config", "generate", "--arch", "aarch64"]
    if "--kernel" not in args:
        base += ["--kernel", str(HELLO_BIN)]
    fails(pyaxvisor(*base, *args), message)


def test_loading_the_command_line_does_not_load_the_config_modules():
    code = ("import sys, pyaxvisor.cli; "
            "print([m for m in sys.modules if m.startswith('pyaxvisor.axvmconfig')])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout == "[]\n"


# -- run FILE.toml -----------------------------------------------------------------------------

def test_run_boots_an_aarch64_guest_with_ram_at_2_gib(arm_file):
    p = pyaxvisor("run", arm_file)
    assert "hello from a guest running at 0x0000000080080000" in p.stdout, p.stderr
    assert p.returncode == 0


def test_run_applies_command_line_overrides_to_the_file(arm_file):
    # the bundled guest (position independent) at the file's load address, on 2 vCPUs
    p = pyaxvisor("run", arm_file, "-smp", "2", "-m", "512M", "--kernel", HELLO_BIN,
                  "-append", "ignored")
    assert "Hello from the pyaxvisor AArch64 guest on CPU 0" in p.stdout, p.stderr
    assert "CPU 1 is up (PSCI CPU_ON)" in p.stdout
    assert p.returncode == 0
    fails(pyaxvisor("run", arm_file, "--kernel", "/nonexistent/kernel"),
          "kernel /nonexistent/kernel: no such file", status=4)


def test_run_reports_a_bad_file_in_one_line(arm_file):
    arm_file.write_text(AARCH64_FILE.replace("0x7, 0]]", "0x17, 0]]"))
    fails(pyaxvisor("run", arm_file),
          f"{arm_file}: [kernel] memory_regions: no RAM: every region has the device flag (16)",
          status=4)


@pytest.mark.kvm
@needs_kvm
def test_run_boots_the_x86_multiboot_kernel_from_a_file(tmp_path):
    path = tmp_path / "x86.toml"
    path.write_text(X86_FILE)
    p = pyaxvisor("run", path)
    assert "pyaxvisor x86 test kernel" in p.stdout, p.stderr
    assert "cmdline: hello from the config" in p.stdout
    assert "cpus=1 ram=256 MiB" in p.stdout
    assert p.returncode == (0x10 << 1) | 1


@pytest.mark.kvm
@needs_kvm
def test_run_applies_command_line_overrides_to_an_x86_file(tmp_path):
    path = tmp_path / "x86.toml"
    path.write_text(X86_FILE)
    other = tmp_path / "other.elf"
    shutil.copy(SMP_ELF, other)
    p = pyaxvisor("run", path, "-append", "exit=7 from the command line", "-smp", "2",
                  "-m", "512M", "--kernel", other)
    assert "cmdline: exit=7 from the command line" in p.stdout, p.stderr
    assert "cpus=2 ram=512 MiB" in p.stdout
    assert "all 2 CPUs up" in p.stdout
    assert p.returncode == (7 << 1) | 1

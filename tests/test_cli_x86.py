"""``pyaxvisor run --arch x86_64`` end to end: the bundled Multiboot SMP test kernel
(``pyaxvisor/guests/x86_64``), QEMU's spellings, exit statuses, and bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from pyaxvisor.engine.kvm.probe import kvm_usable
from tests.guest_build import build

_ok, _reason = kvm_usable()
pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not _ok, reason=f"KVM not usable: {_reason}")]

GUESTS = Path(str(resources.files("pyaxvisor.guests").joinpath("x86_64")))
SMP_ELF = str(GUESTS / "smp.elf")
SMP_BIN = str(GUESTS / "smp.bin")
DEBUG_EXIT = ("-device", "isa-debug-exit,iobase=0xf4,iosize=0x4")


def pyaxvisor(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyaxvisor.cli", "run", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_bundled_guest_brings_up_two_cpus_and_reports_through_debug_exit():
    p = pyaxvisor("--arch", "x86_64")
    assert "pyaxvisor x86 test kernel" in p.stdout
    assert "fw_cfg: QEMU id=1 cpus=2 ram=256 MiB" in p.stdout
    assert "CPU 1 up" in p.stdout
    assert "all 2 CPUs up" in p.stdout
    assert p.returncode == (0x10 << 1) | 1, p.stderr


@pytest.mark.parametrize("image", [SMP_ELF, SMP_BIN], ids=["multiboot-elf", "multiboot-flat"])
def test_qemu_command_line_runs_unchanged(image):
    p = pyaxvisor("-M", "microvm", "-enable-kvm", "-cpu", "host", "-m", "64M", "-smp", "4",
                  "-nographic", "-no-reboot", "-serial", "stdio", "-kernel", image,
                  "-append", "exit=5 hello", *DEBUG_EXIT)
    assert "fw_cfg: QEMU id=1 cpus=4 ram=64 MiB" in p.stdout, p.stdout + p.stderr
    assert "cmdline: exit=5 hello" in p.stdout
    assert "multiboot cmdline: exit=5 hello" in p.stdout
    for cpu in (1, 2, 3):
        assert f"CPU {cpu} up" in p.stdout
    assert "all 4 CPUs up" in p.stdout
    assert p.returncode == (5 << 1) | 1


def test_stats_table_counts_port_exits():
    p = pyaxvisor("-kernel", SMP_ELF, "-smp", "2", *DEBUG_EXIT, "--stats", "--arch", "x86_64")
    assert p.returncode == 0x21
    rows = {line.split()[0]: line.split() for line in p.stderr.splitlines() if line.strip()}
    assert int(rows["IoWrite"][1]) >= len("pyaxvisor x86 test kernel\n")
    assert int(rows["IoRead"][1]) > 0
    assert rows["IoWrite"][-1] == "ms"


def test_a_guest_that_spins_is_stopped_by_the_timeout():
    p = pyaxvisor("--arch", "x86_64", "-kernel", SMP_ELF, "-append", "spin=1",
                  "--timeout", "1.5", *DEBUG_EXIT)
    assert p.returncode == 124
    assert "pyaxvisor x86 test kernel" in p.stdout
    assert "timeout: the guest was still running after 1.5 s and was stopped" in p.stderr
    assert "vCPU 0: " in p.stderr and "protected mode" in p.stderr


def test_a_triple_fault_is_a_reset_that_ends_the_run():
    p = pyaxvisor("--arch", "x86_64", "-kernel", SMP_ELF, "-append", "triple=1", *DEBUG_EXIT)
    # said to be a triple fault, where and in which mode; the status stays a reset's
    assert re.search(r"pyaxvisor: the guest was reset: triple fault on vCPU 0 \(protected "
                     r"mode, CS:RIP 0x[0-9a-f]+:0x[0-9a-f]+\); exiting", p.stderr), p.stderr
    assert "asked for a reset" not in p.stderr
    assert p.returncode == 0


def test_acpi_tables_are_found_as_an_os_finds_them_and_s5_powers_off():
    p = pyaxvisor("--arch", "x86_64", "-kernel", SMP_ELF, "-append", "acpi=1", "-smp", "2")
    out = p.stdout.replace("\r\n", "\n")
    assert re.search(r"^acpi: RSDP at 0x000e[0-9a-f]{4} revision 2", out, re.M), out
    for line in ("acpi: XSDT at", "acpi: FACP at", "acpi: DSDT at", "acpi: APIC at",
                 "acpi: CPU uid 0 APIC ID 0 enabled", "acpi: CPU uid 1 APIC ID 1 enabled",
                 "acpi: IOAPIC ID 2 at 0xfec00000 GSI base 0",
                 "acpi: PNP0501 _CRS io 0x000003f8 length 8 irq 4",
                 "acpi: MADT lists 2 enabled CPUs", "acpi: ok", "all 2 CPUs up"):
        assert line in out, (line, out)
    # the SCI's and the virtio-mmio transports' lines: level triggered, active high
    overrides = re.findall(r"^acpi: override bus 0 IRQ (\d+) -> GSI (\d+) flags 0x0000000d$",
                           out, re.M)
    assert overrides == [(str(i), str(i)) for i in (9, 5, 6, 7, 8, 13, 10, 11, 12)], out
    assert "checksum ok" in out and "failed" not in out
    # the PM timer runs (3.579545 MHz), and S5 through PM1a_CNT powers the machine off
    ticks = int(re.search(r"acpi: PM timer counts: (\d+) ticks", out).group(1))
    assert ticks > 0
    assert "acpi: S5 power-off: PM1a_CNT 0x00000604 = 0x00002000" in out
    assert p.returncode == 0 and "reset" not in p.stderr


def test_raw_flat_binary_runs_in_protected_mode(tmp_path):
    path = tmp_path / "ports.bin"
    path.write_bytes(build("x86_64", "ports", 0x10_0000))
    p = pyaxvisor("--arch", "x86_64", "-kernel", str(path))
    assert p.stdout == "ports ok\n"
    assert p.returncode == 0


# -- bad input --------------------------------------------------------------------------------

def _truncated_bzimage(tmp_path: Path) -> str:
    image = bytearray(0x2000)
    image[0x1F1] = 1  # setup_sects
    image[0x1FE:0x200] = b"\x55\xaa"
    image[0x202:0x206] = b"HdrS"
    image[0x206:0x208] = (0x20F).to_bytes(2, "little")
    image[0x211] = 0x01  # LOADED_HIGH
    image[0x1F4:0x1F8] = (0x10000).to_bytes(4, "little")  # syssize: 1 MiB of kernel
    image[0x236:0x238] = (0x1).to_bytes(2, "little")  # XLF_KERNEL_64
    path = tmp_path / "bzImage"
    path.write_bytes(bytes(image))
    return str(path)


def test_truncated_bzimage_is_a_clear_error(tmp_path):
    path = _truncated_bzimage(tmp_path)
    p = pyaxvisor("--arch", "x86_64", "-kernel", path)
    assert p.returncode == 4
    assert path in p.stderr and "truncated" in p.stderr
    assert "Traceback" not in p.stderr


def test_elf_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "arm.elf"
    elf = bytearray(64)
    elf[:4] = b"\x7fELF"
    elf[4], elf[5], elf[6] = 2, 1, 1  # 64-bit, little-endian, version 1
    elf[16:18] = (2).to_bytes(2, "little")  # ET_EXEC
    elf[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64
    elf[20:24] = (1).to_bytes(4, "little")
    elf[52:54] = (64).to_bytes(2, "little")
    path.write_bytes(bytes(elf))
    p = pyaxvisor("--arch", "x86_64", "-kernel", str(path))
    assert p.returncode == 4
    assert str(path) in p.stderr and "AArch64" in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_initrd_is_a_clear_error(tmp_path):
    p = pyaxvisor("--arch", "x86_64", "-kernel", SMP_ELF, "-initrd", str(tmp_path / "nope"))
    assert p.returncode == 4
    assert f"initrd {tmp_path / 'nope'}: no such file" in p.stderr


@pytest.mark.parametrize("what", ["kernel", "initrd"])
def test_empty_image_file_is_a_clear_error(tmp_path, what):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    kernel = str(empty) if what == "kernel" else SMP_ELF
    extra = ("-initrd", str(empty)) if what == "initrd" else ()
    p = pyaxvisor("--arch", "x86_64", "-kernel", kernel, *extra)
    assert p.returncode == 4
    assert f"{what} {empty}: the file is empty" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize(("memory", "message"), [("5T", "more than this VM supports"),
                                                 ("1M", "less than the 16 MiB"),
                                                 ("lots", "memory size")])
def test_absurd_memory_sizes_are_refused(memory, message):
    p = pyaxvisor("--arch", "x86_64", "-m", memory)
    assert p.returncode in (4, 2)
    assert message in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("-device", "virtio-net"), "-device 'virtio-net' is not supported"),
    (("-device", "isa-debug-exit,iobase=zz"), "iobase='zz' is not a number"),
    (("-M", "virt"), "machine 'virt' is not supported for x86_64"),
    (("-bios", "/dev/null"), "-bios is not supported on x86_64"),
])
def test_bad_command_lines_are_usage_errors(args, message):
    p = pyaxvisor("--arch", "x86_64", *args)
    assert p.returncode == 2
    assert message in p.stderr

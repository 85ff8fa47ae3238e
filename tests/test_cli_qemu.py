"""QEMU's command line as QEMU-driven scripts and test runners use it: the
``pyaxvisor-system-ARCH`` commands, the options runners pass (``-accel``,
``-machine accel=``, ``-nodefaults``, ``-display none``, ``-name``, ...), the probes
(``-device help``, ``-machine help``), ``-global``, ``-smp`` topologies by QEMU's
rules, and the exit statuses a runner reads."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from pyaxvisor import __version__
from pyaxvisor.cli.qemu_args import (
    check_none,
    check_serial,
    choose_accel,
    parse_accel,
    parse_device,
    parse_global,
    parse_machine,
    parse_name,
)
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vm.config import DeviceSpec
from pyaxvisor.vm.result import STATUS, VmResult

_kvm, _why = kvm_usable()
kvm_only = pytest.mark.skipif(not _kvm, reason=f"KVM not usable: {_why}")

GUESTS = Path(str(resources.files("pyaxvisor.guests")))
HELLO = str(GUESTS / "aarch64" / "hello.bin")  # the bundled AArch64 guest, position independent
SMP_ELF = str(GUESTS / "x86_64" / "smp.elf")  # the bundled x86 Multiboot test kernel
HELLO_OUTPUT = ("Hello from the pyaxvisor AArch64 guest on CPU 0\n"
                "CPU 1 is up (PSCI CPU_ON)\n"
                "virtual timer interrupt 27 taken through the GICv2\n"
                "powering off (PSCI SYSTEM_OFF)\n")
DEBUG_EXIT_F4 = ("-device", "isa-debug-exit,iobase=0xf4,iosize=0x4")

# RISC-V: SBI legacy console_putchar "ok\n", then legacy shutdown (raw binary).
_RV_OK = [0x00100893,  # li a7, 1 (console_putchar)
          0x06F00513, 0x00000073,  # li a0, 'o'; ecall
          0x06B00513, 0x00000073,  # li a0, 'k'; ecall
          0x00A00513, 0x00000073,  # li a0, '\n'; ecall
          0x00800893, 0x00000073,  # li a7, 8 (shutdown); ecall
          0x0000006F]  # j .


def pyaxvisor(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", *args], capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def system(arch: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed ``pyaxvisor-system-ARCH`` command (a console script next to
    this Python)."""
    command = Path(sys.executable).parent / f"pyaxvisor-system-{arch}"
    assert command.exists(), f"{command} is not installed (pip install . installs it)"
    p = subprocess.run([str(command), *args], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def usage_error(p: subprocess.CompletedProcess[str], message: str) -> None:
    assert p.returncode == 2, p.stderr
    assert message in p.stderr, p.stderr


def riscv_ok(tmp_path: Path) -> str:
    path = tmp_path / "ok.bin"
    path.write_bytes(b"".join(word.to_bytes(4, "little") for word in _RV_OK))
    return str(path)


# -- pyaxvisor-system-ARCH -------------------------------------------------------------------

def test_system_aarch64_is_run_with_the_architecture_fixed():
    args = ("-M", "virt", "-kernel", HELLO, "-smp", "2", "-nographic")
    fixed = system("aarch64", *args)
    plain = pyaxvisor("run", "--arch", "aarch64", *args)
    assert fixed.returncode == plain.returncode == 0, fixed.stderr
    assert fixed.stdout.replace("\r\n", "\n") == plain.stdout.replace("\r\n", "\n") \
        == HELLO_OUTPUT


def test_system_riscv64_runs_a_riscv_kernel(tmp_path):
    p = system("riscv64", "-M", "virt", "-kernel", riscv_ok(tmp_path), "-nographic",
               "-accel", "tcg")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "ok\n"


@pytest.mark.kvm
@kvm_only
def test_system_x86_64_runs_a_qemu_test_runner_command_line():
    # a kvm-unit-tests style line: QEMU=pyaxvisor-system-x86_64
    p = system("x86_64", "-nodefaults", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4",
               "-vnc", "none", "-serial", "stdio", "-machine", "accel=kvm", "-kernel",
               SMP_ELF, "-smp", "2", "-append", "exit=5 from the runner", "-display", "none",
               "-monitor", "none", "-name", "unit-test", "-no-reboot", "-no-shutdown")
    assert "cmdline: exit=5 from the runner" in p.stdout, p.stdout + p.stderr
    assert "all 2 CPUs up" in p.stdout
    assert p.returncode == (5 << 1) | 1


@pytest.mark.parametrize("arch", ["x86_64", "aarch64", "riscv64"])
def test_system_commands_refuse_another_architecture_and_answer_version_and_help(arch):
    other = "aarch64" if arch != "aarch64" else "x86_64"
    usage_error(system(arch, "--arch", other),
                f"pyaxvisor-system-{arch} runs {arch} guests: --arch {other} is "
                f"pyaxvisor-system-{other}'s")
    for flag in ("-version", "--version"):
        p = system(arch, flag)
        assert p.returncode == 0
        assert p.stdout == (f"pyaxvisor-system-{arch} (pyaxvisor {__version__}): QEMU's "
                            f"command line for {arch} guests\n")
    p = system(arch, "-help")
    assert p.returncode == 0 and p.stdout.startswith(f"Usage: pyaxvisor-system-{arch} ")


def test_system_aarch64_refuses_a_machine_of_another_architecture():
    p = system("aarch64", "-M", "pc")
    usage_error(p, "machine 'pc' is not supported: only 'virt'")


# -- accelerators ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("-machine", "accel=tcg"), ("-accel", "tcg"),
                                  ("-M", "virt,accel=kvm:tcg"), ("-accel", "kvm", "-accel",
                                                                 "tcg,thread=single"),
                                  ("-M", "virt", "-machine", "accel=tcg,usb=off")])
def test_tcg_boards_take_tcg_however_it_is_asked_for(args):
    p = pyaxvisor("run", *args, "-kernel", HELLO, "-smp", "2")
    assert p.returncode == 0, p.stderr
    assert p.stdout.replace("\r\n", "\n") == HELLO_OUTPUT


@pytest.mark.parametrize(("args", "message"), [
    (("--arch", "aarch64", "-accel", "kvm"),
     "-accel kvm: the aarch64 virt board runs on tcg only (use --arch x86_64 "
     "(or pyaxvisor-system-x86_64) for KVM)"),
    (("--arch", "riscv64", "-machine", "accel=kvm"),
     "-accel kvm: the riscv64 virt board runs on tcg only"),
    (("--arch", "aarch64", "-enable-kvm"), "-accel kvm: the aarch64 virt board runs on tcg only"),
    (("--arch", "x86_64", "-accel", "tcg"),
     "-accel tcg: the x86_64 pc board runs on kvm only (pyaxvisor has no software x86 CPU)"),
    (("--arch", "x86_64", "-M", "q35,accel=tcg"), "the x86_64 pc board runs on kvm only"),
    (("-accel", "hvf"), "-accel hvf: pyaxvisor has no hvf accelerator"),
    (("-accel", "warp"), "unknown accelerator 'warp' (kvm, tcg)"),
    (("-accel", "tcg,thread=many"), "-accel tcg,thread=many: thread must be single|multi"),
    (("-accel", "kvm,dirty-ring-size=4096"), "kvm has no property 'dirty-ring-size' here"),
    (("-machine", "accel=kvm:"), "accel= lists accelerators separated by ':'"),
    # -machine properties the board does not have, or has otherwise
    (("-M", "virt,gic-version=3"), "-machine gic-version=3: the aarch64 board is gic-version=2"),
    (("-M", "virt,highmem=off"), "the aarch64 board has no property 'highmem'"),
    (("--arch", "x86_64", "-M", "pc,kernel-irqchip=off"),
     "-machine kernel-irqchip=off: the x86_64 board is kernel-irqchip=on"),
    (("--arch", "riscv64", "-M", "virt,gic-version=2"),
     "the riscv64 board has no property 'gic-version'"),
    (("-M", "virt,dtb-randomness=maybe"),
     "-machine dtb-randomness=maybe: the aarch64 board is dtb-randomness=on|off"),
    (("--arch", "riscv64", "-M", "virt,dtb-randomness=off"),
     "the riscv64 board has no property 'dtb-randomness'"),
    # runner options with values pyaxvisor cannot give
    (("-display", "gtk"), "-display 'gtk' is not supported: only -display none"),
    (("-vnc", ":0"), "-vnc ':0' is not supported: only -vnc none (there is no display)"),
    (("-monitor", "stdio"), "-monitor 'stdio' is not supported: only -monitor none"),
    (("-serial", "file:out.txt"), "-serial 'file:out.txt' is not supported: only stdio"),
    (("-name", "vm,colour=blue"), "-name 'vm,colour=blue': unknown property 'colour=blue'"),
    (("-name", ",process=x"), "-name ',process=x': no name"),
])
def test_what_pyaxvisor_cannot_honour_is_a_usage_error(args, message):
    """An impossible accelerator, a machine property the board has otherwise, a display."""
    usage_error(pyaxvisor("run", *args), message)


def test_accelerators_are_tried_in_order():
    assert choose_accel([], "kvm", "board") == "kvm"
    assert choose_accel(["tcg", "kvm"], "kvm", "board") == "kvm"
    assert choose_accel(["kvm", "tcg"], "tcg", "board") == "tcg"
    with pytest.raises(InvalidInput, match="-accel kvm: the b runs on tcg only"):
        choose_accel(["kvm", "kvm"], "tcg", "b")
    assert parse_accel("tcg,thread=multi,tb-size=256") == "tcg"
    assert parse_accel("kvm,kernel-irqchip=on") == "kvm"
    assert parse_accel("help") == "help"
    with pytest.raises(InvalidInput, match="kernel-irqchip must be on"):
        parse_accel("kvm,kernel-irqchip=split")


@pytest.mark.kvm
@kvm_only
def test_x86_takes_kvm_however_it_is_asked_for():
    for args in (("-enable-kvm",), ("-accel", "kvm"), ("-machine", "pc,accel=tcg:kvm"),
                 ("-accel", "tcg", "-accel", "kvm,kernel-irqchip=on")):
        p = pyaxvisor("run", "--arch", "x86_64", *args, "-kernel", SMP_ELF, "-append", "exit=3",
                      *DEBUG_EXIT_F4)
        assert p.returncode == (3 << 1) | 1, (args, p.stderr)


# -- -machine --------------------------------------------------------------------------------

def test_machine_options_merge_as_qemu_merges_them():
    m = parse_machine(["virt", "accel=kvm:tcg", "dump-guest-core=off,usb=off"])
    assert (m.type, m.accel, dict(m.props)) == ("virt", ("kvm", "tcg"),
                                                {"dump-guest-core": "off", "usb": "off"})
    assert parse_machine(["type=q35,accel=kvm", "pc"]).type == "pc"
    assert parse_machine(["accel=tcg"]).type is None
    assert parse_machine([]) == parse_machine(())
    with pytest.raises(InvalidInput, match="'oops' is not PROP=VALUE"):
        parse_machine(["virt,oops"])


def test_machine_help_lists_the_machines_and_cpu_help_the_models():
    p = pyaxvisor("run", "--arch", "x86_64", "-M", "help")
    assert p.returncode == 0
    assert p.stdout.splitlines()[0] == "Supported machines are:"
    assert [line.split()[0] for line in p.stdout.splitlines()[1:]] == \
        ["pc", "q35", "microvm", "isapc"]
    assert "(default)" in p.stdout.splitlines()[1]
    p = pyaxvisor("run", "-cpu", "help")
    assert (p.returncode, p.stdout) == (0, "Available CPUs:\n  cortex-a72\n  max\n  host\n")
    p = pyaxvisor("run", "--arch", "riscv64", "-accel", "help")
    assert (p.returncode, p.stdout) == (0, "Accelerators supported by the riscv64 virt "
                                           "board:\ntcg\n")


# -- -device help, -device, -global ------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["help", "?"])
def test_device_help_lists_what_the_board_offers_and_runs_nothing(spelling):
    p = pyaxvisor("run", "--arch", "x86_64", "-device", spelling)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    misc = lines.index("Misc devices:")
    assert lines[misc + 1] == ('name "isa-debug-exit", bus ISA, desc "a guest write of V ends '
                               'the run with status (V << 1) | 1"')
    assert '"virtio-blk-device"' in p.stdout  # (tests/test_virtio_x86.py)
    for arch in ("aarch64", "riscv64"):  # their virtio devices (tests/test_virtio_boards.py)
        p = pyaxvisor("run", "--arch", arch, "-device", spelling)
        assert p.returncode == 0 and '"virtio-blk-device"' in p.stdout
        assert '"isa-debug-exit"' not in p.stdout


def test_device_property_help_gives_qemus_defaults():
    p = pyaxvisor("run", "--arch", "x86_64", "-device", "isa-debug-exit,help")
    assert (p.returncode, p.stdout) == (0, "isa-debug-exit options:\n"
                                           "  iobase=<uint32>  (default: 0x501)\n"
                                           "  iosize=<uint32>  (default: 0x2)\n")
    usage_error(pyaxvisor("run", "--arch", "x86_64", "-device", "virtio-rng,help"),
                "-device 'virtio-rng' is not a device of the x86_64 pc board")


def test_isa_debug_exit_without_iobase_sits_at_qemus_default():
    assert parse_device("isa-debug-exit") == DeviceSpec("isa-debug-exit", 0x501, 2)
    assert parse_device("isa-debug-exit,iobase=0xf4,iosize=4") == \
        DeviceSpec("isa-debug-exit", 0xF4, 4)
    # -global sets the default of what -device leaves out
    defaults = {("isa-debug-exit", "iobase"): 0xF4}
    assert parse_device("isa-debug-exit", defaults) == DeviceSpec("isa-debug-exit", 0xF4, 2)
    assert parse_device("isa-debug-exit,iobase=0x80", defaults).base == 0x80
    p = pyaxvisor("run", "--help")
    assert "QEMU's default ports 0x501-0x502" in " ".join(p.stdout.split())


@pytest.mark.parametrize(("spec", "message"), [
    ("isa-debug-exit,iosize=3", "iosize=0x3: the device takes 1, 2 or 4 ports"),
    ("isa-debug-exit,iobase=0xffff,iosize=2", "iobase=0xffff: ports are 0..0xffff"),
    ("isa-debug-exit,iobase=-1", "iobase=-0x1: ports are 0..0xffff"),
    ("isa-debug-exit,speed=9", "unknown property 'speed=9' (iobase=, iosize=)"),
    ("isa-debug-exit,iobase", "unknown property 'iobase'"),
    ("pc-testdev", "-device 'pc-testdev' is not supported: only isa-debug-exit"),
])
def test_bad_devices_are_refused(spec, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_device(spec)


def test_global_takes_both_qemu_spellings_for_properties_the_devices_have():
    offered = ("isa-debug-exit",)
    assert parse_global("isa-debug-exit.iobase=0xf4", offered) == ("isa-debug-exit", "iobase",
                                                                   0xF4)
    assert parse_global("driver=isa-debug-exit,property=iosize,value=4", offered) == \
        ("isa-debug-exit", "iosize", 4)
    for spec, message in [
        ("kvm-pit.lost_tick_policy=discard", "the b has no device 'kvm-pit' with properties "
                                             "to set (its devices are isa-debug-exit)"),
        ("isa-debug-exit.speed=1", "isa-debug-exit has no property 'speed' (iobase, iosize)"),
        ("isa-debug-exit.iobase=port", "-global isa-debug-exit.iobase='port' is not a number"),
        ("isa-debug-exit", "use DRIVER.PROP=VALUE"),
        ("driver=isa-debug-exit,value=1", "use DRIVER.PROP=VALUE or driver=D,property=P"),
    ]:
        with pytest.raises(InvalidInput) as info:
            parse_global(spec, offered, "b")
        assert message in str(info.value)
    with pytest.raises(InvalidInput, match="it takes no -device"):
        parse_global("isa-debug-exit.iobase=0xf4", (), "b")


def test_global_on_the_command_line():
    usage_error(pyaxvisor("run", "-global", "isa-debug-exit.iobase=0xf4"),
                "-global isa-debug-exit.iobase=0xf4: the aarch64 virt board has no device "
                "'isa-debug-exit' with properties to set (its devices are virtio-blk-device, "
                "virtio-rng-device, virtio-serial-device, virtconsole, virtio-net-device)")
    usage_error(pyaxvisor("run", "--arch", "x86_64", "-global", "ICH9-LPC.disable_s3=1"),
                "the x86_64 pc board has no device 'ICH9-LPC'")


@pytest.mark.kvm
@kvm_only
def test_global_moves_the_debug_exit_device_the_guest_writes_to():
    for spelling in (("-global", "isa-debug-exit.iobase=0xf4", "-global",
                      "isa-debug-exit.iosize=4"),
                     ("-global", "driver=isa-debug-exit,property=iobase,value=0xf4")):
        p = pyaxvisor("run", "--arch", "x86_64", *spelling, "-device", "isa-debug-exit",
                      "-kernel", SMP_ELF, "-append", "exit=9")
        assert p.returncode == (9 << 1) | 1, p.stderr


# -- -smp, -name, -display and friends -----------------------------------------------------------

def test_smp_topologies_qemu_takes_are_taken():
    p = pyaxvisor("run", "-kernel", HELLO, "-smp", "2,sockets=1")
    assert p.returncode == 0, p.stderr
    assert "CPU 1 is up (PSCI CPU_ON)" in p.stdout
    p = pyaxvisor("run", "-kernel", HELLO, "-smp", "4,sockets=2")
    assert p.returncode == 0, p.stderr
    usage_error(pyaxvisor("run", "-smp", "2,sockets=4"),
                "-smp '2,sockets=4': the topology gives 0 CPUs, but maxcpus is 2")
    p = pyaxvisor("run", "-smp", "2,maxcpus=16")
    assert p.returncode == STATUS["error"]
    assert "-smp 2,maxcpus=16: maxcpus 16 is more than the 8 CPUs a virt VM can have" \
        in p.stderr


def test_runner_options_are_accepted_and_change_nothing():
    p = pyaxvisor("run", "-kernel", HELLO, "-smp", "2", "-nodefaults", "-display", "none",
                  "-vnc", "none", "-monitor", "none", "-name", "guest=ci,debug-threads=on",
                  "-no-reboot", "-no-shutdown", "-nographic", "-serial", "mon:stdio")
    assert p.returncode == 0, p.stderr
    assert p.stdout.replace("\r\n", "\n") == HELLO_OUTPUT


def test_name_check_none_and_serial():
    assert parse_name("vm1") == "vm1"
    assert parse_name("vm1,process=qemu-vm1,debug-threads=off") == "vm1"
    assert parse_name("guest=vm2,process=p") == "vm2"
    check_none("-vnc", None, "why")
    check_none("-vnc", "none", "why")
    check_serial("stdio")
    check_serial("mon:stdio")
    with pytest.raises(InvalidInput, match="only -vnc none"):
        check_none("-vnc", "unix:/tmp/s", "why")


# -- exit statuses ------------------------------------------------------------------------------

def test_the_status_table():
    assert STATUS == {"poweroff": 0, "reset": 0, "quit": 0, "timeout": 124, "error": 4}
    assert VmResult("error").status == 4
    assert VmResult("something new").status == 4  # an unknown end is an error
    # a guest's debug-exit status is odd: it can never be an error's, a usage error's
    # (2) or a timeout's
    statuses = {VmResult("debug-exit", exit_status=(v << 1) | 1).status for v in range(1024)}
    assert all(s % 2 == 1 for s in statuses)
    assert statuses.isdisjoint({0, 2, STATUS["error"], STATUS["timeout"]})


def test_a_vm_stopped_by_an_error_is_not_a_guests_pass(tmp_path):
    # an 8-byte store to the 32-bit PL011 (at 0x9000000) with every access an exit
    code = [0xD2A12001,  # movz x1, #0x900, lsl #16
            0xF9000420,  # str x0, [x1, #8]
            0x14000000]  # b .
    path = tmp_path / "bad_store.bin"
    path.write_bytes(b"".join(word.to_bytes(4, "little") for word in code))
    p = pyaxvisor("run", "-kernel", str(path), "--trap-mmio", "--timeout", "30")
    assert p.returncode == STATUS["error"] == 4, p.stderr
    assert "pl011: 8-byte write at 0x8: registers are 32-bit" in p.stderr


@pytest.mark.kvm
@kvm_only
def test_a_guest_that_writes_0_to_debug_exit_exits_1():
    p = pyaxvisor("run", "--arch", "x86_64", "-kernel", SMP_ELF, "-append", "exit=0",
                  *DEBUG_EXIT_F4)
    assert p.returncode == 1, p.stderr

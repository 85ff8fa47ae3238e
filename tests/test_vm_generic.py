"""The generic VM (axvm): the layering rule, the board registry, and a third
architecture that plugs in with a Board and nothing else (``tests/fake_board.py``),
driven through every exit the VM serves itself."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import fake_board
import pytest
from fake_board import PORT, RAM_BASE, SYSREG, UART_BASE, FakeBoard

from pyaxvisor import boards
from pyaxvisor.boards.quick import config_for, new_vm
from pyaxvisor.devices.bus import BadAccess, UnhandledMmio, mmio_bus
from pyaxvisor.devices.irq import IrqLine, NullIrqSink
from pyaxvisor.devices.uart16550 import Uart16550
from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.flags import AccessFlags
from pyaxvisor.vcpu import (
    CpuDown,
    CpuUp,
    Halt,
    Hypercall,
    IoWrite,
    MmioRead,
    MmioWrite,
    NestedPageFault,
    SendIPI,
    SysRegRead,
    SysRegWrite,
    SystemDown,
)
from pyaxvisor.vcpu.width import AccessWidth
from pyaxvisor.vm.config import MemoryRegion, VmConfig
from pyaxvisor.vm.power import CpuPower
from pyaxvisor.vm.vm import UnknownHypercall, Vm

B, D, Q = AccessWidth.Byte, AccessWidth.Dword, AccessWidth.Qword
PACKAGE = Path(__file__).resolve().parent.parent / "pyaxvisor"

#: What each package may import from pyaxvisor: data flows engine → arch vCPU → exit →
#: VM → device, and nothing below imports from above.
ALLOWED = {
    "errors": set(),
    "mm": {"errors", "hal"},
    "hal": {"errors", "mm"},
    "vcpu": {"errors", "mm"},
    "engine": {"errors", "hal", "mm"},
    "devices": {"errors", "hal", "vcpu"},
    "arch": {"errors", "hal", "mm", "vcpu", "engine"},
    "loaders": {"errors", "mm", "boards.x86_pc.layout"},
    "gdb": {"errors"},
    "vm": {"errors", "hal", "mm", "vcpu", "devices", "gdb"},
    "control": {"errors", "vm", "__version__"},
    "harness": {"errors", "vm", "boards", "cli", "control"},
    "images": {"errors", "image_apt", "image_kmod", "loaders"},
    "image_kmod": {"errors"},
    "image_apt": {"errors"},
}


def imports_of(path: Path) -> set[str]:
    """Every ``pyaxvisor.*`` module ``path`` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name.removeprefix("pyaxvisor.") for name in found
            if name.startswith("pyaxvisor.")}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_layer_imports_only_what_lies_below_it(package):
    allowed = ALLOWED[package] | {package}
    files = [PACKAGE / f"{package}.py"] if (PACKAGE / f"{package}.py").exists() else \
        sorted((PACKAGE / package).rglob("*.py"))
    assert files
    bad = {f"{f.relative_to(PACKAGE)} imports pyaxvisor.{name}"
           for f in files for name in imports_of(f)
           if not any(name == a or name.startswith(a + ".") for a in allowed)}
    assert not bad, sorted(bad)


def test_the_generic_vm_knows_no_architecture():
    # the rule of the issue, said directly: vm/ imports nothing from arch/, engine/ or
    # the boards, and names no architecture
    for f in sorted((PACKAGE / "vm").rglob("*.py")):
        names = imports_of(f)
        assert not {n for n in names if n.split(".")[0] in ("arch", "engine", "boards")}, f
        text = f.read_text()
        for arch in ("aarch64", "x86_64", "riscv64"):
            assert arch not in text, f"{f} names {arch}"


def test_every_registered_board_declares_what_the_registry_says():
    for entry in boards._REGISTRY:
        cls = boards.board_class(entry.arch, entry.machines[0])
        assert (cls.arch, cls.machines) == (entry.arch, entry.machines)
        assert cls.default_memory_regions(cls.default_memory)
    assert boards.arch_of_machine("q35,accel=kvm") == "x86_64"
    assert boards.arch_of_machine("virt") == "aarch64"
    assert boards.arch_of_machine("nope") is None
    with pytest.raises(InvalidInput, match="no board emulates 'mips'"):
        boards.board_class("mips")


@pytest.fixture
def fake(monkeypatch):
    """The fake64 architecture registered for one test."""
    monkeypatch.setattr(boards, "_REGISTRY", list(boards._REGISTRY))
    boards.register(boards.BoardEntry("fake64", ("fakeboard",), "fake_board"))
    monkeypatch.setattr(FakeBoard, "scripts", {})
    return FakeBoard


def make_vm(smp: int = 2, out: bytearray | None = None) -> Vm:
    config = config_for("fake64", smp=smp, memory=16 << 20)
    sink = out if out is not None else bytearray()
    return Vm(config, boards.board_class("fake64")(config), console_write=sink.extend)


def test_a_third_architecture_plugs_in_with_a_board_alone(fake):
    fake.scripts = {
        0: [MmioWrite(GuestPhysAddr(UART_BASE), B, ord("h")),      # the 16550 on MMIO
            MmioWrite(GuestPhysAddr(UART_BASE), B, ord("i")),
            MmioRead(GuestPhysAddr(UART_BASE + 5), B, 3, Q, False),  # LSR, into x3
            IoWrite(PORT + 1, B, 0x5A),
            SysRegRead(SYSREG, 4),
            SysRegWrite(SYSREG, 0x77),
            Hypercall(0x77, (0,) * 6),
            CpuUp(7, GuestPhysAddr(RAM_BASE + 0x100), 0xAB),     # no CPU with id 7
            CpuUp(1, GuestPhysAddr(RAM_BASE + 0x200), 0xCD)],
        1: [CpuUp(1, GuestPhysAddr(RAM_BASE), 0), SystemDown(reset=False)],
    }
    out = bytearray()
    vm = make_vm(out=out)
    try:
        assert vm.cpu_power(1) is CpuPower.OFF
        boot = vm.load()
        assert (boot.entry, boot.gprs) == (RAM_BASE, {0: 0xDEAD})
        assert vm.read_guest(RAM_BASE, 4) == b"\x13\x00\x00\x00"
        result = vm.run(timeout=20)
        cpu0, cpu1 = vm.vcpu(0).arch, vm.vcpu(1).arch
        board = vm.board
    finally:
        vm.close()
    assert result.reason == "poweroff", result
    assert bytes(out) == b"hi"
    assert cpu0.gprs[3] == 0x60  # LSR: transmitter empty
    assert board.ports.log == [("w", 1, 1, 0x5A, 0)]
    assert board.sysreg.log == [("r", 0, 8, 0), ("w", 0, 8, 0x77, 0)]
    assert cpu0.gprs[4] == 0x1234_5678_9ABC_DEF0
    # the hypercall answered by the board, then CpuUp(7) invalid, then CpuUp(1) started
    returns = [c[1] for c in cpu0.calls if c[0] == "set_return_value"]
    assert returns == [42, (1 << 64) - 3, 0]
    # vCPU 1 started where CpuUp said, with the argument; its own CpuUp(1): already on
    assert ("set_entry", GuestPhysAddr(RAM_BASE + 0x200)) in cpu1.calls
    assert ("set_gpr", 0, 0xCD) in cpu1.calls
    assert [c[1] for c in cpu1.calls if c[0] == "set_return_value"] == [(1 << 64) - 1]
    assert result.exits["MmioWrite"] == 2 and result.exits["CpuUp"] == 3
    assert result.exits["SystemDown"] == 1 and result.exits["Hypercall"] == 1


@pytest.mark.parametrize(("exit_reason", "message"), [
    (Hypercall(0x1234, (1, 2, 3, 4, 5, 6)),
     "vCPU 0: unknown hypercall 0x1234 with arguments 0x1, 0x2, 0x3, 0x4, 0x5, 0x6"),
    (NestedPageFault(GuestPhysAddr(0x4000), AccessFlags.WRITE),
     "vCPU 0: nested page fault at 0x4000 (<AccessFlags.WRITE: 2>): no RAM and no device "
     "there"),
    (SendIPI(1, 0, False, False, 3), "vCPU 0: the VM cannot handle the exit SendIPI("),
    (MmioRead(GuestPhysAddr(0x2000_0000), D, 1, Q, False),
     "guest MMIO read (4 bytes) at 0x20000000: no device there"),
    (SysRegRead(0x99, 1), "vCPU 0: the VM cannot handle the exit SysRegRead("),
])
def test_exits_nobody_serves_stop_the_vm_naming_them(fake, exit_reason, message):
    fake.scripts = {0: [exit_reason]}
    vm = make_vm(smp=1)
    try:
        result = vm.run(timeout=20)
        board = vm.board
    finally:
        vm.close()
    assert result.reason == "error" and result.status == 4
    assert message in str(result.error)
    if isinstance(exit_reason, Hypercall):
        assert isinstance(result.error, UnknownHypercall)
    if isinstance(exit_reason, SendIPI | SysRegRead):
        assert board.other_exits == [exit_reason]  # the board was asked first


def test_unclaimed_ports_read_all_ones_through_the_vm(fake):
    fake.scripts = {0: [IoWrite(0x80, B, 1), SystemDown(reset=True)]}
    vm = make_vm(smp=1)
    try:
        result = vm.run(timeout=20)
        assert vm.pio.unclaimed[0x80] == 1
    finally:
        vm.close()
    assert result.reason == "reset"


def test_halt_blocks_until_an_interrupt_and_cpu_down_until_cpu_up(fake):
    fake.scripts = {0: [CpuUp(1, GuestPhysAddr(RAM_BASE), 1), Halt(), SystemDown()],
                    1: [CpuDown()]}
    vm = make_vm()
    try:
        runner = threading.Thread(target=lambda: setattr(vm, "_r", vm.run(timeout=20)))
        runner.start()
        for _ in range(200):
            v0, v1 = vm.vcpu(0), vm.vcpu(1)
            if v0 is not None and v1 is not None and v0.state.name == "Blocked" \
                    and vm.cpu_power(1) is CpuPower.OFF:
                break
            threading.Event().wait(0.05)
        assert vm.vcpu(0).state.name == "Blocked"  # the Halt
        assert vm.cpu_power(1) is CpuPower.OFF  # the CpuDown
        assert vm.start_cpu(1, RAM_BASE + 0x40, 9).name == "STARTED"
        assert vm.cpu_power(1) is CpuPower.ON
        vm.vcpu(0).inject_interrupt(5)  # wakes the halted vCPU: it goes on to SystemDown
        runner.join(20)
        result = vm._r
        restarted = vm.vcpu(1).arch.gprs[0]
    finally:
        vm.close()
    assert result.reason == "poweroff", result
    assert vm.board.restarts == [(1, RAM_BASE + 0x40)] and restarted == 9


def test_timeout_reports_each_vcpu_through_its_board(fake):
    vm = make_vm(smp=1)
    try:
        result = vm.run(timeout=0.3)
    finally:
        vm.close()
    assert result.reason == "timeout" and result.status == 124
    assert result.state.startswith("vCPU 0: Running") or result.state.startswith("vCPU 0: Ready")


def test_bad_configurations_are_refused_before_anything_is_built(fake):
    with pytest.raises(InvalidInput, match=r"a fakeboard VM has 1\.\.4 CPUs, not 5"):
        make_vm(smp=5)
    overlapping = VmConfig("fake64", "fakeboard", cpu_ids=(0,), memory=(
        MemoryRegion(RAM_BASE, 0x10000), MemoryRegion(RAM_BASE + 0x8000, 0x10000)))
    with pytest.raises(InvalidInput, match="overlap"):
        Vm(overlapping, FakeBoard(overlapping))
    with pytest.raises(InvalidInput, match="machine 'virt' is not supported: only 'fakeboard'"):
        config_for("fake64", machine="virt")
    with pytest.raises(InvalidInput, match="are not distinct"):
        twins = VmConfig("fake64", "fakeboard", cpu_ids=(0, 0),
                         memory=(MemoryRegion(RAM_BASE, 0x10000),))
        Vm(twins, FakeBoard(twins))


def test_board_attributes_are_reachable_on_the_vm(fake):
    vm = make_vm(smp=1)
    try:
        assert vm.ports is vm.board.ports  # a board-specific part
        assert vm.uart is vm.board.console
        with pytest.raises(AttributeError):
            _ = vm.no_such_part
    finally:
        vm.close()


def test_scripts_get_a_vm_of_any_board_by_architecture(fake):
    vm = new_vm("fake64", ram_size=8 << 20)
    try:
        assert isinstance(vm.board, fake_board.FakeBoard)
        assert vm.config.memory == (MemoryRegion(RAM_BASE, 8 << 20),)
    finally:
        vm.close()


def test_a_16550_sits_on_mmio_with_registers_one_byte_apart():
    out = bytearray()
    uart = Uart16550(tx=out.extend, irq=IrqLine(NullIrqSink(), 10))
    bus = mmio_bus()
    bus.attach(UART_BASE, 8, uart)
    bus.write(UART_BASE + 3, B, 0x80)  # LCR: DLAB
    bus.write(UART_BASE + 0, B, 0x01)  # divisor 1
    bus.write(UART_BASE + 3, B, 0x03)  # 8N1
    assert uart.divisor == 1
    for ch in b"ok":
        bus.write(UART_BASE, B, ch)
    assert bytes(out) == b"ok"
    assert bus.read(UART_BASE + 5, B) & 0x60 == 0x60
    uart.receive(b"x")
    assert bus.read(UART_BASE + 5, B) & 1 == 1
    assert bus.read(UART_BASE, B) == ord("x")
    with pytest.raises(UnhandledMmio):
        bus.read(UART_BASE + 8, B)  # past the 8 registers: no device there
    with pytest.raises(BadAccess):
        bus.write(UART_BASE, Q, 0)  # the UART's registers are bytes

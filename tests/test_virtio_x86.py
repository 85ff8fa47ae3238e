"""virtio-mmio on the x86_64 pc board: QEMU ``microvm``'s row of 8 transports at
0xfeb00000, held against the board's memory map; their interrupts (ISA IRQs the MADT
and the MP table make level triggered); how a guest learns of the ones in use (the
DSDT's ``LNRO0005`` devices, and a bzImage's command line, read back from
``boot_params`` in guest memory); the refusals that remain. These run without KVM.

On KVM: a guest written here (``tests/guests/x86_64/virtio_blk.S``) drives virtio-blk
through the transport, waiting with ``hlt`` for its interrupt through the I/O APIC,
from a script and from the command line."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import pytest
from tools import tool

from pyaxvisor.arch.x86_64.vcpu import TSS_ADDR
from pyaxvisor.boards.quick import config_for, x86_vm
from pyaxvisor.boards.virtio_slots import PluggedSlot, VirtioSlots, add_kernel_parameters
from pyaxvisor.boards.x86_pc import acpi, aml
from pyaxvisor.boards.x86_pc import layout as L
from pyaxvisor.boards.x86_pc.board import PcBoard
from pyaxvisor.devices.virtio import VirtioMmio
from pyaxvisor.devices.virtio.blk_image import RawImage
from pyaxvisor.devices.virtio.empty import EmptyTransport
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal.vcpu_hal import HostHal
from pyaxvisor.loaders.image import ImageError
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table
from pyaxvisor.vcpu.width import AccessWidth as W
from pyaxvisor.vm.config import DeviceSpec, VirtioDeviceSpec
from pyaxvisor.vm.vm import Vm
from tests.guest_build import build
from tests.test_x86_loader import bzimage

_ok, _reason = kvm_usable()
T = TypeVar("T")


def needs_kvm(test: T) -> T:
    """Marks a test that runs a VM: ``kvm``, and skipped (saying why) without KVM."""
    return pytest.mark.kvm(pytest.mark.skipif(not _ok, reason=f"KVM not usable: {_reason}")(
        test))

MiB = 1 << 20
#: QEMU microvm's row: slot i at 0xfeb00000 + 0x200 * i on GSI 5 + i, except that GSI 9
#: is this board's ACPI SCI, so slot 4 is on 13.
ROW = [(0xFEB0_0000, 5), (0xFEB0_0200, 6), (0xFEB0_0400, 7), (0xFEB0_0600, 8),
       (0xFEB0_0800, 13), (0xFEB0_0A00, 10), (0xFEB0_0C00, 11), (0xFEB0_0E00, 12)]
FIRST = "virtio_mmio.device=512@0xfeb00e00:12"
SECOND = "virtio_mmio.device=512@0xfeb00c00:11"
RNG = VirtioDeviceSpec("rng")
CONSOLE = VirtioDeviceSpec("console")
LOAD = 0x10_0000
RESULTS = 0x20_5000
ERROR, USAGE = 4, 2


def image(tmp_path: Path, size: int = 64 << 10) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes((i * 7 + i // 256) & 0xFF for i in range(size)))
    return path


def pyaxvisor(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", *map(str, args)],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr, p.stderr
    return p


# -- the row and the memory map ------------------------------------------------------------------

def test_the_pc_board_has_qemu_microvms_row_of_transports():
    slots = PcBoard.virtio_slots
    assert [(slots.slot_base(i), slots.slot_irq(i)) for i in range(slots.count)] == ROW
    assert slots.window == (0xFEB0_0000, 0x1000)
    assert slots.stride == 0x200  # each window is the whole stride: no holes in the row
    assert "virtio-blk-device" in PcBoard.device_types
    assert "isa-debug-exit" in PcBoard.device_types


def test_the_row_collides_with_nothing_the_board_maps():
    base, size = PcBoard.virtio_slots.window
    end = base + size

    def clear(start: int, length: int) -> bool:
        return start + length <= base or end <= start

    for ram in (L.MIN_RAM, 256 * MiB, L.LOW_RAM_LIMIT, L.LOW_RAM_LIMIT + MiB, 64 << 30):
        assert all(clear(gpa, length) for gpa, length in L.ram_regions(ram)), ram
        assert all(clear(addr, length) for addr, length, _type in L.e820_map(ram)), ram
    for name, (start, length) in PcBoard.device_windows.items():
        assert clear(start, length), name
    assert clear(TSS_ADDR, 3 * 0x1000)  # KVM's real-mode TSS (Intel)
    assert clear(0xFED0_0000, 0x400)    # where a PC's HPET would be
    assert base >= L.LOW_RAM_LIMIT and end <= L.IOAPIC_ADDR


def test_the_rows_interrupts_are_isa_irqs_nothing_else_on_the_board_uses():
    irqs = [irq for _base, irq in ROW]
    assert len(set(irqs)) == len(irqs) and all(0 < irq < 16 for irq in irqs)
    taken = {0,                 # the PIT
             2,                 # the 8259 cascade
             L.COM1_IRQ,        # 4
             L.ACPI_SCI_IRQ}    # 9
    assert not taken & set(irqs)


def test_slots_with_their_own_interrupts_must_list_one_per_slot():
    with pytest.raises(ValueError, match="3 distinct interrupts"):
        VirtioSlots(0x1000, 0x200, 3, 5, (5, 6))
    with pytest.raises(ValueError):
        VirtioSlots(0x1000, 0x200, 2, 5, (5, 5))
    assert VirtioSlots(0x1000, 0x200, 2, 5).slot_irq(1) == 6  # the other boards' rule


# -- the command line ----------------------------------------------------------------------------

def test_kernel_parameters_name_the_plugged_slots_in_the_devices_order():
    slots = PcBoard.virtio_slots
    assert slots.kernel_parameters(0) == ()
    assert slots.kernel_parameters(3) == (FIRST, SECOND, "virtio_mmio.device=512@0xfeb00a00:10")
    assert slots.kernel_parameters(8)[-5:] == (
        "virtio_mmio.device=512@0xfeb00800:13", "virtio_mmio.device=512@0xfeb00600:8",
        "virtio_mmio.device=512@0xfeb00400:7", "virtio_mmio.device=512@0xfeb00200:6",
        "virtio_mmio.device=512@0xfeb00000:5")
    assert slots.plugged(8)[-1] == PluggedSlot(0, 0xFEB0_0000, 5)
    with pytest.raises(InvalidInput, match="8 virtio-mmio transports"):
        slots.kernel_parameters(9)


@pytest.mark.parametrize(("cmdline", "expected"), [
    ("", "A B"),
    ("console=ttyS0", "console=ttyS0 A B"),
    ("console=ttyS0 -- single", "console=ttyS0 A B -- single"),
    ("-- single", "A B -- single"),
    ('x pyaxvisor.cmd="ls -- /" y', 'x pyaxvisor.cmd="ls -- /" y A B'),
    ("x --y z", "x --y z A B"),
])
def test_parameters_go_before_what_linux_hands_to_init(cmdline, expected):
    assert add_kernel_parameters(cmdline, ["A", "B"]) == expected
    assert add_kernel_parameters(cmdline, []) == cmdline


@pytest.fixture
def space():
    ram = 64 * MiB
    with HostHal(ram + 8 * MiB) as hal:
        sp = AddrSpace(hal, nested_page_table(hal, "x86_64"))
        sp.map_ram(GuestPhysAddr(0), ram)
        yield sp
        sp.destroy()


def loaded(space: AddrSpace, tmp_path: Path, append: str, virtio: list[VirtioDeviceSpec],
           kernel: bytes | None = None) -> PcBoard:
    """The pc board's ``load`` of ``kernel`` (a bzImage by default; ``b""``: the bundled
    Multiboot kernel) into ``space``: what KVM would run, without KVM."""
    path = None
    if kernel != b"":
        path = tmp_path / "bzImage"
        path.write_bytes(bzimage(cmdline_size=4095) if kernel is None else kernel)
    config = config_for("x86_64", memory=64 * MiB, kernel=path, append=append, virtio=virtio,
                        devices=[DeviceSpec("isa-debug-exit", 0xF4, 4)])
    board = PcBoard(config)
    board.check()
    board.load(SimpleNamespace(space=space))  # type: ignore[arg-type]
    return board


def boot_cmdline(space: AddrSpace) -> str:
    params = 0x7000
    pointer = struct.unpack("<I", space.read(GuestPhysAddr(params + 0x228), 4))[0]
    return space.read(GuestPhysAddr(pointer), 4096).split(b"\0")[0].decode()


def acpi_area(space: AddrSpace) -> bytes:
    return space.read(GuestPhysAddr(L.ACPI_ADDR), L.HIGH_MEMORY - L.ACPI_ADDR)


def test_a_bzimage_finds_each_plugged_transport_on_its_command_line(space, tmp_path):
    loaded(space, tmp_path, "console=ttyS0 -- init-arg", [RNG, CONSOLE])
    assert boot_cmdline(space) == f"console=ttyS0 {FIRST} {SECOND} -- init-arg"
    # and in the DSDT, in the same order (the first device, in slot 7, first)
    tables = acpi_area(space)
    assert tables.count(b"LNRO0005") == 2
    assert tables.index(b"VR07") < tables.index(b"VR06")
    assert b"VR05" not in tables


def test_a_bzimage_without_virtio_devices_gets_its_command_line_as_given(space, tmp_path):
    loaded(space, tmp_path, "console=ttyS0 quiet", [])
    assert boot_cmdline(space) == "console=ttyS0 quiet"
    assert b"LNRO0005" not in acpi_area(space)


def test_a_command_line_too_long_with_the_parameters_says_so(space, tmp_path):
    with pytest.raises(ImageError) as info:
        loaded(space, tmp_path, "console=ttyS0", [RNG], kernel=bzimage(cmdline_size=40))
    assert (f"the command line is {len('console=ttyS0 ' + FIRST)} bytes, the kernel takes at "
            "most 40 (with the 1 virtio_mmio.device= parameters pyaxvisor adds for the virtio "
            "devices)") in str(info.value)


def test_a_multiboot_kernel_gets_its_command_line_as_given(space, tmp_path):
    loaded(space, tmp_path, "acpi=1", [RNG], kernel=b"")  # the bundled Multiboot kernel
    low = space.read(GuestPhysAddr(0), 4 * MiB)
    assert b" acpi=1\0" in low
    assert b"virtio_mmio.device" not in low
    assert acpi_area(space).count(b"LNRO0005") == 1  # the tables describe it all the same


# -- the firmware tables -----------------------------------------------------------------------

def madt_entries(data: bytes) -> list[bytes]:
    entries, pos = [], 44
    while pos < len(data):
        entries.append(data[pos:pos + data[pos + 1]])
        pos += data[pos + 1]
    return entries


def test_the_madt_makes_the_rows_lines_level_triggered_active_high():
    madt = acpi.build_madt(2)
    assert madt[:4] == b"APIC" and sum(madt) % 256 == 0
    overrides = [struct.unpack("<BBIH", e[2:]) for e in madt_entries(madt) if e[0] == 2]
    # bus 0 (ISA), source IRQ, GSI, MPS INTI flags 0x000D: active high, level triggered
    assert overrides == [(0, 9, 9, 0xD)] + [(0, irq, irq, 0xD) for _base, irq in ROW]


def test_aml_memory32_fixed_and_interrupt_descriptors():
    # iasl: Memory32Fixed (ReadWrite, 0xFEB00E00, 0x00000200)
    assert aml.memory32_fixed(0xFEB0_0E00, 0x200) == bytes.fromhex("860900 01 000eb0fe 00020000")
    assert aml.memory32_fixed(0x1000, 0x10, writable=False)[3] == 0
    # iasl: Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, ) {12}
    assert aml.interrupt(12) == bytes.fromhex("890600 01 01 0c000000")
    assert aml.interrupt(5, 6, edge=True, active_low=True, shared=True) == bytes.fromhex(
        "890a00 0f 02 05000000 06000000")
    with pytest.raises(InvalidInput):
        aml.memory32_fixed(0xFFFF_FF00, 0x200)
    with pytest.raises(InvalidInput):
        aml.interrupt()


def test_the_dsdt_describes_a_transport_as_qemu_microvm_does():
    device = acpi.virtio_device(PluggedSlot(7, 0xFEB0_0E00, 12))
    expected = bytes.fromhex(
        "5b82 4204" "56523037"                                # Device (VR07), PkgLength 0x42
        "08 5f484944 0d 4c4e524f30303035 00"                  # Name (_HID, "LNRO0005")
        "08 5f554944 0a07"                                    # Name (_UID, 0x07)
        "08 5f434341 01"                                      # Name (_CCA, One)
        "08 5f435253 11 1a 0a17"                              # Name (_CRS, Buffer (0x17) {
        "860900 01 000eb0fe 00020000"                         #   Memory32Fixed
        "890600 01 01 0c000000"                               #   Interrupt {12}
        "7900")                                               #   EndTag })
    assert device == expected
    dsdt = acpi.build_dsdt(PcBoard.virtio_slots.plugged(2))
    assert sum(dsdt) % 256 == 0 and dsdt.count(b"LNRO0005") == 2
    assert dsdt.index(device) < dsdt.index(b"VR06")
    assert acpi.build_dsdt().count(b"LNRO0005") == 0


def test_acpicas_disassembler_reads_the_tables_as_meant(tmp_path):
    """iasl (ACPICA, what Linux's ACPI is) decompiles the DSDT and MADT back to the
    ASL the board means."""
    (tmp_path / "dsdt.aml").write_bytes(acpi.build_dsdt(PcBoard.virtio_slots.plugged(1)))
    (tmp_path / "apic.aml").write_bytes(acpi.build_madt(1))
    p = subprocess.run([tool("iasl"), "-d", "dsdt.aml", "apic.aml"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    dsl = re.sub(r"\s+", " ", re.sub(r"//[^\n]*", "", (tmp_path / "dsdt.dsl").read_text()))
    assert ('Device (VR07) { Name (_HID, "LNRO0005") Name (_UID, 0x07) Name (_CCA, One) '
            "Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, 0xFEB00E00, "
            "0x00000200, ) Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, ) "
            "{ 0x0000000C, } }) }") in dsl, dsl
    madt = (tmp_path / "apic.dsl").read_text()
    sources = re.findall(r"Source : ([0-9A-F]{2})\n.*Interrupt : ([0-9A-F]{8})\n"
                         r".*Flags \(decoded below\) : ([0-9A-F]{4})", madt)
    assert [(int(s, 16), int(g, 16), f) for s, g, f in sources] == (
        [(9, 9, "000D")] + [(irq, irq, "000D") for _base, irq in ROW]), madt


def test_the_mp_table_makes_the_rows_lines_level_triggered():
    from pyaxvisor.boards.x86_pc.mptable import build_mptable

    data = build_mptable(1)
    table = data[16:]
    pos, flags = 44, {}
    while pos < len(table):
        size = 20 if table[pos] == 0 else 8
        if table[pos] == 3:
            flags[table[pos + 5]] = struct.unpack_from("<H", table, pos + 2)[0]
        pos += size
    assert {irq: flags[irq] for _base, irq in ROW} == {irq: 0xD for _base, irq in ROW}
    assert flags[L.COM1_IRQ] == 0 and flags[0] == 0


# -- what is still refused -----------------------------------------------------------------------

def test_device_help_on_x86_lists_the_virtio_devices():
    p = pyaxvisor("run", "--arch", "x86_64", "-device", "help")
    assert p.returncode == 0, p.stderr
    for name in ("isa-debug-exit", "virtio-blk-device", "virtio-rng-device",
                 "virtio-serial-device", "virtconsole", "virtio-net-device"):
        assert f'name "{name}"' in p.stdout, name
    p = pyaxvisor("run", "--arch", "x86_64", "-device", "virtio-blk-device,help")
    assert p.stdout.startswith("virtio-blk-device options:\n  drive=<str>")


def test_what_the_pc_board_still_refuses():
    config = config_for("x86_64", virtio=[RNG] * 9)
    with pytest.raises(InvalidInput, match="9 virtio devices asked for: the x86_64 pc board has "
                                           "8 virtio-mmio transports"):
        PcBoard(config).check()
    p = pyaxvisor("run", "--arch", "x86_64", "-device", "virtio-gpu-device")
    assert p.returncode == USAGE
    assert "-device 'virtio-gpu-device' is not supported on the x86_64 pc board" in p.stderr
    p = pyaxvisor("run", "--arch", "x86_64", "-drive", "file=d.img,if=ide")
    assert p.returncode == USAGE and "if=ide is not supported" in p.stderr
    p = pyaxvisor("run", "--arch", "x86_64", "--trap-mmio")
    assert p.returncode == USAGE and "--trap-mmio is for aarch64" in p.stderr


# -- on KVM --------------------------------------------------------------------------------------

WRITTEN = bytes((i * 3 + 1) & 0xFF for i in range(512))


def words(vm: Vm, offset: int, count: int = 1) -> tuple[int, ...]:
    """``count`` 32-bit results of the guest from RESULTS + ``offset``."""
    return struct.unpack(f"<{count}I", vm.read_guest(RESULTS + offset, 4 * count))


@needs_kvm
def test_an_x86_guest_drives_virtio_blk_and_takes_its_level_triggered_interrupt(tmp_path):
    disk = image(tmp_path)
    original = disk.read_bytes()
    vm = x86_vm(ram_size=32 * MiB, virtio=[VirtioDeviceSpec("blk", disk)])
    try:
        vm.write_guest(LOAD, build("x86_64", "virtio_blk", LOAD))
        result = vm.run(LOAD, mode="protected", timeout=60)
        runs = words(vm, 0x28)[0]
        assert result.reason == "poweroff", (result, f"handler runs: {runs}")
        magic, version, device_id, status, num_max = words(vm, 0x00, 5)
        assert (magic, version, device_id) == (0x74726976, 2, 2)
        assert status == 0xB and num_max >= 8
        assert words(vm, 0x30)[0] & 1                       # VERSION_1 offered
        assert words(vm, 0x14)[0] == 2                      # both requests used
        assert words(vm, 0x18, 2) == (0, 0)                 # VIRTIO_BLK_S_OK twice
        assert words(vm, 0x20, 2) == (513, 1)               # used lengths
        # the interrupt: two handler runs per request, the first leaving the line high
        # (no ACK) and taken again after its EOI, as a level-triggered line is; each run
        # saw InterruptStatus = used buffer; all ACKed at the end
        assert words(vm, 0x34)[0] == 2 and runs == 4
        assert words(vm, 0x40, 5) == (1, 1, 1, 1, 0)
        assert words(vm, 0x38)[0] <= 2                      # extra interrupts (see the guest)
        assert words(vm, 0x2C)[0] == 0
        assert words(vm, 0x60)[0] == 0x600D
        assert vm.read_guest(0x20_2000, 512) == original[:512]
        assert vm.read_guest(0x20_2200, 512) == WRITTEN
        # the transport is the last slot's, on GSI 12
        transport = vm.board.virtio.devices[7]
        assert isinstance(transport, VirtioMmio) and transport.irq.irq == 12
        assert not transport.irq.level
    finally:
        vm.close()
    data = disk.read_bytes()
    assert data[512:1024] == WRITTEN
    assert data[:512] == original[:512] and data[1024:] == original[1024:]


@needs_kvm
def test_x86_slots_follow_qemu_and_every_slot_exists():
    vm = x86_vm(ram_size=32 * MiB, virtio=[RNG, CONSOLE])
    try:
        bus = vm.devices.mmio
        for slot, (base, irq) in enumerate(ROW):
            hit = bus.find(base)
            assert hit is not None, slot
            device = hit[0]
            assert device.read(0, W.Dword, 0) == 0x74726976
            expected = {7: 4, 6: 3}.get(slot, 0)  # first device: the last slot
            assert device.read(8, W.Dword, 0) == expected, slot
            assert isinstance(device, VirtioMmio if expected else EmptyTransport)
            if expected:
                assert device.irq.irq == irq
        assert bus.find(0xFEB0_1000) is None and bus.find(0xFEAF_FFFC) is None
        assert vm.board.console_input() == vm.board.virtio.console.receive
    finally:
        vm.close()


@needs_kvm
def test_the_x86_guest_runs_from_the_command_line_and_a_locked_image_is_an_error(tmp_path):
    disk = image(tmp_path)
    kernel = tmp_path / "virtio_blk.bin"
    kernel.write_bytes(build("x86_64", "virtio_blk", LOAD))
    p = pyaxvisor("run", "--arch", "x86_64", "-kernel", kernel, "-m", "32M", "-drive",
                  f"file={disk},format=raw,if=none,id=hd0", "-device",
                  "virtio-blk-device,drive=hd0", "--timeout", "60")
    assert p.returncode == 0, p.stderr
    assert disk.read_bytes()[512:1024] == WRITTEN
    with RawImage(disk):  # another user holds it
        p = pyaxvisor("run", "--arch", "x86_64", "-kernel", kernel, "-m", "32M", "-drive",
                      f"file={disk}")
    assert p.returncode == ERROR and "in use" in p.stderr, p.stderr
    assert re.search(r"disk image '.*disk\.img'", p.stderr), p.stderr

"""Port-I/O bus and QEMU's isa-debug-exit device.

Unclaimed ports behave like an undriven ISA bus (reads all ones, writes
dropped); the debug-exit status is QEMU's ``(value << 1) | 1``
(hw/misc/debugexit.c).
"""

import pytest

from pyaxvisor.devices.bus import BadAccess as BadPioAccess
from pyaxvisor.devices.bus import port_bus as PioBus
from pyaxvisor.devices.debug_exit import DEFAULT_IOBASE, DEFAULT_IOSIZE, DebugExit, exit_status
from pyaxvisor.errors import AlreadyExists, InvalidInput
from pyaxvisor.vcpu.width import AccessWidth, Port
from tests.port_device import PioDevice

B, W, D, Q = AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword, AccessWidth.Qword


class Recorder(PioDevice):
    name = "recorder"

    def __init__(self) -> None:
        self.log: list[tuple] = []

    def pio_read(self, offset, width, vcpu_id):
        self.log.append(("r", offset, width, vcpu_id))
        return 0x1_2345_6789  # wider than any width: the bus masks it

    def pio_write(self, offset, width, value, vcpu_id):
        self.log.append(("w", offset, width, value, vcpu_id))


# ---------------------------------------------------------------------------- bus


def test_routes_by_offset_and_masks():
    bus, dev = PioBus(), Recorder()
    bus.attach(0x60, 5, dev)
    assert bus.read(0x62, B, vcpu_id=3) == 0x89
    assert bus.read(0x60, W) == 0x6789
    assert bus.read(Port(0x64), D) == 0x2345_6789
    bus.write(0x61, W, 0xABCDE, vcpu_id=1)  # value masked to the width: 0xBCDE
    assert dev.log == [
        ("r", 2, B, 3), ("r", 0, W, 0), ("r", 4, D, 0), ("w", 1, W, 0xBCDE, 1)]
    assert bus.find(0x65) is None
    assert bus.find(0x64) == (dev, 4)
    assert bus.devices == [(0x60, 5, dev)]
    assert not bus.unclaimed


def test_port_table_lists_every_claimed_port_with_its_offset():
    bus, a, b = PioBus(), Recorder(), Recorder()
    bus.attach(0x3F8, 8, a)
    bus.attach(0xF4, 1, b)
    table = bus.port_table()
    assert table == {**{0x3F8 + i: (a, i) for i in range(8)}, 0xF4: (b, 0)}


def test_unclaimed_reads_all_ones_and_are_counted():
    bus = PioBus()
    bus.attach(0x3F8, 8, Recorder())
    assert bus.read(0x80, B) == 0xFF
    assert bus.read(0x80, W) == 0xFFFF
    assert bus.read(0xCF8, D) == 0xFFFF_FFFF
    assert bus.read(0x3F7, B) == 0xFF  # just below the UART
    assert bus.read(0x400, B) == 0xFF  # just above it
    assert bus.unclaimed == {0x80: 2, 0xCF8: 1, 0x3F7: 1, 0x400: 1}


def test_unclaimed_writes_are_dropped_and_counted():
    bus = PioBus()
    bus.write(0x80, B, 0x12)  # the POST-code port, nothing there
    bus.write(0x80, B, 0x34)
    bus.write(0xFFFF, D, 0xDEADBEEF)
    assert bus.unclaimed == {0x80: 2, 0xFFFF: 1}


def test_qword_and_bad_ports_are_refused():
    bus = PioBus()
    bus.attach(0x70, 2, Recorder())
    with pytest.raises(BadPioAccess):
        bus.read(0x70, Q)  # x86 port I/O is at most 4 bytes
    with pytest.raises(BadPioAccess):
        bus.write(0x90, Q, 0)  # even where nothing lives
    with pytest.raises(InvalidInput):
        bus.read(0x1_0000, B)
    with pytest.raises(InvalidInput):
        bus.write(-1, B, 0)
    assert issubclass(BadPioAccess, InvalidInput)
    assert not bus.unclaimed


def test_overlap_is_refused():
    bus = PioBus()
    a = Recorder()
    bus.attach(0x3F8, 8, a)
    for base, count in [(0x3F8, 8), (0x3FF, 1), (0x3F0, 9), (0x3F0, 0x20), (0x3FA, 2)]:
        with pytest.raises(AlreadyExists):
            bus.attach(base, count, Recorder())
    bus.attach(0x3F0, 8, Recorder())  # [0x3F0, 0x3F8): touches, no overlap
    bus.attach(0x400, 1, Recorder())  # right after
    assert [b for b, _, _ in bus.devices] == [0x3F0, 0x3F8, 0x400]
    assert bus.find(0x3F8) == (a, 0)


def test_attach_rejects_bad_ranges():
    bus = PioBus()
    with pytest.raises(InvalidInput):
        bus.attach(0x10, 0, Recorder())
    with pytest.raises(InvalidInput):
        bus.attach(0xFFFF, 2, Recorder())  # would run past port 0xffff
    with pytest.raises(InvalidInput):
        bus.attach(-1, 1, Recorder())
    bus.attach(0xFFFF, 1, Recorder())  # the last port is fine


# ---------------------------------------------------------------------------- debug exit


def test_exit_status_formula():
    assert exit_status(0x31) == 0x63  # (0x31 << 1) | 1 = 0x62 | 1
    assert exit_status(0) == 1  # a guest can never make QEMU exit 0
    assert exit_status(0x10) == 0x21


@pytest.mark.parametrize("iosize", [1, 2, 4])
def test_debug_exit_status_for_each_iosize(iosize):
    width = AccessWidth(iosize)
    codes: list[int] = []
    bus = PioBus()
    bus.attach(0xF4, iosize, DebugExit(codes.append, iosize=iosize))
    bus.write(0xF4, width, 0x31)  # an out of the access size the port was built for
    bus.write(0xF4, B, 0x31)  # and a byte out
    assert codes == [0x63, 0x63]


def test_debug_exit_full_value_and_truncation():
    codes: list[int] = []
    dev = DebugExit(codes.append, iosize=4)
    dev.pio_write(0, D, 0xFFFF_FFFF, 0)  # (0xFFFFFFFF << 1) | 1
    assert codes.pop() == 0x1_FFFF_FFFF
    dev.pio_write(1, W, 0x1234, 0)  # any offset inside the window exits
    assert codes.pop() == 0x2469  # (0x1234 << 1) | 1
    one = DebugExit(codes.append, iosize=1)
    one.pio_write(0, D, 0x1234, 0)  # only byte 0x34 lands in a 1-port window
    assert codes.pop() == 0x69  # (0x34 << 1) | 1
    two = DebugExit(codes.append, iosize=2)
    two.pio_write(1, W, 0xABCD, 0)  # only the low byte lands on port base+1
    assert codes.pop() == 0x19B  # (0xCD << 1) | 1


def test_debug_exit_reads_zero_and_checks():
    codes: list[int] = []
    dev = DebugExit(codes.append)
    assert (dev.iosize, DEFAULT_IOSIZE, DEFAULT_IOBASE) == (2, 2, 0x501)
    bus = PioBus()
    bus.attach(DEFAULT_IOBASE, dev.iosize, dev)
    assert bus.read(0x501, B) == 0
    assert bus.read(0x501, W) == 0
    assert bus.read(0x502, D) == 0
    assert codes == []  # reads never exit
    with pytest.raises(BadPioAccess):
        dev.pio_read(2, B, 0)  # past the 2-port window
    with pytest.raises(BadPioAccess):
        dev.pio_write(0, Q, 1, 0)
    for bad in (0, 3, 8):
        with pytest.raises(InvalidInput):
            DebugExit(codes.append, iosize=bad)

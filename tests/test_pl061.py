"""The PL061 GPIO (QEMU virt's power-key controller): masked data accesses, edge and
level interrupts, the interrupt line, the PrimeCell IDs and bad accesses."""

from __future__ import annotations

import pytest

from pyaxvisor.devices.bus import BadAccess
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.pl061 import Pl061
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth

W, B, Q = AccessWidth.Dword, AccessWidth.Byte, AccessWidth.Qword
DIR, IS, IBE, IEV, IE, RIS, MIS, IC = 0x400, 0x404, 0x408, 0x40C, 0x410, 0x414, 0x418, 0x41C


class Sink:
    def __init__(self) -> None:
        self.levels: list[tuple[int, bool]] = []

    def set_irq_level(self, irq: int, level: bool) -> None:
        self.levels.append((irq, level))


@pytest.fixture
def gpio():
    sink = Sink()
    return Pl061(IrqLine(sink, 39)), sink


def test_data_reads_and_writes_go_through_the_address_mask(gpio):
    g, _ = gpio
    g.write(DIR, W, 0xF0, 0)  # pins 4..7 outputs
    g.write(0x3FC, W, 0xFF, 0)  # mask 0xFF: every output pin set
    assert g.read(0x3FC, W, 0) == 0xF0  # inputs read their (low) level
    g.write(0x40 << 2, W, 0x00, 0)  # mask 0x40: pin 6 only
    assert g.read(0x3FC, W, 0) == 0xB0
    g.set_input(0, True)
    g.set_input(4, False)  # an output pin: what the guest drives wins
    assert g.read(0x01 << 2, W, 0) == 0x01  # mask 0x01 sees pin 0 alone
    assert g.read(0x3FC, W, 0) == 0xB1
    assert g.pins() == 0xB1


def test_a_rising_edge_latches_until_cleared_and_drives_the_line(gpio):
    g, sink = gpio
    g.write(IEV, W, 1 << 3, 0)
    g.set_input(3, True)  # the edge comes while masked: raw status only
    assert (g.read(RIS, W, 0), g.read(MIS, W, 0)) == (1 << 3, 0)
    assert sink.levels == []
    g.write(IE, W, 1 << 3, 0)
    assert g.read(MIS, W, 0) == 1 << 3
    assert sink.levels == [(39, True)]
    g.set_input(3, False)  # a falling edge is not watched: still latched
    assert g.read(RIS, W, 0) == 1 << 3
    g.write(IC, W, 1 << 3, 0)
    assert (g.read(RIS, W, 0), g.read(MIS, W, 0)) == (0, 0)
    assert sink.levels == [(39, True), (39, False)]
    g.write(IBE, W, 1 << 3, 0)  # both edges
    g.set_input(3, True)
    g.write(IC, W, 1 << 3, 0)
    g.set_input(3, False)
    assert g.read(RIS, W, 0) == 1 << 3


def test_a_level_pin_follows_its_level(gpio):
    g, sink = gpio
    g.write(IS, W, 1 << 2, 0)
    g.write(IEV, W, 1 << 2, 0)  # high level
    g.write(IE, W, 1 << 2, 0)
    assert g.read(RIS, W, 0) == 0
    g.set_input(2, True)
    assert g.read(MIS, W, 0) == 1 << 2
    g.write(IC, W, 1 << 2, 0)  # no effect on a level
    assert g.read(RIS, W, 0) == 1 << 2
    g.set_input(2, False)
    assert g.read(RIS, W, 0) == 0
    assert sink.levels == [(39, True), (39, False)]


def test_primecell_ids_and_bad_accesses(gpio):
    g, _ = gpio
    assert [g.read(0xFE0 + 4 * i, W, 0) for i in range(8)] == \
        [0x61, 0x10, 0x04, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
    assert g.read(0x500, W, 0) == 0  # reserved
    g.write(DIR + 1, B, 0xFF, 0)  # bits 31:8 are reserved: ignored
    assert g.read(DIR, W, 0) == 0
    with pytest.raises(BadAccess, match="pl061: 8-byte read at 0x400: registers are 32-bit"):
        g.read(DIR, Q, 0)
    with pytest.raises(BadAccess, match="outside the 4 KiB window"):
        g.write(0x1000, W, 0, 0)
    with pytest.raises(BadAccess, match="straddles two registers"):
        g.read(0x402, W, 0)
    with pytest.raises(InvalidInput, match=r"pl061: no pin 8 \(0\.\.7\)"):
        g.set_input(8, True)

"""PL011 UART model: registers, FIFO, interrupts, host backlog.

Expected values come from the PL011 TRM (ARM DDI 0183) register descriptions;
bit positions are spelled out in the comments.
"""

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyaxvisor.devices.bus import BadAccess as BadMmioAccess
from pyaxvisor.devices.bus import mmio_bus as MmioBus
from pyaxvisor.devices.irq import IrqLine, NullIrqSink
from pyaxvisor.devices.pl011 import Pl011
from pyaxvisor.vcpu.width import AccessWidth

B, W, D, Q = AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword, AccessWidth.Qword

DR, RSR, FR, IBRD, FBRD, LCR_H, CR, IFLS, IMSC, RIS, MIS, ICR, DMACR = (
    0x000, 0x004, 0x018, 0x024, 0x028, 0x02C, 0x030, 0x034, 0x038, 0x03C, 0x040, 0x044, 0x048)


class Uart:
    """A PL011 wired to a recording tx and to SPI 33 of a recording sink."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.sink = NullIrqSink()
        self.dev = Pl011(tx=self.out.extend, irq=IrqLine(self.sink, 33))

    def rd(self, off: int, width: AccessWidth = D) -> int:
        return self.dev.mmio_read(off, width, 0)

    def wr(self, off: int, value: int, width: AccessWidth = D) -> None:
        self.dev.mmio_write(off, width, value, 0)

    @property
    def line(self) -> bool:
        return self.sink.levels.get(33, False)

    def drain(self) -> bytes:
        got = bytearray()
        while not self.rd(FR) & 0x10:  # RXFE (bit 4) clear: data waiting
            got.append(self.rd(DR))
        return bytes(got)


@pytest.fixture
def u() -> Uart:
    return Uart()


def test_id_registers(u):
    # UARTPeriphID0-3 at 0xFE0-0xFEC, UARTPCellID0-3 at 0xFF0-0xFFC (TRM table 3-1).
    ids = [u.rd(off) for off in range(0xFE0, 0x1000, 4)]
    assert ids == [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
    u.wr(0xFE0, 0xFF)  # read-only
    assert u.rd(0xFE0) == 0x11


def test_reset_values(u):
    assert u.rd(CR) == 0x300  # TXE (bit 8) | RXE (bit 9)
    assert u.rd(IFLS) == 0x12  # RXIFLSEL = TXIFLSEL = 0b010 (1/2)
    assert u.rd(FR) == 0x90  # TXFE (bit 7) | RXFE (bit 4)
    assert u.rd(IMSC) == 0
    assert u.rd(RIS) == 0
    assert u.rd(MIS) == 0
    assert u.rd(LCR_H) == 0
    assert not u.line


def test_transmit_emits_bytes(u):
    u.wr(DR, 0x48)  # 'H'
    u.wr(DR, 0x1169, W)  # 16-bit write: only bits 7:0 ('i') are data
    u.wr(DR, 0x21, B)  # '!'
    u.wr(DR + 1, 0x41, B)  # byte lane 1 of UARTDR carries no data: nothing sent
    assert bytes(u.out) == b"Hi!"
    assert u.rd(FR) == 0x90  # instantaneous transmit: TXFE=1, TXFF=0, BUSY=0


def test_flags_fifo_disabled_holding_register(u):
    u.dev.receive(b"xy")
    # 1-entry holding register is full: RXFF (bit 6) | TXFE (bit 7); RXFE clear.
    assert u.rd(FR) == 0xC0
    assert u.dev.backlog == 1
    assert u.rd(DR) == ord("x")  # error bits 11:8 are zero
    assert u.rd(FR) == 0xC0  # 'y' moved in from the backlog
    assert u.rd(DR) == ord("y")
    assert u.rd(FR) == 0x90  # empty again: TXFE | RXFE


def test_flags_fifo_enabled(u):
    u.wr(LCR_H, 0x70)  # WLEN=8 bits (0b11 << 5) | FEN (bit 4)
    u.dev.receive(bytes(range(31)))
    assert u.rd(FR) == 0x80  # 31 of 32: neither empty nor full
    u.dev.receive(b"\x1f")
    assert u.rd(FR) == 0xC0  # 32 of 32: RXFF
    assert u.dev.rx_fifo_level == 32
    assert u.drain() == bytes(range(32))
    assert u.rd(FR) == 0x90


def test_backlog_keeps_bytes_beyond_the_fifo(u):
    u.wr(LCR_H, 0x10)  # FEN
    data = bytes(range(100))
    u.dev.receive(data[:40])
    u.dev.receive(data[40:])
    assert u.dev.rx_fifo_level == 32
    assert u.dev.backlog == 68  # 100 - 32
    assert u.drain() == data
    assert u.dev.backlog == 0


def test_fifo_toggle_keeps_received_bytes(u):
    u.wr(LCR_H, 0x10)  # FEN on
    u.dev.receive(b"abc")
    u.wr(LCR_H, 0x00)  # FEN off: 1-entry holding register, 'b' and 'c' wait
    assert u.dev.rx_fifo_level == 1
    assert u.dev.backlog == 2
    assert u.drain() == b"abc"


def test_rx_interrupt_fifo_disabled(u):
    u.wr(IMSC, 0x10)  # RXIM (bit 4)
    u.dev.receive(b"a")
    assert u.rd(RIS) == 0x10  # RXRIS
    assert u.rd(MIS) == 0x10
    assert u.line
    assert u.rd(DR) == ord("a")
    assert u.rd(RIS) == 0
    assert not u.line


def test_rx_trigger_level_and_timeout_fifo_enabled(u):
    u.wr(LCR_H, 0x10)  # FEN; IFLS reset 0x12 -> RX trigger at 1/2 of 32 = 16
    u.wr(IMSC, 0x50)  # RXIM (bit 4) | RTIM (bit 6)
    u.dev.receive(b"abc")
    assert u.rd(RIS) == 0x40  # below the trigger: only the receive timeout (RTRIS)
    assert u.line
    u.dev.receive(bytes(13))  # 16 characters now: trigger reached
    assert u.rd(RIS) == 0x50  # RXRIS | RTRIS
    u.rd(DR)  # 15 left: below the trigger
    assert u.rd(RIS) == 0x40
    assert len(u.drain()) == 15
    assert u.rd(RIS) == 0
    assert not u.line


def test_rx_trigger_eighth(u):
    u.wr(LCR_H, 0x10)
    u.wr(IFLS, 0x02)  # RXIFLSEL = 0b000: 1/8 of 32 = 4 characters
    u.dev.receive(b"123")
    assert u.rd(RIS) & 0x10 == 0
    u.dev.receive(b"4")
    assert u.rd(RIS) & 0x10 == 0x10


def test_raising_trigger_level_clears_rx(u):
    u.wr(LCR_H, 0x10)
    u.wr(IFLS, 0x02)  # trigger 4
    u.dev.receive(b"12345")
    assert u.rd(RIS) == 0x50
    u.wr(IFLS, 0x22)  # RXIFLSEL = 0b100: 7/8 of 32 = 28 characters
    assert u.rd(RIS) == 0x40  # RX below the new trigger; timeout still pending


def test_enabling_fifo_with_a_held_char_raises_timeout(u):
    u.wr(IMSC, 0x50)
    u.dev.receive(b"z")
    assert u.rd(RIS) == 0x10  # no FIFO: RX at the 1-character trigger, no timeout
    u.wr(LCR_H, 0x10)  # FIFO on: trigger 16, but the waiting char times out
    assert u.rd(RIS) == 0x40
    assert u.line


def test_masked_vs_raw_status(u):
    u.dev.receive(b"a")
    assert u.rd(RIS) == 0x10  # raw status set regardless of the mask
    assert u.rd(MIS) == 0  # IMSC = 0
    assert not u.line
    u.wr(IMSC, 0x10)
    assert u.rd(MIS) == 0x10
    assert u.line
    u.wr(IMSC, 0)
    assert u.rd(MIS) == 0
    assert u.rd(RIS) == 0x10
    assert not u.line


def test_tx_interrupt(u):
    u.wr(IMSC, 0x20)  # TXIM (bit 5), 0 -> 1 with an empty transmit FIFO
    assert u.rd(RIS) == 0x20  # TXRIS
    assert u.line
    u.wr(ICR, 0x20)  # TXIC
    assert u.rd(RIS) == 0
    assert not u.line
    u.wr(IMSC, 0x20)  # already unmasked: no new edge
    assert u.rd(RIS) == 0
    u.wr(DR, 0x41)  # the byte goes out at once: the FIFO can take more
    assert u.rd(RIS) == 0x20
    assert u.line
    u.wr(IMSC, 0)  # Linux masks TX when it has nothing left to send
    assert not u.line
    assert u.rd(RIS) == 0x20
    assert u.rd(MIS) == 0


def test_icr_is_write_one_to_clear(u):
    u.wr(IMSC, 0x70)  # RX | TX | RT
    u.wr(LCR_H, 0x10)
    u.dev.receive(b"a")
    u.wr(DR, 0x41)
    assert u.rd(RIS) == 0x60  # TXRIS (bit 5) | RTRIS (bit 6); 1 < trigger 16
    u.wr(ICR, 0x40)  # clear only RT
    assert u.rd(RIS) == 0x20
    u.wr(ICR, 0x00)  # zero bits have no effect
    assert u.rd(RIS) == 0x20
    u.wr(ICR, 0x20, B)  # byte-wide write works too
    assert u.rd(RIS) == 0
    assert not u.line
    assert u.rd(FR) & 0x10 == 0  # the character is still there
    u.dev.receive(b"b")  # a new arrival raises the timeout again
    assert u.rd(RIS) == 0x40


def test_plain_registers_and_narrow_writes(u):
    u.wr(IBRD, 0x1_0027)  # 16-bit field: 0x0027
    u.wr(FBRD, 0xFF)  # 6-bit field: 0x3F
    assert u.rd(IBRD) == 0x0027
    assert u.rd(FBRD) == 0x3F
    u.wr(CR, 0x0301)  # UARTEN | TXE | RXE
    assert u.rd(CR) == 0x301
    u.wr(CR + 1, 0x00, B)  # clear TXE/RXE through byte lane 1
    assert u.rd(CR) == 0x001
    assert u.rd(CR + 1, B) == 0x00
    assert u.rd(IFLS, W) == 0x12
    u.wr(DMACR, 0xFF)  # 3 bits
    assert u.rd(DMACR) == 0x7
    u.wr(FR, 0)  # read-only
    assert u.rd(FR) == 0x90
    u.wr(RIS, 0xFF)
    assert u.rd(RIS) == 0


def test_unknown_offsets_read_zero_and_ignore_writes(u):
    u.wr(0x100, 0xDEAD)
    assert u.rd(0x100) == 0
    assert u.rd(0xFDC) == 0


def test_bad_accesses(u):
    with pytest.raises(BadMmioAccess):
        u.rd(DR, Q)
    with pytest.raises(BadMmioAccess):
        u.wr(DR, 0x41, Q)
    with pytest.raises(BadMmioAccess):
        u.rd(0x1000)
    with pytest.raises(BadMmioAccess):
        u.rd(0xFFE, D)  # runs past the window
    with pytest.raises(BadMmioAccess):
        u.rd(0x002, D)  # straddles UARTDR and UARTRSR
    with pytest.raises(BadMmioAccess):
        u.wr(-4, 0)
    assert bytes(u.out) == b""


def test_rsr_overrun_in_loopback(u):
    u.wr(CR, 0x381)  # UARTEN | LBE (bit 7) | TXE | RXE
    u.dev.receive(b"host")  # the receiver listens to the transmitter only
    u.wr(DR, 0x61)  # 'a' loops back into the 1-entry holding register
    u.wr(DR, 0x62)  # 'b' finds it full: overrun
    assert bytes(u.out) == b"ab"  # both still leave on the line
    assert u.rd(RSR) == 0x8  # OE (bit 3)
    assert u.rd(RIS) == 0x430  # OERIS (bit 10) | TXRIS (bit 5) | RXRIS (bit 4)
    assert u.rd(DR) == ord("a")
    u.wr(RSR, 0)  # UARTECR: any write clears
    assert u.rd(RSR) == 0
    u.wr(CR, 0x301)  # loopback off: host input flows again
    assert u.drain() == b"host"


def test_reset_keeps_host_input(u):
    u.wr(LCR_H, 0x10)
    u.wr(IMSC, 0x10)
    u.dev.receive(b"abc")
    u.dev.reset()
    assert u.rd(LCR_H) == 0
    assert u.rd(IMSC) == 0
    assert not u.line
    assert u.drain() == b"abc"


def test_irq_line_through_gic_sink_and_bus():
    sink = NullIrqSink()
    dev = Pl011(irq=IrqLine(sink, 33))
    bus = MmioBus()
    bus.attach(0x0900_0000, 0x1000, dev)
    bus.write(0x0900_0038, AccessWidth.Dword, 0x10)  # IMSC = RXIM
    dev.receive(b"!")
    assert sink.levels == {33: True}
    assert bus.read(0x0900_0000, AccessWidth.Dword) == 0x21
    assert sink.levels == {33: False}


def test_no_tx_callable_and_no_irq():
    dev = Pl011()
    dev.mmio_write(DR, D, 0x41, 0)
    assert dev.mmio_read(RIS, D, 0) == 0x20
    assert dev.irq_level is False  # IMSC = 0


def test_concurrent_receivers_lose_nothing(u):
    u.wr(LCR_H, 0x10)
    chunks = [bytes([i]) * 200 for i in range(1, 9)]
    threads = [threading.Thread(target=u.dev.receive, args=(c,)) for c in chunks]
    got = bytearray()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) or u.dev.backlog or u.dev.rx_fifo_level:
        got += u.drain()
    for t in threads:
        t.join()
    got += u.drain()
    assert sorted(got) == sorted(b"".join(chunks))


@settings(max_examples=50, deadline=None)
@given(
    fifo=st.booleans(),
    steps=st.lists(st.one_of(st.binary(min_size=1, max_size=50), st.integers(0, 40)),
                   max_size=30),
)
def test_received_bytes_come_out_in_order(fifo, steps):
    u = Uart()
    if fifo:
        u.wr(LCR_H, 0x10)
    sent = bytearray()
    got = bytearray()
    for step in steps:
        if isinstance(step, bytes):
            u.dev.receive(step)
            sent += step
        else:
            for _ in range(step):
                if u.rd(FR) & 0x10:
                    break
                got.append(u.rd(DR))
    got += u.drain()
    assert bytes(got) == bytes(sent)

"""16550A UART model: registers, FIFO, interrupts, loopback, host backlog.

Expected values are derived from the PC16550D datasheet register tables; the
bits that make up each literal are spelled out in the comments:

* IIR: bit 0 = 1 "no interrupt pending"; bits 3:1 = source (011 line status,
  010 received data, 110 character timeout, 001 THR empty, 000 modem status),
  so the values are 0x6 / 0x4 / 0xC / 0x2 / 0x0 / 0x1; bits 7:6 = 11 with FIFOs.
* LSR: DR bit 0, OE bit 1, THRE bit 5, TEMT bit 6 (an idle transmitter: 0x60).
* MSR: DCTS 0, DDSR 1, TERI 2, DDCD 3, CTS 4, DSR 5, RI 6, DCD 7.
* MCR: DTR 0, RTS 1, OUT1 2, OUT2 3, LOOP 4.
"""

import threading

import pytest

from pyaxvisor.devices.bus import BadAccess as BadPioAccess
from pyaxvisor.devices.bus import port_bus as PioBus
from pyaxvisor.devices.irq import IrqLine, NullIrqSink
from pyaxvisor.devices.uart16550 import COM1_BASE, COM1_IRQ, PORT_COUNT, Uart16550
from pyaxvisor.vcpu.width import AccessWidth

B, W, D = AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


class RecordingSink(NullIrqSink):
    def __init__(self) -> None:
        super().__init__()
        self.history: list[bool] = []

    def set_irq_level(self, irq: int, level: bool) -> None:
        super().set_irq_level(irq, level)
        self.history.append(level)


class Com1:
    """A 16550 on COM1's ports (0x3F8..0x3FF) wired to IRQ 4 of a recording sink."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.sink = RecordingSink()
        self.dev = Uart16550(tx=self.out.extend, irq=IrqLine(self.sink, COM1_IRQ))
        self.bus = PioBus()
        self.bus.attach(COM1_BASE, PORT_COUNT, self.dev)

    def rd(self, reg: int) -> int:
        return self.bus.read(COM1_BASE + reg, B)

    def wr(self, reg: int, value: int) -> None:
        self.bus.write(COM1_BASE + reg, B, value)

    @property
    def line(self) -> bool:
        return self.sink.levels.get(COM1_IRQ, False)

    def drain(self) -> bytes:
        got = bytearray()
        while self.rd(LSR) & 0x01:  # DR
            got.append(self.rd(RBR))
        return bytes(got)


@pytest.fixture
def u() -> Com1:
    return Com1()


def test_reset_values(u):
    assert u.rd(IER) == 0x00
    assert u.rd(IIR) == 0x01  # no interrupt pending, FIFOs off (bits 7:6 = 00)
    assert u.rd(LCR) == 0x00
    assert u.rd(MCR) == 0x00
    assert u.rd(LSR) == 0x60  # THRE | TEMT
    assert u.rd(MSR) == 0xB0  # CTS | DSR | DCD asserted by the host side, no deltas
    assert u.rd(SCR) == 0x00
    assert u.dev.divisor == 12  # 115200 / 12 = 9600 baud
    assert not u.line


def test_transmit_and_lsr(u):
    for ch in b"hi\n":
        u.wr(THR, ch)
        assert u.rd(LSR) == 0x60  # instantaneous transmission: THRE | TEMT stay set
    assert bytes(u.out) == b"hi\n"
    assert u.rd(IIR) == 0x01  # IER = 0: nothing reported


def test_dlab_divisor_latch(u):
    u.wr(IER, 0x05)  # ERBFI | ELSI
    u.wr(LCR, 0x83)  # DLAB | 8 data bits
    u.wr(DLL, 0x01)
    u.wr(DLM, 0x00)  # divisor 1 = 115200 baud
    assert (u.rd(DLL), u.rd(DLM)) == (0x01, 0x00)
    u.dev.receive(b"z")
    assert u.rd(DLL) == 0x01  # offset 0 with DLAB reads DLL, does not pop RBR
    assert u.dev.rx_fifo_level == 1
    assert bytes(u.out) == b""  # the DLL write transmitted nothing
    u.wr(LCR, 0x03)  # DLAB off, 8N1
    assert u.rd(LCR) == 0x03
    assert u.rd(IER) == 0x05  # the DLM write did not touch IER
    assert u.dev.divisor == 1 and u.dev.baud == 115200
    assert u.rd(RBR) == ord("z")
    u.wr(LCR, 0x80)
    u.wr(DLM, 0x04)
    u.wr(DLL, 0x17)
    assert u.dev.divisor == 0x417
    u.wr(LCR, 0x00)
    u.wr(THR, ord("A"))
    assert bytes(u.out) == b"A"


def test_fifo_enable_and_iir_high_bits(u):
    u.wr(FCR, 0x01)  # FE
    assert u.rd(IIR) == 0xC1  # FIFOs enabled (bits 7:6 = 11), no interrupt
    u.wr(FCR, 0xC7)  # FE | RFR | XFR | trigger 14
    assert u.rd(IIR) == 0xC1
    u.wr(FCR, 0x00)
    assert u.rd(IIR) == 0x01


@pytest.mark.parametrize(("fcr", "level"), [(0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)])
def test_rx_trigger_levels(u, fcr, level):
    u.wr(FCR, fcr)
    u.wr(IER, 0x01)  # ERBFI
    u.wr(MCR, 0x08)  # OUT2
    if level > 1:
        u.dev.receive(bytes(level - 1))
        assert u.rd(IIR) == 0xCC  # below the trigger: character timeout (0xC) | FIFO bits
    u.dev.receive(b"x")
    assert u.rd(IIR) == 0xC4  # at the trigger: received data available
    assert u.line


def test_rx_trigger_interrupt_and_drain(u):
    u.wr(FCR, 0x81)  # FE, RX trigger 8 (bits 7:6 = 10)
    u.wr(IER, 0x01)
    u.wr(MCR, 0x08)
    u.dev.receive(b"1234567")
    assert u.rd(IIR) == 0xCC  # 7 < 8: timeout
    u.dev.receive(b"8")
    assert u.rd(IIR) == 0xC4  # 8 >= 8: data available
    assert u.rd(LSR) == 0x61  # DR | THRE | TEMT
    assert u.rd(RBR) == ord("1")
    assert u.rd(IIR) == 0xCC  # back below the trigger
    assert u.drain() == b"2345678"
    assert u.rd(IIR) == 0xC1
    assert u.rd(LSR) == 0x60
    assert not u.line
    assert u.sink.history == [True, False]


def test_character_timeout_vs_no_fifo(u):
    u.wr(IER, 0x01)
    u.wr(MCR, 0x08)
    u.dev.receive(b"a")
    assert u.rd(IIR) == 0x04  # no FIFO: one character is "data available"
    assert u.rd(RBR) == ord("a")
    assert u.rd(IIR) == 0x01
    u.wr(FCR, 0xC1)  # FIFO, trigger 14
    u.dev.receive(b"ab")
    assert u.rd(IIR) == 0xCC  # 2 < 14: character timeout
    assert u.line
    assert u.rd(RBR) == ord("a")
    assert u.rd(IIR) == 0xCC  # one left, times out again
    assert u.rd(RBR) == ord("b")
    assert u.rd(IIR) == 0xC1
    assert not u.line
    assert u.rd(RBR) == 0x00  # empty FIFO reads 0


def test_thre_interrupt_raise_and_clear(u):
    u.wr(MCR, 0x08)  # OUT2
    assert u.rd(IIR) == 0x01
    u.wr(IER, 0x02)  # ETBEI 0 -> 1 with THR empty: THRE interrupt
    assert u.line
    assert u.rd(IIR) == 0x02  # reading IIR with THRE the source acknowledges it
    assert not u.line
    assert u.rd(IIR) == 0x01
    u.wr(THR, ord("x"))  # THR loaded then emptied at once: THRE again
    assert u.line
    u.wr(THR, ord("y"))  # writing THR clears it (line drops) and empties again (rises)
    assert u.line
    assert u.sink.history == [True, False, True, False, True]
    u.wr(IER, 0x00)
    assert not u.line
    assert u.rd(IIR) == 0x01
    assert bytes(u.out) == b"xy"


def test_thre_below_received_data_priority(u):
    u.wr(MCR, 0x08)
    u.wr(IER, 0x03)  # ERBFI | ETBEI
    u.dev.receive(b"q")
    assert u.rd(IIR) == 0x04  # data (priority 2) beats THRE (priority 3)
    assert u.rd(IIR) == 0x04  # ... and reading IIR did not ack THRE
    u.rd(RBR)
    assert u.rd(IIR) == 0x02
    assert u.rd(IIR) == 0x01


def test_interrupt_gated_by_out2(u):
    u.wr(IER, 0x02)
    u.wr(FCR, 0x00)
    assert not u.line  # THRE pending but OUT2 = 0
    assert u.dev.irq_level is False
    u.wr(MCR, 0x0B)  # DTR | RTS | OUT2, as Linux sets it
    assert u.line
    u.wr(MCR, 0x03)  # OUT2 off again
    assert not u.line
    assert u.rd(IIR) == 0x02  # still pending inside the UART


def test_loopback(u):
    u.wr(MCR, 0x10)  # LOOP
    u.wr(THR, ord("x"))
    assert bytes(u.out) == b""  # the serial output is held in the marking state
    assert u.rd(LSR) == 0x61  # DR | THRE | TEMT
    assert u.rd(RBR) == ord("x")
    u.dev.receive(b"h")  # host input waits while the receiver listens to the transmitter
    assert u.dev.backlog == 1
    assert u.rd(LSR) == 0x60
    u.wr(THR, ord("a"))
    u.wr(THR, ord("b"))  # no FIFO: overwrites RBR, overrun
    assert u.rd(LSR) == 0x63  # DR | OE | THRE | TEMT
    assert u.rd(LSR) == 0x61  # reading LSR clears OE
    assert u.rd(RBR) == ord("b")
    u.wr(MCR, 0x00)  # leave loopback: host input arrives
    assert u.dev.backlog == 0
    assert u.rd(RBR) == ord("h")
    u.wr(THR, ord("z"))
    assert bytes(u.out) == b"z"


def test_loopback_fifo_overrun_line_status_interrupt(u):
    u.wr(FCR, 0x01)
    u.wr(IER, 0x05)  # ERBFI | ELSI
    u.wr(MCR, 0x18)  # LOOP | OUT2
    for i in range(17):
        u.wr(THR, 0x40 + i)  # the 17th finds the 16-byte FIFO full
    assert u.rd(IIR) == 0xC6  # receiver line status, highest priority
    assert u.line
    assert u.rd(LSR) == 0x63  # DR | OE | THRE | TEMT; the read clears OE
    assert u.rd(IIR) == 0xC4  # 16 >= trigger 1: data available
    assert u.drain() == bytes(range(0x40, 0x50))  # the overrunning byte is lost


def test_scratch_register(u):
    for v in (0x5A, 0xA5, 0x00, 0xFF):
        u.wr(SCR, v)
        assert u.rd(SCR) == v
    assert bytes(u.out) == b""


def test_msr_deltas_in_loopback(u):
    u.wr(MCR, 0x10)  # LOOP, all outputs off: inputs CTS/DSR/DCD drop from the host's 1s
    assert u.rd(MSR) == 0x0B  # DCTS | DDSR | DDCD, status bits 0
    assert u.rd(MSR) == 0x00  # reading clears the deltas
    u.wr(MCR, 0x1F)  # LOOP | OUT2 | OUT1 | RTS | DTR -> DCD | RI | CTS | DSR
    assert u.rd(MSR) == 0xFB  # 0xF0 status | DCTS | DDSR | DDCD (RI rising: no TERI)
    assert u.rd(MSR) == 0xF0
    u.wr(MCR, 0x1B)  # OUT1 off: RI 1 -> 0, trailing edge
    assert u.rd(MSR) == 0xB4  # DCD | DSR | CTS | TERI
    u.wr(MCR, 0x1A)  # LOOP | OUT2 | RTS: Linux's loopback probe expects MSR & 0xF0 = 0x90
    assert u.rd(MSR) & 0xF0 == 0x90  # DCD | CTS
    assert u.rd(MSR) == 0x90


def test_modem_status_interrupt(u):
    u.wr(IER, 0x08)  # EDSSI
    u.wr(MCR, 0x18)  # LOOP | OUT2 -> DCD stays 1 (host default), CTS/DSR fall
    assert u.rd(IIR) == 0x00  # modem status interrupt
    assert u.line
    assert u.rd(MSR) == 0x83  # DCD | DDSR | DCTS (DCD did not change: no DDCD)
    assert u.rd(IIR) == 0x01
    assert not u.line


def test_modem_inputs_from_host(u):
    u.dev.set_modem_inputs(cts=True, dsr=True, ri=True, dcd=True)
    assert u.rd(MSR) == 0xF0  # RI rose: no delta for RI's leading edge
    u.dev.set_modem_inputs(cts=False, dsr=True, ri=False, dcd=True)
    assert u.rd(MSR) == 0xA5  # DCD | DSR | TERI | DCTS


def test_host_backlog_beyond_fifo(u):
    data = bytes(range(40))
    u.wr(FCR, 0x07)  # FE | RFR | XFR
    u.dev.receive(data)
    assert u.dev.rx_fifo_level == 16
    assert u.dev.backlog == 24
    assert u.drain() == data  # nothing dropped, in order
    assert u.dev.backlog == 0
    u.wr(FCR, 0x00)  # no FIFO: one character at a time, still nothing dropped
    u.dev.receive(b"abcdefghijklmnopqrstuvwxyz")
    assert u.dev.rx_fifo_level == 1
    assert u.drain() == b"abcdefghijklmnopqrstuvwxyz"


def test_fifo_reset_keeps_backlog(u):
    u.wr(FCR, 0x01)
    u.dev.receive(bytes(range(20)))
    u.wr(FCR, 0x03)  # FE | RFR: the 16 characters in the FIFO are discarded
    assert u.drain() == bytes(range(16, 20))  # the host backlog refills it


def test_concurrent_host_input(u):
    u.wr(FCR, 0x01)
    data = bytes(i & 0xFF for i in range(5000))

    def feed() -> None:
        for i in range(0, len(data), 7):
            u.dev.receive(data[i:i + 7])

    t = threading.Thread(target=feed)
    t.start()
    got = bytearray()
    while len(got) < len(data):
        got += u.drain()
    t.join()
    assert bytes(got) == data


def test_wide_and_out_of_range_accesses_raise(u):
    for width in (W, D):
        with pytest.raises(BadPioAccess):
            u.bus.read(COM1_BASE, width)
        with pytest.raises(BadPioAccess):
            u.bus.write(COM1_BASE + LSR, width, 0)
    with pytest.raises(BadPioAccess):
        u.dev.pio_read(8, B, 0)
    with pytest.raises(BadPioAccess):
        u.dev.pio_write(-1, B, 0, 0)
    assert bytes(u.out) == b""


def test_writes_to_status_registers_ignored_and_reset(u):
    u.wr(LSR, 0xFF)
    u.wr(MSR, 0xFF)
    assert u.rd(LSR) == 0x60
    assert u.rd(MSR) == 0xB0
    u.wr(FCR, 0x01)
    u.wr(IER, 0x0F)
    u.wr(LCR, 0x1B)
    u.wr(MCR, 0x0B)
    u.dev.receive(b"keep")
    u.dev.reset()
    assert (u.rd(IER), u.rd(IIR), u.rd(LCR), u.rd(MCR)) == (0x00, 0x01, 0x00, 0x00)
    assert not u.line
    assert u.drain() == b"keep"  # FIFO contents went back to the host backlog

"""National Semiconductor / TI 16550A UART, the PC's COM port, on the port-I/O bus.

The register map and behaviour follow the PC16550D / TL16C550 datasheets;
QEMU's ``hw/char/serial.c`` is the reference for what guests have been tested
against (Linux's ``8250`` driver, Windows, firmware). The device takes offsets
0..7 of its port range (COM1 is ports 0x3F8..0x3FF on IRQ 4; where it lives is
the VM's business):

====== ================= ================== ==========================
offset read (DLAB=0)     write (DLAB=0)     DLAB=1
====== ================= ================== ==========================
0      RBR receive buf.  THR transmit hold  DLL divisor latch, low
1      IER               IER                DLM divisor latch, high
2      IIR interrupt id  FCR FIFO control
3      LCR line control  LCR
4      MCR modem control MCR
5      LSR line status   (ignored)
6      MSR modem status  (ignored)
7      SCR scratch       SCR
====== ================= ================== ==========================

Behaviour:

* Transmission is instantaneous: a THR write hands the byte to ``tx`` at once,
  so LSR.THRE (bit 5) and LSR.TEMT (bit 6) always read 1. Divisor and line
  settings are stored but do not affect the data.
* Receive side: a 16-byte FIFO when FCR.FE (bit 0) is set, a 1-byte RBR
  otherwise. Host input (:meth:`Uart16550.receive`) that does not fit waits in
  an unbounded host-side backlog and moves into the FIFO as the guest drains
  it; host input is never dropped. Changing FCR.FE or writing FCR.RFR (bit 1)
  empties the guest-visible receive FIFO, as on the chip (the backlog is kept
  and refills it).
* IIR reports the highest-priority pending interrupt enabled in IER:

  ===== ========================================== ==========================
  IIR   source                                     cleared by
  ===== ========================================== ==========================
  0x6   receiver line status (LSR.OE/PE/FE/BI)     reading LSR
  0x4   received data at/above the trigger level   reading RBR below trigger
  0xC   character timeout (FIFO mode, data below   reading RBR (until empty)
        the trigger level)
  0x2   THR empty                                  reading IIR (when it is
                                                   the source), writing THR
  0x0   modem status (MSR delta bits)              reading MSR
  0x1   nothing pending
  ===== ========================================== ==========================

  Bits 7:6 of IIR read 0b11 while the FIFOs are enabled. The RX trigger level
  is 1, 4, 8 or 14 characters (FCR bits 7:6); without FIFO it is 1. The
  4-character-time timeout is modelled as immediate: a character timeout is
  pending whenever the FIFO holds fewer characters than the trigger level.
* The THRE interrupt is latched when the THR becomes empty (after each
  transmitted byte, on a transmit FIFO reset) and when IER.ETBEI goes from 0
  to 1 (the THR is always empty then; Linux and Windows rely on this). A THR
  write clears it and the instant transmission raises it again, so the IRQ
  output drops and rises (a new edge for the edge-triggered 8259).
* MCR.LOOP (bit 4): transmitted bytes go to the receiver instead of ``tx``;
  host input waits in the backlog; the modem inputs are driven by the MCR
  outputs (DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD). Outside loopback the modem
  inputs are what :meth:`Uart16550.set_modem_inputs` last set (CTS, DSR and
  DCD asserted by default). A change of an input sets its MSR delta bit
  (DCTS bit 0, DDSR bit 1, DDCD bit 3; TERI bit 2 only when RI goes from 1 to
  0); reading MSR clears them.
* A loopback byte that finds the receiver full sets LSR.OE (bit 1); in FIFO
  mode the byte is lost, without FIFO it overwrites RBR. Reading LSR clears OE.
* The IRQ output is ``(an interrupt is pending) AND MCR.OUT2`` (bit 3): on PCs
  OUT2 enables the buffer between the UART's INTRPT pin and the ISA IRQ line.
  Boards without that buffer (an ns16550a on an SoC, QEMU's RISC-V ``virt``) build
  the UART with ``out2_gates_irq=False``: the output is then the pending
  interrupt alone. (QEMU ignores OUT2; the loopback forcing of the OUT2 pin is not
  modelled.)
* Only 1-byte accesses at offsets 0..7 exist; anything else raises
  :class:`BadAccess`.
"""

from __future__ import annotations

from collections.abc import Callable

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.devices.host_input import HostInput
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.vcpu.register_mirror import RegisterMirror
from pyaxvisor.vcpu.width import AccessWidth

#: Standard PC COM ports and their ISA IRQs.
COM1_BASE, COM1_IRQ = 0x3F8, 4
COM2_BASE, COM2_IRQ = 0x2F8, 3
COM3_BASE, COM3_IRQ = 0x3E8, 4
COM4_BASE, COM4_IRQ = 0x2E8, 3
#: Number of ports the UART occupies.
PORT_COUNT = 8
#: Receive FIFO depth when FCR.FE is set.
FIFO_DEPTH = 16
#: The 1.8432 MHz crystal divided by 16: the baud rate for a divisor of 1.
BASE_BAUD = 115200

# Register offsets.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

# IER bits.
IER_ERBFI = 1 << 0  # received data available (and character timeout)
IER_ETBEI = 1 << 1  # THR empty
IER_ELSI = 1 << 2  # receiver line status
IER_EDSSI = 1 << 3  # modem status

# IIR values (bits 3:0) and the FIFO-enabled bits 7:6.
IIR_NO_INT = 0x1
IIR_MSI = 0x0
IIR_THRI = 0x2
IIR_RDI = 0x4
IIR_RLSI = 0x6
IIR_CTI = 0xC
IIR_FIFO = 0xC0

# FCR bits.
FCR_FE = 1 << 0
FCR_RFR = 1 << 1
FCR_XFR = 1 << 2
FCR_DMA = 1 << 3
_FCR_TRIGGER = {0: 1, 1: 4, 2: 8, 3: 14}

# LCR bits.
LCR_DLAB = 1 << 7

# MCR bits.
MCR_DTR = 1 << 0
MCR_RTS = 1 << 1
MCR_OUT1 = 1 << 2
MCR_OUT2 = 1 << 3
MCR_LOOP = 1 << 4
_MCR_MASK = 0x1F

# LSR bits.
LSR_DR = 1 << 0
LSR_OE = 1 << 1
LSR_PE = 1 << 2
LSR_FE = 1 << 3
LSR_BI = 1 << 4
LSR_THRE = 1 << 5
LSR_TEMT = 1 << 6
LSR_RXFE = 1 << 7  # error in RX FIFO
_LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

# MSR bits.
MSR_DCTS = 1 << 0
MSR_DDSR = 1 << 1
MSR_TERI = 1 << 2
MSR_DDCD = 1 << 3
MSR_CTS = 1 << 4
MSR_DSR = 1 << 5
MSR_RI = 1 << 6
MSR_DCD = 1 << 7
_MSR_DELTAS = 0x0F

_DIVISOR_RESET = 12  # 9600 baud, QEMU's reset value (the chip leaves it undefined)


class Uart16550(HostInput, Device):
    """One 16550A UART.

    ``tx`` receives every transmitted byte (as a one-byte ``bytes``); ``irq`` is
    the interrupt output after the OUT2 gate. Either may be ``None``. ``tx``
    and the IRQ sink are called with the UART's lock held; the lock is
    re-entrant, so ``tx`` may call :meth:`receive` from the same thread.
    """

    name = "uart16550"

    def __init__(
        self,
        tx: Callable[[bytes], None] | None = None,
        irq: IrqLine | None = None,
        *,
        name: str = "uart16550",
        out2_gates_irq: bool = True,
        mirrored: bool = False,
    ) -> None:
        self.name = name
        #: ``mirrored``: a software CPU reads LSR, the register polling loops read, from
        #: a table while reading it changes nothing, kept current after every change
        #: (publishing more registers cost more on every access than it saved).
        self.mirror = RegisterMirror(PORT_COUNT) if mirrored else None
        self._published_lsr = -1
        self._tx = tx
        self._irq = irq
        self._irq_gate = MCR_OUT2 if out2_gates_irq else 0
        self._init_host_input()
        self._modem_inputs = MSR_CTS | MSR_DSR | MSR_DCD
        self._divisor = _DIVISOR_RESET
        self._reset_registers()
        self._publish()

    # ------------------------------------------------------------------ host side

    def set_modem_inputs(
        self, *, cts: bool = True, dsr: bool = True, ri: bool = False, dcd: bool = True
    ) -> None:
        """Drive the modem-status inputs (seen in MSR outside loopback)."""
        with self._lock:
            self._modem_inputs = (
                (MSR_CTS if cts else 0) | (MSR_DSR if dsr else 0)
                | (MSR_RI if ri else 0) | (MSR_DCD if dcd else 0))
            self._update_msr()
            self._update_irq()
            self._publish()

    def receive(self, data: bytes) -> None:
        with self._lock:
            super().receive(data)
            self._publish()

    @property
    def irq_level(self) -> bool:
        """The level of the (OUT2-gated) interrupt output."""
        with self._lock:
            return self._irq_out()

    @property
    def divisor(self) -> int:
        """The divisor latch (DLM:DLL)."""
        with self._lock:
            return self._divisor

    @property
    def baud(self) -> float:
        """The programmed baud rate (0 when the divisor is 0)."""
        with self._lock:
            return BASE_BAUD / self._divisor if self._divisor else 0.0

    def reset(self) -> None:
        """Master reset: registers to their datasheet reset values. Characters in
        the receive FIFO go back to the front of the host backlog."""
        with self._lock:
            while self._rx:
                self._backlog.appendleft(self._rx.pop())
            self._reset_registers()
            self._fill()
            self._update_irq()
            self._publish()

    # ------------------------------------------------------------------ port I/O

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self._check(offset, width, "read")
        with self._lock:
            value = self._read(offset)
            self._publish()
            return value

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self._check(offset, width, "write")
        with self._lock:
            self._write(offset, value & 0xFF)
            self._publish()

    # ------------------------------------------------------------------ internals

    def _check(self, offset: int, width: AccessWidth, what: str) -> None:
        if width != AccessWidth.Byte:
            raise BadAccess(
                f"{self.name}: {width.size}-byte {what} at offset {offset:#x}: "
                "registers are 8-bit")
        if not 0 <= offset < PORT_COUNT:
            raise BadAccess(f"{self.name}: {what} at offset {offset:#x} is past register 7")

    def _reset_registers(self) -> None:
        # Datasheet master-reset values; the divisor latch is not affected.
        self._ier = 0
        self._fcr = 0
        self._lcr = 0
        self._mcr = 0
        self._lsr_err = 0  # OE/PE/FE/BI; DR, THRE, TEMT are derived
        self._scr = 0
        self._rbr_last = 0
        self._thr_ipending = False
        self._rx.clear()
        self._msr_state = self._inputs()
        self._msr_delta = 0

    # --- receive side

    def _fifo_enabled(self) -> bool:
        return bool(self._fcr & FCR_FE)

    def _capacity(self) -> int:
        return FIFO_DEPTH if self._fifo_enabled() else 1

    def _trigger(self) -> int:
        if not self._fifo_enabled():
            return 1
        return _FCR_TRIGGER[self._fcr >> 6]

    def _rx_blocked(self) -> bool:
        return bool(self._mcr & MCR_LOOP)  # the receiver listens to the transmitter only

    def _loopback_receive(self, byte: int) -> None:
        if len(self._rx) < self._capacity():
            self._rx.append(byte)
            return
        self._lsr_err |= LSR_OE
        if not self._fifo_enabled():
            self._rx[-1] = byte  # the new character overwrites RBR

    def _read_rbr(self) -> int:
        if self._rx:
            self._rbr_last = self._rx.popleft()
            self._fill()
            self._update_irq()
            return self._rbr_last
        return 0 if self._fifo_enabled() else self._rbr_last

    # --- transmit side

    def _transmit(self, byte: int) -> None:
        self._thr_ipending = False  # THR loaded
        self._update_irq()
        if self._mcr & MCR_LOOP:
            self._loopback_receive(byte)
        elif self._tx is not None:
            self._tx(bytes((byte,)))
        self._thr_ipending = True  # ... and empty again at once
        self._update_irq()

    # --- modem status

    def _inputs(self) -> int:
        """The modem inputs in MSR bit positions 7:4, as the receiver sees them."""
        if self._mcr & MCR_LOOP:
            m = self._mcr
            return (
                (MSR_DSR if m & MCR_DTR else 0) | (MSR_CTS if m & MCR_RTS else 0)
                | (MSR_RI if m & MCR_OUT1 else 0) | (MSR_DCD if m & MCR_OUT2 else 0))
        return self._modem_inputs

    def _update_msr(self) -> None:
        new = self._inputs()
        old, self._msr_state = self._msr_state, new
        changed = (old ^ new) >> 4
        self._msr_delta |= changed & (MSR_DCTS | MSR_DDSR | MSR_DDCD)
        if old & MSR_RI and not new & MSR_RI:
            self._msr_delta |= MSR_TERI  # trailing edge of ring indicator

    # --- interrupts

    def _lsr(self) -> int:
        lsr = self._lsr_err | LSR_THRE | LSR_TEMT
        if self._rx:
            lsr |= LSR_DR
        return lsr

    def _iir_id(self) -> int:
        ier = self._ier
        if ier & IER_ELSI and self._lsr_err & _LSR_ERRORS:
            return IIR_RLSI
        if ier & IER_ERBFI and self._rx:
            if len(self._rx) >= self._trigger():
                return IIR_RDI
            return IIR_CTI  # only reachable in FIFO mode (the trigger is 1 otherwise)
        if ier & IER_ETBEI and self._thr_ipending:
            return IIR_THRI
        if ier & IER_EDSSI and self._msr_delta:
            return IIR_MSI
        return IIR_NO_INT

    def _irq_out(self) -> bool:
        return self._iir_id() != IIR_NO_INT and self._mcr & self._irq_gate == self._irq_gate

    def _update_irq(self) -> None:
        if self._irq is not None:
            self._irq.set_level(self._irq_out())

    # --- the mirror

    def _publish(self) -> None:
        """Keep LSR in :attr:`mirror` (if any) while reading it changes nothing (no error
        bits, which a read clears): the register polling loops read. Called after every
        change; writes the table only when the value does."""
        mirror = self.mirror
        if mirror is None:
            return
        lsr = -1 if self._lsr_err else self._lsr()
        if lsr != self._published_lsr:
            self._published_lsr = lsr
            if lsr < 0:
                mirror.hide(LSR, 1)
            else:
                mirror.publish(LSR, 1, lsr)

    # --- register access

    def _dlab(self) -> bool:
        return bool(self._lcr & LCR_DLAB)

    def _read(self, offset: int) -> int:
        if offset == RBR:
            return self._divisor & 0xFF if self._dlab() else self._read_rbr()
        if offset == IER:
            return self._divisor >> 8 if self._dlab() else self._ier
        if offset == IIR:
            iid = self._iir_id()
            if iid == IIR_THRI:
                self._thr_ipending = False  # reading IIR acknowledges THRE
                self._update_irq()
            return iid | (IIR_FIFO if self._fifo_enabled() else 0)
        if offset == LCR:
            return self._lcr
        if offset == MCR:
            return self._mcr
        if offset == LSR:
            lsr = self._lsr()
            if self._lsr_err:
                self._lsr_err = 0  # reading LSR clears the error bits
                self._update_irq()
            return lsr
        if offset == MSR:
            msr = self._msr_state | self._msr_delta
            if self._msr_delta:
                self._msr_delta = 0
                self._update_irq()
            return msr
        return self._scr

    def _write(self, offset: int, value: int) -> None:
        if offset == THR:
            if self._dlab():
                self._divisor = (self._divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif offset == IER:
            if self._dlab():
                self._divisor = (self._divisor & 0x00FF) | (value << 8)
            else:
                old, self._ier = self._ier, value & 0x0F
                if self._ier & IER_ETBEI and not old & IER_ETBEI:
                    self._thr_ipending = True  # THR is empty: THRE fires on enable
                self._update_irq()
        elif offset == FCR:
            self._write_fcr(value)
        elif offset == LCR:
            self._lcr = value
        elif offset == MCR:
            old, self._mcr = self._mcr, value & _MCR_MASK
            self._update_msr()
            if old & MCR_LOOP and not self._mcr & MCR_LOOP:
                self._fill()  # the receiver listens to the host again
            self._update_irq()
        elif offset == SCR:
            self._scr = value
        # LSR and MSR ignore writes (factory test only on the chip).

    def _write_fcr(self, value: int) -> None:
        if (value ^ self._fcr) & FCR_FE:
            value |= FCR_RFR | FCR_XFR  # switching FIFO mode resets both FIFOs
        if value & FCR_RFR:
            self._rx.clear()
        if value & FCR_XFR:
            self._thr_ipending = True  # the (empty) transmitter can take data
        self._fcr = value & (FCR_FE | FCR_DMA | 0xC0)  # reset bits self-clear
        self._fill()
        self._update_irq()

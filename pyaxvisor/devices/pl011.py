"""ARM PrimeCell PL011 UART, as found on QEMU's ``virt`` board.

The model follows the PL011 Technical Reference Manual (ARM DDI 0183) for the
register map and QEMU's ``hw/char/pl011.c`` for the behaviour guests have been
tested against (Linux's ``amba-pl011`` driver in particular):

* Transmission is instantaneous: a write to UARTDR hands the byte to the ``tx``
  callable at once, so the flag register always reports TXFE=1, TXFF=0,
  BUSY=0. Like QEMU, the byte is sent even when UARTEN/TXE are clear.
* The receive side is a 32-entry FIFO when UARTLCR_H.FEN is set and a 1-entry
  holding register otherwise. Host input (:meth:`Pl011.receive`) that does not
  fit waits in an unbounded host-side backlog and is moved into the FIFO as
  the guest drains it; nothing is ever dropped. Like QEMU (and unlike the
  silicon), input is accepted while UARTEN/RXE are clear.
* Interrupt status bits (UARTRIS) are latched on events and cleared either by
  UARTICR or by the condition going away:

  - RXIS (bit 4) is set when a character arrives and the fill level is at or
    above the trigger level (1 without FIFO; 4/8/16/24/28 of 32 for
    IFLS.RXIFLSEL = 0..4 with FIFO, reserved encodings act as 1/2). It is
    cleared when reads take the fill level below the trigger.
  - RTIS (bit 6, receive timeout) is set when a character arrives while the
    FIFO is enabled, or when the FIFO gets enabled with characters waiting;
    the 32-bit-period timeout is modelled as immediate. It is cleared when
    the FIFO becomes empty or is disabled. Linux relies on it for input
    shorter than the trigger level.
  - Writes to UARTLCR_H and UARTIFLS re-derive RXIS from the fill level and
    the new trigger level.
  - TXIS (bit 5) is set after every UARTDR write (the transmit FIFO has
    drained at once) and when UARTIMSC.TXIM goes from 0 to 1 (the FIFO is
    always empty then). It is cleared only by UARTICR; Linux masks it
    instead when it has nothing to send.
  - OEIS (bit 10) is set when a loopback byte finds the receive FIFO full.

  The interrupt line level is ``(RIS & IMSC) != 0`` and is recomputed after
  every change.
* UARTCR.LBE (loopback) routes transmitted bytes into the receive FIFO (they
  are still given to ``tx``, as QEMU does); host input waits in the backlog
  while loopback is on.
* Changing UARTLCR_H.FEN keeps received characters: when the FIFO shrinks to
  one entry, the characters that no longer fit go back to the front of the
  backlog (QEMU discards them).
* Registers take Byte, Word and Dword accesses that stay within one 32-bit
  register; a narrow write to a plain register updates only the bytes it
  covers. Any read that touches UARTDR pops the receive FIFO (the bus reads
  the whole register); a write to UARTDR transmits only when it covers byte
  0. Qword accesses, accesses straddling two registers and offsets past the
  4 KiB window raise :class:`BadAccess`; unknown offsets inside the
  window read as zero and ignore writes.
"""

from __future__ import annotations

from collections.abc import Callable

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.devices.host_input import HostInput
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.vcpu.register_mirror import RegisterMirror
from pyaxvisor.vcpu.width import AccessWidth

#: Size of the register window.
MMIO_SIZE = 0x1000

#: Receive FIFO depth when UARTLCR_H.FEN is set.
FIFO_DEPTH = 32

# Register offsets.
UARTDR = 0x000
UARTRSR = 0x004  # UARTECR on write
UARTFR = 0x018
UARTILPR = 0x020
UARTIBRD = 0x024
UARTFBRD = 0x028
UARTLCR_H = 0x02C
UARTCR = 0x030
UARTIFLS = 0x034
UARTIMSC = 0x038
UARTRIS = 0x03C
UARTMIS = 0x040
UARTICR = 0x044
UARTDMACR = 0x048

# UARTFR bits.
FR_BUSY = 1 << 3
FR_RXFE = 1 << 4
FR_TXFF = 1 << 5
FR_RXFF = 1 << 6
FR_TXFE = 1 << 7

# UARTLCR_H bits.
LCR_H_FEN = 1 << 4

# UARTCR bits.
CR_UARTEN = 1 << 0
CR_LBE = 1 << 7
CR_TXE = 1 << 8
CR_RXE = 1 << 9

# Interrupt bits of UARTIMSC / UARTRIS / UARTMIS / UARTICR.
INT_RX = 1 << 4
INT_TX = 1 << 5
INT_RT = 1 << 6
INT_OE = 1 << 10

# UARTRSR bits.
RSR_OE = 1 << 3

_CR_RESET = CR_TXE | CR_RXE  # 0x300
_IFLS_RESET = 0x12  # RX and TX trigger at 1/2
_CR_MASK = 0xFF87  # bits 6:3 are reserved
_INT_MASK = 0x7FF
_RX_TRIGGERS = {0: 4, 1: 8, 2: 16, 3: 24, 4: 28}

#: The registers :meth:`Pl011._publish_all` publishes (reads of UARTDR take a character).
_MIRRORED = (UARTRSR, UARTFR, UARTILPR, UARTIBRD, UARTFBRD, UARTLCR_H, UARTCR, UARTIFLS,
             UARTIMSC, UARTRIS, UARTMIS, UARTDMACR)

# UARTPeriphID0-3 then UARTPCellID0-3, at 0xFE0..0xFFC.
_ID_BASE = 0xFE0
_ID_BYTES = (0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)


class Pl011(HostInput, Device):
    """One PL011 UART.

    ``tx`` receives every transmitted byte (as a one-byte ``bytes``); ``irq`` is
    the combined interrupt output (UARTINTR). Either may be ``None`` (bytes are
    discarded / no interrupt is wired). ``tx`` and the IRQ sink are called with
    the UART's lock held; the lock is re-entrant, so ``tx`` may call
    :meth:`receive` from the same thread.
    """

    name = "pl011"

    def __init__(
        self,
        tx: Callable[[bytes], None] | None = None,
        irq: IrqLine | None = None,
        *,
        name: str = "pl011",
    ) -> None:
        self.name = name
        self._tx = tx
        self._irq = irq
        self._init_host_input()
        self.mirror = RegisterMirror(MMIO_SIZE)
        self._reset_registers()
        for i, byte in enumerate(_ID_BYTES):
            self.mirror.publish(_ID_BASE + 4 * i, 4, byte)
        self._publish_all()

    # ------------------------------------------------------------------ host side

    @property
    def irq_level(self) -> bool:
        """The level the interrupt output is driving: ``(RIS & IMSC) != 0``."""
        with self._lock:
            return bool(self._ris & self._imsc)

    def reset(self) -> None:
        """Return every register to its reset value. Received bytes are kept: the
        FIFO contents go back to the front of the host backlog."""
        with self._lock:
            while self._rx:
                self._backlog.appendleft(self._rx.pop())
            self._reset_registers()
            self._fill()
            self._update_irq()
            self._publish_all()

    # ------------------------------------------------------------------ MMIO

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self._check(offset, width, write=False)
        reg, shift = offset & ~3, (offset & 3) * 8
        with self._lock:
            value = self._read_reg(reg)
        return (value >> shift) & width.mask

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self._check(offset, width, write=True)
        reg, shift = offset & ~3, (offset & 3) * 8
        value &= width.mask
        with self._lock:
            if reg == UARTDR:
                if shift == 0:
                    self._transmit(value & 0xFF)
            elif reg == UARTICR:
                self._ris &= ~(value << shift)
                self._update_irq()
            elif reg == UARTRSR:
                self._rsr = 0  # UARTECR: any write clears the error flags
                self._publish_all()
            else:
                lane = width.mask << shift
                old = self._peek_reg(reg)
                self._write_reg(reg, (old & ~lane) | (value << shift))
                self._publish_all()

    # ------------------------------------------------------------------ internals

    def _reset_registers(self) -> None:
        self._rsr = 0
        self._ilpr = 0
        self._ibrd = 0
        self._fbrd = 0
        self._lcr_h = 0
        self._cr = _CR_RESET
        self._ifls = _IFLS_RESET
        self._imsc = 0
        self._ris = 0
        self._dmacr = 0

    def _check(self, offset: int, width: AccessWidth, *, write: bool) -> None:
        what = "write" if write else "read"
        if width not in (AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword):
            raise BadAccess(
                f"{self.name}: {width.size}-byte {what} at {offset:#x}: registers are 32-bit")
        if offset < 0 or offset + width.size > MMIO_SIZE:
            raise BadAccess(f"{self.name}: {what} at {offset:#x} is outside the 4 KiB window")
        if (offset & 3) + width.size > 4:
            raise BadAccess(
                f"{self.name}: {width.size}-byte {what} at {offset:#x} straddles two registers")

    def _fifo_enabled(self) -> bool:
        return bool(self._lcr_h & LCR_H_FEN)

    def _capacity(self) -> int:
        return FIFO_DEPTH if self._fifo_enabled() else 1

    def _rx_trigger(self) -> int:
        if not self._fifo_enabled():
            return 1
        return _RX_TRIGGERS.get((self._ifls >> 3) & 7, FIFO_DEPTH // 2)

    def _rx_arrived(self) -> None:
        """Characters were added to the receive FIFO."""
        if len(self._rx) >= self._rx_trigger():
            self._ris |= INT_RX
        if self._fifo_enabled() and self._rx:
            self._ris |= INT_RT

    def _rx_drained(self) -> None:
        """Characters left the receive FIFO."""
        if len(self._rx) < self._rx_trigger():
            self._ris &= ~INT_RX
        if not self._rx:
            self._ris &= ~INT_RT

    def _rx_blocked(self) -> bool:
        return bool(self._cr & CR_LBE)  # the receiver listens to the transmitter only

    def _update_irq(self) -> None:
        """Drive the interrupt line and publish what a change of the FIFO or the
        interrupt state moves (every such change ends here)."""
        if self._irq is not None:
            self._irq.set_level(bool(self._ris & self._imsc))
        assert self.mirror is not None
        self.mirror.publish_words({UARTFR: self._flags(), UARTRIS: self._ris,
                                   UARTMIS: self._ris & self._imsc, UARTRSR: self._rsr})

    def _publish_all(self) -> None:
        """Publish every register a read has no side effect on (all but UARTDR) in
        :attr:`mirror`, as it is now (after a register write or a reset)."""
        assert self.mirror is not None
        self.mirror.publish_words({reg: self._peek_reg(reg) for reg in _MIRRORED})

    def _transmit(self, byte: int) -> None:
        if self._tx is not None:
            self._tx(bytes((byte,)))
        if self._cr & CR_LBE:
            if len(self._rx) < self._capacity():
                self._rx.append(byte)
                self._rx_arrived()
            else:
                self._rsr |= RSR_OE
                self._ris |= INT_OE
        self._ris |= INT_TX
        self._update_irq()

    def _pop_rx(self) -> int:
        if not self._rx:
            return 0
        ch = self._rx.popleft()
        self._rx_drained()
        self._fill()
        self._update_irq()
        return ch  # error bits 11:8 are always zero

    def _flags(self) -> int:
        fr = FR_TXFE
        if not self._rx:
            fr |= FR_RXFE
        if len(self._rx) >= self._capacity():
            fr |= FR_RXFF
        return fr

    def _read_reg(self, reg: int) -> int:
        if reg == UARTDR:
            return self._pop_rx()
        return self._peek_reg(reg)

    def _peek_reg(self, reg: int) -> int:
        """A register's value, without read side effects."""
        simple = {
            UARTRSR: self._rsr,
            UARTILPR: self._ilpr,
            UARTIBRD: self._ibrd,
            UARTFBRD: self._fbrd,
            UARTLCR_H: self._lcr_h,
            UARTCR: self._cr,
            UARTIFLS: self._ifls,
            UARTIMSC: self._imsc,
            UARTRIS: self._ris,
            UARTMIS: self._ris & self._imsc,
            UARTDMACR: self._dmacr,
        }
        if reg in simple:
            return simple[reg]
        if reg == UARTFR:
            return self._flags()
        if _ID_BASE <= reg < MMIO_SIZE:
            return _ID_BYTES[(reg - _ID_BASE) >> 2]
        return 0

    def _write_reg(self, reg: int, value: int) -> None:
        if reg == UARTILPR:
            self._ilpr = value & 0xFF
        elif reg == UARTIBRD:
            self._ibrd = value & 0xFFFF
        elif reg == UARTFBRD:
            self._fbrd = value & 0x3F
        elif reg == UARTLCR_H:
            self._write_lcr_h(value & 0xFF)
        elif reg == UARTCR:
            old = self._cr
            self._cr = value & _CR_MASK
            if old & CR_LBE and not self._cr & CR_LBE:
                self._fill()
                self._update_irq()
        elif reg == UARTIFLS:
            self._ifls = value & 0x3F
            self._reevaluate_rx()
        elif reg == UARTIMSC:
            old = self._imsc
            self._imsc = value & _INT_MASK
            if self._imsc & INT_TX and not old & INT_TX:
                self._ris |= INT_TX  # the (always empty) transmit FIFO can take data
            self._update_irq()
        elif reg == UARTDMACR:
            self._dmacr = value & 0x7
        # UARTFR, UARTRIS, UARTMIS, the ID registers and reserved offsets ignore writes.

    def _write_lcr_h(self, value: int) -> None:
        fen_changed = (self._lcr_h ^ value) & LCR_H_FEN
        self._lcr_h = value
        if fen_changed:
            cap = self._capacity()
            while len(self._rx) > cap:
                self._backlog.appendleft(self._rx.pop())
            if not self._fifo_enabled():
                self._ris &= ~INT_RT
        self._reevaluate_rx()

    def _reevaluate_rx(self) -> None:
        """The trigger level or FIFO mode changed: re-derive RXIS/RTIS from the fill level."""
        if len(self._rx) >= self._rx_trigger():
            self._ris |= INT_RX
        else:
            self._ris &= ~INT_RX
        if not self._rx:
            self._ris &= ~INT_RT
        elif self._fifo_enabled():
            self._ris |= INT_RT  # characters already waiting will time out
        self._fill()
        self._update_irq()

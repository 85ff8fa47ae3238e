"""ARM PrimeCell PL061 GPIO, as on QEMU's ``virt`` board (where pin 3 is the power key).

Register map (PL061 Technical Reference Manual, ARM DDI 0190), 4 KiB window, 8 pins:

========= =========== ==================================================================
offset    register    behaviour here
========= =========== ==================================================================
0x000-3FC GPIODATA    address bits 9:2 mask the pins an access sees: a read returns
                      ``pins & mask`` (input pins their level, output pins what was
                      driven); a write changes the masked output pins only
0x400     GPIODIR     1 = output
0x404     GPIOIS      1 = level-sensitive, 0 = edge
0x408     GPIOIBE     1 = both edges (edge pins)
0x40C     GPIOIEV     1 = rising edge / high level, 0 = falling / low
0x410     GPIOIE      interrupt mask, 1 = enabled
0x414     GPIORIS     raw interrupt status (read only)
0x418     GPIOMIS     ``RIS & IE`` (read only)
0x41C     GPIOIC      write 1 to clear an edge interrupt (write only)
0x420     GPIOAFSEL   stored (no hardware control here)
0xFE0-FFC IDs         GPIOPeriphID0-3 ``61 10 04 00``, GPIOPCellID0-3 ``0D F0 05 B1``
========= =========== ==================================================================

Edge pins latch their interrupt in RIS until GPIOIC clears it; a level pin's RIS bit
follows its level (``IEV`` says which level). The interrupt line (``irq``, level) is
high while ``MIS`` is non-zero. Accesses are 1, 2 or 4 bytes within one register
(others :class:`~pyaxvisor.devices.bus.BadAccess`); reserved offsets read 0 and ignore
writes. Inputs come from the host side with :meth:`Pl061.set_input` (any thread).

Threads: one lock serialises the state; the interrupt line is driven under it (its
sink, the GIC, never calls back).
"""

from __future__ import annotations

import threading

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth

__all__ = ["MMIO_SIZE", "PINS", "Pl061"]

MMIO_SIZE = 0x1000
PINS = 8
_MASK = (1 << PINS) - 1
DATA_END = 0x400
DIR, IS, IBE, IEV, IE, RIS, MIS, IC, AFSEL = (0x400, 0x404, 0x408, 0x40C, 0x410, 0x414,
                                               0x418, 0x41C, 0x420)
_ID_BASE = 0xFE0
_ID_BYTES = (0x61, 0x10, 0x04, 0x00, 0x0D, 0xF0, 0x05, 0xB1)


class Pl061(Device):
    name = "pl061"

    def __init__(self, irq: IrqLine) -> None:
        self._irq = irq
        self._lock = threading.Lock()
        self._inputs = 0  # levels the host drives on the pins
        self._out = 0  # levels the guest drives on output pins
        self._regs = {DIR: 0, IS: 0, IBE: 0, IEV: 0, IE: 0, AFSEL: 0}
        self._ris = 0
        self._line = False

    # -- host side -------------------------------------------------------------------
    def set_input(self, pin: int, level: bool) -> None:
        """Drive input ``pin`` (0..7) to ``level``; an edge the pin's configuration
        watches raises its interrupt."""
        if not 0 <= pin < PINS:
            raise InvalidInput(f"{self.name}: no pin {pin} (0..{PINS - 1})")
        with self._lock:
            bit = 1 << pin
            before = self._inputs & bit
            self._inputs = (self._inputs | bit) if level else (self._inputs & ~bit)
            if before != (self._inputs & bit) and not self._regs[DIR] & bit:
                rising = bool(level)
                edge_pin = not self._regs[IS] & bit
                watched = self._regs[IBE] & bit or bool(self._regs[IEV] & bit) == rising
                if edge_pin and watched:
                    self._ris |= bit
            self._update()

    def pins(self) -> int:
        """What the pins carry: inputs' levels, outputs' driven values."""
        with self._lock:
            return self._pins()

    # -- guest side ------------------------------------------------------------------
    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self._check(offset, width, "read")
        reg, shift = offset & ~3, (offset & 3) * 8
        with self._lock:
            if reg < DATA_END:
                value = self._pins() & (reg >> 2)
            elif reg in self._regs:
                value = self._regs[reg]
            elif reg == RIS:
                value = self._ris_now()
            elif reg == MIS:
                value = self._ris_now() & self._regs[IE]
            elif reg >= _ID_BASE:
                value = _ID_BYTES[(reg - _ID_BASE) >> 2]
            else:
                value = 0
        return (value >> shift) & ((1 << (8 * width.size)) - 1)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self._check(offset, width, "write")
        reg = offset & ~3
        if offset & 3:
            return  # bits 31:8 of every register are reserved
        value &= _MASK
        with self._lock:
            if reg < DATA_END:
                mask = (reg >> 2) & self._regs[DIR]
                self._out = (self._out & ~mask) | (value & mask)
            elif reg in self._regs:
                self._regs[reg] = value
            elif reg == IC:
                self._ris &= ~value
            else:
                return
            self._update()

    # -- machinery (lock held) -------------------------------------------------------
    def _pins(self) -> int:
        direction = self._regs[DIR]
        return (self._out & direction) | (self._inputs & ~direction & _MASK)

    def _ris_now(self) -> int:
        """Latched edges, and the level pins whose level matches IEV."""
        level_pins = self._regs[IS]
        matching = ~(self._pins() ^ self._regs[IEV]) & _MASK
        return (self._ris & ~level_pins) | (matching & level_pins)

    def _update(self) -> None:
        level = bool(self._ris_now() & self._regs[IE])
        if level != self._line:
            self._line = level
            self._irq.set_level(level)

    def _check(self, offset: int, width: AccessWidth, what: str) -> None:
        if width not in (AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword):
            raise BadAccess(f"{self.name}: {width.size}-byte {what} at {offset:#x}: "
                            "registers are 32-bit")
        if offset < 0 or offset + width.size > MMIO_SIZE:
            raise BadAccess(f"{self.name}: {what} at {offset:#x} is outside the 4 KiB window")
        if (offset & 3) + width.size > 4:
            raise BadAccess(f"{self.name}: {width.size}-byte {what} at {offset:#x} straddles "
                            "two registers")

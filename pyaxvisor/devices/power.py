"""The ACPI-style power-off port QEMU guests use (``outw 0x604, 0x2000``).

The device is a lone ACPI PM1a control register (``PM1a_CNT``), two ports wide;
on the PC it sits at 0x604 (:data:`pyaxvisor.boards.x86_pc.layout.POWER_OFF_PORT`,
where QEMU's q35 and the PIIX PM put it): attach with
``bus.attach(POWER_OFF_PORT, PowerPort.PORT_COUNT, PowerPort(on_power_off))``.
Behaviour follows QEMU's ``hw/acpi/core.c`` (``acpi_pm_cnt_*``):

* Register bits: SCI_EN (0), ..., SLP_TYP (12:10), SLP_EN (13). The register
  stores every written bit except SLP_EN, which is write-only and reads 0.
* A write with SLP_EN set and SLP_TYP 0 requests S5 soft-off: the model calls
  ``on_power_off()`` (after storing the value, with no lock held) and counts it
  in :attr:`PowerPort.power_offs`. QEMU's PIIX4/ICH9 use SLP_TYP 0 for S5, so
  ``0x2000`` is the magic value.
* SLP_EN with any other SLP_TYP (QEMU: 1 = S3 suspend, the configured S4
  value = hibernate) has no sleep state here: the write is stored and counted
  in :attr:`PowerPort.ignored_sleeps` (by SLP_TYP), nothing else happens.
* Widths: byte and word accesses, as QEMU allows. A byte write to the low
  port replaces the whole register with that byte (QEMU widens it to a 16-bit
  write of ``value & 0xff``, so the high byte becomes 0 and it cannot power
  off); a byte write to the high port keeps the low byte and sets the high one
  (``outb 0x605, 0x20`` powers off). A byte read returns the byte at the port.
  A wider access is cut at the two ports the way QEMU's memory core splits it:
  ``outl 0x604, v`` writes ``v & 0xffff``; bytes beyond the register reach no
  device (they read as ``0xFF``, writes to them go nowhere).
* Reads return the register (the last value written, SLP_EN cleared); 0 at
  power-on.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.vcpu.width import AccessWidth

PORT_COUNT = 2
SLP_EN = 1 << 13
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0x7 << SLP_TYP_SHIFT
#: The SLP_TYP value QEMU's chipsets use for S5 (soft off).
SLP_TYP_S5 = 0
#: ``outw 0x604, POWER_OFF_VALUE`` powers a QEMU guest off.
POWER_OFF_VALUE = SLP_EN | (SLP_TYP_S5 << SLP_TYP_SHIFT)


class PowerPort(Device):
    name = "acpi-pm1a-cnt"
    PORT_COUNT = PORT_COUNT

    def __init__(self, on_power_off: Callable[[], None], *, name: str = "acpi-pm1a-cnt") -> None:
        self.name = name
        self._on_power_off = on_power_off
        self._lock = threading.Lock()
        self._cnt = 0
        #: Soft-off requests delivered to ``on_power_off``.
        self.power_offs = 0
        #: SLP_EN writes with a sleep type other than S5, by SLP_TYP.
        self.ignored_sleeps: Counter[int] = Counter()

    @property
    def value(self) -> int:
        """The register as the guest reads it."""
        with self._lock:
            return self._cnt

    def _check(self, offset: int, width: AccessWidth, what: str) -> int:
        if width not in (AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword):
            raise BadAccess(f"{self.name}: {width.size}-byte {what}: port I/O is 1..4 bytes")
        if not 0 <= offset < PORT_COUNT:
            raise BadAccess(f"{self.name}: {what} at offset {offset:#x} is outside the device")
        return min(width.size, PORT_COUNT - offset)  # bytes that land in the register

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        inside = self._check(offset, width, "read")
        inside_mask = (1 << (8 * inside)) - 1
        with self._lock:
            value = (self._cnt >> (8 * offset)) & inside_mask
        return value | (width.mask & ~inside_mask)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        inside = self._check(offset, width, "write")
        value &= (1 << (8 * inside)) - 1
        off = False
        with self._lock:
            if offset == 1:
                value = (value << 8) | (self._cnt & 0xFF)
            self._cnt = value & ~SLP_EN
            if value & SLP_EN:
                slp_typ = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT
                if slp_typ == SLP_TYP_S5:
                    self.power_offs += 1
                    off = True
                else:
                    self.ignored_sleeps[slp_typ] += 1
        if off:
            self._on_power_off()

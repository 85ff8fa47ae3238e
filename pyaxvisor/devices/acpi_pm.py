"""The ACPI fixed hardware of a PC: the PM1a event and control register blocks and
the power management timer (ACPI 6.5, 4.8 "ACPI Hardware Features").

:class:`AcpiPm` holds one state for three port devices, attached where the FADT
says (the PC board: 0x600, 0x604, 0x608, QEMU's q35 addresses)::

    pm = AcpiPm(on_power_off, sci=IrqLine(sink, 9), timers=vm_timers)
    bus.attach(0x600, AcpiPm.EVENT_PORTS, pm.event)      # PM1a_EVT_BLK
    bus.attach(0x604, AcpiPm.CONTROL_PORTS, pm.control)  # PM1a_CNT_BLK
    bus.attach(0x608, AcpiPm.TIMER_PORTS, pm.timer)      # PM_TMR_BLK

**PM timer** (``PM_TMR``, 4 ports, read only): a free-running counter at
3.579545 MHz (:data:`PM_TIMER_HZ`) from the host's monotonic clock, starting at 0
when the device is made; 32 bits wide (the FADT's TMR_VAL_EXT) or 24 (bits 31:24
read 0). Byte, word and dword reads at any of its ports read the counter's bytes from
there (bytes past the register read 0xFF, as for an unclaimed port); writes are
ignored and counted in :attr:`AcpiPm.ignored_writes`.

**PM1 event block** (4 ports): ``PM1_STS`` at +0 and ``PM1_EN`` at +2, 16 bits each,
accessed as bytes or words (a dword at +0 reaches both).

* ``PM1_STS``: TMR_STS (bit 0) is set whenever the timer's top bit (bit 31, or 23
  for a 24-bit timer) changes, and is cleared by writing 1 to it; PWRBTN_STS (bit 8)
  is set when the fixed-feature power button is pressed (:meth:`AcpiPm.press_power_button`,
  QEMU's ``acpi_pm1_evt_power_down``) and cleared by writing 1 to it; the other status
  bits (BM_STS, GBL_STS, SLPBTN_STS, RTC_STS, WAK_STS) stay 0: there is no bus master,
  BIOS, sleep button, RTC or wake-up here. Writing 0 to a bit leaves it.
* ``PM1_EN``: TMR_EN (0), GBL_EN (5), PWRBTN_EN (8), SLPBTN_EN (9), RTC_EN (10) and
  PCIEXP_WAKE_DIS (14) are stored; the reserved bits read 0.
* The SCI (``sci``, a level-triggered line) is asserted while SCI_EN is set and
  ``PM1_STS & PM1_EN`` has a bit set. While TMR_EN is set, a timer event at the
  next change of the timer's top bit raises it (``timers``: ``schedule(deadline_ns,
  callback) -> event`` and ``cancel(event)`` on the same monotonic clock, e.g. a
  :class:`~pyaxvisor.hal.timer.TimerThread`).

**PM1 control block** (2 ports): :class:`~pyaxvisor.devices.power.PowerPort`, the
power-off register, with SCI_EN (bit 0) set at power-on: the FADT has no SMI_CMD
port, so the machine is always in ACPI mode (ACPI 6.5, 4.8.2.5: OSPM then finds
SCI_EN set). SLP_EN with SLP_TYP 0, the sleep type the DSDT's ``\\_S5`` names, powers
off (``on_power_off``).

Threads: one lock serialises the state; the SCI line and ``on_power_off`` are driven
outside it only by :class:`PowerPort`'s own rule, the SCI inside it (its sink is a
KVM ioctl that never calls back).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.power import PowerPort
from pyaxvisor.hal.timer import monotonic_ns
from pyaxvisor.vcpu.width import AccessWidth

__all__ = [
    "PM1_EN_BITS", "PM_TIMER_HZ", "PWRBTN_EN", "PWRBTN_STS", "SCI_EN", "TMR_EN", "TMR_STS",
    "AcpiPm", "AcpiPmControl",
    "Scheduler",
]

#: The PM timer's frequency.
PM_TIMER_HZ = 3_579_545
NS_PER_S = 1_000_000_000

TMR_STS = 1 << 0
TMR_EN = 1 << 0
#: PM1_STS.PWRBTN_STS and PM1_EN.PWRBTN_EN.
PWRBTN_STS = 1 << 8
PWRBTN_EN = 1 << 8
#: PM1_EN bits that exist: TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN, PCIEXP_WAKE_DIS.
PM1_EN_BITS = (1 << 0) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 14)
#: PM1_CNT.SCI_EN.
SCI_EN = 1 << 0

EVENT_PORTS, CONTROL_PORTS, TIMER_PORTS = 4, 2, 4
PM1_STS_OFFSET, PM1_EN_OFFSET = 0, 2


class Scheduler(Protocol):
    """What :class:`AcpiPm` needs of a timer thread."""

    def schedule(self, deadline_ns: int, callback: Callable[[int], None]) -> Any: ...

    def cancel(self, event: Any) -> bool: ...


def _check(name: str, offset: int, width: AccessWidth, size: int, what: str) -> None:
    if width not in (AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword):
        raise BadAccess(f"{name}: {width.size}-byte {what}: port I/O is 1..4 bytes")
    if not 0 <= offset < size:
        raise BadAccess(f"{name}: {what} at offset {offset:#x} is outside the device")


def _bytes_of(value: int, size: int, offset: int, width: AccessWidth) -> int:
    """The ``width`` bytes of the ``size``-byte register ``value`` from ``offset``;
    bytes past the register read 0xFF."""
    inside = min(width.size, size - offset)
    mask = (1 << (8 * inside)) - 1
    return (value >> (8 * offset)) & mask | (width.mask & ~mask)


class AcpiPmControl(PowerPort):
    """PM1a_CNT: :class:`PowerPort` with SCI_EN set at power-on; a write also updates
    the SCI (SCI_EN gates it)."""

    def __init__(self, pm: AcpiPm, on_power_off: Callable[[], None]) -> None:
        super().__init__(on_power_off, name="acpi-pm1a-cnt")
        self._pm = pm
        super().write(0, AccessWidth.Word, SCI_EN, 0)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        super().write(offset, width, value, vcpu_id)
        self._pm.update_sci()


class _Event(Device):
    name = "acpi-pm1a-evt"

    def __init__(self, pm: AcpiPm) -> None:
        self._pm = pm

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        _check(self.name, offset, width, EVENT_PORTS, "read")
        return _bytes_of(self._pm.pm1_sts | self._pm.pm1_en << 16, EVENT_PORTS, offset, width)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        _check(self.name, offset, width, EVENT_PORTS, "write")
        inside = min(width.size, EVENT_PORTS - offset)
        self._pm.write_event(offset, inside, value & ((1 << (8 * inside)) - 1))


class _Timer(Device):
    name = "acpi-pm-tmr"

    def __init__(self, pm: AcpiPm) -> None:
        self._pm = pm

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        _check(self.name, offset, width, TIMER_PORTS, "read")
        return _bytes_of(self._pm.timer_value, TIMER_PORTS, offset, width)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        _check(self.name, offset, width, TIMER_PORTS, "write")
        with self._pm.lock:
            self._pm.ignored_writes += 1


class AcpiPm:
    """The PM1a event and control blocks and the PM timer (see the module doc).

    ``timer_bits`` is 32 or 24 (what the FADT's TMR_VAL_EXT says); ``clock`` gives
    nanoseconds (the host's monotonic clock, which ``timers`` must share).
    """

    EVENT_PORTS = EVENT_PORTS
    CONTROL_PORTS = CONTROL_PORTS
    TIMER_PORTS = TIMER_PORTS

    def __init__(self, on_power_off: Callable[[], None], *, sci: IrqLine | None = None,
                 timers: Scheduler | None = None, timer_bits: int = 32,
                 clock: Callable[[], int] = monotonic_ns) -> None:
        if timer_bits not in (24, 32):
            raise ValueError(f"the ACPI PM timer is 24 or 32 bits wide, not {timer_bits!r}")
        self.lock = threading.Lock()
        self.timer_bits = timer_bits
        self._clock = clock
        self._start = clock()
        self._sci = sci
        self._timers = timers
        self._timer_event: Any = None
        self._en = 0
        self._toggles_cleared = 0  # timer top-bit changes seen when TMR_STS was cleared
        self._power_button = False  # PWRBTN_STS
        #: Power-button presses (:meth:`press_power_button`).
        self.power_button_presses = 0
        #: Writes to the read-only PM timer.
        self.ignored_writes = 0
        self.event = _Event(self)
        self.timer = _Timer(self)
        self.control = AcpiPmControl(self, on_power_off)

    # -- the timer ----------------------------------------------------------------------
    def _ticks(self) -> int:
        """Timer ticks since power-on (unwrapped)."""
        return (self._clock() - self._start) * PM_TIMER_HZ // NS_PER_S

    @property
    def timer_value(self) -> int:
        """What ``PM_TMR`` reads now."""
        return self._ticks() & ((1 << self.timer_bits) - 1)

    def _toggles(self, ticks: int) -> int:
        """How often the timer's top bit changed in ``ticks`` ticks."""
        return ticks >> (self.timer_bits - 1)

    # -- PM1 event registers ---------------------------------------------------------------
    @property
    def pm1_sts(self) -> int:
        with self.lock:
            return self._sts_locked()

    @property
    def pm1_en(self) -> int:
        with self.lock:
            return self._en

    def _sts_locked(self) -> int:
        timer = TMR_STS if self._toggles(self._ticks()) > self._toggles_cleared else 0
        return timer | (PWRBTN_STS if self._power_button else 0)

    def press_power_button(self) -> None:
        """The fixed-feature power button was pressed: PWRBTN_STS is set (the SCI
        rises while PWRBTN_EN and SCI_EN are set). Any thread."""
        with self.lock:
            self._power_button = True
            self.power_button_presses += 1
            self._update_sci_locked()

    def write_event(self, offset: int, size: int, value: int) -> None:
        """A write of ``size`` bytes of ``value`` at ``offset`` of the event block."""
        with self.lock:
            for i in range(size):
                byte = value >> (8 * i) & 0xFF
                where = offset + i
                if where < PM1_EN_OFFSET:  # PM1_STS: write 1 to clear
                    if where == 0 and byte & TMR_STS:
                        self._toggles_cleared = self._toggles(self._ticks())
                    if where == 1 and byte & (PWRBTN_STS >> 8):
                        self._power_button = False
                else:
                    shift = 8 * (where - PM1_EN_OFFSET)
                    self._en = (self._en & ~(0xFF << shift)
                                | (byte << shift)) & PM1_EN_BITS
            self._arm_timer_locked()
            self._update_sci_locked()

    # -- the SCI -----------------------------------------------------------------------------
    def update_sci(self) -> None:
        """Drive the SCI from the registers (after a control-register write)."""
        with self.lock:
            self._update_sci_locked()

    def _update_sci_locked(self) -> None:
        if self._sci is not None:
            level = bool(self.control.value & SCI_EN and self._sts_locked() & self._en)
            self._sci.set_level(level)

    def _arm_timer_locked(self) -> None:
        """While TMR_EN is set, a timer event at the timer's next top-bit change."""
        if self._timers is None:
            return
        if self._timer_event is not None:
            self._timers.cancel(self._timer_event)
            self._timer_event = None
        if not self._en & TMR_EN:
            return
        half = 1 << (self.timer_bits - 1)
        next_ticks = (self._ticks() // half + 1) * half
        deadline = self._start + -(-next_ticks * NS_PER_S // PM_TIMER_HZ)
        self._timer_event = self._timers.schedule(deadline, self._on_timer)

    def _on_timer(self, _now: int) -> None:
        with self.lock:
            self._timer_event = None
            self._arm_timer_locked()
            self._update_sci_locked()

"""The generic timers and the PMU overflow interrupt of the ``virt`` board's vCPUs,
wired to the GIC.

Each vCPU's engine keeps its virtual and physical timer's CTL/CVAL and tells the
board when the guest writes them (:meth:`GenericTimers.written`, from inside the
CPU loop). The board then drives the timer's PPI (virtual 27, physical 30) with
the timer's output level and arms a host event on the VM's timer thread for the
deadline, which re-evaluates the level when it passes.

The PMU (source :data:`PMU`) works the same way: its engine tells the board when
the overflow interrupt request or the time a cycle counter wraps changed, and the
board drives PPI 23 and arms a host event for the wrap, when the request rises by
itself.

Threads: :meth:`GenericTimers.update` runs on vCPU threads (guest wrote a timer
register) and on the timer thread (a deadline passed); it is serialised, or a
re-arm could be lost.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from pyaxvisor.boards.aarch64_virt.layout import PPI_PMU, PPI_PTIMER, PPI_VTIMER
from pyaxvisor.devices.gicv2 import GicV2
from pyaxvisor.engine.tcg.native import TIMER_VIRT
from pyaxvisor.errors import AxError
from pyaxvisor.hal.timer import TimerEvent, monotonic_ns
from pyaxvisor.vm.result import VmResult

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["PMU", "GenericTimers"]

#: The source number of the PMU's overflow interrupt (the timers are TIMER_VIRT = 0 and
#: TIMER_PHYS = 1).
PMU = 2


class GenericTimers:
    def __init__(self, vm: Vm, gic: GicV2) -> None:
        self.vm = vm
        self.gic = gic
        self._events: dict[tuple[int, int], TimerEvent] = {}
        self._lock = threading.Lock()

    def written(self, cpu: int, timer: int) -> None:
        """The guest wrote timer ``timer`` of vCPU ``cpu`` (or the PMU, :data:`PMU`,
        changed). Runs inside the CPU loop (from a native hook): never raises, a
        failure ends the VM."""
        try:
            self.update(cpu, timer)
        except Exception as exc:
            what = "PMU" if timer == PMU else "timer"
            self.vm.finish(VmResult("error", AxError(f"{what} of vCPU {cpu}: {exc!r}")))

    def pmu_changed(self, cpu: int) -> None:
        """vCPU ``cpu``'s PMU interrupt request or wrap time changed (inside the CPU
        loop)."""
        self.written(cpu, PMU)

    def update(self, cpu: int, timer: int) -> None:
        """Drive the timer's PPI from its state and (re)arm the host event for its
        deadline."""
        with self._lock:
            self._update_locked(cpu, timer)

    def _update_locked(self, cpu: int, timer: int) -> None:
        v = self.vm.vcpu(cpu)
        if v is None:
            return
        arch, now = v.arch, monotonic_ns()
        if timer == PMU:
            ppi, level, deadline = PPI_PMU, arch.pmu_irq_level(now), arch.pmu_deadline()
        else:
            ppi = PPI_VTIMER if timer == TIMER_VIRT else PPI_PTIMER
            level, deadline = arch.timer_irq_level(timer, now), arch.timer_deadline(timer)
        self.gic.set_ppi_level(cpu, ppi, level)
        key = (cpu, timer)
        old = self._events.pop(key, None)
        timers = self.vm.timers
        if old is not None:
            timers.cancel(old)
        if deadline is not None and not level:
            self._events[key] = timers.schedule(
                deadline, lambda _now, c=cpu, t=timer: self.update(c, t))

"""The generic timers of the ``virt`` board's vCPUs, wired to the GIC.

Each vCPU's engine keeps its virtual and physical timer's CTL/CVAL and tells the
board when the guest writes them (:meth:`GenericTimers.written`, from inside the
CPU loop). The board then drives the timer's PPI (virtual 27, physical 30) with
the timer's output level and arms a host event on the VM's timer thread for the
deadline, which re-evaluates the level when it passes.

Threads: :meth:`GenericTimers.update` runs on vCPU threads (guest wrote a timer
register) and on the timer thread (a deadline passed); it is serialised, or a
re-arm could be lost.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from pyaxvisor.boards.aarch64_virt.layout import PPI_PTIMER, PPI_VTIMER
from pyaxvisor.devices.gicv2 import GicV2
from pyaxvisor.engine.tcg.native import TIMER_VIRT
from pyaxvisor.errors import AxError
from pyaxvisor.hal.timer import TimerEvent, monotonic_ns
from pyaxvisor.vm.result import VmResult

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["GenericTimers"]


class GenericTimers:
    def __init__(self, vm: Vm, gic: GicV2) -> None:
        self.vm = vm
        self.gic = gic
        self._events: dict[tuple[int, int], TimerEvent] = {}
        self._lock = threading.Lock()

    def written(self, cpu: int, timer: int) -> None:
        """The guest wrote timer ``timer`` of vCPU ``cpu``. Runs inside the CPU loop
        (from the native timer hook): never raises, a failure ends the VM."""
        try:
            self.update(cpu, timer)
        except Exception as exc:
            self.vm.finish(VmResult("error", AxError(f"timer of vCPU {cpu}: {exc!r}")))

    def update(self, cpu: int, timer: int) -> None:
        """Drive the timer's PPI from its state and (re)arm the host event for its
        deadline."""
        with self._lock:
            self._update_locked(cpu, timer)

    def _update_locked(self, cpu: int, timer: int) -> None:
        v = self.vm.vcpu(cpu)
        if v is None:
            return
        ppi = PPI_VTIMER if timer == TIMER_VIRT else PPI_PTIMER
        level = v.arch.timer_irq_level(timer, monotonic_ns())
        self.gic.set_ppi_level(cpu, ppi, level)
        key = (cpu, timer)
        old = self._events.pop(key, None)
        if old is not None:
            self.vm.timers.cancel(old)
        deadline = v.arch.timer_deadline(timer)
        if deadline is not None and not level:
            self._events[key] = self.vm.timers.schedule(
                deadline, lambda _now, c=cpu, t=timer: self.update(c, t))

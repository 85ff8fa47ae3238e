"""Pausing a VM: every vCPU kicked out of its run and parked before it runs again.

:class:`PauseGate` is the VM's pause state, shared by the host thread that pauses
and resumes (a QMP client, a test harness) and the vCPU threads:

* :meth:`PauseGate.request` (any host thread) turns the gate on; the VM then kicks
  every vCPU (``ArchVCpu.kick``) so that a running ``run()`` returns soon.
* Each vCPU thread's run loop reads :attr:`PauseGate.requested` before every
  ``run()`` (a plain attribute: the hot path pays one load) and, when it is set,
  calls :meth:`PauseGate.park`, which waits until the gate is off again or the VM
  ends. A parked vCPU is in the ``Ready`` state: an interrupt raised meanwhile (a
  timer, a device) is queued by ``inject_interrupt`` as at any time between runs
  and delivered at its next entry, after :meth:`PauseGate.release`; nothing is lost.
  A vCPU halted (``Blocked``) when the pause came stays blocked; an interrupt wakes
  it into the run loop, where it parks before it runs.
* :meth:`PauseGate.wait_quiet` waits until every vCPU is parked or blocked (halted,
  or turned off): none of them runs guest code then.

What pausing does not stop: host-side time. Guest clocks (the AArch64 generic
timer, RISC-V ``time``, x86's TSC under KVM) follow the host's monotonic clock, so a
guest sees the paused time pass at once when it resumes (QEMU stops its virtual
clock instead); device I/O already handed to an I/O thread completes.

Threads: one condition variable guards the state; :meth:`park` is called only from
vCPU threads, the rest from any thread. :meth:`wake_all` (the VM's end) releases
every parked vCPU for good.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["PauseGate"]


class PauseGate:
    def __init__(self) -> None:
        #: True from :meth:`request` until :meth:`release` (read by the run loops).
        self.requested = False
        self._cond = threading.Condition()
        self._parked: set[int] = set()
        self._ended = False

    @property
    def parked(self) -> frozenset[int]:
        """The vCPUs waiting in :meth:`park` now."""
        with self._cond:
            return frozenset(self._parked)

    def request(self) -> bool:
        """Turn the gate on; ``False`` if it already was (or the VM ended)."""
        with self._cond:
            if self.requested or self._ended:
                return False
            self.requested = True
            return True

    def release(self) -> bool:
        """Turn the gate off and let parked vCPUs run; ``False`` if it was off."""
        with self._cond:
            if not self.requested:
                return False
            self.requested = False
            self._cond.notify_all()
            return True

    def wake_all(self) -> None:
        """The VM ended: release every parked vCPU and park none from now on."""
        with self._cond:
            self._ended = True
            self.requested = False
            self._cond.notify_all()

    def park(self, cpu: int) -> None:
        """On vCPU ``cpu``'s thread: wait while the gate is on."""
        with self._cond:
            if not self.requested:
                return
            self._parked.add(cpu)
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: not self.requested)
            finally:
                self._parked.discard(cpu)

    def wait_quiet(self, cpus: Callable[[], Iterable[tuple[int, bool]]],
                   timeout: float) -> list[int]:
        """Wait up to ``timeout`` seconds until each of ``cpus()`` — pairs of a vCPU
        and whether it is blocked — is parked or blocked. Returns the vCPUs still
        neither (empty when all are quiet). ``cpus`` is called again at each wake-up
        and at least every 50 ms (a vCPU may block or exit without telling the gate)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                busy = [cpu for cpu, blocked in cpus()
                        if not blocked and cpu not in self._parked]
                left = deadline - time.monotonic()
                if not busy or left <= 0 or not self.requested:
                    return busy
                self._cond.wait(min(left, 0.05))

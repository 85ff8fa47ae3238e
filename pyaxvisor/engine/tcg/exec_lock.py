"""One guest CPU executing at a time per VM (QEMU's round-robin TCG), on the stock
library only.

Stock Unicorn runs QEMU's TCG without its parallel mode, so a store-exclusive is a
plain compare-then-store and not atomic against another CPU running at the
same moment on another host thread: two vCPUs could both win a spinlock. (pyaxvisor's
patched build translates for parallel CPUs, and its VMs' vCPUs need no such lock:
:mod:`pyaxvisor.boards.soft_virt`.) On the stock library every
vCPU of a VM therefore holds this lock while its CPU executes guest code (its
host thread remains its own; only execution is serialised). A TB never spans a
preemption point, so an LDXR/STXR sequence in one block is atomic.

Fairness: a vCPU that waits longer than ``slice_s`` asks the running one to
stop at its next basic block, and waiters are served in arrival order, so a CPU
spinning on a lock held by another cannot starve it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class ExecLock:
    def __init__(self, slice_s: float = 0.002) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: object | None = None
        self._owner_stop: Callable[[], None] | None = None
        self._queue: deque[object] = deque()
        self._slice = slice_s

    def acquire(self, me: object, stop_me: Callable[[], None]) -> None:
        """Wait for the turn of ``me``; ``stop_me`` makes its CPU stop soon."""
        with self._cond:
            if self._owner is None and not self._queue:
                self._owner, self._owner_stop = me, stop_me
                return
            self._queue.append(me)
            while not (self._owner is None and self._queue[0] is me):
                if not self._cond.wait(self._slice) and self._owner_stop is not None:
                    self._owner_stop()  # the slice is over: preempt the running CPU
            self._queue.popleft()
            self._owner, self._owner_stop = me, stop_me

    def release(self, me: object) -> None:
        with self._cond:
            if self._owner is me:
                self._owner, self._owner_stop = None, None
                self._cond.notify_all()

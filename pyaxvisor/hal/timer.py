"""Timer events on a monotonic clock (axhal time + the ``timer_list`` crate).

A :class:`TimerList` holds events ordered by deadline (nanoseconds of
``time.monotonic_ns``). ``schedule`` returns a :class:`TimerEvent` handle that
can be cancelled; ``expire`` runs every event whose deadline has passed, in
deadline order (ties in scheduling order), and returns how many ran. Callbacks
run on the thread that calls ``expire``, outside the list's lock, so they may
schedule new events. All methods are thread-safe.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

from pyaxvisor.errors import InvalidInput

TimerCallback = Callable[[int], None]  # called with the current time in ns


#: The host clock all timer deadlines use (nanoseconds; ``time.monotonic_ns`` itself,
#: not a wrapper: the timer paths read it several times per guest timer write).
monotonic_ns: Callable[[], int] = time.monotonic_ns


class TimerEvent:
    """A scheduled callback; compare by (deadline, scheduling order). Identity equality."""

    __slots__ = ("_seq", "callback", "cancelled", "deadline_ns", "fired")

    def __init__(self, deadline_ns: int, seq: int, callback: TimerCallback) -> None:
        self.deadline_ns = deadline_ns
        self._seq = seq
        self.callback = callback
        self.cancelled = False
        self.fired = False

    def __lt__(self, other: TimerEvent) -> bool:
        return (self.deadline_ns, self._seq) < (other.deadline_ns, other._seq)

    @property
    def pending(self) -> bool:
        return not (self.cancelled or self.fired)

    def __repr__(self) -> str:
        state = "pending" if self.pending else ("fired" if self.fired else "cancelled")
        return f"TimerEvent(deadline={self.deadline_ns}, {state})"


class TimerList:
    def __init__(self, clock: Callable[[], int] = monotonic_ns) -> None:
        self._clock = clock
        self._heap: list[TimerEvent] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._live = 0

    def now(self) -> int:
        return self._clock()

    def schedule(self, deadline_ns: int, callback: TimerCallback) -> TimerEvent:
        if deadline_ns < 0:
            raise InvalidInput(f"timer deadline must be non-negative, got {deadline_ns}")
        event = TimerEvent(deadline_ns, next(self._seq), callback)
        with self._lock:
            heapq.heappush(self._heap, event)
            self._live += 1
        return event

    def schedule_in(self, delay_ns: int, callback: TimerCallback) -> TimerEvent:
        if delay_ns < 0:
            raise InvalidInput(f"timer delay must be non-negative, got {delay_ns}")
        return self.schedule(self._clock() + delay_ns, callback)

    def cancel(self, event: TimerEvent) -> bool:
        """Cancel a pending event; ``False`` if it already fired or was cancelled."""
        with self._lock:
            if not event.pending:
                return False
            event.cancelled = True
            self._live -= 1
            return True

    def __len__(self) -> int:
        return self._live

    def next_deadline(self) -> int | None:
        with self._lock:
            self._drop_cancelled()
            return self._heap[0].deadline_ns if self._heap else None

    def _drop_cancelled(self) -> None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)

    def expire(self, now_ns: int | None = None) -> int:
        """Run the events due at ``now_ns`` (default: the clock); return how many ran."""
        now = self._clock() if now_ns is None else now_ns
        ran = 0
        while True:
            with self._lock:
                self._drop_cancelled()
                if not self._heap or self._heap[0].deadline_ns > now:
                    return ran
                event = heapq.heappop(self._heap)
                event.fired = True
                self._live -= 1
            event.callback(now)
            ran += 1


class TimerThread:
    """Runs a :class:`TimerList` on a host thread: sleeps until the next deadline and
    expires due events (their callbacks run on this thread). ``schedule`` wakes it
    only when the new event is earlier than the deadline it sleeps for: a guest that
    moves its timer later (Linux does at every idle entry) does not cost a host
    thread wake-up, which on a host with few cores competes with the vCPU thread and
    the I/O threads for a core and the GIL. A cancelled event still wakes the thread
    at its deadline, which then finds nothing due and sleeps on. ``stop`` ends the
    thread."""

    def __init__(self, timers: TimerList | None = None, name: str = "timers") -> None:
        self.timers = timers or TimerList()
        self._cond = threading.Condition()
        self._stopping = False
        #: When the thread looks at the list next (ns; ``None``: only when woken, 0:
        #: it is looking now). Guarded by ``_cond``.
        self._looks_at: int | None = 0
        #: How many times ``schedule`` woke the thread (and how many it did not need to).
        self.wakes = 0
        self.wakes_saved = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def schedule(self, deadline_ns: int, callback: TimerCallback) -> TimerEvent:
        event = self.timers.schedule(deadline_ns, callback)
        with self._cond:
            looks_at = self._looks_at
            if looks_at is None or deadline_ns < looks_at:
                self._looks_at = 0
                self.wakes += 1
                self._cond.notify()
            else:
                self.wakes_saved += 1
        return event

    def cancel(self, event: TimerEvent) -> bool:
        return self.timers.cancel(event)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                nxt = self.timers.next_deadline()
                now = self.timers.now()
                if nxt is None or nxt > now:
                    self._looks_at = nxt
                    self._cond.wait(None if nxt is None else (nxt - now) / 1e9)
                    self._looks_at = 0
                    continue
            self.timers.expire()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=5)

"""Deadline-ordered, cancellable timer events."""

import threading
import time

import pytest

from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal import TimerList
from pyaxvisor.hal.timer import TimerThread


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000

    def __call__(self) -> int:
        return self.now


def test_events_fire_in_deadline_order_ties_in_schedule_order():
    clock = FakeClock()
    timers = TimerList(clock)
    fired = []
    timers.schedule(3000, lambda now: fired.append(("c", now)))
    timers.schedule(2000, lambda now: fired.append(("a", now)))
    timers.schedule(2000, lambda now: fired.append(("b", now)))
    assert timers.next_deadline() == 2000
    assert timers.expire() == 0
    clock.now = 2500
    assert timers.expire() == 2
    assert fired == [("a", 2500), ("b", 2500)]
    assert len(timers) == 1
    assert timers.expire(now_ns=3000) == 1
    assert fired[-1] == ("c", 3000)
    assert timers.next_deadline() is None


def test_cancel():
    clock = FakeClock()
    timers = TimerList(clock)
    fired = []
    a = timers.schedule_in(100, lambda now: fired.append("a"))
    b = timers.schedule_in(200, lambda now: fired.append("b"))
    assert timers.cancel(a) is True
    assert timers.cancel(a) is False
    assert timers.next_deadline() == 1200
    clock.now = 5000
    assert timers.expire() == 1
    assert fired == ["b"]
    assert timers.cancel(b) is False  # already fired
    assert not a.pending and not b.pending and b.fired and a.cancelled


def test_callbacks_may_reschedule():
    clock = FakeClock()
    timers = TimerList(clock)
    ticks = []

    def periodic(now):
        ticks.append(now)
        if len(ticks) < 3:
            timers.schedule(now + 10, periodic)

    timers.schedule(1000, periodic)
    for t in (1000, 1010, 1020, 1030):
        clock.now = t
        timers.expire()
    assert ticks == [1000, 1010, 1020]


def test_real_clock_and_threads():
    timers = TimerList()
    done = threading.Event()
    timers.schedule_in(1_000_000, lambda now: done.set())
    while not done.is_set():
        timers.expire()
    assert timers.now() > 0


def test_bad_deadlines():
    timers = TimerList(FakeClock())
    with pytest.raises(InvalidInput):
        timers.schedule(-1, lambda now: None)
    with pytest.raises(InvalidInput):
        timers.schedule_in(-5, lambda now: None)


def _fired_at(thread, delay_ns: int) -> tuple[threading.Event, list[int]]:
    done, when = threading.Event(), []
    thread.schedule(thread.timers.now() + delay_ns,
                    lambda now: (when.append(thread.timers.now()), done.set()))
    return done, when


def test_timer_thread_is_woken_only_for_an_earlier_deadline():
    thread = TimerThread(name="test-timers")
    try:
        far, _ = _fired_at(thread, 60 * 10**9)  # the thread now sleeps for a minute
        deadline = time.monotonic() + 5
        while thread._looks_at in (None, 0) and time.monotonic() < deadline:
            time.sleep(0.001)
        wakes, saved = thread.wakes, thread.wakes_saved
        later, _ = _fired_at(thread, 120 * 10**9)
        assert (thread.wakes, thread.wakes_saved) == (wakes, saved + 1)
        t0 = thread.timers.now()
        soon, when = _fired_at(thread, 20_000_000)
        assert thread.wakes == wakes + 1
        assert soon.wait(5), "an earlier event did not wake the sleeping thread"
        assert when[0] - t0 >= 20_000_000
        assert not far.is_set() and not later.is_set()
    finally:
        thread.stop()


def test_timer_thread_fires_a_later_event_after_the_earlier_one_is_cancelled():
    thread = TimerThread(name="test-timers")
    try:
        t0 = thread.timers.now()
        first = thread.schedule(t0 + 30_000_000, lambda now: None)
        deadline = time.monotonic() + 5
        while thread._looks_at in (None, 0) and time.monotonic() < deadline:
            time.sleep(0.001)
        thread.cancel(first)
        later, when = _fired_at(thread, 60_000_000)  # not woken: it wakes at 30 ms anyway
        assert later.wait(5), "the later event never fired"
        assert when[0] - t0 >= 60_000_000
    finally:
        thread.stop()

"""The per-VM execution lock: mutual exclusion, FIFO hand-over, preemption of a CPU
that keeps running past its slice."""

import threading
import time

from pyaxvisor.engine.tcg.exec_lock import ExecLock


def test_mutual_exclusion_and_preemption_of_a_spinning_owner():
    lock = ExecLock(slice_s=0.005)
    stop = threading.Event()
    inside = []
    order = []

    def spinner():
        lock.acquire("A", stop.set)
        inside.append("A")
        while not stop.is_set():  # "guest code" running until asked to stop
            time.sleep(0.001)
        assert inside == ["A"]
        inside.remove("A")
        order.append("A released")
        lock.release("A")

    def waiter():
        time.sleep(0.01)
        lock.acquire("B", lambda: None)
        assert inside == []
        order.append("B acquired")
        lock.release("B")

    threads = [threading.Thread(target=spinner), threading.Thread(target=waiter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert stop.is_set()  # the waiter preempted the owner after its slice
    assert order == ["A released", "B acquired"]


def test_waiters_are_served_in_arrival_order():
    lock = ExecLock(slice_s=1.0)
    lock.acquire("owner", lambda: None)
    got = []

    def take(name):
        lock.acquire(name, lambda: None)
        got.append(name)
        lock.release(name)

    threads = []
    for name in ("first", "second", "third"):
        t = threading.Thread(target=take, args=(name,))
        t.start()
        threads.append(t)
        time.sleep(0.02)
    lock.release("owner")
    for t in threads:
        t.join(5)
    assert got == ["first", "second", "third"]


def test_release_by_a_non_owner_changes_nothing():
    lock = ExecLock()
    lock.acquire("A", lambda: None)
    lock.release("B")
    acquired = threading.Event()
    t = threading.Thread(target=lambda: (lock.acquire("C", lambda: None), acquired.set()))
    t.start()
    assert not acquired.wait(0.05)
    lock.release("A")
    assert acquired.wait(5)
    t.join()

"""Test-session set-up for ``tests/``: the programs tests run by name, and what the
hostile-guest suites (``test_hostile_*.py``) share.

Tests that run a tool through :func:`tools.tool` get the system's copy or one fetched
from Debian. Some tests run a tool by name from ``PATH`` (``subprocess.run(["dtc",
...])``); for them the tools of
:data:`tools.TOOLS` that the system lacks get shims at the end of ``PATH``, which
fetch the tool on first use (see :func:`tools.put_shims_on_path`). Nothing is
downloaded until a test runs such a tool.

The hostile-guest suites run each hostile VM in a thread beside a well-behaved VM in
another (:func:`alongside`) and check that the host process's threads and open file
descriptors stay flat over many VMs (:func:`host_resources`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import tools

try:
    tools.put_shims_on_path()
except OSError as exc:  # an unwritable cache: tests that run a tool by name say so
    print(f"tests/conftest.py: no tool shims ({exc})", file=sys.stderr)

T = TypeVar("T")
#: How long a hostile or bystander VM's thread may take before the test fails (each
#: VM has its own, shorter, timeout: this only keeps a hung test from hanging the run).
JOIN_S = 120.0


#: How long :func:`host_resources` waits for threads that were joined to leave the OS.
SETTLE_S = 5.0


def host_resources(expect: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """The host process's Python threads, OS threads and open file descriptors. A
    thread that was joined may still be leaving the kernel's task list: with
    ``expect``, wait up to :data:`SETTLE_S` for the figures to come back to it; without,
    wait as long for every OS thread to be a Python thread's (a baseline taken while
    an earlier test's thread is still leaving would be one too high)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        now = (threading.active_count(), len(os.listdir("/proc/self/task")),
               len(os.listdir("/proc/self/fd")))
        settled = now == expect if expect is not None else now[1] <= now[0]
        if settled or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def vcpu_threads() -> list[str]:
    """The names of the vCPU threads still alive (every VM names them ``vm<id>-vcpu<n>``)."""
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith("vm") and "-vcpu" in t.name and t.is_alive())


def run_alongside(hostile: Callable[[], T], bystander: Callable[[], Any]) -> T:
    """Run ``hostile()`` and ``bystander()`` (each builds, runs and closes one VM, the
    bystander asserting that its VM ended normally) in two threads at the same time;
    return what ``hostile`` returned. An exception in either is raised here, and no
    vCPU thread of either VM may be left running."""
    outcome: dict[str, Any] = {}

    def thread(name: str, work: Callable[[], Any]) -> None:
        try:
            outcome[name] = work()
        except BaseException as exc:  # handed to the test's thread
            outcome[f"{name} error"] = exc

    threads = [threading.Thread(target=thread, args=(name, work), name=f"hostile-{name}")
               for name, work in (("hostile", hostile), ("bystander", bystander))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "a VM did not end within its timeout"
    for name in ("hostile", "bystander"):
        if f"{name} error" in outcome:
            raise outcome[f"{name} error"]
    assert vcpu_threads() == []
    return outcome["hostile"]


@pytest.fixture
def alongside() -> Iterator[Callable[[Callable[[], T], Callable[[], Any]], T]]:
    """:func:`run_alongside`, for the hostile-guest suites."""
    yield run_alongside


@pytest.fixture
def resources() -> Iterator[Callable[..., tuple[int, int, int]]]:
    """:func:`host_resources`, for the hostile-guest suites' leak checks."""
    yield host_resources


@pytest.fixture
def live_vcpu_threads() -> Iterator[Callable[[], list[str]]]:
    """:func:`vcpu_threads`, for the hostile-guest suites' leak checks."""
    yield vcpu_threads

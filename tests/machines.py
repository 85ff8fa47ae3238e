"""The ``machine`` fixture of the bare test machines (``aarch64_machine``,
``riscv64_machine``): ``machine(guest, **options)`` builds one, and every machine a
test built is closed after it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest


class Closable(Protocol):
    def close(self) -> None: ...


def machine_fixture(machine_class: Callable[..., Closable]) -> Any:
    """A pytest fixture that makes machines of ``machine_class`` and closes them."""

    @pytest.fixture
    def machine() -> Iterator[Callable[..., Any]]:
        made: list[Closable] = []

        def make(guest: str, **kw: Any) -> Any:
            m = machine_class(guest, **kw)
            made.append(m)
            return m

        yield make
        for m in made:
            m.close()

    return machine


def on_another_host_cpu(percpu_class: type, cpu_id: int, work: Callable[[], Any]) -> Any:
    """Run ``work()`` on a new host thread that plays CPU ``cpu_id`` (a ``PerCpu`` of
    ``percpu_class``, initialised and enabled there, closed after) and return what it
    returned; an exception in it is raised here."""
    import threading

    from pyaxvisor.vcpu import PerCpu

    outcome: dict[str, Any] = {}

    def thread() -> None:
        percpu = PerCpu(percpu_class)
        try:
            percpu.init(cpu_id)
            percpu.hardware_enable()
            outcome["result"] = work()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            percpu.close()

    t = threading.Thread(target=thread)
    t.start()
    t.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]

"""A VM's exit counters as they stand, for a running VM (QMP ``query-exits``,
``Machine.stats()``) as for an ended one.

The run loops count the exits they dispatch in ``vm.exits`` (and time them in
``vm.exit_time`` with ``config.stats``) as they go; what a vCPU serves inside its run
(in-CPU device windows, SBI calls, guest exceptions of a software CPU) is added to
the VM's counters when its run loop ends. While the VM runs, :func:`exit_counters`
adds each live vCPU's own tally (``ArchVCpu.served_counts``) to them; once the VM has
ended it reports the VM's totals alone, which then include them.

Threads: any; the counters are read without stopping the vCPUs, so a snapshot of a
running VM may be a few exits behind.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["exit_counters"]


def exit_counters(vm: Vm) -> dict[str, Any]:
    """``{"exits": {reason: count}, "exit-time": {reason: seconds}, "in-cpu-accesses":
    {"reads": n, "writes": n}, "guest-exceptions": n, "timed": bool, "metrics": {...} | None}``;
    ``timed`` says whether handling times are measured (``--stats``, ``-qmp``: both
    turn the VM's metrics on), else every time is 0; ``metrics`` is
    ``VmMetrics.snapshot()`` (its schema in :mod:`pyaxvisor.vm.metrics`) when the VM
    keeps metrics."""
    exits: Counter[str] = Counter(dict(vm.exits))
    times: defaultdict[str, float] = defaultdict(float, dict(vm.exit_time))
    reads, writes = vm.in_cpu_accesses
    exceptions = vm.guest_exceptions
    if not vm.done:
        for cpu in range(vm.smp):
            vcpu = vm.vcpu(cpu)
            if vcpu is None:
                continue
            served = vcpu.arch.served_counts()
            exits.update(served.exits)
            for name, seconds in served.exit_time.items():
                times[name] += seconds
            reads += served.accesses[0]
            writes += served.accesses[1]
            exceptions += served.guest_exceptions
    metrics = vm.metrics
    return {
        "exits": {name: count for name, count in exits.most_common() if count},
        "exit-time": {name: times.get(name, 0.0) for name, count in exits.most_common()
                      if count},
        "in-cpu-accesses": {"reads": reads, "writes": writes},
        "guest-exceptions": exceptions,
        "timed": vm.config.stats,
        # by reason, device and vCPU, with latency histograms (pyaxvisor.vm.metrics)
        "metrics": metrics.snapshot() if metrics is not None else None,
    }

"""Exit metrics of one VM: by reason, by device and by vCPU, with latency histograms,
guest-run against VMM time, a bounded timeline and the engines' own figures.

A :class:`VmMetrics` exists when the VM's configuration asks for statistics
(``VmConfig.stats``; ``Vm.metrics`` is ``None`` otherwise and the run loop does no
timing at all). Each vCPU thread gets its own :class:`VcpuMetrics` and is the only
writer of it, so the vCPUs never contend for a lock; memory is bounded whatever the
run's length (fixed histograms, a fixed number of timeline buckets, one entry per
exit reason and per device).

:meth:`VmMetrics.snapshot` may be called from any thread at any time (while the VM
runs, e.g. QMP's ``query-exits``, or after it ended) and returns plain JSON-able
data. Figures are read without stopping the vCPUs: each is consistent, but figures of
a running vCPU may be a few exits apart from each other. The snapshot's schema
(version :data:`SCHEMA`)::

    {"schema": 1,
     "running": bool,                  # the VM has not ended yet
     "elapsed_s": float,               # since the VM started running (to its end)
     "vcpus": int,                     # vCPUs that ran
     "exits": {
       "total": int,                   # every exit: dispatched by the VM + served in-engine
       "per_s": float,
       "by_reason": {REASON: {         # REASON: the exit's class name (MmioWrite, Halt...)
           "count": int,               # all of them, in_engine included
           "in_engine": int,           # served inside the vCPU's run (no return to the VM)
           "time_s": float,            # handling time (in-engine: when the engine times it)
           "latency_us": {"p50": f, "p99": f, "max": f, "mean": f} | null,
           "histogram_ns": [[lower_ns, upper_ns, count], ...]}},  # VM-dispatched
       "by_device": {DEVICE: {         # DEVICE: "mmio:NAME@0xBASE", "port:NAME@0xBASE",
           "count": int, "time_s": float,  # or "mmio:unclaimed"/"port:unclaimed"
           "by_reason": {REASON: int}}},
       "by_vcpu": {"N": {"total": int, "by_reason": {REASON: int},
                         "by_device": {DEVICE: int},
                         "guest_s": f, "vmm_s": f, "blocked_s": f, "wall_s": f,
                         "engine": {NAME: number}}}},
     "time": {"guest_s": f,            # inside the engine's run call (the guest ran)
              "vmm_s": f,              # handling exits outside it, waits excluded
              "blocked_s": f,          # waiting in Halt / CpuDown
              "wall_s": f},            # the vCPU threads' lifetimes, summed
     "engine": {NAME: number},         # summed over vCPUs: in_cpu_reads, in_cpu_writes,
                                       # guest_exceptions and each engine counter
     "timeline": {"bucket_s": f, "by_reason": {REASON: [int, ...]}}}

The engines' figures come from ``ArchVCpu.served_counts()`` (``Served.engine``):
whatever the engine counts (software CPU stop requests and cross-CPU
synchronisation, KVM runs...), named by the engine, with no branching here.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from pyaxvisor.devices.bus import Bus
from pyaxvisor.vcpu.arch_vcpu import Served
from pyaxvisor.vcpu.exit import ExitReason, IoRead, IoWrite, MmioRead, MmioWrite
from pyaxvisor.vm.histogram import LatencyHistogram

__all__ = ["SCHEMA", "TIMELINE_BUCKETS", "VcpuMetrics", "VmMetrics", "device_of"]

SCHEMA = 1
#: Timeline buckets kept per vCPU; when a run outgrows them, pairs are merged and the
#: bucket width doubles (from :data:`TIMELINE_START_S`).
TIMELINE_BUCKETS = 256
TIMELINE_START_S = 0.01

#: A device an exit went to: (address space, device name or None, window base).
DeviceKey = tuple[str, str | None, int]


def device_of(mmio: Bus, ports: Bus, e: ExitReason) -> DeviceKey | None:
    """The device an MMIO or port exit went to, as the bus routes it (None for the
    other exits)."""
    cls = type(e)
    if cls is MmioRead or cls is MmioWrite:
        space, bus, addr = "mmio", mmio, int(e.addr)  # type: ignore[attr-defined]
    elif cls is IoRead or cls is IoWrite:
        space, bus, addr = "port", ports, int(e.port)  # type: ignore[attr-defined]
    else:
        return None
    hit = bus.find(addr)
    if hit is None:
        return space, None, 0
    return space, hit[0].name, addr - hit[1]


def device_label(key: DeviceKey) -> str:
    space, name, base = key
    return f"{space}:unclaimed" if name is None else f"{space}:{name}@{base:#x}"


class _Timeline:
    """Exits per reason in fixed time buckets from ``origin`` (perf_counter seconds);
    at most :data:`TIMELINE_BUCKETS` buckets, coarsened by merging pairs."""

    __slots__ = ("origin", "state")

    def __init__(self, origin: float) -> None:
        self.origin = origin
        #: (bucket width, reason -> counts): replaced whole when coarsened, so a reader
        #: sees a width and the lists that go with it.
        self.state: tuple[float, dict[str, list[int]]] = (TIMELINE_START_S, {})

    def add(self, name: str, now: float) -> None:
        width, series = self.state
        i = int((now - self.origin) / width)
        while i >= TIMELINE_BUCKETS:
            width, series = self._coarsen()
            i = int((now - self.origin) / width)
        counts = series.get(name)
        if counts is None:
            counts = series[name] = [0] * TIMELINE_BUCKETS
        counts[max(i, 0)] += 1

    def _coarsen(self) -> tuple[float, dict[str, list[int]]]:
        width, series = self.state
        half = TIMELINE_BUCKETS // 2
        merged = {name: [c[2 * k] + c[2 * k + 1] for k in range(half)] + [0] * half
                  for name, c in series.items()}
        self.state = (width * 2, merged)
        return self.state

    def copy(self) -> tuple[float, dict[str, list[int]]]:
        width, series = self.state
        return width, {name: list(counts) for name, counts in list(series.items())}


class VcpuMetrics:
    """The figures of one vCPU. Written only by the vCPU's thread (:meth:`exit`,
    :meth:`finish`); read by :meth:`VmMetrics.snapshot` from any thread."""

    def __init__(self, cpu: int, origin: float, served: Callable[[], Served]) -> None:
        self.cpu = cpu
        self.counts: dict[str, int] = {}
        self.latency: dict[str, LatencyHistogram] = {}
        self.devices: dict[DeviceKey, dict[str, int]] = {}
        self.device_ns: dict[DeviceKey, int] = {}
        self.guest_s = 0.0
        self.vmm_s = 0.0
        self.blocked_s = 0.0
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.timeline = _Timeline(origin)
        self._served = served
        self.final: Served | None = None

    def exit(self, name: str, device: DeviceKey | None, entered: float, left: float,
             handled: float, waited: bool) -> None:
        """One exit ``name``: the guest ran from ``entered`` until it left at ``left``
        (perf_counter seconds), the VM handled it until ``handled``; ``waited``: the
        handler waited for the guest's event (Halt, CpuDown) rather than worked."""
        self.guest_s += left - entered
        spent = handled - left
        if waited:
            self.blocked_s += spent
        else:
            self.vmm_s += spent
        self.counts[name] = self.counts.get(name, 0) + 1
        ns = int(spent * 1e9)
        hist = self.latency.get(name)
        if hist is None:
            hist = self.latency[name] = LatencyHistogram()
        hist.record(ns)
        if device is not None:
            per = self.devices.get(device)
            if per is None:
                per = self.devices[device] = {}
                self.device_ns[device] = 0
            per[name] = per.get(name, 0) + 1
            self.device_ns[device] += ns
        self.timeline.add(name, handled)

    def finish(self) -> None:
        """The vCPU's run loop ended (its thread, still bound): keep the engine's final
        figures."""
        self.final = self._served()
        self.ended = time.perf_counter()

    def served(self) -> Served:
        """The engine's figures: final once the loop ended, else read live (an engine
        torn down meanwhile reads as nothing)."""
        final = self.final
        if final is not None:
            return final
        try:
            return self._served()
        except Exception:  # the vCPU is being closed under us: its figures are gone
            return Served()


class VmMetrics:
    """The metrics of one VM: a :class:`VcpuMetrics` per vCPU and :meth:`snapshot`."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self.ended: float | None = None
        self._vcpus: dict[int, VcpuMetrics] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """The VM starts running now (the timeline's and elapsed time's origin)."""
        self.origin = time.perf_counter()
        self.ended = None

    def stop(self) -> None:
        """The VM ended."""
        self.ended = time.perf_counter()

    def vcpu(self, cpu: int, served: Callable[[], Served]) -> VcpuMetrics:
        """The figures of vCPU ``cpu`` (its thread, as its run loop starts; kept if it
        exists: a vCPU that is turned off and on again keeps counting)."""
        with self._lock:
            m = self._vcpus.get(cpu)
            if m is None:
                m = self._vcpus[cpu] = VcpuMetrics(cpu, self.origin, served)
            return m

    # -- the snapshot --------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The figures so far as JSON-able data (see the module's schema). Any thread."""
        with self._lock:
            vcpus = sorted(self._vcpus.items())
        now = time.perf_counter()
        end = self.ended if self.ended is not None else now
        elapsed = max(end - self.origin, 0.0)
        reasons: dict[str, dict[str, Any]] = {}
        hists: dict[str, list[LatencyHistogram]] = {}
        devices: dict[str, dict[str, Any]] = {}
        by_vcpu: dict[str, dict[str, Any]] = {}
        engine: dict[str, float] = {}
        times = {"guest_s": 0.0, "vmm_s": 0.0, "blocked_s": 0.0, "wall_s": 0.0}
        for cpu, m in vcpus:
            counts = m.counts.copy()
            latency = {name: h.copy() for name, h in list(m.latency.items())}
            dev_counts = {key: per.copy() for key, per in list(m.devices.items())}
            dev_ns = m.device_ns.copy()
            served = m.served()
            mine: dict[str, int] = dict(counts)
            for name, n in counts.items():
                entry = reasons.setdefault(name, _reason_entry())
                entry["count"] += n
                hist = latency.get(name)
                if hist is not None:
                    entry["time_s"] += hist.total_ns / 1e9
                    hists.setdefault(name, []).append(hist)
            for name, n in served.exits.items():
                if not n:
                    continue
                entry = reasons.setdefault(name, _reason_entry())
                entry["count"] += n
                entry["in_engine"] += n
                entry["time_s"] += served.exit_time.get(name, 0.0)
                mine[name] = mine.get(name, 0) + n
            vcpu_devices: dict[str, int] = {}
            for key, per in dev_counts.items():
                label = device_label(key)
                dev = devices.setdefault(label, {"count": 0, "time_s": 0.0, "by_reason": {}})
                total = sum(per.values())
                dev["count"] += total
                dev["time_s"] += dev_ns.get(key, 0) / 1e9
                for name, n in per.items():
                    dev["by_reason"][name] = dev["by_reason"].get(name, 0) + n
                vcpu_devices[label] = vcpu_devices.get(label, 0) + total
            figures = _engine_figures(served)
            for name, value in figures.items():
                engine[name] = engine.get(name, 0) + value
            wall = (m.ended if m.ended is not None else end) - m.started
            mine_times = {"guest_s": m.guest_s, "vmm_s": m.vmm_s, "blocked_s": m.blocked_s,
                          "wall_s": max(wall, 0.0)}
            for key, value in mine_times.items():
                times[key] += value
            by_vcpu[str(cpu)] = {"total": sum(mine.values()), "by_reason": _sorted(mine),
                                 "by_device": _sorted(vcpu_devices), **mine_times,
                                 "engine": figures}
        for name, entry in reasons.items():
            merged = LatencyHistogram.merged(hists.get(name, []))
            if merged.count:
                entry["latency_us"] = merged.summary_us()
                entry["histogram_ns"] = merged.nonzero()
        total = sum(e["count"] for e in reasons.values())
        return {
            "schema": SCHEMA,
            "running": self.ended is None,
            "elapsed_s": elapsed,
            "vcpus": len(vcpus),
            "exits": {
                "total": total,
                "per_s": total / elapsed if elapsed > 0 else 0.0,
                "by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1]["count"])),
                "by_device": dict(sorted(devices.items(), key=lambda kv: -kv[1]["count"])),
                "by_vcpu": by_vcpu,
            },
            "time": times,
            "engine": dict(sorted(engine.items())),
            "timeline": _timeline([m.timeline.copy() for _cpu, m in vcpus], elapsed),
        }


def _reason_entry() -> dict[str, Any]:
    return {"count": 0, "in_engine": 0, "time_s": 0.0, "latency_us": None, "histogram_ns": []}


def _sorted(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _engine_figures(served: Served) -> dict[str, float]:
    figures: dict[str, float] = {"in_cpu_reads": served.accesses[0],
                                 "in_cpu_writes": served.accesses[1],
                                 "guest_exceptions": served.guest_exceptions}
    for name, value in served.engine.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            figures[name] = value
    return figures


def _timeline(parts: list[tuple[float, dict[str, list[int]]]], elapsed: float
              ) -> dict[str, Any]:
    """The vCPUs' timelines on one bucket width (the coarsest), summed, cut after the
    last bucket the run reached."""
    width = max((w for w, _s in parts), default=TIMELINE_START_S)
    used = min(TIMELINE_BUCKETS, max(1, math.ceil(elapsed / width)))
    total: dict[str, list[int]] = {}
    for w, series in parts:
        factor = round(width / w)
        for name, counts in series.items():
            out = total.setdefault(name, [0] * TIMELINE_BUCKETS)
            for i, n in enumerate(counts):
                if n:
                    out[min(i // factor, TIMELINE_BUCKETS - 1)] += n
    return {"bucket_s": width,
            "by_reason": {name: counts[:used] for name, counts in sorted(total.items())}}

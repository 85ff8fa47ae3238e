"""Text renderings of an exit-metrics snapshot (:meth:`VmMetrics.snapshot`): the
``--stats`` table and the one-screen summary of ``pyaxvisor profile``.

Both read only the snapshot's JSON-able data, so what ``--stats`` prints and what
``--stats-json`` writes are the same figures.
"""

from __future__ import annotations

from typing import Any

__all__ = ["stats_lines", "summary_lines"]


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def stats_lines(snapshot: dict[str, Any]) -> list[str]:
    """The ``--stats`` table: exits by reason (count, p50/p99/max latency in µs,
    handling time), by device and by vCPU, and what was served without exits."""
    exits = snapshot["exits"]
    lines = [f"{'exit reason':<20}{'count':>10}{'p50 us':>10}{'p99 us':>10}{'max us':>10}"
             f"{'handling time':>16}"]
    for name, entry in exits["by_reason"].items():
        lat = entry["latency_us"] or {}
        lines.append(f"{name:<20}{entry['count']:>10}{_us(lat.get('p50')):>10}"
                     f"{_us(lat.get('p99')):>10}{_us(lat.get('max')):>10}"
                     f"{entry['time_s'] * 1e3:>13.1f} ms")
    lines.append(f"{'total':<20}{exits['total']:>10}")
    for label, dev in exits["by_device"].items():
        lines.append(f"{label:<30} {dev['count']:>8} exits {dev['time_s'] * 1e3:>9.1f} ms")
    for cpu, mine in exits["by_vcpu"].items():
        lines.append(f"vCPU {cpu}: {mine['total']} exits; guest {mine['guest_s']:.3f} s, "
                     f"VMM {mine['vmm_s']:.3f} s, waiting {mine['blocked_s']:.3f} s")
    engine = snapshot["engine"]
    reads, writes = engine.get("in_cpu_reads", 0), engine.get("in_cpu_writes", 0)
    if reads or writes:
        lines.append(f"device accesses served in-CPU (no exit): {reads} reads, {writes} writes")
    if engine.get("guest_exceptions"):
        lines.append(f"guest exceptions taken at its own vectors (no exit): "
                     f"{engine['guest_exceptions']}")
    return lines


def summary_lines(snapshot: dict[str, Any], top: int = 8) -> list[str]:
    """A one-screen summary (at most ~24 lines): totals, where the time went, the
    ``top`` reasons and devices, the engine's non-zero figures."""
    exits = snapshot["exits"]
    times = snapshot["time"]
    lines = [f"exits: {exits['total']} in {snapshot['elapsed_s']:.3f} s "
             f"({exits['per_s']:.0f}/s) on {snapshot['vcpus']} vCPU(s)"]
    wall = times["wall_s"] or 1.0
    lines.append(f"time: guest {times['guest_s']:.3f} s ({100 * times['guest_s'] / wall:.0f}%), "
                 f"VMM {times['vmm_s']:.3f} s ({100 * times['vmm_s'] / wall:.0f}%), "
                 f"waiting {times['blocked_s']:.3f} s ({100 * times['blocked_s'] / wall:.0f}%)")
    lines.append(f"{'reason':<18}{'count':>9}{'in-engine':>10}{'p50 us':>9}{'p99 us':>9}"
                 f"{'max us':>10}")
    for name, entry in list(exits["by_reason"].items())[:top]:
        lat = entry["latency_us"] or {}
        lines.append(f"{name:<18}{entry['count']:>9}{entry['in_engine']:>10}"
                     f"{_us(lat.get('p50')):>9}{_us(lat.get('p99')):>9}"
                     f"{_us(lat.get('max')):>10}")
    devices = list(exits["by_device"].items())[:top]
    if devices:
        lines.append("devices: " + ", ".join(f"{label} {dev['count']}"
                                             for label, dev in devices))
    figures = {k: v for k, v in snapshot["engine"].items() if v}
    if figures:
        lines.append("engine: " + ", ".join(f"{k}={v}" for k, v in list(figures.items())[:10]))
    return lines

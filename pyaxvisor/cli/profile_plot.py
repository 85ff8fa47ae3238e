"""The picture ``pyaxvisor profile`` draws from an exit-metrics snapshot: exits per
second over the run, one line per exit reason (the snapshot's timeline), above the
latency distribution of each reason (its log-scale histogram).

Needs matplotlib, the optional extra ``[profile]`` (:func:`require_matplotlib` says
so when it is missing); drawn with the Agg backend, no display needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyaxvisor.errors import Unsupported

__all__ = ["draw_profile", "require_matplotlib"]

#: Reasons drawn (the most frequent); the rest are summed as "other".
MAX_LINES = 8


def require_matplotlib() -> None:
    """An :class:`Unsupported` naming the extra when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise Unsupported("pyaxvisor profile draws with matplotlib, which is not installed "
                          f"({exc}); install the optional extra: pip install "
                          "'pyaxvisor[profile]'") from None


def draw_profile(snapshot: dict[str, Any], path: Path) -> int:
    """Draw ``snapshot`` into the PNG ``path``; returns its size in bytes."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    exits = snapshot["exits"]
    timeline = snapshot["timeline"]
    width = timeline["bucket_s"]
    series = timeline["by_reason"]
    ranked = [name for name in exits["by_reason"] if name in series]
    shown, rest = ranked[:MAX_LINES], ranked[MAX_LINES:]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7.5), layout="constrained")
    try:
        fig.suptitle(f"pyaxvisor profile: {exits['total']} exits in "
                     f"{snapshot['elapsed_s']:.3f} s on {snapshot['vcpus']} vCPU(s)")
        for name in shown:
            counts = series[name]
            top.plot([i * width for i in range(len(counts))], [c / width for c in counts],
                     label=name, drawstyle="steps-post")
        if rest:
            other = [sum(series[n][i] for n in rest) for i in range(len(series[rest[0]]))]
            top.plot([i * width for i in range(len(other))], [c / width for c in other],
                     label="other", drawstyle="steps-post")
        top.set_xlabel(f"time since start (s), buckets of {width * 1e3:g} ms")
        top.set_ylabel("exits per second")
        top.set_title("Exits over time, by reason")
        if shown:
            top.legend(loc="upper right", fontsize="small")
        timed = [name for name, entry in exits["by_reason"].items()
                 if entry["histogram_ns"]][:MAX_LINES]
        for name in timed:
            hist = exits["by_reason"][name]["histogram_ns"]
            xs: list[float] = []
            ys: list[int] = []
            for lower, upper, n in hist:  # each bucket as a bar outline
                xs += [lower / 1e3, lower / 1e3, (upper + 1) / 1e3, (upper + 1) / 1e3]
                ys += [0, n, n, 0]
            bottom.plot(xs, ys, label=name)
        bottom.set_xscale("log")
        bottom.set_xlabel("handling time (us, log scale; log-spaced buckets)")
        bottom.set_ylabel("exits")
        bottom.set_title("Exit latency distribution (exits handled by the VM)")
        if timed:
            bottom.legend(loc="upper right", fontsize="small")
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path).stat().st_size

"""A fixed log-scale latency histogram (exit handling times).

Durations are counted in nanoseconds in buckets four to an octave: bucket ``i`` of a
duration ``ns >= 4`` is ``4 * (bit_length(ns) - 1) + (the two bits after the leading
one)``, so each bucket spans at most a quarter of its lower bound (values are within
~19% of the bucket they are reported as); durations under 4 ns share the first
buckets. The last bucket takes everything from ~1100 s on. Memory is fixed
(:data:`BUCKETS` integers) whatever the number of samples, and recording is a few
integer operations.

Threads: one writer (the vCPU thread that owns it); any thread may read a copy
(:meth:`LatencyHistogram.copy`, atomic under the GIL).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["BUCKETS", "LatencyHistogram", "bucket_lower_ns", "bucket_of", "bucket_upper_ns"]

#: Octaves covered: 2**40 ns is ~1100 s.
OCTAVES = 41
BUCKETS = 4 * OCTAVES


def bucket_of(ns: int) -> int:
    """The bucket of a duration of ``ns`` nanoseconds (negative counts as 0)."""
    if ns < 4:
        return ns if ns > 0 else 0
    bits = ns.bit_length() - 1
    index = 4 * bits + ((ns >> (bits - 2)) & 3)
    return index if index < BUCKETS else BUCKETS - 1


def bucket_lower_ns(index: int) -> int:
    """The smallest duration (ns) bucket ``index`` holds."""
    if index < 8:
        return min(index, 3)
    bits, quarter = divmod(index, 4)
    return (4 + quarter) << (bits - 2)


def bucket_upper_ns(index: int) -> int:
    """The largest duration (ns) bucket ``index`` holds."""
    if index < 8:  # 4..7 are never used: durations under 4 ns have their own
        return min(index, 3)
    bits, quarter = divmod(index, 4)
    return ((4 + quarter + 1) << (bits - 2)) - 1


class LatencyHistogram:
    """Counts of durations per log-scale bucket, with their sum and exact maximum."""

    __slots__ = ("buckets", "count", "max_ns", "total_ns")

    def __init__(self) -> None:
        self.buckets = [0] * BUCKETS
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0

    def record(self, ns: int) -> None:
        """Add one duration of ``ns`` nanoseconds (the owning thread only)."""
        if ns < 0:
            ns = 0
        self.buckets[bucket_of(ns)] += 1
        self.count += 1
        self.total_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def copy(self) -> LatencyHistogram:
        """A copy to read while the owner goes on recording (bucket counts may be
        one sample ahead of ``count``)."""
        other = LatencyHistogram()
        other.buckets = list(self.buckets)
        other.count, other.total_ns, other.max_ns = self.count, self.total_ns, self.max_ns
        return other

    @classmethod
    def merged(cls, parts: Iterable[LatencyHistogram]) -> LatencyHistogram:
        total = cls()
        for part in parts:
            for i, n in enumerate(part.buckets):
                if n:
                    total.buckets[i] += n
            total.count += part.count
            total.total_ns += part.total_ns
            total.max_ns = max(total.max_ns, part.max_ns)
        return total

    def percentile_ns(self, q: float) -> int:
        """The upper bound of the bucket holding the ``q``-quantile (0 < q <= 1),
        never more than the maximum seen; 0 when empty."""
        seen = sum(self.buckets)
        if not seen:
            return 0
        rank = max(1, math.ceil(q * seen))
        running = 0
        for i, n in enumerate(self.buckets):
            running += n
            if running >= rank:
                return min(bucket_upper_ns(i), self.max_ns)
        return self.max_ns

    def summary_us(self) -> dict[str, float]:
        """``{"p50", "p99", "max", "mean"}`` in microseconds."""
        mean = self.total_ns / self.count if self.count else 0.0
        return {"p50": self.percentile_ns(0.5) / 1e3, "p99": self.percentile_ns(0.99) / 1e3,
                "max": self.max_ns / 1e3, "mean": mean / 1e3}

    def nonzero(self) -> list[list[int]]:
        """``[[lower_ns, upper_ns, count], ...]`` for the buckets that hold anything, in
        order (bounds inclusive)."""
        return [[bucket_lower_ns(i), bucket_upper_ns(i), n]
                for i, n in enumerate(self.buckets) if n]

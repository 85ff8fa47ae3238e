"""Device windows a software-CPU vCPU serves inside its CPU (``ArchVCpu.serve_in_cpu``).

A window's device is called from inside Unicorn (``uc_mmio_map``), in the middle
of the guest's access, with no exit. :class:`InCpuMmio` adapts a vCPU's
:class:`~pyaxvisor.vcpu.arch_vcpu.InCpuWindow` callbacks (``read(offset, width,
vcpu_id)``, ``write(offset, width, value, vcpu_id)``) to the engine's
(``read(offset, size)``, ``write(offset, size, value)``), counts the accesses for
``served_counts()``, and keeps a device error: an exception cannot propagate out of
the CPU (Unicorn would drop it), so the first one is kept, the CPU is asked to stop
at its next block, and the vCPU's ``run()`` raises it (:meth:`InCpuMmio.take_error`).

Values are masked to the access width both ways. Callbacks run on the vCPU's
thread; the counters are only written there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyaxvisor.engine.tcg.native import MappedMmio
from pyaxvisor.vcpu.arch_vcpu import InCpuWindow
from pyaxvisor.vcpu.width import AccessWidth

_WIDTHS = {w.size: w for w in AccessWidth}
_MASKS = {w.size: w.mask for w in AccessWidth}

EngineRead = Callable[[int, int], int]
EngineWrite = Callable[[int, int, int], None]


class InCpuMmio:
    """The in-CPU MMIO windows of one vCPU. ``stop_cpu`` asks the CPU running them to
    stop at its next block (any thread)."""

    def __init__(self, stop_cpu: Callable[[], None]) -> None:
        self._stop_cpu = stop_cpu
        self.windows: list[InCpuWindow] = []
        self.counts = [0, 0]  # reads, writes
        #: Per mapped window, the reads its mirror answered (``attach``).
        self._mapped: list[MappedMmio] = []
        self._error: Exception | None = None

    def set_windows(self, windows: Sequence[InCpuWindow]) -> bool:
        """Keep the MMIO windows of ``windows`` (port windows do not exist on a
        software CPU); returns whether there is any."""
        self.windows = [w for w in windows if w.space == "mmio"]
        return bool(self.windows)

    def attach(self, attach_mmio: Callable[..., MappedMmio], base: int,
               vcpu_id: Callable[[], int]) -> None:
        """Map every window with the engine's ``attach_mmio(paddr, size, read, write,
        mirror)``, window ``i`` at ``base + window.base``; ``vcpu_id()`` names the vCPU
        the device sees (asked at each access: an engine may serve several vCPUs in
        turn)."""
        self._mapped = [
            attach_mmio(base + w.base, w.size, *self.callbacks(w, vcpu_id),
                        None if w.mirror is None else (*w.mirror.addresses, w.mirror.size))
            for w in self.windows]

    def callbacks(self, window: InCpuWindow,
                  vcpu_id: Callable[[], int]) -> tuple[EngineRead, EngineWrite]:
        """The engine callbacks of ``window``; ``vcpu_id()`` names the vCPU the device
        sees (asked at each access: an engine may serve several vCPUs in turn)."""
        counts = self.counts

        def read(offset: int, size: int) -> int:
            try:
                counts[0] += 1
                return window.read(offset, _WIDTHS[size], vcpu_id()) & _MASKS[size]
            except Exception as exc:  # re-raised by the vCPU's run()
                self._fail(exc)
                return 0

        def write(offset: int, size: int, value: int) -> None:
            try:
                counts[1] += 1
                window.write(offset, _WIDTHS[size], value & _MASKS[size], vcpu_id())
            except Exception as exc:  # re-raised by the vCPU's run()
                self._fail(exc)

        return read, write

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        self._stop_cpu()

    def take_error(self) -> Exception | None:
        """The first device error since the last call, if any (then cleared)."""
        error, self._error = self._error, None
        return error

    @property
    def accesses(self) -> tuple[int, int]:
        """Reads and writes served, those the mirrors answered included."""
        return self.counts[0] + sum(m.mirror_reads for m in self._mapped), self.counts[1]

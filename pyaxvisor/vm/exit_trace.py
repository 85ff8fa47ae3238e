"""Exit tracing: each exit of the kinds asked for, as one line in a file.

``--trace MmioWrite,Halt`` (kinds: the exit reasons' class names, any case, or a
group: ``mmio``, ``pio``, ``sysreg``, ``all``) makes the run loop hand each such exit
to :meth:`ExitTrace.record`, which puts a tuple in a bounded ring buffer and never
blocks: when the buffer is full the record is dropped and counted. A writer thread
formats and writes the records (every :data:`FLUSH_INTERVAL` s, or sooner when the
buffer fills up); :meth:`ExitTrace.close` writes what is left and a last line with
the number dropped. A line::

    0.001234 vcpu=0 pc=0x40080010 MmioWrite dev=mmio:pl011@0x9000000 addr=0x9000000 value=0x41

``pc=?`` when the vCPU cannot tell its PC; ``dev`` only for MMIO and port exits
(``mmio:unclaimed`` where no device is); ``addr`` the address, port, system register
or hypercall number; ``value`` the value written, the value a read returned, a
hypercall's first argument, a CpuUp's entry point, an interrupt's vector.

Threads: :meth:`record` from the vCPU threads (a ``deque`` append under the GIL and a
per-vCPU drop counter only that vCPU writes); :meth:`start` and :meth:`close` from
the thread that runs the VM.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu import exit as exit_reasons
from pyaxvisor.vcpu.exit import (
    CpuUp,
    ExitReason,
    ExternalInterrupt,
    Hypercall,
    IoRead,
    IoWrite,
    MmioRead,
    MmioWrite,
    NestedPageFault,
    SysRegRead,
    SysRegWrite,
    SystemDown,
)
from pyaxvisor.vm.metrics import DeviceKey, device_label

__all__ = ["CAPACITY", "KINDS", "ExitTrace", "parse_trace_kinds"]

#: Records the ring buffer holds before it drops.
CAPACITY = 65536
FLUSH_INTERVAL = 0.05
#: Every exit reason, by class name.
KINDS: dict[str, type[ExitReason]] = {
    cls.__name__: cls for cls in vars(exit_reasons).values()
    if isinstance(cls, type) and issubclass(cls, ExitReason) and cls is not ExitReason}
GROUPS: dict[str, tuple[str, ...]] = {
    "mmio": ("MmioRead", "MmioWrite"), "pio": ("IoRead", "IoWrite"),
    "sysreg": ("SysRegRead", "SysRegWrite"), "all": tuple(sorted(KINDS)),
}
#: A trace argument longer than this is refused before it is looked at.
MAX_SPEC = 4096


def parse_trace_kinds(spec: str, option: str = "--trace") -> frozenset[type[ExitReason]]:
    """The exit types a ``KIND[,KIND...]`` list names; an unknown kind is an
    :class:`InvalidInput` listing the valid ones."""
    if len(spec) > MAX_SPEC:
        raise InvalidInput(f"{option}: the list is longer than {MAX_SPEC} characters")
    lower = {name.lower(): name for name in KINDS}
    kinds: set[type[ExitReason]] = set()
    for word in (w.strip() for w in spec.split(",")):
        if not word:
            continue
        key = word.lower()
        names = GROUPS.get(key) or ((lower[key],) if key in lower else None)
        if names is None:
            raise InvalidInput(f"{option}: unknown exit kind {word!r}; valid kinds: "
                               f"{', '.join(sorted(KINDS))} (any case), or the groups "
                               f"{', '.join(GROUPS)}")
        kinds.update(KINDS[n] for n in names)
    if not kinds:
        raise InvalidInput(f"{option}: name at least one exit kind (e.g. MmioWrite or all)")
    return frozenset(kinds)


def _hex(value: int | None) -> str:
    return "?" if value is None else f"{value:#x}"


def _fields(e: ExitReason, value: int | None) -> tuple[int | None, int | None]:
    """(addr, value) of an exit for its trace line."""
    cls = type(e)
    if cls is MmioWrite or cls is IoWrite:
        return int(e.addr if cls is MmioWrite else e.port), e.data  # type: ignore[attr-defined]
    if cls is MmioRead:
        return int(e.addr), value  # type: ignore[attr-defined]
    if cls is IoRead:
        return int(e.port), value  # type: ignore[attr-defined]
    if cls is SysRegRead:
        return int(e.addr), value  # type: ignore[attr-defined]
    if cls is SysRegWrite:
        return int(e.addr), e.value  # type: ignore[attr-defined]
    if cls is Hypercall:
        return e.nr, e.args[0]  # type: ignore[attr-defined]
    if cls is CpuUp:
        return e.target_cpu, int(e.entry_point)  # type: ignore[attr-defined]
    if cls is NestedPageFault:
        return int(e.addr), None  # type: ignore[attr-defined]
    if cls is ExternalInterrupt:
        return None, e.vector  # type: ignore[attr-defined]
    if cls is SystemDown:
        return None, int(e.reset)  # type: ignore[attr-defined]
    return None, None


class ExitTrace:
    """A trace of the exits of ``kinds`` into ``path`` (created or truncated at
    :meth:`start`), through a ring buffer of ``capacity`` records."""

    def __init__(self, path: Path, kinds: frozenset[type[ExitReason]], *,
                 capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise InvalidInput(f"trace buffer capacity must be positive, not {capacity}")
        self.path = Path(path)
        self.kinds = kinds
        self.capacity = capacity
        self._ring: deque[tuple[Any, ...]] = deque()
        self._dropped: dict[int, int] = {}
        self.written = 0
        self._origin = time.perf_counter()
        self._file: IO[str] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the file and start the writer thread (an unwritable file is an
        :class:`InvalidInput` naming it)."""
        try:
            self._file = open(self.path, "w", encoding="ascii", buffering=1 << 16)  # noqa: SIM115
        except OSError as exc:
            raise InvalidInput(f"--trace-file {self.path}: cannot write: "
                               f"{exc.strerror or exc}") from None
        self._origin = time.perf_counter()
        self._thread = threading.Thread(target=self._writer, name="exit-trace", daemon=True)
        self._thread.start()

    def record(self, cpu: int, pc: int | None, e: ExitReason, device: DeviceKey | None,
               value: int | None) -> None:
        """Queue one exit (a vCPU thread; never blocks: a full buffer drops it)."""
        ring = self._ring
        if len(ring) >= self.capacity:
            self._dropped[cpu] = self._dropped.get(cpu, 0) + 1
            self._wake.set()
            return
        ring.append((time.perf_counter(), cpu, pc, e, device, value))
        if len(ring) >= self.capacity // 2:
            self._wake.set()

    @property
    def dropped(self) -> int:
        return sum(self._dropped.values())

    def _drain(self) -> None:
        f = self._file
        if f is None:
            return
        ring = self._ring
        lines = []
        origin = self._origin
        while ring:
            t, cpu, pc, e, device, value = ring.popleft()
            addr, shown = _fields(e, value)
            line = f"{t - origin:.6f} vcpu={cpu} pc={_hex(pc)} {type(e).__name__}"
            if device is not None:
                line += f" dev={device_label(device)}"
            if addr is not None:
                line += f" addr={addr:#x}"
            if shown is not None:
                line += f" value={shown:#x}"
            lines.append(line + "\n")
        if lines:
            f.writelines(lines)
            self.written += len(lines)

    def _writer(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            try:
                self._drain()
            except OSError:  # a full disk: stop tracing, close() reports what was lost
                self._stop.set()
                return

    def close(self) -> str:
        """Stop the writer, write what is queued and a summary line; returns the
        summary ("N exits traced, M dropped (the buffer was full)")."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        lost = ""
        if self._file is not None:
            try:
                self._drain()
            except OSError as exc:
                lost = f"; writing failed: {exc.strerror or exc}"
        summary = f"{self.written} exits traced, {self.dropped} dropped"
        if self.dropped:
            by_cpu = ", ".join(f"vCPU {c}: {n}" for c, n in sorted(self._dropped.items()))
            summary += f" (the buffer of {self.capacity} records was full; {by_cpu})"
        summary += lost
        if self._file is not None:
            try:
                self._file.write(f"# {summary}\n")
                self._file.close()
            except OSError:
                pass
            self._file = None
        return summary

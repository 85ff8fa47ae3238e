"""What the gdb stub needs of a machine: :class:`DebugTarget`, and the stop records.

Threads are the machine's CPUs, numbered from 0 here (gdb's thread ids are these plus
one). All-stop: :meth:`DebugTarget.halt` stops every CPU, :meth:`DebugTarget.resume`
lets them go (or steps one), :meth:`DebugTarget.wait_stop` reports the next stop.
Register, memory and breakpoint calls are made only while the machine is halted and
from the stub's thread; they raise :class:`~pyaxvisor.errors.AxError` subclasses for
what cannot be done (an address with no translation, a register number that does not
exist), which the stub answers with an error reply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class StopKind(enum.Enum):
    """Why the machine stopped (what a ``T`` reply reports)."""

    INTERRUPT = "interrupt"       # Ctrl-C, an attach, or -S
    BREAKPOINT = "breakpoint"     # a software or hardware breakpoint
    STEP = "step"
    WATCH_WRITE = "watch"
    WATCH_READ = "rwatch"
    WATCH_ACCESS = "awatch"
    EXITED = "exited"             # the machine ended (powered off, quit, error)


class BreakKind(enum.IntEnum):
    """gdb's Z packet types."""

    SOFTWARE = 0
    HARDWARE = 1
    WATCH_WRITE = 2
    WATCH_READ = 3
    WATCH_ACCESS = 4


@dataclass(frozen=True, slots=True)
class StopEvent:
    """A stop: on ``cpu`` (0-based), why, and for a watchpoint the data address hit."""

    cpu: int
    kind: StopKind
    addr: int = 0
    exit_code: int = 0


class DebugTarget(Protocol):
    #: The target description XML (``target.xml``) and the register count ``g`` holds.
    target_xml: bytes
    #: (bit size) of each register in gdb's numbering.
    register_sizes: tuple[int, ...]
    #: The largest software/hardware breakpoint and watchpoint counts (0: none).
    hw_breakpoints: int
    watchpoints: int

    def cpus(self) -> list[int]:
        """The CPUs (threads) that exist now, halted."""
        ...

    def halt(self) -> StopEvent:
        """Stop every CPU (Ctrl-C, attach); returns the stop to report."""
        ...

    def resume(self, step_cpu: int | None) -> None:
        """Let every CPU run, or only ``step_cpu`` for one instruction."""
        ...

    def wait_stop(self, timeout: float) -> StopEvent | None:
        """The next stop after :meth:`resume`, or ``None`` after ``timeout`` seconds."""
        ...

    def read_registers(self, cpu: int) -> list[int]:
        ...

    def write_register(self, cpu: int, number: int, value: int) -> None:
        ...

    def read_memory(self, cpu: int, addr: int, length: int, physical: bool) -> bytes:
        ...

    def write_memory(self, cpu: int, addr: int, data: bytes, physical: bool) -> None:
        ...

    def insert_breakpoint(self, cpu: int, kind: BreakKind, addr: int, length: int) -> bool:
        """False when this kind of breakpoint is not supported (or none is left)."""
        ...

    def remove_breakpoint(self, cpu: int, kind: BreakKind, addr: int, length: int) -> bool:
        ...

    def detach(self) -> None:
        """Remove every breakpoint and let the machine run on."""
        ...

    def kill(self) -> None:
        """End the machine."""
        ...

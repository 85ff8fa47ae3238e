"""How a VM run ended, for every architecture."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from pyaxvisor.errors import AxError

#: Process exit status per ``reason`` (``"debug-exit"`` uses the guest's own status,
#: ``(value << 1) | 1``, always odd). ``"error"``: the VM could not be built or was
#: stopped by an error; its status is even, distinct from every status a guest can
#: produce (debug-exit statuses are odd, 0 is a power-off or reset) and from 124
#: (timeout) and 2 (the command line's usage errors). QEMU exits 1 on errors, which a
#: runner cannot tell from a guest that wrote 0 to isa-debug-exit.
STATUS = {"poweroff": 0, "reset": 0, "quit": 0, "timeout": 124, "error": 4}


@dataclass
class VmResult:
    """``reason`` is "poweroff", "reset", "timeout", "quit", "debug-exit" (the guest wrote
    to an ``isa-debug-exit`` port; ``exit_status`` is ``(value << 1) | 1``) or "error"
    (``error`` says what stopped the VM). ``detail`` is what the board knows about the
    end beyond ``reason``, as a phrase ("" when nothing more): e.g. for a "reset", how
    the machine was reset ("triple fault on vCPU 0 (protected mode, CS:RIP
    0x10:0x100005)"); it changes nothing else, the status included."""

    reason: str
    error: AxError | None = None
    state: str = ""
    exit_status: int | None = None
    in_cpu_accesses: tuple[int, int] = (0, 0)  # device reads, writes served in-CPU
    guest_exceptions: int = 0  # taken at the guest's own vectors (software CPUs)
    exits: Counter[str] = field(default_factory=Counter)
    exit_time: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    detail: str = ""
    #: The exit metrics' snapshot at the end (``VmMetrics.snapshot``) when the
    #: configuration asked for statistics, else None.
    metrics: dict[str, Any] | None = None

    @property
    def status(self) -> int:
        """The host process exit status for this end (:data:`STATUS`; an unknown
        reason counts as an error)."""
        if self.exit_status is not None:
            return self.exit_status & 0xFF
        return STATUS.get(self.reason, STATUS["error"])

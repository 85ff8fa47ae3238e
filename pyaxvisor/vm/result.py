"""How a VM run ended, for every architecture."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from pyaxvisor.errors import AxError

#: Process exit status per ``reason`` (``"debug-exit"`` uses the guest's own status).
STATUS = {"poweroff": 0, "reset": 0, "quit": 0, "timeout": 124}


@dataclass
class VmResult:
    """``reason`` is "poweroff", "reset", "timeout", "quit", "debug-exit" (the guest wrote
    to an ``isa-debug-exit`` port; ``exit_status`` is ``(value << 1) | 1``) or "error"
    (``error`` says what stopped the VM)."""

    reason: str
    error: AxError | None = None
    state: str = ""
    exit_status: int | None = None
    in_cpu_accesses: tuple[int, int] = (0, 0)  # device reads, writes served in-CPU
    exits: Counter[str] = field(default_factory=Counter)
    exit_time: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def status(self) -> int:
        """The host process exit status for this end (QEMU's conventions)."""
        if self.exit_status is not None:
            return self.exit_status & 0xFF
        return STATUS.get(self.reason, 1)

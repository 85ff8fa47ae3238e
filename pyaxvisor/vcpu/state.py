"""vCPU lifecycle states (axvcpu ``VCpuState``) and the errors about them.

::

    new()        setup()       bind()        run()
    ──────► Created ─────► Free ─────► Ready ─────► Running
                             ▲  unbind()  │ ▲   exit     │
                             └────────────┘ └────────────┘
                                          │ ▲
                                  block() ▼ │ wake()
                                        Blocked

Any failing architecture operation moves the vCPU to ``Invalid``, from which
nothing but inspection is possible. A call in the wrong state raises
:class:`VCpuStateError` and changes nothing.
"""

from __future__ import annotations

import enum

from pyaxvisor.errors import AxError, BadState


class VCpuState(enum.Enum):
    Invalid = 0
    Created = 1
    Free = 2
    Ready = 3
    Running = 4
    Blocked = 5


class VCpuStateError(BadState):
    """An operation was called in a state that does not allow it."""

    def __init__(self, vcpu_id: int, operation: str, current: VCpuState,
                 expected: tuple[VCpuState, ...]) -> None:
        names = " or ".join(s.name for s in expected)
        super().__init__(
            f"vCPU {vcpu_id}: {operation}() needs state {names}, but the vCPU is {current.name}"
        )
        self.vcpu_id = vcpu_id
        self.operation = operation
        self.current = current
        self.expected = expected


class NestedVCpuOperation(BadState):
    """A vCPU operation was started while another vCPU operation runs on this host CPU."""


class WrongHostCpu(BadState):
    """A bound vCPU was driven from a host thread other than the one it is bound to,
    or a thread tried to bind a second vCPU."""


class PendingRead(BadState):
    """``run()`` was called before the last read exit was completed."""


class ArchOperationFailed(AxError):
    """An architecture vCPU operation failed with an error that is not an AxError;
    the vCPU is now Invalid. The original exception is the ``__cause__``."""

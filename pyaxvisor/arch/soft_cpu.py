"""What the per-CPU states and vCPUs of the software-CPU architectures share.

A host thread plays one physical CPU, and its silicon is one software CPU (an
engine of :mod:`pyaxvisor.engine.tcg`):

* :class:`SoftPerCpu` owns the thread's engine (``engine_class``), and while
  virtualization is enabled it is the thread's current per-CPU state, which vCPUs
  bind to (:meth:`SoftPerCpu.current`). A thread has at most one per class.
* :class:`SoftVCpu` holds the bound engine (``_engine``, ``None`` while unbound) and
  the requests other threads make of a running vCPU: ``kick`` (``run()`` returns
  ``Nothing`` soon) and ``request_tlb_flush`` (drop cached translations before the
  guest runs again). Both set a flag the vCPU's ``run()`` consumes and ask the CPU
  to stop at its next block (the engine's ``request_stop``).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Self

from pyaxvisor.errors import BadState
from pyaxvisor.vcpu.arch_vcpu import ArchVCpu
from pyaxvisor.vcpu.percpu import ArchPerCpu

_current = threading.local()


class SoftPerCpu(ArchPerCpu):
    """Per-CPU state on a software CPU; subclasses set ``engine_class`` and do their
    register set-up in ``hardware_enable``/``hardware_disable`` around
    :meth:`_claim_thread` / :meth:`_release_thread`."""

    engine_class: ClassVar[type]

    def __init__(self, cpu_id: int, engine: Any) -> None:
        self.cpu_id = cpu_id
        self.engine = engine
        self._enabled = False

    @classmethod
    def new(cls, cpu_id: int) -> Self:
        return cls(cpu_id, cls.engine_class())

    def is_enabled(self) -> bool:
        return self._enabled

    def _claim_thread(self) -> None:
        """Check that the calling thread plays no other CPU (before any set-up)."""
        current = getattr(_current, type(self).__name__, None)
        if current is not None and current is not self:
            raise BadState(f"host thread already runs as CPU {current.cpu_id}")

    def _enabled_here(self) -> None:
        """Virtualization is on: this is the calling thread's current per-CPU state."""
        self._enabled = True
        setattr(_current, type(self).__name__, self)

    def _release_thread(self) -> None:
        self._enabled = False
        if getattr(_current, type(self).__name__, None) is self:
            setattr(_current, type(self).__name__, None)

    @classmethod
    def current(cls) -> Self:
        """The enabled per-CPU state of this class on the calling host thread."""
        pc = getattr(_current, cls.__name__, None)
        if pc is None or not pc.is_enabled():
            raise BadState(f"virtualization is not enabled on this host CPU: initialise a "
                           f"PerCpu({cls.__name__}) and call hardware_enable() on this "
                           "thread first")
        return pc


class SoftVCpu(ArchVCpu):
    """The part of a vCPU on a software CPU that other threads reach."""

    _engine: Any = None
    _kicked = False
    _flush = False

    def kick(self) -> None:
        """Make ``run()`` return ``Nothing`` soon, or at once if it is not in the guest
        yet (any thread)."""
        self._kicked = True
        self._stop_cpu()

    def request_tlb_flush(self) -> None:
        """Drop cached translations before the guest runs again (any thread; a running
        CPU is stopped and re-entered)."""
        self._flush = True
        self._stop_cpu()

    def _stop_cpu(self) -> None:
        engine = self._engine
        if engine is not None:
            engine.request_stop()

    @property
    def engine(self) -> Any:
        """The engine bound to this vCPU (``BadState`` while unbound)."""
        return self._require_engine()

    def _require_engine(self) -> Any:
        engine = self._engine
        if engine is None:
            raise BadState(f"vCPU {getattr(self, 'vcpu_id', '?')} is not bound to a host CPU")
        return engine

"""Per-physical-CPU virtualization state (axvcpu ``AxArchPerCpu`` / ``AxPerCpu``).

Before a host CPU can run guests, virtualization must be switched on for it
(VMXON, installing VBAR_EL2 and HCR_EL2, setting hedeleg/hideleg); afterwards it
is switched off again and the previous state restored. In pyaxvisor a host
thread plays a physical CPU, and each owns one :class:`PerCpu`.

:class:`PerCpu` contract:

* ``init(cpu_id)`` exactly once (a second call raises
  :class:`~pyaxvisor.errors.AlreadyExists`); it refuses with
  :class:`~pyaxvisor.errors.Unsupported` when the architecture reports no
  hardware support.
* ``hardware_enable()`` / ``hardware_disable()`` only after ``init``; enabling
  an enabled CPU or disabling a disabled one is a
  :class:`~pyaxvisor.errors.BadState`.
* ``close()`` (or leaving the ``with`` block) disables virtualization if it is
  still on, as Rust's ``Drop`` does.
"""

from __future__ import annotations

import abc
from typing import Generic, Self, TypeVar

from pyaxvisor.errors import AlreadyExists, BadState, Unsupported


class ArchPerCpu(abc.ABC):
    @classmethod
    @abc.abstractmethod
    def new(cls, cpu_id: int) -> Self: ...

    @abc.abstractmethod
    def is_enabled(self) -> bool: ...

    @abc.abstractmethod
    def hardware_enable(self) -> None: ...

    @abc.abstractmethod
    def hardware_disable(self) -> None: ...

    @classmethod
    @abc.abstractmethod
    def has_hardware_support(cls) -> bool:
        """Whether this host can run guests of the architecture at all."""

    def max_guest_page_table_levels(self) -> int:
        """Deepest nested page table the hardware walks (4 unless the arch says more)."""
        return 4


P = TypeVar("P", bound=ArchPerCpu)


class PerCpu(Generic[P]):
    def __init__(self, arch_cls: type[P]) -> None:
        self._arch_cls = arch_cls
        self._arch: P | None = None
        self.cpu_id: int | None = None

    @property
    def arch(self) -> P:
        if self._arch is None:
            raise BadState(f"per-CPU state for {self._arch_cls.__name__} is not initialised")
        return self._arch

    @property
    def initialised(self) -> bool:
        return self._arch is not None

    def init(self, cpu_id: int) -> None:
        if self._arch is not None:
            raise AlreadyExists(f"per-CPU state of CPU {self.cpu_id} is already initialised")
        if not self._arch_cls.has_hardware_support():
            raise Unsupported(
                f"{self._arch_cls.__name__}: this host has no virtualization support for the "
                "architecture")
        self._arch = self._arch_cls.new(cpu_id)
        self.cpu_id = cpu_id

    def is_enabled(self) -> bool:
        return self._arch is not None and self._arch.is_enabled()

    def hardware_enable(self) -> None:
        arch = self.arch
        if arch.is_enabled():
            raise BadState(f"virtualization is already enabled on CPU {self.cpu_id}")
        arch.hardware_enable()

    def hardware_disable(self) -> None:
        arch = self.arch
        if not arch.is_enabled():
            raise BadState(f"virtualization is not enabled on CPU {self.cpu_id}")
        arch.hardware_disable()

    def max_guest_page_table_levels(self) -> int:
        return self.arch.max_guest_page_table_levels()

    def close(self) -> None:
        if self._arch is not None and self._arch.is_enabled():
            self._arch.hardware_disable()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Address types that do not mix silently (axaddrspace / memory_addr).

Four kinds of address exist in a hypervisor and confusing them is the classic
bug: :class:`GuestPhysAddr` (what the guest's stage-1 produces, the input of
the nested page table), :class:`GuestVirtAddr`, :class:`HostPhysAddr` (what
the nested page table outputs; in pyaxvisor a location in the HAL's host
memory arena) and :class:`HostVirtAddr` (a pointer in this process).

Rules enforced at run time:

* ``addr + int`` and ``addr - int`` give the same kind; ``addr - addr`` of the
  same kind gives an ``int`` distance; adding two addresses is an error.
* Comparing or subtracting addresses of different kinds raises ``TypeError``;
  equality between different kinds is simply ``False``.
* ``int(addr)``, ``hex(addr)`` and ``format(addr, "x")`` give the raw value.
"""

from __future__ import annotations

from typing import Self

from pyaxvisor.errors import AlignmentError, InvalidInput

ADDR_MASK = (1 << 64) - 1


class _Addr:
    """A 64-bit address of one kind. Immutable and hashable."""

    __slots__ = ("_value",)
    _value: int

    def __init__(self, value: int) -> None:
        if isinstance(value, _Addr):
            raise TypeError(
                f"cannot build {type(self).__name__} from {type(value).__name__}: "
                "convert explicitly with int() if that is really meant"
            )
        if not isinstance(value, int):
            raise TypeError(f"{type(self).__name__} needs an int, got {type(value).__name__}")
        if value < 0 or value > ADDR_MASK:
            raise InvalidInput(f"{type(self).__name__} {value:#x} is outside 64 bits")
        object.__setattr__(self, "_value", value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @property
    def value(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __hash__(self) -> int:
        return hash((type(self), self._value))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._value:#x})"

    def __format__(self, spec: str) -> str:
        return format(self._value, spec) if spec else repr(self)

    def _same_kind(self, other: object, op: str) -> int:
        if type(other) is not type(self):
            raise TypeError(
                f"cannot {op} {type(self).__name__} and {type(other).__name__}"
            )
        return other._value  # type: ignore[attr-defined]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._value == self._value  # type: ignore[attr-defined]

    def __lt__(self, other: Self) -> bool:
        return self._value < self._same_kind(other, "compare")

    def __le__(self, other: Self) -> bool:
        return self._value <= self._same_kind(other, "compare")

    def __gt__(self, other: Self) -> bool:
        return self._value > self._same_kind(other, "compare")

    def __ge__(self, other: Self) -> bool:
        return self._value >= self._same_kind(other, "compare")

    def __add__(self, other: int) -> Self:
        if isinstance(other, _Addr) or not isinstance(other, int):
            return NotImplemented
        return type(self)(self._value + other)

    def __radd__(self, other: int) -> Self:
        return self.__add__(other)

    def __sub__(self, other: int | Self) -> Self | int:  # type: ignore[override]
        if isinstance(other, _Addr):
            return self._value - self._same_kind(other, "subtract")
        if not isinstance(other, int):
            return NotImplemented
        return type(self)(self._value - other)

    def is_aligned(self, align: int) -> bool:
        return self._value & (align - 1) == 0

    def align_down(self, align: int) -> Self:
        return type(self)(self._value & ~(align - 1))

    def align_up(self, align: int) -> Self:
        return type(self)((self._value + align - 1) & ~(align - 1))

    def check_aligned(self, align: int, what: str | None = None) -> None:
        """Raise :class:`AlignmentError` unless aligned to ``align`` (a power of two)."""
        if not self.is_aligned(align):
            raise AlignmentError(what or type(self).__name__, self._value, align)


class GuestPhysAddr(_Addr):
    """A guest physical address (intermediate physical address on AArch64)."""

    __slots__ = ()


class GuestVirtAddr(_Addr):
    """A guest virtual address."""

    __slots__ = ()


class HostPhysAddr(_Addr):
    """A host physical address: a location in the HAL's host memory arena."""

    __slots__ = ()


class HostVirtAddr(_Addr):
    """A host virtual address: a real pointer in this process."""

    __slots__ = ()


PAGE_SIZE_4K = 0x1000
PAGE_SIZE_2M = 0x20_0000
PAGE_SIZE_1G = 0x4000_0000


def is_aligned(value: int, align: int) -> bool:
    return value & (align - 1) == 0

"""Guest memory as the virtio devices see it, and the bounds check every
guest-supplied range goes through.

The devices layer may not import ``pyaxvisor.mm``; it reaches guest RAM through
the :class:`GuestMemory` protocol instead (plain ``int`` addresses). The VM's
``AddrSpace`` takes ``GuestPhysAddr`` objects rather than ints: wrap it in
:class:`AddressedMemory` with ``GuestPhysAddr`` as the address type.

Every address a device takes from the guest (queue rings, descriptor tables,
buffers) goes through :class:`GuestRam`, which knows the guest RAM ranges
``[(base, size), ...]`` and refuses any range that does not lie entirely inside
one of them with :class:`~pyaxvisor.devices.virtio.errors.GuestRangeError`,
*before* the underlying memory is touched: a hostile driver cannot make a device
read or write MMIO windows, holes, or host memory past RAM. A range spanning two
adjacent RAM ranges is refused too (real guests never build one: each buffer is
one contiguous piece of one RAM bank).

Thread-safety: :class:`GuestRam` is immutable after construction; it adds no
locking of its own, so it is as thread-safe as the memory it wraps.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from pyaxvisor.devices.virtio.errors import GuestRangeError
from pyaxvisor.errors import AxError, InvalidInput

#: Largest guest-physical address + 1.
ADDR_LIMIT = 1 << 64


class GuestMemory(Protocol):
    """Byte access to guest-physical memory. A memory may also offer
    ``view(gpa, length) -> memoryview``, zero-copy access to a range inside one
    piece of RAM (the VM's ``AddrSpace`` does); :class:`GuestRam` then uses it for
    every access, and devices can move data between files and guest RAM without a
    copy (:meth:`GuestRam.view`)."""

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: bytes) -> None: ...


class _TypedAddressMemory(Protocol):
    def read(self, gpa: object, length: int) -> bytes: ...

    def write(self, gpa: object, data: bytes) -> None: ...


class AddressedMemory:
    """A :class:`GuestMemory` over a memory whose methods want an address object
    (the VM's ``AddrSpace`` wants a ``GuestPhysAddr``): each ``int`` address is
    converted with ``address_type`` before the call."""

    __slots__ = ("_address_type", "_inner")

    def __init__(self, inner: _TypedAddressMemory, address_type: Callable[[int], object]) -> None:
        self._inner = inner
        self._address_type = address_type

    def read(self, gpa: int, length: int) -> bytes:
        return self._inner.read(self._address_type(gpa), length)

    def write(self, gpa: int, data: bytes) -> None:
        self._inner.write(self._address_type(gpa), data)

    @property
    def written(self) -> Callable[[Iterable[tuple[int, int]]], None]:
        """The wrapped memory's ``written(pieces)`` (``(int gpa, length)`` pieces;
        ``AttributeError`` if it has none)."""
        return self._inner.written  # type: ignore[attr-defined,no-any-return]

    @property
    def written_columns(self) -> Callable[..., None]:
        """The wrapped memory's ``written_columns(addrs, lengths, within=None)``
        (``AttributeError`` if it has none)."""
        return self._inner.written_columns  # type: ignore[attr-defined,no-any-return]

    @property
    def map_generation(self) -> Callable[[], int]:
        """The wrapped memory's ``map_generation`` (``AttributeError`` if none)."""
        return self._inner.map_generation  # type: ignore[attr-defined,no-any-return]

    @property
    def view(self) -> Callable[[int, int], memoryview]:
        """The wrapped memory's ``view`` taking ``int`` addresses (``AttributeError``,
        so ``getattr(m, "view", None)`` is ``None``, if it has none)."""
        inner = self._inner.view  # type: ignore[attr-defined]
        convert = self._address_type
        return lambda gpa, length: inner(convert(gpa), length)


class GuestRam:
    """Bounds-checked access to guest RAM.

    ``ranges`` are the guest RAM ranges as ``(base, size)``: sizes positive, inside
    the 64-bit address space, not overlapping (checked, :class:`InvalidInput`).
    :meth:`check`, :meth:`read` and :meth:`write` refuse any range not inside one of
    them (:class:`GuestRangeError`, naming ``what``). An error the wrapped memory
    raises itself (for example a region the VM has unmapped since) becomes a
    :class:`GuestRangeError` too.
    """

    __slots__ = ("_bases", "_ends", "_generation", "_view", "_whole", "_written",
                 "_written_columns", "memory", "ranges")

    def __init__(self, memory: GuestMemory, ranges: Iterable[tuple[int, int]]) -> None:
        checked = sorted((int(base), int(size)) for base, size in ranges)
        if not checked:
            raise InvalidInput("virtio: no guest RAM ranges given")
        for base, size in checked:
            if size <= 0 or base < 0 or base + size > ADDR_LIMIT:
                raise InvalidInput(f"virtio: guest RAM range ({base:#x}, {size:#x}) is empty "
                                   "or leaves the 64-bit address space")
        for (b1, s1), (b2, _s2) in itertools.pairwise(checked):
            if b1 + s1 > b2:
                raise InvalidInput(f"virtio: guest RAM ranges at {b1:#x} and {b2:#x} overlap")
        self.memory = memory
        #: The memory's zero-copy ``view``, if it has one.
        self._view: Callable[[int, int], memoryview] | None = getattr(memory, "view", None)
        #: The memory's ``written(pieces)`` (software CPUs drop translated code of what
        #: a device wrote), if it has one.
        self._written: Callable[[Iterable[tuple[int, int]]], None] | None = getattr(
            memory, "written", None)
        #: Its ``written_columns(addrs, lengths, within=None)`` (the same news as two
        #: sequences; ``within``: a range ``[lo, hi)`` known to hold every piece), if any.
        self._written_columns: Callable[..., None] | None = \
            getattr(memory, "written_columns", None)
        #: The memory's ``map_generation()``, if it has one: then the view of a guest
        #: with one RAM range is taken once per generation of the map (``_whole``).
        self._generation: Callable[[], int] | None = getattr(memory, "map_generation", None)
        self._whole: tuple[int, memoryview | None] | None = None
        self.ranges: tuple[tuple[int, int], ...] = tuple(checked)
        self._bases = [b for b, _ in checked]
        self._ends = [b + s for b, s in checked]

    def contains(self, addr: int, length: int) -> bool:
        """Whether ``[addr, addr + length)`` lies inside one RAM range (a zero-length
        range must start inside a range or at its end)."""
        if addr < 0 or length < 0:
            return False
        i = bisect.bisect_right(self._bases, addr) - 1
        return i >= 0 and addr + length <= self._ends[i]

    def contains_all(self, addrs: Sequence[int], lengths: Sequence[int]) -> bool:
        """Whether every ``[addrs[i], addrs[i] + lengths[i])`` lies inside one RAM range
        (lengths non-negative; at once for the common case of a guest with one range)."""
        if not addrs:
            return True
        if len(self._bases) == 1:
            if min(addrs) < self._bases[0] or min(lengths) < 0:
                return False
            if max(addrs) + max(lengths) <= self._ends[0]:  # enough, and quick
                return True
            return max(map(operator.add, addrs, lengths)) <= self._ends[0]
        return all(map(self.contains, addrs, lengths))

    def check(self, addr: int, length: int, what: str) -> None:
        """Raise :class:`GuestRangeError` unless ``[addr, addr + length)`` is RAM."""
        if not self.contains(addr, length):
            raise GuestRangeError(what, addr, length)

    @property
    def has_views(self) -> bool:
        """Whether :meth:`view` works (the memory offers views)."""
        return self._view is not None

    def view(self, addr: int, length: int, what: str) -> memoryview:
        """A zero-copy writable view of ``[addr, addr + length)`` (checked like
        :meth:`read`). Only if :attr:`has_views`; otherwise ``InvalidInput``."""
        self.check(addr, length, what)
        if self._view is None:
            raise InvalidInput("virtio: this guest memory offers no zero-copy views")
        try:
            return self._slice(addr, length)
        except AxError as exc:
            raise GuestRangeError(what, addr, length) from exc

    def _range_view(self) -> memoryview | None:
        """The view of a guest's one RAM range (``None``: several ranges, or the memory
        maps it in pieces). Kept while the map's generation stays, when the memory says
        its generation; asked for again each time otherwise."""
        if len(self._bases) != 1 or self._view is None:
            return None
        now = self._generation() if self._generation is not None else None
        whole = self._whole
        if now is not None and whole is not None and whole[0] == now:
            return whole[1]
        try:
            mem: memoryview | None = self._view(self._bases[0], self._ends[0] - self._bases[0])
        except AxError:
            mem = None
        if now is not None:
            self._whole = (now, mem)
        return mem

    def _slice(self, addr: int, length: int) -> memoryview:
        """The memory's view of a checked range: cut from :meth:`_range_view` when there
        is one (kept per map generation), else asked of the memory."""
        mem = self._range_view() if self._generation is not None else None
        if mem is not None:
            off = addr - self._bases[0]
            return mem[off:off + length]
        return self._view(addr, length)  # type: ignore[misc]

    def written(self, pieces: Iterable[tuple[int, int]]) -> None:
        """A device wrote the ``(addr, length)`` pieces through :meth:`view` (``write``
        says so itself): tell the memory, whose software CPUs may hold translated code
        of them. Call it after the data is in place."""
        if self._written is not None:
            self._written(pieces)

    def written_columns(self, addrs: Sequence[int], lengths: Sequence[int],
                        within: tuple[int, int] | None = None) -> None:
        """:meth:`written` of the pieces ``addrs[i], lengths[i]`` given as two
        sequences (no tuple per piece on the way when the memory takes them so).
        ``within``: a range the caller has checked holds every piece (the memory then
        looks up that range, not each piece); the sequences must not change after."""
        if self._written_columns is not None:
            if within is None:
                self._written_columns(addrs, lengths)
            else:
                self._written_columns(addrs, lengths, within)
        elif self._written is not None:
            self._written(zip(addrs, lengths, strict=True))

    def written_in_whole_range(self, addrs: Sequence[int], lengths: Sequence[int]) -> None:
        """:meth:`written_columns` of pieces the caller has checked lie inside the
        range :meth:`whole_range` gave it (native code does, before any I/O)."""
        self.written_columns(addrs, lengths, (self._bases[0], self._ends[0]))

    def whole_range(self) -> tuple[int, memoryview] | None:
        """``(base, view)`` of a guest with one RAM range that its memory maps as one
        piece: what native code may address directly, after checking each piece lies
        inside (``None``: several ranges, or no such view)."""
        mem = self._range_view()
        return None if mem is None else (self._bases[0], mem)

    def views(self, pieces: Iterable[tuple[int, int]], what: str) -> list[memoryview]:
        """:meth:`view` of each ``(addr, length)`` piece, in order (checked the same way;
        one lookup in the memory per RAM range rather than per piece)."""
        if self._view is None:
            raise InvalidInput("virtio: this guest memory offers no zero-copy views")
        pieces = list(pieces)
        bases, ends = self._bases, self._ends
        mem = self._range_view() if pieces else None
        if mem is not None and self.contains_all([a for a, _n in pieces],
                                                 [n for _a, n in pieces]):
            base = bases[0]  # one RAM range: checked and cut at once
            return [mem[a - base:a - base + n] for a, n in pieces]
        out: list[memoryview] = []
        whole: dict[int, memoryview | None] = {}
        for addr, length in pieces:
            i = bisect.bisect_right(bases, addr) - 1
            if i < 0 or length < 0 or addr + length > ends[i]:
                raise GuestRangeError(what, addr, length)
            if i not in whole:
                try:  # the whole range, if the memory maps it as one piece
                    whole[i] = self._view(bases[i], ends[i] - bases[i])
                except AxError:
                    whole[i] = None
            mem = whole[i]
            if mem is None:
                out.append(self.view(addr, length, what))
            else:
                off = addr - bases[i]
                out.append(mem[off:off + length])
        return out

    def read(self, addr: int, length: int, what: str) -> bytes:
        self.check(addr, length, what)
        if length == 0:
            return b""
        if self._view is not None:
            try:
                return bytes(self._slice(addr, length))
            except AxError as exc:
                raise GuestRangeError(what, addr, length) from exc
        try:
            data = self.memory.read(addr, length)
        except AxError as exc:
            raise GuestRangeError(what, addr, length) from exc
        if len(data) != length:
            raise GuestRangeError(what, addr, length)
        return data

    def write(self, addr: int, data: bytes, what: str, *, report: bool = True) -> None:
        """Write ``data`` at ``addr`` (checked like :meth:`read`) and report it
        (:meth:`written`). ``report=False``: the queues' own ring fields, which are
        never code, are not reported (a memory without views reports every write)."""
        self.check(addr, len(data), what)
        if not data:
            return
        if self._view is not None:
            try:
                self._slice(addr, len(data))[:] = data
            except AxError as exc:
                raise GuestRangeError(what, addr, len(data)) from exc
            if report:
                self.written(((addr, len(data)),))
            return
        try:
            self.memory.write(addr, data)
        except AxError as exc:
            raise GuestRangeError(what, addr, len(data)) from exc

    def read_u16(self, addr: int, what: str) -> int:
        return int.from_bytes(self.read(addr, 2, what), "little")

    def write_u16(self, addr: int, value: int, what: str, *, report: bool = True) -> None:
        self.write(addr, (value & 0xFFFF).to_bytes(2, "little"), what, report=report)

"""A nested page table in HAL frames, generic over the descriptor format.

:class:`NestedPageTable` implements the walk once; a
:class:`~pyaxvisor.mm.page_table.format.PteFormat` supplies the geometry and
the bits. Tables live in frames from the :class:`~pyaxvisor.hal.vcpu_hal.VCpuHal`
and every entry is an 8-byte little-endian descriptor written with
``hal.write_u64``, so the memory holds exactly what the hardware would walk.

Guarantees:

* ``map`` chooses, at every step, the largest leaf (1 GiB, 2 MiB, 4 KiB) that the
  guest address, the host address and the remaining size allow.
* Every operation is all-or-nothing. ``map`` checks the whole range for overlap
  and ``unmap``/``protect`` check that the whole range is mapped *before* writing
  anything; when frames run out half way (splitting a block or creating a table)
  every written entry is restored and every new table freed before
  :class:`~pyaxvisor.errors.NoMemory` propagates. Tables emptied by ``unmap`` are
  freed only once the operation has succeeded.
* Partially unmapping or re-protecting a block splits it into 512 next-level
  entries with the same output addresses and attributes (recursively down to the
  level needed); only the blocks at the edges of the range are split.
* No table other than the root is ever empty: ``unmap`` frees a table whose last
  entry it clears and clears the parent's entry.

Internally addresses are plain ints; the typed :class:`GuestPhysAddr` /
:class:`HostPhysAddr` appear only at the API boundary. "Depth" counts levels of
the walk from 0 (the root).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from pyaxvisor.errors import (
    AlignmentError,
    AlreadyExists,
    BadState,
    InvalidInput,
    NoMemory,
    NotFound,
)
from pyaxvisor.hal.vcpu_hal import VCpuHal
from pyaxvisor.mm.addr import PAGE_SIZE_4K, GuestPhysAddr, HostPhysAddr
from pyaxvisor.mm.flags import MappingFlags
from pyaxvisor.mm.page_table.format import PAGE_SHIFT, Pte, PteFormat


class MappingExists(AlreadyExists):
    """``map`` found a mapping inside the requested guest range."""

    def __init__(self, gpa: int, size: int, existing_gpa: int, existing_size: int) -> None:
        super().__init__(
            f"guest range [{gpa:#x}, {gpa + size:#x}) overlaps the existing mapping at "
            f"[{existing_gpa:#x}, {existing_gpa + existing_size:#x})")
        self.gpa = gpa
        self.existing_gpa = existing_gpa
        self.existing_size = existing_size


class NotMapped(NotFound):
    """A guest physical address has no mapping (translate, unmap, protect)."""

    def __init__(self, gpa: int) -> None:
        super().__init__(f"guest physical address {gpa:#x} is not mapped")
        self.gpa = gpa


class WalkStep(NamedTuple):
    """One descriptor read by a walk: where it is and its raw 64-bit value."""

    depth: int
    shift: int
    table: HostPhysAddr
    index: int
    raw: int


@dataclass
class _Txn:
    """Undo log of one operation."""

    writes: list[tuple[int, int, int]] = field(default_factory=list)  # (table, index, old)
    allocated: list[int] = field(default_factory=list)
    to_free: list[int] = field(default_factory=list)


class NestedPageTable:
    """A second-stage page table of format ``fmt`` whose frames come from ``hal``."""

    def __init__(self, hal: VCpuHal, fmt: PteFormat) -> None:
        self._hal = hal
        self._fmt = fmt
        self._shifts = fmt.level_shifts
        self._masks = tuple(fmt.entries_at(d) - 1 for d in range(fmt.levels))
        self._leaf_ok = tuple(s == PAGE_SHIFT or s in fmt.block_shifts for s in self._shifts)
        self._limit = 1 << fmt.input_bits
        self._out_limit = 1 << fmt.output_bits
        root = hal.alloc_frames_or_raise(fmt.root_frames, fmt.root_align,
                                         what=f"the {fmt.name} root table")
        self._root = int(root)
        # Every table frame (root included) -> number of non-zero entries in it.
        self._tables: dict[int, int] = {self._root: 0}
        self._lock = threading.RLock()
        self._destroyed = False

    # -- properties ------------------------------------------------------------------
    @property
    def fmt(self) -> PteFormat:
        return self._fmt

    @property
    def hal(self) -> VCpuHal:
        return self._hal

    @property
    def root_paddr(self) -> HostPhysAddr:
        self._alive()
        return HostPhysAddr(self._root)

    @property
    def destroyed(self) -> bool:
        return self._destroyed

    def table_frames(self) -> list[HostPhysAddr]:
        """First address of every table allocation (the root first)."""
        with self._lock:
            self._alive()
            return [HostPhysAddr(p) for p in self._tables]

    def __repr__(self) -> str:
        state = "destroyed" if self._destroyed else f"root={self._root:#x}"
        return f"<NestedPageTable {self._fmt.name} {state}>"

    # -- argument checks -------------------------------------------------------------------
    def _alive(self) -> None:
        if self._destroyed:
            raise BadState(f"the {self._fmt.name} page table was destroyed")

    def _guest_range(self, gpa: GuestPhysAddr, size: int) -> tuple[int, int]:
        if not isinstance(gpa, GuestPhysAddr):
            raise TypeError(f"guest address must be a GuestPhysAddr, got {gpa!r}")
        if not isinstance(size, int) or size <= 0:
            raise InvalidInput(f"size must be a positive int, got {size!r}")
        start = int(gpa)
        if start % PAGE_SIZE_4K:
            raise AlignmentError("guest physical address", start, PAGE_SIZE_4K)
        if size % PAGE_SIZE_4K:
            raise AlignmentError("size", size, PAGE_SIZE_4K)
        if start + size > self._limit:
            raise InvalidInput(
                f"guest range [{start:#x}, {start + size:#x}) exceeds the "
                f"{self._fmt.input_bits}-bit guest physical address space of {self._fmt.name}")
        return start, start + size

    def _check_flags(self, flags: MappingFlags) -> MappingFlags:
        flags = MappingFlags(flags)
        self._fmt.validate_flags(flags)
        return flags

    # -- raw entry access ----------------------------------------------------------------
    def _read(self, table: int, index: int) -> int:
        return self._hal.read_u64(table + 8 * index)

    def _store(self, table: int, index: int, old: int, new: int) -> None:
        self._hal.write_u64(table + 8 * index, new)
        self._tables[table] += (new != 0) - (old != 0)

    def _write(self, txn: _Txn, table: int, index: int, old: int, new: int) -> None:
        self._store(table, index, old, new)
        txn.writes.append((table, index, old))

    def _alloc_table(self, txn: _Txn) -> int:
        frame = self._hal.alloc_frames(1)
        if frame is None:
            raise NoMemory(f"out of host frames for a {self._fmt.name} page table")
        paddr = int(frame)
        self._tables[paddr] = 0
        txn.allocated.append(paddr)
        return paddr

    def _rollback(self, txn: _Txn) -> None:
        for table, index, old in reversed(txn.writes):
            self._store(table, index, self._read(table, index), old)
        for paddr in txn.allocated:
            del self._tables[paddr]
            self._hal.dealloc_frames(HostPhysAddr(paddr))

    def _commit(self, txn: _Txn) -> None:
        for paddr in txn.to_free:
            del self._tables[paddr]
            self._hal.dealloc_frames(HostPhysAddr(paddr))

    def _run(self, op: Callable[..., None], *args: object) -> None:
        txn = _Txn()
        try:
            op(txn, self._root, 0, *args)
        except BaseException:
            self._rollback(txn)
            raise
        self._commit(txn)

    # -- range scans (read only) -------------------------------------------------------------
    def _find_mapped(self, table: int, depth: int, start: int,
                     end: int) -> tuple[int, int] | None:
        """First leaf intersecting ``[start, end)`` as (its gpa, its size), or None."""
        shift = self._shifts[depth]
        span = 1 << shift
        mask = self._masks[depth]
        decode = self._fmt.decode
        pos = start
        while pos < end:
            nxt = (pos & -span) + span
            entry = self._read(table, (pos >> shift) & mask)
            if entry:
                pte = decode(entry, shift)
                if pte.present:
                    if pte.is_leaf:
                        return pos & -span, span
                    found = self._find_mapped(pte.paddr, depth + 1, pos, min(end, nxt))
                    if found is not None:
                        return found
            pos = nxt
        return None

    def _find_unmapped(self, table: int, depth: int, start: int, end: int) -> int | None:
        """First address of ``[start, end)`` without a mapping, or None."""
        shift = self._shifts[depth]
        span = 1 << shift
        mask = self._masks[depth]
        pos = start
        while pos < end:
            nxt = (pos & -span) + span
            pte = self._fmt.decode(self._read(table, (pos >> shift) & mask), shift)
            if not pte.present:
                return pos
            if not pte.is_leaf:
                hole = self._find_unmapped(pte.paddr, depth + 1, pos, min(end, nxt))
                if hole is not None:
                    return hole
            pos = nxt
        return None

    # -- mutation helpers ----------------------------------------------------------------------
    def _split(self, txn: _Txn, table: int, depth: int, index: int, entry: int, pte: Pte) -> int:
        """Replace the block ``entry`` by a table of 512 next-level leaves; return the table."""
        child = self._alloc_table(txn)
        cshift = self._shifts[depth + 1]
        encode = self._fmt.encode_leaf
        for i in range(self._masks[depth + 1] + 1):
            self._write(txn, child, i, 0, encode(pte.paddr + (i << cshift), pte.flags, cshift))
        self._write(txn, table, index, entry,
                    self._fmt.encode_table(child, self._shifts[depth]))
        return child

    def _map_range(self, txn: _Txn, table: int, depth: int, start: int, end: int, hpa: int,
                   flags: MappingFlags, allow_huge: bool) -> None:
        fmt = self._fmt
        shift = self._shifts[depth]
        span = 1 << shift
        mask = self._masks[depth]
        leaf_here = shift == PAGE_SHIFT or (allow_huge and self._leaf_ok[depth])
        pos = start
        while pos < end:
            nxt = (pos & -span) + span
            stop = min(end, nxt)
            out = hpa + (pos - start)
            index = (pos >> shift) & mask
            entry = self._read(table, index)
            if leaf_here and entry == 0 and stop - pos == span and not out & (span - 1):
                self._write(txn, table, index, 0, fmt.encode_leaf(out, flags, shift))
            else:
                if entry == 0:
                    child = self._alloc_table(txn)
                    self._write(txn, table, index, 0, fmt.encode_table(child, shift))
                else:
                    pte = fmt.decode(entry, shift)
                    if not pte.present or pte.is_leaf:  # excluded by the overlap check
                        raise MappingExists(pos, stop - pos, pos & -span, span)
                    child = pte.paddr
                self._map_range(txn, child, depth + 1, pos, stop, out, flags, allow_huge)
            pos = nxt

    def _unmap_range(self, txn: _Txn, table: int, depth: int, start: int, end: int) -> None:
        shift = self._shifts[depth]
        span = 1 << shift
        mask = self._masks[depth]
        pos = start
        while pos < end:
            nxt = (pos & -span) + span
            stop = min(end, nxt)
            index = (pos >> shift) & mask
            entry = self._read(table, index)
            pte = self._fmt.decode(entry, shift)
            if pte.is_leaf and stop - pos == span:
                self._write(txn, table, index, entry, 0)
            else:
                if pte.is_leaf:
                    child = self._split(txn, table, depth, index, entry, pte)
                    entry = self._read(table, index)
                else:
                    child = pte.paddr
                self._unmap_range(txn, child, depth + 1, pos, stop)
                if self._tables[child] == 0:
                    self._write(txn, table, index, entry, 0)
                    txn.to_free.append(child)
            pos = nxt

    def _protect_range(self, txn: _Txn, table: int, depth: int, start: int, end: int,
                       flags: MappingFlags) -> None:
        shift = self._shifts[depth]
        span = 1 << shift
        mask = self._masks[depth]
        pos = start
        while pos < end:
            nxt = (pos & -span) + span
            stop = min(end, nxt)
            index = (pos >> shift) & mask
            entry = self._read(table, index)
            pte = self._fmt.decode(entry, shift)
            if pte.is_leaf and stop - pos == span:
                new = self._fmt.encode_leaf(pte.paddr, flags, shift)
                if new != entry:
                    self._write(txn, table, index, entry, new)
            else:
                if pte.is_leaf:
                    child = self._split(txn, table, depth, index, entry, pte)
                else:
                    child = pte.paddr
                self._protect_range(txn, child, depth + 1, pos, stop, flags)
            pos = nxt

    # -- public operations -----------------------------------------------------------------------
    def map(self, gpa: GuestPhysAddr, hpa: HostPhysAddr, size: int, flags: MappingFlags,
            allow_huge: bool = True) -> None:
        """Map ``[gpa, gpa + size)`` to ``[hpa, hpa + size)`` with ``flags``.

        Raises :class:`AlignmentError` (gpa, hpa or size not 4 KiB aligned),
        :class:`InvalidInput` (range beyond the format's address sizes, flags not
        expressible), :class:`MappingExists` (anything already mapped in the range)
        or :class:`NoMemory`; in every case the table is unchanged.
        """
        start, end = self._guest_range(gpa, size)
        if not isinstance(hpa, HostPhysAddr):
            raise TypeError(f"host address must be a HostPhysAddr, got {hpa!r}")
        out = int(hpa)
        if out % PAGE_SIZE_4K:
            raise AlignmentError("host physical address", out, PAGE_SIZE_4K)
        if out + size > self._out_limit:
            raise InvalidInput(
                f"host range [{out:#x}, {out + size:#x}) exceeds the "
                f"{self._fmt.output_bits}-bit output address size of {self._fmt.name}")
        flags = self._check_flags(flags)
        with self._lock:
            self._alive()
            clash = self._find_mapped(self._root, 0, start, end)
            if clash is not None:
                raise MappingExists(start, size, *clash)
            self._run(self._map_range, start, end, out, flags, allow_huge)

    def unmap(self, gpa: GuestPhysAddr, size: int) -> None:
        """Remove the mappings of ``[gpa, gpa + size)``, which must all be mapped.

        Blocks straddling the range edges are split; tables left empty are freed.
        Raises :class:`NotMapped` (naming the first hole) or :class:`NoMemory`
        (no frame to split a block) with the table unchanged.
        """
        start, end = self._guest_range(gpa, size)
        with self._lock:
            self._alive()
            hole = self._find_unmapped(self._root, 0, start, end)
            if hole is not None:
                raise NotMapped(hole)
            self._run(self._unmap_range, start, end)

    def protect(self, gpa: GuestPhysAddr, size: int, flags: MappingFlags) -> None:
        """Give every page of the fully mapped ``[gpa, gpa + size)`` the permissions ``flags``.

        Output addresses are kept; only blocks at the range edges are split.
        Raises :class:`NotMapped` or :class:`NoMemory` with the table unchanged.
        """
        start, end = self._guest_range(gpa, size)
        flags = self._check_flags(flags)
        with self._lock:
            self._alive()
            hole = self._find_unmapped(self._root, 0, start, end)
            if hole is not None:
                raise NotMapped(hole)
            self._run(self._protect_range, start, end, flags)

    def walk(self, gpa: GuestPhysAddr) -> list[WalkStep]:
        """The descriptors a hardware walk of ``gpa`` reads, root first.

        The list ends at the first leaf or non-present entry.
        """
        if not isinstance(gpa, GuestPhysAddr):
            raise TypeError(f"guest address must be a GuestPhysAddr, got {gpa!r}")
        addr = int(gpa)
        if addr >= self._limit:
            raise InvalidInput(f"guest physical address {addr:#x} exceeds the "
                               f"{self._fmt.input_bits}-bit address space of {self._fmt.name}")
        steps: list[WalkStep] = []
        with self._lock:
            self._alive()
            table = self._root
            for depth, shift in enumerate(self._shifts):
                index = (addr >> shift) & self._masks[depth]
                raw = self._read(table, index)
                steps.append(WalkStep(depth, shift, HostPhysAddr(table), index, raw))
                pte = self._fmt.decode(raw, shift)
                if not pte.present or pte.is_leaf:
                    break
                table = pte.paddr
        return steps

    def entry(self, gpa: GuestPhysAddr, depth: int) -> int:
        """The raw descriptor the walk of ``gpa`` reads at ``depth`` (0 = root).

        Raises :class:`NotMapped` when the walk ends above ``depth``.
        """
        if not 0 <= depth < self._fmt.levels:
            raise InvalidInput(f"{self._fmt.name} has levels 0..{self._fmt.levels - 1}, "
                               f"not {depth}")
        steps = self.walk(gpa)
        if depth >= len(steps):
            raise NotMapped(int(gpa))
        return steps[depth].raw

    def translate(self, gpa: GuestPhysAddr) -> tuple[HostPhysAddr, MappingFlags, int]:
        """``(host address of gpa, flags, size of the leaf that maps it)``.

        Raises :class:`NotMapped` naming ``gpa`` when it has no mapping and
        :class:`InvalidInput` when it lies beyond the guest address size.
        """
        steps = self.walk(gpa)
        last = steps[-1]
        pte = self._fmt.decode(last.raw, last.shift)
        if not (pte.present and pte.is_leaf):
            raise NotMapped(int(gpa))
        span = 1 << last.shift
        return HostPhysAddr(pte.paddr + (int(gpa) & (span - 1))), pte.flags, span

    def _scan(self, table: int, depth: int, base: int,
              out: list[tuple[GuestPhysAddr, HostPhysAddr, int, MappingFlags]]) -> None:
        shift = self._shifts[depth]
        count = self._masks[depth] + 1
        raw = struct.unpack(f"<{count}Q", self._hal.view(HostPhysAddr(table), 8 * count))
        decode = self._fmt.decode
        for index, entry in enumerate(raw):
            if not entry:
                continue
            pte = decode(entry, shift)
            if not pte.present:
                continue
            gpa = base + (index << shift)
            if pte.is_leaf:
                out.append((GuestPhysAddr(gpa), HostPhysAddr(pte.paddr), 1 << shift, pte.flags))
            else:
                self._scan(pte.paddr, depth + 1, gpa, out)

    def mappings(self) -> Iterator[tuple[GuestPhysAddr, HostPhysAddr, int, MappingFlags]]:
        """Every leaf as ``(gpa, hpa, size, flags)`` in guest address order.

        A snapshot taken when called; one tuple per descriptor (adjacent leaves are
        not merged).
        """
        out: list[tuple[GuestPhysAddr, HostPhysAddr, int, MappingFlags]] = []
        with self._lock:
            self._alive()
            self._scan(self._root, 0, 0, out)
        return iter(out)

    def destroy(self) -> None:
        """Free every table frame (not the mapped memory). Idempotent."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            tables, self._tables = self._tables, {}
            for paddr in tables:
                self._hal.dealloc_frames(HostPhysAddr(paddr))

    def __enter__(self) -> NestedPageTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

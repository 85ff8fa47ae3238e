"""A guest's physical address space (axaddrspace ``AddrSpace``).

An :class:`AddrSpace` owns one nested page table (its root is what
``set_ept_root`` receives) and the regions that back guest RAM. Guest physical
addresses that no region covers stay unmapped in the nested table, so a guest
access there faults to the hypervisor — that is how emulated MMIO works.

* ``map_ram(gpa, size, flags)`` allocates zeroed, contiguous host frames (2 MiB
  aligned when the size allows, so the table can use blocks) and maps them;
  the space frees them again when the region is removed or the space destroyed.
* ``map_linear(gpa, hpa, size, flags)`` maps host memory the caller owns.
* ``read``/``write`` access guest memory by guest physical address through the
  nested table (the table is the truth: a page that was unmapped is not
  reachable), chunk by chunk, with the hypervisor's rights (guest permissions
  do not apply). An unmapped address raises :class:`GuestMemoryFault`.
* ``written(pieces)``: something other than the guest's CPUs (a device's DMA
  through a view, the hypervisor through ``write``, which calls it) wrote guest RAM
  at the ``(gpa, length)`` pieces; each write listener (``add_write_listener``) hears
  them once, as ``(gpa, hpa, length)`` ranges cut at region ends, on the writer's
  thread, so that software CPUs drop translated code of those pages (QEMU
  invalidates translations on DMA writes the same way).
* ``view(gpa, length)`` is the device (DMA) path: a zero-copy ``memoryview`` of a
  range inside one RAM region that is mapped now, found from the regions rather
  than by walking the table (the region list is what the table was built from;
  a region is mapped or unmapped whole). The lookup table is rebuilt after each
  change of the map, like a TLB; a view taken before an unmap still reaches the
  region's memory, as a DMA already under way would.
* ``destroy()`` frees the table frames and every owned region; using the space
  afterwards raises :class:`~pyaxvisor.errors.BadState`.
* ``add_listener(callback)``: ``callback()`` runs after every change of the
  guest-physical map (a region mapped or removed, taken out of or put back into
  the nested table, re-protected; an MMIO window mapped; the space destroyed), on
  the thread that made the change, after the space's lock is released. Engines
  that keep their own copy of the map (a software CPU without nested paging)
  resynchronise from it; a listener must be quick and must not raise.
"""

from __future__ import annotations

import bisect
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from pyaxvisor.errors import AlreadyExists, BadState, InvalidInput, NotFound
from pyaxvisor.hal.vcpu_hal import VCpuHal
from pyaxvisor.mm.addr import PAGE_SIZE_2M, PAGE_SIZE_4K, GuestPhysAddr, HostPhysAddr
from pyaxvisor.mm.flags import MappingFlags
from pyaxvisor.mm.page_table.table import NestedPageTable, NotMapped


class WrittenRanges(Sequence[tuple[int, int, int]]):
    """Guest RAM written at pieces inside one RAM region, kept as two sequences (guest
    addresses, lengths; tuples, or lists nobody changes) and the region's
    host-minus-guest ``shift``; as a sequence, the ``(gpa, hpa, length)`` ranges every
    write listener understands. Listeners with native code take the columns as they
    are (no tuple per piece)."""

    __slots__ = ("gpas", "lengths", "shift")

    def __init__(self, gpas: Sequence[int], lengths: Sequence[int], shift: int) -> None:
        self.gpas, self.lengths, self.shift = gpas, lengths, shift

    def __len__(self) -> int:
        return len(self.gpas)

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same ``(gpa, hpa, length)`` ranges."""
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @overload
    def __getitem__(self, index: int) -> tuple[int, int, int]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[int, int, int]]: ...

    def __getitem__(self, index: int | slice
                    ) -> tuple[int, int, int] | Sequence[tuple[int, int, int]]:
        if isinstance(index, slice):
            return WrittenRanges(self.gpas[index], self.lengths[index], self.shift)
        gpa = self.gpas[index]
        return gpa, gpa + self.shift, self.lengths[index]


#: ``listener(ranges)``: guest RAM written at ``(gpa, hpa, length)`` ranges (a list, or
#: a :class:`WrittenRanges`).
WriteListener = Callable[[Sequence[tuple[int, int, int]]], None]


class GuestMemoryFault(NotFound):
    """The hypervisor touched a guest physical address that has no backing."""

    def __init__(self, gpa: int, length: int) -> None:
        super().__init__(f"guest physical address {gpa:#x} (access of {length} bytes) "
                         "is not backed by guest RAM")
        self.gpa = gpa
        self.length = length


@dataclass(frozen=True)
class MemoryRegion:
    gpa: GuestPhysAddr
    size: int
    hpa: HostPhysAddr
    flags: MappingFlags
    owned: bool

    @property
    def end(self) -> GuestPhysAddr:
        return self.gpa + self.size

    def contains(self, gpa: GuestPhysAddr, length: int = 1) -> bool:
        return int(self.gpa) <= int(gpa) and int(gpa) + length <= int(self.gpa) + self.size


class AddrSpace:
    def __init__(self, hal: VCpuHal, page_table: NestedPageTable) -> None:
        self.hal = hal
        self.page_table: NestedPageTable | None = page_table
        self._regions: list[MemoryRegion] = []  # sorted by gpa
        self.mmio_windows: list[tuple[GuestPhysAddr, HostPhysAddr, int]] = []
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], None]] = []
        #: The mapped RAM regions for :meth:`view`: (starts, [(start, end, view, hpa)]),
        #: ``None`` until needed after a change.
        self._runs: tuple[list[int], list[tuple[int, int, memoryview, int]]] | None = None
        self._write_listeners: tuple[WriteListener, ...] = ()
        self._generation = 0

    # -- change notification ------------------------------------------------------
    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each change of the guest-physical map (see the
        module docstring)."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (no error if it was not registered)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def add_write_listener(self, listener: WriteListener) -> None:
        """Call ``listener(ranges)`` after each :meth:`written`, ``ranges`` a sequence
        of ``(gpa, hpa, length)`` (a list, or a :class:`WrittenRanges`; any thread; the
        listener must be quick and must not raise)."""
        with self._lock:
            self._write_listeners = (*self._write_listeners, listener)

    def remove_write_listener(self, listener: WriteListener) -> None:
        """Stop calling ``listener`` (no error if it was not registered)."""
        with self._lock:
            self._write_listeners = tuple(x for x in self._write_listeners if x != listener)

    def map_generation(self) -> int:
        """A number that changes with every change of the guest-physical map: a view
        taken under one generation stays right until it changes."""
        return self._generation

    def _changed(self) -> None:
        with self._lock:
            self._runs = None
            self._generation += 1
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    # -- geometry --------------------------------------------------------------------
    @property
    def _pt(self) -> NestedPageTable:
        if self.page_table is None:
            raise BadState("the address space was destroyed")
        return self.page_table

    @property
    def root_paddr(self) -> HostPhysAddr:
        """What the vCPU's ``set_ept_root`` receives."""
        return self._pt.root_paddr

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        with self._lock:
            return tuple(self._regions)

    def find_region(self, gpa: GuestPhysAddr) -> MemoryRegion | None:
        with self._lock:
            i = bisect.bisect_right([int(r.gpa) for r in self._regions], int(gpa)) - 1
            if i >= 0 and self._regions[i].contains(gpa):
                return self._regions[i]
            return None

    # -- mapping -----------------------------------------------------------------------
    def _check_range(self, gpa: GuestPhysAddr, size: int) -> None:
        if not isinstance(gpa, GuestPhysAddr):
            raise InvalidInput(f"guest address must be a GuestPhysAddr, got {gpa!r}")
        if size <= 0:
            raise InvalidInput(f"region size must be positive, got {size:#x}")
        gpa.check_aligned(PAGE_SIZE_4K, "guest physical address")
        if size % PAGE_SIZE_4K:
            raise InvalidInput(f"region size {size:#x} is not a multiple of 4 KiB")
        for w_gpa, _pa, w_size in self.mmio_windows:
            if int(gpa) < int(w_gpa) + w_size and int(w_gpa) < int(gpa) + size:
                raise AlreadyExists(f"region [{int(gpa):#x}, {int(gpa) + size:#x}) overlaps "
                                    f"an MMIO window at {int(w_gpa):#x}")
        for r in self._regions:
            if int(gpa) < int(r.end) and int(r.gpa) < int(gpa) + size:
                raise AlreadyExists(
                    f"region [{int(gpa):#x}, {int(gpa) + size:#x}) overlaps guest RAM at "
                    f"[{int(r.gpa):#x}, {int(r.end):#x})")

    def _add(self, region: MemoryRegion) -> MemoryRegion:
        keys = [int(r.gpa) for r in self._regions]
        self._regions.insert(bisect.bisect(keys, int(region.gpa)), region)
        return region

    def map_ram(self, gpa: GuestPhysAddr, size: int,
                flags: MappingFlags = MappingFlags.READ | MappingFlags.WRITE
                | MappingFlags.EXECUTE) -> MemoryRegion:
        with self._lock:
            self._check_range(gpa, size)
            align = PAGE_SIZE_2M if size >= PAGE_SIZE_2M and gpa.is_aligned(PAGE_SIZE_2M) \
                else PAGE_SIZE_4K
            hpa = self.hal.alloc_frames_or_raise(size // PAGE_SIZE_4K, align,
                                                 what=f"guest RAM at {int(gpa):#x}")
            try:
                self._pt.map(gpa, hpa, size, flags)
            except BaseException:
                self.hal.dealloc_frames(hpa)
                raise
            region = self._add(MemoryRegion(gpa, size, hpa, flags, owned=True))
        self._changed()
        return region

    def map_linear(self, gpa: GuestPhysAddr, hpa: HostPhysAddr, size: int,
                   flags: MappingFlags) -> MemoryRegion:
        with self._lock:
            self._check_range(gpa, size)
            self._pt.map(gpa, hpa, size, flags)
            region = self._add(MemoryRegion(gpa, size, hpa, flags, owned=False))
        self._changed()
        return region

    def map_mmio_window(self, gpa: GuestPhysAddr, paddr: HostPhysAddr, size: int) -> None:
        """Map guest ``[gpa, gpa + size)`` as device memory onto physical addresses that
        are not RAM (an engine serves them in-CPU). Not a RAM region: ``read``/``write``
        of the space do not reach it."""
        with self._lock:
            self._check_range(gpa, size)
            self._pt.map(gpa, paddr, size,
                         MappingFlags.READ | MappingFlags.WRITE | MappingFlags.DEVICE)
            self.mmio_windows.append((gpa, paddr, size))
        self._changed()

    def remove_region(self, gpa: GuestPhysAddr) -> None:
        """Unmap the region that starts at ``gpa`` and free its memory if owned."""
        with self._lock:
            r = next((r for r in self._regions if r.gpa == gpa), None)
            if r is None:
                raise NotFound(f"no guest RAM region starts at {int(gpa):#x}")
            self._set_mapped(gpa, True)
            self._pt.unmap(r.gpa, r.size)
            self._regions.remove(r)
            if r.owned:
                self.hal.dealloc_frames(r.hpa)
        self._changed()

    def set_region_mapped(self, gpa: GuestPhysAddr, mapped: bool) -> None:
        """Take the region starting at ``gpa`` out of the nested table (guest accesses
        then fault to the hypervisor, e.g. a ROM device in a programming mode) or put
        it back, keeping its backing memory either way. The caller flushes TLBs."""
        if self._set_mapped(gpa, mapped):
            self._changed()

    def _set_mapped(self, gpa: GuestPhysAddr, mapped: bool) -> bool:
        with self._lock:
            r = next((r for r in self._regions if r.gpa == gpa), None)
            if r is None:
                raise NotFound(f"no guest RAM region starts at {int(gpa):#x}")
            present = True
            try:
                self._pt.translate(r.gpa)
            except NotMapped:
                present = False
            if mapped and not present:
                self._pt.map(r.gpa, r.hpa, r.size, r.flags)
            elif not mapped and present:
                self._pt.unmap(r.gpa, r.size)
            else:
                return False
            return True

    def protect(self, gpa: GuestPhysAddr, size: int, flags: MappingFlags) -> None:
        with self._lock:
            self._pt.protect(gpa, size, flags)
        self._changed()

    def translate(self, gpa: GuestPhysAddr) -> HostPhysAddr:
        hpa, _flags, _size = self._pt.translate(gpa)
        return hpa

    # -- guest memory access -------------------------------------------------------------
    def _mapped_runs(self) -> tuple[list[int], list[tuple[int, int, memoryview, int]]]:
        with self._lock:
            if self._runs is None:
                runs = []
                for r in self._regions:
                    try:
                        self._pt.translate(r.gpa)
                    except NotMapped:
                        continue
                    runs.append((int(r.gpa), int(r.end), self.hal.view(r.hpa, r.size),
                                 int(r.hpa)))
                self._runs = ([run[0] for run in runs], runs)
            return self._runs

    def written(self, pieces: Iterable[tuple[int, int]]) -> None:
        """Guest RAM was written at the ``(gpa, length)`` pieces other than by the
        guest's CPUs: tell the write listeners (see the module doc). Parts outside RAM
        are skipped."""
        listeners = self._write_listeners
        if not listeners:
            return
        pieces = [(int(g), n) for g, n in pieces if n > 0]
        if not pieces:
            return
        gpas, lengths = (tuple(column) for column in zip(*pieces, strict=True))
        ranges: Sequence[tuple[int, int, int]] | None = self._in_one_region(gpas, lengths)
        if ranges is None:
            ranges = self._cut_at_regions(pieces)
            if not ranges:
                return
        for listener in listeners:
            listener(ranges)

    def written_columns(self, gpas: Sequence[int], lengths: Sequence[int],
                        within: tuple[int, int] | None = None) -> None:
        """:meth:`written` of the pieces ``gpas[i], lengths[i]`` (ints) given as two
        sequences, without a tuple per piece when they all lie in one mapped RAM region
        (a device's request does). ``within``: a guest range ``[lo, hi)`` the caller
        has checked every piece lies in (a native device path does); then only that
        range is looked up, not each piece. The sequences must not change afterwards
        (listeners may keep them)."""
        listeners = self._write_listeners
        if not listeners or not gpas:
            return
        ranges = None if within is None else self._span_in_one_region(gpas, lengths, *within)
        if ranges is None:
            ranges = self._in_one_region(tuple(gpas), tuple(lengths))
        if ranges is None:
            self.written(zip(gpas, lengths, strict=True))
            return
        for listener in listeners:
            listener(ranges)

    def _in_one_region(self, gpas: tuple[int, ...], lengths: tuple[int, ...]
                       ) -> WrittenRanges | None:
        """The pieces as one :class:`WrittenRanges` when they all lie in one mapped RAM
        region (checked without a loop in Python), else None."""
        if min(lengths) < 0:
            return None
        return self._span_in_one_region(gpas, lengths, min(gpas),
                                        max(map(operator.add, gpas, lengths)))

    def _span_in_one_region(self, gpas: Sequence[int], lengths: Sequence[int], lo: int,
                            hi: int) -> WrittenRanges | None:
        """The pieces as one :class:`WrittenRanges` when ``[lo, hi)``, which holds them
        all, lies in one mapped RAM region (else None: look at each piece)."""
        starts, runs = self._runs or self._mapped_runs()
        i = bisect.bisect_right(starts, lo) - 1
        if i < 0 or lo > hi:
            return None
        start, stop, _view, hpa = runs[i]
        if hi > stop:
            return None
        return WrittenRanges(gpas, lengths, hpa - start)

    def _cut_at_regions(self, pieces: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """The ``(gpa, hpa, length)`` ranges of the pieces' RAM parts, cut at region ends."""
        starts, runs = self._runs or self._mapped_runs()
        ranges = []
        for gpa, length in pieces:
            pos, end = gpa, gpa + length
            while pos < end:
                i = bisect.bisect_right(starts, pos) - 1
                if i < 0 or pos >= runs[i][1]:  # not RAM here: on to the next region
                    if i + 1 >= len(runs) or runs[i + 1][0] >= end:
                        break
                    pos = runs[i + 1][0]
                    continue
                start, stop, _view, hpa = runs[i]
                n = min(end, stop) - pos
                ranges.append((pos, hpa + pos - start, n))
                pos += n
        return ranges

    def view(self, gpa: GuestPhysAddr, length: int) -> memoryview:
        """A zero-copy writable view of guest ``[gpa, gpa + length)``, which must lie
        inside one mapped RAM region (else :class:`GuestMemoryFault`)."""
        if not isinstance(gpa, GuestPhysAddr):
            raise InvalidInput(f"guest address must be a GuestPhysAddr, got {gpa!r}")
        if length < 0:
            raise InvalidInput(f"negative length {length}")
        pos = int(gpa)
        starts, runs = self._runs or self._mapped_runs()
        i = bisect.bisect_right(starts, pos) - 1
        if i >= 0:
            start, end, mem, _hpa = runs[i]
            if pos + length <= end:
                return mem[pos - start:pos - start + length]
        raise GuestMemoryFault(pos, length)

    def _chunks(self, gpa: GuestPhysAddr, length: int) -> Iterator[tuple[HostPhysAddr, int]]:
        if not isinstance(gpa, GuestPhysAddr):
            raise InvalidInput(f"guest address must be a GuestPhysAddr, got {gpa!r}")
        if length < 0:
            raise InvalidInput(f"negative length {length}")
        pos = int(gpa)
        end = pos + length
        pt = self._pt
        while pos < end:
            try:
                hpa, _flags, page_size = pt.translate(GuestPhysAddr(pos))
            except (NotMapped, InvalidInput):
                raise GuestMemoryFault(pos, end - pos) from None
            n = min(end - pos, page_size - (pos & (page_size - 1)))
            yield hpa, n
            pos += n

    def read(self, gpa: GuestPhysAddr, length: int) -> bytes:
        out = bytearray()
        for hpa, n in self._chunks(gpa, length):
            out += self.hal.view(hpa, n)
        return bytes(out)

    def write(self, gpa: GuestPhysAddr, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data).cast("B")
        # Translate everything first so a fault half way leaves memory unchanged.
        chunks = list(self._chunks(gpa, len(data)))
        off = 0
        for hpa, n in chunks:
            self.hal.view(hpa, n)[:] = data[off:off + n]
            off += n
        self.written(((int(gpa), len(data)),))

    def read_u64(self, gpa: GuestPhysAddr) -> int:
        return int.from_bytes(self.read(gpa, 8), "little")

    def write_u64(self, gpa: GuestPhysAddr, value: int) -> None:
        self.write(gpa, value.to_bytes(8, "little"))

    def region_view(self, region: MemoryRegion) -> memoryview:
        """Zero-copy view of a whole region's backing (for KVM slots, software CPUs)."""
        return self.hal.view(region.hpa, region.size)

    # -- teardown --------------------------------------------------------------------------
    def destroy(self) -> None:
        with self._lock:
            if self.page_table is None:
                return
            for r in self._regions:
                if r.owned:
                    self.hal.dealloc_frames(r.hpa)
            self._regions.clear()
            self.page_table.destroy()
            self.page_table = None
        self._changed()

    def __enter__(self) -> AddrSpace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

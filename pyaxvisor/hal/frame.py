"""4 KiB frame allocator over the host memory arena.

One byte per frame in a ``bytearray`` (0 free, 1 used), so the search for a free
run is ``bytearray.find`` of a zero pattern: C speed even for a guest RAM
allocation of hundreds of thousands of frames.

Contract:

* ``alloc(count, align)`` returns the :class:`HostPhysAddr` of ``count``
  contiguous frames whose address is a multiple of ``align`` bytes (a power of
  two, at least 4 KiB), or ``None`` when no such run exists (exhaustion is not an
  exception here; callers raise :class:`~pyaxvisor.errors.NoMemory`).
* Frames come back zeroed: freed frames are zeroed on :meth:`dealloc`.
* ``dealloc(paddr)`` frees exactly one earlier allocation, named by its first
  address. An address outside the arena raises :class:`ForeignAddress`; one
  whose frame is free raises :class:`DoubleFree`; one inside an allocation but not
  at its start raises :class:`NotAllocationStart`.
"""

from __future__ import annotations

import threading

from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal.memory import ForeignAddress, HostMemory
from pyaxvisor.mm.addr import PAGE_SIZE_4K, HostPhysAddr

FRAME_SIZE = PAGE_SIZE_4K


class DoubleFree(InvalidInput):
    """A frame was freed that is not allocated."""


class NotAllocationStart(InvalidInput):
    """A free named an address inside an allocation rather than its first frame."""


class FrameAllocator:
    def __init__(self, memory: HostMemory) -> None:
        self._memory = memory
        self._nframes = memory.size // FRAME_SIZE
        self._used = bytearray(self._nframes)
        self._allocs: dict[int, int] = {}  # first frame index -> frame count
        self._lock = threading.Lock()
        self._free = self._nframes

    @property
    def memory(self) -> HostMemory:
        return self._memory

    @property
    def total_frames(self) -> int:
        return self._nframes

    @property
    def free_frames(self) -> int:
        return self._free

    def alloc(self, count: int = 1, align: int = FRAME_SIZE) -> HostPhysAddr | None:
        if count <= 0:
            raise InvalidInput(f"frame count must be positive, got {count}")
        if align < FRAME_SIZE or align & (align - 1):
            raise InvalidInput(f"alignment {align:#x} must be a power of two >= {FRAME_SIZE:#x}")
        base = int(self._memory.phys_base)
        # Index alignment equals address alignment only when phys_base is aligned too;
        # it is 1 GiB aligned, and larger alignments are computed from the address.
        step = align // FRAME_SIZE
        first_aligned = ((-(base // FRAME_SIZE)) % step) if align > (1 << 30) else 0
        pattern = bytes(count)
        with self._lock:
            if count > self._free:
                return None
            used = self._used
            start = first_aligned
            while True:
                pos = used.find(pattern, start)
                if pos < 0:
                    return None
                aligned = first_aligned + ((pos - first_aligned + step - 1) // step) * step
                if aligned == pos or used.find(pattern, aligned, aligned + count) == aligned:
                    break
                start = aligned
            used[aligned:aligned + count] = b"\x01" * count
            self._allocs[aligned] = count
            self._free -= count
        return HostPhysAddr(base + aligned * FRAME_SIZE)

    def _index(self, paddr: HostPhysAddr | int) -> int:
        if not self._memory.contains(paddr):
            raise ForeignAddress(f"frame {int(paddr):#x} does not belong to this allocator")
        off = int(paddr) - int(self._memory.phys_base)
        if off % FRAME_SIZE:
            raise InvalidInput(f"frame address {int(paddr):#x} is not 4 KiB aligned")
        return off // FRAME_SIZE

    def dealloc(self, paddr: HostPhysAddr | int) -> int:
        """Free the allocation starting at ``paddr``; returns its frame count."""
        idx = self._index(paddr)
        with self._lock:
            count = self._allocs.pop(idx, None)
            if count is None:
                if not self._used[idx]:
                    raise DoubleFree(f"frame {int(paddr):#x} is not allocated (double free?)")
                raise NotAllocationStart(
                    f"frame {int(paddr):#x} lies inside an allocation; free it by its first frame"
                )
            self._memory.zero(paddr, count * FRAME_SIZE)
            self._used[idx:idx + count] = bytes(count)
            self._free += count
        return count

    def allocation_size(self, paddr: HostPhysAddr | int) -> int:
        """Size in bytes of the allocation starting at ``paddr``."""
        idx = self._index(paddr)
        with self._lock:
            count = self._allocs.get(idx)
        if count is None:
            raise NotAllocationStart(f"{int(paddr):#x} is not the start of an allocation")
        return count * FRAME_SIZE

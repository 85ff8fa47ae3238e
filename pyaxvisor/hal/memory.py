"""Host "physical" memory: an mmap-backed arena.

pyaxvisor runs as a user process, so the machine memory a hypervisor would own
is modelled by one anonymous mapping (``MAP_NORESERVE``: pages are committed only
when touched). Inside the arena:

* a **host physical address** is ``phys_base + offset`` (``phys_base`` is 1 GiB
  aligned and far from zero, so a stray small integer is never a valid frame);
* a **host virtual address** is the real address of that byte in this process,
  which is what KVM's memory slots and a software CPU's zero-copy RAM need.

Both conversions are bounds-checked; an address outside the arena raises
:class:`ForeignAddress`. Freed ranges are returned to the kernel with
``MADV_DONTNEED``, which also makes them read back as zeros.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import struct
import threading

from pyaxvisor.errors import InvalidInput, NoMemory, NotFound
from pyaxvisor.mm.addr import PAGE_SIZE_1G, PAGE_SIZE_2M, PAGE_SIZE_4K, HostPhysAddr, HostVirtAddr

DEFAULT_PHYS_BASE = 0x40_0000_0000  # 256 GiB: 1 GiB aligned, never confused with a small int
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux value; absent from 3.11


def _advise_huge_pages(mapping: mmap.mmap, start: int, length: int) -> bool:
    """Ask for transparent huge pages on ``mapping[start:start + length]``, as QEMU does
    for guest RAM: with THP in its usual ``madvise`` mode, anonymous memory only gets 2 MiB
    pages when asked. Software CPUs reach guest RAM through host addresses, so 4 KiB host
    pages cost a host TLB miss per guest page touched (under nested paging, a two-dimensional
    walk). False where the host has no THP (the advice is refused); nothing else changes."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return False
    try:
        mapping.madvise(advice, start, length)
    except OSError:
        return False
    return True


_U64 = struct.Struct("<Q")


class ForeignAddress(NotFound):
    """An address that does not belong to the host memory arena."""


class HostMemory:
    """The host memory arena. Thread-safe for concurrent reads and writes of
    disjoint ranges (it is plain memory); :meth:`close` must not race with users.

    ``size`` is rounded up to 2 MiB; the host virtual base is 2 MiB aligned so that
    2 MiB guest blocks can be backed by transparent huge pages.
    """

    def __init__(self, size: int, phys_base: int = DEFAULT_PHYS_BASE) -> None:
        if size <= 0:
            raise InvalidInput(f"host memory size must be positive, got {size}")
        if phys_base % PAGE_SIZE_1G:
            raise InvalidInput(f"phys_base {phys_base:#x} must be 1 GiB aligned")
        size = (size + PAGE_SIZE_2M - 1) & ~(PAGE_SIZE_2M - 1)
        reserve = size + PAGE_SIZE_2M
        try:
            self._mmap: mmap.mmap | None = mmap.mmap(
                -1, reserve, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise NoMemory(f"cannot reserve {size:#x} bytes of host memory: {exc}") from exc
        probe = ctypes.c_char.from_buffer(self._mmap)
        raw = ctypes.addressof(probe)
        del probe  # drop the export again: the mapping can only be closed without exports
        self._virt_base = (raw + PAGE_SIZE_2M - 1) & ~(PAGE_SIZE_2M - 1)
        self._skew = self._virt_base - raw
        self._size = size
        self._phys_base = phys_base
        self._view: memoryview | None = memoryview(self._mmap)[self._skew:self._skew + size]
        self._lock = threading.Lock()
        self._huge_pages = _advise_huge_pages(self._mmap, self._skew, size)

    # -- geometry -----------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def huge_pages(self) -> bool:
        """The arena asked the host for transparent huge pages (``MADV_HUGEPAGE``) and
        the host took the advice (False on a kernel without THP)."""
        return self._huge_pages

    @property
    def phys_base(self) -> HostPhysAddr:
        return HostPhysAddr(self._phys_base)

    @property
    def virt_base(self) -> HostVirtAddr:
        return HostVirtAddr(self._virt_base)

    @property
    def closed(self) -> bool:
        return self._view is None

    def _offset(self, paddr: HostPhysAddr | int, length: int = 1) -> int:
        off = int(paddr) - self._phys_base
        if off < 0 or length < 0 or off + length > self._size:
            raise ForeignAddress(
                f"host physical range {int(paddr):#x}+{length:#x} is outside the arena "
                f"[{self._phys_base:#x}, {self._phys_base + self._size:#x})"
            )
        return off

    def contains(self, paddr: HostPhysAddr | int, length: int = 1) -> bool:
        off = int(paddr) - self._phys_base
        return off >= 0 and off + length <= self._size

    # -- translation ----------------------------------------------------------------
    def phys_to_virt(self, paddr: HostPhysAddr) -> HostVirtAddr:
        return HostVirtAddr(self._virt_base + self._offset(paddr))

    def virt_to_phys(self, vaddr: HostVirtAddr) -> HostPhysAddr:
        off = int(vaddr) - self._virt_base
        if off < 0 or off >= self._size:
            raise ForeignAddress(f"host virtual address {int(vaddr):#x} is outside the arena")
        return HostPhysAddr(self._phys_base + off)

    # -- access -----------------------------------------------------------------------
    def _mem(self) -> memoryview:
        if self._view is None:
            raise ForeignAddress("host memory arena is closed")
        return self._view

    def view(self, paddr: HostPhysAddr | int, length: int) -> memoryview:
        """A zero-copy writable view of ``length`` bytes at ``paddr``."""
        off = self._offset(paddr, length)
        return self._mem()[off:off + length]

    def read(self, paddr: HostPhysAddr | int, length: int) -> bytes:
        off = self._offset(paddr, length)
        return bytes(self._mem()[off:off + length])

    def write(self, paddr: HostPhysAddr | int, data: bytes | bytearray | memoryview) -> None:
        off = self._offset(paddr, len(data))
        self._mem()[off:off + len(data)] = data

    def read_u64(self, paddr: HostPhysAddr | int) -> int:
        return _U64.unpack_from(self._mem(), self._offset(paddr, 8))[0]

    def write_u64(self, paddr: HostPhysAddr | int, value: int) -> None:
        _U64.pack_into(self._mem(), self._offset(paddr, 8), value)

    def zero(self, paddr: HostPhysAddr | int, length: int) -> None:
        """Zero a range; whole pages are handed back to the kernel instead of written."""
        off = self._offset(paddr, length)
        mem = self._mem()
        start = (off + PAGE_SIZE_4K - 1) & ~(PAGE_SIZE_4K - 1)
        end = (off + length) & ~(PAGE_SIZE_4K - 1)
        if end - start >= 16 * PAGE_SIZE_4K:
            mem[off:start] = bytes(start - off)
            assert self._mmap is not None
            self._mmap.madvise(mmap.MADV_DONTNEED, self._skew + start, end - start)
            mem[end:off + length] = bytes(off + length - end)
        else:
            mem[off:off + length] = bytes(length)

    def close(self) -> None:
        """Unmap the arena. Views handed out before must no longer be used."""
        with self._lock:
            if self._view is None:
                return
            view, self._view = self._view, None
            view.release()
            assert self._mmap is not None
            # Someone may still hold a view (a software CPU, a memory slot): unmapping
            # then would turn their next access into a segfault, so mmap refuses with
            # BufferError and the mapping stays until the last view is collected.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None

    def __enter__(self) -> HostMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

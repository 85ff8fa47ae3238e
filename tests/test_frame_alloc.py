"""Frame allocator over the host memory arena."""

import pytest

from pyaxvisor.errors import InvalidInput, NoMemory
from pyaxvisor.hal import DoubleFree, ForeignAddress, FrameAllocator, HostHal, HostMemory
from pyaxvisor.hal.frame import NotAllocationStart
from pyaxvisor.mm.addr import HostPhysAddr


@pytest.fixture
def alloc():
    mem = HostMemory(8 << 20)  # 2048 frames
    yield FrameAllocator(mem)
    mem.close()


def test_frames_are_distinct_aligned_and_inside_the_arena(alloc):
    base = int(alloc.memory.phys_base)
    seen = set()
    for _ in range(100):
        p = alloc.alloc()
        assert int(p) % 0x1000 == 0
        assert base <= int(p) < base + alloc.memory.size
        seen.add(int(p))
    assert len(seen) == 100
    assert alloc.free_frames == 2048 - 100


@pytest.mark.parametrize(("count", "align"), [(4, 0x4000), (512, 0x20_0000), (3, 0x8000)])
def test_contiguous_aligned_allocations(alloc, count, align):
    alloc.alloc()  # make the first free frame unaligned
    p = alloc.alloc(count, align)
    assert int(p) % align == 0
    assert alloc.allocation_size(p) == count * 0x1000
    # the run really is reserved: a new single frame does not fall inside it
    q = alloc.alloc()
    assert not int(p) <= int(q) < int(p) + count * 0x1000


def test_gigabyte_alignment():
    mem = HostMemory(2 << 30)
    try:
        a = FrameAllocator(mem)
        a.alloc()
        p = a.alloc(1, 1 << 30)
        assert int(p) % (1 << 30) == 0
        assert int(p) == int(mem.phys_base) + (1 << 30)
    finally:
        mem.close()


def test_exhaustion_returns_none_and_recovers(alloc):
    frames = [alloc.alloc() for _ in range(2048)]
    assert all(f is not None for f in frames)
    assert alloc.alloc() is None
    assert alloc.alloc(2) is None
    alloc.dealloc(frames[7])
    assert alloc.alloc() == frames[7]


def test_exhaustion_by_fragmentation(alloc):
    frames = [alloc.alloc() for _ in range(2048)]
    for f in frames[::2]:
        alloc.dealloc(f)
    assert alloc.free_frames == 1024
    assert alloc.alloc(2) is None  # free but never two in a row


def test_hal_turns_exhaustion_into_typed_error():
    with HostHal(2 << 20) as hal:
        hal.alloc_frames_or_raise(512, what="guest RAM")
        with pytest.raises(NoMemory, match="guest RAM"):
            hal.alloc_frames_or_raise(1, what="guest RAM")
        assert hal.alloc_frame() is None


def test_double_free(alloc):
    p = alloc.alloc()
    alloc.dealloc(p)
    with pytest.raises(DoubleFree, match="double free"):
        alloc.dealloc(p)


def test_free_inside_an_allocation(alloc):
    p = alloc.alloc(4)
    with pytest.raises(NotAllocationStart):
        alloc.dealloc(p + 0x1000)
    assert alloc.dealloc(p) == 4


@pytest.mark.parametrize("addr", [0, 0x1000, 0x40_0000_0000 + (8 << 20), 0xFFFF_F000])
def test_foreign_address(alloc, addr):
    with pytest.raises(ForeignAddress):
        alloc.dealloc(HostPhysAddr(addr))


def test_unaligned_free_and_bad_arguments(alloc):
    p = alloc.alloc()
    with pytest.raises(InvalidInput, match="not 4 KiB aligned"):
        alloc.dealloc(p + 8)
    with pytest.raises(InvalidInput):
        alloc.alloc(0)
    with pytest.raises(InvalidInput):
        alloc.alloc(1, 0x3000)


def test_freed_frames_come_back_zeroed(alloc):
    p = alloc.alloc(32)
    alloc.memory.write(p, b"\xAA" * (32 * 0x1000))
    alloc.dealloc(p)
    q = alloc.alloc(32)
    assert q == p
    assert alloc.memory.read(q, 32 * 0x1000) == bytes(32 * 0x1000)

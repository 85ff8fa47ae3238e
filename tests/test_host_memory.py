"""The mmap-backed host memory arena and its address conversions."""

import ctypes
import os

import pytest

from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal import ForeignAddress, HostMemory
from pyaxvisor.mm.addr import HostPhysAddr, HostVirtAddr


@pytest.fixture
def mem():
    m = HostMemory(4 << 20)
    yield m
    m.close()


def test_phys_virt_round_trip_is_a_real_pointer(mem):
    p = mem.phys_base + 0x1234
    v = mem.phys_to_virt(p)
    assert isinstance(v, HostVirtAddr)
    assert mem.virt_to_phys(v) == p
    mem.write(p, b"pyaxvisor")
    assert ctypes.string_at(int(v), 9) == b"pyaxvisor"  # the host virtual address is real
    assert int(mem.virt_base) % (2 << 20) == 0


def test_views_are_zero_copy(mem):
    view = mem.view(mem.phys_base + 0x2000, 16)
    view[0:4] = b"\x01\x02\x03\x04"
    assert mem.read_u64(mem.phys_base + 0x2000) == 0x04030201
    mem.write_u64(mem.phys_base + 0x2008, 0x1122334455667788)
    assert bytes(view[8:16]) == bytes.fromhex("8877665544332211")


@pytest.mark.parametrize(("addr", "length"), [(-1, 1), (4 << 20, 1), ((4 << 20) - 4, 8)])
def test_out_of_arena_access(mem, addr, length):
    with pytest.raises(ForeignAddress, match="outside the arena"):
        mem.read(int(mem.phys_base) + addr, length)
    with pytest.raises(ForeignAddress):
        mem.phys_to_virt(HostPhysAddr(0x1000))
    with pytest.raises(ForeignAddress):
        mem.virt_to_phys(HostVirtAddr(0x1000))


def test_close_with_live_view_does_not_unmap_under_it():
    m = HostMemory(2 << 20)
    view = m.view(m.phys_base, 8)
    m.close()
    view[0] = 7  # would segfault had the arena been unmapped
    assert view[0] == 7
    with pytest.raises(ForeignAddress, match="closed"):
        m.read(m.phys_base, 1)


def test_zero_large_and_small_ranges(mem):
    mem.write(mem.phys_base + 0x1000, b"\xFF" * 0x30000)
    mem.zero(mem.phys_base + 0x1003, 0x2FFFA)
    data = mem.read(mem.phys_base + 0x1000, 0x30000)
    assert data[:3] == b"\xFF" * 3 and data[-3:] == b"\xFF" * 3
    assert data[3:-3] == bytes(0x30000 - 6)


def test_bad_sizes():
    with pytest.raises(InvalidInput):
        HostMemory(0)
    with pytest.raises(InvalidInput, match="1 GiB aligned"):
        HostMemory(1 << 20, phys_base=0x1000)


def _vm_flags(addr: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``addr`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


def test_the_arena_asks_for_transparent_huge_pages(mem):
    # As QEMU does for guest RAM: with THP in "madvise" mode (Debian's default) only
    # advised memory gets 2 MiB pages, and software CPUs reach guest RAM through host
    # addresses, so 4 KiB pages cost a host TLB miss per guest page.
    thp = os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled")
    assert mem.huge_pages is thp
    flags = _vm_flags(int(mem.virt_base) + (1 << 20))
    assert ("hg" in flags) is thp

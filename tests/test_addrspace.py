"""AddrSpace: guest RAM regions over a nested page table, guest memory access by GPA."""

import pytest

from pyaxvisor.errors import AlreadyExists, BadState, InvalidInput, NoMemory, NotFound
from pyaxvisor.hal import HostHal
from pyaxvisor.mm import GuestPhysAddr, HostPhysAddr, MappingFlags
from pyaxvisor.mm.addrspace import AddrSpace, GuestMemoryFault, WrittenRanges
from pyaxvisor.mm.nested import ARCHES, nested_page_table

G = GuestPhysAddr
RW = MappingFlags.READ | MappingFlags.WRITE


@pytest.fixture
def hal():
    h = HostHal(64 << 20)
    yield h
    h.close()


@pytest.fixture(params=ARCHES)
def space(request, hal):
    s = AddrSpace(hal, nested_page_table(hal, request.param))
    yield s
    s.destroy()


def test_ram_is_backed_by_contiguous_aligned_frames_and_mapped_with_blocks(space, hal):
    region = space.map_ram(G(0x4000_0000), 4 << 20)
    assert int(region.hpa) % (2 << 20) == 0
    assert hal.frames.allocation_size(region.hpa) == 4 << 20
    # The nested table, not the region list, answers translations: 2 MiB blocks.
    hpa, flags, size = space.page_table.translate(G(0x4020_1234))
    assert size == 2 << 20
    assert hpa == region.hpa + 0x20_1234
    assert MappingFlags.WRITE in flags and MappingFlags.EXECUTE in flags


def test_read_write_across_pages_and_regions(space, hal):
    space.map_ram(G(0x4000_0000), 0x2000)
    b = space.map_ram(G(0x4000_2000), 0x1000)
    data = bytes(range(256)) * 28  # 7 KiB from 0x800: crosses into the second region
    space.write(G(0x4000_0800), data)
    assert space.read(G(0x4000_0800), len(data)) == data
    # the bytes really live in the regions' host frames
    assert hal.memory.read(b.hpa, 0x400) == data[0x1800:]
    space.write_u64(G(0x4000_2FF8), 0x1122_3344_5566_7788)
    assert space.read(G(0x4000_2FF8), 8) == bytes.fromhex("8877665544332211")
    assert space.read_u64(G(0x4000_2FF8)) == 0x1122_3344_5566_7788


def test_unbacked_access_faults_and_a_faulting_write_changes_nothing(space):
    space.map_ram(G(0x4000_0000), 0x1000)
    with pytest.raises(GuestMemoryFault, match="0x9000000"):
        space.read(G(0x0900_0000), 4)
    with pytest.raises(GuestMemoryFault, match="0x40001000"):
        space.write(G(0x4000_0FFC), b"\xAA" * 8)
    assert space.read(G(0x4000_0FFC), 4) == bytes(4)


def test_overlap_and_bad_ranges(space):
    space.map_ram(G(0x4000_0000), 0x10_0000)
    with pytest.raises(AlreadyExists, match="overlaps"):
        space.map_ram(G(0x400F_F000), 0x2000)
    with pytest.raises(InvalidInput):
        space.map_ram(G(0x5000_0800), 0x1000)
    with pytest.raises(InvalidInput):
        space.map_ram(G(0x5000_0000), 0x1800)
    with pytest.raises(InvalidInput):
        space.map_ram(0x5000_0000, 0x1000)  # type: ignore[arg-type]


def test_remove_region_unmaps_and_frees(space, hal):
    free0 = hal.frames.free_frames
    r = space.map_ram(G(0x8000_0000), 0x40_0000)
    space.remove_region(G(0x8000_0000))
    with pytest.raises(GuestMemoryFault):
        space.read(G(0x8000_0000), 1)
    assert r not in space.regions
    with pytest.raises(NotFound):
        space.remove_region(G(0x8000_0000))
    # only the page-table frames created for the mapping may remain
    assert hal.frames.free_frames >= free0 - len(space.page_table.table_frames())


def test_linear_mapping_of_caller_memory_is_not_freed(space, hal):
    hpa = hal.alloc_frames(4)
    space.map_linear(G(0x1000_0000), hpa, 0x4000, RW)
    hal.memory.write(hpa + 0x10, b"shared")
    assert space.read(G(0x1000_0010), 6) == b"shared"
    assert space.translate(G(0x1000_3000)) == hpa + 0x3000
    space.remove_region(G(0x1000_0000))
    hal.dealloc_frames(hpa)  # still ours: a second free would raise


def test_protect_goes_to_the_table(space):
    space.map_ram(G(0x4000_0000), 0x4000)
    space.protect(G(0x4000_1000), 0x1000, MappingFlags.READ)
    _, flags, _ = space.page_table.translate(G(0x4000_1000))
    assert MappingFlags.WRITE not in flags
    _, flags, _ = space.page_table.translate(G(0x4000_2000))
    assert MappingFlags.WRITE in flags
    # the hypervisor's own writes ignore guest permissions
    space.write(G(0x4000_1000), b"rom")
    assert space.read(G(0x4000_1000), 3) == b"rom"


def test_out_of_host_memory_is_typed_and_leaves_space_usable(hal):
    space = AddrSpace(hal, nested_page_table(hal, "aarch64"))
    with pytest.raises(NoMemory, match="guest RAM at 0x40000000"):
        space.map_ram(G(0x4000_0000), 128 << 20)
    assert space.regions == ()
    space.map_ram(G(0x4000_0000), 1 << 20)
    space.destroy()


def test_destroy_frees_everything_and_blocks_use(hal):
    free0 = hal.frames.free_frames
    space = AddrSpace(hal, nested_page_table(hal, "x86_64"))
    space.map_ram(G(0), 8 << 20)
    space.map_ram(G(0xFEE0_0000), 0x1000)
    space.destroy()
    assert hal.frames.free_frames == free0
    with pytest.raises(BadState, match="destroyed"):
        space.root_paddr  # noqa: B018
    space.destroy()  # idempotent


def test_unknown_architecture(hal):
    with pytest.raises(InvalidInput, match="x86_64, aarch64, riscv64"):
        nested_page_table(hal, "mips")


def test_root_is_a_host_physical_address(space):
    assert isinstance(space.root_paddr, HostPhysAddr)


def test_listeners_hear_every_change_of_the_map(hal):
    space = AddrSpace(hal, nested_page_table(hal, "riscv64"))
    heard: list[int] = []

    def listener() -> None:
        heard.append(len(space.regions))

    space.add_listener(listener)
    space.map_ram(G(0x8000_0000), 0x2000)                    # 1
    space.map_linear(G(0x9000_0000), space.regions[0].hpa, 0x1000, RW)  # 2
    space.protect(G(0x8000_0000), 0x1000, MappingFlags.READ)  # 3
    space.set_region_mapped(G(0x8000_0000), False)           # 4
    space.set_region_mapped(G(0x8000_0000), False)           # no change: not heard
    space.remove_region(G(0x8000_0000))                      # 5 (mapped back, then removed)
    space.map_mmio_window(G(0x1000_0000), HostPhysAddr(0x80_0000_0000), 0x1000)  # 6
    assert heard == [1, 2, 2, 2, 1, 1]
    space.remove_listener(listener)
    space.remove_listener(listener)                          # not registered: no error
    space.map_ram(G(0xA000_0000), 0x1000)
    assert len(heard) == 6
    space.add_listener(listener)
    space.destroy()
    assert heard[-1] == 0


def test_views_reach_ram_zero_copy_and_follow_the_map(space):
    region = space.map_ram(G(0x4000_0000), 2 << 20)
    space.map_ram(G(0x4020_0000), 2 << 20)          # adjacent: a second region
    view = space.view(G(0x4000_1000), 16)
    view[:4] = b"abcd"
    assert space.read(G(0x4000_1000), 4) == b"abcd"   # the same memory, no copy
    space.write(G(0x4000_1004), b"ef")
    assert bytes(view[4:6]) == b"ef"
    with pytest.raises(GuestMemoryFault):             # one view never spans two regions
        space.view(G(0x401F_FFF0), 0x20)
    with pytest.raises(GuestMemoryFault):             # nothing there
        space.view(G(0x1000), 4)
    space.set_region_mapped(region.gpa, False)        # taken out of the table: no view
    with pytest.raises(GuestMemoryFault):
        space.view(G(0x4000_1000), 4)
    space.set_region_mapped(region.gpa, True)
    assert bytes(space.view(G(0x4000_1000), 4)) == b"abcd"
    with pytest.raises(InvalidInput):
        space.view(0x4000_1000, 4)                    # an int is not a GuestPhysAddr


@pytest.mark.parametrize("regions", [1, 2], ids=["one-region", "two-regions"])
def test_writes_reach_the_write_listeners_as_host_ranges(space, regions):
    first = space.map_ram(G(0x4000_0000), 2 << 20)
    second = space.map_ram(G(0x4800_0000), 2 << 20) if regions == 2 else None
    heard: list[list[tuple[int, int, int]]] = []
    space.add_write_listener(heard.append)
    space.write(G(0x4000_0100), b"x" * 8)             # the hypervisor's writes say so too
    space.written([(0x4000_2000, 0x1000), (0x4000_9000, 0x10)])
    assert heard == [[(0x4000_0100, int(first.hpa) + 0x100, 8)],
                     [(0x4000_2000, int(first.hpa) + 0x2000, 0x1000),
                      (0x4000_9000, int(first.hpa) + 0x9000, 0x10)]]
    heard.clear()
    # a piece partly outside RAM: only its RAM part; one outside everything: nothing
    space.written([(0x401F_FF00, 0x200), (0x1000, 0x10)])
    assert heard == [[(0x401F_FF00, int(first.hpa) + 0x1F_FF00, 0x100)]]
    if second is not None:
        heard.clear()
        space.written([(0x4800_0010, 4)])
        assert heard == [[(0x4800_0010, int(second.hpa) + 0x10, 4)]]
    space.remove_write_listener(heard.append)
    heard.clear()
    space.written([(0x4000_0000, 4)])
    assert heard == []


def test_pieces_known_to_lie_in_a_range_are_reported_by_that_range(space):
    first = space.map_ram(G(0x4000_0000), 2 << 20)
    second = space.map_ram(G(0x4020_0000), 2 << 20)   # adjacent: a second region
    heard: list[object] = []
    space.add_write_listener(heard.append)
    gpas, lengths = [0x4000_3000, 0x4000_1000], [0x1000, 0x10]
    space.written_columns(gpas, lengths, within=(0x4000_0000, 0x4020_0000))
    assert isinstance(heard[0], WrittenRanges) and heard[0].gpas is gpas  # no copy
    assert heard == [[(0x4000_3000, int(first.hpa) + 0x3000, 0x1000),
                      (0x4000_1000, int(first.hpa) + 0x1000, 0x10)]]
    heard.clear()
    # a range across the two regions: each piece is looked at, and cut at the end
    space.written_columns([0x401F_FF00, 0x4020_0000], [0x200, 8],
                          within=(0x4000_0000, 0x4040_0000))
    assert heard == [[(0x401F_FF00, int(first.hpa) + 0x1F_FF00, 0x100),
                      (0x4020_0000, int(second.hpa), 0x100),
                      (0x4020_0000, int(second.hpa), 8)]]

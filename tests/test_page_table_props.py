"""Format-independent behaviour of NestedPageTable, for every format.

Example-based tests (errors leave the table unchanged, block splitting, the
choice of leaf size, frame accounting, exhaustion with rollback) and hypothesis
property tests (random non-overlapping mappings translate back; protect and
unmap touch exactly the named range).

Expected flags come from :func:`expected_flags`, written here from the formats'
documented rules, not from the code under test.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pyaxvisor.errors import AlignmentError, AlreadyExists, BadState, InvalidInput, NoMemory
from pyaxvisor.hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr as G
from pyaxvisor.mm.addr import HostPhysAddr as H
from pyaxvisor.mm.flags import MappingFlags as F
from pyaxvisor.mm.page_table import (
    EptFormat,
    MappingExists,
    NestedPageTable,
    NotMapped,
    Stage2Format,
    Sv39x4Format,
    Sv48x4Format,
)

K4, M2, G1 = 0x1000, 0x20_0000, 0x4000_0000
RWX = F.READ | F.WRITE | F.EXECUTE

FORMATS = {
    "ept": EptFormat,
    "stage2-32": lambda: Stage2Format(32),
    "stage2-40": lambda: Stage2Format(40),
    "stage2-48": lambda: Stage2Format(48),
    "sv39x4": Sv39x4Format,
    "sv48x4": Sv48x4Format,
}
NAMES = list(FORMATS)

FLAG_CHOICES = [
    RWX, F.READ, F.READ | F.WRITE, F.READ | F.EXECUTE, F.EXECUTE,
    F.READ | F.WRITE | F.DEVICE, F.READ | F.UNCACHED, RWX | F.USER,
]


def expected_flags(name: str, flags: F) -> F:
    """What each format can store: R/W/X everywhere; EPT has one uncached type (UC,
    reported as DEVICE); stage-2 has Device and Normal-NC; G-stage has none; USER
    is never stored."""
    rwx = flags & RWX
    if name == "ept":
        return rwx | (F.DEVICE if flags & (F.DEVICE | F.UNCACHED) else F(0))
    if name.startswith("stage2"):
        if flags & F.DEVICE:
            return rwx | F.DEVICE
        return rwx | (F.UNCACHED if flags & F.UNCACHED else F(0))
    return rwx


def input_bits(name: str) -> int:
    return {"ept": 48, "stage2-32": 32, "stage2-40": 40, "stage2-48": 48, "sv39x4": 41,
            "sv48x4": 50}[name]


@pytest.fixture
def hal():
    h = HostHal(16 << 20)
    yield h
    h.close()


@pytest.fixture(scope="module")
def shared_hal():
    h = HostHal(64 << 20)
    yield h
    h.close()


def make(hal, name) -> NestedPageTable:
    return NestedPageTable(hal, FORMATS[name]())


def snapshot(pt):
    return list(pt.mappings()), [int(p) for p in pt.table_frames()]


# ---------------------------------------------------------------------------------------------
# leaf size choice
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_largest_leaf_is_chosen(hal, name):
    pt = make(hal, name)
    pt.map(G(G1), H(0x10_0000_0000), G1 + M2 + K4, RWX)
    assert [(int(g), int(h), s) for g, h, s, _ in pt.mappings()] == [
        (G1, 0x10_0000_0000, G1),
        (2 * G1, 0x10_4000_0000, M2),
        (2 * G1 + M2, 0x10_4020_0000, K4),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_host_alignment_limits_the_leaf_size(hal, name):
    pt = make(hal, name)
    pt.map(G(G1), H(0x10_0020_0000), G1, F.READ)  # hpa only 2 MiB aligned: no 1 GiB leaf
    sizes = [s for _, _, s, _ in pt.mappings()]
    assert sizes == [M2] * 512
    pt.map(G(2 * G1), H(0x10_0000_1000), M2, F.READ)  # hpa 4 KiB aligned: pages only
    assert len(list(pt.mappings())) == 512 + 512
    assert pt.translate(G(2 * G1 + 0x1234)) == (H(0x10_0000_2234), F.READ, K4)


@pytest.mark.parametrize("name", NAMES)
def test_allow_huge_false_maps_pages(hal, name):
    pt = make(hal, name)
    pt.map(G(M2), H(0x10_0000_0000), M2 + K4, F.READ, allow_huge=False)
    leaves = list(pt.mappings())
    assert len(leaves) == 513 and {s for _, _, s, _ in leaves} == {K4}
    assert pt.translate(G(2 * M2)) == (H(0x10_0020_0000), F.READ, K4)


# ---------------------------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_misaligned_arguments(hal, name):
    pt = make(hal, name)
    pt.map(G(0), H(0x10_0000_0000), K4, F.READ)
    before = snapshot(pt)
    with pytest.raises(AlignmentError) as exc:
        pt.map(G(0x10_0800), H(0x10_0000_0000), K4, F.READ)
    assert (exc.value.what, exc.value.value) == ("guest physical address", 0x10_0800)
    with pytest.raises(AlignmentError) as exc:
        pt.map(G(0x10_0000), H(0x10_0000_0010), K4, F.READ)
    assert exc.value.what == "host physical address"
    with pytest.raises(AlignmentError) as exc:
        pt.map(G(0x10_0000), H(0x10_0000_0000), K4 + 8, F.READ)
    assert exc.value.what == "size"
    with pytest.raises(AlignmentError):
        pt.unmap(G(0x800), K4)
    with pytest.raises(AlignmentError):
        pt.protect(G(0), 0x800, F.READ)
    with pytest.raises(InvalidInput):
        pt.map(G(0x10_0000), H(0x10_0000_0000), 0, F.READ)
    with pytest.raises(TypeError):
        pt.map(H(0x10_0000), H(0x10_0000_0000), K4, F.READ)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pt.map(G(0x10_0000), G(0x10_0000_0000), K4, F.READ)  # type: ignore[arg-type]
    assert snapshot(pt) == before


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("flags", [F(0), F.WRITE, F.WRITE | F.EXECUTE, F.USER | F.DEVICE])
def test_inexpressible_permissions(hal, name, flags):
    pt = make(hal, name)
    with pytest.raises(InvalidInput):
        pt.map(G(0), H(0x10_0000_0000), K4, flags)
    pt.map(G(0), H(0x10_0000_0000), K4, F.READ)
    with pytest.raises(InvalidInput):
        pt.protect(G(0), K4, flags)
    assert pt.translate(G(0))[1] == F.READ


@pytest.mark.parametrize("name", NAMES)
def test_guest_range_beyond_the_input_size(hal, name):
    pt = make(hal, name)
    top = 1 << input_bits(name)
    before = snapshot(pt)
    for gpa, size in [(top, K4), (top - K4, 2 * K4), (top - M2, G1)]:
        with pytest.raises(InvalidInput, match="exceeds"):
            pt.map(G(gpa), H(0x10_0000_0000), size, F.READ)
        with pytest.raises(InvalidInput):
            pt.unmap(G(gpa), size)
    with pytest.raises(InvalidInput):
        pt.translate(G(top))
    assert snapshot(pt) == before
    pt.map(G(top - 2 * K4), H(0x10_0000_0000), 2 * K4, F.READ)  # the last pages are fine
    assert pt.translate(G(top - 1)) == (H(0x10_0000_1FFF), F.READ, K4)


# ---------------------------------------------------------------------------------------------
# overlap and missing mappings leave the table unchanged
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_overlaps_are_refused_without_change(hal, name):
    pt = make(hal, name)
    pt.map(G(G1), H(0x10_0000_0000), M2, RWX)                  # a 2 MiB block
    pt.map(G(G1 + 4 * M2 + 3 * K4), H(0x20_0000_0000), K4, F.READ)  # a lone page
    before = snapshot(pt)
    free = hal.frames.free_frames
    cases = [
        (G1 + 5 * K4, K4),               # a page inside the block
        (G1 - K4, 2 * K4),               # straddling the block's start
        (G1, M2),                        # the exact block again
        (G1 + 4 * M2, M2),               # a block over the existing page
        (0, 2 * G1),                     # a huge range covering everything
        (G1 + 4 * M2 + 3 * K4, K4),      # the exact page again
    ]
    for gpa, size in cases:
        with pytest.raises(MappingExists) as exc:
            pt.map(G(gpa), H(0x30_0000_0000), size, F.READ)
        assert isinstance(exc.value, AlreadyExists)
    assert snapshot(pt) == before
    assert hal.frames.free_frames == free  # nothing allocated and leaked either
    # neighbours of the existing mappings are free
    pt.map(G(G1 + M2), H(0x30_0000_0000), K4, F.READ)
    pt.map(G(G1 + 4 * M2 + 2 * K4), H(0x30_0000_1000), K4, F.READ)


@pytest.mark.parametrize("name", NAMES)
def test_unmap_and_protect_of_unmapped_ranges(hal, name):
    pt = make(hal, name)
    pt.map(G(M2), H(0x10_0000_0000), M2, RWX)
    pt.map(G(2 * M2), H(0x10_0020_0000), 4 * K4, RWX)
    before = snapshot(pt)
    with pytest.raises(NotMapped) as exc:
        pt.unmap(G(M2), M2 + 8 * K4)  # the hole starts after the 4 pages
    assert exc.value.gpa == 2 * M2 + 4 * K4
    with pytest.raises(NotMapped) as exc:
        pt.unmap(G(M2 - K4), 2 * K4)
    assert exc.value.gpa == M2 - K4
    with pytest.raises(NotMapped):
        pt.unmap(G(3 * G1), K4)
    with pytest.raises(NotMapped) as exc:
        pt.protect(G(M2 + K4), M2 + 4 * K4, F.READ)
    assert exc.value.gpa == 2 * M2 + 4 * K4
    assert snapshot(pt) == before
    with pytest.raises(NotMapped, match="0x7654000"):
        pt.translate(G(0x765_4000))


# ---------------------------------------------------------------------------------------------
# splitting
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("flags", [RWX, F.READ | F.DEVICE, F.READ | F.EXECUTE | F.UNCACHED])
def test_unmap_inside_a_2m_block(hal, name, flags):
    pt = make(hal, name)
    base_frames = hal.frames.free_frames
    gpa, hpa = 3 * M2, 0x10_0060_0000
    pt.map(G(gpa), H(hpa), M2, flags)
    want = expected_flags(name, flags)
    hole = gpa + 0x10_0000
    pt.unmap(G(hole), K4)
    for off in range(0, M2, K4):
        if gpa + off == hole:
            with pytest.raises(NotMapped):
                pt.translate(G(gpa + off))
        else:
            assert pt.translate(G(gpa + off + 8)) == (H(hpa + off + 8), want, K4)
    assert len(list(pt.mappings())) == 511
    # unmapping the rest frees the split table and every table above it
    pt.unmap(G(gpa), hole - gpa)
    pt.unmap(G(hole + K4), gpa + M2 - hole - K4)
    assert list(pt.mappings()) == []
    assert [int(p) for p in pt.table_frames()] == [int(pt.root_paddr)]
    assert hal.frames.free_frames == base_frames
    assert all(s.raw == 0 for s in pt.walk(G(gpa)))


@pytest.mark.parametrize("name", NAMES)
def test_protect_inside_a_1g_block_splits_only_the_edges(hal, name):
    pt = make(hal, name)
    pt.map(G(G1), H(0x10_4000_0000), G1, RWX)
    lo, hi = G1 + 5 * M2 + 3 * K4, G1 + 5 * M2 + 9 * K4
    pt.protect(G(lo), hi - lo, F.READ)
    leaves = list(pt.mappings())
    assert len(leaves) == 511 + 512  # the 1 GiB split into 2 MiB, one of those into pages
    for gpa, hpa, size, flags in leaves:
        assert int(hpa) - int(gpa) == 0x10_4000_0000 - G1  # output addresses are kept
        inside = lo <= int(gpa) < hi
        assert flags == (F.READ if inside else RWX)
        assert size == (K4 if G1 + 5 * M2 <= int(gpa) < G1 + 6 * M2 else M2)
    assert pt.translate(G(lo + 0x10)) == (H(0x10_4000_0000 + lo - G1 + 0x10), F.READ, K4)
    assert pt.translate(G(hi))[1] == RWX
    # protecting a whole block keeps it a block
    pt.protect(G(G1 + 7 * M2), M2, F.READ | F.EXECUTE)
    assert pt.translate(G(G1 + 7 * M2 + 5)) == (H(0x10_4000_0000 + 7 * M2 + 5),
                                                 F.READ | F.EXECUTE, M2)
    assert len(list(pt.mappings())) == 1023


@pytest.mark.parametrize("name", NAMES)
def test_unmap_inside_a_1g_block(hal, name):
    pt = make(hal, name)
    pt.map(G(2 * G1), H(0x10_0000_0000), G1, F.READ | F.WRITE)
    pt.unmap(G(2 * G1 + M2 - K4), 2 * K4)  # straddles two 2 MiB sub-blocks
    leaves = list(pt.mappings())
    assert len(leaves) == 510 + 511 + 511
    assert sum(s for _, _, s, _ in leaves) == G1 - 2 * K4
    assert pt.translate(G(2 * G1 + M2 - 2 * K4)) == (H(0x10_001F_E000), F.READ | F.WRITE, K4)
    assert pt.translate(G(2 * G1 + M2 + K4)) == (H(0x10_0020_1000), F.READ | F.WRITE, K4)
    assert pt.translate(G(2 * G1 + 9 * M2)) == (H(0x10_0120_0000), F.READ | F.WRITE, M2)


# ---------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_destroy_frees_every_frame(hal, name):
    start = hal.frames.free_frames
    pt = make(hal, name)
    assert hal.frames.free_frames == start - FORMATS[name]().root_frames
    pt.map(G(0), H(0x10_0000_0000), 2 * G1, RWX)
    for i in range(40):
        pt.map(G(3 * G1 + i * (M2 + K4 * 7)), H(0x20_0000_0000 + i * K4), K4, F.READ)
    pt.unmap(G(G1 + K4), K4)  # splits down to a page table
    assert hal.frames.free_frames < start - 40
    pt.destroy()
    assert hal.frames.free_frames == start
    pt.destroy()  # idempotent
    for op in (lambda: pt.translate(G(0)), lambda: pt.map(G(0), H(0), K4, F.READ),
               lambda: pt.mappings(), lambda: pt.root_paddr):
        with pytest.raises(BadState):
            op()


def exhaust(hal, keep: int) -> list:
    """Allocate single frames until only ``keep`` are free."""
    held = []
    while hal.frames.free_frames > keep:
        held.append(hal.alloc_frames(1))
    return held


@pytest.mark.parametrize("name", NAMES)
def test_exhaustion_rolls_back(name):
    with HostHal(64 << 10) as hal:  # the arena is rounded up to 2 MiB
        root_frames = FORMATS[name]().root_frames
        exhaust(hal, 16 + root_frames)  # 64 KiB of frames for tables
        pt = make(hal, name)
        pt.map(G(0), H(0x10_0000_0000), M2, RWX)  # a block to split later
        mapped = []
        with pytest.raises(NoMemory):
            for i in range(1, 64):
                gpa = i * (G1 // 4 + M2 + K4)  # a new page table each time, at times more
                before, free = snapshot(pt), hal.frames.free_frames
                try:
                    pt.map(G(gpa), H(0x20_0000_0000 + i * K4), K4, F.READ)
                except NoMemory:
                    assert snapshot(pt) == before
                    assert hal.frames.free_frames == free
                    raise
                mapped.append((gpa, 0x20_0000_0000 + i * K4))
        assert len(mapped) >= 3
        for gpa, hpa in mapped:
            assert pt.translate(G(gpa + 4)) == (H(hpa + 4), F.READ, K4)
        exhaust(hal, 0)
        # a multi-leaf map that fails half way: 510 pages go into the existing page table
        # of mapped[0], the last 2 need a new one
        gpa0 = mapped[0][0]
        before = snapshot(pt)
        with pytest.raises(NoMemory):
            pt.map(G(gpa0 + K4), H(0x30_0000_0000), M2, F.READ)
        assert snapshot(pt) == before
        # splitting needs a frame too
        with pytest.raises(NoMemory):
            pt.unmap(G(K4), K4)
        with pytest.raises(NoMemory):
            pt.protect(G(K4), K4, F.READ)
        assert snapshot(pt) == before
        assert pt.translate(G(K4)) == (H(0x10_0000_1000), RWX, M2)
        # whole-leaf operations need no frame; freeing tables makes room again
        pt.protect(G(0), M2, F.READ)
        pt.unmap(G(mapped[-1][0]), K4)
        assert hal.frames.free_frames > 0
        pt.unmap(G(K4), K4)
        assert pt.translate(G(0)) == (H(0x10_0000_0000), F.READ, K4)
        pt.destroy()


@pytest.mark.parametrize("name", NAMES)
def test_map_after_failed_rollback_reuses_nothing_stale(name):
    with HostHal(64 << 10) as hal:
        exhaust(hal, FORMATS[name]().root_frames + 1)
        pt = make(hal, name)
        # needs at least 2 new tables below the root but only one frame is left
        with pytest.raises(NoMemory):
            pt.map(G(G1 + M2 + K4), H(0x10_0000_0000), K4, F.READ)
        assert list(pt.mappings()) == [] and len(pt.table_frames()) == 1
        assert hal.frames.free_frames == 1
        pt.map(G(G1), H(0x10_0000_0000), G1, F.READ)  # a root-level or depth-1 leaf fits
        assert pt.translate(G(G1 + 8)) == (H(0x10_0000_0008), F.READ, G1)


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------
segment = st.tuples(
    st.sampled_from(["4k", "2m", "1g"]),        # alignment of the start
    st.integers(0, 3),                          # gap before, in units of that alignment
    st.integers(1, 600),                        # pages (4k), or a count of 2 MiB blocks
    st.integers(0, 3),                          # extra 4 KiB pages after the blocks
    st.booleans(),                              # host address misaligned (fewer blocks)
    st.sampled_from(FLAG_CHOICES),
)


def build(name, segs, high):
    """Turn drawn segments into non-overlapping (gpa, hpa, size, flags) within the space."""
    space = 1 << input_bits(name)
    window = min(space, 16 * G1)
    base = space - window if high else 0
    unit = {"4k": K4, "2m": M2, "1g": G1}
    out, pos, hcur = [], base, 0x100_0000_0000
    for kind, gap, n, extra, shifted, flags in segs:
        u = unit[kind]
        start = (pos + u - 1) // u * u + gap * u
        if kind == "4k":
            size = n * K4
        elif kind == "2m":
            size = (n % 4 + 1) * M2 + extra * K4
        else:
            size = G1 + (n % 3) * M2 + extra * K4
        if start + size > base + window:
            break
        # off by 4 KiB: pages only; a 1 GiB segment is put off by 2 MiB instead (blocks of
        # 2 MiB but not 1 GiB) to keep the leaf count small
        hpa = hcur + ((M2 if kind == "1g" else K4) if shifted else 0)
        out.append((start, hpa, size, flags))
        pos = start + size
        hcur += (size + 2 * G1) // G1 * G1
    return out


def check_leaves(name, leaves, segs, holes=()):
    """Every leaf lies in a segment at the right offset with the right flags, and leaves
    cover exactly the segments minus ``holes`` (given as (start, end) pairs)."""
    covered = dict.fromkeys(range(len(segs)), 0)
    for gpa, hpa, size, flags in leaves:
        g = int(gpa)
        assert g % size == 0 and int(hpa) % size == 0
        idx = [i for i, (s, _, sz, _) in enumerate(segs) if s <= g and g + size <= s + sz]
        assert len(idx) == 1, f"leaf {g:#x}+{size:#x} outside every segment"
        s, h, _, f = segs[idx[0]]
        assert int(hpa) == h + (g - s)
        assert flags == expected_flags(name, f)
        assert not any(a < g + size and g < b for a, b in holes)
        covered[idx[0]] += size
    for i, (s, _, sz, _) in enumerate(segs):
        lost = sum(max(0, min(b, s + sz) - max(a, s)) for a, b in holes)
        assert covered[i] == sz - lost


def sample_pages(start, size):
    return sorted({start, start + size - K4, start + (size // K4 // 2) * K4})


PROP = settings(max_examples=20, deadline=None)


@PROP
@pytest.mark.parametrize("name", NAMES)
@given(segs=st.lists(segment, min_size=1, max_size=6), high=st.booleans())
def test_random_mappings_translate_back(shared_hal, name, segs, high):
    segs = build(name, segs, high)
    assume(segs)
    free = shared_hal.frames.free_frames
    pt = make(shared_hal, name)
    try:
        for gpa, hpa, size, flags in segs:
            pt.map(G(gpa), H(hpa), size, flags)
        check_leaves(name, list(pt.mappings()), segs)
        starts = {s for s, _, _, _ in segs}
        ends = {s + sz for s, _, sz, _ in segs}
        for gpa, hpa, size, flags in segs:
            for page in sample_pages(gpa, size):
                out, got, _ = pt.translate(G(page + 0x123))
                assert (int(out), got) == (hpa + page - gpa + 0x123, expected_flags(name, flags))
            if gpa not in ends and gpa >= K4:
                with pytest.raises(NotMapped):
                    pt.translate(G(gpa - K4))
            end = gpa + size
            if end not in starts and end < 1 << input_bits(name):
                with pytest.raises(NotMapped):
                    pt.translate(G(end))
    finally:
        pt.destroy()
    assert shared_hal.frames.free_frames == free


@PROP
@pytest.mark.parametrize("name", NAMES)
@given(segs=st.lists(segment, min_size=1, max_size=4), high=st.booleans(), data=st.data())
def test_protect_changes_only_the_named_range(shared_hal, name, segs, high, data):
    segs = build(name, segs, high)
    assume(segs)
    pt = make(shared_hal, name)
    try:
        for gpa, hpa, size, flags in segs:
            pt.map(G(gpa), H(hpa), size, flags)
        i = data.draw(st.integers(0, len(segs) - 1))
        gpa, _, size, _ = segs[i]
        npages = size // K4
        first = data.draw(st.integers(0, npages - 1))
        count = data.draw(st.integers(1, npages - first))
        new_flags = data.draw(st.sampled_from(FLAG_CHOICES))
        lo, hi = gpa + first * K4, gpa + (first + count) * K4
        old = list(pt.mappings())
        pt.protect(G(lo), hi - lo, new_flags)
        new = list(pt.mappings())
        want_new = expected_flags(name, new_flags)
        total = 0
        for g, h, sz, f in new:
            start, end = int(g), int(g) + sz
            total += sz
            inside = lo <= start and end <= hi
            assert inside or end <= lo or start >= hi  # no leaf straddles an edge
            seg_gpa, seg_hpa, _, seg_flags = next(s for s in segs if s[0] <= start < s[0] + s[2])
            assert int(h) == seg_hpa + start - seg_gpa
            assert f == (want_new if inside else expected_flags(name, seg_flags))
        assert total == sum(s[2] for s in segs)
        # only blocks straddling lo or hi were split
        new_set = {(int(g), int(h), sz) for g, h, sz, _ in new}
        for g, h, sz, _ in old:
            g = int(g)
            if not (g < lo < g + sz or g < hi < g + sz):
                assert (g, int(h), sz) in new_set
    finally:
        pt.destroy()


@PROP
@pytest.mark.parametrize("name", NAMES)
@given(segs=st.lists(segment, min_size=1, max_size=4), high=st.booleans(), data=st.data())
def test_unmap_then_map_again(shared_hal, name, segs, high, data):
    segs = build(name, segs, high)
    assume(segs)
    free = shared_hal.frames.free_frames
    pt = make(shared_hal, name)
    after_root = shared_hal.frames.free_frames
    try:
        for gpa, hpa, size, flags in segs:
            pt.map(G(gpa), H(hpa), size, flags)
        i = data.draw(st.integers(0, len(segs) - 1))
        gpa, _, size, _ = segs[i]
        npages = size // K4
        first = data.draw(st.integers(0, npages - 1))
        count = data.draw(st.integers(1, npages - first))
        lo, hi = gpa + first * K4, gpa + (first + count) * K4
        pt.unmap(G(lo), hi - lo)
        check_leaves(name, list(pt.mappings()), segs, holes=[(lo, hi)])
        for page in {lo, hi - K4}:
            with pytest.raises(NotMapped):
                pt.translate(G(page))
        with pytest.raises(NotMapped):
            pt.unmap(G(lo), hi - lo)
        new_hpa = 0x300_0000_0000 + (lo % G1)
        pt.map(G(lo), H(new_hpa), hi - lo, F.READ)
        for page in sample_pages(lo, hi - lo):
            assert pt.translate(G(page)) == (H(new_hpa + page - lo), F.READ,
                                             pt.translate(G(page))[2])
        with pytest.raises(MappingExists):
            pt.map(G(lo), H(new_hpa), hi - lo, F.READ)
        # unmapping everything leaves only the root
        for s, _, sz, _ in segs:
            pt.unmap(G(s), sz)
        assert list(pt.mappings()) == []
        assert len(pt.table_frames()) == 1
        assert shared_hal.frames.free_frames == after_root
    finally:
        pt.destroy()
    assert shared_hal.frames.free_frames == free

"""AArch64 stage-2 (VMSAv8-64, 4 KiB granule): descriptors and registers bit for bit.

Expected values are literals computed by hand from the Arm ARM (D8: stage-2
descriptors, VTCR_EL2, VTTBR_EL2). Tables come from a fresh ``HostHal`` whose
first-fit allocator hands out 0x40_0000_0000, 0x40_0000_1000, ... in order.

Leaf attribute bits used below (low 12 bits and bit 54):
  0x001 valid, 0x002 page (L3) / table, MemAttr[5:2]: 0x03C normal WB,
  0x004 Device-nGnRE, 0x014 normal NC; 0x040 S2AP read, 0x080 S2AP write,
  0x300 SH inner shareable, 0x400 AF, 1 << 54 XN.
"""

import pytest

from pyaxvisor.errors import AlignmentError, InvalidInput
from pyaxvisor.hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr as G
from pyaxvisor.mm.addr import HostPhysAddr as H
from pyaxvisor.mm.flags import MappingFlags as F
from pyaxvisor.mm.page_table import NotMapped, Stage2Format, Stage2PageTable

RWX = F.READ | F.WRITE | F.EXECUTE
BASE = 0x40_0000_0000


@pytest.fixture
def hal():
    h = HostHal(16 << 20)
    yield h
    h.close()


def steps(pt, gpa):
    return [(s.depth, int(s.table), s.index, s.raw) for s in pt.walk(G(gpa))]


def test_40_bit_ipa_concatenated_root_bit_for_bit(hal):
    blocker = hal.alloc_frames(1)  # takes 0x40_0000_0000, so 8 KiB alignment must skip a frame
    assert int(blocker) == BASE
    pt = Stage2PageTable(hal, ipa_bits=40)
    root = int(pt.root_paddr)
    assert root == 0x40_0000_2000  # 2 concatenated level-1 tables, 8 KiB aligned
    assert hal.frames.allocation_size(pt.root_paddr) == 0x2000
    t1, t2 = 0x40_0000_1000, 0x40_0000_4000  # the hole left by the alignment, then after root

    # gpa 0x80_4020_3000: level-1 index 513 (in the 2nd concatenated table), L2 1, L3 3
    pt.map(G(0x80_4020_3000), H(0x12_3456_7000), 0x1000, RWX)
    pt.map(G(0x80_4020_4000), H(0xFEE0_0000), 0x1000, F.READ | F.WRITE | F.DEVICE)
    pt.map(G(0x80_4020_5000), H(0x5000_0000), 0x1000, F.EXECUTE)
    pt.map(G(0x80_4040_0000), H(0x12_3460_0000), 0x20_0000, F.READ)
    pt.map(G(0x80_4060_0000), H(0x2_0000_0000), 0x20_0000, RWX | F.UNCACHED)
    pt.map(G(0x80_8000_0000), H(0x1_C000_0000), 0x4000_0000, F.READ | F.EXECUTE)
    pt.map(G(0), H(0x80_0000_0000), 0x4000_0000, F.READ | F.WRITE | F.DEVICE)

    l1e = 0x0000_0040_0000_1003  # table t1 | table(0x2) | valid(0x1); no attributes
    assert steps(pt, 0x80_4020_3000) == [
        (0, root, 513, l1e),
        (1, t1, 1, 0x0000_0040_0000_4003),  # table t2 | 0b11
        # page 0x12_3456_7000 | AF 0x400 | SH 0x300 | W 0x80 R 0x40 | WB 0x3C | 0b11; XN 0
        (2, t2, 3, 0x0000_0012_3456_77FF),
    ]
    assert hal.read_u64(root + 513 * 8) == l1e  # entry 513 = 2nd table's entry 1
    assert hal.read_u64(0x40_0000_3008) == l1e
    # device page: XN(1<<54) | AF 0x400 | SH 00 | W R 0xC0 | nGnRE 0x4 | 0b11
    assert steps(pt, 0x80_4020_4000)[2] == (2, t2, 4, 0x0040_0000_FEE0_04C7)
    # execute-only page: AF | SH | S2AP 00 | WB 0x3C | 0b11, XN clear
    assert steps(pt, 0x80_4020_5000)[2] == (2, t2, 5, 0x0000_0000_5000_073F)
    # 2 MiB read-only block: XN | AF | SH | R 0x40 | WB 0x3C | 0b01
    assert steps(pt, 0x80_4040_0000) == [(0, root, 513, l1e), (1, t1, 2, 0x0040_0012_3460_077D)]
    # 2 MiB normal non-cacheable rwx block: AF | SH | W R 0xC0 | NC 0x14 | 0b01
    assert steps(pt, 0x80_4060_0000)[1] == (1, t1, 3, 0x0000_0002_0000_07D5)
    # 1 GiB r-x block at level 1: AF | SH | R | WB | 0b01
    assert steps(pt, 0x80_8000_0000) == [(0, root, 514, 0x0000_0001_C000_077D)]
    # 1 GiB rw device block: XN | AF | SH 00 | W R | nGnRE | 0b01
    assert steps(pt, 0) == [(0, root, 0, 0x0040_0080_0000_04C5)]

    assert pt.translate(G(0x80_4020_3ABC)) == (H(0x12_3456_7ABC), RWX, 0x1000)
    assert pt.translate(G(0x80_4020_4010)) == (H(0xFEE0_0010), F.READ | F.WRITE | F.DEVICE,
                                               0x1000)
    assert pt.translate(G(0x80_4020_5000)) == (H(0x5000_0000), F.EXECUTE, 0x1000)
    assert pt.translate(G(0x80_4061_0000)) == (H(0x2_0001_0000), RWX | F.UNCACHED, 0x20_0000)
    assert pt.translate(G(0x80_8000_1000)) == (H(0x1_C000_1000), F.READ | F.EXECUTE,
                                               0x4000_0000)
    # VMID 5 in 63:48, BADDR = root
    assert pt.vttbr_el2(5) == 0x0005_0040_0000_2000
    assert pt.vttbr_el2(0xABCD) == 0xABCD_0040_0000_2000


def test_48_bit_ipa_four_levels(hal):
    pt = Stage2PageTable(hal, ipa_bits=48)
    assert int(pt.root_paddr) == BASE
    pt.map(G(0x80_4020_3000), H(0x12_3456_7000), 0x1000, RWX)
    pt.map(G(0x80_8000_0000), H(0x1_C000_0000), 0x4000_0000, F.READ | F.EXECUTE)
    assert steps(pt, 0x80_4020_3000) == [
        (0, BASE, 1, 0x0000_0040_0000_1003),            # level 0 -> level-1 table
        (1, 0x40_0000_1000, 1, 0x0000_0040_0000_2003),  # level 1 -> level-2 table
        (2, 0x40_0000_2000, 1, 0x0000_0040_0000_3003),  # level 2 -> level-3 table
        (3, 0x40_0000_3000, 3, 0x0000_0012_3456_77FF),  # page, rw, WB, SH, AF
    ]
    # the 1 GiB block sits at level 1 (depth 1), never at level 0
    assert steps(pt, 0x80_8000_0000) == [
        (0, BASE, 1, 0x0000_0040_0000_1003), (1, 0x40_0000_1000, 2, 0x0000_0001_C000_077D)]
    assert pt.vttbr_el2(1) == 0x0001_0040_0000_0000


def test_44_bit_ipa_uses_all_32_level0_entries(hal):
    pt = Stage2PageTable(hal, ipa_bits=44)
    assert pt.fmt.level_shifts == (39, 30, 21, 12) and pt.fmt.root_entries == 32
    pt.map(G(0xF80_4020_3000), H(0x12_3456_7000), 0x1000, F.READ)  # level-0 index 31
    assert [(s.depth, s.index) for s in pt.walk(G(0xF80_4020_3000))] == [
        (0, 31), (1, 1), (2, 1), (3, 3)]
    # read-only page: XN | AF | SH | R 0x40 | WB 0x3C | 0b11
    assert pt.entry(G(0xF80_4020_3000), 3) == 0x0040_0012_3456_777F
    with pytest.raises(InvalidInput):
        pt.map(G(1 << 44), H(0x1000), 0x1000, F.READ)


def test_32_bit_ipa_root_of_four_entries(hal):
    pt = Stage2PageTable(hal, ipa_bits=32)
    assert pt.fmt.level_shifts == (30, 21, 12) and pt.fmt.root_entries == 4
    assert hal.frames.allocation_size(pt.root_paddr) == 0x1000
    pt.map(G(0xC020_3000), H(0x12_3456_7000), 0x1000, RWX)
    assert steps(pt, 0xC020_3000) == [
        (0, BASE, 3, 0x0000_0040_0000_1003),
        (1, 0x40_0000_1000, 1, 0x0000_0040_0000_2003),
        (2, 0x40_0000_2000, 3, 0x0000_0012_3456_77FF),
    ]
    with pytest.raises(InvalidInput):
        pt.map(G(0xFFFF_F000), H(0x1000), 0x2000, F.READ)  # crosses 4 GiB
    with pytest.raises(InvalidInput):
        pt.translate(G(1 << 32))


def test_43_bit_ipa_root_is_16_tables_64k_aligned(hal):
    hal.alloc_frames(1)
    pt = Stage2PageTable(hal, ipa_bits=43)
    assert int(pt.root_paddr) == 0x40_0001_0000
    assert hal.frames.allocation_size(pt.root_paddr) == 0x1_0000
    pt.map(G((1 << 43) - 0x4000_0000), H(0x4000_0000), 0x4000_0000, F.READ)  # last L1 entry
    assert steps(pt, (1 << 43) - 1) == [(0, 0x40_0001_0000, 8191, 0x0040_0000_4000_077D)]


@pytest.mark.parametrize(("ipa_bits", "vtcr", "shifts", "root_entries"), [
    # T0SZ 32 (0x20) | SL0 1 (0x40) | IRGN0 1 (0x100) | ORGN0 1 (0x400) | SH0 3 (0x3000)
    # | TG0 0 | PS 0 (32 bits) | RES1 bit 31
    (32, 0x8000_3560, (30, 21, 12), 4),
    # T0SZ 28 (0x1C) | SL0 1 | ... | PS 1 (36 bits) 0x1_0000
    (36, 0x8001_355C, (30, 21, 12), 64),
    # T0SZ 24 (0x18) | SL0 1 | ... | PS 2 (40 bits) 0x2_0000
    (40, 0x8002_3558, (30, 21, 12), 1024),
    # T0SZ 23 (0x17) | SL0 1 | ... | PS 3 (42 bits, the smallest >= 41) 0x3_0000
    (41, 0x8003_3557, (30, 21, 12), 2048),
    # T0SZ 20 (0x14) | SL0 2 (0x80) | ... | PS 4 (44 bits) 0x4_0000
    (44, 0x8004_3594, (39, 30, 21, 12), 32),
    # T0SZ 16 (0x10) | SL0 2 (0x80) | ... | PS 5 (48 bits) 0x5_0000
    (48, 0x8005_3590, (39, 30, 21, 12), 512),
])
def test_vtcr_el2(ipa_bits, vtcr, shifts, root_entries):
    fmt = Stage2Format(ipa_bits)
    assert fmt.vtcr_el2() == vtcr
    assert fmt.level_shifts == shifts
    assert fmt.root_entries == root_entries


def test_vtcr_el2_ps_can_follow_the_host_pa_size():
    # 32-bit IPA but 40-bit host PAs (the arena lives at 0x40_0000_0000): PS 2
    assert Stage2Format(32).vtcr_el2(pa_bits=40) == 0x8002_3560
    with pytest.raises(InvalidInput):
        Stage2Format(40).vtcr_el2(pa_bits=52)


@pytest.mark.parametrize("ipa_bits", [31, 49, 64])
def test_bad_ipa_sizes(ipa_bits):
    with pytest.raises(InvalidInput):
        Stage2Format(ipa_bits)


def test_vttbr_checks():
    fmt = Stage2Format(40)
    with pytest.raises(AlignmentError):
        fmt.vttbr_el2(H(0x40_0000_1000), 1)  # 2 concatenated tables need 8 KiB alignment
    with pytest.raises(InvalidInput):
        fmt.vttbr_el2(H(0x40_0000_2000), 1 << 16)
    assert fmt.vttbr_el2(H(0x40_0000_2000), 0xFFFF) == 0xFFFF_0040_0000_2000


def test_split_of_a_2m_block_bit_for_bit(hal):
    pt = Stage2PageTable(hal, ipa_bits=40)  # root: 2 frames at BASE
    pt.map(G(0x20_0000), H(0x3_0000_0000), 0x20_0000, RWX)
    assert pt.entry(G(0x20_0000), 0) == 0x0000_0040_0000_2003  # L1[0] -> L2 table
    assert pt.entry(G(0x20_0000), 1) == 0x0000_0003_0000_07FD  # block: AF SH WR WB 0b01
    pt.unmap(G(0x20_5000), 0x1000)
    t = 0x40_0000_3000
    assert pt.entry(G(0x20_0000), 1) == 0x0000_0040_0000_3003  # now a table descriptor
    assert hal.read_u64(t + 0 * 8) == 0x0000_0003_0000_07FF  # pages: bits 1:0 = 0b11
    assert hal.read_u64(t + 4 * 8) == 0x0000_0003_0000_47FF
    assert hal.read_u64(t + 5 * 8) == 0
    assert hal.read_u64(t + 511 * 8) == 0x0000_0003_001F_F7FF


def test_invalid_encodings_decode_as_not_present():
    fmt = Stage2Format(48)
    assert not fmt.decode(0x0000_0001_C000_077D, 39).present  # a block at level 0
    assert not fmt.decode(0x0000_0012_3456_77FD, 12).present  # 0b01 at level 3
    assert not fmt.decode(0x0000_0012_3456_77FE, 12).present  # valid bit clear
    pte = fmt.decode(0x0040_0012_3460_077D, 21)
    assert pte.is_leaf and pte.paddr == 0x12_3460_0000 and pte.flags == F.READ


def test_translate_of_unmapped(hal):
    pt = Stage2PageTable(hal, ipa_bits=40)
    with pytest.raises(NotMapped, match="0x80402000"):
        pt.translate(G(0x8040_2000))

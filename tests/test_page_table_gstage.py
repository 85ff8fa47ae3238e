"""RISC-V G-stage (Sv39x4 / Sv48x4): PTEs and hgatp bit for bit.

Expected values are literals computed by hand from the RISC-V privileged spec
(Sv39/Sv48 PTE format, H extension 2-stage translation, hgatp). A PTE holds the
PPN (address >> 12) at bit 10, so for a page-aligned address ``a`` the PPN field
is ``a >> 2``. Leaf flag bits: V 0x01, R 0x02, W 0x04, X 0x08, U 0x10, G 0x20,
A 0x40, D 0x80; every leaf here has V|U|A|D = 0xD1 plus its R/W/X.
"""

import pytest

from pyaxvisor.errors import AlignmentError, InvalidInput
from pyaxvisor.hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr as G
from pyaxvisor.mm.addr import HostPhysAddr as H
from pyaxvisor.mm.flags import MappingFlags as F
from pyaxvisor.mm.page_table import GStagePageTable, Sv39x4Format, Sv48x4Format

RWX = F.READ | F.WRITE | F.EXECUTE
BASE = 0x40_0000_0000


@pytest.fixture
def hal():
    h = HostHal(16 << 20)
    yield h
    h.close()


def steps(pt, gpa):
    return [(s.depth, int(s.table), s.index, s.raw) for s in pt.walk(G(gpa))]


def test_sv39x4_bit_for_bit(hal):
    hal.alloc_frames(1)  # occupy BASE so the 16 KiB alignment of the root shows
    pt = GStagePageTable(hal, "sv39x4")
    root = int(pt.root_paddr)
    assert root == 0x40_0000_4000
    assert hal.frames.allocation_size(pt.root_paddr) == 0x4000  # 2048 entries
    t1, t2 = 0x40_0000_1000, 0x40_0000_2000  # first fit: the frames skipped by the root

    # gpa 0x80_4020_3000: root index 513 (bits 40:30), then 1 (29:21), then 3 (20:12)
    pt.map(G(0x80_4020_3000), H(0x12_3456_7000), 0x1000, RWX | F.USER)
    pt.map(G(0x80_4020_4000), H(0xFEE0_0000), 0x1000, F.READ | F.WRITE | F.DEVICE)
    pt.map(G(0x80_4020_5000), H(0x5000_0000), 0x1000, F.EXECUTE)
    pt.map(G(0x80_4040_0000), H(0x12_3460_0000), 0x20_0000, F.READ)
    pt.map(G(0x80_8000_0000), H(0x1_C000_0000), 0x4000_0000, F.READ | F.EXECUTE)

    rootpte = 0x0000_0010_0000_0401  # PPN 0x40_00001 << 10 | V; R=W=X=0: pointer
    assert steps(pt, 0x80_4020_3000) == [
        (0, root, 513, rootpte),
        (1, t1, 1, 0x0000_0010_0000_0801),   # PPN of t2 (0x4000002) << 10 | V
        # PPN 0x1234567 << 10 = 0x4_8D15_9C00 | D A U X W R V (0xDF)
        (2, t2, 3, 0x0000_0004_8D15_9CDF),
    ]
    assert hal.read_u64(root + 513 * 8) == rootpte
    # device page: PPN 0xFEE00 << 10 = 0x3FB8_0000 | D A U W R V (0xD7); no memory type bits
    assert steps(pt, 0x80_4020_4000)[2] == (2, t2, 4, 0x0000_0000_3FB8_00D7)
    # execute-only: PPN 0x50000 << 10 = 0x1400_0000 | D A U X V (0xD9)
    assert steps(pt, 0x80_4020_5000)[2] == (2, t2, 5, 0x0000_0000_1400_00D9)
    # 2 MiB read-only: PPN 0x1234600 << 10 = 0x4_8D18_0000 | D A U R V (0xD3); D set anyway
    assert steps(pt, 0x80_4040_0000) == [(0, root, 513, rootpte),
                                         (1, t1, 2, 0x0000_0004_8D18_00D3)]
    # 1 GiB r-x: PPN 0x1C0000 << 10 = 0x7000_0000 | D A U X R V (0xDB)
    assert steps(pt, 0x80_8000_0000) == [(0, root, 514, 0x0000_0000_7000_00DB)]

    # USER is implied in every G-stage leaf and DEVICE has no PTE bits: both read back dropped
    assert pt.translate(G(0x80_4020_3ABC)) == (H(0x12_3456_7ABC), RWX, 0x1000)
    assert pt.translate(G(0x80_4020_4008)) == (H(0xFEE0_0008), F.READ | F.WRITE, 0x1000)
    assert pt.translate(G(0x80_4041_2345)) == (H(0x12_3461_2345), F.READ, 0x20_0000)
    assert pt.translate(G(0x80_8123_4567)) == (H(0x1_C123_4567), F.READ | F.EXECUTE,
                                               0x4000_0000)

    # MODE 8 << 60 | VMID 7 << 44 | PPN 0x400_0004
    assert pt.hgatp(7) == 0x8000_7000_0400_0004
    # VMID 0x3FFF (14 bits) << 44 = 0x03FF_F000_0000_0000
    assert pt.hgatp(0x3FFF) == 0x83FF_F000_0400_0004


def test_sv48x4_bit_for_bit(hal):
    pt = GStagePageTable(hal, "sv48x4")
    assert int(pt.root_paddr) == BASE
    t1, t2, t3 = 0x40_0000_4000, 0x40_0000_5000, 0x40_0000_6000  # after the 16 KiB root
    # gpa bit 49 set: root index (bits 49:39) 1025, then 1, 1, 3
    gpa = 0x2_0080_4020_3000
    pt.map(G(gpa), H(0x12_3456_7000), 0x1000, RWX)
    assert steps(pt, gpa) == [
        (0, BASE, 1025, 0x0000_0010_0000_1001),  # PPN 0x4000004 << 10 | V
        (1, t1, 1, 0x0000_0010_0000_1401),       # PPN 0x4000005 << 10 | V
        (2, t2, 1, 0x0000_0010_0000_1801),       # PPN 0x4000006 << 10 | V
        (3, t3, 3, 0x0000_0004_8D15_9CDF),       # PPN 0x1234567 << 10 | DAUXWRV
    ]
    # 1 GiB leaf at depth 1 (no 512 GiB leaves)
    pt.map(G(0x80_8000_0000), H(0x1_C000_0000), 0x4000_0000, F.READ | F.WRITE)
    assert steps(pt, 0x80_8000_0000)[1][3] == 0x0000_0000_7000_00D7  # D A U W R V
    # MODE 9 << 60 | VMID 1 << 44 | PPN 0x400_0000
    assert pt.hgatp(1) == 0x9000_1000_0400_0000
    assert pt.hgatp(0) == 0x9000_0000_0400_0000


def test_split_of_a_2m_block_bit_for_bit(hal):
    pt = GStagePageTable(hal, "sv39x4")  # root: 4 frames at BASE
    pt.map(G(0x20_0000), H(0x3_0000_0000), 0x20_0000, RWX)
    assert pt.entry(G(0x20_0000), 0) == 0x0000_0010_0000_1001  # -> 0x40_0000_4000
    assert pt.entry(G(0x20_0000), 1) == 0x0000_0000_C000_00DF  # PPN 0x300000 << 10 | DAUXWRV
    pt.unmap(G(0x20_5000), 0x1000)
    t = 0x40_0000_5000
    assert pt.entry(G(0x20_0000), 1) == 0x0000_0010_0000_1401  # now a pointer to t
    assert hal.read_u64(t + 0 * 8) == 0x0000_0000_C000_00DF
    assert hal.read_u64(t + 4 * 8) == 0x0000_0000_C000_10DF  # PPN 0x300004 << 10
    assert hal.read_u64(t + 5 * 8) == 0
    assert hal.read_u64(t + 511 * 8) == 0x0000_0000_C007_FCDF  # PPN 0x3001FF << 10


def test_geometry():
    sv39, sv48 = Sv39x4Format(), Sv48x4Format()
    assert (sv39.level_shifts, sv39.input_bits, sv39.root_entries) == ((30, 21, 12), 41, 2048)
    assert (sv48.level_shifts, sv48.input_bits, sv48.root_entries) == ((39, 30, 21, 12), 50,
                                                                       2048)
    assert (sv39.root_frames, sv39.root_align) == (4, 0x4000)
    assert sv48.page_sizes() == (0x4000_0000, 0x20_0000, 0x1000)


@pytest.mark.parametrize(("mode", "bits"), [("sv39x4", 41), ("sv48x4", 50)])
def test_gpa_limit(hal, mode, bits):
    pt = GStagePageTable(hal, mode)
    top = 1 << bits
    pt.map(G(top - 0x1000), H(0x1000), 0x1000, F.READ)
    assert pt.walk(G(top - 0x1000))[0].index == 2047
    with pytest.raises(InvalidInput):
        pt.map(G(top), H(0x2000), 0x1000, F.READ)
    with pytest.raises(InvalidInput):
        pt.translate(G(top))


def test_hgatp_checks():
    fmt = Sv39x4Format()
    with pytest.raises(AlignmentError):
        fmt.hgatp(H(0x40_0000_1000), 0)  # the root must be 16 KiB aligned
    with pytest.raises(InvalidInput):
        fmt.hgatp(H(0x40_0000_4000), 1 << 14)
    with pytest.raises(InvalidInput):
        GStagePageTable(None, "sv57x4")  # type: ignore[arg-type]


def test_decode_corner_cases():
    fmt = Sv39x4Format()
    assert not fmt.decode(0x0000_0004_8D15_9CDE, 12).present  # V clear
    assert not fmt.decode(0x0000_0010_0000_0401, 12).present  # pointer at the last level
    pte = fmt.decode(0x0000_0010_0000_0401, 21)
    assert pte.present and not pte.is_leaf and pte.paddr == 0x40_0000_1000

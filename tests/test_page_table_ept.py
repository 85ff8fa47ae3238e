"""x86-64 EPT: descriptors bit for bit, as the Intel SDM (Vol. 3C, 29.3) lays them out.

Every expected value is a literal computed by hand. Tables come from a fresh
``HostHal`` whose first-fit allocator hands out 0x40_0000_0000, 0x40_0000_1000, ...
in order, so table addresses are literals too.
"""

import pytest

from pyaxvisor.errors import AlignmentError, InvalidInput
from pyaxvisor.hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr as G
from pyaxvisor.mm.addr import HostPhysAddr as H
from pyaxvisor.mm.flags import MappingFlags as F
from pyaxvisor.mm.page_table import EptFormat, EptPageTable, NotMapped, eptp

ROOT = 0x40_0000_0000  # first frame of a fresh arena
T1, T2, T3, T4 = 0x40_0000_1000, 0x40_0000_2000, 0x40_0000_3000, 0x40_0000_4000
RWX = F.READ | F.WRITE | F.EXECUTE


@pytest.fixture
def hal():
    h = HostHal(16 << 20)
    yield h
    h.close()


def steps(pt, gpa):
    return [(s.depth, int(s.table), s.index, s.raw) for s in pt.walk(G(gpa))]


def test_walks_of_pages_and_blocks(hal):
    pt = EptPageTable(hal)
    assert int(pt.root_paddr) == ROOT
    # gpa 0x80_4020_3000: PML4 index 1, PDPT index 1, PD index 1, PT index 3
    pt.map(G(0x80_4020_3000), H(0x12_3456_7000), 0x1000, RWX)           # T1, T2, T3
    pt.map(G(0x80_4020_4000), H(0xFEE0_0000), 0x1000, F.READ | F.WRITE | F.DEVICE)
    pt.map(G(0x80_4020_5000), H(0x5000_0000), 0x1000, F.EXECUTE)         # execute-only
    pt.map(G(0x80_4040_0000), H(0x12_3460_0000), 0x20_0000, F.READ)
    pt.map(G(0x80_4060_0000), H(0x2_0000_0000), 0x20_0000, F.READ | F.WRITE | F.UNCACHED)
    pt.map(G(0x80_8000_0000), H(0x1_C000_0000), 0x4000_0000, F.READ | F.EXECUTE)
    pt.map(G(0), H(0x80_0000_0000), 0x4000_0000, RWX | F.DEVICE)        # T4

    pml4e = 0x0000_0040_0000_1007  # PDPT T1 | X(4) W(2) R(1)
    pdpte = 0x0000_0040_0000_2007  # PD T2 | XWR
    assert steps(pt, 0x80_4020_3000) == [
        (0, ROOT, 1, pml4e),
        (1, T1, 1, pdpte),
        (2, T2, 1, 0x0000_0040_0000_3007),  # PT T3 | XWR
        # addr 0x12_3456_7000 | IPAT(0x40) | WB 6<<3 (0x30) | X W R (0x7)
        (3, T3, 3, 0x0000_0012_3456_7077),
    ]
    # addr 0xFEE0_0000 | IPAT 0x40 | UC 0<<3 | W R (0x3)
    assert steps(pt, 0x80_4020_4000)[3] == (3, T3, 4, 0x0000_0000_FEE0_0043)
    # addr 0x5000_0000 | IPAT 0x40 | WB 0x30 | X (0x4)
    assert steps(pt, 0x80_4020_5000)[3] == (3, T3, 5, 0x0000_0000_5000_0074)
    # 2 MiB: addr 0x12_3460_0000 | large 0x80 | IPAT 0x40 | WB 0x30 | R 0x1
    assert steps(pt, 0x80_4040_0000) == [
        (0, ROOT, 1, pml4e), (1, T1, 1, pdpte), (2, T2, 2, 0x0000_0012_3460_00F1)]
    # 2 MiB uncached: addr 0x2_0000_0000 | large 0x80 | IPAT 0x40 | UC 0 | W R 0x3
    assert steps(pt, 0x80_4060_0000)[2] == (2, T2, 3, 0x0000_0002_0000_00C3)
    # 1 GiB: addr 0x1_C000_0000 | large 0x80 | IPAT 0x40 | WB 0x30 | X R (0x5)
    assert steps(pt, 0x80_8000_0000) == [(0, ROOT, 1, pml4e), (1, T1, 2, 0x0000_0001_C000_00F5)]
    # 1 GiB device: PML4[0] -> T4; addr 0x80_0000_0000 | large | IPAT | UC | XWR
    assert steps(pt, 0) == [(0, ROOT, 0, 0x0000_0040_0000_4007),
                            (1, T4, 0, 0x0000_0080_0000_00C7)]

    # The descriptors really sit where the CPU reads them, little-endian.
    assert hal.read_u64(ROOT + 1 * 8) == pml4e
    assert bytes(hal.view(H(T3 + 3 * 8), 8)) == bytes.fromhex("7770563412000000")
    assert pt.entry(G(0x80_4020_3000), 3) == 0x0000_0012_3456_7077
    with pytest.raises(NotMapped):
        pt.entry(G(0x80_8000_0000), 2)  # the walk stops at the 1 GiB leaf

    assert pt.translate(G(0x80_4020_3ABC)) == (H(0x12_3456_7ABC), RWX, 0x1000)
    assert pt.translate(G(0x80_4020_4010)) == (H(0xFEE0_0010), F.READ | F.WRITE | F.DEVICE,
                                               0x1000)
    assert pt.translate(G(0x80_4041_2345)) == (H(0x12_3461_2345), F.READ, 0x20_0000)
    # UC is the only uncached EPT type used, so UNCACHED reads back as DEVICE
    assert pt.translate(G(0x80_4060_0008)) == (H(0x2_0000_0008), F.READ | F.WRITE | F.DEVICE,
                                               0x20_0000)
    assert pt.translate(G(0x80_8123_4567)) == (H(0x1_C123_4567), F.READ | F.EXECUTE,
                                               0x4000_0000)


def test_split_of_a_2m_block_bit_for_bit(hal):
    pt = EptPageTable(hal)
    pt.map(G(0x20_0000), H(0x3_0000_0000), 0x20_0000, RWX)  # PDPT T1, PD T2
    assert pt.entry(G(0x20_0000), 2) == 0x0000_0003_0000_00F7  # large|IPAT|WB|XWR
    pt.unmap(G(0x20_5000), 0x1000)  # splits into PT T3
    assert pt.entry(G(0x20_0000), 2) == 0x0000_0040_0000_3007  # PT T3 | XWR
    assert hal.read_u64(T3 + 0 * 8) == 0x0000_0003_0000_0077  # 4 KiB: no large bit
    assert hal.read_u64(T3 + 4 * 8) == 0x0000_0003_0000_4077
    assert hal.read_u64(T3 + 5 * 8) == 0  # the unmapped page
    assert hal.read_u64(T3 + 511 * 8) == 0x0000_0003_001F_F077


def test_eptp(hal):
    pt = EptPageTable(hal)
    # root 0x40_0000_0000 | walk length-1 = 3 << 3 (0x18) | WB 6 -> 0x1E; A/D (bit 6) off
    assert pt.eptp() == 0x0000_0040_0000_001E
    assert eptp(H(0x12_3456_7000)) == 0x0000_0012_3456_701E
    with pytest.raises(AlignmentError):
        eptp(H(0x12_3456_7008))


def test_geometry():
    fmt = EptFormat()
    assert fmt.level_shifts == (39, 30, 21, 12)
    assert fmt.root_entries == 512
    assert (fmt.root_frames, fmt.root_align) == (1, 0x1000)
    assert fmt.input_bits == 48
    assert fmt.page_sizes() == (0x4000_0000, 0x20_0000, 0x1000)


def test_decode_of_foreign_entries():
    fmt = EptFormat()
    # An address with R=W=X=0 is not present, whatever else is set.
    assert not fmt.decode(0x0000_0012_3456_70F0, 12).present
    # Bit 7 in a PML4E is reserved, not a 512 GiB page: it stays a table.
    pte = fmt.decode(0x0000_0040_0000_1087, 39)
    assert pte.present and not pte.is_leaf and pte.paddr == 0x40_0000_1000
    # A PDE without bit 7 is a table, with it a 2 MiB leaf (low address bits masked).
    assert not fmt.decode(0x0000_0040_0000_3007, 21).is_leaf
    pte = fmt.decode(0x0000_0012_3460_00F1, 21)
    assert pte.is_leaf and pte.paddr == 0x12_3460_0000 and pte.flags == F.READ


def test_limits(hal):
    pt = EptPageTable(hal)
    top = 1 << 48
    pt.map(G(top - 0x1000), H(0x1000), 0x1000, F.READ)  # last page: PML4 index 511
    assert pt.walk(G(top - 0x1000))[0].index == 511
    with pytest.raises(InvalidInput):
        pt.map(G(top), H(0x1000), 0x1000, F.READ)
    with pytest.raises(InvalidInput):
        pt.translate(G(top))
    # 52-bit output addresses are fine, beyond is not
    pt.map(G(0), H((1 << 52) - 0x1000), 0x1000, F.READ)
    with pytest.raises(InvalidInput):
        pt.map(G(0x1000), H(1 << 52), 0x1000, F.READ)

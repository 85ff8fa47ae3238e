"""AArch64 VMSAv8-64 stage-2 translation tables, 4 KiB granule.

Geometry, from the IPA size (``ipa_bits``, 32..48):

* ``ipa_bits <= 43``: 3 levels starting at lookup level 1 (shifts 30, 21, 12).
  The level-1 root has ``2 ** (ipa_bits - 30)`` entries: 4..512 in one frame for
  32..39 bits, and for 40..43 bits 2/4/8/16 *concatenated* level-1 tables,
  contiguous and aligned to their total size (VTCR_EL2.SL0 = 1).
* ``ipa_bits >= 44``: 4 levels starting at level 0 (shifts 39, 30, 21, 12), a
  root of ``2 ** (ipa_bits - 39)`` entries (SL0 = 2).

Blocks: 1 GiB at level 1, 2 MiB at level 2 (none at level 0).

Descriptors (bits 1:0 = 0b11 table/page, 0b01 block, bit 0 = 0 invalid)::

    table (L0-L2):  bits 1:0 = 0b11 | next-level table address 47:12; nothing else
    block (L1/L2):  bits 1:0 = 0b01 | output address 47:30 (L1) or 47:21 (L2)
    page  (L3):     bits 1:0 = 0b11 | output address 47:12
    block/page attributes:
      MemAttr[5:2]  0b1111 Normal, outer+inner write-back (normal memory)
                    0b0001 Device-nGnRE (DEVICE)
                    0b0101 Normal, outer+inner non-cacheable (UNCACHED)
      S2AP[7:6]     bit 6 = read allowed, bit 7 = write allowed
      SH[9:8]       0b11 inner shareable; 0b00 for device memory
      AF bit 10     1 (no access-flag faults)
      XN bit 54     1 unless EXECUTE (bit 53 left 0: no FEAT_XNX distinction)

``DEVICE`` wins over ``UNCACHED``; ``USER`` has no stage-2 meaning and is dropped.
At level 3 bits 1:0 = 0b01 and at level 0 a "block" are invalid and decode as
not present.

:meth:`Stage2Format.vtcr_el2` and :meth:`Stage2Format.vttbr_el2` give the
register values that go with the table (layouts in their docstrings).
"""

from __future__ import annotations

from pyaxvisor.errors import AlignmentError, InvalidInput
from pyaxvisor.hal.vcpu_hal import VCpuHal
from pyaxvisor.mm.addr import PAGE_SIZE_4K, HostPhysAddr
from pyaxvisor.mm.flags import MappingFlags
from pyaxvisor.mm.page_table.format import NOT_PRESENT, PAGE_SHIFT, Pte, PteFormat
from pyaxvisor.mm.page_table.table import NestedPageTable

S2_VALID = 1 << 0
S2_TABLE = 1 << 1  # also "page" at level 3; 0 = block at levels 1 and 2
S2_MEMATTR_SHIFT = 2
S2_MEMATTR_MASK = 0b1111 << S2_MEMATTR_SHIFT
MEMATTR_NORMAL_WB = 0b1111
MEMATTR_DEVICE_NGNRE = 0b0001
MEMATTR_NORMAL_NC = 0b0101
S2AP_READ = 1 << 6
S2AP_WRITE = 1 << 7
S2_SH_SHIFT = 8
SH_INNER = 0b11
S2_AF = 1 << 10
S2_XN = 1 << 54
S2_ADDR_MASK = ((1 << 48) - 1) & ~(PAGE_SIZE_4K - 1)  # bits 47:12

# VTCR_EL2 fields
VTCR_T0SZ_SHIFT = 0
VTCR_SL0_SHIFT = 6
VTCR_IRGN0_SHIFT = 8
VTCR_ORGN0_SHIFT = 10
VTCR_SH0_SHIFT = 12
VTCR_TG0_SHIFT = 14
VTCR_PS_SHIFT = 16
VTCR_RES1 = 1 << 31
SL0_START_L1 = 1
SL0_START_L0 = 2
#: VTCR_EL2.PS encodings: physical address size in bits -> field value.
PS_ENCODING = {32: 0, 36: 1, 40: 2, 42: 3, 44: 4, 48: 5}

MIN_IPA_BITS = 32
MAX_IPA_BITS = 48
VMID_BITS = 16
VTTBR_VMID_SHIFT = 48


def ps_field(bits: int) -> int:
    """The smallest VTCR_EL2.PS encoding whose size is at least ``bits``."""
    for size, value in sorted(PS_ENCODING.items()):
        if size >= bits:
            return value
    raise InvalidInput(f"no VTCR_EL2.PS encoding covers {bits} address bits (max 48)")


class Stage2Format(PteFormat):
    """AArch64 stage-2 descriptors, 4 KiB granule, for an IPA size of ``ipa_bits``."""

    def __init__(self, ipa_bits: int = 40) -> None:
        if not isinstance(ipa_bits, int) or not MIN_IPA_BITS <= ipa_bits <= MAX_IPA_BITS:
            raise InvalidInput(f"stage-2 IPA size must be {MIN_IPA_BITS}..{MAX_IPA_BITS} bits, "
                               f"got {ipa_bits!r}")
        self.ipa_bits = ipa_bits
        shifts = (30, 21, 12) if ipa_bits <= 43 else (39, 30, 21, 12)
        self.start_level = 4 - len(shifts)
        super().__init__(name=f"AArch64 stage-2 ({ipa_bits}-bit IPA)", level_shifts=shifts,
                         root_entries=1 << (ipa_bits - shifts[0]),
                         block_shifts=frozenset({30, 21}), input_bits=ipa_bits, output_bits=48)

    def encode_table(self, paddr: int, shift: int) -> int:
        return (paddr & S2_ADDR_MASK) | S2_TABLE | S2_VALID

    def encode_leaf(self, paddr: int, flags: MappingFlags, shift: int) -> int:
        entry = (paddr & S2_ADDR_MASK) | S2_VALID | S2_AF
        if shift == PAGE_SHIFT:
            entry |= S2_TABLE  # page descriptor
        if flags & MappingFlags.DEVICE:
            entry |= MEMATTR_DEVICE_NGNRE << S2_MEMATTR_SHIFT  # SH stays 0b00
        elif flags & MappingFlags.UNCACHED:
            entry |= (MEMATTR_NORMAL_NC << S2_MEMATTR_SHIFT) | (SH_INNER << S2_SH_SHIFT)
        else:
            entry |= (MEMATTR_NORMAL_WB << S2_MEMATTR_SHIFT) | (SH_INNER << S2_SH_SHIFT)
        if flags & MappingFlags.READ:
            entry |= S2AP_READ
        if flags & MappingFlags.WRITE:
            entry |= S2AP_WRITE
        if not flags & MappingFlags.EXECUTE:
            entry |= S2_XN
        return entry

    def decode(self, entry: int, shift: int) -> Pte:
        if not entry & S2_VALID:
            return NOT_PRESENT
        if entry & S2_TABLE:
            if shift != PAGE_SHIFT:
                return Pte(True, False, entry & S2_ADDR_MASK, MappingFlags(0))
        elif shift not in self.block_shifts:
            return NOT_PRESENT  # a block at level 0 or bits 1:0 = 0b01 at level 3
        flags = MappingFlags(0)
        if entry & S2AP_READ:
            flags |= MappingFlags.READ
        if entry & S2AP_WRITE:
            flags |= MappingFlags.WRITE
        if not entry & S2_XN:
            flags |= MappingFlags.EXECUTE
        memattr = (entry & S2_MEMATTR_MASK) >> S2_MEMATTR_SHIFT
        if memattr >> 2 == 0:  # MemAttr[3:2] = 0b00: any Device type
            flags |= MappingFlags.DEVICE
        elif memattr != MEMATTR_NORMAL_WB:
            flags |= MappingFlags.UNCACHED
        return Pte(True, True, entry & S2_ADDR_MASK & -(1 << shift), flags)

    def vtcr_el2(self, pa_bits: int | None = None) -> int:
        """VTCR_EL2 for this table::

            T0SZ[5:0]    64 - ipa_bits
            SL0[7:6]     1 = start at level 1, 2 = start at level 0 (4 KiB granule)
            IRGN0[9:8]   1  inner write-back read/write-allocate table walks
            ORGN0[11:10] 1  outer write-back read/write-allocate
            SH0[13:12]   3  inner shareable
            TG0[15:14]   0  4 KiB granule
            PS[18:16]    smallest size >= pa_bits (default: ipa_bits):
                         0:32 1:36 2:40 3:42 4:44 5:48 bits
            bit 31       RES1

        VS (bit 19, 16-bit VMIDs) is left 0. ``pa_bits`` lets the caller raise PS to
        the host's physical address size, which output addresses must fit in.
        """
        sl0 = SL0_START_L1 if self.start_level == 1 else SL0_START_L0
        ps = ps_field(self.ipa_bits if pa_bits is None else pa_bits)
        return ((64 - self.ipa_bits) << VTCR_T0SZ_SHIFT
                | sl0 << VTCR_SL0_SHIFT
                | 1 << VTCR_IRGN0_SHIFT
                | 1 << VTCR_ORGN0_SHIFT
                | 3 << VTCR_SH0_SHIFT
                | 0 << VTCR_TG0_SHIFT
                | ps << VTCR_PS_SHIFT
                | VTCR_RES1)

    def vttbr_el2(self, root: HostPhysAddr, vmid: int) -> int:
        """VTTBR_EL2: VMID in bits 63:48, BADDR (root table address) in 47:1, CnP 0.

        The root must be aligned to the root table's size (concatenated tables).
        """
        addr = int(root)
        if addr % self.root_align:
            raise AlignmentError("stage-2 root table", addr, self.root_align)
        if addr & ~S2_ADDR_MASK:
            raise InvalidInput(f"stage-2 root {addr:#x} is beyond 48 bits")
        if not isinstance(vmid, int) or not 0 <= vmid < 1 << VMID_BITS:
            raise InvalidInput(f"VMID must be 0..{(1 << VMID_BITS) - 1}, got {vmid!r}")
        return vmid << VTTBR_VMID_SHIFT | addr


class Stage2PageTable(NestedPageTable):
    """A nested page table in AArch64 stage-2 format."""

    def __init__(self, hal: VCpuHal, ipa_bits: int = 40) -> None:
        super().__init__(hal, Stage2Format(ipa_bits))

    @property
    def stage2(self) -> Stage2Format:
        fmt = self.fmt
        assert isinstance(fmt, Stage2Format)
        return fmt

    def vtcr_el2(self, pa_bits: int | None = None) -> int:
        return self.stage2.vtcr_el2(pa_bits)

    def vttbr_el2(self, vmid: int) -> int:
        return self.stage2.vttbr_el2(self.root_paddr, vmid)

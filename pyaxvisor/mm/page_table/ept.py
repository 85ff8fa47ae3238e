"""Intel VT-x extended page tables (EPT), 4-level, 48-bit guest physical addresses.

Walk: PML4 (shift 39) → PDPT (30) → PD (21) → PT (12); every table 512 entries.
1 GiB pages (PDPTE) and 2 MiB pages (PDE) are supported.

Leaf descriptor (PTE, or PDPTE/PDE with bit 7 set)::

    bit 0       R     read allowed
    bit 1       W     write allowed
    bit 2       X     execute allowed (supervisor-mode execute)
    bits 5:3    memory type: 6 = WB for normal memory,
                0 = UC for DEVICE or UNCACHED (both read back as DEVICE)
    bit 6       IPAT  ignore the guest PAT: always set, so the EPT type is final
    bit 7       page size: 1 for a 2 MiB / 1 GiB leaf (0 in a 4 KiB PTE)
    bits 8, 9   accessed / dirty: left 0 (A/D tracking is not enabled in the EPTP)
    bits 51:12  output address (51:21 for 2 MiB, 51:30 for 1 GiB)

Table (non-leaf) descriptor: ``0x7`` (R|W|X: the leaf decides) | next table address.
An entry is present when any of bits 2:0 is set. ``USER`` has no EPT bit and is
dropped.

EPTP (:func:`eptp`)::

    bits 2:0    paging-structure memory type: 6 (WB)
    bits 5:3    page-walk length minus 1: 3
    bit 6       enable accessed/dirty flags: 0
    bits 51:12  address of the PML4 table
"""

from __future__ import annotations

from pyaxvisor.errors import AlignmentError
from pyaxvisor.hal.vcpu_hal import VCpuHal
from pyaxvisor.mm.addr import PAGE_SIZE_4K, HostPhysAddr
from pyaxvisor.mm.flags import MappingFlags
from pyaxvisor.mm.page_table.format import NOT_PRESENT, PAGE_SHIFT, Pte, PteFormat
from pyaxvisor.mm.page_table.table import NestedPageTable

EPT_READ = 1 << 0
EPT_WRITE = 1 << 1
EPT_EXECUTE = 1 << 2
EPT_MEMTYPE_SHIFT = 3
EPT_MEMTYPE_MASK = 0b111 << EPT_MEMTYPE_SHIFT
EPT_MT_UC = 0
EPT_MT_WB = 6
EPT_IGNORE_PAT = 1 << 6
EPT_LARGE_PAGE = 1 << 7
EPT_ADDR_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE_4K - 1)  # bits 51:12

EPTP_WALK_LENGTH_SHIFT = 3


class EptFormat(PteFormat):
    """x86-64 EPT descriptors (see the module docstring for the bit layout)."""

    def __init__(self) -> None:
        super().__init__(name="EPT", level_shifts=(39, 30, 21, 12), root_entries=512,
                         block_shifts=frozenset({30, 21}), input_bits=48, output_bits=52)

    def encode_table(self, paddr: int, shift: int) -> int:
        return (paddr & EPT_ADDR_MASK) | EPT_READ | EPT_WRITE | EPT_EXECUTE

    def encode_leaf(self, paddr: int, flags: MappingFlags, shift: int) -> int:
        entry = paddr & EPT_ADDR_MASK
        if flags & MappingFlags.READ:
            entry |= EPT_READ
        if flags & MappingFlags.WRITE:
            entry |= EPT_WRITE
        if flags & MappingFlags.EXECUTE:
            entry |= EPT_EXECUTE
        uncached = flags & (MappingFlags.DEVICE | MappingFlags.UNCACHED)
        entry |= (EPT_MT_UC if uncached else EPT_MT_WB) << EPT_MEMTYPE_SHIFT
        entry |= EPT_IGNORE_PAT
        if shift != PAGE_SHIFT:
            entry |= EPT_LARGE_PAGE
        return entry

    def decode(self, entry: int, shift: int) -> Pte:
        if not entry & (EPT_READ | EPT_WRITE | EPT_EXECUTE):
            return NOT_PRESENT
        is_leaf = shift == PAGE_SHIFT or (shift in self.block_shifts
                                          and bool(entry & EPT_LARGE_PAGE))
        if not is_leaf:
            return Pte(True, False, entry & EPT_ADDR_MASK, MappingFlags(0))
        flags = MappingFlags(0)
        if entry & EPT_READ:
            flags |= MappingFlags.READ
        if entry & EPT_WRITE:
            flags |= MappingFlags.WRITE
        if entry & EPT_EXECUTE:
            flags |= MappingFlags.EXECUTE
        memtype = (entry & EPT_MEMTYPE_MASK) >> EPT_MEMTYPE_SHIFT
        if memtype == EPT_MT_UC:
            flags |= MappingFlags.DEVICE
        elif memtype != EPT_MT_WB:
            flags |= MappingFlags.UNCACHED  # WC/WT/WP: never written by this module
        return Pte(True, True, entry & EPT_ADDR_MASK & -(1 << shift), flags)


def eptp(root: HostPhysAddr) -> int:
    """The EPT pointer for a PML4 table at ``root``: WB, 4-level walk, A/D off."""
    addr = int(root)
    if addr % PAGE_SIZE_4K:
        raise AlignmentError("EPT root", addr, PAGE_SIZE_4K)
    return (addr & EPT_ADDR_MASK) | ((4 - 1) << EPTP_WALK_LENGTH_SHIFT) | EPT_MT_WB


class EptPageTable(NestedPageTable):
    """A nested page table in EPT format."""

    def __init__(self, hal: VCpuHal) -> None:
        super().__init__(hal, EptFormat())

    def eptp(self) -> int:
        return eptp(self.root_paddr)

"""RISC-V H-extension G-stage (guest-physical) page tables: Sv39x4 and Sv48x4.

Geometry: the "x4" modes widen the root by two index bits, so the root table has
2048 entries (16 KiB, 16 KiB aligned) and the lower levels 512:

* Sv39x4: 3 levels, shifts 30, 21, 12; 41-bit guest physical addresses.
* Sv48x4: 4 levels, shifts 39, 30, 21, 12; 50-bit guest physical addresses.

Leaves: 4 KiB pages, 2 MiB and 1 GiB superpages (Sv48x4's 512 GiB level is only
used for tables).

PTE layout::

    bit 0      V    valid
    bit 1      R    read
    bit 2      W    write
    bit 3      X    execute
    bit 4      U    user: must be 1 in every G-stage leaf (G-stage accesses
                    are checked as U-mode accesses)
    bit 5      G    global: 0
    bit 6      A    accessed
    bit 7      D    dirty
    bits 9:8   RSW  0
    bits 53:10 PPN  = physical address >> 12 (superpages: low PPN bits are 0)
    bits 63:54 0    (no Svpbmt/Svnapot)

Non-leaf: V | PPN only (R = W = X = 0 marks a pointer).
Leaf: V | R/W/X from the flags | U | A | D.

Choice: **A and D are always set**, also in read-only leaves (D is harmless
there), so no guest access ever takes an A/D-update fault and the table works
without Svadu hardware updating.

Not expressible: without Svpbmt there is no memory type in the PTE (the PMAs
decide), so ``DEVICE`` and ``UNCACHED`` are dropped, as is ``USER`` (always set).

hgatp (:meth:`GStageFormat.hgatp`)::

    bits 63:60 MODE  8 = Sv39x4, 9 = Sv48x4
    bits 57:44 VMID  (14 bits)
    bits 43:0  PPN   root table address >> 12
"""

from __future__ import annotations

from pyaxvisor.errors import AlignmentError, InvalidInput
from pyaxvisor.hal.vcpu_hal import VCpuHal
from pyaxvisor.mm.addr import HostPhysAddr
from pyaxvisor.mm.flags import MappingFlags
from pyaxvisor.mm.page_table.format import NOT_PRESENT, PAGE_SHIFT, Pte, PteFormat
from pyaxvisor.mm.page_table.table import NestedPageTable

PTE_V = 1 << 0
PTE_R = 1 << 1
PTE_W = 1 << 2
PTE_X = 1 << 3
PTE_U = 1 << 4
PTE_G = 1 << 5
PTE_A = 1 << 6
PTE_D = 1 << 7
PTE_PPN_SHIFT = 10
PPN_BITS = 44
PTE_PPN_MASK = ((1 << PPN_BITS) - 1) << PTE_PPN_SHIFT  # bits 53:10

HGATP_MODE_SHIFT = 60
HGATP_VMID_SHIFT = 44
HGATP_VMID_BITS = 14
HGATP_MODE_SV39X4 = 8
HGATP_MODE_SV48X4 = 9

GSTAGE_ROOT_ENTRIES = 2048


def _ppn(paddr: int) -> int:
    return ((paddr >> PAGE_SHIFT) << PTE_PPN_SHIFT) & PTE_PPN_MASK


class GStageFormat(PteFormat):
    """RISC-V G-stage descriptors; use :class:`Sv39x4Format` or :class:`Sv48x4Format`."""

    def __init__(self, *, name: str, level_shifts: tuple[int, ...], mode: int) -> None:
        super().__init__(name=name, level_shifts=level_shifts, root_entries=GSTAGE_ROOT_ENTRIES,
                         block_shifts=frozenset({30, 21}),
                         input_bits=level_shifts[0] + 11, output_bits=PPN_BITS + PAGE_SHIFT)
        self.mode = mode

    def encode_table(self, paddr: int, shift: int) -> int:
        return _ppn(paddr) | PTE_V

    def encode_leaf(self, paddr: int, flags: MappingFlags, shift: int) -> int:
        entry = _ppn(paddr) | PTE_V | PTE_U | PTE_A | PTE_D
        if flags & MappingFlags.READ:
            entry |= PTE_R
        if flags & MappingFlags.WRITE:
            entry |= PTE_W
        if flags & MappingFlags.EXECUTE:
            entry |= PTE_X
        return entry

    def decode(self, entry: int, shift: int) -> Pte:
        if not entry & PTE_V:
            return NOT_PRESENT
        paddr = ((entry & PTE_PPN_MASK) >> PTE_PPN_SHIFT) << PAGE_SHIFT
        if not entry & (PTE_R | PTE_W | PTE_X):
            if shift == PAGE_SHIFT:
                return NOT_PRESENT  # a pointer at the last level is invalid
            return Pte(True, False, paddr, MappingFlags(0))
        if shift != PAGE_SHIFT and shift not in self.block_shifts:
            return NOT_PRESENT  # 512 GiB leaves are never written here
        flags = MappingFlags(0)
        if entry & PTE_R:
            flags |= MappingFlags.READ
        if entry & PTE_W:
            flags |= MappingFlags.WRITE
        if entry & PTE_X:
            flags |= MappingFlags.EXECUTE
        return Pte(True, True, paddr & -(1 << shift), flags)

    def hgatp(self, root: HostPhysAddr, vmid: int) -> int:
        """hgatp: MODE[63:60] | VMID[57:44] | PPN[43:0] of the 16 KiB-aligned root."""
        addr = int(root)
        if addr % self.root_align:
            raise AlignmentError("G-stage root table", addr, self.root_align)
        if addr >> PAGE_SHIFT >= 1 << PPN_BITS:
            raise InvalidInput(f"G-stage root {addr:#x} is beyond a 44-bit PPN")
        if not isinstance(vmid, int) or not 0 <= vmid < 1 << HGATP_VMID_BITS:
            raise InvalidInput(f"VMID must be 0..{(1 << HGATP_VMID_BITS) - 1}, got {vmid!r}")
        return self.mode << HGATP_MODE_SHIFT | vmid << HGATP_VMID_SHIFT | addr >> PAGE_SHIFT


class Sv39x4Format(GStageFormat):
    """Sv39x4: 3 levels, 41-bit guest physical addresses, hgatp MODE 8."""

    def __init__(self) -> None:
        super().__init__(name="Sv39x4", level_shifts=(30, 21, 12), mode=HGATP_MODE_SV39X4)


class Sv48x4Format(GStageFormat):
    """Sv48x4: 4 levels, 50-bit guest physical addresses, hgatp MODE 9."""

    def __init__(self) -> None:
        super().__init__(name="Sv48x4", level_shifts=(39, 30, 21, 12), mode=HGATP_MODE_SV48X4)


GSTAGE_MODES: dict[str, type[GStageFormat]] = {"sv39x4": Sv39x4Format, "sv48x4": Sv48x4Format}


class GStagePageTable(NestedPageTable):
    """A nested page table in RISC-V G-stage format (``mode`` "sv39x4" or "sv48x4")."""

    def __init__(self, hal: VCpuHal, mode: str = "sv39x4") -> None:
        try:
            fmt = GSTAGE_MODES[mode.lower()]()
        except (KeyError, AttributeError):
            raise InvalidInput(f"unknown G-stage mode {mode!r}; "
                               f"choose one of {sorted(GSTAGE_MODES)}") from None
        super().__init__(hal, fmt)

    @property
    def gstage(self) -> GStageFormat:
        fmt = self.fmt
        assert isinstance(fmt, GStageFormat)
        return fmt

    def hgatp(self, vmid: int) -> int:
        return self.gstage.hgatp(self.root_paddr, vmid)

"""Guest accesses to unmapped guest-physical addresses, decoded from the instruction.

Without the H extension there is no ``htinst``/``htval``: a load, store or fetch
outside guest RAM reaches the hypervisor as an access fault carrying the PC (and
the address, virtual for PMP faults). What the guest wanted is read from its
instruction:

* :func:`decode_access` decodes every RV64GC load and store: LB/LBU, LH/LHU,
  LW/LWU, LD, SB, SH, SW, SD; the compressed C.LW, C.LD, C.SW, C.SD, C.LWSP,
  C.LDSP, C.SWSP, C.SDSP; and, to name them, FP loads and stores (FLW, FLD, FSW,
  FSD and their compressed forms) and AMOs/LR/SC. Anything else is ``None``.
* :func:`mmio_exit` turns an integer load into ``MmioRead`` (destination register,
  64-bit register width, sign extension for LB/LH/LW, zero extension for
  LBU/LHU/LWU/LD; a load into x0 still reads the device, and the result is
  dropped) and an integer store into ``MmioWrite`` with the source register masked
  to the width. Unaligned addresses are passed on as they are. AMOs, LR/SC and FP
  accesses cannot be emulated as MMIO: ``NestedPageFault`` (READ|WRITE for AMOs,
  READ for FP loads, WRITE for FP stores).
* :func:`guest_translate` walks the guest's own Sv39/Sv48/Sv57 page tables in guest
  memory (``satp``), to find the guest-physical address of a virtual one (Linux picks
  Sv57 on this CPU). It checks
  validity and superpage alignment, not permissions: the CPU already checked them
  when it made the access.

The caller advances the PC by ``Access.length`` (2 or 4) when it emulates the
access.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from pyaxvisor.engine.tcg.riscv64_isa import (
    SATP_MODE_BARE,
    SATP_MODE_SHIFT,
    SATP_MODE_SV39,
    SATP_MODE_SV48,
    SATP_MODE_SV57,
    SATP_PPN_MASK,
)
from pyaxvisor.errors import AxError
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.flags import AccessFlags
from pyaxvisor.vcpu.exit import MmioRead, MmioWrite, NestedPageFault
from pyaxvisor.vcpu.width import AccessWidth

U64 = (1 << 64) - 1
W = AccessWidth

Kind = Literal["load", "store", "amo", "fp_load", "fp_store"]


class Access(NamedTuple):
    """One decoded memory access: ``reg`` is the destination (loads) or the data
    source (stores); the address is ``x[base] + offset``."""

    kind: Kind
    width: AccessWidth
    signed: bool
    reg: int
    base: int
    offset: int
    length: int


_LOADS = {0: (W.Byte, True), 1: (W.Word, True), 2: (W.Dword, True), 3: (W.Qword, False),
          4: (W.Byte, False), 5: (W.Word, False), 6: (W.Dword, False)}
_STORES = {0: W.Byte, 1: W.Word, 2: W.Dword, 3: W.Qword}
_FP = {2: W.Dword, 3: W.Qword}


def _bits(value: int, hi: int, lo: int) -> int:
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


def decode_access(insn: int) -> Access | None:
    """The memory access instruction ``insn`` makes (16 or 32 bits), or ``None``."""
    if insn & 3 != 3:
        return _decode_compressed(insn & 0xFFFF)
    opcode, f3 = insn & 0x7F, _bits(insn, 14, 12)
    rd, rs1, rs2 = _bits(insn, 11, 7), _bits(insn, 19, 15), _bits(insn, 24, 20)
    i_imm = _sext(insn >> 20, 12)
    s_imm = _sext(_bits(insn, 31, 25) << 5 | rd, 12)
    match opcode:
        case 0x03 if f3 in _LOADS:
            width, signed = _LOADS[f3]
            return Access("load", width, signed, rd, rs1, i_imm, 4)
        case 0x23 if f3 in _STORES:
            return Access("store", _STORES[f3], False, rs2, rs1, s_imm, 4)
        case 0x07 if f3 in _FP:
            return Access("fp_load", _FP[f3], False, rd, rs1, i_imm, 4)
        case 0x27 if f3 in _FP:
            return Access("fp_store", _FP[f3], False, rs2, rs1, s_imm, 4)
        case 0x2F if f3 in _FP:
            return Access("amo", _FP[f3], False, rd, rs1, 0, 4)
    return None


# Compressed loads and stores by funct3 (bits 15:13): (kind, width, sign extension,
# immediate layout). Quadrant 0 names x8..x15 (rd'/rs2', rs1'), quadrant 2 uses sp.
_C0 = {0b010: ("load", W.Dword, True, "w"), 0b011: ("load", W.Qword, False, "d"),
       0b110: ("store", W.Dword, False, "w"), 0b111: ("store", W.Qword, False, "d"),
       0b001: ("fp_load", W.Qword, False, "d"), 0b101: ("fp_store", W.Qword, False, "d")}
_C2 = {0b010: ("load", W.Dword, True, "lwsp"), 0b011: ("load", W.Qword, False, "ldsp"),
       0b110: ("store", W.Dword, False, "swsp"), 0b111: ("store", W.Qword, False, "sdsp"),
       0b001: ("fp_load", W.Qword, False, "ldsp"), 0b101: ("fp_store", W.Qword, False, "sdsp")}


def _c_offset(insn: int, layout: str) -> int:
    """The zero-extended offset of a compressed load/store (RVC immediate layouts)."""
    b = _bits
    match layout:
        case "w":     # C.LW/C.SW: uimm[5:3] = 12:10, uimm[2] = 6, uimm[6] = 5
            return b(insn, 12, 10) << 3 | b(insn, 6, 6) << 2 | b(insn, 5, 5) << 6
        case "d":     # C.LD/C.SD/C.FLD/C.FSD: uimm[5:3] = 12:10, uimm[7:6] = 6:5
            return b(insn, 12, 10) << 3 | b(insn, 6, 5) << 6
        case "lwsp":  # uimm[5] = 12, uimm[4:2] = 6:4, uimm[7:6] = 3:2
            return b(insn, 12, 12) << 5 | b(insn, 6, 4) << 2 | b(insn, 3, 2) << 6
        case "ldsp":  # uimm[5] = 12, uimm[4:3] = 6:5, uimm[8:6] = 4:2
            return b(insn, 12, 12) << 5 | b(insn, 6, 5) << 3 | b(insn, 4, 2) << 6
        case "swsp":  # uimm[5:2] = 12:9, uimm[7:6] = 8:7
            return b(insn, 12, 9) << 2 | b(insn, 8, 7) << 6
    return b(insn, 12, 10) << 3 | b(insn, 9, 7) << 6  # sdsp: uimm[5:3] 12:10, [8:6] 9:7


def _decode_compressed(insn: int) -> Access | None:
    quadrant, f3 = insn & 3, _bits(insn, 15, 13)
    if quadrant == 0 and f3 in _C0:
        kind, width, signed, layout = _C0[f3]
        reg, base = 8 + _bits(insn, 4, 2), 8 + _bits(insn, 9, 7)
    elif quadrant == 2 and f3 in _C2:
        kind, width, signed, layout = _C2[f3]
        loads = kind in ("load", "fp_load")
        reg, base = _bits(insn, 11, 7) if loads else _bits(insn, 6, 2), 2
        if kind == "load" and reg == 0:
            return None  # C.LWSP/C.LDSP with rd = x0 are reserved
    else:
        return None
    return Access(kind, width, signed, reg, base, _c_offset(insn, layout), 2)  # type: ignore[arg-type]


_NPF_FLAGS = {"amo": AccessFlags.READ | AccessFlags.WRITE, "fp_load": AccessFlags.READ,
              "fp_store": AccessFlags.WRITE, "load": AccessFlags.READ,
              "store": AccessFlags.WRITE}


def mmio_exit(access: Access, gpa: int, data: int) -> MmioRead | MmioWrite | NestedPageFault:
    """The exit for ``access`` at guest-physical ``gpa``; ``data`` is the value of
    its data register (stores)."""
    addr = GuestPhysAddr(gpa)
    match access.kind:
        case "load":
            return MmioRead(addr, access.width, access.reg, W.Qword, access.signed)
        case "store":
            return MmioWrite(addr, access.width, data & access.width.mask)
    return NestedPageFault(addr, _NPF_FLAGS[access.kind])


def fault_flags(access: Access | None, fetch: bool = False) -> AccessFlags:
    """The access flags of a nested page fault for ``access`` (a fetch when None)."""
    if fetch or access is None:
        return AccessFlags.EXECUTE
    return _NPF_FLAGS[access.kind]


# -- the guest's own page tables -----------------------------------------------------------
PTE_V, PTE_R, PTE_W, PTE_X = 1, 2, 4, 8
_LEVELS = {SATP_MODE_SV39: 3, SATP_MODE_SV48: 4, SATP_MODE_SV57: 5}


class GuestTranslationFault(AxError):
    """The guest's page tables do not translate an address the CPU just used: a table
    entry is not in guest RAM (``pte_gpa`` names it) or the tables changed."""

    def __init__(self, va: int, reason: str, pte_gpa: int | None = None) -> None:
        super().__init__(f"guest virtual address {va:#x}: {reason}")
        self.va = va
        self.pte_gpa = pte_gpa


def guest_translate(satp: int, va: int, read_u64: Callable[[int], int | None]) -> int:
    """The guest-physical address of ``va`` under ``satp`` (bare, Sv39, Sv48 or Sv57);
    ``read_u64(gpa)`` reads a page-table entry from guest RAM (``None``: not RAM)."""
    mode = satp >> SATP_MODE_SHIFT
    if mode == SATP_MODE_BARE:
        return va
    levels = _LEVELS.get(mode)
    if levels is None:
        raise GuestTranslationFault(va, f"satp mode {mode} is not Sv39, Sv48 or Sv57")
    va_bits = 12 + 9 * levels
    top = va >> (va_bits - 1)
    if top not in (0, (1 << (65 - va_bits)) - 1):
        raise GuestTranslationFault(va, f"not a canonical Sv{va_bits} address")
    table = (satp & SATP_PPN_MASK) << 12
    for level in reversed(range(levels)):
        shift = 12 + 9 * level
        pte_gpa = table + ((va >> shift) & 0x1FF) * 8
        pte = read_u64(pte_gpa)
        if pte is None:
            raise GuestTranslationFault(va, f"page-table entry at {pte_gpa:#x} is not in "
                                        "guest RAM", pte_gpa)
        if not pte & PTE_V or (pte & (PTE_R | PTE_W)) == PTE_W:
            raise GuestTranslationFault(va, f"invalid page-table entry {pte:#x} at "
                                        f"{pte_gpa:#x}", pte_gpa)
        ppn = (pte >> 10) & SATP_PPN_MASK
        if pte & (PTE_R | PTE_X):
            if ppn & ((1 << (shift - 12)) - 1):
                raise GuestTranslationFault(va, f"misaligned superpage entry {pte:#x}", pte_gpa)
            return (ppn << 12) | (va & ((1 << shift) - 1))
        table = ppn << 12
    raise GuestTranslationFault(va, "no leaf entry")

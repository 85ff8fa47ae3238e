"""RISC-V privileged-architecture numbers shared by the RISC-V engine and riscv_vcpu.

Values are the RISC-V Privileged Specification's (CSR addresses, ``mcause``
exception codes, ``mip``/``mie`` bit positions, ``mstatus`` fields), with one
exception that belongs to the CPU this engine runs: :data:`MSTATUS_TW` is bit 29,
not the specification's bit 21, because the QEMU base of Unicorn 2.1.4 defines it
there (``target/riscv/cpu_bits.h``); the engine's self-test checks that setting it
makes an S-mode ``wfi`` trap.
"""

from __future__ import annotations

import enum

XLEN_MASK = (1 << 64) - 1


class Priv(enum.IntEnum):
    """Privilege levels (the values ``mstatus.MPP`` and Unicorn's PRIV register use)."""

    U = 0
    S = 1
    M = 3


class Csr(enum.IntEnum):
    """CSR addresses."""

    SSTATUS = 0x100
    SIE = 0x104
    STVEC = 0x105
    SCOUNTEREN = 0x106
    SENVCFG = 0x10A
    SSCRATCH = 0x140
    SEPC = 0x141
    SCAUSE = 0x142
    STVAL = 0x143
    SIP = 0x144
    SATP = 0x180
    MSTATUS = 0x300
    MISA = 0x301
    MEDELEG = 0x302
    MIDELEG = 0x303
    MIE = 0x304
    MTVEC = 0x305
    MCOUNTEREN = 0x306
    MSCRATCH = 0x340
    MEPC = 0x341
    MCAUSE = 0x342
    MTVAL = 0x343
    MIP = 0x344
    PMPCFG0 = 0x3A0
    PMPADDR0 = 0x3B0
    FFLAGS = 0x001
    FRM = 0x002
    FCSR = 0x003
    TIME = 0xC01
    MVENDORID = 0xF11
    MARCHID = 0xF12
    MIMPID = 0xF13
    MHARTID = 0xF14


class Cause(enum.IntEnum):
    """Synchronous exception codes (``mcause`` with the interrupt bit clear)."""

    INST_MISALIGNED = 0
    INST_ACCESS_FAULT = 1
    ILLEGAL_INSTRUCTION = 2
    BREAKPOINT = 3
    LOAD_MISALIGNED = 4
    LOAD_ACCESS_FAULT = 5
    STORE_MISALIGNED = 6
    STORE_ACCESS_FAULT = 7
    ECALL_U = 8
    ECALL_S = 9
    ECALL_M = 11
    INST_PAGE_FAULT = 12
    LOAD_PAGE_FAULT = 13
    STORE_PAGE_FAULT = 15


#: Exceptions a guest kernel handles itself: delegated to S-mode (``medeleg``) and
#: delivered by the engine without leaving the CPU. ECALL_U only from U-mode (the CPU
#: reports every ``ecall`` as 8; one from S-mode is an SBI call for the hypervisor).
GUEST_CAUSES = frozenset({
    Cause.INST_MISALIGNED, Cause.BREAKPOINT, Cause.LOAD_MISALIGNED, Cause.STORE_MISALIGNED,
    Cause.ECALL_U, Cause.INST_PAGE_FAULT, Cause.LOAD_PAGE_FAULT, Cause.STORE_PAGE_FAULT,
})

INTERRUPT = 1 << 63
"""The interrupt bit of ``mcause``/``scause``."""

# mip / mie / sip / sie: supervisor software (1), timer (5), external (9) interrupts
MIP_SSIP, MIP_STIP, MIP_SEIP = 1 << 1, 1 << 5, 1 << 9
S_INTERRUPTS = MIP_SSIP | MIP_STIP | MIP_SEIP

# mstatus / sstatus fields (TW: the QEMU 5.0 position, the specification's is bit 21)
MSTATUS_SIE, MSTATUS_FS, MSTATUS_TW = 1 << 1, 3 << 13, 1 << 29
MSTATUS_SPIE, MSTATUS_SPP = 1 << 5, 1 << 8

# misa: the hypervisor extension, supervisor and user modes (letters H, S, U)
MISA_H, MISA_S, MISA_U = 1 << 7, 1 << 18, 1 << 20

# satp: MODE (bits 63:60: bare, Sv39, Sv48, Sv57: this CPU walks all three) and the root
# table's PPN (bits 43:0)
SATP_MODE_SHIFT = 60
SATP_MODE_BARE, SATP_MODE_SV39, SATP_MODE_SV48, SATP_MODE_SV57 = 0, 8, 9, 10
SATP_PPN_MASK = (1 << 44) - 1

# pmpcfg fields: permissions, and the address-matching modes TOR and NAPOT
PMP_R, PMP_W, PMP_X = 1 << 0, 1 << 1, 1 << 2
PMP_TOR, PMP_NAPOT = 1 << 3, 3 << 3

INSN_WFI = 0x1050_0073
INSN_ECALL = 0x0000_0073


def insn_length(low_half: int) -> int:
    """Length in bytes of the instruction whose first 16 bits are ``low_half``: 2 for
    a compressed one (bits 1:0 != 0b11), else 4 (longer encodings are not used by
    RV64GC)."""
    return 4 if low_half & 3 == 3 else 2

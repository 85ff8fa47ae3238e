"""ESR_EL2 syndrome decoding (Arm ARM DDI 0487, "ESR_EL2, Exception Syndrome Register").

Layout of the 64-bit register::

    63..56  RES0
    55..32  ISS2   (extra syndrome for some data aborts: FEAT_LS64, FEAT_MTE, ...)
    31..26  EC     exception class
    25      IL     instruction length: 1 = 32-bit instruction, 0 = 16-bit (T32)
    24..0   ISS    instruction-specific syndrome, decoded per EC

Decoders here are pure: :class:`Esr` wraps the register value and hands out the
ISS view for its class (:class:`DataAbortIss`, :class:`InstructionAbortIss`,
:class:`SysRegIss`, :class:`WfxIss`, :attr:`Esr.imm16`).

System registers are named by their **ISS address**: the EC 0x18 ISS with Rt
(bits 9:5) and Direction (bit 0) masked out, left in place (not shifted)::

    21..20 Op0 | 19..17 Op2 | 16..14 Op1 | 13..10 CRn | 9..5 0 | 4..1 CRm | 0 0

which is what arm_vcpu's ``exception_sysreg_addr`` produces and what
:class:`~pyaxvisor.vcpu.width.SysRegAddr` carries for AArch64.
:func:`sysreg_addr` builds the same value from the (op0, op1, CRn, CRm, op2)
tuple the Arm ARM lists, e.g. ``CNTV_CTL_EL0`` = S3_3_C14_C3_1 = ``0x32f806``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth, SysRegAddr

U64 = (1 << 64) - 1

ESR_EC_SHIFT = 26
ESR_EC_MASK = 0x3F
ESR_IL = 1 << 25
ESR_ISS_MASK = (1 << 25) - 1
ESR_ISS2_SHIFT = 32
ESR_ISS2_MASK = (1 << 24) - 1

SYSREG_ISS_ADDR_MASK = (0xFFF << 10) | (0xF << 1)
"""Op0, Op2, Op1, CRn (bits 21:10) and CRm (bits 4:1) of an EC 0x18 ISS."""


class ExceptionClass(enum.IntEnum):
    """ESR_ELx.EC values (names follow Linux ``ESR_ELx_EC_*``)."""

    UNKNOWN = 0x00
    WFX = 0x01
    CP15_32 = 0x03
    CP15_64 = 0x04
    CP14_MR = 0x05
    CP14_LS = 0x06
    FP_ASIMD = 0x07
    CP10_ID = 0x08
    PAC = 0x09
    OTHER = 0x0A
    CP14_64 = 0x0C
    BTI = 0x0D
    ILL = 0x0E
    SVC32 = 0x11
    HVC32 = 0x12
    SMC32 = 0x13
    SVC64 = 0x15
    HVC64 = 0x16
    SMC64 = 0x17
    SYS64 = 0x18
    SVE = 0x19
    ERET = 0x1A
    FPAC = 0x1C
    SME = 0x1D
    IMP_DEF = 0x1F
    IABT_LOW = 0x20
    IABT_CUR = 0x21
    PC_ALIGN = 0x22
    DABT_LOW = 0x24
    DABT_CUR = 0x25
    SP_ALIGN = 0x26
    MOPS = 0x27
    FP_EXC32 = 0x28
    FP_EXC64 = 0x2C
    GCS = 0x2D
    SERROR = 0x2F
    BREAKPT_LOW = 0x30
    BREAKPT_CUR = 0x31
    SOFTSTP_LOW = 0x32
    SOFTSTP_CUR = 0x33
    WATCHPT_LOW = 0x34
    WATCHPT_CUR = 0x35
    BKPT32 = 0x38
    VECTOR32 = 0x3A
    BRK64 = 0x3C

    @property
    def description(self) -> str:
        return _EC_DESCRIPTIONS[self]

    @property
    def is_aarch32(self) -> bool:
        """Raised only by an AArch32 guest (coprocessor accesses, SVC/HVC/SMC32, ...)."""
        return self in _AARCH32_ECS


EC = ExceptionClass

_EC_DESCRIPTIONS = {
    EC.UNKNOWN: "unknown reason (e.g. an UNDEFINED instruction)",
    EC.WFX: "trapped WFI/WFE",
    EC.CP15_32: "AArch32 MCR/MRC to CP15",
    EC.CP15_64: "AArch32 MCRR/MRRC to CP15",
    EC.CP14_MR: "AArch32 MCR/MRC to CP14",
    EC.CP14_LS: "AArch32 LDC/STC to CP14",
    EC.FP_ASIMD: "trapped SVE/Advanced SIMD/floating-point access",
    EC.CP10_ID: "AArch32 VMRS of an ID register",
    EC.PAC: "trapped pointer-authentication instruction",
    EC.OTHER: "LD64B/ST64B or other FEAT_LS64 instruction",
    EC.CP14_64: "AArch32 MRRC/MCRR to CP14",
    EC.BTI: "branch target exception",
    EC.ILL: "illegal execution state",
    EC.SVC32: "AArch32 SVC",
    EC.HVC32: "AArch32 HVC",
    EC.SMC32: "AArch32 SMC",
    EC.SVC64: "AArch64 SVC",
    EC.HVC64: "AArch64 HVC",
    EC.SMC64: "AArch64 SMC",
    EC.SYS64: "trapped MSR/MRS/system instruction",
    EC.SVE: "trapped SVE access",
    EC.ERET: "trapped ERET/ERETAA/ERETAB",
    EC.FPAC: "pointer authentication failure",
    EC.SME: "trapped SME access",
    EC.IMP_DEF: "implementation defined exception to EL3",
    EC.IABT_LOW: "instruction abort from a lower exception level",
    EC.IABT_CUR: "instruction abort from the current exception level",
    EC.PC_ALIGN: "PC alignment fault",
    EC.DABT_LOW: "data abort from a lower exception level",
    EC.DABT_CUR: "data abort from the current exception level",
    EC.SP_ALIGN: "SP alignment fault",
    EC.MOPS: "memory copy/set (FEAT_MOPS) exception",
    EC.FP_EXC32: "AArch32 trapped floating-point exception",
    EC.FP_EXC64: "AArch64 trapped floating-point exception",
    EC.GCS: "guarded control stack exception",
    EC.SERROR: "SError interrupt",
    EC.BREAKPT_LOW: "breakpoint from a lower exception level",
    EC.BREAKPT_CUR: "breakpoint from the current exception level",
    EC.SOFTSTP_LOW: "software step from a lower exception level",
    EC.SOFTSTP_CUR: "software step from the current exception level",
    EC.WATCHPT_LOW: "watchpoint from a lower exception level",
    EC.WATCHPT_CUR: "watchpoint from the current exception level",
    EC.BKPT32: "AArch32 BKPT",
    EC.VECTOR32: "AArch32 vector catch",
    EC.BRK64: "AArch64 BRK",
}

_AARCH32_ECS = frozenset({
    EC.CP15_32, EC.CP15_64, EC.CP14_MR, EC.CP14_LS, EC.CP10_ID, EC.CP14_64,
    EC.SVC32, EC.HVC32, EC.SMC32, EC.FP_EXC32, EC.BKPT32, EC.VECTOR32,
})


def ec_name(ec_value: int) -> str:
    """``DABT_LOW`` for a known class, ``EC_0x2e`` for an unallocated one."""
    try:
        return ExceptionClass(ec_value).name
    except ValueError:
        return f"EC_{ec_value:#04x}"


# --------------------------------------------------------------------------------
# Fault status codes (DFSC / IFSC, ISS bits 5:0 of aborts)
# --------------------------------------------------------------------------------


class FaultKind(enum.Enum):
    ADDRESS_SIZE = "address size fault"
    TRANSLATION = "translation fault"
    ACCESS_FLAG = "access flag fault"
    PERMISSION = "permission fault"
    SYNC_EXTERNAL = "synchronous external abort"
    SYNC_EXTERNAL_WALK = "synchronous external abort on translation table walk"
    TAG_CHECK = "synchronous tag check fault"
    PARITY_ECC = "synchronous parity/ECC error"
    PARITY_ECC_WALK = "synchronous parity/ECC error on translation table walk"
    ALIGNMENT = "alignment fault"
    TLB_CONFLICT = "TLB conflict abort"
    ATOMIC_HW_UPDATE = "unsupported atomic hardware update fault"
    IMPDEF_LOCKDOWN = "implementation defined fault (lockdown)"
    IMPDEF_EXCLUSIVE = "implementation defined fault (unsupported exclusive or atomic access)"
    OTHER = "other fault"


def decode_fsc(fsc: int) -> tuple[FaultKind, int | None]:
    """Classify a 6-bit DFSC/IFSC: ``(kind, level)``; level is None when not applicable."""
    fsc &= 0x3F
    group, level = fsc >> 2, fsc & 0b11
    if group == 0b0000:
        return FaultKind.ADDRESS_SIZE, level
    if group == 0b0001:
        return FaultKind.TRANSLATION, level
    if group == 0b0010:
        return FaultKind.ACCESS_FLAG, level
    if group == 0b0011:
        return FaultKind.PERMISSION, level
    if group == 0b0101:
        return FaultKind.SYNC_EXTERNAL_WALK, level
    if group == 0b0111:
        return FaultKind.PARITY_ECC_WALK, level
    single = {
        0x10: (FaultKind.SYNC_EXTERNAL, None),
        0x11: (FaultKind.TAG_CHECK, None),
        0x13: (FaultKind.SYNC_EXTERNAL_WALK, -1),
        0x18: (FaultKind.PARITY_ECC, None),
        0x1B: (FaultKind.PARITY_ECC_WALK, -1),
        0x21: (FaultKind.ALIGNMENT, None),
        0x2B: (FaultKind.TRANSLATION, -1),  # FEAT_LPA2
        0x30: (FaultKind.TLB_CONFLICT, None),
        0x31: (FaultKind.ATOMIC_HW_UPDATE, None),
        0x34: (FaultKind.IMPDEF_LOCKDOWN, None),
        0x35: (FaultKind.IMPDEF_EXCLUSIVE, None),
    }
    return single.get(fsc, (FaultKind.OTHER, None))


def describe_fsc(fsc: int) -> str:
    """E.g. ``0x07 (translation fault, level 3)``."""
    kind, level = decode_fsc(fsc)
    where = "" if level is None else f", level {level}"
    return f"{fsc & 0x3F:#04x} ({kind.value}{where})"


# --------------------------------------------------------------------------------
# The register
# --------------------------------------------------------------------------------


def _check_bits(name: str, value: object, bits: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise InvalidInput(f"{name} must be an unsigned {bits}-bit integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Esr:
    """An ESR_EL2 value."""

    value: int

    def __post_init__(self) -> None:
        _check_bits("ESR_EL2", self.value, 64)

    @property
    def ec_value(self) -> int:
        return (self.value >> ESR_EC_SHIFT) & ESR_EC_MASK

    @property
    def ec(self) -> ExceptionClass | None:
        """The exception class, or None for an unallocated EC value."""
        try:
            return ExceptionClass(self.ec_value)
        except ValueError:
            return None

    @property
    def ec_name(self) -> str:
        return ec_name(self.ec_value)

    @property
    def il(self) -> bool:
        return bool(self.value & ESR_IL)

    @property
    def instruction_length(self) -> int:
        """Bytes to step over the trapping instruction: 4 if IL=1, else 2."""
        return 4 if self.il else 2

    @property
    def iss(self) -> int:
        return self.value & ESR_ISS_MASK

    @property
    def iss2(self) -> int:
        return (self.value >> ESR_ISS2_SHIFT) & ESR_ISS2_MASK

    @property
    def imm16(self) -> int:
        """The immediate of HVC/SMC/SVC/BRK #imm16 (ISS bits 15:0)."""
        self._require(EC.HVC64, EC.SMC64, EC.SVC64, EC.HVC32, EC.SVC32, EC.BRK64)
        return self.iss & 0xFFFF

    def describe_ec(self) -> str:
        """E.g. ``EC=0x24 DABT_LOW (data abort from a lower exception level)``."""
        ec = self.ec
        what = ec.description if ec is not None else "unallocated exception class"
        return f"EC={self.ec_value:#04x} {self.ec_name} ({what})"

    def data_abort(self) -> DataAbortIss:
        self._require(EC.DABT_LOW, EC.DABT_CUR)
        return DataAbortIss(self.iss)

    def instruction_abort(self) -> InstructionAbortIss:
        self._require(EC.IABT_LOW, EC.IABT_CUR)
        return InstructionAbortIss(self.iss)

    def sysreg(self) -> SysRegIss:
        self._require(EC.SYS64)
        return SysRegIss(self.iss)

    def wfx(self) -> WfxIss:
        self._require(EC.WFX)
        return WfxIss(self.iss)

    def _require(self, *classes: ExceptionClass) -> None:
        if self.ec_value not in classes:
            names = "/".join(c.name for c in classes)
            raise InvalidInput(f"ESR {self.value:#x} is {self.ec_name}, not {names}")

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return (f"Esr({self.value:#x}: {self.ec_name}, IL={int(self.il)}, "
                f"ISS={self.iss:#x})")


# --------------------------------------------------------------------------------
# ISS views
# --------------------------------------------------------------------------------


class _Iss:
    __slots__ = ()
    iss: int

    def _bit(self, n: int) -> bool:
        return bool(self.iss >> n & 1)

    def _field(self, lo: int, width: int) -> int:
        return (self.iss >> lo) & ((1 << width) - 1)


@dataclass(frozen=True, slots=True)
class DataAbortIss(_Iss):
    """ISS of a data abort (EC 0x24/0x25).

    SAS, SSE, SRT, SF and AR are only meaningful when ISV=1: the hardware
    describes the access only for single-register loads/stores without
    writeback (not LDP/STP, pre/post-indexed forms, SIMD&FP registers, atomics).
    """

    iss: int

    def __post_init__(self) -> None:
        _check_bits("data abort ISS", self.iss, 25)

    isv = property(lambda self: self._bit(24), doc="Instruction syndrome valid (bit 24).")
    sas = property(lambda self: self._field(22, 2), doc="Access size log2 (bits 23:22).")
    sse = property(lambda self: self._bit(21), doc="Sign-extend the loaded value (bit 21).")
    srt = property(lambda self: self._field(16, 5), doc="Transfer register Rt (bits 20:16).")
    sf = property(lambda self: self._bit(15), doc="64-bit (X) register, else W (bit 15).")
    ar = property(lambda self: self._bit(14), doc="Acquire/release semantics (bit 14).")
    vncr = property(lambda self: self._bit(13), doc="Fault came from VNCR_EL2 (bit 13).")
    sync_err_type = property(lambda self: self._field(11, 2),
                             doc="SET, synchronous error type (bits 12:11).")
    fnv = property(lambda self: self._bit(10), doc="FAR not valid (bit 10).")
    ea = property(lambda self: self._bit(9), doc="External abort type (bit 9).")
    cm = property(lambda self: self._bit(8), doc="Cache maintenance operation (bit 8).")
    s1ptw = property(lambda self: self._bit(7),
                     doc="Stage-2 fault on a stage-1 translation table walk (bit 7).")
    wnr = property(lambda self: self._bit(6), doc="Write, not read (bit 6).")
    dfsc = property(lambda self: self._field(0, 6), doc="Data fault status code (bits 5:0).")

    @property
    def access_width(self) -> AccessWidth:
        return AccessWidth(1 << self.sas)

    @property
    def reg_width(self) -> AccessWidth:
        """Width of the transfer register: Qword for Xt (SF=1), Dword for Wt."""
        return AccessWidth.Qword if self.sf else AccessWidth.Dword

    @property
    def is_write(self) -> bool:
        return self.wnr

    @property
    def fault_kind(self) -> FaultKind:
        return decode_fsc(self.dfsc)[0]

    @property
    def fault_level(self) -> int | None:
        return decode_fsc(self.dfsc)[1]

    @property
    def is_translation_fault(self) -> bool:
        return self.fault_kind is FaultKind.TRANSLATION

    @property
    def is_access_flag_fault(self) -> bool:
        return self.fault_kind is FaultKind.ACCESS_FLAG

    @property
    def is_permission_fault(self) -> bool:
        return self.fault_kind is FaultKind.PERMISSION

    def describe(self) -> str:
        parts = []
        if self.isv:
            parts.append(
                f"ISV=1 SAS={self.sas} ({self.access_width.size} bytes) SSE={int(self.sse)} "
                f"SRT={self.srt} SF={int(self.sf)} AR={int(self.ar)}"
            )
        else:
            parts.append("ISV=0 (no instruction syndrome)")
        flags = [name for name, on in (("VNCR", self.vncr), ("FnV", self.fnv), ("EA", self.ea),
                                       ("CM", self.cm), ("S1PTW", self.s1ptw)) if on]
        parts.extend(flags)
        parts.append(f"WnR={int(self.wnr)}")
        parts.append(f"DFSC={describe_fsc(self.dfsc)}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class InstructionAbortIss(_Iss):
    """ISS of an instruction abort (EC 0x20/0x21)."""

    iss: int

    def __post_init__(self) -> None:
        _check_bits("instruction abort ISS", self.iss, 25)

    fnv = property(lambda self: self._bit(10), doc="FAR not valid (bit 10).")
    ea = property(lambda self: self._bit(9), doc="External abort type (bit 9).")
    s1ptw = property(lambda self: self._bit(7),
                     doc="Stage-2 fault on a stage-1 translation table walk (bit 7).")
    ifsc = property(lambda self: self._field(0, 6), doc="Instruction fault status (bits 5:0).")

    @property
    def fault_kind(self) -> FaultKind:
        return decode_fsc(self.ifsc)[0]

    def describe(self) -> str:
        flags = " ".join(name for name, on in (("FnV", self.fnv), ("EA", self.ea),
                                                ("S1PTW", self.s1ptw)) if on)
        return f"{flags + ' ' if flags else ''}IFSC={describe_fsc(self.ifsc)}"


@dataclass(frozen=True, slots=True)
class SysRegIss(_Iss):
    """ISS of a trapped MSR/MRS/SYS instruction (EC 0x18)."""

    iss: int

    def __post_init__(self) -> None:
        _check_bits("system register ISS", self.iss, 25)

    op0 = property(lambda self: self._field(20, 2), doc="Op0 (bits 21:20).")
    op2 = property(lambda self: self._field(17, 3), doc="Op2 (bits 19:17).")
    op1 = property(lambda self: self._field(14, 3), doc="Op1 (bits 16:14).")
    crn = property(lambda self: self._field(10, 4), doc="CRn (bits 13:10).")
    rt = property(lambda self: self._field(5, 5), doc="Rt (bits 9:5); 31 is XZR.")
    crm = property(lambda self: self._field(1, 4), doc="CRm (bits 4:1).")

    @property
    def is_read(self) -> bool:
        """Direction bit 0: 1 = read (MRS/SYSL), 0 = write (MSR/SYS)."""
        return self._bit(0)

    @property
    def is_write(self) -> bool:
        return not self.is_read

    @property
    def addr(self) -> SysRegAddr:
        """The ISS address: the ISS with Rt and Direction masked out."""
        return SysRegAddr(self.iss & SYSREG_ISS_ADDR_MASK)

    @property
    def name(self) -> str:
        return sysreg_name(self.addr)

    def describe(self) -> str:
        """E.g. ``MRS X2, CNTV_CTL_EL0`` or ``MSR CNTV_CTL_EL0, XZR``."""
        reg = "XZR" if self.rt == 31 else f"X{self.rt}"
        if self.is_read:
            return f"MRS {reg}, {self.name}"
        return f"MSR {self.name}, {reg}"


@dataclass(frozen=True, slots=True)
class WfxIss(_Iss):
    """ISS of a trapped WFI/WFE (EC 0x01). TI (bits 1:0): 0 WFI, 1 WFE, 2 WFIT, 3 WFET."""

    iss: int

    def __post_init__(self) -> None:
        _check_bits("WFx ISS", self.iss, 25)

    ti = property(lambda self: self._field(0, 2), doc="Trapped instruction (bits 1:0).")

    @property
    def is_wfe(self) -> bool:
        return self._bit(0)

    @property
    def is_wfi(self) -> bool:
        return not self.is_wfe

    @property
    def instruction(self) -> str:
        return ("WFI", "WFE", "WFIT", "WFET")[self.ti]


# --------------------------------------------------------------------------------
# System register addresses
# --------------------------------------------------------------------------------


def sysreg_addr(op0: int, op1: int, crn: int, crm: int, op2: int) -> SysRegAddr:
    """The ISS address of system register S<op0>_<op1>_C<crn>_C<crm>_<op2>."""
    for name, value, bits in (("op0", op0, 2), ("op1", op1, 3), ("CRn", crn, 4),
                              ("CRm", crm, 4), ("op2", op2, 3)):
        _check_bits(name, value, bits)
    return SysRegAddr((op0 << 20) | (op2 << 17) | (op1 << 14) | (crn << 10) | (crm << 1))


def sysreg_fields(addr: int) -> tuple[int, int, int, int, int]:
    """``(op0, op1, CRn, CRm, op2)`` of an ISS address."""
    addr = int(addr)
    return ((addr >> 20) & 0x3, (addr >> 14) & 0x7, (addr >> 10) & 0xF, (addr >> 1) & 0xF,
            (addr >> 17) & 0x7)


_KNOWN_SYSREGS: dict[str, tuple[int, int, int, int, int]] = {
    # name: (op0, op1, CRn, CRm, op2)
    # Identification
    "MIDR_EL1": (3, 0, 0, 0, 0),
    "MPIDR_EL1": (3, 0, 0, 0, 5),
    "REVIDR_EL1": (3, 0, 0, 0, 6),
    "ID_AA64PFR0_EL1": (3, 0, 0, 4, 0),
    "ID_AA64PFR1_EL1": (3, 0, 0, 4, 1),
    "ID_AA64ZFR0_EL1": (3, 0, 0, 4, 4),
    "ID_AA64DFR0_EL1": (3, 0, 0, 5, 0),
    "ID_AA64DFR1_EL1": (3, 0, 0, 5, 1),
    "ID_AA64ISAR0_EL1": (3, 0, 0, 6, 0),
    "ID_AA64ISAR1_EL1": (3, 0, 0, 6, 1),
    "ID_AA64ISAR2_EL1": (3, 0, 0, 6, 2),
    "ID_AA64MMFR0_EL1": (3, 0, 0, 7, 0),
    "ID_AA64MMFR1_EL1": (3, 0, 0, 7, 1),
    "ID_AA64MMFR2_EL1": (3, 0, 0, 7, 2),
    "CCSIDR_EL1": (3, 1, 0, 0, 0),
    "CLIDR_EL1": (3, 1, 0, 0, 1),
    "CSSELR_EL1": (3, 2, 0, 0, 0),
    "CTR_EL0": (3, 3, 0, 0, 1),
    "DCZID_EL0": (3, 3, 0, 0, 7),
    # EL1 memory system and exception state
    "SCTLR_EL1": (3, 0, 1, 0, 0),
    "ACTLR_EL1": (3, 0, 1, 0, 1),
    "CPACR_EL1": (3, 0, 1, 0, 2),
    "TTBR0_EL1": (3, 0, 2, 0, 0),
    "TTBR1_EL1": (3, 0, 2, 0, 1),
    "TCR_EL1": (3, 0, 2, 0, 2),
    "AFSR0_EL1": (3, 0, 5, 1, 0),
    "AFSR1_EL1": (3, 0, 5, 1, 1),
    "ESR_EL1": (3, 0, 5, 2, 0),
    "FAR_EL1": (3, 0, 6, 0, 0),
    "PAR_EL1": (3, 0, 7, 4, 0),
    "MAIR_EL1": (3, 0, 10, 2, 0),
    "AMAIR_EL1": (3, 0, 10, 3, 0),
    "VBAR_EL1": (3, 0, 12, 0, 0),
    "CONTEXTIDR_EL1": (3, 0, 13, 0, 1),
    "TPIDR_EL1": (3, 0, 13, 0, 4),
    "CNTKCTL_EL1": (3, 0, 14, 1, 0),
    # Debug
    "MDSCR_EL1": (2, 0, 0, 2, 2),
    "OSLAR_EL1": (2, 0, 1, 0, 4),
    "OSLSR_EL1": (2, 0, 1, 1, 4),
    "OSDLR_EL1": (2, 0, 1, 3, 4),
    # GICv3 CPU interface
    "ICC_PMR_EL1": (3, 0, 4, 6, 0),
    "ICC_DIR_EL1": (3, 0, 12, 11, 1),
    "ICC_RPR_EL1": (3, 0, 12, 11, 3),
    "ICC_SGI1R_EL1": (3, 0, 12, 11, 5),
    "ICC_ASGI1R_EL1": (3, 0, 12, 11, 6),
    "ICC_SGI0R_EL1": (3, 0, 12, 11, 7),
    "ICC_IAR1_EL1": (3, 0, 12, 12, 0),
    "ICC_EOIR1_EL1": (3, 0, 12, 12, 1),
    "ICC_HPPIR1_EL1": (3, 0, 12, 12, 2),
    "ICC_BPR1_EL1": (3, 0, 12, 12, 3),
    "ICC_CTLR_EL1": (3, 0, 12, 12, 4),
    "ICC_SRE_EL1": (3, 0, 12, 12, 5),
    "ICC_IGRPEN0_EL1": (3, 0, 12, 12, 6),
    "ICC_IGRPEN1_EL1": (3, 0, 12, 12, 7),
    # Generic timer
    "CNTFRQ_EL0": (3, 3, 14, 0, 0),
    "CNTPCT_EL0": (3, 3, 14, 0, 1),
    "CNTVCT_EL0": (3, 3, 14, 0, 2),
    "CNTP_TVAL_EL0": (3, 3, 14, 2, 0),
    "CNTP_CTL_EL0": (3, 3, 14, 2, 1),
    "CNTP_CVAL_EL0": (3, 3, 14, 2, 2),
    "CNTV_TVAL_EL0": (3, 3, 14, 3, 0),
    "CNTV_CTL_EL0": (3, 3, 14, 3, 1),
    "CNTV_CVAL_EL0": (3, 3, 14, 3, 2),
    # PMU
    "PMCR_EL0": (3, 3, 9, 12, 0),
    "PMUSERENR_EL0": (3, 3, 9, 14, 0),
}

SYSREGS: dict[str, SysRegAddr] = {
    name: sysreg_addr(*enc) for name, enc in _KNOWN_SYSREGS.items()
}
"""Well-known system registers by name → ISS address."""

_SYSREG_NAMES: dict[int, str] = {int(addr): name for name, addr in SYSREGS.items()}

ICC_SGI1R_EL1 = SYSREGS["ICC_SGI1R_EL1"]
CNTV_CTL_EL0 = SYSREGS["CNTV_CTL_EL0"]
CNTP_CTL_EL0 = SYSREGS["CNTP_CTL_EL0"]
CNTPCT_EL0 = SYSREGS["CNTPCT_EL0"]


def sysreg_by_name(name: str) -> SysRegAddr:
    try:
        return SYSREGS[name.upper()]
    except KeyError:
        raise InvalidInput(f"unknown system register name {name!r}") from None


def sysreg_name(addr: int) -> str:
    """``CNTV_CTL_EL0`` for a known register, else the generic ``S3_3_C14_C3_1`` form."""
    name = _SYSREG_NAMES.get(int(addr))
    if name is not None:
        return name
    op0, op1, crn, crm, op2 = sysreg_fields(addr)
    return f"S{op0}_{op1}_C{crn}_C{crm}_{op2}"

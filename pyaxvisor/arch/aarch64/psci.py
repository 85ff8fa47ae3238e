"""PSCI 1.1 (Arm DEN 0022) and SMCCC architecture calls (Arm DEN 0028) for guests.

The guest calls firmware with HVC #0 or SMC #0, the function ID in W0 and
arguments in X1..X3. SMCCC function IDs::

    31     1 = fast call
    30     1 = SMC64/HVC64 convention (X registers), 0 = SMC32/HVC32 (W registers)
    29..24 owning entity: 0 Arm architecture calls, 4 standard secure service (PSCI), ...
    16     SVE live-state hint (SMCCC 1.3) -- ignored, as KVM does
    15..0  function number

:func:`handle_psci` serves the Arm-architecture (0x8000_xxxx / 0xC000_xxxx) and
standard-secure-service (0x8400_xxxx / 0xC400_xxxx) fast-call ranges, which
hold PSCI (function numbers 0x00..0x1F) and the SMCCC_VERSION /
SMCCC_ARCH_FEATURES calls. Any other ID in those ranges (TRNG, SDEI, FF-A,
MIGRATE, SYSTEM_SUSPEND, the Spectre workaround calls ...) answers
NOT_SUPPORTED. IDs outside them are not ours: :func:`handle_psci` returns None
and the caller reports a plain hypercall.

Conventions chosen (and why):

* The function ID is W0 (SMCCC: "the Function Identifier is passed in W0");
  the upper half of X0 is ignored, as firmware and KVM do.
* For SMC32 IDs the arguments are the W registers: X1..X3 are masked to 32
  bits, so a 32-bit CPU_ON cannot name an Aff3 (as the spec intends).
* Return values go to X0 as 64-bit two's complement **for every ID, including
  32-bit ones**: NOT_SUPPORTED is ``0xffff_ffff_ffff_ffff``, not
  ``0x0000_0000_ffff_ffff``. SMCCC (DEN 0028B onwards) defines the unknown-
  function result as "a sign-extended value of -1 returned in R0, W0 or X0";
  TF-A and KVM both sign-extend; callers of 32-bit functions only look at W0,
  so the two choices agree there. See :func:`encode_return`.
* PSCI_VERSION reports 1.1 (``0x10001``): SYSTEM_RESET2 and PSCI_FEATURES
  are offered.
* SMCCC_VERSION reports **1.1** (``0x10001``) and SMCCC_ARCH_FEATURES answers
  NOT_SUPPORTED for every query. This is what KVM offers a guest, and what
  Linux needs to *learn* that no firmware workaround exists: Linux calls
  SMCCC_VERSION only after PSCI_FEATURES(SMCCC_VERSION) succeeds (so that
  query answers SUCCESS), then probes SMCCC_ARCH_WORKAROUND_1/2/3 through
  SMCCC_ARCH_FEATURES and treats NOT_SUPPORTED as "no firmware mitigation"
  (reported in sysfs; boot is unaffected). Reporting 1.0 would also boot but
  leave the guest unable to ask. Note that with SMCCC >= 1.1 over HVC, Linux
  also probes the vendor hypervisor UID (``0x8600ff01``); that ID is outside
  the ranges above, so it reaches the VM as a plain hypercall, which should
  answer -1 (NOT_SUPPORTED) for SMCCC fast-call IDs it does not know
  (:func:`is_smccc_fast_call` tells them apart).
* CPU_SUSPEND is emulated as standby (WFI): X0 = SUCCESS and a Halt exit, for
  power-down requests too; PSCI allows a power-down request to be satisfied by
  a shallower state, and KVM does the same, so every register is preserved.
* MIGRATE_INFO_TYPE answers 2, "Trusted OS not present or does not require
  migration", so MIGRATE and MIGRATE_INFO_UP_CPU are not offered.

pyaxvisor's own hypercalls (:func:`is_pyaxvisor_hypercall`) are the SMCCC fast
calls of owner 6, "vendor specific hypervisor service calls", with function
numbers 0x0000..0xFEFF: ``0x8600_0000..0x8600_FEFF`` (SMC32/HVC32) and
``0xC600_0000..0xC600_FEFF`` (SMC64/HVC64); the SVE hint bit 16 is ignored, as
everywhere. They reach the VM as ``Hypercall`` exits. Function numbers
0xFF00..0xFFFF of the owner are SMCCC's general queries (call count, UID,
revision), which Linux asks (0x8600_FF01) to find its hypervisor: they are not
pyaxvisor's and get NOT_SUPPORTED, like every ID that is neither PSCI/SMCCC
(:func:`handle_psci`) nor in this range, when the vCPU is the guest's SMCCC
conduit (:class:`~pyaxvisor.arch.aarch64.vcpu.Aarch64VCpuSetupConfig`), as KVM
answers calls it does not implement.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pyaxvisor.arch.aarch64.context_frame import Aarch64ContextFrame
from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.vcpu.exit import (
    CpuDown,
    CpuUp,
    ExitReason,
    Halt,
    Nothing,
    SystemDown,
)

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1

SMCCC_FAST_CALL = 1 << 31
SMCCC_64 = 1 << 30
SMCCC_OEN_SHIFT = 24
SMCCC_OEN_MASK = 0x3F
SMCCC_SVE_HINT = 1 << 16
SMCCC_OEN_ARCH = 0
SMCCC_OEN_STANDARD = 4
SMCCC_OEN_VENDOR_HYP = 6
#: Function numbers of an owner from here on are SMCCC's general service queries.
SMCCC_GENERAL_QUERIES = 0xFF00

MPIDR_AFF_MASK = 0xFF_00FF_FFFF
"""Aff3 (bits 39:32), Aff2, Aff1, Aff0 (bits 23:0) of an MPIDR value."""

PSCI_VERSION_1_1 = 0x0001_0001
SMCCC_VERSION_1_1 = 0x0001_0001
MIGRATE_INFO_TYPE_NO_TOS_MIGRATION = 2
SYSTEM_RESET2_WARM_RESET = 0
SYSTEM_RESET2_VENDOR = 1 << 31


class PsciFn(enum.IntEnum):
    """PSCI function IDs (``_32`` = SMC32 convention, ``_64`` = SMC64)."""

    PSCI_VERSION = 0x8400_0000
    CPU_SUSPEND_32 = 0x8400_0001
    CPU_SUSPEND_64 = 0xC400_0001
    CPU_OFF = 0x8400_0002
    CPU_ON_32 = 0x8400_0003
    CPU_ON_64 = 0xC400_0003
    AFFINITY_INFO_32 = 0x8400_0004
    AFFINITY_INFO_64 = 0xC400_0004
    MIGRATE_32 = 0x8400_0005
    MIGRATE_64 = 0xC400_0005
    MIGRATE_INFO_TYPE = 0x8400_0006
    MIGRATE_INFO_UP_CPU_32 = 0x8400_0007
    MIGRATE_INFO_UP_CPU_64 = 0xC400_0007
    SYSTEM_OFF = 0x8400_0008
    SYSTEM_RESET = 0x8400_0009
    PSCI_FEATURES = 0x8400_000A
    CPU_FREEZE = 0x8400_000B
    CPU_DEFAULT_SUSPEND_32 = 0x8400_000C
    CPU_DEFAULT_SUSPEND_64 = 0xC400_000C
    NODE_HW_STATE_32 = 0x8400_000D
    NODE_HW_STATE_64 = 0xC400_000D
    SYSTEM_SUSPEND_32 = 0x8400_000E
    SYSTEM_SUSPEND_64 = 0xC400_000E
    PSCI_SET_SUSPEND_MODE = 0x8400_000F
    PSCI_STAT_RESIDENCY_32 = 0x8400_0010
    PSCI_STAT_RESIDENCY_64 = 0xC400_0010
    PSCI_STAT_COUNT_32 = 0x8400_0011
    PSCI_STAT_COUNT_64 = 0xC400_0011
    SYSTEM_RESET2_32 = 0x8400_0012
    SYSTEM_RESET2_64 = 0xC400_0012


class SmcccFn(enum.IntEnum):
    """SMCCC Arm-architecture service calls."""

    SMCCC_VERSION = 0x8000_0000
    SMCCC_ARCH_FEATURES = 0x8000_0001
    SMCCC_ARCH_SOC_ID = 0x8000_0002
    SMCCC_ARCH_WORKAROUND_3 = 0x8000_3FFF
    SMCCC_ARCH_WORKAROUND_2 = 0x8000_7FFF
    SMCCC_ARCH_WORKAROUND_1 = 0x8000_8000


class PsciRet(enum.IntEnum):
    """PSCI return codes (SMCCC's NOT_SUPPORTED is the same -1)."""

    SUCCESS = 0
    NOT_SUPPORTED = -1
    INVALID_PARAMETERS = -2
    DENIED = -3
    ALREADY_ON = -4
    ON_PENDING = -5
    INTERNAL_FAILURE = -6
    NOT_PRESENT = -7
    DISABLED = -8
    INVALID_ADDRESS = -9


class AffinityState(enum.IntEnum):
    """AFFINITY_INFO answers."""

    ON = 0
    OFF = 1
    ON_PENDING = 2


IMPLEMENTED_FUNCTIONS: frozenset[int] = frozenset({
    PsciFn.PSCI_VERSION,
    PsciFn.CPU_SUSPEND_32, PsciFn.CPU_SUSPEND_64,
    PsciFn.CPU_OFF,
    PsciFn.CPU_ON_32, PsciFn.CPU_ON_64,
    PsciFn.AFFINITY_INFO_32, PsciFn.AFFINITY_INFO_64,
    PsciFn.MIGRATE_INFO_TYPE,
    PsciFn.SYSTEM_OFF,
    PsciFn.SYSTEM_RESET,
    PsciFn.PSCI_FEATURES,
    PsciFn.SYSTEM_RESET2_32, PsciFn.SYSTEM_RESET2_64,
    SmcccFn.SMCCC_VERSION,
    SmcccFn.SMCCC_ARCH_FEATURES,
})
"""What PSCI_FEATURES reports as present (answer 0: for CPU_SUSPEND that means the
original power_state format and platform-coordinated mode)."""


@runtime_checkable
class PsciPlatform(Protocol):
    """What PSCI needs from the VM."""

    def affinity_info(self, target_mpidr: int, lowest_level: int) -> int:
        """State of the vCPU(s) at ``target_mpidr`` (Aff fields only):
        0 ON, 1 OFF, 2 ON_PENDING, or a negative PSCI error code such as
        INVALID_PARAMETERS (-2) for an MPIDR no vCPU has."""
        ...


def smccc_function_id(fid: int) -> int:
    """The SMCCC function ID in ``fid`` (a raw X0): W0 without the SVE hint bit."""
    return fid & U32 & ~SMCCC_SVE_HINT


def is_smccc_fast_call(fid: int) -> bool:
    """Whether W0 is an SMCCC fast call (bit 31 set, bits 23:17 zero)."""
    fid = smccc_function_id(fid)
    return bool(fid & SMCCC_FAST_CALL) and (fid >> 17) & 0x7F == 0


def is_psci_or_smccc_arch(fid: int) -> bool:
    """Whether :func:`handle_psci` owns ``fid``: a fast call of the Arm-architecture
    or standard-secure-service owner (0x8000_xxxx, 0xC000_xxxx, 0x8400_xxxx, 0xC400_xxxx)."""
    if not is_smccc_fast_call(fid):
        return False
    oen = (smccc_function_id(fid) >> SMCCC_OEN_SHIFT) & SMCCC_OEN_MASK
    return oen in (SMCCC_OEN_ARCH, SMCCC_OEN_STANDARD)


def is_pyaxvisor_hypercall(fid: int) -> bool:
    """Whether W0 names one of pyaxvisor's own hypercalls: an SMCCC fast call of the
    vendor-specific hypervisor service owner (6) below the general queries, i.e.
    0x8600_0000..0x8600_FEFF or 0xC600_0000..0xC600_FEFF (see the module doc)."""
    if not is_smccc_fast_call(fid):
        return False
    func = smccc_function_id(fid)
    return ((func >> SMCCC_OEN_SHIFT) & SMCCC_OEN_MASK == SMCCC_OEN_VENDOR_HYP
            and func & 0xFFFF < SMCCC_GENERAL_QUERIES)


def is_smc64(fid: int) -> bool:
    return bool(smccc_function_id(fid) & SMCCC_64)


def encode_return(value: int) -> int:
    """A PSCI/SMCCC result as the X0 value: 64-bit two's complement (-1 → 0xffff...ffff).

    Used for 32-bit function IDs too (SMCCC: the -1 result is sign-extended);
    the VM uses this when it overrides the CPU_ON result with ``set_return_value``.
    """
    if not isinstance(value, int) or not -(1 << 63) <= value <= U64:
        raise InvalidInput(f"PSCI return value {value!r} does not fit 64 bits")
    return value & U64


def handle_psci(
    fid: int,
    args: Sequence[int],
    frame: Aarch64ContextFrame,
    platform: PsciPlatform,
) -> ExitReason | None:
    """Perform the PSCI/SMCCC call ``fid`` (X0) with ``args`` (X1, X2, X3, ...).

    Returns None if ``fid`` is not in the ranges this module owns (the caller
    then treats it as a plain hypercall). Otherwise sets X0 in ``frame`` where
    the call returns a value and gives the exit reason: ``Nothing`` for calls
    completed here, or ``CpuUp``/``CpuDown``/``SystemDown``/``Halt`` for the VM.
    ELR is not touched (the caller owns instruction stepping).

    CPU_ON returns ``CpuUp`` with X0 already SUCCESS; the VM overrides it via
    ``set_return_value(encode_return(PsciRet.ALREADY_ON))`` etc. if the target
    cannot start.
    """
    if not isinstance(fid, int) or isinstance(fid, bool):
        raise InvalidInput(f"function ID must be an int, got {fid!r}")
    if not is_psci_or_smccc_arch(fid):
        return None
    if len(args) < 3:
        raise InvalidInput(f"PSCI needs the argument registers X1..X3, got {len(args)} values")
    func = smccc_function_id(fid)
    arg_mask = U64 if func & SMCCC_64 else U32
    a1, a2, a3 = (int(v) & arg_mask for v in args[:3])

    def ret(value: int) -> None:
        frame.set_gpr(0, encode_return(value))

    match func:
        case PsciFn.PSCI_VERSION:
            ret(PSCI_VERSION_1_1)
        case PsciFn.CPU_SUSPEND_32 | PsciFn.CPU_SUSPEND_64:
            ret(PsciRet.SUCCESS)
            return Halt()
        case PsciFn.CPU_OFF:
            return CpuDown(0)
        case PsciFn.CPU_ON_32 | PsciFn.CPU_ON_64:
            ret(PsciRet.SUCCESS)
            return CpuUp(target_cpu=a1 & MPIDR_AFF_MASK, entry_point=GuestPhysAddr(a2), arg=a3)
        case PsciFn.AFFINITY_INFO_32 | PsciFn.AFFINITY_INFO_64:
            answer = platform.affinity_info(a1 & MPIDR_AFF_MASK, a2 & U32)
            if (not isinstance(answer, int) or isinstance(answer, bool)
                    or not PsciRet.INVALID_ADDRESS <= answer <= AffinityState.ON_PENDING):
                raise InvalidInput(f"affinity_info must answer 0, 1, 2 or a PSCI error code, "
                                   f"got {answer!r}")
            ret(answer)
        case PsciFn.MIGRATE_INFO_TYPE:
            ret(MIGRATE_INFO_TYPE_NO_TOS_MIGRATION)
        case PsciFn.SYSTEM_OFF:
            return SystemDown(reset=False)
        case PsciFn.SYSTEM_RESET:
            return SystemDown(reset=True)
        case PsciFn.SYSTEM_RESET2_32 | PsciFn.SYSTEM_RESET2_64:
            reset_type = a1 & U32
            if reset_type == SYSTEM_RESET2_WARM_RESET or reset_type & SYSTEM_RESET2_VENDOR:
                return SystemDown(reset=True)
            ret(PsciRet.INVALID_PARAMETERS)  # reserved architectural reset type
        case PsciFn.PSCI_FEATURES:
            queried = a1 & U32
            ret(PsciRet.SUCCESS if queried in IMPLEMENTED_FUNCTIONS else PsciRet.NOT_SUPPORTED)
        case SmcccFn.SMCCC_VERSION:
            ret(SMCCC_VERSION_1_1)
        case SmcccFn.SMCCC_ARCH_FEATURES:
            ret(PsciRet.NOT_SUPPORTED)
        case _:
            ret(PsciRet.NOT_SUPPORTED)
    return Nothing()

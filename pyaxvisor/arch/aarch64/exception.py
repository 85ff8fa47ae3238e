"""Synchronous exceptions from an EL1 guest to EL2 → exit reasons (arm_vcpu ``exception.rs``).

:func:`handle_sync_exception` decodes one trap from the saved ESR_EL2,
FAR_EL2 and HPFAR_EL2, edits the trap frame (ELR stepping, X0 results of
PSCI calls) and returns the :class:`~pyaxvisor.vcpu.exit.ExitReason` the VM
must act on. Anything it cannot describe faithfully raises
:class:`UnhandledTrap` carrying the decoded syndrome and a register dump;
ELR is never advanced for a trap that raised.

ELR stepping rules:

* Data aborts emulated as MMIO, MSR/MRS, WFI/WFE: ELR points *at* the
  instruction; step it by the ESR.IL length (4, or 2 for a 16-bit T32 one).
* SMC trapped by HCR_EL2.TSC: ELR points *at* the SMC; step by 4.
* HVC: ELR already points *after* the HVC (HVC is an exception-generating
  instruction, its preferred return address is the next instruction). It is
  NOT stepped again; doing so skips the instruction after the call, which for
  PSCI CPU_ON resumes the caller one instruction too far.
* Nested page faults (stage-2 permission / access-flag faults): ELR untouched,
  the instruction must be re-executed once the VM fixed the mapping.

Data aborts from the guest (EC 0x24):

* Stage-2 translation fault with ISV=1: MMIO. GPA = HPFAR_EL2.FIPA (bits 43:4,
  IPA bits 51:12) << 8 | FAR_EL2[11:0]. A store → ``MmioWrite`` with the
  source register (XZR = 0) masked to the access width; a load → ``MmioRead``
  (register SRT, W/X width from SF, sign extension from SSE).
* Translation fault with CM=1 (DC/IC by VA on an unmapped IPA): the line
  cannot be cached, so the maintenance is a no-op; the instruction is skipped
  and ``Nothing`` returned. KVM does the same.
* Translation fault with ISV=0 (LDP/STP, writeback addressing, SIMD&FP
  registers, atomics, DC ZVA ...): the hardware does not describe the access,
  there is nothing to emulate without an instruction decoder → UnhandledTrap.
* Stage-2 **permission fault on a store with ISV=1**: a write to memory mapped
  read-only (a ROM device such as a flash bank in read-array mode) → ``MmioWrite``,
  as KVM turns writes to read-only memory slots into MMIO exits.
* Other stage-2 **permission or access-flag faults**: the IPA is mapped, so this is
  not MMIO. It is returned as ``NestedPageFault(addr, WRITE or READ)`` rather
  than an error: the address space owns stage-2 permissions and is the one
  place that knows whether it is a guest bug (write to read-only memory) or
  something to resolve (lazy population, dirty logging, copy-on-write). This
  is the same exit x86 gives for an EPT violation outside MMIO. Caveat for
  engines: on real hardware HPFAR_EL2 may be UNKNOWN for a stage-2 permission
  fault that is not on a stage-1 walk, so the engine must pass an HPFAR value
  derived from ``AT S1E1R`` of FAR (arm_vcpu ``translate_far_to_hpfar``, KVM
  ``__translate_far_to_hpfar``) in that case.
* S1PTW=1 (the guest's own page tables are not in RAM), FnV=1 (no FAR), and
  any other fault status (external abort, alignment, TLB conflict, address
  size ...) → UnhandledTrap.

An access to an address where there is no RAM and no device is not decoded here:
the vCPU turns such a stage-2 translation fault (:func:`is_unclaimed_fault`) into
the synchronous external abort the guest takes on QEMU's ``virt`` board
(:func:`external_abort_syndrome`), when its VM says which addresses are unclaimed.
"""

from __future__ import annotations

from collections.abc import Callable

from pyaxvisor.arch.aarch64.context_frame import Aarch64ContextFrame
from pyaxvisor.arch.aarch64.esr import (
    EC,
    ICC_SGI1R_EL1,
    Esr,
    FaultKind,
    describe_fsc,
)
from pyaxvisor.arch.aarch64.psci import PsciPlatform, handle_psci
from pyaxvisor.errors import InvalidInput, Unsupported
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.flags import AccessFlags
from pyaxvisor.vcpu.exit import (
    ExitReason,
    Halt,
    Hypercall,
    MmioRead,
    MmioWrite,
    NestedPageFault,
    Nothing,
    SendIPI,
    SysRegRead,
    SysRegWrite,
)
from pyaxvisor.vcpu.width import AccessWidth

U64 = (1 << 64) - 1
HPFAR_FIPA_MASK = ((1 << 40) - 1) << 4
"""HPFAR_EL2.FIPA, bits 43:4 (IPA bits 51:12). Bit 63 (NS) and the rest are dropped."""


class UnhandledTrap(Unsupported):
    """A guest trap this layer cannot turn into an exit reason.

    The message names the problem, the exception class, ESR/FAR/HPFAR, the
    decoded syndrome and the guest registers at the time of the trap.
    """

    def __init__(
        self,
        reason: str,
        *,
        esr: Esr,
        far: int,
        hpfar: int,
        frame: Aarch64ContextFrame,
        detail: str = "",
    ) -> None:
        self.reason = reason
        self.esr = esr
        self.ec = esr.ec
        self.far = far
        self.hpfar = hpfar
        self.detail = detail
        self.registers = frame.dump()
        lines = [
            f"unhandled guest trap: {reason}",
            f"  {esr.describe_ec()}",
            f"  ESR_EL2={esr.value:#x} FAR_EL2={far:#x} HPFAR_EL2={hpfar:#x} "
            f"ELR_EL2={frame.elr:#x}",
        ]
        if detail:
            lines.append(f"  {detail}")
        lines.append("  guest registers:")
        lines.extend(f"    {line}" for line in self.registers.splitlines())
        super().__init__("\n".join(lines))


#: DFSC/IFSC of a synchronous external abort (not on a translation table walk).
FSC_SYNC_EXTERNAL = 0x10
_ESR_IL = 1 << 25
_ESR_WNR = 1 << 6
_ESR_CM = 1 << 8
_ESR_S1PTW = 1 << 7


def is_unclaimed_fault(esr: int) -> bool:
    """Whether ESR_EL2 is a stage-2 translation fault (any level) of an instruction
    fetch (EC 0x20) or of a data access that is not cache maintenance (EC 0x24, CM 0),
    not on the guest's own stage-1 walk (S1PTW 0): an access to an IPA that has no
    RAM, which the VM may find has no device either."""
    ec = esr >> 26
    if ec not in (EC.IABT_LOW, EC.DABT_LOW) or esr & _ESR_S1PTW or (esr & 0x3C) != 0x04:
        return False
    return ec == EC.IABT_LOW or not esr & _ESR_CM


def external_abort_syndrome(esr: int, same_el: bool) -> int:
    """ESR_EL1 of the synchronous external abort the guest takes for the access that
    gave stage-2 syndrome ``esr`` (:func:`is_unclaimed_fault`), as QEMU's ``virt``
    board gives it for an address where nothing is mapped: an instruction abort (EC
    0x20 from EL0, 0x21 from EL1) or a data abort (EC 0x24/0x25) with IL set, no
    instruction syndrome (ISV 0), FAR valid (FnV 0), EA 0 (a decode error, as
    QEMU's MEMTX_DECODE_ERROR), WnR of the access for data, and fault status 0x10.
    FAR_EL1 is FAR_EL2 (the virtual address) and ELR_EL1 the faulting
    instruction."""
    fetch = esr >> 26 == EC.IABT_LOW
    ec = (EC.IABT_LOW if fetch else EC.DABT_LOW) + (1 if same_el else 0)
    wnr = 0 if fetch else esr & _ESR_WNR
    return (ec << 26) | _ESR_IL | wnr | FSC_SYNC_EXTERNAL


def fault_ipa(far: int, hpfar: int) -> GuestPhysAddr:
    """The faulting guest physical address of a stage-2 abort:
    HPFAR_EL2.FIPA (IPA page number) joined with the page offset from FAR_EL2."""
    return GuestPhysAddr(((hpfar & HPFAR_FIPA_MASK) << 8) | (far & 0xFFF))


def decode_sgi1r(value: int) -> SendIPI:
    """An ICC_SGI1R_EL1 write as a ``SendIPI``.

    ICC_SGI1R_EL1: TargetList 15:0, Aff1 23:16, INTID 27:24, Aff2 39:32,
    IRM 40, RS 47:44, Aff3 55:48.

    * ``vector`` = INTID (SGI 0..15).
    * IRM=1 ("all PEs but self"): ``send_to_all=True``, targets 0.
    * Otherwise ``target_cpu`` is a bitmap over Aff0 values: bit ``n`` targets
      Aff0 = n. TargetList is shifted by 16 * RS (RS selects Aff0 16*RS..16*RS+15);
      with RS = 0, as Linux uses for clusters of at most 16 CPUs, it is exactly
      TargetList. ``target_cpu_aux`` is the cluster in MPIDR layout,
      ``Aff3 << 32 | Aff2 << 16 | Aff1 << 8`` (Aff0 = 0), so the target of bit
      ``n`` is the vCPU whose MPIDR affinity is ``target_cpu_aux | n``.
    * ``send_to_self`` is always False (SGI1R cannot express "self only").
    """
    intid = (value >> 24) & 0xF
    if (value >> 40) & 1:
        return SendIPI(target_cpu=0, target_cpu_aux=0, send_to_all=True, send_to_self=False,
                       vector=intid)
    target_list = value & 0xFFFF
    rs = (value >> 44) & 0xF
    aff1 = (value >> 16) & 0xFF
    aff2 = (value >> 32) & 0xFF
    aff3 = (value >> 48) & 0xFF
    return SendIPI(
        target_cpu=target_list << (16 * rs),
        target_cpu_aux=(aff3 << 32) | (aff2 << 16) | (aff1 << 8),
        send_to_all=False,
        send_to_self=False,
        vector=intid,
    )


def handle_sync_exception(
    frame: Aarch64ContextFrame,
    esr: Esr | int,
    far: int,
    hpfar: int,
    platform: PsciPlatform,
) -> ExitReason:
    """Handle one synchronous trap from the guest; see the module docstring."""
    if type(esr) is int and (esr & _FAST_MMIO_MASK) == _FAST_MMIO_VALUE:
        return _fast_mmio(frame, esr, far, hpfar)
    if not isinstance(frame, Aarch64ContextFrame):
        raise InvalidInput(f"frame must be an Aarch64ContextFrame, got {type(frame).__name__}")
    esr = esr if isinstance(esr, Esr) else Esr(esr)
    for name, value in (("FAR_EL2", far), ("HPFAR_EL2", hpfar)):
        if not isinstance(value, int) or not 0 <= value <= U64:
            raise InvalidInput(f"{name} must be an unsigned 64-bit integer, got {value!r}")

    def trap(reason: str, detail: str = "") -> UnhandledTrap:
        return UnhandledTrap(reason, esr=esr, far=far, hpfar=hpfar, frame=frame, detail=detail)

    ec = esr.ec
    match ec:
        case EC.DABT_LOW:
            return _handle_data_abort(frame, esr, far, hpfar, trap)
        case EC.HVC64:
            # ELR already points after the HVC: no stepping.
            return _dispatch_call(frame, platform)
        case EC.SMC64:
            # ELR points at the trapped SMC: step over it once the call is decoded.
            reason = _dispatch_call(frame, platform)
            frame.advance_pc(esr.instruction_length)
            return reason
        case EC.SYS64:
            return _handle_sysreg(frame, esr)
        case EC.WFX:
            frame.advance_pc(esr.instruction_length)
            return Halt()
        case EC.IABT_LOW:
            raise trap("instruction abort: the guest fetched from an address it cannot execute",
                       f"GPA={int(fault_ipa(far, hpfar)):#x} "
                       f"{esr.instruction_abort().describe()}")
        case _ if ec is not None and ec.is_aarch32:
            raise trap(f"AArch32 guest trap {ec.name} is not supported (AArch64 guests only)",
                       f"ISS={esr.iss:#x}")
        case _:
            raise trap(f"no handler for exception class {esr.ec_name}", f"ISS={esr.iss:#x}")


# The common case, decoded with plain integer operations (it is every MMIO access):
# EC 0x24 (data abort from a lower EL), IL 1, ISV 1, FnV 0, CM 0, S1PTW 0 and a
# translation fault (DFSC 0b0001xx, any level 0-3).
_FAST_MMIO_MASK = (0x3F << 26) | (1 << 25) | (1 << 24) | (1 << 10) | (1 << 8) | (1 << 7) | 0x3C
_FAST_MMIO_VALUE = (0x24 << 26) | (1 << 25) | (1 << 24) | 0x04
_WIDTHS = (AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword, AccessWidth.Qword)


def _fast_mmio(frame: Aarch64ContextFrame, esr: int, far: int, hpfar: int) -> ExitReason:
    """The fields as in :class:`~pyaxvisor.arch.aarch64.esr.DataAbortIss`: SAS 23:22,
    SSE 21, SRT 20:16, SF 15, WnR 6; GPA = HPFAR.FIPA << 8 | FAR[11:0]."""
    addr = fault_ipa(far, hpfar)
    width = _WIDTHS[(esr >> 22) & 3]
    srt = (esr >> 16) & 0x1F
    frame.elr = frame.elr + 4
    if esr & (1 << 6):
        data = 0 if srt == 31 else frame.x[srt] & width.mask
        return MmioWrite(addr, width, data)
    reg_width = AccessWidth.Qword if esr & (1 << 15) else AccessWidth.Dword
    if reg_width < width:
        frame.elr = frame.elr - 4
        return handle_sync_exception(frame, Esr(esr), far, hpfar, _NO_PLATFORM)
    return MmioRead(addr, width, srt, reg_width, bool(esr & (1 << 21)))


class _NoPlatform:
    def affinity_info(self, target_mpidr: int, lowest_level: int) -> int:
        raise AssertionError("not a PSCI call")


_NO_PLATFORM = _NoPlatform()


def _dispatch_call(frame: Aarch64ContextFrame, platform: PsciPlatform) -> ExitReason:
    """HVC/SMC: PSCI/SMCCC if X0 names one, else a hypercall (nr = X0, args = X1..X6)."""
    args = tuple(frame.gpr(i) for i in range(1, 7))
    reason = handle_psci(frame.gpr(0), args, frame, platform)
    if reason is not None:
        return reason
    return Hypercall(nr=frame.gpr(0), args=args)  # type: ignore[arg-type]


def _handle_sysreg(frame: Aarch64ContextFrame, esr: Esr) -> ExitReason:
    iss = esr.sysreg()
    if iss.is_read:
        frame.advance_pc(esr.instruction_length)
        return SysRegRead(addr=iss.addr, reg=iss.rt)
    value = frame.gpr(iss.rt)
    frame.advance_pc(esr.instruction_length)
    if iss.addr == ICC_SGI1R_EL1:
        return decode_sgi1r(value)
    return SysRegWrite(addr=iss.addr, value=value)


def _handle_data_abort(
    frame: Aarch64ContextFrame,
    esr: Esr,
    far: int,
    hpfar: int,
    trap: Callable[[str, str], UnhandledTrap],
) -> ExitReason:
    da = esr.data_abort()
    addr = fault_ipa(far, hpfar)
    detail = f"GPA={int(addr):#x} {da.describe()}"
    kind = da.fault_kind

    if da.s1ptw:
        raise trap("stage-2 fault on the guest's own stage-1 page-table walk: its translation "
                   "tables are not in guest RAM", detail)

    if kind is FaultKind.TRANSLATION:
        if da.cm:
            # Cache maintenance by VA on an unmapped IPA: nothing cached, nothing to do.
            frame.advance_pc(esr.instruction_length)
            return Nothing()
        if not da.isv:
            raise trap("data abort with ISV=0: the hardware gave no instruction syndrome "
                       "(load/store pair, writeback addressing, SIMD&FP register, atomic or "
                       "exclusive access), so the MMIO access cannot be emulated", detail)
        if da.fnv:
            raise trap("data abort with FnV=1: FAR_EL2 is not valid, the faulting address "
                       "is unknown", detail)
        width = da.access_width
        if da.is_write:
            data = frame.gpr(da.srt) & width.mask
            frame.advance_pc(esr.instruction_length)
            return MmioWrite(addr=addr, width=width, data=data)
        if da.reg_width < width:
            raise trap(f"inconsistent syndrome: a {width.size}-byte load into a "
                       f"{da.reg_width.size}-byte register", detail)
        frame.advance_pc(esr.instruction_length)
        return MmioRead(addr=addr, width=width, reg=da.srt, reg_width=da.reg_width,
                        signed_ext=da.sse)

    if kind is FaultKind.PERMISSION and da.is_write and da.isv and not da.fnv:
        # A store to memory mapped read-only (a ROM device in read-array mode, as a
        # flash bank): emulated like MMIO, as KVM reports writes to read-only memory
        # slots. The VM decides whether a device takes it.
        width = da.access_width
        data = frame.gpr(da.srt) & width.mask
        frame.advance_pc(esr.instruction_length)
        return MmioWrite(addr=addr, width=width, data=data)

    if kind in (FaultKind.PERMISSION, FaultKind.ACCESS_FLAG):
        return NestedPageFault(addr=addr,
                               access_flags=AccessFlags.WRITE if da.wnr else AccessFlags.READ)

    raise trap(f"data abort with fault status {describe_fsc(da.dfsc)} is neither MMIO nor a "
               "nested page fault", detail)

"""The AArch64 vCPU (arm_vcpu ``Aarch64VCpu``) on the software EL2.

State the vCPU owns (and carries between host CPUs):

* the trap frame (x0-x30, SP_EL0, ELR = guest PC, SPSR = guest PSTATE);
* the guest's EL1 system registers (:data:`EL1_SYSREGS`, SP_EL1, ELR_EL1,
  SPSR_EL1), the generic timer's CTL/CVAL pair for the virtual and physical
  timers and CNTVOFF;
* its EL2 configuration: HCR_EL2, VTCR_EL2, VTTBR_EL2, VMPIDR_EL2.

``bind()`` loads all of it into the calling host thread's CPU (the
:class:`~pyaxvisor.arch.aarch64.pcpu.Aarch64PerCpu` enabled there);
``unbind()`` saves it back. Around each ``run()`` the trap frame is written to
the CPU (only registers that changed) and read back at the trap.

``setup`` sets SPSR = EL1h with D, A, I, F masked; HCR_EL2 = VM | RW | TSC | TWI
(TWI so WFI reaches the hypervisor as Halt; + IMO | FMO unless interrupts are
passed through, so the virtual IRQ line HCR_EL2.VI works); VTCR_EL2 from the
stage-2 geometry (the IPA size) with a 40-bit output size, which covers the
host arena's physical addresses; VMPIDR_EL2 = the configured MPIDR; x0 = the
device-tree address (the arm64 Linux boot protocol).

``run()`` enters the guest and decodes traps with
:func:`~pyaxvisor.arch.aarch64.exception.handle_sync_exception`; exceptions the
guest takes itself (SVC, its own page faults, undefined instructions) are
delivered to its EL1 vectors without leaving ``run()``: inside the CPU with QEMU's
exception entry (``Aarch64Tcg.deliver_in_cpu``), or, when that is off, here with
``deliver_to_el1``; so are traps that decode to ``Nothing``. ``kick()`` (any thread)
ends ``run()`` with ``Nothing``, or ``ExternalInterrupt`` when the HAL has a host IRQ
pending; a change of the IRQ line never ends ``run()``: the running CPU writes the new
level itself (at once on its own thread, after a kick from another; on the stock
library, which cannot be kicked, it stops only to re-enter with the new level).

Devices served inside the CPU (``serve_in_cpu``, MMIO windows only): each window's
guest addresses must be mapped by the VM's stage-2 table onto
``IN_CPU_MMIO_BASE + gpa`` (:data:`~pyaxvisor.engine.tcg.aarch64.IN_CPU_MMIO_BASE`);
the engine calls the device from inside the CPU there, without an exit, and
``served_counts().accesses`` counts those reads and writes.

Interrupts: ``set_irq_line(level)`` drives the virtual IRQ input (from the
vGIC, any thread); ``inject_interrupt(vector)`` hands the vector to the
attached interrupt controller (``attach_interrupt_controller``) or, without one,
asserts the line so the guest takes an IRQ at VBAR_EL1 + 0x280.

What the vCPU serves itself, counted by name in ``served_counts().exits`` (traps
to EL2 that never become exits):

* ``SmcccNotSupported``: with ``Aarch64VCpuSetupConfig.smccc_conduit``, an HVC or
  SMC whose function ID is neither PSCI/SMCCC (answered here in any case) nor one
  of pyaxvisor's hypercalls (:func:`~pyaxvisor.arch.aarch64.psci.is_pyaxvisor_hypercall`)
  gets NOT_SUPPORTED (-1) in X0, as KVM answers; without it every such call is a
  ``Hypercall`` exit (the arm_vcpu contract).
* ``ExternalAbort``: with an ``unclaimed(ipa)`` predicate (the VM's: no RAM and no
  device there), an instruction fetch or a data access that faults at stage 2 on
  such an address makes the guest take the synchronous external abort QEMU's
  ``virt`` board gives (:func:`~pyaxvisor.arch.aarch64.exception.external_abort_syndrome`)
  at its EL1 vectors; ``on_external_abort`` hears of each one. Without the
  predicate such a data access is an MMIO exit and a fetch an ``UnhandledTrap``.

Software step: when the vCPU completes an instruction for the guest (emulates it
and steps ELR), PSTATE.SS goes to 0 so a step the guest set up ends at that
instruction, as KVM does; hardware breakpoints, watchpoints and the step
exception itself are the engine's. The PMU is the engine's too; the vCPU keeps
its state (and the debug registers) over ``unbind``/``bind`` and hands its
interrupt request changes to ``on_pmu_change(vcpu_id)``.

Where the vCPU is: :meth:`Aarch64VCpu.current_pc` (the frame's PC between runs and
after ``unbind``, which keeps it; the engine's while the guest runs).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, Self

from unicorn import arm64_const as a64

from pyaxvisor.arch.aarch64 import gdb as a64gdb
from pyaxvisor.arch.aarch64.context_frame import Aarch64ContextFrame
from pyaxvisor.arch.aarch64.esr import SYSREGS, Esr, sysreg_fields
from pyaxvisor.arch.aarch64.exception import (
    UnhandledTrap,
    external_abort_syndrome,
    fault_ipa,
    handle_sync_exception,
    is_unclaimed_fault,
)
from pyaxvisor.arch.aarch64.pcpu import (
    HCR_FMO,
    HCR_IMO,
    HCR_RW,
    HCR_TSC,
    HCR_TWI,
    HCR_VM,
    current_percpu,
)
from pyaxvisor.arch.aarch64.psci import (
    AffinityState,
    PsciPlatform,
    PsciRet,
    encode_return,
    is_pyaxvisor_hypercall,
)
from pyaxvisor.arch.aarch64.stage1 import translate as stage1_translate
from pyaxvisor.arch.in_cpu import InCpuMmio
from pyaxvisor.arch.soft_cpu import SoftVCpu
from pyaxvisor.engine.tcg.aarch64 import (
    IN_CPU_MMIO_BASE,
    PMU_COUNTERS,
    PSTATE_SS,
    Aarch64Tcg,
    PmuState,
    Trap,
    TrapKind,
)
from pyaxvisor.engine.tcg.exec_lock import ExecLock
from pyaxvisor.engine.tcg.native import TIMER_PHYS, TIMER_VIRT
from pyaxvisor.engine.tcg.xsync import SyncGroup
from pyaxvisor.errors import InvalidInput, NotFound
from pyaxvisor.hal.memory import HostMemory
from pyaxvisor.hal.vcpu_hal import VCpuHal
from pyaxvisor.mm.addr import GuestPhysAddr, HostPhysAddr
from pyaxvisor.mm.addrspace import WrittenRanges
from pyaxvisor.mm.page_table.stage2 import Stage2Format
from pyaxvisor.vcpu.arch_vcpu import InCpuWindow, Served
from pyaxvisor.vcpu.debug import GuestDebug
from pyaxvisor.vcpu.exit import DebugStop, ExitReason, ExternalInterrupt, Hypercall, Nothing

SPSR_EL1H_DAIF = 0x3C5  # M = EL1h (0b0101), D A I F masked (bits 9:6)
STAGE2_PA_BITS = 40

#: EL1/EL0 system registers saved on unbind and restored on bind.
EL1_SYSREGS = ("SCTLR_EL1", "CPACR_EL1", "TTBR0_EL1", "TTBR1_EL1", "TCR_EL1", "AFSR0_EL1",
               "AFSR1_EL1", "ESR_EL1", "FAR_EL1", "PAR_EL1", "MAIR_EL1", "AMAIR_EL1",
               "VBAR_EL1", "CONTEXTIDR_EL1", "TPIDR_EL1", "CNTKCTL_EL1", "MDSCR_EL1")
_EXTRA_SYSREGS = {"TPIDR_EL0": (3, 3, 13, 0, 2), "TPIDRRO_EL0": (3, 3, 13, 0, 3),
                  "SPSR_EL1": (3, 0, 4, 0, 0), "ELR_EL1": (3, 0, 4, 0, 1),
                  "PMUSERENR_EL0": (3, 3, 9, 14, 0)}
#: The debug registers of a Cortex-A72: 6 breakpoints (DBGBVRn/DBGBCRn_EL1, op2 4/5)
#: and 4 watchpoints (DBGWVRn/DBGWCRn_EL1, op2 6/7).
_DEBUG_SYSREGS = {f"DBG{kind}{n}_EL1": (2, 0, 0, n, op2)
                  for kind, op2, count in (("BVR", 4, 6), ("BCR", 5, 6), ("WVR", 6, 4),
                                           ("WCR", 7, 4))
                  for n in range(count)}
_SAVED = ({name: sysreg_fields(SYSREGS[name]) for name in EL1_SYSREGS} | _EXTRA_SYSREGS
          | _DEBUG_SYSREGS)
#: A PMU as the architecture resets it (counters disabled, nothing pending).
_PMU_RESET = PmuState(0, 0, 0, 0, 0, (0,) * (PMU_COUNTERS + 1), (0,) * (PMU_COUNTERS + 1))
#: X0 of a call that is not supported (SMCCC's -1, sign-extended).
_NOT_SUPPORTED = encode_return(PsciRet.NOT_SUPPORTED)
_EL2_REGS = ("HCR_EL2", "VTCR_EL2", "VTTBR_EL2", "VMPIDR_EL2")
_MDCR_EL2 = (3, 4, 1, 1, 1)
_MDCR_TDE = 1 << 8          # debug exceptions of EL1/EL0 go to EL2
_MDSCR_EL1 = (2, 0, 0, 2, 2)
#: Exception classes of the debug exceptions (the lower-EL forms; +1 is the same-EL one).
_EC_BREAKPOINT, _EC_STEP, _EC_WATCH, _EC_BRK = 0x30, 0x32, 0x34, 0x3C


class InterruptController(Protocol):
    def inject(self, cpu_id: int, intid: int) -> None: ...


class _OnlyMe:
    """Default PSCI platform for a lone vCPU: itself ON, every other CPU OFF."""

    def __init__(self, mpidr: int) -> None:
        self.mpidr = mpidr & 0xFF_00FF_FFFF

    def affinity_info(self, target_mpidr: int, lowest_level: int) -> int:
        if target_mpidr & 0xFF_00FF_FFFF == self.mpidr:
            return AffinityState.ON
        return AffinityState.OFF


@dataclass
class Aarch64VCpuCreateConfig:
    """``mpidr_el1``: the MPIDR the guest reads; ``dtb_addr``: guest-physical address
    of the device tree (x0 at entry); ``memory``: the host arena guest RAM lives in;
    ``hal`` for host IRQs; ``psci`` answers AFFINITY_INFO; ``cntvoff``: the virtual
    counter offset (share one per VM so all its vCPUs agree on time); ``exec_lock``:
    shared by the vCPUs of one VM so only one executes guest code at a time (see
    :mod:`pyaxvisor.engine.tcg.exec_lock`); ``xsync``: the VM's CPUs, which its
    broadcast TLB and cache maintenance reaches (:mod:`pyaxvisor.engine.tcg.xsync`);
    ``parallel``: the CPUs run guest code at the same time (no ``exec_lock``)."""

    mpidr_el1: int
    dtb_addr: int
    memory: HostMemory
    hal: VCpuHal | None = None
    psci: PsciPlatform | None = None
    cntvoff: int = 0
    exec_lock: ExecLock | None = None
    xsync: SyncGroup | None = None
    parallel: bool = False


@dataclass
class Aarch64VCpuSetupConfig:
    """``extra_hcr``: further HCR_EL2 trap bits a VMM wants (e.g. TID3 = bit 18 to
    trap ID register reads, TVM = bit 26 to trap writes of the MMU registers).
    ``smccc_conduit``: the vCPU answers HVC/SMC calls that are neither PSCI/SMCCC nor
    pyaxvisor's hypercalls with NOT_SUPPORTED itself (see the module doc); off, every
    such call is a ``Hypercall`` exit."""

    passthrough_interrupt: bool = False
    passthrough_timer: bool = False
    ipa_bits: int = 40
    extra_hcr: int = 0
    smccc_conduit: bool = False


@dataclass(frozen=True)
class ExternalAbort:
    """A synchronous external abort the vCPU made its guest take: ``fetch`` for an
    instruction fetch (else a data access, ``write`` for a store), at virtual address
    ``va`` = guest-physical ``ipa`` where nothing is, by the instruction at ``pc``."""

    vcpu_id: int
    fetch: bool
    write: bool
    va: int
    ipa: int
    pc: int


@dataclass
class _SavedState:
    sysregs: dict[str, int] = field(default_factory=dict)
    sp_el1: int = 0
    timers: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    pmu: PmuState = _PMU_RESET


class Aarch64VCpu(SoftVCpu):
    CreateConfig = Aarch64VCpuCreateConfig
    SetupConfig = Aarch64VCpuSetupConfig
    gdb = a64gdb.LAYOUT

    def __init__(self, vm_id: int, vcpu_id: int, config: Aarch64VCpuCreateConfig) -> None:
        self.vm_id = vm_id
        self.vcpu_id = vcpu_id
        self.config = config
        self.ctx = Aarch64ContextFrame(spsr=SPSR_EL1H_DAIF)
        self._synced = list(self.ctx.x)
        self._el2: dict[str, int] = {"VMPIDR_EL2": config.mpidr_el1}
        self._saved = _SavedState()
        self._engine: Aarch64Tcg | None = None
        self._psci = config.psci or _OnlyMe(config.mpidr_el1)
        self._irq_level = False
        self._kicked = False
        self._flush = False
        self._lock = threading.Lock()
        self.pending_vectors: list[int] = []
        self.controller: InterruptController | None = None
        self.on_timer_write: Callable[[int, int], None] | None = None
        #: Device windows served inside the CPU, attached at bind.
        self.in_cpu = InCpuMmio(self._stop_cpu)
        self._guest_exceptions = 0  # delivered here, and by engines no longer bound
        self._exit_pc: int | None = None  # the last trap's PC (exit_pc)
        self._delivered_base = 0    # the bound engine's in-CPU count at bind
        #: The VM's "no RAM and no device at this IPA" (set before the first run).
        self.unclaimed: Callable[[int], bool] | None = None
        self.on_external_abort: Callable[[ExternalAbort], None] | None = None
        self.on_pmu_change: Callable[[int], None] | None = None
        self._smccc_conduit = False
        self._served: Counter[str] = Counter()
        self._in_guest = False
        self._run_thread: int | None = None  # the host thread the vCPU is bound on
        self._debug = GuestDebug()
        self._guest_mdscr_ss: int | None = None  # MDSCR_EL1.SS while the debugger steps

    # -- ArchVCpu: lifecycle -----------------------------------------------------------
    @classmethod
    def new(cls, vm_id: int, vcpu_id: int, config: Aarch64VCpuCreateConfig) -> Self:
        if not isinstance(config.memory, HostMemory):
            raise InvalidInput("Aarch64VCpuCreateConfig.memory must be the HostMemory arena")
        return cls(vm_id, vcpu_id, config)

    def set_entry(self, entry: GuestPhysAddr) -> None:
        self.ctx.elr = int(entry)

    def set_ept_root(self, ept_root: HostPhysAddr) -> None:
        # VTTBR_EL2: VMID in bits 63:48, BADDR = the stage-2 root.
        self._el2["VTTBR_EL2"] = ((self.vm_id & 0xFF) << 48) | int(ept_root)

    def setup(self, config: Aarch64VCpuSetupConfig) -> None:
        hcr = HCR_VM | HCR_RW | HCR_TSC | HCR_TWI | config.extra_hcr
        if not config.passthrough_interrupt:
            hcr |= HCR_IMO | HCR_FMO
        self._el2["HCR_EL2"] = hcr
        self._el2["VTCR_EL2"] = Stage2Format(config.ipa_bits).vtcr_el2(pa_bits=STAGE2_PA_BITS)
        self.ctx.spsr = SPSR_EL1H_DAIF
        self.ctx.set_gpr(0, self.config.dtb_addr)
        self.passthrough_timer = config.passthrough_timer
        self._smccc_conduit = config.smccc_conduit

    def bind(self) -> None:
        engine = current_percpu().engine
        engine.attach_memory(self.config.memory)
        engine.join(self.config.xsync, self.config.parallel)
        for name in _EL2_REGS:
            engine.write_sysreg(name, self._el2.get(name, 0))
        for name, enc in _SAVED.items():
            if name in self._saved.sysregs:
                engine.write_cp(*enc, self._saved.sysregs[name])
        engine.reg_write(a64.UC_ARM64_REG_SP_EL0, self.ctx.sp_el0)
        engine.reg_write(a64.UC_ARM64_REG_SP_EL1, self._saved.sp_el1)
        engine.reg_write(a64.UC_ARM64_REG_PSTATE, self.ctx.spsr)
        # the live SP is the banked one of the mode being entered
        sp = self._saved.sp_el1 if self.ctx.spsr & 1 else self.ctx.sp_el0
        engine.reg_write(a64.UC_ARM64_REG_SP, sp)
        for i, v in enumerate(self.ctx.x):
            engine.set_gpr(i, v)
        self._synced = list(self.ctx.x)
        engine.timer.cntvoff = self.config.cntvoff
        for timer, (ctl, cval) in zip((TIMER_VIRT, TIMER_PHYS), self._saved.timers, strict=True):
            engine.timer.set_regs(timer, ctl, cval)
        engine.on_timer_write = self._timer_written
        engine.on_pmu_change = self._pmu_changed
        engine.pmu.restore(self._saved.pmu)
        engine.current_vcpu_id = self.vcpu_id
        self._attach_windows(engine)
        engine.flush_tlb()
        self._delivered_base = engine.exceptions_delivered
        with self._lock:
            self._engine = engine
            self._run_thread = threading.get_ident()
        # after the engine is visible: a set_irq_line from now on reaches it itself
        engine.want_virtual_irq(self._irq_level)
        engine.apply_virtual_irq()

    def unbind(self) -> None:
        engine = self._require_engine()
        # Every run() leaves the frame's PC where the guest resumes; the engine's PC
        # is still the last trap's when that trap was served (stepped) here.
        self._sync_from_engine(engine, self.ctx.elr)
        self._saved.sysregs = {name: engine.read_cp(*enc) for name, enc in _SAVED.items()}
        self._saved.pmu = engine.pmu.save()
        self._saved.sp_el1 = (engine.reg_read(a64.UC_ARM64_REG_SP) if self.ctx.spsr & 1
                              else engine.reg_read(a64.UC_ARM64_REG_SP_EL1))
        self._saved.timers = tuple((engine.timer.ctl(t), engine.timer.cval(t))
                                   for t in (TIMER_VIRT, TIMER_PHYS))  # type: ignore[assignment]
        engine.on_timer_write = None
        engine.on_pmu_change = None
        self._guest_exceptions += engine.exceptions_delivered - self._delivered_base
        engine.leave()
        with self._lock:
            self._engine = None
            self._run_thread = None

    @property
    def guest_exceptions(self) -> int:
        """Exceptions delivered to the guest's own EL1 vectors so far (inside the CPU
        and here). Read it on the vCPU's thread or while it is stopped."""
        engine = self._engine
        inside = engine.exceptions_delivered - self._delivered_base if engine else 0
        return self._guest_exceptions + inside

    # -- ArchVCpu: running ---------------------------------------------------------------
    def run(self) -> ExitReason:
        engine = self._require_engine()
        ctx = self.ctx
        while True:
            self._write_back(engine)
            engine.apply_virtual_irq()
            if self._flush:
                self._flush = False
                engine.flush_tlb()
            lock = self.config.exec_lock
            self._in_guest = True
            try:
                if lock is None:
                    trap = engine.run(ctx.elr)
                else:
                    lock.acquire(self, self._stop_cpu)
                    try:
                        trap = engine.run(ctx.elr)
                    finally:
                        lock.release(self)
            finally:
                self._in_guest = False
            error = self.in_cpu.take_error()
            if error is not None:
                self._sync_from_engine(engine, trap.pc)
                raise error
            self._exit_pc = trap.pc
            if trap.kind is TrapKind.PREEMPTED:
                self._sync_from_engine(engine, trap.pc)
                irq = self.config.hal.irq_fetch() if self.config.hal is not None else None
                if irq is not None:
                    return ExternalInterrupt(irq)
                if self._kicked:
                    self._kicked = False
                    return Nothing()
                continue  # stopped to apply a new IRQ line level: re-enter
            if trap.target_el == 1:
                ctx.elr = engine.deliver_to_el1(trap)
                self._guest_exceptions += 1
                continue
            if self._debug.active and (trap.syndrome >> 26) in (
                    _EC_BREAKPOINT, _EC_STEP, _EC_WATCH, _EC_BRK):
                stop = self._debug_trap(engine, trap)
                if stop is not None:
                    return stop
                continue
            ctx.x = engine.gprs_at_trap()
            self._synced = list(ctx.x)
            ctx.elr = trap.pc
            if trap.kind not in (TrapKind.HVC, TrapKind.HYP_TRAP, TrapKind.DATA_ABORT,
                                 TrapKind.PREFETCH_ABORT, TrapKind.UDEF, TrapKind.SMC):
                raise UnhandledTrap(f"unexpected exception {trap.kind.name} to EL2",
                                    esr=Esr(trap.syndrome), far=trap.far, hpfar=trap.hpfar,
                                    frame=ctx)
            if (self.unclaimed is not None and is_unclaimed_fault(trap.syndrome)
                    and self.unclaimed(int(fault_ipa(trap.far, trap.hpfar)))):
                ctx.elr = self._external_abort(engine, trap)
                continue
            exit_reason = handle_sync_exception(ctx, trap.syndrome, trap.far, trap.hpfar,
                                                self._psci)
            if (self._smccc_conduit and type(exit_reason) is Hypercall
                    and not is_pyaxvisor_hypercall(exit_reason.nr)):
                ctx.set_gpr(0, _NOT_SUPPORTED)
                self._served["SmcccNotSupported"] += 1
                exit_reason = Nothing()
            if trap.pstate & PSTATE_SS and ctx.elr != trap.pc:
                engine.complete_step()
            if not isinstance(exit_reason, Nothing):
                return exit_reason

    def _debug_trap(self, engine: Aarch64Tcg, trap: Trap) -> DebugStop | None:
        """A debug exception taken to EL2 while the debugger is on (MDCR_EL2.TDE): the
        debugger's stop, or (None) one of the guest's own, delivered to its EL1."""
        ec = trap.syndrome >> 26
        stop: DebugStop | None = None
        if ec == _EC_BRK and trap.pc in self._debug.sw_breakpoints:
            stop = DebugStop("breakpoint", trap.pc)
        elif ec == _EC_STEP and self._debug.step:
            stop = DebugStop("step", trap.pc)
        elif ec == _EC_BREAKPOINT and trap.pc in self._debug.hw_breakpoints:
            stop = DebugStop("breakpoint", trap.pc)
        elif ec == _EC_WATCH and self._debug.watchpoints:
            write = bool(trap.syndrome & (1 << 6))
            kind = next((w.kind for w in self._debug.watchpoints
                         if w.addr <= trap.far < w.addr + w.length), "write" if write else "read")
            stop = DebugStop("access" if kind == "access" else "write" if write else "read",
                             trap.far)
        if stop is not None:
            self.ctx.x = engine.gprs_at_trap()
            self._synced = list(self.ctx.x)
            self.ctx.elr = trap.pc
            return stop
        syndrome = trap.syndrome
        if ec != _EC_BRK and (trap.pstate >> 2) & 3 == 1:
            syndrome |= 1 << 26  # taken from EL1 to EL1: the same-EL class
        self.ctx.elr = engine.deliver_to_el1(Trap(trap.kind, syndrome, trap.far, 1, 0,
                                                  trap.pc))
        self._guest_exceptions += 1
        return None

    def _external_abort(self, engine: Aarch64Tcg, trap: Trap) -> int:
        """Make the guest take the synchronous external abort of the access ``trap``
        stopped (an unclaimed address); returns the PC of its EL1 vector."""
        fetch = trap.kind is TrapKind.PREFETCH_ABORT
        esr = external_abort_syndrome(trap.syndrome, same_el=(trap.pstate >> 2) & 3 == 1)
        pc = engine.deliver_to_el1(Trap(trap.kind, esr, trap.far, 1, 0, trap.pc))
        self._served["ExternalAbort"] += 1
        self._guest_exceptions += 1
        report = self.on_external_abort
        if report is not None:
            report(ExternalAbort(self.vcpu_id, fetch, not fetch and bool(esr & (1 << 6)),
                                 trap.far, int(fault_ipa(trap.far, trap.hpfar)), trap.pc))
        return pc

    def guest_ram_written(self, ranges: Sequence[tuple[int, int, int]]) -> None:
        """The engine maps the host arena at its physical addresses: it drops its code
        of the host-physical ranges (see ``SyncPeer.dma_written``)."""
        engine = self._engine
        if engine is not None:
            if isinstance(ranges, WrittenRanges):
                engine.xsync.dma_written_columns(ranges.gpas, ranges.lengths, ranges.shift)
            else:
                engine.xsync.dma_written([(hpa, n) for _gpa, hpa, n in ranges])

    def serve_in_cpu(self, windows: Sequence[InCpuWindow], *, timing: bool = False) -> bool:
        """Serve the MMIO ``windows`` from inside the CPU (see the module doc); port
        windows do not exist here. Attached now when bound, else at :meth:`bind`."""
        serving = self.in_cpu.set_windows(windows)
        engine = self._engine
        if engine is not None:
            self._attach_windows(engine)
        return serving

    def _attach_windows(self, engine: Aarch64Tcg) -> None:
        self.in_cpu.attach(engine.attach_mmio, IN_CPU_MMIO_BASE,
                           lambda: engine.current_vcpu_id)

    def served_counts(self) -> Served:
        engine = self._engine
        return Served(exits=dict(self._served), accesses=self.in_cpu.accesses,
                      guest_exceptions=self.guest_exceptions,
                      engine=engine.stats if engine is not None else {})

    def exit_pc(self) -> int | None:
        """The instruction that trapped to EL2 (or where a stop left the CPU)."""
        return self._exit_pc

    def interrupt_pending(self) -> bool:
        return self._irq_level

    # kick(), request_tlb_flush() (the nested page table changed) and the stop
    # request behind them: SoftVCpu.

    # -- registers ---------------------------------------------------------------------------
    def set_gpr(self, index: int, value: int) -> None:
        if not 0 <= index <= 31:
            raise InvalidInput(f"AArch64 has general-purpose registers 0..30 (31 = XZR), "
                               f"not {index}")
        self.ctx.set_gpr(index, value)

    def set_return_value(self, value: int) -> None:
        self.ctx.set_gpr(0, value & ((1 << 64) - 1))

    def get_gpr(self, index: int) -> int:
        return self.ctx.gpr(index)

    # -- the debugger (pyaxvisor.vcpu.debug; on the bound thread, between runs) -------------
    def debug_registers(self) -> list[int]:
        engine = self._require_engine()
        self._sync_from_engine(engine, self.ctx.elr)
        pstate = engine.reg_read(a64.UC_ARM64_REG_PSTATE)
        values = [*self.ctx.x, engine.reg_read(a64.UC_ARM64_REG_SP), self.ctx.elr,
                  pstate & 0xFFFF_FFFF]
        for name, enc in a64gdb.SYSREGS:
            if enc is not None:
                values.append(engine.read_cp(*enc))
            elif (name == "sp_el1") == bool(pstate & 1):  # the live SP is this one
                values.append(engine.reg_read(a64.UC_ARM64_REG_SP))
            else:
                values.append(engine.reg_read(a64.UC_ARM64_REG_SP_EL1 if name == "sp_el1"
                                              else a64.UC_ARM64_REG_SP_EL0))
        return values

    def debug_set_register(self, number: int, value: int) -> None:
        engine = self._require_engine()
        if not 0 <= number < len(a64gdb.LAYOUT.sizes):
            raise InvalidInput(f"AArch64 has no gdb register {number}")
        if number < 31:
            self.ctx.set_gpr(number, value)
        elif number == a64gdb.SP:
            engine.reg_write(a64.UC_ARM64_REG_SP, value)
        elif number == a64gdb.PC:
            self.ctx.elr = value
        elif number == a64gdb.CPSR:
            engine.reg_write(a64.UC_ARM64_REG_PSTATE, value)
            self.ctx.spsr = engine.reg_read(a64.UC_ARM64_REG_PSTATE)
            engine.write_sysreg("SCTLR_EL1", engine.read_sysreg("SCTLR_EL1"))
        else:
            name, enc = a64gdb.SYSREGS[number - len(a64gdb.CORE)]
            if enc is not None:
                engine.write_cp(*enc, value)
                return
            live = (name == "sp_el1") == bool(engine.reg_read(a64.UC_ARM64_REG_PSTATE) & 1)
            engine.reg_write(a64.UC_ARM64_REG_SP if live else
                             a64.UC_ARM64_REG_SP_EL1 if name == "sp_el1"
                             else a64.UC_ARM64_REG_SP_EL0, value)

    def debug_translate(self, va: int, read_u64: Callable[[int], int]) -> int:
        engine = self._require_engine()
        return stage1_translate(va, engine.read_sysreg("SCTLR_EL1"),
                                engine.read_cp(3, 0, 2, 0, 2), engine.read_cp(3, 0, 2, 0, 0),
                                engine.read_cp(3, 0, 2, 0, 1), read_u64)

    def set_guest_debug(self, config: GuestDebug) -> None:
        """Software breakpoints and steps are the architecture's debug exceptions (BRK,
        software step with MDSCR_EL1.SS and PSTATE.SS) routed to EL2 by MDCR_EL2.TDE;
        the guest's own debug exceptions then reach EL2 too and are given back to it."""
        engine = self._require_engine()
        self._debug = config
        mdcr = engine.read_cp(*_MDCR_EL2) & ~_MDCR_TDE  # keep HPMN and the trap bits
        engine.write_cp(*_MDCR_EL2, mdcr | (_MDCR_TDE if config.sw_breakpoints or config.step
                                            else 0))
        pstate = engine.reg_read(a64.UC_ARM64_REG_PSTATE)
        mdscr = engine.read_cp(*_MDSCR_EL1)
        if config.step:
            if self._guest_mdscr_ss is None:
                self._guest_mdscr_ss = mdscr & 1
            engine.reg_write(a64.UC_ARM64_REG_PSTATE, pstate | PSTATE_SS)
            engine.write_cp(*_MDSCR_EL1, mdscr | 1)
        elif self._guest_mdscr_ss is not None:
            engine.reg_write(a64.UC_ARM64_REG_PSTATE, pstate & ~PSTATE_SS)
            engine.write_cp(*_MDSCR_EL1, (mdscr & ~1) | self._guest_mdscr_ss)
            self._guest_mdscr_ss = None
        # QEMU derives its translation flags (the step state among them) from these
        engine.write_sysreg("SCTLR_EL1", engine.read_sysreg("SCTLR_EL1"))
        watches = []
        for w in config.watchpoints:
            pa = engine.translate(w.addr)
            if pa is None:
                raise NotFound(f"watchpoint at {w.addr:#x}: the address has no translation")
            watches.append((w.addr, pa, w.length, {"read": 1, "write": 2, "access": 3}[w.kind]))
        engine.set_debugger_points(config.hw_breakpoints, watches)

    # -- interrupts -----------------------------------------------------------------------------
    def attach_interrupt_controller(self, controller: InterruptController) -> None:
        self.controller = controller

    def set_irq_line(self, level: bool) -> None:
        """Drive the virtual IRQ input (HCR_EL2.VI) from any thread. On the thread that
        runs the vCPU (inside the CPU, from a device or timer callback, or between
        runs) HCR_EL2.VI is written at once and the CPU takes the interrupt at its next
        block; from another thread the running CPU is kicked: it writes the new level
        itself before its next block and goes on (on the stock library, which cannot,
        it stops and run() enters it again with the new level)."""
        if level != self._irq_level:
            self._irq_level = level
            engine = self._engine
            if engine is None:
                return  # bind() writes it
            engine.want_virtual_irq(level)
            if threading.get_ident() == self._run_thread:
                engine.apply_virtual_irq()
            elif not engine.kick_virtual_irq():
                self._stop_cpu()

    @property
    def irq_line(self) -> bool:
        return self._irq_level

    def inject_interrupt(self, vector: int) -> None:
        if not 0 <= vector < 1020:
            raise InvalidInput(f"GIC interrupt IDs are 0..1019, not {vector}")
        if self.controller is not None:
            self.controller.inject(self.vcpu_id, vector)
            return
        with self._lock:
            self.pending_vectors.append(vector)
        self.set_irq_line(True)

    # -- machinery -------------------------------------------------------------------------------
    def _write_back(self, engine: Aarch64Tcg) -> None:
        x, synced = self.ctx.x, self._synced
        if x != synced:
            for i in range(31):
                if x[i] != synced[i]:
                    engine.set_gpr(i, x[i])
            self._synced = list(x)

    def _sync_from_engine(self, engine: Aarch64Tcg, pc: int | None = None) -> None:
        """Read the frame back from the CPU; ``pc`` when the CPU stopped before it ran
        (its PC register then still holds the previous trap's)."""
        self._write_back(engine)
        self.ctx.x = engine.gprs()
        self._synced = list(self.ctx.x)
        self.ctx.elr = engine.pc if pc is None else pc
        self.ctx.spsr = engine.reg_read(a64.UC_ARM64_REG_PSTATE)
        self.ctx.sp_el0 = (engine.reg_read(a64.UC_ARM64_REG_SP_EL0) if self.ctx.spsr & 1
                           else engine.reg_read(a64.UC_ARM64_REG_SP))

    def _timer_written(self, timer: int) -> None:
        handler = self.on_timer_write
        if handler is not None:
            handler(self.vcpu_id, timer)

    def _pmu_changed(self) -> None:
        handler = self.on_pmu_change
        if handler is not None:
            handler(self.vcpu_id)

    def pmu_irq_level(self, now_ns: int) -> bool:
        """The PMU's overflow interrupt request at host time ``now_ns`` (any thread)."""
        engine = self._engine
        return False if engine is None else engine.pmu.irq_level(now_ns)

    def pmu_deadline(self) -> int | None:
        """Host monotonic ns at which the PMU's interrupt request rises by itself (a
        cycle counter wraps), if it will."""
        engine = self._engine
        return None if engine is None else engine.pmu.deadline_ns

    def current_pc(self) -> int:
        """Where the vCPU is now (any thread): while the guest runs, the engine's PC
        (QEMU's last synchronised one, at most a block behind); otherwise the PC the
        guest resumes at, which every ``run()`` and ``unbind`` leave in the frame."""
        engine = self._engine
        if engine is not None and self._in_guest:
            return engine.pc
        return self.ctx.elr

    def current_pstate(self) -> int:
        """PSTATE now, as :meth:`current_pc` (between runs, the CPU's)."""
        engine = self._engine
        return self.ctx.spsr if engine is None else engine.reg_read(a64.UC_ARM64_REG_PSTATE)

    def timer_irq_level(self, timer: int, now_ns: int) -> bool:
        """The output of the virtual (0) or physical (1) timer at host time ``now_ns``."""
        engine = self._engine
        if engine is None:
            return False
        return engine.timer.irq_level(timer, now_ns)

    def timer_deadline(self, timer: int) -> int | None:
        """Host monotonic ns at which the timer fires, if it is armed."""
        engine = self._engine
        return None if engine is None else engine.timer.deadline_ns(timer)

    def restart(self, entry: int, arg: int) -> None:
        """PSCI CPU_ON of a CPU that was turned off: it starts at ``entry`` with x0 =
        ``arg``, at EL1h with interrupts masked and the MMU and caches off."""
        engine = self._require_engine()
        self.ctx.elr = entry
        self.ctx.spsr = SPSR_EL1H_DAIF
        self.ctx.set_gpr(0, arg)
        engine.reg_write(a64.UC_ARM64_REG_PSTATE, SPSR_EL1H_DAIF)
        sctlr = engine.read_sysreg("SCTLR_EL1")
        engine.write_sysreg("SCTLR_EL1", sctlr & ~((1 << 0) | (1 << 2) | (1 << 12)))  # M C I

    def timer_state(self) -> tuple[int, int, int, int]:
        """(CNTV_CTL, CNTV_CVAL, CNTP_CTL, CNTP_CVAL) as the guest last set them."""
        engine = self._engine
        if engine is not None:
            t = engine.timer
            return (t.ctl(TIMER_VIRT), t.cval(TIMER_VIRT), t.ctl(TIMER_PHYS), t.cval(TIMER_PHYS))
        (vc, vv), (pc, pv) = self._saved.timers
        return (vc, vv, pc, pv)

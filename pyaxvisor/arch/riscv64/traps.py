"""Traps from the guest to M-mode (pyaxvisor), handled inside the CPU.

The engine calls :meth:`TrapHandler.on_trap` for every trap the guest does not
handle itself, while the CPU is still inside the trap; the answer resumes the
guest, delivers the exception to its ``stvec``, or stops the CPU with an exit for
the VM (:meth:`TrapHandler.take_exit`):

* ``ecall`` from S-mode: an SBI call (:class:`~pyaxvisor.arch.riscv64.sbi.Sbi`).
  Results go to a0/a1 (a0 only for legacy calls) and the PC past the ``ecall``;
  a call the VM must finish (``CpuUp``, ``SendIPI``, ``Hypercall``...) stops the CPU
  with its exit, the others resume it at once (counted as ``SbiCall`` in the vCPU's
  ``served_counts``);
* illegal instruction: a ``wfi`` from S-mode (trapped by ``mstatus.TW``) stops with
  ``Halt``, the PC past it; anything else is the guest's and is delivered;
* access faults: the guest touched a guest-physical address that is not its RAM
  (or RAM against its permissions). Where there is no RAM and no device (the vCPU's
  ``unclaimed`` predicate, when it has one, says there is no device), the guest takes
  the access fault itself, as on QEMU's ``virt`` board: taken at its ``stvec`` with
  scause 1, 5 or 7 (7 for any AMO, whose fault the software CPU raises as its load's),
  stval = the faulting virtual address and sepc = the faulting instruction (the
  fetched address for a fetch), counted as ``AccessFault`` and
  handed to the vCPU's ``on_access_fault`` (an :class:`AccessFault`). Otherwise loads
  and stores become ``MmioRead`` / ``MmioWrite`` decoded from the instruction
  (:mod:`~pyaxvisor.arch.riscv64.decode`), the PC advanced past it; a store to
  read-only RAM is an ``MmioWrite`` too (a ROM device, as KVM reports writes to
  read-only slots); instruction fetches, AMOs, FP accesses, loads from unreadable RAM
  and accesses that straddle a page boundary become ``NestedPageFault``;
* anything else raises :class:`UnhandledTrap` (the VM ends with it).

The handler is also the hart the SBI implementation works on (``SbiHart``): guest
memory for DBCN is checked against the G-stage table (RAM with the right
permission) and read and written through the address space, never elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UC_PROT_EXEC

from pyaxvisor.arch.riscv64.decode import (
    GuestTranslationFault,
    decode_access,
    guest_translate,
    mmio_exit,
)
from pyaxvisor.arch.riscv64.memory import find_mapping
from pyaxvisor.arch.riscv64.sbi import GuestAccessError, Sbi
from pyaxvisor.engine.tcg.riscv64 import DEBUGGER_CAUSE, Riscv64Tcg, Trap, TrapAction
from pyaxvisor.engine.tcg.riscv64_isa import (
    INSN_WFI,
    MIP_SSIP,
    MSTATUS_SIE,
    XLEN_MASK,
    Cause,
    Csr,
    Priv,
)
from pyaxvisor.errors import BadState, InvalidInput, NotFound, Unsupported
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.flags import AccessFlags, MappingFlags
from pyaxvisor.mm.page_table.table import NotMapped
from pyaxvisor.vcpu.exit import (
    DebugStop,
    ExitReason,
    Halt,
    MmioRead,
    MmioWrite,
    NestedPageFault,
)

if TYPE_CHECKING:
    from pyaxvisor.arch.riscv64.vcpu import RISCVVCpu

_RESUME, _STOP, _DELIVER = int(TrapAction.RESUME), int(TrapAction.STOP), int(TrapAction.DELIVER)
_ECALL_S = int(Cause.ECALL_S)
_LOAD_KINDS = frozenset({"load", "fp_load", "amo"})
_STORE_KINDS = frozenset({"store", "fp_store", "amo"})
_FUNCT5_LR = 0b00010  # of the "amo" kind (opcode 0x2F), LR alone is a load
_REG_NAMES = ("zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a0", "a1", "a2",
              "a3", "a4", "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9",
              "s10", "s11", "t3", "t4", "t5", "t6")


@dataclass(frozen=True)
class AccessFault:
    """An access fault the vCPU made its guest take: ``cause`` 1 (instruction fetch), 5
    (load) or 7 (store/AMO), at virtual address ``va`` (the guest's stval) =
    guest-physical ``gpa``, where there is no RAM and no device, by the instruction at
    ``pc`` (for a fetch, the address fetched: the guest's sepc)."""

    vcpu_id: int
    cause: int
    va: int
    gpa: int
    pc: int

    @property
    def fetch(self) -> bool:
        return self.cause == Cause.INST_ACCESS_FAULT

    @property
    def write(self) -> bool:
        return self.cause == Cause.STORE_ACCESS_FAULT


class UnhandledTrap(Unsupported):
    """A trap to M-mode that pyaxvisor cannot turn into an exit; the message names it
    and dumps the guest's registers."""

    def __init__(self, reason: str, trap: Trap, gprs: list[int]) -> None:
        self.trap = trap
        lines = [f"unhandled guest trap: {reason}",
                 f"  cause {trap.cause} at pc {trap.pc:#x}, tval {trap.tval:#x}, "
                 f"from {Priv(trap.priv).name}-mode"]
        for i in range(0, 32, 4):
            lines.append("    " + "  ".join(f"{_REG_NAMES[j]:>4}={gprs[j]:#018x}"
                                            for j in range(i, i + 4)))
        super().__init__("\n".join(lines))


class TrapHandler:
    """The trap side of one vCPU; also the ``SbiHart`` its SBI implementation uses."""

    def __init__(self, vcpu: RISCVVCpu) -> None:
        self.vcpu = vcpu
        self.hart_id = vcpu.hart_id
        self.sbi = Sbi(self, vcpu.platform)
        #: the engine of the host CPU the vCPU is bound to (None while unbound)
        self.engine: Riscv64Tcg | None = None
        self.timing = False
        self.sbi_calls = 0        # SBI calls completed inside the CPU
        self.access_faults = 0    # access faults where nothing is, taken by the guest
        self.sbi_time = 0.0       # their handling time, when ``timing``
        #: a1 of the last SBI call (``set_return_value`` restores it); None: legacy call
        self.sbi_value: int | None = 0
        self._exit: ExitReason | None = None

    def take_exit(self) -> ExitReason | None:
        """The exit the last stop produced (then cleared)."""
        exit_reason, self._exit = self._exit, None
        return exit_reason

    @property
    def _engine(self) -> Riscv64Tcg:
        engine = self.engine
        if engine is None:
            raise BadState(f"vCPU {self.vcpu.vcpu_id} is not bound to a host CPU")
        return engine

    # -- the traps ---------------------------------------------------------------------
    def on_trap(self, trap: Trap) -> int:
        """The engine's ``on_trap`` (inside the CPU, on the vCPU's thread)."""
        cause = trap[0]
        if cause == _ECALL_S:
            return self._ecall(trap)
        if cause == Cause.ILLEGAL_INSTRUCTION:
            return self._illegal(trap)
        if cause in (Cause.LOAD_ACCESS_FAULT, Cause.STORE_ACCESS_FAULT,
                     Cause.INST_ACCESS_FAULT):
            return self._access_fault(trap)
        if cause in (DEBUGGER_CAUSE, Cause.BREAKPOINT):
            return self._debug_trap(trap)
        raise UnhandledTrap(f"no handler for exception cause {cause}", trap,
                            self._engine.gprs())

    def _debug_trap(self, trap: Trap) -> int:
        """The debugger's step or breakpoint (its hooks, or an EBREAK it put at one of
        its breakpoints): a DebugStop exit; any other EBREAK is the guest's."""
        fired, addr = self._engine.take_debug_fired()
        pc = trap[1]
        if fired in (1, 2):
            self._exit = DebugStop("step" if fired == 1 else "breakpoint", pc)
            return _STOP
        if fired in (3, 4):
            kind = next((w.kind for w in self.vcpu.debug.watchpoints
                         if w.addr <= addr < w.addr + w.length), "read")
            self._exit = DebugStop("access" if kind == "access" else
                                   "write" if fired == 4 else "read", addr)
            return _STOP
        if trap[0] == Cause.BREAKPOINT and pc in self.vcpu.debug.sw_breakpoints:
            self._exit = DebugStop("breakpoint", pc)
            return _STOP
        if trap[0] == Cause.BREAKPOINT:
            return _DELIVER
        raise UnhandledTrap("a debugger trap with no debugger step or breakpoint", trap,
                            self._engine.gprs())

    def _ecall(self, trap: Trap) -> int:
        engine: Riscv64Tcg = self.engine  # type: ignore[assignment]  # set while running
        start = time.perf_counter() if self.timing else 0.0
        error, value, exit_reason, restart = self.sbi.call(engine.args())
        if restart is not None:
            self._resume_at(engine, *restart)
        elif value is None:
            engine.set_gpr(10, error)  # legacy: a1 is preserved
            engine.pc = trap[1] + 4
        else:
            engine.sbi_return(error, value, trap[1] + 4)
        self.sbi_value = value
        if exit_reason is None:
            self.sbi_calls += 1
            if self.timing:
                self.sbi_time += time.perf_counter() - start
            return _RESUME
        self._exit = exit_reason
        return _STOP

    def _resume_at(self, engine: Riscv64Tcg, entry: int, opaque: int) -> None:
        """A non-retentive suspend: the hart resumes at ``entry`` as if started there."""
        engine.set_csr(Csr.SATP, 0)
        engine.csr_rmw(Csr.SSTATUS, 0, MSTATUS_SIE)
        engine.set_gpr(10, self.hart_id)
        engine.set_gpr(11, opaque)
        engine.pc = entry
        self.vcpu.request_tlb_flush()

    def _illegal(self, trap: Trap) -> int:
        engine = self._engine
        if trap.priv == Priv.S and engine.read_insn(trap.pc) == INSN_WFI:
            engine.pc = trap.pc + 4
            self.sbi_value = 0
            self._exit = Halt()
            return _STOP
        return _DELIVER

    def _access_fault(self, trap: Trap) -> int:
        self.sbi_value = 0
        outcome = self._access_exit(trap)
        if isinstance(outcome, AccessFault):
            return self._guest_takes(outcome)
        self._exit = outcome
        return _STOP

    def _guest_takes(self, fault: AccessFault) -> int:
        """Make the guest take the access ``fault`` (where nothing is) at its ``stvec``."""
        engine = self._engine
        engine.enter_guest_trap(fault.cause, fault.va)
        engine.stop_if_requested()  # a fetch fault at the vector itself repeats forever
        self.access_faults += 1
        report = self.vcpu.on_access_fault
        if report is not None:
            report(fault)
        return _RESUME

    def _nothing_at(self, gpa: int) -> bool:
        """Whether there is no RAM and no device at guest-physical ``gpa`` (never, for
        a vCPU without the VM's ``unclaimed`` predicate)."""
        unclaimed = self.vcpu.unclaimed
        return (unclaimed is not None and find_mapping(self._engine.mappings(), gpa) is None
                and unclaimed(gpa))

    def _access_exit(self, trap: Trap) -> ExitReason | AccessFault:
        engine = self._engine
        if trap.cause == Cause.INST_ACCESS_FAULT:
            gpa = trap.tval if trap.mem_fault else self._guest_phys(trap.tval)
            if isinstance(gpa, NestedPageFault):
                return gpa
            if self._nothing_at(gpa):
                return self._fault(trap, trap.pc, gpa, trap.cause)
            return NestedPageFault(GuestPhysAddr(gpa), AccessFlags.EXECUTE)
        insn = engine.read_insn(trap.pc)
        access = decode_access(insn) if insn is not None else None
        kinds = _STORE_KINDS if trap.cause == Cause.STORE_ACCESS_FAULT else _LOAD_KINDS
        if access is None or access.kind not in kinds:
            what = "no instruction" if insn is None else f"instruction {insn:#x}"
            raise UnhandledTrap(f"access fault at {what}, which is no matching load or store",
                                trap, engine.gprs())
        ea = (engine.gpr(access.base) + access.offset) & XLEN_MASK
        straddles = (ea & 0xFFF) + access.width.size > 0x1000
        gpa = trap.tval if trap.mem_fault else self._guest_phys(ea if not straddles
                                                                 else trap.tval)
        if isinstance(gpa, NestedPageFault):
            return gpa
        if self._nothing_at(gpa):
            # an AMO faults as a store/AMO, also where the CPU raised its load's fault
            amo = access.kind == "amo" and insn is not None and insn >> 27 != _FUNCT5_LR
            return self._fault(trap, ea, gpa, Cause.STORE_ACCESS_FAULT if amo else trap.cause)
        exit_reason = mmio_exit(access, gpa, engine.gpr(access.reg))
        if straddles or (access.kind == "load"
                         and find_mapping(engine.mappings(), gpa) is not None):
            # a load from RAM the guest may not read; or half RAM, half not
            return NestedPageFault(GuestPhysAddr(gpa), AccessFlags.READ
                                   if trap.cause == Cause.LOAD_ACCESS_FAULT
                                   else AccessFlags.WRITE)
        if isinstance(exit_reason, MmioRead | MmioWrite):
            engine.pc = trap.pc + access.length
        return exit_reason

    def _fault(self, trap: Trap, va: int, gpa: int, cause: int) -> AccessFault:
        """The access fault ``cause`` of ``trap`` at guest-physical ``gpa``, of the
        access that starts at virtual ``va``. Its stval: the CPU's fault address, unless
        the memory hook raised it (then that is guest-physical): ``va`` moved onto the
        faulting page's offset (the second page of an access that straddles two)."""
        stval = va + ((gpa - va) & 0xFFF) if trap.mem_fault else trap.tval
        return AccessFault(self.vcpu.vcpu_id, int(cause), stval & XLEN_MASK, gpa, trap.pc)

    def _guest_phys(self, va: int) -> int | NestedPageFault:
        """The guest-physical address of the guest's virtual ``va``; a nested page
        fault on the page-table entry when the guest's tables are not in RAM."""
        try:
            return guest_translate(self._engine.csr(Csr.SATP), va, self._read_u64)
        except GuestTranslationFault as fault:
            if fault.pte_gpa is None:
                raise
            return NestedPageFault(GuestPhysAddr(fault.pte_gpa), AccessFlags.READ)

    def _read_u64(self, gpa: int) -> int | None:
        data = self._engine.read_ram(gpa, 8)
        return None if data is None else int.from_bytes(data, "little")

    # -- SbiHart ---------------------------------------------------------------------------
    def set_timer(self, stime: int) -> None:
        self.vcpu.set_timer(stime)

    def clear_software_pending(self) -> bool:
        old = self._engine.csr_rmw(Csr.MIP, 0, MIP_SSIP)
        return bool((old or 0) & MIP_SSIP)

    def flush_local(self) -> None:
        # Done before the guest runs its next instruction: the CPU stops at the next
        # block (the ecall ended this one) and the vCPU flushes before re-entering.
        self.vcpu.request_tlb_flush()

    def fence_all(self, code: bool) -> bool:
        return self._engine.fence_all(code)

    def check_guest(self, gpa: int, size: int, write: bool) -> None:
        space = self.vcpu.config.space
        table = space.page_table
        need = MappingFlags.WRITE if write else MappingFlags.READ
        pos, end = gpa, gpa + size
        if end > XLEN_MASK + 1 or table is None:
            raise GuestAccessError(f"guest buffer at {gpa:#x}+{size:#x} is beyond memory")
        while pos < end:
            try:
                hpa, flags, span = table.translate(GuestPhysAddr(pos))
                space.hal.phys_to_virt(hpa)
            except (NotMapped, InvalidInput, NotFound):
                raise GuestAccessError(f"guest-physical {pos:#x} is not guest RAM") from None
            if not flags & need:
                raise GuestAccessError(f"guest-physical {pos:#x} is not "
                                       f"{'writable' if write else 'readable'} guest RAM")
            pos = (pos & ~(span - 1)) + span

    def read_guest(self, gpa: int, size: int) -> bytes:
        self.check_guest(gpa, size, write=False)
        return self.vcpu.config.space.read(GuestPhysAddr(gpa), size)

    def write_guest(self, gpa: int, data: bytes) -> None:
        self.check_guest(gpa, len(data), write=True)
        self.vcpu.config.space.write(GuestPhysAddr(gpa), data)

    def read_virtual_ulong(self, va: int) -> int | None:
        try:
            gpa = self._guest_phys(va)
        except GuestTranslationFault:
            return None
        return None if isinstance(gpa, NestedPageFault) else self._read_u64(gpa)

    def is_entry(self, gpa: int) -> bool:
        mapping = find_mapping(self._engine.mappings(), gpa)
        return mapping is not None and bool(mapping.perms & UC_PROT_EXEC)

    def machine_ids(self) -> tuple[int, int, int]:
        engine = self._engine
        return engine.csr(Csr.MVENDORID), engine.csr(Csr.MARCHID), engine.csr(Csr.MIMPID)

"""The RISC-V 64 vCPU (riscv_vcpu ``RISCVVCpu``) on the software M-mode.

The guest runs in S-mode on the calling thread's software CPU
(:class:`~pyaxvisor.engine.tcg.riscv64.Riscv64Tcg`, enabled by
:class:`~pyaxvisor.arch.riscv64.pcpu.RISCVPerCpu`); pyaxvisor is its M-mode
firmware and hypervisor. Traps to M are handled inside the CPU
(:mod:`~pyaxvisor.arch.riscv64.traps`): SBI calls complete without an exit unless
the VM must act; ``wfi`` becomes ``Halt``; accesses outside guest RAM become MMIO
exits or nested page faults; the guest's own exceptions go to its ``stvec``.

What the vCPU serves itself, counted by name in ``served_counts().exits`` (traps to
M that never become exits):

* ``SbiCall``: SBI calls completed inside the CPU;
* ``AccessFault``: with an ``unclaimed(gpa)`` predicate (the VM's: no device there),
  a load, store or instruction fetch at a guest-physical address where there is no
  RAM and no device makes the guest take the access fault QEMU's ``virt`` board gives
  (scause 1, 5 or 7, stval = the faulting address, sepc = the faulting instruction or
  the fetched address) at its ``stvec``; ``on_access_fault`` hears of each one (an
  :class:`~pyaxvisor.arch.riscv64.traps.AccessFault`, inside the CPU). Without the
  predicate such an access is an MMIO exit (a load or store) or a ``NestedPageFault``.

Lifecycle (the ``ArchVCpu`` order): creation (a0 = hart ID, a1 = DTB address,
unless ``set_gpr`` changes them before the first run), ``set_entry`` /
``set_ept_root`` / ``setup`` (S-mode, satp = 0, interrupts off, PC = entry; the
G-stage root kept in hgatp format, :attr:`RISCVVCpu.hgatp`), ``bind`` on a host
thread whose ``RISCVPerCpu`` is enabled (maps the address space's RAM into the engine
and follows its changes, loads the saved state), ``run`` from that thread, ``unbind``
(saves the state, stops following the space). While bound, the registers live in
the engine's CPU and are read and written there (nothing is copied around a run).

``run()`` returns the exit of a trap (SBI calls the VM must finish, ``Halt``, MMIO,
nested page faults), ``Nothing`` after ``kick()``, or ``ExternalInterrupt`` when the
HAL has a host IRQ pending at a stop (as arm_vcpu does).

Memory after bind: map, unmap, protect or take regions out of the
:class:`~pyaxvisor.mm.addrspace.AddrSpace` from any thread; the vCPU is told
(``add_listener``), asks a running CPU to stop at its next block, and makes the
engine's RAM equal to the G-stage table (:func:`~pyaxvisor.arch.riscv64.memory.ram_mappings`)
before the guest runs again (:meth:`RISCVVCpu.sync_memory` does it at once).
Memory removed while the guest runs is reachable by it until then: remove RAM the
guest may still use only while its vCPUs are stopped.

Threads: ``kick``, ``set_timer_line``/``set_external_line``/``set_software_line``,
``request_tlb_flush``, ``inject_interrupt``, ``timer_deadline``/``timer_due`` and
``interrupt_pending`` from any thread; everything else from the bound thread
between runs (``pc``/``csr`` elsewhere read the state saved at the last unbind).
The platform's SBI callbacks run on the bound thread inside the CPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Self

from unicorn import UC_PROT_READ

from pyaxvisor.arch.in_cpu import InCpuMmio
from pyaxvisor.arch.riscv64 import gdb as rvgdb
from pyaxvisor.arch.riscv64.context import HartContext
from pyaxvisor.arch.riscv64.memory import ram_mappings
from pyaxvisor.arch.riscv64.pcpu import current_percpu
from pyaxvisor.arch.riscv64.sbi import LoneHart, SbiPlatform
from pyaxvisor.arch.riscv64.traps import AccessFault, TrapHandler
from pyaxvisor.arch.soft_cpu import SoftVCpu
from pyaxvisor.engine.tcg.common import BOOT_NS
from pyaxvisor.engine.tcg.exec_lock import ExecLock
from pyaxvisor.engine.tcg.riscv64 import PREEMPTED, Riscv64Tcg
from pyaxvisor.engine.tcg.riscv64_isa import (
    GUEST_CAUSES,
    MIP_SEIP,
    MIP_SSIP,
    MIP_STIP,
    S_INTERRUPTS,
    XLEN_MASK,
    Cause,
    Csr,
)
from pyaxvisor.engine.tcg.xsync import SyncGroup
from pyaxvisor.errors import BadState, InvalidInput, NotFound
from pyaxvisor.hal.vcpu_hal import VCpuHal
from pyaxvisor.mm.addr import GuestPhysAddr, HostPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace, WrittenRanges
from pyaxvisor.mm.page_table.gstage import GSTAGE_MODES, GStagePageTable
from pyaxvisor.vcpu.arch_vcpu import InCpuWindow, Served
from pyaxvisor.vcpu.debug import GuestDebug
from pyaxvisor.vcpu.exit import ExitReason, ExternalInterrupt, Halt, Nothing

_NS = 1_000_000_000
_CSR_NAMES = {c.name.lower(): c for c in Csr}


@dataclass
class RISCVVCpuCreateConfig:
    """``hart_id``: the hart ID the guest sees (a0 at entry, the SBI hart masks);
    ``dtb_addr``: guest-physical address of the device tree (a1 at entry);
    ``space``: the VM's address space (its G-stage table is the memory map the engine
    follows); ``hal`` for host IRQs; ``platform``: the machine's SBI side (default: a
    lone hart, :class:`~pyaxvisor.arch.riscv64.sbi.LoneHart`); ``exec_lock``: shared
    by the vCPUs of one VM so only one executes guest code at a time; ``xsync``: the
    VM's CPUs, which its remote fences reach (:mod:`pyaxvisor.engine.tcg.xsync`);
    ``parallel``: the CPUs run guest code at the same time (no ``exec_lock``); the ``time``
    CSR counts at ``timebase_freq`` Hz from host monotonic time ``time_base_ns``
    (share one base per VM so all its harts agree)."""

    hart_id: int
    dtb_addr: int
    space: AddrSpace
    hal: VCpuHal | None = None
    platform: SbiPlatform | None = None
    exec_lock: ExecLock | None = None
    xsync: SyncGroup | None = None
    parallel: bool = False
    timebase_freq: int = 10_000_000
    time_base_ns: int = BOOT_NS


@dataclass
class RISCVVCpuSetupConfig:
    """``gstage_mode``: the G-stage format of the VM's table (hgatp MODE)."""

    gstage_mode: Literal["sv39x4", "sv48x4"] = "sv39x4"


class RISCVVCpu(SoftVCpu):
    CreateConfig = RISCVVCpuCreateConfig
    SetupConfig = RISCVVCpuSetupConfig
    gdb = rvgdb.LAYOUT

    def __init__(self, vm_id: int, vcpu_id: int, config: RISCVVCpuCreateConfig) -> None:
        self.vm_id = vm_id
        self.vcpu_id = vcpu_id
        self.config = config
        self.hart_id = config.hart_id
        self.platform: SbiPlatform = config.platform or LoneHart(config.hart_id)
        self.ctx = HartContext()
        # The boot registers; a board's set_gpr before setup (a CpuUp's start) wins.
        self.ctx.gprs[10] = config.hart_id
        self.ctx.gprs[11] = config.dtb_addr
        self._engine: Riscv64Tcg | None = None
        self._bound_thread: int | None = None
        self._lock = threading.Lock()
        self._lines = 0                 # STIP/SEIP/SSIP as the hypervisor drives them
        self._seen_mip = 0              # mip and sie at the last Halt (or unbind)
        self._seen_sie = 0
        self._stimecmp: int | None = None
        self._ept_root: int | None = None
        self.hgatp: int | None = None
        self._kicked = False
        self._flush = False
        self._memory_dirty = False
        self._exit_pc: int | None = None  # the last trap's PC (exit_pc)
        self.pending_vectors: list[int] = []
        self.in_cpu = InCpuMmio(self._stop_cpu)
        #: The VM's "no device at this guest-physical address" (set before the first
        #: run; the vCPU asks only about addresses outside its RAM).
        self.unclaimed: Callable[[int], bool] | None = None
        self.on_access_fault: Callable[[AccessFault], None] | None = None
        self.traps = TrapHandler(self)
        self.sbi = self.traps.sbi
        #: What the debugger stops for (pyaxvisor.vcpu.debug).
        self.debug = GuestDebug()

    # -- ArchVCpu: lifecycle -----------------------------------------------------------
    @classmethod
    def new(cls, vm_id: int, vcpu_id: int, config: RISCVVCpuCreateConfig) -> Self:
        if not isinstance(config.space, AddrSpace):
            raise InvalidInput("RISCVVCpuCreateConfig.space must be the VM's AddrSpace")
        if not isinstance(config.space.page_table, GStagePageTable):
            raise InvalidInput("the RISC-V vCPU needs an AddrSpace over a G-stage table "
                               "(nested_page_table(hal, 'riscv64'))")
        if config.timebase_freq <= 0:
            raise InvalidInput(f"timebase_freq must be positive, got {config.timebase_freq}")
        return cls(vm_id, vcpu_id, config)

    def set_entry(self, entry: GuestPhysAddr) -> None:
        self.ctx.pc = int(entry)

    def set_ept_root(self, ept_root: HostPhysAddr) -> None:
        table = self.config.space.page_table
        if table is None or int(table.root_paddr) != int(ept_root):
            raise InvalidInput(f"G-stage root {int(ept_root):#x} is not the root of the "
                               "vCPU's address space")
        self._ept_root = int(ept_root)

    def setup(self, config: RISCVVCpuSetupConfig) -> None:
        table = self.config.space.page_table
        fmt = GSTAGE_MODES.get(config.gstage_mode)
        if fmt is None or not isinstance(table, GStagePageTable):
            raise InvalidInput(f"unknown G-stage mode {config.gstage_mode!r}")
        if not isinstance(table.gstage, fmt):
            raise InvalidInput(f"setup asks for {config.gstage_mode} but the address space's "
                               f"G-stage table is {table.gstage.name}")
        if self._ept_root is None:
            raise BadState("set_ept_root must come before setup")
        self.hgatp = table.gstage.hgatp(HostPhysAddr(self._ept_root), self.vm_id & 0x3FFF)

    def bind(self) -> None:
        engine = current_percpu().engine
        engine.time_freq = self.config.timebase_freq
        engine.time_base_ns = self.config.time_base_ns
        engine.set_ram(ram_mappings(self.config.space))
        engine.join(self.config.xsync, self.config.parallel)
        for gpa, _size in engine.mmio_windows():
            engine.detach_mmio(gpa)
        self._attach_windows(engine)
        self.ctx.load(engine)
        engine.flush_tlb()
        engine.on_trap = self.traps.on_trap
        self.traps.engine = engine
        self.config.space.add_listener(self._space_changed)
        with self._lock:
            # mip as saved (lines driven while unbound went there), the lines' levels
            engine.reset_lines(self._lines)
            engine.csr_rmw(Csr.MIP, self.ctx.mip, S_INTERRUPTS)
            self._engine = engine
            self._bound_thread = threading.get_ident()
        self._memory_dirty = False
        self._seen()

    def unbind(self) -> None:
        engine = self._require_engine()
        self.config.space.remove_listener(self._space_changed)
        with self._lock:
            self._engine = None
            self._bound_thread = None
        engine.apply_lines()
        self.ctx.save(engine)
        self._seen_mip, self._seen_sie = self.ctx.mip, self.ctx.csrs.get(Csr.SIE, 0)
        engine.on_trap = None
        engine.leave()
        self.traps.engine = None

    # -- ArchVCpu: running ---------------------------------------------------------------
    def run(self) -> ExitReason:
        engine = self._require_engine()
        lock = self.config.exec_lock
        while True:
            self._before_entry(engine)
            if lock is None:
                trap = engine.run()
            else:
                lock.acquire(self, engine.request_stop)
                try:
                    trap = engine.run()
                finally:
                    lock.release(self)
            self._exit_pc = trap.pc
            error = self.in_cpu.take_error()
            if error is not None:
                raise error
            exit_reason = self.traps.take_exit()
            if exit_reason is not None:
                if type(exit_reason) is Halt:
                    self._seen()  # what interrupt_pending() answers other threads
                return exit_reason
            if trap.cause != PREEMPTED:
                raise BadState(f"vCPU {self.vcpu_id}: the CPU stopped at trap {trap!r} "
                               "without an exit")
            hal = self.config.hal
            irq = hal.irq_fetch() if hal is not None else None
            if irq is not None:
                return ExternalInterrupt(irq)
            if self._kicked:
                self._kicked = False
                return Nothing()

    def _before_entry(self, engine: Riscv64Tcg) -> None:
        if self._memory_dirty:
            self.sync_memory()
        if self._flush:
            self._flush = False
            engine.flush_tlb()
            engine.flush_code()
        if self._stimecmp is not None and not self._lines & MIP_STIP \
                and self.timer_due(time.monotonic_ns()):
            self.set_timer_line(True)

    def sync_memory(self) -> None:
        """Make the engine's RAM equal to the address space's G-stage table now (the
        bound thread, between runs)."""
        engine = self._require_engine()
        self._memory_dirty = False
        engine.set_ram(ram_mappings(self.config.space))

    def _space_changed(self) -> None:
        self._memory_dirty = True
        self._stop_cpu()

    def _seen(self) -> None:
        engine = self._engine
        if engine is not None:
            self._seen_mip = engine.csr(Csr.MIP) & S_INTERRUPTS
            self._seen_sie = engine.csr(Csr.SIE) & S_INTERRUPTS

    def guest_ram_written(self, ranges: Sequence[tuple[int, int, int]]) -> None:
        """The engine maps guest RAM at its guest-physical addresses: it drops its code
        of the guest-physical ranges (see ``SyncPeer.dma_written``)."""
        engine = self._engine
        if engine is not None:
            if isinstance(ranges, WrittenRanges):
                engine.xsync.dma_written_columns(ranges.gpas, ranges.lengths)
            else:
                engine.xsync.dma_written([(gpa, n) for gpa, _hpa, n in ranges])

    def serve_in_cpu(self, windows: Sequence[InCpuWindow], *, timing: bool = False) -> bool:
        """Serve the MMIO ``windows`` inside the CPU at their guest-physical addresses
        (4 KiB aligned, outside RAM); port windows do not exist here. Attached now when
        bound, else at :meth:`bind`. ``timing`` also times the SBI calls served
        in-CPU (``served_counts().exit_time``)."""
        serving = self.in_cpu.set_windows(windows)
        self.traps.timing = timing
        engine = self._engine
        if engine is not None:
            self._attach_windows(engine)
        return serving

    def _attach_windows(self, engine: Riscv64Tcg) -> None:
        self.in_cpu.attach(engine.attach_mmio, 0, lambda: self.vcpu_id)

    def served_counts(self) -> Served:
        """``SbiCall``: SBI calls completed inside the CPU (timed when asked);
        ``AccessFault`` (once there was one): access faults taken by the guest where
        nothing is; accesses: device reads and writes of the in-CPU windows."""
        traps = self.traps
        times = {"SbiCall": traps.sbi_time} if traps.timing else {}
        exits = {"SbiCall": traps.sbi_calls}
        if traps.access_faults:
            exits["AccessFault"] = traps.access_faults
        engine = self._engine
        delivered = engine.stats["delivered"] if engine is not None else 0
        return Served(exits=exits, exit_time=times, accesses=self.in_cpu.accesses,
                      guest_exceptions=delivered,
                      engine=engine.stats if engine is not None else {})

    def exit_pc(self) -> int | None:
        """The instruction that trapped (or where a stop left the CPU)."""
        return self._exit_pc

    def interrupt_pending(self) -> bool:
        """Whether an enabled supervisor interrupt is pending (what ``wfi`` waits for):
        a line the hypervisor raised or the guest set, or the timer compare reached,
        and its sie bit set. Live on the bound thread between runs, else from what the
        last exit saw plus the lines raised since."""
        engine = self._engine
        if engine is not None and threading.get_ident() == self._bound_thread:
            engine.apply_lines()
            self._seen()
        pending = self._seen_mip | self._lines
        if self.timer_due(time.monotonic_ns()):
            pending |= MIP_STIP
        return bool(pending & self._seen_sie & S_INTERRUPTS)

    def close(self) -> None:
        self.config.space.remove_listener(self._space_changed)

    # -- interrupt lines and the timer ---------------------------------------------------
    def _set_line(self, bit: int, level: bool) -> None:
        with self._lock:
            self._lines = self._lines | bit if level else self._lines & ~bit
            engine = self._engine
            if engine is not None:
                engine.set_lines(bit, level)
            else:  # unbound: mip as the next bind restores it
                self.ctx.mip = self.ctx.mip | bit if level else self.ctx.mip & ~bit

    def set_timer_line(self, level: bool) -> None:
        """Drive STIP (any thread): the platform raises it once :meth:`timer_due`."""
        self._set_line(MIP_STIP, level)

    def set_external_line(self, level: bool) -> None:
        """Drive SEIP (any thread): the interrupt controller's output for this hart's
        S-mode context."""
        self._set_line(MIP_SEIP, level)

    def set_software_line(self, level: bool) -> None:
        """Raise (an IPI) or clear SSIP (any thread). Raising it again re-raises it even
        if the guest cleared it; the guest acknowledges by clearing sip.SSIP."""
        self._set_line(MIP_SSIP, level)
        if level:
            with self._lock:
                self._lines &= ~MIP_SSIP  # an edge: the guest owns SSIP once raised
                self._seen_mip |= MIP_SSIP

    def inject_interrupt(self, vector: int) -> None:
        """Raise the supervisor interrupt ``vector`` (1 software, 5 timer, 9 external):
        the lines' semantics apply (any thread)."""
        setters = {1: self.set_software_line, 5: self.set_timer_line,
                   9: self.set_external_line}
        if vector not in setters:
            raise InvalidInput(f"RISC-V supervisor interrupts are 1, 5 and 9, not {vector}")
        with self._lock:
            self.pending_vectors.append(vector)
        setters[vector](True)

    def set_timer(self, stime: int) -> None:
        """SBI set_timer: store the compare value, clear STIP, tell the platform."""
        self._stimecmp = stime & XLEN_MASK
        self.set_timer_line(False)
        self.platform.timer_written(self.hart_id)

    @property
    def timer_compare(self) -> int | None:
        """The compare value of the last SBI set_timer (``None``: never set)."""
        return self._stimecmp

    def timer_deadline(self) -> int | None:
        """Host monotonic ns at which the time CSR reaches the compare value, ``None``
        when no timer is set (also for the compare value 2**64 - 1, "never")."""
        cmp = self._stimecmp
        if cmp is None or cmp == XLEN_MASK:
            return None
        return self.config.time_base_ns + -(-cmp * _NS // self.config.timebase_freq)

    def timer_due(self, now_ns: int) -> bool:
        """Whether the time CSR has reached the compare value at host time ``now_ns``."""
        cmp = self._stimecmp
        if cmp is None or cmp == XLEN_MASK:
            return False
        ticks = max(0, now_ns - self.config.time_base_ns) * self.config.timebase_freq // _NS
        return ticks >= cmp

    # kick() and request_tlb_flush() (for this hart: the TLB and translated code, which
    # remote fences must drop too, since each hart's engine caches its own): SoftVCpu.

    # -- registers ---------------------------------------------------------------------------
    def set_gpr(self, index: int, value: int) -> None:
        """x``index`` (0..31; writes to x0 are ignored, it is hard-wired to 0)."""
        if not 0 <= index <= 31:
            raise InvalidInput(f"RISC-V has general-purpose registers x0..x31, not {index}")
        engine = self._engine
        if engine is not None:
            engine.set_gpr(index, value)
        elif index:
            self.ctx.gprs[index] = value & XLEN_MASK

    def get_gpr(self, index: int) -> int:
        engine = self._engine
        return engine.gpr(index) if engine is not None else self.ctx.gprs[index]

    def set_return_value(self, value: int) -> None:
        """a0 = ``value`` (an SBI error code, e.g. the outcome of hart_start); a1 = the
        value the SBI call returned, or 0. After a legacy call only a0 is written."""
        self.set_gpr(10, value & XLEN_MASK)
        a1 = self.traps.sbi_value
        if a1 is not None:
            self.set_gpr(11, a1)

    @property
    def pc(self) -> int:
        engine = self._engine
        if engine is not None and threading.get_ident() == self._bound_thread:
            return engine.pc
        return self.ctx.pc

    def csr(self, name: str) -> int:
        """CSR ``name`` (e.g. "sstatus", "sepc", "satp", "mip") for reports: live on the
        bound thread, else as saved at the last unbind (0 if never saved)."""
        csr = _CSR_NAMES.get(name.lower())
        if csr is None:
            raise InvalidInput(f"unknown CSR {name!r}; known: {', '.join(sorted(_CSR_NAMES))}")
        engine = self._engine
        if engine is not None and threading.get_ident() == self._bound_thread:
            return engine.csr(csr)
        if csr in (Csr.MIP, Csr.SIP):
            return self.ctx.mip
        return self.ctx.csrs.get(csr, 0)

    def restart(self, entry: int, opaque: int) -> None:
        """Start the hart again after HSM hart_stop and a new hart_start: S-mode at
        ``entry``, satp = 0, interrupts off, a0 = hart ID, a1 = ``opaque`` (the bound
        thread, between runs)."""
        engine = self._engine
        if engine is not None:
            self.ctx.save(engine)
        self.ctx.restart(entry, self.hart_id, opaque)
        if engine is not None:
            self.ctx.load(engine)
            engine.flush_tlb()

    # -- the debugger (pyaxvisor.vcpu.debug; on the bound thread, between runs) -----------
    def debug_registers(self) -> list[int]:
        engine = self._require_engine()
        return [*engine.gprs(), engine.pc, *(engine.csr(c) for _n, c in rvgdb.CSRS)]

    def debug_set_register(self, number: int, value: int) -> None:
        engine = self._require_engine()
        if not 0 <= number < len(rvgdb.LAYOUT.sizes):
            raise InvalidInput(f"RISC-V has no gdb register {number}")
        if number < 32:
            engine.set_gpr(number, value)
        elif number == rvgdb.PC:
            engine.pc = value
        else:
            engine.set_csr(rvgdb.CSRS[number - rvgdb.PC - 1][1], value)

    def debug_translate(self, va: int, read_u64: Callable[[int], int]) -> int:
        gpa = self._require_engine().translate(va, UC_PROT_READ)
        if gpa is None:
            raise NotFound(f"virtual address {va:#x} has no translation")
        return gpa

    def set_guest_debug(self, config: GuestDebug) -> None:
        """Steps, hardware breakpoints and watchpoints are the engine's native hooks
        (a watchpoint watches the guest-physical bytes its address has now); the VM's EBREAKs
        reach the trap handler while a debugger is on (the guest's own are given back
        to it there)."""
        engine = self._require_engine()
        watches = []
        for w in config.watchpoints:
            gpa = engine.translate(w.addr, UC_PROT_READ)
            if gpa is None:
                raise NotFound(f"watchpoint at {w.addr:#x}: the address has no translation")
            watches.append((w.addr, gpa, w.length, {"read": 1, "write": 2, "access": 3}[w.kind]))
        self.debug = config
        engine.set_debugger_points(config.step, config.hw_breakpoints, watches)
        # an EBREAK reaches M-mode as an invalid instruction or, on the patched build,
        # as an exception: neither may be delivered to the guest while the VM has some
        ebreak = bool(config.sw_breakpoints)
        engine.ebreak_to_m = ebreak
        causes = engine.guest_causes
        engine.guest_causes = causes - {Cause.BREAKPOINT} if ebreak \
            else causes | ({Cause.BREAKPOINT} if Cause.BREAKPOINT in GUEST_CAUSES else set())

    @property
    def engine(self) -> Riscv64Tcg:
        """The software CPU the vCPU is bound to (for inspection)."""
        return self._require_engine()

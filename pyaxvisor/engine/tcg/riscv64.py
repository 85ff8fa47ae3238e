"""The RISC-V 64 software silicon: Unicorn (QEMU's TCG core) with pyaxvisor as M-mode.

Unicorn's RISC-V CPU (the SiFive U54 model: RV64GC with S and U modes, misa
``RV64ACDFIMSU``) has no hypervisor extension. The guest therefore runs in real
S-mode (its user programs in U-mode) and pyaxvisor plays the M-mode firmware:
every trap that is not delegated to S-mode ends in pyaxvisor. The engine:

* enters the guest at the current PC and privilege and runs it until a trap to M
  stops it (:meth:`Riscv64Tcg.run` returns the :class:`Trap`: cause, PC, tval,
  privilege) or a stop request arrives (``Trap.cause`` :data:`PREEMPTED`);
* delivers the exceptions the guest handles itself (``guest_causes``: its page
  faults, breakpoints, misaligned accesses, ``ecall`` from U-mode) to its S-mode
  trap vector with QEMU's own trap entry, without leaving the CPU;
* hands the other traps to :attr:`Riscv64Tcg.on_trap` *inside* the CPU, which
  answers :class:`TrapAction` RESUME (at the PC it set, also after entering a trap of
  its own choosing with :meth:`Riscv64Tcg.enter_guest_trap`), DELIVER (to the guest's
  vector) or STOP; an SBI call handled there costs no CPU exit at all;
* keeps guest-physical memory: RAM mapped zero-copy at its guest-physical
  address (:meth:`Riscv64Tcg.set_ram`, host virtual addresses of the HAL arena),
  device windows served inside the CPU (:meth:`Riscv64Tcg.attach_mmio`). Every
  other guest-physical address faults to M: PMP admits S/U-mode accesses only to
  those ranges (load, store and instruction access faults, also for the guest's own
  page-table walks), and a native memory hook turns any access Unicorn cannot do
  (no memory, or against a mapping's read-only or no-execute permission) into the
  same architectural access fault at the faulting instruction. The guest never
  reaches host memory that is not its RAM;
* drives the supervisor interrupt lines STIP/SEIP/SSIP from any thread
  (:meth:`Riscv64Tcg.set_lines`): written to ``mip`` at once on the CPU's own thread;
  from another thread the CPU stops at its next block start to write them (on the
  stock library a native block hook writes them instead), so the CPU takes them at
  the next block boundary;
* gives the ``time`` CSR a native source: ``(CLOCK_MONOTONIC - time_base_ns) *
  time_freq / 1e9``, the same clock as ``time.monotonic_ns``.

CPU-state offsets (where QEMU keeps the registers, the PC, the privilege level,
the fault address, and how to reach the CPU from Unicorn's handle) depend on the
Unicorn build: :func:`self_test` (:mod:`~pyaxvisor.engine.tcg.riscv64_selftest`)
finds and checks them once per process, and the engine refuses to start with a
:class:`~pyaxvisor.engine.tcg.common.SelfTestFailed` naming what did not check out.

CSRs are accessed through QEMU's debugger path (``riscv_csrrw_debug``), which has
M-mode rights whatever mode the CPU is in: an M-mode CSR read or written through
Unicorn's register API while the CPU is in S-mode silently does nothing (reads give
garbage), and switching PRIV around the access would drop the guest's LR
reservation.

Thread contract: one engine is driven by one host thread (the one that calls
:meth:`~Riscv64Tcg.run`); :meth:`~Riscv64Tcg.request_stop` and
:meth:`~Riscv64Tcg.set_lines` may be called from any thread. ``on_trap`` and the
in-CPU device callbacks run on the driving thread inside the CPU: they may read and
write registers, CSRs and guest memory and flush the TLB, but must not map memory or
start the CPU again.
"""

from __future__ import annotations

import ctypes
import enum
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from unicorn import (
    UC_ARCH_RISCV,
    UC_HOOK_BLOCK,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_INVALID,
    UC_MODE_RISCV64,
    UC_PROT_EXEC,
    Uc,
    UcError,
)
from unicorn import riscv_const as rv
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_ERR_EXCEPTION

from pyaxvisor.engine.tcg import _hooks  # type: ignore[attr-defined]
from pyaxvisor.engine.tcg.common import BOOT_NS, EngineError, unicorn_build
from pyaxvisor.engine.tcg.debug_hooks import DEBUG_WATCHPOINTS, DebugHooks
from pyaxvisor.engine.tcg.native import (
    Kicker,
    MappedMmio,
    Preemptor,
    _add_hook,
    _PreemptState,
    del_hook,
    exit_at_blocks_only,
    map_mmio,
    uc_function,
)
from pyaxvisor.engine.tcg.riscv64_isa import (
    MSTATUS_SIE,
    MSTATUS_SPIE,
    MSTATUS_SPP,
    PMP_NAPOT,
    PMP_R,
    PMP_TOR,
    PMP_W,
    PMP_X,
    S_INTERRUPTS,
    SATP_MODE_BARE,
    SATP_MODE_SHIFT,
    XLEN_MASK,
    Csr,
    Priv,
    insn_length,
)
from pyaxvisor.engine.tcg.riscv64_selftest import RiscvLayout, self_test
from pyaxvisor.engine.tcg.xsync import (
    CODE_ALL,
    RAM_REGIONS,
    TLB,
    Membership,
    SyncGroup,
    SyncPeer,
)

__all__ = ["PREEMPTED", "RamMapping", "Riscv64Tcg", "RiscvLayout", "Trap", "TrapAction",
           "pmp_entries", "self_test"]

PREEMPTED = -1
"""``Trap.cause`` of a run that a stop request ended."""

_ON_TRAP = ctypes.CFUNCTYPE(ctypes.c_int)
_U64 = struct.Struct("<Q")
_ARGS = struct.Struct("<8Q")
_A0_A1 = struct.Struct("<2Q")
_GPRS = struct.Struct("<32Q")
_RECORD = struct.Struct("<qQQQQ")  # cause, epc, tval, priv, mem_fault of struct rv_state
_tuple_new = tuple.__new__
_vmem_translate = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_uint64))(
    uc_function("uc_vmem_translate"))
_set_rdtime_fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(
    uc_function("riscv_cpu_set_rdtime_fn_riscv64"))
(_HOOK_BLOCK, _HOOK_INTR, _HOOK_INSN_INVALID, _HOOK_MEM_INVALID, _RDTIME, _HOOK_FENCE_I,
 _KICK) = _hooks.riscv_hook_addresses()
_HOOK_STEP, _HOOK_BP, _HOOK_WATCH, _debug_size = _hooks.rv_debug_hooks()
#: The cause of the debugger's traps (a custom one no instruction raises).
DEBUGGER_CAUSE = 24


class _RvDebug(ctypes.Structure):
    """``struct rv_debug`` of ``_hooks.c``: the debugger's step and breakpoints."""

    _fields_ = (("env", ctypes.c_void_p), ("raise_exception", ctypes.c_void_p),
                ("skip", ctypes.c_uint64), ("fired", ctypes.c_uint64), ("hits", ctypes.c_uint64),
                ("addr", ctypes.c_uint64), ("watches", ctypes.c_uint64),
                ("pa", ctypes.c_uint64 * DEBUG_WATCHPOINTS),
                ("va", ctypes.c_uint64 * DEBUG_WATCHPOINTS),
                ("len", ctypes.c_uint64 * DEBUG_WATCHPOINTS),
                ("access", ctypes.c_uint64 * DEBUG_WATCHPOINTS))


if ctypes.sizeof(_RvDebug) != _debug_size:
    raise EngineError("pyaxvisor's native hooks and their Python structure disagree: "
                      "rebuild the extension (python setup.py build_ext --inplace)")

#: UC_RISCV_INS_FENCE_I (the riscv-fence-i-hook patch; not in the binding's constants).
UC_RISCV_INS_FENCE_I = 1
_FENCE_I_HOOKABLE = "riscv-fence-i-hook" in unicorn_build().patches


class TrapAction(enum.IntEnum):
    """What :attr:`Riscv64Tcg.on_trap` answers (the values the native hook expects)."""

    STOP = 0      # stop the CPU: run() returns the trap
    RESUME = 1    # go on at the PC as the handler left it
    DELIVER = 2   # take the exception in the guest, as if delegated to S-mode


class Trap(NamedTuple):
    """A trap to M-mode. ``cause``: a :class:`~pyaxvisor.engine.tcg.riscv64_isa.Cause`
    value (an ``ecall`` from S-mode is ECALL_S), or :data:`PREEMPTED`. ``pc``: the
    trapping instruction (for an instruction access fault, the address fetched).
    ``tval``: the fault address; a guest-physical address when ``mem_fault`` is 1 (the
    memory hook raised it), else as the CPU reports it (virtual for access faults,
    0 for ``ecall`` and illegal instructions). ``priv``: the mode trapped from."""

    cause: int
    pc: int
    tval: int
    priv: int
    mem_fault: int


class RamMapping(NamedTuple):
    """Guest RAM in the engine: ``[gpa, gpa + size)`` backed by host memory at host
    virtual address ``hva``, with Unicorn permissions ``perms`` (UC_PROT_* bits)."""

    gpa: int
    size: int
    hva: int
    perms: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


class _RvState(ctypes.Structure):
    """``struct rv_state`` of ``_hooks.c`` (same order, same types)."""

    _fields_ = (
        ("preempt", _PreemptState), ("uc", ctypes.c_void_p), ("emu_start", ctypes.c_void_p),
        ("time_base_ns", ctypes.c_int64), ("time_freq", ctypes.c_uint64),
        ("env", ctypes.c_void_p), ("cpu", ctypes.c_void_p),
        ("pc_off", ctypes.c_uint64), ("priv_off", ctypes.c_uint64),
        ("badaddr_off", ctypes.c_uint64), ("pc_skew", ctypes.c_uint64),
        ("do_interrupt", ctypes.c_void_p), ("csrrw", ctypes.c_void_p),
        ("raise_exception", ctypes.c_void_p), ("cpu_exit", ctypes.c_void_p),
        ("on_trap", _ON_TRAP),
        ("guest_causes", ctypes.c_uint64), ("line_level", ctypes.c_uint64),
        ("line_dirty", ctypes.c_uint64), ("cause", ctypes.c_int64), ("epc", ctypes.c_uint64),
        ("tval", ctypes.c_uint64), ("priv", ctypes.c_uint64), ("mem_fault", ctypes.c_uint64),
        ("mem_pending", ctypes.c_uint64), ("trap_stop", ctypes.c_uint64),
        ("traps", ctypes.c_uint64), ("delivered", ctypes.c_uint64),
        ("breakpoints", ctypes.c_uint64), ("mem_faults", ctypes.c_uint64),
        ("line_updates", ctypes.c_uint64), ("peer", ctypes.c_void_p),
        ("fences_i", ctypes.c_uint64), ("ebreak_to_m", ctypes.c_uint64),
    )


def pmp_entries(ranges: Sequence[tuple[int, int]], capacity: int) -> list[tuple[int, int]] | None:
    """PMP ``(pmpaddr, pmpcfg byte)`` entries that give S/U-mode read, write and
    execute access to exactly the half-open ``ranges`` (4 KiB aligned, sorted, not
    overlapping), or ``None`` when ``capacity`` entries cannot express them.

    A naturally aligned power-of-two range takes one NAPOT entry; any other one a TOR
    entry, plus an OFF entry for its base unless the previous TOR entry ends there.
    """
    out: list[tuple[int, int]] = []
    tor_base: int | None = 0  # where a TOR entry here would start (entry 0: address 0)
    rwx = PMP_R | PMP_W | PMP_X
    for base, end in ranges:
        size = end - base
        if size >= 8 and size & (size - 1) == 0 and base % size == 0:
            out.append(((base >> 2) | ((size >> 3) - 1), PMP_NAPOT | rwx))
            tor_base = None
            continue
        if tor_base != base:
            out.append((base >> 2, 0))
        out.append((end >> 2, PMP_TOR | rwx))
        tor_base = end
    return out if len(out) <= capacity else None


def _merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for base, end in sorted(ranges):
        if merged and base <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((base, end))
    return merged


class Riscv64Tcg:
    """One RISC-V 64 CPU. See the module docstring for the contract."""

    def __init__(self, time_freq: int = 10_000_000, time_base_ns: int = BOOT_NS, *,
                 layout: RiscvLayout | None = None) -> None:
        self._layout = lay = layout if layout is not None else self_test()
        self._uc = uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV64)
        uc.ctl_set_cpu_model(rv.UC_CPU_RISCV64_SIFIVE_U54)
        exit_at_blocks_only(uc)
        uc.reg_read(rv.UC_RISCV_REG_PC)  # Unicorn builds the CPU on first use
        self._uch = uc._uch.value
        cpu = ctypes.c_uint64.from_address(self._uch + lay.uc_cpu).value
        env = ctypes.c_uint64.from_address(cpu + lay.cpu_env).value if cpu else 0
        if not cpu or not env:
            raise EngineError("the RISC-V CPU state could not be reached through the offsets "
                              "the self-test located")
        self._env = (ctypes.c_char * lay.env_size).from_address(env)
        self._mv = memoryview(self._env).cast("B")
        self._gpr = lay.gpr
        self._pc = lay.pc
        self._priv = lay.priv
        st = self._st = _RvState()
        st.uc, st.emu_start = self._uch, uc_function("uc_emu_start")
        st.env, st.cpu = env, cpu
        st.pc_off, st.priv_off, st.badaddr_off, st.pc_skew = lay.pc, lay.priv, lay.badaddr, \
            lay.pc_skew
        st.do_interrupt = uc_function("riscv_cpu_do_interrupt_riscv64")
        st.csrrw = uc_function("riscv_csrrw_debug_riscv64")
        st.raise_exception = uc_function("riscv_raise_exception_riscv64")
        st.cpu_exit = uc_function("cpu_exit")
        self._st_addr = ctypes.addressof(st)
        self._preempt = Preemptor(uc, state=st.preempt, block_hook=False)
        self._thread: int | None = None  # the host thread that runs the CPU
        #: This CPU's place in the sync group of the VM whose vCPU is bound here.
        self.xsync = SyncPeer(self._uch, cpu, st.preempt, st.preempt.emu_stop, "riscv64")
        self._member = Membership(uc, self.xsync)
        self._fence_i_hook: Any = None
        ptr = ctypes.pointer(st)
        # The block hook applies interrupt lines and polls stop requests: needed on the
        # stock library only (the patched build stops at a block start by itself).
        block = (_add_hook(uc, UC_HOOK_BLOCK, _HOOK_BLOCK, ptr),) if self._preempt.polled \
            else ()
        self._hooks = (*block,
                       _add_hook(uc, UC_HOOK_INTR, _HOOK_INTR, ptr),
                       _add_hook(uc, UC_HOOK_INSN_INVALID, _HOOK_INSN_INVALID, ptr),
                       _add_hook(uc, UC_HOOK_MEM_INVALID, _HOOK_MEM_INVALID, ptr))
        _set_rdtime_fn(env, _RDTIME)
        #: How another thread writes interrupt lines into the running CPU: a kick (patch
        #: cpu-kick; the CPU writes them before its next block and goes on), or None
        #: (the stock library: the CPU is stopped at its next block to write them).
        self._kicker = Kicker(uc, _KICK, ptr) if Kicker.available else None
        self.time_freq = time_freq
        self.time_base_ns = time_base_ns
        self._handler: Callable[[Trap], int] | None = None
        self._trap_cb = _ON_TRAP(self._trap_callback)
        self._stv = memoryview(st).cast("B")
        self._record = _RvState.cause.offset
        self._callback_error: BaseException | None = None
        self._ram: dict[int, RamMapping] = {}
        self._mmio: dict[int, tuple[int, MappedMmio]] = {}
        self.pmp_exact = True  # PMP admits exactly RAM and in-CPU windows
        self._debug = dbg = _RvDebug()
        dbg.env, dbg.raise_exception = env, st.raise_exception
        self._debug_hooks = DebugHooks(uc, dbg, breakpoint=_HOOK_BP, watch=_HOOK_WATCH,
                                       step=_HOOK_STEP)

    # -- the debugger ----------------------------------------------------------------------
    def set_debugger_points(self, step: bool, breakpoints: Sequence[int],
                            watches: Sequence[tuple[int, int, int, int]] = ()) -> None:
        """Stop after one instruction (``step``) and before the instructions at the
        virtual addresses ``breakpoints``, and before the accesses ``watches``
        describe (``(va, pa, length, access)``: ``pa`` the guest-physical address of
        ``va`` now, ``access`` bit 0 reads, bit 1 writes; at most
        :data:`DEBUG_WATCHPOINTS`), with a trap to M of :data:`DEBUGGER_CAUSE`
        (:meth:`take_debug_fired` says which; see ``_hooks.c``). CPU stopped; translated
        code is dropped when the hooks change."""
        self._debug.skip = 1
        self._debug_hooks.set(breakpoints, watches, step)

    @property
    def ebreak_to_m(self) -> bool:
        """Whether EBREAK traps to M (``on_trap``, cause 3) rather than to the guest."""
        return bool(self._st.ebreak_to_m)

    @ebreak_to_m.setter
    def ebreak_to_m(self, on: bool) -> None:
        self._st.ebreak_to_m = int(on)

    def take_debug_fired(self) -> tuple[int, int]:
        """What made the last debugger trap (then cleared): 1 the step, 2 a breakpoint,
        3 a watched read, 4 a watched write, 0 none (a guest's EBREAK); and for a
        watchpoint the virtual address accessed."""
        fired, self._debug.fired = self._debug.fired, 0
        return int(fired), int(self._debug.addr)

    # -- running --------------------------------------------------------------------
    @property
    def time_freq(self) -> int:
        """The frequency (Hz) of the time CSR."""
        return self._st.time_freq

    @time_freq.setter
    def time_freq(self, value: int) -> None:
        self._st.time_freq = value

    @property
    def time_base_ns(self) -> int:
        """The host monotonic time (ns) at which the time CSR read 0."""
        return self._st.time_base_ns

    @time_base_ns.setter
    def time_base_ns(self, value: int) -> None:
        self._st.time_base_ns = value

    @property
    def on_trap(self) -> Callable[[Trap], int] | None:
        """Called inside the CPU for each trap to M with the :class:`Trap`; answers a
        :class:`TrapAction`. ``None``: every such trap stops the CPU."""
        return self._handler

    @on_trap.setter
    def on_trap(self, handler: Callable[[Trap], int] | None) -> None:
        self._handler = handler
        self._st.on_trap = self._trap_cb if handler is not None else _ON_TRAP()

    def run(self) -> Trap:
        """Run from the current PC and privilege until a trap stops the CPU or a stop
        request ends the run (``cause`` :data:`PREEMPTED`). An exception raised by
        ``on_trap`` stops the CPU and is re-raised here."""
        st = self._st
        preempt = self._preempt
        if preempt.take():
            return Trap(PREEMPTED, self.pc, 0, self.priv, 0)
        self._thread = threading.get_ident()
        if not preempt.begin():
            preempt.take()
            return Trap(PREEMPTED, self.pc, 0, self.priv, 0)
        if self.xsync.drain():
            self._uc.ctl_flush_tb()
        breakpoints = st.breakpoints
        group = self._member.group
        if group is not None:
            group.run_begins(self.xsync)
        try:
            err = _hooks.riscv_run(self._st_addr)
        finally:
            preempt.end()
            if group is not None:
                group.run_ends()
        if err and not (err == UC_ERR_EXCEPTION and st.breakpoints != breakpoints):
            # A delivered EBREAK leaves Unicorn's "exception" error set until the run
            # ends (it reports EBREAK as invalid instead of as an exception); others
            # are real failures.
            raise EngineError(f"software CPU stopped with {UcError(err)} at PC {self.pc:#x}")
        error = self._callback_error
        if error is not None:
            self._callback_error = None
            raise error
        if st.trap_stop:
            return self._trap()  # a stop request that came meanwhile ends the next run
        self._preempt.take()
        return Trap(PREEMPTED, self.pc, 0, self.priv, 0)

    def _trap(self) -> Trap:
        return _tuple_new(Trap, _RECORD.unpack_from(self._stv, self._record))

    def _trap_callback(self) -> int:
        # Called from C inside the CPU: nothing may propagate (ctypes would print it
        # and answer 0); a failure stops the CPU and run() raises it.
        try:
            return self._handler(  # type: ignore[misc]
                _tuple_new(Trap, _RECORD.unpack_from(self._stv, self._record)))
        except BaseException as exc:
            self._callback_error = exc
            return TrapAction.STOP

    def request_stop(self) -> None:
        """Make the running CPU stop at its next basic block (any thread)."""
        self._preempt.request()

    def stop_if_requested(self) -> None:
        """Inside ``on_trap``: if a stop was requested, stop the CPU once this trap is
        handled (where it resumes, e.g. at the guest's vector); :meth:`run` then returns
        :data:`PREEMPTED`. Needed on the stock library, where a trap that repeats before
        any block runs (a fetch fault at the very vector it is delivered to) never
        reaches the block hook that polls stop requests there; the patched build
        honours a request at the next block start by itself."""
        if self._st.preempt.request:
            self._uc.emu_stop()

    def enter_guest_trap(self, cause: int, tval: int) -> None:
        """Inside ``on_trap``, then answer RESUME: the guest takes exception ``cause``
        at its S-mode vector with trap value ``tval``, as the architecture's trap entry
        to S-mode does: scause = ``cause``, sepc = the trapping PC, stval = ``tval``,
        sstatus.SPIE = SIE, SPP = the mode trapped from, SIE = 0; S-mode (which drops
        the LR reservation, as QEMU's trap entry does); PC = stvec's base. Unlike
        DELIVER, the cause and trap value are the caller's: the software CPU raises an
        AMO's fault as its load part's, and the memory hook's fault address is
        guest-physical."""
        old_priv = self.priv
        status = self.csr(Csr.SSTATUS)
        self.csr_rmw(Csr.SSTATUS, (MSTATUS_SPIE if status & MSTATUS_SIE else 0)
                     | (MSTATUS_SPP if old_priv == Priv.S else 0),
                     MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_SIE)
        self.set_csr(Csr.SCAUSE, cause)
        self.set_csr(Csr.SEPC, self.pc)
        self.set_csr(Csr.STVAL, tval)
        self.priv = Priv.S
        self.pc = self.csr(Csr.STVEC) & ~3

    @property
    def guest_causes(self) -> frozenset[int]:
        """Exception causes the engine delivers to the guest's S-mode vector itself."""
        mask = self._st.guest_causes
        return frozenset(c for c in range(64) if mask >> c & 1)

    @guest_causes.setter
    def guest_causes(self, causes: frozenset[int] | set[int]) -> None:
        mask = 0
        for cause in causes:
            mask |= 1 << int(cause)
        self._st.guest_causes = mask

    @property
    def stats(self) -> dict[str, int]:
        """Counters: traps seen, exceptions delivered to the guest (of them EBREAKs),
        faults raised by the memory hook, interrupt-line updates, stop requests taken,
        FENCE.I instructions seen in an SMP VM and the cross-CPU synchronisation's
        figures (:attr:`~pyaxvisor.engine.tcg.xsync.SyncPeer.stats`)."""
        st = self._st
        return {"traps": st.traps, "delivered": st.delivered, "breakpoints": st.breakpoints,
                "mem_faults": st.mem_faults, "line_updates": st.line_updates,
                "preempt_stops": self._preempt.stops, "fences_i": st.fences_i,
                **self.xsync.stats}

    # -- registers --------------------------------------------------------------------
    def gprs(self) -> list[int]:
        """x0..x31."""
        return list(_GPRS.unpack_from(self._mv, self._gpr))

    def set_gprs(self, values: Sequence[int]) -> None:
        """x0..x31 at once (x0 stays 0)."""
        _GPRS.pack_into(self._mv, self._gpr, 0, *(v & XLEN_MASK for v in values[1:32]))

    def gpr(self, index: int) -> int:
        return _U64.unpack_from(self._mv, self._gpr + 8 * index)[0]

    def set_gpr(self, index: int, value: int) -> None:
        """Write x``index``; writes to x0 are ignored (it is hard-wired to 0)."""
        if index:
            _U64.pack_into(self._mv, self._gpr + 8 * index, value & XLEN_MASK)

    def args(self) -> tuple[int, ...]:
        """a0..a7 (x10..x17): an SBI call's arguments, function and extension IDs."""
        return _ARGS.unpack_from(self._mv, self._gpr + 80)

    def set_a0_a1(self, a0: int, a1: int) -> None:
        """a0 and a1 at once (an SBI call's error and value)."""
        _A0_A1.pack_into(self._mv, self._gpr + 80, a0 & XLEN_MASK, a1 & XLEN_MASK)

    def sbi_return(self, a0: int, a1: int, pc: int) -> None:
        """Return from an SBI call: a0, a1 and the PC past the ``ecall`` at once."""
        mv = self._mv
        _A0_A1.pack_into(mv, self._gpr + 80, a0 & XLEN_MASK, a1 & XLEN_MASK)
        _U64.pack_into(mv, self._pc, pc)

    @property
    def pc(self) -> int:
        return _U64.unpack_from(self._mv, self._pc)[0]

    @pc.setter
    def pc(self, value: int) -> None:
        _U64.pack_into(self._mv, self._pc, value & XLEN_MASK)

    @property
    def priv(self) -> int:
        return _U64.unpack_from(self._mv, self._priv)[0]

    @priv.setter
    def priv(self, value: int) -> None:
        """Switch mode (drops the LR reservation, as any mode change does in QEMU)."""
        self._uc.reg_write(rv.UC_RISCV_REG_PRIV, int(Priv(value)))

    def fprs(self) -> list[int]:
        """f0..f31 as raw 64-bit values."""
        return [self._uc.reg_read(rv.UC_RISCV_REG_F0 + i) for i in range(32)]

    def set_fprs(self, values: Sequence[int]) -> None:
        for i, v in enumerate(values[:32]):
            self._uc.reg_write(rv.UC_RISCV_REG_F0 + i, v & XLEN_MASK)

    def csr_rmw(self, csr: int, value: int, mask: int) -> int | None:
        """Read CSR ``csr`` and write ``value`` into the bits of ``mask`` (0: only read),
        with M-mode rights in any mode; the old value, or ``None`` when the CPU has no
        such CSR. WARL fields keep their legal values, as in hardware."""
        return _hooks.riscv_csr(self._st_addr, int(csr), value & XLEN_MASK, mask & XLEN_MASK)

    def csr(self, csr: int) -> int:
        value = self.csr_rmw(csr, 0, 0)
        if value is None:
            raise EngineError(f"the CPU has no CSR {int(csr):#x}")
        return value

    def set_csr(self, csr: int, value: int) -> None:
        if self.csr_rmw(csr, value, XLEN_MASK) is None:
            raise EngineError(f"the CPU has no writable CSR {int(csr):#x}")

    def has_csr(self, csr: int) -> bool:
        return self.csr_rmw(csr, 0, 0) is not None

    # -- interrupt lines ----------------------------------------------------------------
    def set_lines(self, mask: int, level: bool) -> None:
        """Drive the ``mip`` bits of ``mask`` (within SSIP|STIP|SEIP) to ``level`` (any
        thread). On the thread that runs the CPU (inside it, from a callback, or between
        runs) they are written at once; from another thread a running CPU is kicked and
        writes them itself before its next block (on a library without the cpu-kick
        patch it is stopped at its next block to write them), and a stopped one writes
        them on its next run. An enabled one is taken at the next block. Setting a bit
        again re-raises it even if the guest cleared it meanwhile (SSIP)."""
        _hooks.riscv_set_lines(self._st_addr, mask & S_INTERRUPTS, level)
        if self._preempt.polled:
            return  # the block hook writes them
        if threading.get_ident() == self._thread:
            _hooks.riscv_apply_lines(self._st_addr)
        elif self._kicker is not None:
            self._kicker.kick()
        else:
            self._preempt.request()

    @property
    def lines(self) -> int:
        """The ``mip`` bits as the hypervisor last drove them."""
        return self._st.line_level

    def apply_lines(self) -> None:
        """Write line changes to ``mip`` now (the driving thread, CPU stopped)."""
        _hooks.riscv_apply_lines(self._st_addr)

    def reset_lines(self, level: int) -> None:
        """Take ``level`` as the lines' state without writing ``mip`` (the driving
        thread, CPU stopped, before another vCPU's ``mip`` is loaded)."""
        self._st.line_level = level & S_INTERRUPTS
        self._st.line_dirty = 0

    # -- translation, caches ---------------------------------------------------------------
    def flush_tlb(self) -> None:
        """Drop every cached translation (after the memory map or PMP changed, and for
        remote SFENCE.VMA)."""
        self._uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def join(self, group: SyncGroup | None, parallel: bool) -> None:
        """Run a hart of the VM whose CPUs ``group`` holds (``None``: a VM of one hart),
        translating for CPUs that run at the same time when ``parallel``; CPU stopped.
        In a group, FENCE.I drops the hart's translated code (other harts' stores to
        code are not seen by this engine's translations)."""
        if self._member.join(group, parallel):
            self._st.peer = self.xsync.address if group is not None else None
            self._hook_fence_i()

    def leave(self) -> None:
        """Leave the sync group joined last (at unbind); CPU stopped."""
        if self._member.leave():
            self._st.peer = None
            self._hook_fence_i()

    def _hook_fence_i(self) -> None:
        want = self._member.group is not None and _FENCE_I_HOOKABLE
        if want == (self._fence_i_hook is not None):
            return
        if want:
            self._fence_i_hook = _add_hook(self._uc, UC_HOOK_INSN, _HOOK_FENCE_I,
                                           ctypes.pointer(self._st), UC_RISCV_INS_FENCE_I)
        else:
            del_hook(self._uc, self._fence_i_hook)
            self._fence_i_hook = None
        self._uc.ctl_flush_tb()

    def fence_all(self, code: bool) -> bool:
        """Inside the CPU (an SBI remote fence): every hart of the group, this one
        included, drops its cached address translations (``code``: its translated code,
        at its next stop) before it runs again; returns False, doing nothing, without a
        group. Waits (GIL released) until the running harts dropped their translations."""
        if self._member.group is None:
            return False
        self._member.broadcast(CODE_ALL if code else TLB)
        return True

    def flush_code(self) -> None:
        """Drop translated code (after code was written behind the CPU's back, e.g. by
        the hypervisor through host memory)."""
        self._uc.ctl_flush_tb()

    def translate(self, va: int, prot: int = UC_PROT_EXEC) -> int | None:
        """The physical address the CPU's MMU gives ``va`` in the current mode for an
        access of kind ``prot`` (UC_PROT_READ/WRITE/EXEC), or ``None`` when it faults
        (including PMP: only RAM and in-CPU windows translate)."""
        if self.csr(Csr.SATP) >> SATP_MODE_SHIFT == SATP_MODE_BARE or self.priv == Priv.M:
            return va
        out = ctypes.c_uint64()
        if _vmem_translate(self._uch, va, prot, ctypes.byref(out)) != 0:
            return None
        return out.value

    def read_insn(self, pc: int) -> int | None:
        """The instruction bits at virtual address ``pc`` (16 or 32 bits), fetched
        through the CPU's translation from RAM, or ``None`` if there is none."""
        low = self._read_code(pc)
        if low is None or insn_length(low) == 2:
            return low
        high = self._read_code(pc + 2)
        return None if high is None else low | high << 16

    def _read_code(self, va: int) -> int | None:
        pa = self.translate(va, UC_PROT_EXEC)
        data = None if pa is None else self.read_ram(pa, 2)
        return None if data is None else int.from_bytes(data, "little")

    # -- memory -------------------------------------------------------------------------
    def mappings(self) -> list[RamMapping]:
        """The RAM the engine maps, in address order."""
        return sorted(self._ram.values())

    def mmio_windows(self) -> list[tuple[int, int]]:
        """``(gpa, size)`` of the device windows served inside the CPU."""
        return sorted((gpa, size) for gpa, (size, _cb) in self._mmio.items())

    def set_ram(self, wanted: Sequence[RamMapping]) -> bool:
        """Make the engine's RAM exactly ``wanted`` (page-aligned, not overlapping
        each other or a device window): unmaps what is no longer wanted, maps what is
        new. Returns whether anything changed (then PMP is reprogrammed and cached
        translations and code are dropped)."""
        wanted_set = set(wanted)
        stale = [m for m in self._ram.values() if m not in wanted_set]
        new = [m for m in wanted_set if self._ram.get(m.gpa) != m]
        if not stale and not new:
            return False
        for m in stale:
            self._uc.mem_unmap(m.gpa, m.size)
            del self._ram[m.gpa]
        for m in sorted(new):
            self._check_free(m.gpa, m.size)
            try:
                self._uc.mem_map_ptr(m.gpa, m.size, m.perms, m.hva)
            except UcError as exc:
                raise EngineError(f"cannot map guest RAM [{m.gpa:#x}, {m.end:#x}): {exc}") from exc
            self._ram[m.gpa] = m
        self._memory_changed()
        return True

    def read_ram(self, gpa: int, size: int) -> bytes | None:
        """``size`` bytes of guest RAM at ``gpa``, or ``None`` unless one RAM mapping
        holds them all (device windows are never read here)."""
        for m in self._ram.values():
            if m.gpa <= gpa and gpa + size <= m.end:
                return ctypes.string_at(m.hva + gpa - m.gpa, size)
        return None

    def attach_mmio(self, gpa: int, size: int, read: Callable[[int, int], int],
                    write: Callable[[int, int, int], None],
                    mirror: tuple[int, int, int] | None = None) -> MappedMmio:
        """Serve guest-physical ``[gpa, gpa + size)`` (4 KiB aligned) from the device
        callbacks ``read(offset, size)`` and ``write(offset, size, value)`` inside the
        CPU, and reads of the registers ``mirror`` publishes from its table (see
        :func:`~pyaxvisor.engine.tcg.native.map_mmio`). Returns the mapping (already
        there with this size: the one made first)."""
        if gpa in self._mmio:
            if self._mmio[gpa][0] == size:
                return self._mmio[gpa][1]
            self.detach_mmio(gpa)
        if gpa % 0x1000 or size <= 0 or size % 0x1000:
            raise EngineError(f"in-CPU device window [{gpa:#x}, +{size:#x}) is not 4 KiB "
                              "aligned")
        self._check_free(gpa, size)
        try:
            mapped = map_mmio(self._uc, gpa, size, read, write, mirror)
        except RuntimeError as exc:
            raise EngineError(f"cannot serve a device window at {gpa:#x}: {exc}") from exc
        self._mmio[gpa] = (size, mapped)
        self._memory_changed()
        return mapped

    def detach_mmio(self, gpa: int) -> None:
        size, _callbacks = self._mmio.pop(gpa)
        self._uc.mem_unmap(gpa, size)
        self._memory_changed()

    def _check_free(self, gpa: int, size: int) -> None:
        spans = [(m.gpa, m.end) for m in self._ram.values()]
        spans += [(a, a + s) for a, (s, _cb) in self._mmio.items()]
        for base, end in spans:
            if gpa < end and base < gpa + size:
                raise EngineError(f"[{gpa:#x}, {gpa + size:#x}) overlaps [{base:#x}, {end:#x}) "
                                  "already mapped in the CPU")

    def _memory_changed(self) -> None:
        spans = [(m.gpa, m.end) for m in self._ram.values()]
        spans += [(a, a + s) for a, (s, _cb) in self._mmio.items()]
        entries = pmp_entries(_merge(spans), self._layout.pmp_entries)
        self.pmp_exact = entries is not None
        # Without room in PMP the rules are all off (PMP then admits everything) and
        # the memory hook alone turns accesses outside the mappings into faults.
        self.program_pmp(entries or [])
        self.flush_tlb()
        self.flush_code()
        # what devices write is followed for the first RAM_REGIONS mappings
        self.xsync.set_ram([(m.gpa, m.size, m.hva) for m in sorted(self._ram.values())
                            ][:RAM_REGIONS])

    def program_pmp(self, entries: Sequence[tuple[int, int]]) -> None:
        """Write PMP entries ``(pmpaddr, cfg byte)``; the remaining ones are turned off."""
        count = self._layout.pmp_entries
        cfg = 0
        for i in range(count):
            addr, byte = entries[i] if i < len(entries) else (0, 0)
            self.set_csr(Csr.PMPADDR0 + i, addr)
            cfg |= byte << (8 * (i % 8))
            if i % 8 == 7 or i == count - 1:
                self.set_csr(Csr.PMPCFG0 + 2 * (i // 8), cfg)
                cfg = 0

    def close(self) -> None:
        """Drop the CPU (its hooks and memory go with it)."""
        self.on_trap = None
        self._mmio.clear()
        self._ram.clear()
        self._mv.release()
        self._stv.release()
        self._uc = None  # type: ignore[assignment]

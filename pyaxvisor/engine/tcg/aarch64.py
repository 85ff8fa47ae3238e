"""The AArch64 software silicon: Unicorn (QEMU's TCG core) with pyaxvisor as EL2.

The guest runs at EL1 with SCR_EL3 = NS|HCE|RW, so HCR_EL2 traps work: an HVC,
a trapped SMC/WFI/MSR, or a stage-2 fault ends :meth:`Aarch64Tcg.run` with a
:class:`Trap` carrying what the hardware would have put in ESR_EL2, FAR_EL2 and
HPFAR_EL2. Unicorn's interrupt hook runs *instead of* QEMU's architectural
exception entry, so ESR/FAR are not written to the EL2 registers; they are read
from QEMU's exception record inside the CPU state. Where that record (and the
register file) lies depends on the Unicorn build, so :func:`self_test` finds the
offsets once per process with programs whose syndromes are known (``hvc
#0xabcd`` must give ESR 0x5A00ABCD, an alignment fault at a known address must
give that FAR) and the engine refuses to start when they do not check out.

Guest-physical addresses of the engine are host-physical addresses of the HAL
arena: :meth:`Aarch64Tcg.attach_memory` maps an arena zero-copy at its
``phys_base``, the stage-2
table (VTTBR_EL2) translates IPAs into it, and IPAs it does not map fault to
EL2 — that is how MMIO reaches the hypervisor.

Preemption: :meth:`request_stop` (any thread) makes the CPU stop at the start of its
next translation block (:class:`~pyaxvisor.engine.tcg.native.Preemptor`); ``run`` then
returns a ``Trap`` of kind ``PREEMPTED``. The native block hook runs only while it has
work (the PMU counts instructions or follows the exception level, a watchpoint is
armed): a block hook costs a call on every block. On the stock library it is always
installed, being also where stop requests are polled.

Generic timer: the EL0 timer registers are emulated by native MRS/MSR hooks
(:class:`~pyaxvisor.engine.tcg.native.NativeTimer`) at ``timer_freq`` Hz; the
physical counter of every engine in the process counts from :data:`BOOT_NS`.

PMU: Unicorn's own PMUv3 registers count wrongly (its fold of the cycle counter
is compiled out, so PMCCNTR_EL0 reads the cycles since the previous read) and
raise no interrupt, so the native hooks emulate a Cortex-A72's PMU (with four
32-bit event counters, the ones this Unicorn defines registers for, where the
Cortex-A72 has six; and the cycle counter; CPU_CYCLES at one per host nanosecond,
INST_RETIRED from the translated blocks that start, SW_INCR), see ``_hooks.c``;
:class:`NativePmu` is its Python side: the overflow interrupt request, the host
time it is due, and the state a vCPU saves and restores.

Debug: hardware breakpoints and software step are QEMU's and reach the guest's
vectors as they are. Watchpoints are not (Unicorn stores DBGWVR/DBGWCR but its
watchpoint check is empty): the native hooks keep the registers, and while one is
enabled the engine arms a memory hook that matches the physical address of each
access against the translations of the watched virtual pages (every load and store
then takes Unicorn's slow path, several times slower; nothing is paid while none
is enabled). Limits: a watchpoint also fires for an access through another virtual
alias of the watched physical bytes; a range (DBGWCR.MASK) is watched on its first
16 pages (64 KiB); linked watchpoints (DBGWCR.WT) never fire; the OS lock is not
modelled, as for QEMU's breakpoints in this Unicorn.

Native state: the engine's self-test also locates the CPU state in memory (the
pointer chain from Unicorn's handle, as the RISC-V engine does), the PSTATE word
in it (the block hook reads the exception level there) and the exception record's
fault address (a watchpoint sets it before raising the exception).

Thread contract: one engine is driven by one host thread; only
:meth:`request_stop` may be called from others.
"""

from __future__ import annotations

import ctypes
import enum
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from unicorn import (
    UC_ARCH_ARM64,
    UC_HOOK_BLOCK,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_MODE_ARM,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import arm64_const as a64
from unicorn.unicorn_const import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH

from pyaxvisor.engine.tcg import _hooks  # type: ignore[attr-defined]
from pyaxvisor.engine.tcg.common import (
    BOOT_NS,
    UNICORN_VERSION,
    EngineError,
    SelfTestFailed,
    check_build,
    self_test_failure,
)
from pyaxvisor.engine.tcg.debug_hooks import DEBUG_WATCHPOINTS, DebugHooks
from pyaxvisor.engine.tcg.native import (
    ContextView,
    Kicker,
    MappedMmio,
    NativeTimer,
    Preemptor,
    _PreemptState,
    _TimerState,
    _uclib,
    add_hook,
    del_hook,
    exit_at_blocks_only,
    map_mmio,
    uc_function,
)
from pyaxvisor.engine.tcg.riscv64_selftest import _MAGIC, _chains
from pyaxvisor.engine.tcg.xsync import Membership, SyncGroup, SyncPeer
from pyaxvisor.hal.memory import HostMemory

__all__ = ["BOOT_NS", "IN_CPU_MMIO_BASE", "PMU_COUNTERS", "PSTATE_SS", "UNICORN_VERSION",
           "WATCHPOINTS", "Aarch64Tcg", "EngineError", "NativePmu", "PmuState",
           "SelfTestFailed", "Trap", "TrapKind", "self_test"]
#: Physical window (outside every host memory arena) where device windows served
#: inside the CPU live: guest address ``gpa`` of such a device is mapped by the
#: stage-2 table onto ``IN_CPU_MMIO_BASE + gpa``, which :meth:`Aarch64Tcg.attach_mmio`
#: routes to the device's callbacks.
IN_CPU_MMIO_BASE = 0x80_0000_0000

# SCR_EL3 bits: NS (0) non-secure, HCE (8) HVC enabled, RW (10) lower ELs AArch64.
SCR_EL3_VALUE = (1 << 0) | (1 << 8) | (1 << 10)

# System register coordinates (crn, crm, op0, op1, op2) in Unicorn's CP_REG order.
SYSREG = {
    "SCR_EL3": (1, 1, 3, 6, 0),
    "HCR_EL2": (1, 1, 3, 4, 0),
    "VTCR_EL2": (2, 1, 3, 4, 2),
    "VTTBR_EL2": (2, 1, 3, 4, 0),
    "VBAR_EL2": (12, 0, 3, 4, 0),
    "HPFAR_EL2": (6, 0, 3, 4, 4),
    "VMPIDR_EL2": (0, 0, 3, 4, 5),
    "CNTHCTL_EL2": (14, 1, 3, 4, 0),
    "CNTVOFF_EL2": (14, 0, 3, 4, 3),
    "SCTLR_EL1": (1, 0, 3, 0, 0),
    "SPSR_EL1": (4, 0, 3, 0, 0),
    "VBAR_EL1": (12, 0, 3, 0, 0),
    "TPIDR_EL1": (13, 0, 3, 0, 4),
    "ESR_EL1": (5, 2, 3, 0, 0),
    "FAR_EL1": (6, 0, 3, 0, 0),
    "ID_AA64PFR0_EL1": (0, 4, 3, 0, 0),
    "ID_AA64MMFR1_EL1": (0, 7, 3, 0, 1),
    "MPIDR_EL1": (0, 0, 3, 0, 5),
}

_GPRS = (*(a64.UC_ARM64_REG_X0 + i for i in range(29)), a64.UC_ARM64_REG_X29,
         a64.UC_ARM64_REG_X30)


class TrapKind(enum.IntEnum):
    """QEMU's exception numbers as the interrupt hook reports them, plus PREEMPTED."""

    PREEMPTED = -1
    UDEF = 1
    SWI = 2
    PREFETCH_ABORT = 3
    DATA_ABORT = 4
    IRQ = 5
    FIQ = 6
    BKPT = 7
    HVC = 11
    HYP_TRAP = 12
    SMC = 13
    VIRQ = 14
    VFIQ = 15


#: PSTATE.SS (bit 21): software step, active-not-pending.
PSTATE_SS = 1 << 21


@dataclass(frozen=True, slots=True)
class Trap:
    """What the CPU reported. ``target_el`` 2 means a trap to the hypervisor,
    1 an exception the guest handles itself. ``pc`` is the PC at the hook: past
    the instruction for HVC/SVC, at it for aborts, SMC and undefined. ``pstate``:
    the CPU's PSTATE word at the hook without NZCV and DAIF (mode bits 3:0, SS bit
    21), 0 for a stop request."""

    kind: TrapKind
    syndrome: int
    far: int
    target_el: int
    hpfar: int
    pc: int
    pstate: int = 0


@dataclass(frozen=True)
class _Layout:
    xregs: int      # offset of x0..x30 in the context buffer
    pc: int         # offset of the PC
    record: int     # offset of (syndrome u32, fsr u32, vaddress u64, target_el u32)
    hpfar: int      # offset of HPFAR_EL2
    pstate: int     # offset of the PSTATE word (mode, SS; not NZCV or DAIF)
    uc_cpu: int     # the CPU pointer in Unicorn's handle
    cpu_env: int    # the state pointer in the CPU object
    header: int     # bytes before the CPU state in the context buffer


_layout: _Layout | None = None
_layout_lock = threading.Lock()


def _hvc(imm: int) -> int:
    """A64 encoding of HVC #imm: 0xD4000002 | imm16 << 5."""
    return 0xD4000002 | (imm << 5)


_LDR_X1_X0 = 0xF9400001  # LDR X1, [X0]
_B_SELF = 0x14000000      # B .


#: The software CPU's TLB and code-tracking page size. QEMU picks 4 KiB for any CPU
#: of ARMv7 or later (they have no 1 KiB "tiny" pages); Unicorn leaves ARM at the
#: ARMv5 minimum of 1 KiB unless told, which costs four TLB misses per 4 KiB page.
#: Set before the engine initialises (the first register access).
TARGET_PAGE_SIZE = 0x1000


def _new_uc() -> Uc:
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_cpu_model(a64.UC_CPU_ARM64_A72)
    uc.ctl_set_page_size(TARGET_PAGE_SIZE)
    uc.reg_write(a64.UC_ARM64_REG_CP_REG, (*SYSREG["SCR_EL3"], SCR_EL3_VALUE))
    return uc


def self_test() -> _Layout:
    """Locate and verify the CPU-state offsets for this Unicorn build (cached)."""
    global _layout
    with _layout_lock:
        if _layout is None:
            check_build()
            _layout = _run_self_test()
        return _layout


def _run_self_test() -> _Layout:
    base = 0x1000_0000
    uc = _new_uc()
    uc.mem_map(base, 0x10000)
    ctx = ContextView(uc)

    fail = self_test_failure

    # 1. The register file: distinct magic values in x0..x30 and PC.
    magic = _MAGIC[1:]
    for reg, val in zip(_GPRS, magic, strict=True):
        uc.reg_write(reg, val)
    uc.reg_write(a64.UC_ARM64_REG_PC, base + 0x5F0)
    buf = ctx.snapshot_bytes()
    xregs = buf.find(struct.pack("<31Q", *magic))
    pc_off = buf.find(struct.pack("<Q", base + 0x5F0))
    if xregs < 0 or pc_off < 0:
        raise fail("x0..x30 or PC not found in the CPU state")
    uc_cpu, cpu_env, header = _locate_state(uc, buf, xregs)
    uc.reg_write(a64.UC_ARM64_REG_X7, 0x7777)
    if struct.unpack_from("<Q", ctx.refresh(), xregs + 7 * 8)[0] != 0x7777:
        raise fail("register file offset does not follow register writes")
    pstate_off = _locate_pstate(uc, ctx)

    # 2. The exception record, from two HVCs with known syndromes and an alignment fault.
    hits: list[bytes] = []

    def on_intr(uc_: Uc, intno: int, _user: object) -> None:
        hits.append(ctx.snapshot_bytes())
        uc_.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    prog = struct.pack("<4I", _hvc(0xABCD), _hvc(0x1234), _LDR_X1_X0, _B_SELF)
    uc.mem_write(base, prog)
    try:
        uc.emu_start(base, -1, count=1)
        first = hits[-1]
        record = first.find(struct.pack("<I", 0x5A00ABCD))  # EC=0x16 HVC64, IL=1, imm 0xabcd
        if record < 0:
            raise fail("hvc #0xabcd did not leave syndrome 0x5A00ABCD in the CPU state")
        if struct.unpack_from("<I", first, record + 16)[0] != 2:
            raise fail("hvc did not target EL2")
        uc.emu_start(base + 4, -1, count=1)
        if struct.unpack_from("<I", hits[-1], record)[0] != 0x5A001234:
            raise fail("hvc #0x1234 did not give syndrome 0x5A001234 at the same offset")
        # Stage-2 translation faults at known IPAs: VTTBR_EL2 points at a level-1 table
        # whose entry 0 is a 1 GiB identity block (0x7FD: AF | SH inner | S2AP RW |
        # MemAttr normal WB | valid block) and entry 1 is invalid, so loads from
        # 0x4000_0000..0x7FFF_FFFF fault to EL2 with that FAR and HPFAR = IPA >> 12 << 4.
        table = base + 0x8000
        uc.mem_write(table, struct.pack("<2Q", 0x7FD, 0))
        uc.reg_write(a64.UC_ARM64_REG_CP_REG, (*SYSREG["VTTBR_EL2"], table))
        # T0SZ 32 | SL0 1 (start at level 1) | IRGN0/ORGN0 WBWA | SH0 inner | PS 32 bits | RES1
        uc.reg_write(a64.UC_ARM64_REG_CP_REG, (*SYSREG["VTCR_EL2"], 0x8000_3560))
        uc.reg_write(a64.UC_ARM64_REG_CP_REG, (*SYSREG["HCR_EL2"], (1 << 31) | 1))  # RW|VM
        hpfar_offsets: set[int] | None = None
        for ipa in (0x4567_8101, 0x5ABC_D101):
            uc.reg_write(a64.UC_ARM64_REG_X0, ipa)
            uc.emu_start(base + 8, -1, count=1)
            syn, _fsr, vaddr, target_el = struct.unpack_from("<IIQI", hits[-1], record)
            hpfar = uc.reg_read(a64.UC_ARM64_REG_CP_REG, (*SYSREG["HPFAR_EL2"], 0))
            want = (ipa >> 12) << 4  # HPFAR_EL2.FIPA (bits 39:4) = IPA[51:12]
            if (syn >> 26, vaddr, target_el, hpfar) != (0x24, ipa, 2, want):
                raise fail(f"stage-2 fault gave ESR {syn:#x}, FAR {vaddr:#x}, EL {target_el}, "
                           f"HPFAR {hpfar:#x}; expected EC 0x24, FAR {ipa:#x}, EL 2, "
                           f"HPFAR {want:#x}")
            found = {i for i in range(0, len(hits[-1]) - 7, 8)
                     if struct.unpack_from("<Q", hits[-1], i)[0] == want}
            hpfar_offsets = found if hpfar_offsets is None else hpfar_offsets & found
        if not hpfar_offsets or len(hpfar_offsets) != 1:
            raise fail("HPFAR_EL2 could not be located in the CPU state")
        hpfar_off = hpfar_offsets.pop()
    except UcError as exc:
        raise fail(f"unicorn error {exc}") from exc
    return _Layout(xregs=xregs, pc=pc_off, record=record, hpfar=hpfar_off, pstate=pstate_off,
                   uc_cpu=uc_cpu, cpu_env=cpu_env, header=header)


def _locate_state(uc: Uc, snapshot: bytes, xregs: int) -> tuple[int, int, int]:
    """(CPU pointer offset in the handle, state pointer offset in the CPU, context
    header size): the one pointer chain from Unicorn's handle to memory equal to the
    snapshot, which must also hold for a CPU created afterwards."""
    chains = _chains(uc, snapshot, xregs)
    other = _new_uc()
    for reg, val in zip(_GPRS, _MAGIC[1:], strict=True):
        other.reg_write(reg, val)
    chains &= _chains(other, ContextView(other).snapshot_bytes(), xregs)
    if len({h for _u, _k, h in chains}) != 1:
        raise self_test_failure(f"no unique pointer chain from Unicorn's handle to the "
                                f"AArch64 CPU state ({len(chains)} candidates)")
    return min(chains)


def _locate_pstate(uc: Uc, ctx: ContextView) -> int:
    """The context offset of the PSTATE word that holds the mode and SS bits: the one
    word that follows three PSTATE writes (EL1h, EL0t with SS, EL1t)."""
    found: set[int] | None = None
    for value, word in ((0x3C5, 0x5), (PSTATE_SS, PSTATE_SS), (0x3C4, 0x4)):
        uc.reg_write(a64.UC_ARM64_REG_PSTATE, value)
        view = ctx.refresh()
        hits = {o for o in range(0, len(view) - 3, 4)
                if struct.unpack_from("<I", view, o)[0] == word}
        found = hits if found is None else found & hits
    uc.reg_write(a64.UC_ARM64_REG_PSTATE, 0x3C5)
    if not found or len(found) != 1:
        raise self_test_failure("the PSTATE word was not found (once) in the CPU state")
    return found.pop()


# -- the native state (struct a64_state of _hooks.c: same fields, same order) ----------

#: Event counters of the emulated PMU (PMCR_EL0.N; see the module doc) and watchpoints.
PMU_COUNTERS = 4
WATCHPOINTS = 4
_WATCH_PAGES = 16
_NO_PAGE = 1
_WORK_PMU, _WORK_XLATE, _WORK_WATCH = 1, 2, 4
_U64 = ctypes.c_uint64
_I64 = ctypes.c_int64
_ON_CHANGE = ctypes.CFUNCTYPE(None)
_ON_TRAP = ctypes.CFUNCTYPE(None, ctypes.c_uint32)


class _A64Pmu(ctypes.Structure):
    _fields_ = (("pmcr", _U64), ("cnten", _U64), ("inten", _U64), ("ovs", _U64),
                ("selr", _U64), ("type", _U64 * (PMU_COUNTERS + 1)),
                ("value", _U64 * (PMU_COUNTERS + 1)), ("snap", _U64 * (PMU_COUNTERS + 1)),
                ("insns", _U64 * 2), ("el_ns", _U64 * 2), ("el_since", _I64),
                ("insn_budget", _I64), ("tracking", _U64), ("el_sensitive", _U64),
                ("irq", _U64), ("deadline", _I64), ("on_change", _ON_CHANGE),
                ("notifications", _U64))


class _A64Watch(ctypes.Structure):
    _fields_ = (("wvr", _U64 * WATCHPOINTS), ("wcr", _U64 * WATCHPOINTS),
                ("start", _U64 * WATCHPOINTS), ("end", _U64 * WATCHPOINTS),
                ("page_va", (_U64 * _WATCH_PAGES) * WATCHPOINTS),
                ("page_pa", (_U64 * _WATCH_PAGES) * WATCHPOINTS),
                ("pages", _U64 * WATCHPOINTS), ("enabled", _U64), ("unmapped", _U64),
                ("rehook", _U64), ("hits", _U64), ("translations", _U64))


class _A64State(ctypes.Structure):
    _fields_ = (("preempt", _PreemptState), ("timer", _TimerState), ("env", ctypes.c_void_p),
                ("pstate_off", _U64), ("vaddress_off", _U64), ("reg_read", ctypes.c_void_p),
                ("vmem_translate", ctypes.c_void_p), ("raise_exception", ctypes.c_void_p),
                ("reg_cp", _U64), ("reg_pstate", _U64), ("work", _U64), ("last_el", _U64),
                ("hooked", _U64), ("group", ctypes.c_void_p), ("peer", ctypes.c_void_p),
                ("pmu", _A64Pmu), ("watch", _A64Watch), ("uc", ctypes.c_void_p),
                ("cpu", ctypes.c_void_p), ("cpu_exit", ctypes.c_void_p), ("virq", _U64),
                ("virq_want", _U64), ("virq_kicked", _U64), ("do_interrupt", ctypes.c_void_p),
                ("target_el_off", _U64), ("deliver", _U64), ("on_trap", _ON_TRAP),
                ("delivered", _U64))




class _A64Debug(ctypes.Structure):
    _fields_ = (("env", ctypes.c_void_p), ("vaddress_off", _U64),
                ("raise_exception", ctypes.c_void_p), ("watches", _U64),
                ("pa", _U64 * DEBUG_WATCHPOINTS), ("va", _U64 * DEBUG_WATCHPOINTS),
                ("len", _U64 * DEBUG_WATCHPOINTS), ("access", _U64 * DEBUG_WATCHPOINTS),
                ("hits", _U64))


(_HOOK_BLOCK, _HOOK_MRS, _HOOK_MSR, _HOOK_SYS, _HOOK_WATCH, _KICK,
 _HOOK_INTR) = _hooks.a64_hook_addresses()
_HOOK_DEBUG_CODE, _HOOK_DEBUG_WATCH, _debug_size = _hooks.a64_debug_hooks()
_vmem_translate = _uclib.uc_vmem_translate
_vmem_translate.argtypes = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                            ctypes.POINTER(ctypes.c_uint64))
_vmem_translate.restype = ctypes.c_int
if (ctypes.sizeof(_A64State), _A64State.pmu.offset, _A64State.watch.offset,
        _A64State.virq.offset) != _hooks.a64_layout() or ctypes.sizeof(_A64Debug) != _debug_size:
    raise EngineError("pyaxvisor's native hooks and their Python structure disagree: "
                      "rebuild the extension (python setup.py build_ext --inplace)")


class PmuState(NamedTuple):
    """The guest-visible state of a PMU (what a vCPU keeps while it is not bound):
    ``types`` and ``values`` are PMEVTYPER0..3 then PMCCFILTR, PMEVCNTR0..3 then
    PMCCNTR; the bit masks have bit 31 for the cycle counter."""

    pmcr: int
    cnten: int
    inten: int
    ovs: int
    selr: int
    types: tuple[int, ...]
    values: tuple[int, ...]


class NativePmu:
    """The Python side of the PMU the native hooks emulate (see the module doc).
    ``irq_level`` and ``deadline_ns`` may be read from any thread; ``save`` and
    ``restore`` only while the CPU is stopped, on the thread that runs it."""

    def __init__(self, state: _A64State) -> None:
        self._state = state
        self._addr = ctypes.addressof(state)

    def irq_level(self, now_ns: int) -> bool:
        """The overflow interrupt request at host time ``now_ns``: an overflow flag
        with its interrupt enabled, or a cycle counter's wrap that is due by then."""
        pmu = self._state.pmu
        deadline = pmu.deadline
        return bool(pmu.irq) or (deadline != 0 and now_ns >= deadline)

    @property
    def deadline_ns(self) -> int | None:
        """Host monotonic ns at which a counted cycle counter with its interrupt enabled
        wraps (if the guest stays at its exception level), or ``None``."""
        deadline = self._state.pmu.deadline
        return deadline or None

    def save(self) -> PmuState:
        _hooks.a64_pmu_sync(self._addr, False)
        pmu = self._state.pmu
        return PmuState(pmu.pmcr, pmu.cnten, pmu.inten, pmu.ovs, pmu.selr, tuple(pmu.type),
                        tuple(pmu.value))

    def restore(self, saved: PmuState) -> None:
        pmu = self._state.pmu
        pmu.pmcr, pmu.cnten, pmu.inten, pmu.ovs, pmu.selr = saved[:5]
        pmu.type[:] = saved.types
        pmu.value[:] = saved.values
        _hooks.a64_pmu_sync(self._addr, True)


def watch_range(wvr: int, wcr: int) -> tuple[int, int] | None:
    """The virtual bytes ``[start, end)`` a DBGWVRn_EL1/DBGWCRn_EL1 pair watches, or
    ``None`` when it watches nothing: E clear, LSC 0, no BAS byte, or a reserved MASK
    (1 or 2). As QEMU reads them: DBGWVR is sign-extended from bit 48 with bits 1:0
    ignored; MASK n watches the 2^n bytes aligned around it; otherwise BAS selects
    bytes of the doubleword (of the word, BAS[3:0], when DBGWVR bit 2 is set), its
    first run of ones counting."""
    if not wcr & 1 or not (wcr >> 3) & 3:
        return None
    va = wvr & ((1 << 49) - 1)
    if va >> 48:
        va |= _U64_MAX & ~((1 << 49) - 1)
    va &= ~3
    mask = (wcr >> 24) & 0x1F
    if mask:
        if mask < 3:
            return None
        start = va & ~((1 << mask) - 1)
        return start, min(start + (1 << mask), _U64_MAX)
    bas = (wcr >> 5) & 0xFF
    if va & 4:
        bas &= 0xF
    if not bas:
        return None
    first = (bas & -bas).bit_length() - 1
    run = bas >> first
    length = (run ^ (run + 1)).bit_length() - 1
    return va + first, min(va + first + length, _U64_MAX)


_U64_MAX = (1 << 64) - 1

class Aarch64Tcg:
    """One AArch64 CPU. See the module docstring for the contract."""

    def __init__(self, timer_freq: int = 62_500_000, timer_base_ns: int = BOOT_NS) -> None:
        self._layout = self_test()
        self._uc = uc = _new_uc()
        exit_at_blocks_only(uc)
        self._mapped: dict[int, HostMemory] = {}
        self._mmio: dict[int, MappedMmio] = {}
        self.current_vcpu_id = 0  # the vCPU bound here, for in-CPU MMIO callbacks
        self._ctx = ContextView(uc)
        self._st = st = _A64State()
        self._attach_state(uc, st)
        self._preempt = Preemptor(uc, state=st.preempt, block_hook=False)
        self.on_timer_write: Callable[[int], None] | None = None
        self.timer = NativeTimer(st.timer, timer_freq, timer_base_ns, self._timer_written)
        #: Called (on the vCPU thread, inside the CPU) when the PMU's interrupt request
        #: or its deadline changed; must not raise.
        self.on_pmu_change: Callable[[], None] | None = None
        self._pmu_cb = _ON_CHANGE(self._pmu_changed)
        st.pmu.on_change = self._pmu_cb
        self.pmu = NativePmu(st)
        ptr = ctypes.pointer(st)
        self._ptr = ptr
        self._hooks = (add_hook(uc, UC_HOOK_INSN, _HOOK_MRS, ptr, a64.UC_ARM64_INS_MRS),
                       add_hook(uc, UC_HOOK_INSN, _HOOK_MSR, ptr, a64.UC_ARM64_INS_MSR))
        self._block_hook: Any = None
        #: Times the block hook was installed or removed (each drops translated code).
        self.block_hook_changes = 0
        if self._preempt.polled:
            self._block_hook = add_hook(uc, UC_HOOK_BLOCK, _HOOK_BLOCK, ptr)
            st.hooked = 1
        st.uc, st.cpu, st.cpu_exit = uc._uch.value, self._cpu, uc_function("cpu_exit")
        self._st_addr = ctypes.addressof(st)
        #: How another thread changes the virtual IRQ line of the running CPU: a kick
        #: (patch cpu-kick), or None (then it stops the CPU, see kick_virtual_irq).
        self._kicker = Kicker(uc, _KICK, ptr) if Kicker.available else None
        self._watch_hook: Any = None
        self._sys_hook: Any = None
        self._debug = dbg = _A64Debug()
        dbg.env, dbg.vaddress_off = st.env, st.vaddress_off
        dbg.raise_exception = st.raise_exception
        self._debug_hooks = DebugHooks(uc, dbg, breakpoint=_HOOK_DEBUG_CODE,
                                       watch=_HOOK_DEBUG_WATCH)
        #: This CPU's place in the sync group of the VM whose vCPU is bound here.
        self.xsync = SyncPeer(uc._uch.value, self._cpu, st.preempt, st.preempt.emu_stop,
                              "aarch64")
        self._member = Membership(uc, self.xsync)
        self._trap: Trap | None = None
        self._on_trap_cb = _ON_TRAP(self._on_intr)
        st.on_trap = self._on_trap_cb
        st.do_interrupt = uc_function("arm_cpu_do_interrupt_aarch64")
        st.target_el_off = self._layout.record + 16 - self._layout.header
        st.deliver = 1
        self._intr_hook = add_hook(uc, UC_HOOK_INTR, _HOOK_INTR, ptr)
        self._rec = struct.Struct("<IIQI")
        self._xregs = struct.Struct("<31Q")

    def _attach_state(self, uc: Uc, st: _A64State) -> None:
        """Point the native state at this CPU's state (through the chain the self-test
        found) and at the libunicorn and QEMU functions the hooks call."""
        lay = self._layout
        cpu = ctypes.c_uint64.from_address(uc._uch.value + lay.uc_cpu).value
        env = ctypes.c_uint64.from_address(cpu + lay.cpu_env).value if cpu else 0
        if not env:
            raise EngineError("the AArch64 CPU state could not be reached through the offsets "
                              "the self-test located")
        st.env = env
        self._cpu = cpu
        st.pstate_off = lay.pstate - lay.header
        st.vaddress_off = lay.record + 8 - lay.header
        st.reg_read = uc_function("uc_reg_read")
        st.vmem_translate = uc_function("uc_vmem_translate")
        st.raise_exception = uc_function("helper_exception_with_syndrome_aarch64")
        st.reg_cp = a64.UC_ARM64_REG_CP_REG
        st.reg_pstate = a64.UC_ARM64_REG_PSTATE
        uc.reg_write(a64.UC_ARM64_REG_PSTATE, 0x3C4)
        word = ctypes.c_uint32.from_address(env + st.pstate_off).value
        uc.reg_write(a64.UC_ARM64_REG_PSTATE, 0x3C5)
        if word != 0x4:
            raise EngineError("the AArch64 CPU state reached is not this CPU's")

    def attach_memory(self, memory: HostMemory) -> None:
        """Map a host memory arena at its physical base, zero-copy (once per arena)."""
        if id(memory) in self._mapped:
            return
        base, size = int(memory.phys_base), memory.size
        for other in self._mapped.values():
            if base < int(other.phys_base) + other.size and int(other.phys_base) < base + size:
                raise EngineError(f"host memory at {base:#x} overlaps an arena already mapped")
        self._uc.mem_map_ptr(base, size, UC_PROT_ALL, int(memory.virt_base))
        self._mapped[id(memory)] = memory
        self.xsync.set_ram([(int(m.phys_base), m.size, int(m.virt_base))
                            for m in self._mapped.values()])

    def join(self, group: SyncGroup | None, parallel: bool) -> None:
        """Run a vCPU of the VM whose CPUs ``group`` holds (``None``: a VM of one CPU),
        translating for CPUs that run at the same time when ``parallel``; CPU stopped."""
        if self._member.join(group, parallel):
            st = self._st
            st.group = group.address if group is not None else None
            st.peer = self.xsync.address if group is not None else None
            self._hook_sys()

    def leave(self) -> None:
        """Leave the sync group joined last (at unbind); CPU stopped."""
        if self._member.leave():
            self._st.group = self._st.peer = None
            self._hook_sys()

    def _hook_sys(self) -> None:
        """The SYS hook while a watchpoint is armed or the CPU is in a sync group."""
        want = self._watch_hook is not None or self._member.group is not None
        if want == (self._sys_hook is not None):
            return
        uc = self._uc
        if want:
            self._sys_hook = add_hook(uc, UC_HOOK_INSN, _HOOK_SYS, self._ptr,
                                      a64.UC_ARM64_INS_SYS)
        else:
            del_hook(uc, self._sys_hook)
            self._sys_hook = None
        uc.ctl_flush_tb()

    def attach_mmio(self, paddr: int, size: int, read: Callable[[int, int], int],
                    write: Callable[[int, int, int], None],
                    mirror: tuple[int, int, int] | None = None) -> MappedMmio:
        """Serve physical ``[paddr, paddr + size)`` from Python callbacks inside the CPU
        (``read(offset, size)``, ``write(offset, size, value)``): no exit, no restart.
        ``mirror``: the table of published registers, read in C (``map_mmio``). The
        callbacks must not stop the CPU or write its PC (Unicorn would replay the
        access); they may request a stop, which takes effect at the next block.
        Returns the mapping (already there: the one made first)."""
        if paddr in self._mmio:
            return self._mmio[paddr]
        try:
            mapped = map_mmio(self._uc, paddr, size, read, write, mirror)
        except RuntimeError as exc:
            raise EngineError(f"cannot map in-CPU MMIO at {paddr:#x}: {exc}") from exc
        self._mmio[paddr] = mapped  # kept alive with the mapping
        return mapped

    def _timer_written(self, timer: int) -> None:
        # Called from C inside the CPU loop: an exception here would be printed and
        # lost by ctypes, so the callback must not raise; the vCPU's handler is simple.
        handler = self.on_timer_write
        if handler is not None:
            handler(timer)

    def _pmu_changed(self) -> None:
        # From C inside the CPU loop, as _timer_written.
        handler = self.on_pmu_change
        if handler is not None:
            handler()

    # -- running --------------------------------------------------------------------
    @property
    def deliver_in_cpu(self) -> bool:
        """Whether the guest's own exceptions to EL1 are taken inside the CPU (the
        default) rather than handed to Python like traps to EL2 (then ``run`` returns
        them with ``target_el`` 1 and the caller delivers them, see
        :meth:`deliver_to_el1`). CPU stopped to change it."""
        return bool(self._st.deliver)

    @deliver_in_cpu.setter
    def deliver_in_cpu(self, on: bool) -> None:
        self._st.deliver = int(on)

    @property
    def exceptions_delivered(self) -> int:
        """Guest exceptions taken inside the CPU so far."""
        return int(self._st.delivered)

    def _on_intr(self, intno: int) -> None:
        uc = self._uc
        view = self._ctx.refresh()
        syn, _fsr, vaddr, target_el = self._rec.unpack_from(view, self._layout.record)
        pc = struct.unpack_from("<Q", view, self._layout.pc)[0]
        pstate = struct.unpack_from("<I", view, self._layout.pstate)[0]
        try:
            kind = TrapKind(intno)
        except ValueError:
            kind = TrapKind.UDEF
            syn = 0  # EC 0: unknown reason
        hpfar = 0
        if kind in (TrapKind.DATA_ABORT, TrapKind.PREFETCH_ABORT) and target_el == 2:
            hpfar = struct.unpack_from("<Q", view, self._layout.hpfar)[0]
        self._trap = Trap(kind, syn, vaddr, target_el, hpfar, pc, pstate)
        uc.emu_stop()

    def run(self, pc: int) -> Trap:
        """Run from ``pc`` until a trap or a stop request. A write to a watchpoint
        register stops the CPU too: the watchpoints are armed again and the CPU goes
        on from where it stopped."""
        self._trap = None
        preempt = self._preempt
        if preempt.take():
            return Trap(TrapKind.PREEMPTED, 0, 0, 2, 0, pc)
        st = self._st
        watch = st.watch
        while True:
            if watch.rehook:
                self._arm_watchpoints()
            if not preempt.polled and bool(st.work) != bool(st.hooked):
                self._hook_blocks(bool(st.work))
            if not preempt.begin():
                preempt.take()
                return Trap(TrapKind.PREEMPTED, 0, 0, 2, 0, pc)
            if self.xsync.drain():
                self._uc.ctl_flush_tb()
            group = self._member.group
            if group is not None:
                group.run_begins(self.xsync)
            try:
                self._uc.emu_start(pc, -1)
            except UcError as exc:
                raise EngineError(f"software CPU stopped with {exc} at PC {self.pc:#x}") \
                    from exc
            finally:
                preempt.end()
                if group is not None:
                    group.run_ends()
            trap = self._trap
            if trap is not None:
                return trap
            if preempt.take() or not (watch.rehook or (st.work and not st.hooked)
                                      or self.xsync.pending()):
                return Trap(TrapKind.PREEMPTED, 0, 0, 2, 0, self.pc)
            pc = self.pc

    def _hook_blocks(self, on: bool) -> None:
        """Install (``on``) or remove the native block hook, dropping the translated
        code (which calls the hook or not). The CPU is stopped."""
        uc = self._uc
        if on and self._block_hook is None:
            self._block_hook = add_hook(uc, UC_HOOK_BLOCK, _HOOK_BLOCK, self._ptr)
        elif not on and self._block_hook is not None:
            del_hook(uc, self._block_hook)
            self._block_hook = None
        else:
            return
        self._st.hooked = int(on)
        self.block_hook_changes += 1
        uc.ctl_flush_tb()

    def _arm_watchpoints(self) -> None:
        """Arm the watchpoints DBGWVR/DBGWCR describe now: their ranges and pages for the
        native hooks, which translate the pages at the next block; the memory and TLBI
        hooks while any is armed (translated code is dropped when that changes, as the
        memory hook decides whether loads and stores take Unicorn's slow path)."""
        watch = self._st.watch
        watch.rehook = 0
        enabled = 0
        for n in range(WATCHPOINTS):
            span = watch_range(watch.wvr[n], watch.wcr[n])
            if span is None:
                continue
            start, end = span
            pages = range(start & ~0xFFF, end, 0x1000)[:_WATCH_PAGES]
            watch.start[n], watch.end[n], watch.pages[n] = start, end, len(pages)
            for k, va in enumerate(pages):
                watch.page_va[n][k] = va
                watch.page_pa[n][k] = _NO_PAGE
            enabled |= 1 << n
        watch.enabled = enabled
        uc = self._uc
        if enabled and self._watch_hook is None:
            self._watch_hook = add_hook(uc, UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, _HOOK_WATCH,
                                        self._ptr)
            self._hook_sys()
            uc.ctl_flush_tb()
        elif not enabled and self._watch_hook is not None:
            del_hook(uc, self._watch_hook)
            self._watch_hook = None
            self._hook_sys()
            uc.ctl_flush_tb()
        addr = ctypes.addressof(self._st)
        if enabled:
            _hooks.a64_set_work(addr, _WORK_WATCH | _WORK_XLATE, 0)
        else:
            _hooks.a64_set_work(addr, 0, _WORK_WATCH | _WORK_XLATE)

    def set_debugger_points(self, breakpoints: Sequence[int],
                            watches: Sequence[tuple[int, int, int, int]]) -> None:
        """The debugger's own hardware breakpoints (virtual addresses) and watchpoints
        (``(va, pa, length, access)``, ``pa`` the engine-physical address of ``va`` now,
        ``access`` bit 0 reads, bit 1 writes; at most :data:`DEBUG_WATCHPOINTS`): each
        stops the CPU with the architecture's debug exception to EL2 (see ``_hooks.c``).
        CPU stopped; translated code is dropped when the hooks change."""
        self._debug_hooks.set(breakpoints, watches)

    def translate(self, va: int, write: bool = False) -> int | None:
        """The engine-physical address of virtual ``va`` through the CPU's current
        translation (both stages), or None (CPU stopped)."""
        pa = ctypes.c_uint64()
        err = _vmem_translate(self._uc._uch.value, va, 2 if write else 1, ctypes.byref(pa))
        return None if err else pa.value

    @property
    def debug_hits(self) -> int:
        """Debugger breakpoints and watchpoints hit."""
        return self._debug.hits

    @property
    def watch_hits(self) -> int:
        """Watchpoint exceptions the native hook raised."""
        return self._st.watch.hits

    def complete_step(self) -> None:
        """The hypervisor completed the instruction a trap stopped at (it emulated it
        and stepped the PC): PSTATE.SS goes to 0, so a software step the guest set up
        ends there (its step exception is taken before the next instruction), as KVM
        does when it skips an instruction."""
        pstate = self._uc.reg_read(a64.UC_ARM64_REG_PSTATE)
        if pstate & PSTATE_SS:
            self._uc.reg_write(a64.UC_ARM64_REG_PSTATE, pstate & ~PSTATE_SS)

    def deliver_to_el1(self, trap: Trap) -> int:
        """Take ``trap`` (an exception whose target is EL1) architecturally: what the
        CPU would have done had no hook intercepted it. Returns the new PC.

        Per the Arm ARM's exception entry: SPSR_EL1 = PSTATE; ELR_EL1 = the preferred
        return address (the hook's PC: next instruction for SVC, the instruction for
        aborts and undefined); ESR_EL1 = syndrome; FAR_EL1 = fault address for aborts;
        PSTATE = EL1h with D, A, I, F masked; SP switches to SP_EL1; PC = VBAR_EL1 +
        0x000 (from EL1t), 0x200 (from EL1h) or 0x400 (from EL0) + 0x80 for IRQ,
        0x100 for FIQ.
        """
        uc = self._uc
        pstate = uc.reg_read(a64.UC_ARM64_REG_PSTATE)
        mode = pstate & 0xF
        from_el = mode >> 2
        if from_el == 0:
            vector = 0x400
        elif mode & 1:
            vector = 0x200
        else:
            vector = 0x000
        if trap.kind in (TrapKind.IRQ, TrapKind.VIRQ):
            vector += 0x80
        elif trap.kind in (TrapKind.FIQ, TrapKind.VFIQ):
            vector += 0x100
        else:
            uc.reg_write(a64.UC_ARM64_REG_ESR_EL1, trap.syndrome)
            if trap.kind in (TrapKind.DATA_ABORT, TrapKind.PREFETCH_ABORT):
                uc.reg_write(a64.UC_ARM64_REG_FAR_EL1, trap.far)
        self.write_sysreg("SPSR_EL1", pstate)
        uc.reg_write(a64.UC_ARM64_REG_ELR_EL1, trap.pc)
        if mode != 0b0101:  # leaving SP_EL0: bank it and switch to SP_EL1
            uc.reg_write(a64.UC_ARM64_REG_SP_EL0, uc.reg_read(a64.UC_ARM64_REG_SP))
            sp_el1 = uc.reg_read(a64.UC_ARM64_REG_SP_EL1)
        uc.reg_write(a64.UC_ARM64_REG_PSTATE, 0x3C5)  # EL1h, DAIF masked
        if mode != 0b0101:
            uc.reg_write(a64.UC_ARM64_REG_SP, sp_el1)
        # QEMU caches translation flags derived from the EL; a system-register write
        # makes it recompute them before the next block is translated.
        self.write_sysreg("SCTLR_EL1", self.read_sysreg("SCTLR_EL1"))
        return self.read_sysreg("VBAR_EL1") + vector

    def request_stop(self) -> None:
        """Make the running CPU stop at its next basic block (any thread)."""
        self._preempt.request()

    # -- registers --------------------------------------------------------------------
    def gprs(self) -> list[int]:
        """x0..x30, read from one snapshot of the CPU state."""
        return list(self._xregs.unpack_from(self._ctx.refresh(), self._layout.xregs))

    def gprs_at_trap(self) -> list[int]:
        """x0..x30 as the last trap's snapshot holds them (valid until the CPU runs or a
        register is written)."""
        return list(self._xregs.unpack_from(self._ctx.view, self._layout.xregs))

    def set_gpr(self, index: int, value: int) -> None:
        self._uc.reg_write(_GPRS[index], value)

    @property
    def pc(self) -> int:
        return self._uc.reg_read(a64.UC_ARM64_REG_PC)

    def reg_read(self, reg: int) -> int:
        """A Unicorn register by its ``UC_ARM64_REG_*`` id (SP_EL0, PSTATE, ELR_EL1…)."""
        return self._uc.reg_read(reg)

    def reg_write(self, reg: int, value: int) -> None:
        self._uc.reg_write(reg, value)

    def read_sysreg(self, name: str) -> int:
        return self._uc.reg_read(a64.UC_ARM64_REG_CP_REG, (*SYSREG[name], 0))

    def write_sysreg(self, name: str, value: int) -> None:
        self._uc.reg_write(a64.UC_ARM64_REG_CP_REG, (*SYSREG[name], value))
        if name == "HCR_EL2":
            self._st.virq = value >> 7 & 1

    def read_cp(self, op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
        """A system register by its encoding (the MRS operands)."""
        return self._uc.reg_read(a64.UC_ARM64_REG_CP_REG, (crn, crm, op0, op1, op2, 0))

    def write_cp(self, op0: int, op1: int, crn: int, crm: int, op2: int, value: int) -> None:
        """Write a system register by its encoding. A watchpoint register written here is
        armed before the CPU next runs, as one the guest writes."""
        self._uc.reg_write(a64.UC_ARM64_REG_CP_REG, (crn, crm, op0, op1, op2, value))
        if (op0, op1, crn) == (2, 0, 0) and op2 in (6, 7) and crm < WATCHPOINTS:
            watch = self._st.watch
            (watch.wvr if op2 == 6 else watch.wcr)[crm] = value
            watch.rehook = 1

    # -- the virtual IRQ line, HCR_EL2.VI (bit 7) ----------------------------------------
    # Who drives it says what it wants (want_virtual_irq, any thread); the CPU's thread
    # writes HCR_EL2 (apply_virtual_irq: between runs or from a callback inside the CPU;
    # a64_kick: inside the running CPU after another thread's kick_virtual_irq). The
    # wanted level is the only input, so a kick and a run entry never undo each other.

    def want_virtual_irq(self, asserted: bool) -> None:
        """The level the line should have (any thread); takes effect at the next
        :meth:`apply_virtual_irq` or kick."""
        self._st.virq_want = int(asserted)

    def apply_virtual_irq(self) -> None:
        """Write the wanted level to HCR_EL2.VI; on the CPU's thread only, also from a
        callback inside the running CPU, which then takes an unmasked interrupt at its
        next block start (Unicorn's cpu_interrupt only notes the request, so the CPU is
        made to leave its chained blocks)."""
        _hooks.a64_set_virq(self._st_addr, self._st.virq_want)

    def kick_virtual_irq(self) -> bool:
        """From another thread: make the running CPU write the wanted level before its
        next block and take the interrupt if it is unmasked, without stopping it (a
        stopped CPU writes it when it next runs). False: the library cannot (no cpu-kick
        patch); the caller must stop the CPU instead."""
        kicker = self._kicker
        if kicker is None:
            return False
        kicker.kick()
        return True

    @property
    def virtual_irq_kicks(self) -> int:
        """Kicks that changed the line inside the running CPU."""
        return self._st.virq_kicked

    def flush_tlb(self) -> None:
        """Drop every cached translation (needed after a stage-2 entry changes)."""
        self._uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def mem_read(self, paddr: int, size: int) -> bytes:
        return bytes(self._uc.mem_read(paddr, size))

    @property
    def preempt_stops(self) -> int:
        return self._preempt.stops

    @property
    def stats(self) -> dict[str, int]:
        """Counters: stop requests taken, watchpoint exceptions, PMU interrupt-state
        changes, block-hook installs and removals, kicks that changed the virtual IRQ
        line inside the running CPU, and the cross-CPU
        synchronisation's figures (:attr:`~pyaxvisor.engine.tcg.xsync.SyncPeer.stats`)."""
        return {"preempt_stops": self._preempt.stops, "watch_hits": self._st.watch.hits,
                "pmu_notifications": self._st.pmu.notifications,
                "block_hook_changes": self.block_hook_changes,
                "virq_kicks": self._st.virq_kicked, **self.xsync.stats}

    def close(self) -> None:
        self._ctx = None  # type: ignore[assignment]
        self._uc = None  # type: ignore[assignment]


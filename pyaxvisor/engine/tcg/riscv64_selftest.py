"""The RISC-V engine's start-up self-test: find every CPU-state offset it uses, then
check that the CPU behaves as the engine assumes. Nothing is taken on trust.

Location (:func:`_locate`, on a CPU without native hooks):

* the register file and the PC: distinct values written through Unicorn's register
  API are searched for in a context snapshot (a copy of QEMU's ``CPURISCVState``
  behind a header);
* the CPU itself: Unicorn's handle points to the CPU object, which points to its
  state. Pointers in the first bytes of each are followed (only into memory
  ``/proc/self/maps`` shows readable) until one leads to memory equal to the
  snapshot; exactly one such chain must exist, and it must work for a second CPU;
* the privilege level: the word that follows three PRIV writes (1, 3, 0);
* the PC skew of interrupt hooks (Unicorn adds 4 before calling them): measured on
  a 4-byte ``ecall`` and on a 2-byte ``c.lw`` that faults, which must agree;
* the fault address (``badaddr``): two loads that PMP denies, at different
  addresses; the word holding each address in turn;
* the usable PMP entries: configuration bytes that read back.

Behaviour (:func:`_check`, on a full engine with the native hooks and the layout
found): the ``time`` CSR counts from the engine's base at its frequency; ``ecall``
from S-mode stops at the ``ecall``; a load outside the mapped RAM is a load access
fault at the load with the virtual address as tval; a store to read-only RAM after a
read of it is a precise store access fault with the guest-physical address and
memory unchanged; S-mode ``wfi`` with ``mstatus.TW`` (bit 29 here) is an illegal
instruction; ``ecall`` from U-mode and ``ebreak`` are delivered to the guest's
``stvec`` with the right ``scause``/``sepc``; a STIP line raised while the CPU runs
is taken at ``stvec`` as interrupt 5 at the next block.

Any mismatch raises :class:`~pyaxvisor.engine.tcg.common.SelfTestFailed` naming it.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import threading
import time
from dataclasses import dataclass

from unicorn import (
    UC_ARCH_RISCV,
    UC_HOOK_INTR,
    UC_MODE_RISCV64,
    UC_PROT_ALL,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn import riscv_const as rv

from pyaxvisor.engine.tcg.common import SelfTestFailed, check_build, self_test_failure
from pyaxvisor.engine.tcg.native import ContextView, ProcessMemory, uc_function
from pyaxvisor.engine.tcg.riscv64_isa import (
    INSN_ECALL,
    INSN_WFI,
    INTERRUPT,
    MIP_STIP,
    MSTATUS_SIE,
    MSTATUS_TW,
    PMP_NAPOT,
    PMP_R,
    PMP_W,
    PMP_X,
    XLEN_MASK,
    Cause,
    Csr,
    Priv,
)

__all__ = ["RiscvLayout", "self_test"]

_SCAN_UC = 0x1000      # bytes of Unicorn's handle searched for the CPU pointer
_SCAN_CPU = 0x1000     # bytes of the CPU object searched for the state pointer
_NEAR = 0x40000        # how far into the CPU object its state is looked for first
_MAX_PMP = 16
_CODE = 0x8000_0000    # where the probes' code lives (guest physical)
_DENIED = (0x1234_5670, 0x2345_6780)   # addresses no probe maps
_MAGIC_PC = 0x8000_05F0
_MAGIC = tuple(0xA5A5_0000_0000_005A | (i << 8) for i in range(32))

#: Encodings of the probe instructions (RV64GC).
INSN_EBREAK = 0x0010_0073
INSN_RDTIME_A0 = 0xC010_2573         # csrrs a0, time, zero
INSN_C_LW_A1_A2 = 0x420C             # c.lw a1, 0(a2)
INSN_LD_A0_A1 = 0x0005_B503          # ld a0, 0(a1)
INSN_LD_A3_T1 = 0x0003_3683          # ld a3, 0(t1)
INSN_SD_A3_T1_8 = 0x00D3_3423        # sd a3, 8(t1)
INSN_ADDI_A4_1 = 0x0017_0713         # addi a4, a4, 1

_csrrw = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                          ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint64, ctypes.c_uint64)(
    uc_function("riscv_csrrw_debug_riscv64"))


@dataclass(frozen=True)
class RiscvLayout:
    """Where the engine finds what it uses. Offsets: ``uc_cpu`` of the CPU pointer
    in Unicorn's handle, ``cpu_env`` of the state pointer in the CPU object, and in
    the state (``env_size`` bytes, the part Unicorn's contexts copy): ``gpr`` (x0),
    ``pc``, ``priv``, ``badaddr``. ``pc_skew``: what Unicorn adds to the PC before
    interrupt hooks. ``pmp_entries``: PMP entries that can be configured."""

    uc_cpu: int
    cpu_env: int
    env_size: int
    gpr: int
    pc: int
    priv: int
    badaddr: int
    pc_skew: int
    pmp_entries: int


_layout: RiscvLayout | None = None
_lock = threading.Lock()


def self_test() -> RiscvLayout:
    """The checked layout for this Unicorn build (found once per process)."""
    global _layout
    with _lock:
        if _layout is None:
            check_build()
            layout = _locate()
            _check(layout)
            _layout = layout
        return _layout


def _new_cpu() -> Uc:
    uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV64)
    uc.ctl_set_cpu_model(rv.UC_CPU_RISCV64_SIFIVE_U54)
    uc.reg_read(rv.UC_RISCV_REG_PC)  # Unicorn builds the CPU on first use
    return uc


def _u64(addr: int) -> int:
    return ctypes.c_uint64.from_address(addr).value


def _chains(uc: Uc, view: bytes, x1: int) -> set[tuple[int, int, int]]:
    """(handle offset, CPU offset, context header size) of every pointer chain from
    ``uc``'s handle to memory that equals the snapshot ``view``. The chains whose state
    lies inside the CPU object (QEMU keeps ``env`` in the CPU's own structure) are
    looked for first, which is quick; only if there are none, every chain."""
    return _scan(uc, view, x1, near=True) or _scan(uc, view, x1, near=False)


def _scan(uc: Uc, view: bytes, x1: int, near: bool) -> set[tuple[int, int, int]]:
    pattern = struct.pack("<31Q", *_MAGIC[1:])
    handle = uc._uch.value
    found: set[tuple[int, int, int]] = set()
    readable = ProcessMemory().readable
    if not readable(handle, _SCAN_UC):
        return found
    for u in range(0, _SCAN_UC, 8):
        cpu = _u64(handle + u)
        if not cpu or not readable(cpu, _SCAN_CPU):
            continue
        words = struct.unpack(f"<{_SCAN_CPU // 8}Q", ctypes.string_at(cpu, _SCAN_CPU))
        for k, env in enumerate(words):
            if not env or (near and not 0 < env - cpu < _NEAR) or not readable(env, len(view)):
                continue
            k *= 8
            mem = ctypes.string_at(env, len(view))
            at = mem.find(pattern)
            header = x1 - at
            if at < 0 or header < 0:
                continue
            if mem[:len(view) - header] == view[header:]:
                found.add((u, k, header))
    return found


def _env_of(uc: Uc, uc_cpu: int, cpu_env: int) -> tuple[int, int]:
    cpu = _u64(uc._uch.value + uc_cpu)
    return cpu, _u64(cpu + cpu_env) if cpu else 0


def _snapshot(uc: Uc) -> bytes:
    for i in range(1, 32):
        uc.reg_write(rv.UC_RISCV_REG_X0 + i, _MAGIC[i])
    uc.reg_write(rv.UC_RISCV_REG_PC, _MAGIC_PC)
    return ContextView(uc).snapshot_bytes()


def _locate() -> RiscvLayout:
    fail = self_test_failure
    uc = _new_cpu()
    view = _snapshot(uc)
    pattern = struct.pack("<31Q", *_MAGIC[1:])
    x1 = view.find(pattern)
    pc_at = view.find(struct.pack("<Q", _MAGIC_PC))
    if x1 < 0 or pc_at < 0 or view.find(pattern, x1 + 1) >= 0:
        raise fail("x1..x31 or the PC were not found (once) in the RISC-V CPU state")
    chains = _chains(uc, view, x1)
    # The chain must hold for a CPU created afterwards, too.
    other = _new_cpu()
    other_view = _snapshot(other)
    chains &= _chains(other, other_view, x1)
    headers = {h for _u, _k, h in chains}
    cpus = {_env_of(uc, u, k) for u, k, _h in chains}
    if not chains or len(headers) != 1 or len(cpus) != 1:
        raise fail(f"no unique pointer chain from Unicorn's handle to the RISC-V CPU state "
                   f"({len(chains)} candidates)")
    uc_cpu, cpu_env, header = min(chains)
    _cpu, env = cpus.pop()
    env_size = len(view) - header
    gpr, pc = x1 - header - 8, pc_at - header
    mem = (ctypes.c_char * env_size).from_address(env)
    uc.reg_write(rv.UC_RISCV_REG_X7, 0x7777)
    if gpr < 0 or struct.unpack_from("<2Q", mem, gpr) != (0, _MAGIC[1]) \
            or struct.unpack_from("<Q", mem, gpr + 56)[0] != 0x7777:
        raise fail("the register file does not follow register writes")

    # The privilege level.
    seen: list[set[int]] = []
    for level in (Priv.S, Priv.M, Priv.U):
        uc.reg_write(rv.UC_RISCV_REG_PRIV, int(level))
        seen.append({o for o in range(0, env_size - 7, 8)
                     if struct.unpack_from("<Q", mem, o)[0] == level})
    privs = seen[0] & seen[1] & seen[2]
    if len(privs) != 1:
        raise fail(f"the privilege level was not found in the CPU state ({len(privs)} "
                   "candidates)")
    priv = privs.pop()

    pmp_entries = _pmp_capacity(env)
    if pmp_entries < 1:
        raise fail("no PMP entry can be configured")
    pc_skew, badaddr = _measure_traps(uc, env, mem, env_size, pc)
    return RiscvLayout(uc_cpu=uc_cpu, cpu_env=cpu_env, env_size=env_size, gpr=gpr, pc=pc,
                       priv=priv, badaddr=badaddr, pc_skew=pc_skew, pmp_entries=pmp_entries)


def _csr(env: int, csr: int, value: int = 0, mask: int = 0) -> int | None:
    old = ctypes.c_uint64()
    if _csrrw(env, csr, ctypes.byref(old), value, mask) != 0:
        return None
    return old.value


def _pmp_capacity(env: int) -> int:
    count = 0
    for i in range(_MAX_PMP):
        reg, shift = Csr.PMPCFG0 + 2 * (i // 8), 8 * (i % 8)
        _csr(env, reg, PMP_R << shift, 0xFF << shift)   # R, address matching off
        if ((_csr(env, reg) or 0) >> shift) & 0xFF != PMP_R:
            break
        _csr(env, reg, 0, 0xFF << shift)
        count += 1
    return count


def _measure_traps(uc: Uc, env: int, mem: ctypes.Array[ctypes.c_char], env_size: int,
                   pc_off: int) -> tuple[int, int]:
    """(PC skew of interrupt hooks, badaddr offset) from an ``ecall`` and two loads
    that PMP denies, one of them a 2-byte ``c.lw``."""
    fail = self_test_failure
    hits: list[tuple[int, int, bytes]] = []

    def on_intr(uc_: Uc, intno: int, _user: object) -> None:
        hits.append((intno, struct.unpack_from("<Q", mem, pc_off)[0], bytes(mem)))
        uc_.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    uc.mem_map(_CODE, 0x1000, UC_PROT_ALL)
    prog = struct.pack("<IHHI", INSN_ECALL, INSN_C_LW_A1_A2, 0, INSN_LD_A0_A1)
    uc.mem_write(_CODE, prog)
    # PMP entry 0: the code page, RWX (NAPOT); everything else is denied to S-mode.
    _csr(env, Csr.PMPADDR0, (_CODE >> 2) | 0x1FF, XLEN_MASK)
    _csr(env, Csr.PMPCFG0, PMP_NAPOT | PMP_R | PMP_W | PMP_X, 0xFF)
    uc.reg_write(rv.UC_RISCV_REG_PRIV, int(Priv.S))
    uc.reg_write(rv.UC_RISCV_REG_A2, _DENIED[0])
    uc.reg_write(rv.UC_RISCV_REG_A1, _DENIED[1])
    try:
        for start in (_CODE, _CODE + 4, _CODE + 8):
            uc.emu_start(start, -1, count=1)
    except UcError as exc:
        raise fail(f"probe program stopped with {exc}") from exc
    if [h[0] for h in hits] != [Cause.ECALL_U, Cause.LOAD_ACCESS_FAULT, Cause.LOAD_ACCESS_FAULT]:
        raise fail(f"ecall and two PMP-denied loads gave exceptions {[h[0] for h in hits]}, "
                   "expected [8, 5, 5]")
    skews = {hits[0][1] - _CODE, hits[1][1] - (_CODE + 4), hits[2][1] - (_CODE + 8)}
    if len(skews) != 1:
        raise fail(f"the PC seen by interrupt hooks is off by {sorted(skews)} for 4- and "
                   "2-byte instructions, not by one amount")
    offsets = None
    for (_n, _pc, state), address in zip(hits[1:], _DENIED, strict=True):
        found = {o for o in range(0, env_size - 7, 8)
                 if struct.unpack_from("<Q", state, o)[0] == address}
        offsets = found if offsets is None else offsets & found
    if not offsets or len(offsets) != 1:
        raise fail("the fault address (badaddr) was not found in the CPU state")
    return skews.pop(), offsets.pop()


class _Ram:
    """Page-aligned host memory for the behavioural probes."""

    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, size)
        self._probe = ctypes.c_char.from_buffer(self.map)
        self.addr = ctypes.addressof(self._probe)

    def close(self) -> None:
        del self._probe
        self.map.close()


def _check(layout: RiscvLayout) -> None:
    from pyaxvisor.engine.tcg.riscv64 import PREEMPTED, RamMapping, Riscv64Tcg

    fail = self_test_failure
    ram = _Ram(0x3000)
    try:
        engine = Riscv64Tcg(time_freq=10_000_000, time_base_ns=time.monotonic_ns(),
                            layout=layout)
        # RAM: code page and data page read-write, the third page read-only.
        engine.set_ram([RamMapping(_CODE, 0x2000, ram.addr, UC_PROT_ALL),
                        RamMapping(_CODE + 0x2000, 0x1000, ram.addr + 0x2000,
                                   UC_PROT_READ)])
        stvec = _CODE + 0x800
        engine.set_csr(Csr.STVEC, stvec)
        engine.set_csr(Csr.MEDELEG, (1 << Cause.ECALL_U) | (1 << Cause.BREAKPOINT))
        engine.set_csr(Csr.MIDELEG, MIP_STIP)
        engine.guest_causes = {Cause.ECALL_U, Cause.BREAKPOINT}
        engine.csr_rmw(Csr.MSTATUS, MSTATUS_TW, MSTATUS_TW)

        def load(code: bytes, at: int = _CODE) -> None:
            ctypes.memmove(ram.addr + at - _CODE, code, len(code))
            engine.flush_code()

        def run(pc: int, priv: Priv = Priv.S) -> tuple[int, int, int, bool]:
            """(cause, pc, tval, mem_fault) of the trap that ended the probe; cause
            PREEMPTED when none did (e.g. an untrapped wfi halts the CPU)."""
            engine.priv = priv
            engine.pc = pc
            trap = engine.run()
            return trap.cause, trap.pc, trap.tval, trap.mem_fault

        load(struct.pack("<I", INSN_ECALL), stvec)   # every probe's vector stops there
        # time CSR and ecall from S-mode
        load(struct.pack("<II", INSN_RDTIME_A0, INSN_ECALL))
        before = (time.monotonic_ns() - engine.time_base_ns) // 100
        got = run(_CODE)
        after = (time.monotonic_ns() - engine.time_base_ns) // 100 + 1
        if got[:2] != (Cause.ECALL_S, _CODE + 4):
            raise fail(f"ecall from S-mode gave cause {got[0]} at {got[1]:#x}, expected "
                       f"{Cause.ECALL_S} at {_CODE + 4:#x}")
        if not before <= engine.gpr(10) <= after:
            raise fail(f"rdtime read {engine.gpr(10)}, expected {before}..{after} (10 MHz)")
        # loads outside RAM (PMP) and a store to read-only RAM (memory hook)
        engine.set_gpr(11, _DENIED[1])
        engine.set_gpr(6, _CODE + 0x2000)
        load(struct.pack("<IIII", INSN_LD_A0_A1, INSN_LD_A3_T1, INSN_SD_A3_T1_8,
                         INSN_ADDI_A4_1))
        got = run(_CODE)
        if got != (Cause.LOAD_ACCESS_FAULT, _CODE, _DENIED[1], False):
            raise fail(f"a load outside RAM gave {got}, expected a load access fault at "
                       f"{_CODE:#x} with tval {_DENIED[1]:#x}")
        got = run(_CODE + 4)
        if got != (Cause.STORE_ACCESS_FAULT, _CODE + 8, _CODE + 0x2008, True) \
                or engine.gpr(14) != 0 or ctypes.string_at(ram.addr + 0x2008, 8) != bytes(8):
            raise fail(f"a store to read-only RAM after a load gave {got}, a4={engine.gpr(14)}"
                       f"; expected a precise store access fault at {_CODE + 8:#x}")
        # wfi trapped by mstatus.TW
        load(struct.pack("<I", INSN_WFI))
        got = run(_CODE)
        if got[:2] != (Cause.ILLEGAL_INSTRUCTION, _CODE):
            outcome = ("halted the CPU" if got[0] == PREEMPTED
                       else f"gave cause {got[0]} at {got[1]:#x}")
            raise fail(f"wfi with mstatus.TW (bit {MSTATUS_TW.bit_length() - 1}) set {outcome}, "
                       "expected an illegal instruction")
        # exceptions the guest handles: ecall from U-mode, ebreak
        for insn, priv, cause in ((INSN_ECALL, Priv.U, Cause.ECALL_U),
                                  (INSN_EBREAK, Priv.S, Cause.BREAKPOINT)):
            load(struct.pack("<I", insn))
            got = run(_CODE, priv)
            delivered = (got[1], engine.csr(Csr.SCAUSE), engine.csr(Csr.SEPC))
            if delivered != (stvec, cause, _CODE):
                raise fail(f"{Cause(cause).name} was not delivered to stvec: stopped at "
                           f"{got[1]:#x}, scause {delivered[1]:#x}, sepc {delivered[2]:#x}")
        # the supervisor timer line, raised while the CPU runs: an SBI-style handler
        # raises it and resumes; the CPU must take it at a following block
        engine.set_csr(Csr.SIE, MIP_STIP)
        engine.csr_rmw(Csr.SSTATUS, MSTATUS_SIE, MSTATUS_SIE)
        load(struct.pack("<II", INSN_ECALL, 0x0000_006F))  # ecall; j .

        def raise_line(trap: object) -> int:
            engine.on_trap = None
            engine.set_lines(MIP_STIP, True)
            engine.pc = _CODE + 4
            return 1  # TrapAction.RESUME

        engine.on_trap = raise_line
        got = run(_CODE)
        if (got[1], engine.csr(Csr.SCAUSE), engine.csr(Csr.SEPC)) \
                != (stvec, INTERRUPT | 5, _CODE + 4):
            raise fail(f"a STIP line raised while the CPU ran was not taken at stvec "
                       f"(stopped at {got[1]:#x}, scause {engine.csr(Csr.SCAUSE):#x})")
        engine.close()
    except SelfTestFailed:
        raise
    except Exception as exc:
        raise fail(f"probe failed: {exc!r}") from exc
    finally:
        ram.close()

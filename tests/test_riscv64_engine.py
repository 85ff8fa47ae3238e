"""The RISC-V software CPU: its start-up self-test, the Unicorn 2.1.4 facts the engine
relies on (pinned here), PMP programming and the memory map."""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import struct

import pytest
from unicorn import (
    UC_ARCH_RISCV,
    UC_ERR_INSN_INVALID,
    UC_HOOK_INTR,
    UC_MODE_RISCV64,
    UC_PROT_ALL,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn import riscv_const as rv

from pyaxvisor.engine.tcg import riscv64_selftest as selftest
from pyaxvisor.engine.tcg.common import EngineError, SelfTestFailed
from pyaxvisor.engine.tcg.riscv64 import (
    PREEMPTED,
    RamMapping,
    Riscv64Tcg,
    TrapAction,
    pmp_entries,
)
from pyaxvisor.engine.tcg.riscv64_isa import (
    INSN_ECALL,
    MSTATUS_TW,
    PMP_NAPOT,
    PMP_TOR,
    Cause,
    Csr,
    Priv,
)

BASE = 0x8000_0000
RWX = 7


class Ram:
    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, size)
        self._c = ctypes.c_char.from_buffer(self.map)
        self.addr = ctypes.addressof(self._c)

    def put(self, offset: int, data: bytes) -> None:
        self.map[offset:offset + len(data)] = data


@pytest.fixture
def ram():
    r = Ram(0x4000)
    yield r
    del r._c


def engine_with(ram: Ram, code: bytes) -> Riscv64Tcg:
    engine = Riscv64Tcg()
    engine.set_ram([RamMapping(BASE, 0x4000, ram.addr, UC_PROT_ALL)])
    ram.put(0, code)
    engine.priv = Priv.S
    engine.pc = BASE
    return engine


# -- the self-test ------------------------------------------------------------------------
def test_self_test_finds_the_cpu_state_as_validated_with_unicorn_2_1_4():
    layout = selftest.self_test()
    assert layout.pc_skew == 4            # Unicorn adds 4 before interrupt hooks
    assert layout.badaddr == 0x220        # where stval (QEMU's badaddr) lives
    assert (layout.gpr, layout.pc, layout.priv) == (0, 0x200, 0x250)
    assert layout.pmp_entries == 8        # pmpcfg2 is ignored on RV64 in this QEMU base


def test_self_test_refuses_a_wrong_tw_bit(monkeypatch):
    # The specification puts mstatus.TW at bit 21; this CPU has it at bit 29.
    monkeypatch.setattr(selftest, "MSTATUS_TW", 1 << 21)
    with pytest.raises(SelfTestFailed, match=r"wfi with mstatus.TW \(bit 21\).*refusing to "
                                             "guess"):
        selftest._check(selftest.self_test())


@pytest.mark.parametrize("field,delta,what", [("pc_skew", -4, "ecall from S-mode"),
                                              ("badaddr", 8, "load outside RAM"),
                                              ("priv", 8, "ecall from S-mode")])
def test_self_test_refuses_a_wrong_layout(field, delta, what):
    layout = selftest.self_test()
    wrong = dataclasses.replace(layout, **{field: getattr(layout, field) + delta})
    with pytest.raises(SelfTestFailed, match=what):
        selftest._check(wrong)


def test_self_test_refuses_when_the_cpu_cannot_be_reached(monkeypatch):
    monkeypatch.setattr(selftest, "_SCAN_UC", 8)   # the CPU pointer lies further in
    with pytest.raises(SelfTestFailed, match="no unique pointer chain"):
        selftest._locate()


def test_the_engine_refuses_to_start_when_the_self_test_fails(monkeypatch):
    monkeypatch.setattr(selftest, "_layout", None)
    monkeypatch.setattr(selftest, "MSTATUS_TW", 1 << 21)
    with pytest.raises(SelfTestFailed):
        Riscv64Tcg()


# -- Unicorn 2.1.4 facts ------------------------------------------------------------------
def test_the_cpu_has_no_hypervisor_extension():
    engine = Riscv64Tcg()
    assert engine.csr(Csr.MISA) == 0x8000_0000_0014_112D   # RV64 A C D F I M S U
    assert not engine.csr(Csr.MISA) & (1 << 7)              # no H


def test_m_mode_csrs_through_unicorns_register_api_fail_silently_in_s_mode():
    engine = Riscv64Tcg()
    engine.priv = Priv.S
    engine._uc.reg_write(rv.UC_RISCV_REG_MSTATUS, MSTATUS_TW)
    assert not engine.csr(Csr.MSTATUS) & MSTATUS_TW          # nothing happened
    engine.priv = Priv.M
    engine._uc.reg_write(rv.UC_RISCV_REG_MSTATUS, MSTATUS_TW)
    assert engine.csr(Csr.MSTATUS) & MSTATUS_TW              # in M-mode it works
    engine.priv = Priv.S
    engine.csr_rmw(Csr.MSTATUS, 0, MSTATUS_TW)               # the engine's path: any mode
    assert not engine.csr(Csr.MSTATUS) & MSTATUS_TW


def _raw_cpu(code: bytes, priv: Priv) -> tuple[Uc, list[tuple[int, int]]]:
    uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV64)
    uc.ctl_set_cpu_model(rv.UC_CPU_RISCV64_SIFIVE_U54)
    uc.mem_map(BASE, 0x1000)
    uc.mem_write(BASE, code)
    uc.reg_write(rv.UC_RISCV_REG_PRIV, int(priv))
    seen: list[tuple[int, int]] = []

    def on_intr(uc_: Uc, intno: int, _user: object) -> None:
        seen.append((intno, uc_.reg_read(rv.UC_RISCV_REG_PC)))
        uc_.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_intr)
    return uc, seen


@pytest.mark.parametrize("priv", [Priv.U, Priv.S])
def test_every_ecall_is_reported_as_8_with_the_pc_4_past_it(priv):
    uc, seen = _raw_cpu(struct.pack("<I", INSN_ECALL), priv)
    uc.emu_start(BASE, -1)
    assert seen == [(8, BASE + 4)]


def test_ebreak_stops_with_invalid_instruction_instead_of_the_hook():
    uc, seen = _raw_cpu(struct.pack("<I", selftest.INSN_EBREAK), Priv.S)
    with pytest.raises(UcError) as info:
        uc.emu_start(BASE, -1)
    assert info.value.errno == UC_ERR_INSN_INVALID and seen == []


def test_rdtime_is_illegal_without_a_time_source():
    uc, seen = _raw_cpu(struct.pack("<I", selftest.INSN_RDTIME_A0), Priv.S)
    uc.emu_start(BASE, -1)
    assert seen == [(Cause.ILLEGAL_INSTRUCTION, BASE + 4)]


def test_time_csr_counts_at_the_frequency_from_the_base(ram):
    import time

    base = time.monotonic_ns() - 1_000_000_000              # one second ago
    engine = engine_with(ram, struct.pack("<II", selftest.INSN_RDTIME_A0, INSN_ECALL))
    engine.time_base_ns, engine.time_freq = base, 1_000_000  # 1 MHz
    trap = engine.run()
    assert trap.cause == Cause.ECALL_S
    assert 1_000_000 <= engine.gpr(10) < 1_000_000 + 200_000


# -- running ------------------------------------------------------------------------------
def test_a_stop_request_before_run_returns_at_once(ram):
    engine = engine_with(ram, struct.pack("<I", 0x6F))      # j .
    engine.request_stop()
    trap = engine.run()
    assert trap.cause == PREEMPTED and trap.pc == BASE


def test_on_trap_resumes_or_stops_and_its_errors_reach_run(ram):
    engine = engine_with(ram, struct.pack("<II", INSN_ECALL, INSN_ECALL))
    calls = []

    def handler(trap):
        calls.append(trap)
        engine.pc = trap.pc + 4
        return TrapAction.RESUME if len(calls) == 1 else TrapAction.STOP

    engine.on_trap = handler
    trap = engine.run()
    assert [t.pc for t in calls] == [BASE, BASE + 4] and trap.pc == BASE + 4
    engine.pc = BASE

    def broken(trap):
        raise EngineError("handler broke")

    engine.on_trap = broken
    with pytest.raises(EngineError, match="handler broke"):
        engine.run()


# -- PMP and memory -------------------------------------------------------------------------
def test_pmp_entries_napot_tor_and_capacity():
    rwx = 7
    assert pmp_entries([(0x8000_0000, 0x8100_0000)], 8) == [
        ((0x8000_0000 >> 2) | ((0x100_0000 >> 3) - 1), PMP_NAPOT | rwx)]
    assert pmp_entries([(0x8000_0000, 0x8000_3000), (0x8000_3000 + 0x1000, 0x8000_5000)],
                       8) == [(0x8000_0000 >> 2, 0), (0x8000_3000 >> 2, PMP_TOR | rwx),
                              ((0x8000_4000 >> 2) | 0x1FF, PMP_NAPOT | rwx)]  # 4 KiB: NAPOT
    assert pmp_entries([(0, 0x3000)], 8) == [(0x3000 >> 2, PMP_TOR | rwx)]
    many = [(0x1000_0000 * i, 0x1000_0000 * i + 0x3000) for i in range(1, 6)]
    assert pmp_entries(many, 8) is None


def test_memory_outside_the_mappings_faults_with_or_without_pmp(ram):
    code = struct.pack("<II", selftest.INSN_LD_A0_A1, INSN_ECALL)
    engine = engine_with(ram, code)
    engine.set_gpr(11, 0x1234_5678)
    trap = engine.run()
    assert (trap.cause, trap.pc, trap.tval, trap.mem_fault) == (
        Cause.LOAD_ACCESS_FAULT, BASE, 0x1234_5678, False)   # PMP: tval virtual
    assert engine.pmp_exact
    # five more 12 KiB ranges: more than 8 PMP entries can say, so PMP is turned off
    extra = [RamMapping(0x1000_0000 * i, 0x3000, ram.addr + 0x1000 * i, UC_PROT_READ)
             for i in range(2, 7)]
    engine.set_ram([*engine.mappings(), *extra])
    assert not engine.pmp_exact
    engine.pc = BASE
    trap = engine.run()
    assert (trap.cause, trap.pc, trap.tval, trap.mem_fault) == (
        Cause.LOAD_ACCESS_FAULT, BASE, 0x1234_5678, True)    # the memory hook: physical
    assert engine.stats["mem_faults"] == 1


def test_mappings_may_not_overlap_and_windows_must_be_pages(ram):
    engine = engine_with(ram, b"")
    with pytest.raises(EngineError, match="overlaps"):
        engine.set_ram([*engine.mappings(), RamMapping(BASE + 0x1000, 0x1000, ram.addr, RWX)])
    with pytest.raises(EngineError, match="4 KiB aligned"):
        engine.attach_mmio(0x1000_0100, 0x100, lambda o, s: 0, lambda o, s, v: None)
    with pytest.raises(EngineError, match="overlaps"):
        engine.attach_mmio(BASE, 0x1000, lambda o, s: 0, lambda o, s, v: None)
    engine.attach_mmio(0x1000_0000, 0x1000, lambda o, s: 0, lambda o, s, v: None)
    assert engine.mmio_windows() == [(0x1000_0000, 0x1000)]
    assert engine.read_ram(0x1000_0000, 4) is None          # devices are never read here
    assert engine.read_ram(BASE, 4) == bytes(4)

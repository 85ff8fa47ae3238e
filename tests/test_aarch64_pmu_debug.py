"""The AArch64 PMU and self-hosted debug on the software engine, from the guests'
side: ``tests/guests/aarch64/pmu.S``, ``pmu_irq.S`` and ``debug.S`` leave what they
saw at RESULTS and the tests compare it with what the Arm ARM (DDI 0487) and a
Cortex-A72 (its PMUv3 as :mod:`pyaxvisor.engine.tcg.aarch64` emulates it: four event
counters) say it must be.

Expected values are derived here from the architecture and the guests' sources (the
register encodings, the instructions between two counter reads, the labels the
exceptions must return to), never from what a run printed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from aarch64_machine import RAM, Machine
from guest_build import build, symbols
from machines import machine_fixture

from pyaxvisor.boards.quick import aarch64_vm
from pyaxvisor.engine.tcg.aarch64 import PMU_COUNTERS
from pyaxvisor.mm import GuestPhysAddr
from pyaxvisor.vcpu import AccessWidth, MmioWrite, SystemDown
from pyaxvisor.vm.result import VmResult

LOAD = RAM + 0x8_0000
RESULTS = 0x4001_0000
TIMEOUT = 10.0

machine = machine_fixture(Machine)


@dataclass
class Run:
    """A guest run on the virt board: its result, console output and RESULTS page."""

    result: VmResult
    output: bytes
    memory: bytes

    def u64(self, offset: int) -> int:
        return int.from_bytes(self.memory[offset:offset + 8], "little")


def run_on_virt(guest: str, *, in_cpu_mmio: bool = True) -> Run:
    output = bytearray()
    vm = aarch64_vm(ram_size=64 << 20, console_write=output.extend, in_cpu_mmio=in_cpu_mmio)
    try:
        vm.write_guest(LOAD, build("aarch64", guest, LOAD))
        result = vm.run(LOAD, dtb_addr=0, timeout=TIMEOUT)
        memory = vm.read_guest(RESULTS, 0x1000)
    finally:
        vm.close()
    return Run(result, bytes(output), memory)


def assert_powered_off(run: Run) -> None:
    assert run.result.reason == "poweroff", run.result
    assert run.result.status == 0
    assert run.output == b""  # the guests print nothing; an unexpected exception stops them


# -- PMUv3 registers (ARM DDI 0487, D13 / the Cortex-A72 TRM, 11.x) ---------------------------

#: PMCR_EL0 fields: IMP [31:24], IDCODE [23:16], N [15:11]; E 0, P 1, C 2 (write-only,
#: read as zero), D 3, X 4, DP 5, LC 6.
PMCR_E, PMCR_P, PMCR_C, PMCR_D, PMCR_X, PMCR_DP, PMCR_LC = (1 << b for b in range(7))
IMP_ARM, IDCODE_A72 = 0x41, 0x02
#: Common events: SW_INCR, INST_RETIRED, CPU_CYCLES.
SW_INCR, INST_RETIRED, CPU_CYCLES = 0x00, 0x08, 0x11
#: PMEVTYPER<n>_EL0 of PMUv3 for ARMv8.0 (a Cortex-A72): P 31, U 30, NSK 29, NSU 28,
#: NSH 27, M 26, evtCount [9:0]; bits [25:10] RES0. PMCCFILTR_EL0: the same filter bits,
#: [25:0] RES0.
FILTER_BITS = 0b111111 << 26
EVTYPER_WRITABLE = FILTER_BITS | 0x3FF
CCFILTR_WRITABLE = FILTER_BITS
CYCLE_BIT = 1 << 31  # PMCCNTR_EL0's bit in PMCNTENSET, PMOVSSET, PMINTENSET


def esr(ec: int, iss: int, il: int = 1) -> int:
    return (ec << 26) | (il << 25) | iss


def sysreg_trap_iss(op0: int, op1: int, crn: int, crm: int, op2: int, rt: int,
                    read: bool) -> int:
    """ISS of EC 0x18 (trapped MSR/MRS): Op0 [21:20], Op2 [19:17], Op1 [16:14],
    CRn [13:10], Rt [9:5], CRm [4:1], Direction [0] (1: read)."""
    return (op0 << 20) | (op2 << 17) | (op1 << 14) | (crn << 10) | (rt << 5) | (crm << 1) \
        | int(read)


@pytest.fixture(scope="module")
def pmu() -> Run:
    run = run_on_virt("pmu")
    assert_powered_off(run)
    return run


def test_pmu_identifies_as_a_cortex_a72_with_the_emulated_counters(pmu):
    pmcr = pmu.u64(0x00)
    assert pmcr >> 24 == IMP_ARM
    assert (pmcr >> 16) & 0xFF == IDCODE_A72
    assert (pmcr >> 11) & 0x1F == PMU_COUNTERS == 4
    assert pmcr & PMCR_E == 0  # E resets to 0
    # PMCEID0_EL0 bit n: common event n is implemented; the emulated ones exactly
    assert pmu.u64(0x08) == (1 << SW_INCR) | (1 << INST_RETIRED) | (1 << CPU_CYCLES)
    assert pmu.u64(0x10) == 0  # PMCEID1_EL0: none of the events 0x20..0x3f


def test_cycle_counter_reads_strictly_increase(pmu):
    reads = [pmu.u64(0x18 + 8 * i) for i in range(8)]
    assert all(b > a for a, b in itertools.pairwise(reads)), [hex(r) for r in reads]
    # PMCR.C reset it just before: at one cycle per ns it is far below the run's timeout
    assert 0 < reads[0] < int(TIMEOUT * 1e9)


def test_instructions_retired_over_a_counted_loop(pmu):
    # Between the two reads of PMEVCNTR0 (INST_RETIRED): `mov x5, #1000` and 1000 times
    # `subs; b.ne` = 2001 instructions, plus at most the two reading MRS themselves.
    assert 2001 <= pmu.u64(0x58) <= 2003


def test_software_increment_adds_to_exactly_the_selected_enabled_counters(pmu):
    # three PMSWINC writes of 0b0110: counter 1 (SW_INCR, enabled) +3; counter 2
    # (SW_INCR, selected, not enabled) stays 0; counter 3 (SW_INCR, enabled, not
    # selected) stays 0
    assert pmu.u64(0x60) == 3
    assert pmu.u64(0x68) == 0
    assert pmu.u64(0xF8) == 0


def test_pmselr_selects_the_counter_pmxev_registers_access(pmu):
    assert pmu.u64(0x70) == CPU_CYCLES   # PMEVTYPER3 as written through PMXEVTYPER
    assert pmu.u64(0x78) == 0xFFFF_FFF0  # PMEVCNTR3 as written through PMXEVCNTR (not enabled)
    assert pmu.u64(0x80) == 3            # PMSELR_EL0.SEL reads back


def test_event_counter_wrap_sets_its_overflow_flag_only(pmu):
    assert pmu.u64(0x88) == 0       # 0xffffffff + 1 wraps a 32-bit event counter to 0
    assert pmu.u64(0x90) == 1 << 1  # PMOVSSET: counter 1's flag, no other
    assert pmu.u64(0x98) == 0       # PMOVSCLR write of 1 << 1 cleared it


def test_writable_bits_of_the_pmu_registers(pmu):
    assert pmu.u64(0xA0) == EVTYPER_WRITABLE
    assert pmu.u64(0xA8) == CCFILTR_WRITABLE
    # all ones to PMCR_EL0: the RW bits stick, P and C (write-only) read 0, IMP,
    # IDCODE and N keep their values
    assert pmu.u64(0xB0) == (IMP_ARM << 24) | (IDCODE_A72 << 16) | (PMU_COUNTERS << 11) \
        | PMCR_E | PMCR_D | PMCR_X | PMCR_DP | PMCR_LC
    # PMCNTENSET as the guest left it: cycle counter, counters 0 and 1 (3 set then cleared)
    assert pmu.u64(0xB8) == CYCLE_BIT | 0b11


def test_exception_level_filters(pmu):
    # Non-secure EL1 counts when P == NSK, EL0 when U == NSU (NSK = NSU = 0 here).
    assert pmu.u64(0xC0) == 0      # PMCCFILTR.P: no cycles across an EL1 loop
    assert pmu.u64(0xC8) > 0       # PMCCFILTR.U: EL1 counts again
    assert pmu.u64(0xD0) == 0      # PMEVTYPER0.P, INST_RETIRED: an EL1 loop counts nothing
    # the same counter over the EL0 routine: `mov`, 1000 x (`subs`, `b.ne`), `svc`
    assert pmu.u64(0xD8) == 1 + 2 * 1000 + 1


def test_el0_access_as_pmuserenr_allows(pmu):
    # PMUSERENR_EL0 = 0: `mrs x9, pmccntr_el0` at EL0 traps to EL1 (EC 0x18) and x9 keeps
    # the 0x5a it had; PMCCNTR_EL0 is op0 3, op1 3, CRn 9, CRm 13, op2 0
    assert pmu.u64(0xE0) == esr(0x18, sysreg_trap_iss(3, 3, 9, 13, 0, rt=9, read=True))
    assert pmu.u64(0xE8) == 0x5A
    # PMUSERENR_EL0.CR: the read is done; the counter (never reset since it counted the
    # EL1 stretch at 0xc8) holds more than that stretch
    assert pmu.u64(0xF0) > pmu.u64(0xC8) > 0


# -- the PMU overflow interrupt ---------------------------------------------------------------

PMU_PPI, SPURIOUS = 23, 1023


@pytest.mark.parametrize("in_cpu_mmio", [True, False], ids=["in-cpu-gic", "gic-exits"])
def test_pmu_overflow_interrupt_is_taken_through_the_gic(in_cpu_mmio):
    run = run_on_virt("pmu_irq", in_cpu_mmio=in_cpu_mmio)
    assert_powered_off(run)
    assert run.u64(0x80) == 3
    # the cycle counter (in WFI), event counter 0 (instructions), event counter 1 (PMSWINC)
    for n, flag in enumerate((CYCLE_BIT, 1 << 0, 1 << 1)):
        assert run.u64(0x10 * n) & 0xFFFF_FFFF == PMU_PPI       # GICC_IAR
        assert run.u64(0x40 + 0x10 * n) == flag                 # PMOVSSET, that one only
        assert run.u64(0x08 + 0x10 * n) & 0xFFFF_FFFF == SPURIOUS  # level fell with the flag
    # GIC accesses: 5 set-up writes and 3 EOIs; 2 acknowledges per interrupt
    if in_cpu_mmio:
        assert run.result.in_cpu_accesses == (6, 8)
    else:
        assert (run.result.exits["MmioRead"], run.result.exits["MmioWrite"]) == (6, 8)


# -- hardware watchpoints, breakpoint and software step ---------------------------------------

DEV = 0x0A00_0000
#: ESR_ELx for debug exceptions: EC breakpoint (current EL) 0x31, software step (lower
#: EL) 0x32, (current EL) 0x33, watchpoint (lower EL) 0x34, (current EL) 0x35; SVC 0x15.
#: ISS: DFSC/IFSC 0x22 (debug exception); watchpoint WnR bit 6; software step ISV bit
#: 24 (EX valid: an instruction was stepped) and EX bit 6 (it was a load-exclusive).
FSC_DEBUG, WNR, ISV = 0x22, 1 << 6, 1 << 24
EL1H_AIF = 0x1C5  # SPSR: EL1h with A, I, F masked and D clear
EL0T = 0x0        # SPSR: EL0t, nothing masked, SS clear


def _hex(record: tuple[int | None, ...]) -> tuple[str | None, ...]:
    return tuple(None if v is None else hex(v) for v in record)


def test_debug_exceptions_reach_the_guest_vectors(machine):
    m = machine("debug")
    s = m.symbols
    exits = []
    for _ in range(10):
        exits.append(m.vcpu.run())
        if isinstance(exits[-1], SystemDown):
            break
    # the stepped device stores: x3 = (the EL0 halfword load at watched + 2, 0) + 1, then
    # + 2 more at EL0 and EL1; had the retried load not been done x3 would be 0x55 + 1
    assert exits == [MmioWrite(GuestPhysAddr(DEV), AccessWidth.Dword, 1),
                     MmioWrite(GuestPhysAddr(DEV), AccessWidth.Dword, 3),
                     SystemDown(reset=False)]
    watched, steps0, steps1 = s["watched"], s["el0_steps"], s["el1_steps"]
    assert s["el1_steps_end"] == steps1 + 12
    # (ESR, ELR, FAR or None where FAR is UNKNOWN, SPSR) of each exception, in order
    expected = [
        # the breakpoint on bp_here, taken before it
        (esr(0x31, FSC_DEBUG), s["bp_here"], None, EL1H_AIF),
        # the store watchpoint, on `str w2, [x1, #4]`: FAR the accessed address
        (esr(0x35, WNR | FSC_DEBUG), s["st_here"], watched + 4, EL1H_AIF),
        # (the load watchpoint hit by a store, with MDE clear, EL0-only hit at EL1: none)
        # the load watchpoint hit from EL0 by `ldrh w3, [x1, #2]`
        (esr(0x34, FSC_DEBUG), s["el0_load"], watched + 2, EL0T),
        (esr(0x15, 0), s["el0_load"] + 8, None, EL0T),                # its SVC
        # software step of EL0 code, one exception per instruction, ELR the next one:
        (esr(0x32, ISV | FSC_DEBUG), steps0 + 4, None, EL0T),         # add stepped
        # the device store trapped to EL2, which emulated it and returned with
        # SPSR_EL2.SS = 0: the step exception comes with no instruction stepped, ISV 0
        (esr(0x32, FSC_DEBUG), steps0 + 8, None, EL0T),
        (esr(0x32, ISV | FSC_DEBUG), steps0 + 12, None, EL0T),        # add stepped
        # the stepped SVC is taken as an SVC; SPSR.SS 0 (the step completed)
        (esr(0x15, 0), steps0 + 16, None, EL0T),
        # software step of EL1 code (KDE, PSTATE.D clear): EC 0x33, the same pattern
        (esr(0x33, ISV | FSC_DEBUG), steps1 + 4, None, EL1H_AIF),
        (esr(0x33, FSC_DEBUG), steps1 + 8, None, EL1H_AIF),
        (esr(0x33, ISV | FSC_DEBUG), steps1 + 12, None, EL1H_AIF),
    ]
    count = m.result(0x200)
    seen = [tuple(m.result(0x20 * n + 8 * k) for k in range(4)) for n in range(count)]
    assert count == len(expected), [hex(rec[0]) for rec in seen]
    seen = [(e, elr, far if want[2] is not None else None, spsr)
            for (e, elr, far, spsr), want in zip(seen, expected, strict=True)]
    assert [_hex(rec) for rec in seen] == [_hex(rec) for rec in expected]
    # the watched store was not done when its exception was taken, and was on the retry
    assert m.result(0x1E8) == 0
    assert m.result(0x1F0) == 0x55 << 32
    assert m.percpu.arch.engine.watch_hits == 2


def test_debug_guest_symbols_match_the_layout_the_test_assumes():
    # the EL0 routines are straight-line code: load then SVC, and add/str/add/svc
    s = symbols("aarch64", "debug", RAM)
    assert s["el0_steps"] == s["el0_load"] + 8
    assert s["record"] == s["el0_steps"] + 16

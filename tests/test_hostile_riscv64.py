"""Hostile RISC-V 64 guests: what the VM does with each, and that the host process and
a well-behaved VM running at the same time carry on.

Each guest is a small source in ``tests/guests/riscv64/hostile_*.S``, loaded at the
start of RAM and entered in S-mode with a0 = the hart id and a1 = the case the test
picks. The bystander VM runs ``hostile_bystander.S``, which prints on the UART, counts
in memory and shuts down.

pyaxvisor gives the architecture's answers, as QEMU's ``virt`` board does: pyaxvisor
is the guest's SBI firmware, and an SBI call it does not implement answers
SBI_ERR_NOT_SUPPORTED; a load, store or instruction fetch where there is no RAM and no
device is an access fault (scause 1, 5 or 7) delivered to the guest's ``stvec``,
counted as ``AccessFault``.
"""

from __future__ import annotations

import random
import struct

import pytest
from guest_build import build, symbols
from hostile import Run, check_start_abuse, run_to_end
from hostile import pcs as vcpu_pcs

from pyaxvisor.arch.riscv64.sbi import HYPERCALL_EID, Eid
from pyaxvisor.boards.quick import new_vm

RAM = 0x8000_0000
RESULTS = 0x8001_0000
BUF = 0x8002_0000
MARK = 0x8001_1000
WILD = 0x7000_0000
#: SBI error codes (SBI v2.0, table 1).
SUCCESS, NOT_SUPPORTED, INVALID_PARAM, INVALID_ADDRESS, ALREADY_AVAILABLE = 0, -2, -3, -5, -6
#: scause of the access faults: instruction, load, store/AMO.
CAUSE = {"fetch": 1, "load": 5, "store": 7}


def run_hostile(guest: str, *, a1: int = 0, smp: int = 1, timeout: float = 20,
                trap_mmio: bool = False, table: bytes = b"") -> Run:
    """Build, run and close one VM with ``guest`` (``table`` written at BUF)."""
    return run_to_end(lambda out: new_vm("riscv64", ram_size=64 << 20, smp=smp,
                                         console_write=out, in_cpu_mmio=not trap_mmio),
                      build("riscv64", guest, RAM), RAM, results=RESULTS, size=0x2000,
                      table=table, table_addr=BUF, dtb_addr=a1, timeout=timeout)


def bystander() -> None:
    """The well-behaved VM: prints, counts to 100000 and shuts down."""
    run = run_hostile("hostile_bystander", timeout=60)
    assert run.result.reason == "poweroff", run.result
    assert run.result.status == 0
    assert run.output == b"bystander ok\n"
    assert run.u64(0) == 100_000


def sym(guest: str, label: str) -> int:
    return symbols("riscv64", guest, RAM)[label]


def pcs(state: str) -> dict[int, int]:
    """vCPU -> PC, from a timeout's report."""
    return vcpu_pcs(state, r"^vCPU (\d+): \w+, hart \d+, PC (0x[0-9a-f]+)")


# -- an MMIO storm (the test is in test_hostile_soft_cpu.py) ----------------------------

def check_storm_registers(run: Run, count: int) -> None:
    """What this architecture's storm guest recorded of the UART."""
    assert run.u64(0) == count
    assert run.u64(8) & 0x60 == 0x60  # LSR.THRE and TEMT: the UART kept up, always empty


# -- accesses outside RAM --------------------------------------------------------------------

@pytest.mark.parametrize(("case", "what"), [(0, "load"), (1, "store"), (2, "fetch")])
def test_an_access_where_nothing_is_is_an_access_fault_at_the_guests_stvec(alongside, case,
                                                                          what):
    run = alongside(lambda: run_hostile("hostile_outside_ram", a1=case), bystander)
    address = {0: WILD + 16, 1: WILD + 24, 2: WILD}[case]
    assert run.u64(0x20) != 0xD0E  # the access never completed as if something were there
    # the architecture's answer (and QEMU virt's): an access fault at the guest's stvec,
    # whose handler records it and shuts down
    assert run.result.reason == "poweroff", run.result
    assert run.result.status == 0
    assert run.result.exits["AccessFault"] == 1
    assert run.u64(0x18) == 1
    assert (run.u64(0), run.u64(8)) == (CAUSE[what], address)  # scause, stval
    # sepc: the faulting instruction (the jump's target for a fetch)
    assert run.u64(0x10) == (WILD if what == "fetch" else sym("hostile_outside_ram", what))


# -- illegal instructions without a trap vector ---------------------------------------------

@pytest.mark.parametrize(("case", "vector"), [(0, 0), (1, WILD)], ids=["stvec-0", "stvec-wild"])
def test_an_illegal_instruction_without_a_vector_faults_at_the_vector_until_the_timeout(
        alongside, case, vector):
    """The hart takes the illegal-instruction trap to ``stvec`` (0 after reset), where
    there is no RAM and no device: fetching there is an instruction access fault, taken
    at the same ``stvec``, for ever, as on QEMU, until the timeout stops the hart there."""
    run = alongside(lambda: run_hostile("hostile_undef", a1=case, timeout=1.0), bystander)
    assert run.u64(0) != 0xD0E
    assert run.result.reason == "timeout", run.result
    assert run.result.status == 124
    assert pcs(run.result.state) == {0: vector}, run.result.state
    assert run.result.exits["AccessFault"] >= 1


# -- random SBI calls ------------------------------------------------------------------------

#: The extensions pyaxvisor implements, and its hypercall extension.
KNOWN = {int(e) for e in Eid} | {HYPERCALL_EID}


def sbi_table(count: int, seed: int) -> list[tuple[int, ...]]:
    """``count`` calls (EID, FID, a0..a5): a quarter to implemented extensions with
    function IDs above any they define, the rest to random EIDs that are neither
    implemented nor legacy (0x00..0x0F, which take no function ID)."""
    rnd = random.Random(seed)
    implemented = sorted(e for e in KNOWN - {HYPERCALL_EID} if e >= 0x10)
    rows: list[tuple[int, ...]] = []
    while len(rows) < count:
        if rnd.random() < 0.25:
            eid, fid = rnd.choice(implemented), rnd.getrandbits(32) | 0x1000
        else:
            eid, fid = rnd.getrandbits(32), rnd.getrandbits(32)
            if eid < 0x10 or eid in KNOWN:
                continue
        rows.append((eid, fid, *(rnd.getrandbits(64) for _ in range(6))))
    return rows


def test_random_sbi_calls_get_not_supported(alongside):
    rows = sbi_table(300, seed=3)
    table = struct.pack("<Q", len(rows)) + b"".join(struct.pack("<8Q", *r) for r in rows)
    run = alongside(lambda: run_hostile("hostile_sbi", table=table), bystander)
    assert run.result.reason == "poweroff", run.result
    assert run.result.status == 0
    assert (run.u64(0), run.u64(8)) == (300, 300)
    assert [run.s64(0x100 + 8 * i) for i in range(300)] == [NOT_SUPPORTED] * 300
    assert run.result.exits["SbiCall"] == 300  # served inside the vCPU, counted there
    assert run.result.exits["SystemDown"] == 1


# -- HSM abuse -------------------------------------------------------------------------------

def test_hart_start_abuse_gets_sbi_errors_and_every_start_runs_once(alongside):
    run = alongside(lambda: run_hostile("hostile_hsm", smp=2), bystander)
    rounds = 20
    # at once again: hart 1 is started or being started, or already stopped itself
    slots = check_start_abuse(run, rounds, [ALREADY_AVAILABLE, INVALID_PARAM, INVALID_PARAM],
                              {ALREADY_AVAILABLE, SUCCESS}, MARK - RESULTS)
    # every start of hart 1 reached the VM; the hart's SBI may refuse the others itself
    assert 2 * rounds <= run.result.exits["CpuUp"] <= len(slots)


def test_hart_start_at_an_address_where_nothing_is_is_refused(alongside):
    run = alongside(lambda: run_hostile("hostile_hsm", a1=1, smp=2, timeout=5.0), bystander)
    assert run.result.reason == "poweroff", run.result
    assert run.s64(0) == INVALID_ADDRESS
    assert run.result.exits.get("CpuUp", 0) == 0


# -- nothing leaks ---------------------------------------------------------------------------

def test_fifty_hostile_vms_leave_threads_and_file_descriptors_flat(resources,
                                                                   live_vcpu_threads):
    guests = [("hostile_outside_ram", 0), ("hostile_hsm", 0), ("hostile_mmio_storm", 0)]
    for guest, a1 in guests:  # first use: guest builds, lazy imports
        run_hostile(guest, a1=a1, smp=2)
    before = resources()
    for i in range(50):
        guest, a1 = guests[i % len(guests)]
        run = run_hostile(guest, a1=a1, smp=2)
        assert run.result.reason == "poweroff", run.result
    assert live_vcpu_threads() == []
    assert resources(before) == before

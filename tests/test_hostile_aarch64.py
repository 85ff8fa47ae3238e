"""Hostile AArch64 guests: what the VM does with each, and that the host process and a
well-behaved VM running at the same time carry on.

Each guest is a small source in ``tests/guests/aarch64/hostile_*.S``, loaded at
``RAM + 0x8_0000`` and entered at EL1 with x0 = the case the test picks. The
bystander VM runs the bundled guest on two vCPUs and must power off as always.

pyaxvisor gives the architecture's answers: an access where there is no RAM and no
device is a synchronous external abort at the guest's EL1; an HVC/SMC that nobody
implements gets NOT_SUPPORTED.
"""

from __future__ import annotations

import random
import struct

import pytest
from aarch64_machine import RAM
from guest_build import build, symbols
from hostile import Run, check_start_abuse, run_to_end
from hostile import pcs as vcpu_pcs

from pyaxvisor.boards.aarch64_virt.boot import bundled_guest
from pyaxvisor.boards.quick import aarch64_vm
from pyaxvisor.vm.result import VmResult

LOAD = RAM + 0x8_0000
RESULTS = 0x4001_0000
TABLE = 0x4002_0000
MARK = 0x4001_1000
WILD = 0x70_0000_0000
#: PSCI return codes.
SUCCESS, NOT_SUPPORTED, INVALID_PARAMETERS, ALREADY_ON, ON_PENDING, INVALID_ADDRESS = \
    0, -1, -2, -4, -5, -9
#: ESR_EL1 exception classes of an abort taken at the same EL, and the fault status of
#: a synchronous external abort.
EC_IABT_SAME, EC_DABT_SAME, FSC_EXTERNAL = 0x21, 0x25, 0x10
ERROR_STATUS = VmResult("error").status
BYSTANDER_OUTPUT = (b"Hello from the pyaxvisor AArch64 guest on CPU 0\r\n"
                    b"CPU 1 is up (PSCI CPU_ON)\r\n"
                    b"virtual timer interrupt 27 taken through the GICv2\r\n"
                    b"powering off (PSCI SYSTEM_OFF)\r\n")


def run_hostile(guest: str, *, x0: int = 0, smp: int = 1, timeout: float = 20,
                trap_mmio: bool = False, table: bytes = b"") -> Run:
    """Build, run and close one VM with ``guest`` (``table`` written at TABLE)."""
    return run_to_end(lambda out: aarch64_vm(ram_size=64 << 20, smp=smp, console_write=out,
                                             in_cpu_mmio=not trap_mmio),
                      build("aarch64", guest, LOAD), LOAD, results=RESULTS, size=0x2000,
                      table=table, table_addr=TABLE, dtb_addr=x0, timeout=timeout)


def bystander() -> None:
    """The well-behaved VM: the bundled guest on two vCPUs powers off as always."""
    output = bytearray()
    vm = aarch64_vm(ram_size=64 << 20, smp=2, console_write=output.extend)
    try:
        vm.write_guest(LOAD, bundled_guest())
        result = vm.run(LOAD, dtb_addr=0, timeout=60)
    finally:
        vm.close()
    assert result.reason == "poweroff", result
    assert result.status == 0
    assert bytes(output) == BYSTANDER_OUTPUT


def sym(guest: str, label: str) -> int:
    return symbols("aarch64", guest, LOAD)[label]


def pcs(state: str) -> dict[int, int]:
    """vCPU -> PC, from a timeout's report."""
    return vcpu_pcs(state, r"^vCPU (\d+): \w+, PC (0x[0-9a-f]+)")


# -- an MMIO storm (the test is in test_hostile_soft_cpu.py) ----------------------------

def check_storm_registers(run: Run, count: int) -> None:
    """What this architecture's storm guest recorded of the UART."""
    assert (run.u64(0), run.u64(8)) == (count, count)
    assert run.u64(16) & 0x20 == 0  # UARTFR.TXFF: the UART kept up, never full


# -- exclusives to a device ------------------------------------------------------------------

def test_exclusives_to_a_device_run_serially_in_a_parallel_vm(alongside):
    """A store-exclusive to the UART in a VM of two vCPUs (code translated for parallel
    CPUs, where it would be a host atomic a device register cannot be) runs once
    serially, as in QEMU's multi-threaded TCG: every one succeeds and reaches the UART,
    and the VM powers off; nothing loops."""
    run = alongside(lambda: run_hostile("hostile_exclusive_mmio", smp=2), bystander)
    assert run.result.reason == "poweroff", run.result
    assert run.output == b"x" * 64 + b"\n"
    assert (run.u64(0), run.u64(8), run.u64(16)) == (64, 0, 0)


def test_both_cpus_storming_broadcast_maintenance_neither_waits_for_ever(alongside):
    """Two CPUs that issue TLBI ...IS, IC IVAU and IC IALLUIS at the same time each wait
    for the other to drop what they name; each does the other's request while it
    waits, so both finish their 20 000 rounds and the VM powers off. A mutual wait
    that did not resolve would cost the 2 s bail-out on most rounds and run the VM
    into its timeout; on a loaded host a thread held off for that long may still hit
    it now and then, so the bail-outs are allowed to be rare, not absent."""
    def storm() -> tuple[Run, dict[str, int]]:
        output = bytearray()
        vm = aarch64_vm(ram_size=64 << 20, smp=2, console_write=output.extend)
        try:
            vm.write_guest(LOAD, build("aarch64", "hostile_maintenance_storm", LOAD))
            result = vm.run(LOAD, dtb_addr=0, timeout=120)
            memory = vm.read_guest(RESULTS, 16)
            stats = vm.board.xsync.stats
        finally:
            vm.close()
        return Run(result, bytes(output), memory, {}), stats

    run, stats = alongside(storm, bystander)
    assert run.result.reason == "poweroff", run.result
    assert (run.u64(0), run.u64(8)) == (20000, 20000)
    assert stats["xsync_waits"] > 1000, stats  # the CPUs did wait for each other
    assert stats["xsync_timeouts"] * 1000 <= stats["xsync_waits"], stats


# -- accesses outside RAM --------------------------------------------------------------------

@pytest.mark.parametrize(("case", "what"), [(0, "load"), (1, "store"), (2, "fetch")])
def test_an_access_where_nothing_is_aborts_into_the_guest(alongside, case, what):
    run = alongside(lambda: run_hostile("hostile_outside_ram", x0=case), bystander)
    address = {0: WILD + 0x10, 1: WILD + 0x18, 2: WILD}[case]
    assert run.u64(0x20) != 0xD0E  # the access never completed as if something were there
    # the architecture's answer (and QEMU virt's): a synchronous external abort in the
    # guest's vectors, which report it and power off
    assert run.result.reason == "poweroff", run.result
    assert run.result.exits["ExternalAbort"] == 1
    esr, far, elr = run.u64(0), run.u64(8), run.u64(0x10)
    assert run.u64(0x18) == 1
    assert far == address
    assert esr & 0x3F == FSC_EXTERNAL
    if what == "fetch":
        assert (esr >> 26, elr) == (EC_IABT_SAME, WILD)
    else:
        assert (esr >> 26, elr) == (EC_DABT_SAME, sym("hostile_outside_ram", what))
        assert bool(esr >> 6 & 1) == (what == "store")  # WnR


# -- undefined instructions without vectors -------------------------------------------------

def test_an_undefined_instruction_without_vectors_loops_in_the_empty_vector_table(alongside):
    """VBAR_EL1 as reset (0): the exception goes to 0x200, in flash bank 0, which holds
    zeros without firmware; zero is itself undefined, so the vCPU takes the same
    exception there for ever, as a real CPU would, until the timeout."""
    run = alongside(lambda: run_hostile("hostile_undef", x0=0, timeout=1.0), bystander)
    assert run.result.reason == "timeout"
    assert run.result.status == 124
    assert pcs(run.result.state) == {0: 0x200}, run.result.state
    assert run.u64(0) != 0xD0E


def test_an_undefined_instruction_with_vectors_where_nothing_is(alongside):
    """VBAR_EL1 where there is no RAM: fetching the vector aborts to the same absent
    vector for ever (an external abort, as on QEMU), until the timeout."""
    run = alongside(lambda: run_hostile("hostile_undef", x0=1, timeout=1.0), bystander)
    assert run.u64(0) != 0xD0E
    assert run.result.reason == "timeout", run.result
    assert run.result.status == 124
    assert set(pcs(run.result.state)) == {0}
    assert run.result.exits["ExternalAbort"] >= 1


# -- random hypercalls -----------------------------------------------------------------------

def hypercall_table(count: int, *, well_formed: bool, seed: int) -> list[tuple[int, ...]]:
    """``count`` calls (function ID, conduit, x1..x6) with random IDs. ``well_formed``:
    SMCCC fast calls (bit 31 set, bits 23:17 zero) of owners pyaxvisor implements
    nothing for; otherwise any 32-bit ID but those of the Arm architecture, standard
    secure and hypervisor services and vendor hypervisor owners (PSCI, SMCCC_VERSION...:
    calls with a defined answer)."""
    rnd = random.Random(seed)
    rows: list[tuple[int, ...]] = []
    while len(rows) < count:
        fid = rnd.getrandbits(32)
        if well_formed:
            fid = (fid | 1 << 31) & ~(0x7F << 17)
        if fid >> 31 and (fid >> 24) & 0x3F in (0, 4, 5, 6):
            continue
        rows.append((fid, rnd.getrandbits(1), *(rnd.getrandbits(64) for _ in range(6))))
    return rows


def pack(rows: list[tuple[int, ...]]) -> bytes:
    return struct.pack("<Q", len(rows)) + b"".join(struct.pack("<8Q", *r) for r in rows)


def test_fast_calls_nobody_implements_get_not_supported(alongside):
    rows = hypercall_table(300, well_formed=True, seed=1)
    run = alongside(lambda: run_hostile("hostile_hypercalls", table=pack(rows)), bystander)
    assert run.result.reason == "poweroff", run.result
    assert run.result.status == 0
    assert (run.u64(0), run.u64(8)) == (300, 300)
    assert run.result.exits["SystemDown"] == 1


def test_random_hypercalls_get_not_supported(alongside):
    # none of the IDs is a call with a defined answer or in pyaxvisor's own range (the
    # vendor hypervisor owner's fast calls): every one returns NOT_SUPPORTED
    rows = hypercall_table(300, well_formed=False, seed=2)
    run = alongside(lambda: run_hostile("hostile_hypercalls", table=pack(rows)), bystander)
    assert run.result.reason == "poweroff", run.result
    assert (run.u64(0), run.u64(8)) == (300, 300)
    assert run.result.exits["SmcccNotSupported"] == 300


# -- CPU_ON abuse ----------------------------------------------------------------------------

def test_cpu_on_abuse_gets_psci_answers_and_every_start_runs_once(alongside):
    run = alongside(lambda: run_hostile("hostile_cpu_on", smp=2), bystander)
    # at once again: vCPU 1 is on or being turned on, or already turned itself off
    slots = check_start_abuse(run, 20, [ALREADY_ON, INVALID_PARAMETERS, INVALID_PARAMETERS],
                              {ALREADY_ON, ON_PENDING, SUCCESS}, MARK - RESULTS)
    assert run.result.exits["CpuUp"] == len(slots)


def test_cpu_on_with_an_entry_point_where_nothing_is(alongside):
    # As KVM does, CPU_ON does not look at the entry point: vCPU 1 starts there, its
    # first fetch takes an external abort to its vector table (VBAR_EL1 0 at reset:
    # 0x200, zeros in flash, undefined) and it stays there until the timeout.
    run = alongside(lambda: run_hostile("hostile_cpu_on", x0=1, smp=2, timeout=2.0),
                    bystander)
    assert run.result.reason == "timeout", run.result
    assert run.s64(0) == SUCCESS
    assert run.result.exits["ExternalAbort"] == 1  # WILD, reported once
    where = pcs(run.result.state)
    assert where == {0: sym("hostile_cpu_on", "bad_entry_done"), 1: 0x200}, run.result.state


# -- nothing leaks ---------------------------------------------------------------------------

def test_fifty_hostile_vms_leave_threads_and_file_descriptors_flat(resources,
                                                                   live_vcpu_threads):
    guests = [("hostile_outside_ram", 0), ("hostile_cpu_on", 0), ("hostile_mmio_storm", 0)]
    for guest, x0 in guests:  # first use: guest builds, lazy imports
        run_hostile(guest, x0=x0, smp=2)
    before = resources()
    for i in range(50):
        guest, x0 = guests[i % len(guests)]
        run = run_hostile(guest, x0=x0, smp=2)
        assert run.result.reason in ("error", "poweroff"), run.result
    assert live_vcpu_threads() == []
    assert resources(before) == before

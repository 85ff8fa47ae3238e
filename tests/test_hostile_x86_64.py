"""Hostile x86_64 guests on KVM: what the VM does with each, and that the host process
and a well-behaved VM running at the same time carry on.

Each guest is a small source in ``tests/guests/x86_64/hostile_*.S``, loaded raw at
1 MiB and entered in 32-bit protected mode with ESI = the case the test picks. The
bystander VM runs ``ports.S``, which prints "ports ok" on COM1 and powers off.

Outcomes that depend on the host's KVM are accepted in each of their forms, each
checked in full: a hypercall is answered by KVM itself (-KVM_ENOSYS for a number it
does not know), handed to pyaxvisor (which ends the VM with ``UnknownHypercall``), or,
on a host whose KVM never completes one (KVM-PVM, seen here), left spinning until the
timeout. Skipped without a usable ``/dev/kvm``.
"""

from __future__ import annotations

import random
import struct

import pytest
from guest_build import build, symbols
from hostile import Run, run_to_end
from hostile import pcs as vcpu_pcs

from pyaxvisor.boards.quick import x86_vm
from pyaxvisor.boards.x86_pc.layout import KERNEL_LOAD
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.errors import AxError
from pyaxvisor.vm.exits import UnknownHypercall
from pyaxvisor.vm.result import VmResult

_ok, _reason = kvm_usable()
pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not _ok, reason=f"KVM not usable: {_reason}")]

RESULTS = 0x20_0000
TABLE = 0x30_0000
WILD = 0xD000_0000
COM1_LSR_EMPTY = 0x60  # THRE and TEMT
ENOSYS = -1000 & 0xFFFF_FFFF  # -KVM_ENOSYS as a 32-bit guest sees it
ERROR_STATUS = VmResult("error").status


def run_hostile(guest: str, *, esi: int = 0, smp: int = 1, timeout: float = 20,
                table: bytes = b"") -> Run:
    """Build, run and close one VM with ``guest`` (``table`` written at TABLE)."""
    return run_to_end(lambda out: x86_vm(ram_size=32 << 20, smp=smp, console_write=out),
                      build("x86_64", guest, KERNEL_LOAD), KERNEL_LOAD, results=RESULTS,
                      size=0x1000, table=table, table_addr=TABLE, mode="protected",
                      gprs={6: esi}, timeout=timeout)


def bystander() -> None:
    """The well-behaved VM: ``ports.S`` prints on COM1 and powers off."""
    run = run_hostile("ports", timeout=60)
    assert run.result.reason == "poweroff", run.result
    assert run.result.status == 0
    assert run.output == b"ports ok\n"


def sym(guest: str, label: str) -> int:
    return symbols("x86_64", guest, KERNEL_LOAD)[label]


def rips(state: str) -> dict[int, int]:
    """vCPU -> RIP, from a timeout's report."""
    return vcpu_pcs(state, r"^vCPU (\d+): .*CS:RIP 0x[0-9a-f]+:(0x[0-9a-f]+)")


# -- an endless loop -------------------------------------------------------------------------

def test_an_endless_loop_is_stopped_by_the_timeout_which_says_where_each_vcpu_is(alongside):
    run = alongside(lambda: run_hostile("hostile_loop", smp=2, timeout=1.0), bystander)
    assert run.result.reason == "timeout"
    assert run.result.status == 124
    where = rips(run.result.state)
    assert set(where) == {0, 1}, run.result.state  # the AP, still waiting for its SIPI
    assert sym("hostile_loop", "spin") <= where[0] < sym("hostile_loop", "spin_end")
    assert "vCPU 0: " in run.result.state and "protected mode" in run.result.state


# -- a port storm and an MMIO storm ----------------------------------------------------------

def test_a_port_storm_is_served_and_counted(alongside):
    run = alongside(lambda: run_hostile("hostile_port_storm"), bystander)
    count = 4000
    assert run.result.reason == "poweroff", run.result
    assert run.result.status == 0
    assert run.output == b"." * count + b"\nstorm over\n"
    assert run.u32(0) == count
    assert run.u32(4) == COM1_LSR_EMPTY  # the UART kept up: always empty, nothing else
    assert run.unclaimed == {0x80: count}
    exits = run.result.exits
    assert exits["IoRead"] == count
    # '.' to COM1 and a byte to port 0x80 per round, the power-off, and the `rep outsb`
    # of the message: one exit per byte, or fewer when KVM hands over several at once
    assert 2 * count + 2 <= exits["IoWrite"] <= 2 * count + 1 + len(b"\nstorm over\n")


def test_an_mmio_storm_on_the_in_kernel_interrupt_controllers_is_served(alongside):
    run = alongside(lambda: run_hostile("hostile_mmio_storm"), bystander)
    assert run.result.reason == "poweroff", run.result
    assert run.u32(0) == 20_000
    assert run.u32(4) & 0xFF == 0x14  # the local APIC's version (KVM's)
    assert run.u32(8) & 0xFF == 0x11  # the IOAPIC's (82093AA)
    # KVM served every access in the kernel: none reached the VM
    assert run.result.exits["MmioRead"] == run.result.exits["MmioWrite"] == 0


# -- accesses outside RAM --------------------------------------------------------------------

@pytest.mark.parametrize(("case", "what"), [(0, "load"), (1, "store"), (2, "fetch")])
def test_an_access_where_nothing_is_ends_the_vm_with_a_typed_error(alongside, case, what):
    run = alongside(lambda: run_hostile("hostile_outside_ram", esi=case), bystander)
    assert run.result.reason == "error", run.result
    assert isinstance(run.result.error, AxError)
    assert run.result.status == ERROR_STATUS
    assert run.u32(0) != 0xD0E
    message = str(run.result.error)
    if what == "fetch":  # KVM cannot emulate an instruction fetch from MMIO
        assert "emulation failure" in message or f"{WILD:#x}" in message
    else:
        address = WILD + (0x10 if what == "load" else 0x18)
        assert f"MMIO {'read' if what == 'load' else 'write'} at {address:#x}" in message


# -- undefined instructions and triple faults ------------------------------------------------

def ended_in_a_triple_fault(result: VmResult) -> bool:
    """A triple fault: the guest's shutdown, reported as a reset (status 0, as QEMU's
    without ``-no-reboot``), however the report names it."""
    return (result.status == 0 and result.exits["SystemDown"] == 1
            and (result.reason == "reset" or "triple" in result.reason))


@pytest.mark.parametrize("case", [0, 1], ids=["boot-idt", "idt-where-nothing-is"])
def test_an_undefined_instruction_without_handlers_is_a_triple_fault(alongside, case):
    run = alongside(lambda: run_hostile("hostile_undef", esi=case, timeout=5.0), bystander)
    assert ended_in_a_triple_fault(run.result), run.result
    assert run.u32(0) != 0xD0E


def test_a_triple_fault_resets_and_ends_the_run(alongside):
    run = alongside(lambda: run_hostile("hostile_triple"), bystander)
    assert ended_in_a_triple_fault(run.result), run.result
    assert run.u32(0) != 0xD0E


# -- random hypercalls -----------------------------------------------------------------------

def test_random_hypercalls_are_answered_or_end_the_vm_never_the_host(alongside):
    rnd = random.Random(4)
    rows = [(rnd.randrange(0x1000, 1 << 32), *(rnd.getrandbits(32) for _ in range(4)))
            for _ in range(300)]  # above every number KVM defines
    table = struct.pack("<I", len(rows)) + b"".join(struct.pack("<5I", *r) for r in rows)
    run = alongside(lambda: run_hostile("hostile_hypercalls", table=table, timeout=2.0),
                    bystander)
    made, refused = run.u32(0), run.u32(4)
    answers = [run.u32(0x100 + 4 * i) for i in range(made)]
    assert answers == [ENOSYS] * made and refused == made
    if run.result.reason == "poweroff":  # KVM answered every one
        assert made == len(rows)
    elif run.result.reason == "error":  # handed to pyaxvisor, which knows none of them
        assert isinstance(run.result.error, UnknownHypercall)
        assert f"unknown hypercall {rows[made][0]:#x}" in str(run.result.error)
        assert run.result.status == ERROR_STATUS
    else:  # this host's KVM never completes the call: the timeout stops the vCPU there
        assert run.result.reason == "timeout", run.result
        assert made == 0
        assert rips(run.result.state)[0] in (sym("hostile_hypercalls", "vmcall_insn"),
                                             sym("hostile_hypercalls", "vmmcall_insn"))


# -- INIT/SIPI abuse -------------------------------------------------------------------------

def test_init_sipi_abuse_starts_the_ap_once_per_init(alongside):
    run = alongside(lambda: run_hostile("hostile_sipi", smp=2, timeout=30.0), bystander)
    rounds = 10
    assert run.result.reason == "poweroff", run.result
    # a start per INIT-SIPI pair and for the shorthand; SIPIs to no CPU, to the running
    # BSP and to an AP that no longer waits for one started nothing
    assert run.u32(0) == rounds + 1


# -- nothing leaks ---------------------------------------------------------------------------

def test_fifty_hostile_vms_leave_threads_and_file_descriptors_flat(resources,
                                                                   live_vcpu_threads):
    guests = [("hostile_outside_ram", 0), ("hostile_triple", 0), ("hostile_port_storm", 0)]
    for guest, esi in guests:  # first use: guest builds, lazy imports
        run_hostile(guest, esi=esi, smp=2)
    before = resources()
    for i in range(50):
        guest, esi = guests[i % len(guests)]
        run = run_hostile(guest, esi=esi, smp=2)
        assert run.result.reason in ("error", "reset", "poweroff"), run.result
    assert live_vcpu_threads() == []
    assert resources(before) == before

"""Exclusive accesses and atomics on several vCPUs at once (``guests/<arch>/atomics_smp.S``).

Each guest starts its other CPUs (PSCI CPU_ON on AArch64, SBI HSM hart_start on
RISC-V), all of them increment the same counters ITERS times each with the
architecture's exclusive/atomic instructions (and a spinlock around a plain
increment), and the boot CPU prints every value next to what it should be, then
powers off on success or stops the VM with a hypercall nobody serves on failure.

The tests do not trust the guest's own verdict: they compute every expected value
here from the CPU count and the guest's ITERS, and check the printed values, the
same values in guest memory after the run, the pass line, the power-off and the
CPU start/stop exits. Every assertion message carries the guest's console output
and how the VM ended.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import pytest
from aarch64_machine import RAM as AARCH64_RAM
from guest_build import build, symbols
from hostile import Run, run_to_end
from riscv64_machine import RAM as RISCV64_RAM

from pyaxvisor.boards.quick import new_vm

GUEST = "atomics_smp"
#: Where each architecture's guest is linked and loaded (AArch64: where the virt board
#: puts raw kernels; RISC-V: the start of RAM, as the other bare RISC-V guests).
LOAD = {"aarch64": AARCH64_RAM + 0x8_0000, "riscv64": RISCV64_RAM}
#: What the guests call their CPUs on the header line.
CPU_WORD = {"aarch64": "CPUs", "riscv64": "harts"}
#: A run takes a few seconds; this only keeps a hung guest from hanging the test.
TIMEOUT_S = 120.0
GUARD8, GUARD32 = 0xA5, 0x5A5A_5A5A
MAX_CPUS = 8

LINE = re.compile(r"^(\S+) got=([0-9a-f]{16}) want=([0-9a-f]{16}) (ok|BAD)$")
HEADER = re.compile(r"^atomics_smp: (\d+) (CPUs|harts), iterations ([0-9a-f]{16})$")
CONTENTION = re.compile(r"^contention (?:stxr|sc)_failures=([0-9a-f]{16}) "
                        r"lock_waits=([0-9a-f]{16})$")


@dataclass
class Outcome:
    """One run: what :func:`hostile.run_to_end` gave, the guest's symbols, the wall
    time of the run and the console output as text lines."""

    run: Run
    sym: dict[str, int]
    base: int  # the guest address of run.memory[0]
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.run.output.decode(errors="replace").replace("\r\n", "\n").splitlines()

    def u64(self, addr: int) -> int:
        return self.run.u64(addr - self.base)

    def describe(self) -> str:
        r = self.run.result
        text = self.run.output.decode(errors="replace").replace("\r\n", "\n")
        return (f"\nVM ended: reason={r.reason} status={r.status} error={r.error} "
                f"exits={dict(r.exits)}\n{r.state}\n--- guest output ---\n{text}"
                "--- end of guest output ---")


def run_guest(arch: str, cpus: int) -> Outcome:
    """Build the guest, run it on a fresh ``cpus``-vCPU VM (the count in x0 / a1, where
    a kernel finds its device tree) and keep its shared data from guest memory."""
    load = LOAD[arch]
    sym = symbols(arch, GUEST, load)
    base = sym["counter64"]  # the data starts here and ends with the contention counts
    size = sym["lock_waits"] + 8 * MAX_CPUS - base
    start = time.monotonic()
    run = run_to_end(lambda out: new_vm(arch, ram_size=64 << 20, smp=cpus, console_write=out),
                     build(arch, GUEST, load), load, results=base, size=size,
                     dtb_addr=cpus, timeout=TIMEOUT_S)
    return Outcome(run, sym, base, time.monotonic() - start)


def expected_values(arch: str, cpus: int, sym: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Printed name -> (its guest address, the value it must have after the run)."""
    iters = sym["ITERS"]
    total = cpus * iters
    common = {
        "counter64": (sym["counter64"], total),
        "plain_counter": (sym["plain_counter"], total),
        "lock": (sym["lock"], 0),
        # the 32-bit counter with the guard word above it, read as one doubleword
        "counter32": (sym["counter32"], GUARD32 << 32 | total),
        "done": (sym["done"], cpus),
    }
    if arch == "aarch64":
        # one byte per CPU (ITERS wraps at 256); the bytes of CPUs not in the run
        # keep their guard value
        lanes = [iters & 0xFF if i < cpus else GUARD8 for i in range(8)]
        return common | {
            "pair_low": (sym["pair"], total),
            "pair_high": (sym["pair"] + 8, 2 * total),
            "byte_counters": (sym["byte_counters"], int.from_bytes(bytes(lanes), "little")),
        }
    words = [iters if i < cpus else GUARD32 for i in range(MAX_CPUS)]
    return common | {"amo_counter": (sym["amo_counter"], total)} | {
        f"hart_words_{k}": (sym["hart_words"] + 8 * k, words[2 * k + 1] << 32 | words[2 * k])
        for k in range(MAX_CPUS // 2)
    }


@pytest.mark.parametrize("cpus", [2, 4], ids=lambda n: f"{n}cpus")
@pytest.mark.parametrize("arch", ["aarch64", "riscv64"])
def test_exclusives_and_atomics_lose_no_update_across_vcpus(arch, cpus):
    out = run_guest(arch, cpus)
    why = out.describe()
    result = out.run.result
    print(f"{arch} {cpus} vCPUs: {out.seconds:.2f} s{why}")  # shown with pytest -s / -rP

    assert result.reason == "poweroff" and result.status == 0, why
    lines = out.lines
    assert lines and lines[-1] == "atomics_smp: PASS", why
    assert "atomics_smp: FAIL" not in lines, why

    header = HEADER.match(lines[0])
    assert header is not None, why
    assert int(header.group(1)) == cpus and header.group(2) == CPU_WORD[arch], why
    assert int(header.group(3), 16) == out.sym["ITERS"], why

    printed = {m.group(1): m.groups()[1:] for m in map(LINE.match, lines) if m}
    expected = expected_values(arch, cpus, out.sym)
    assert sorted(printed) == sorted(expected), why
    for name, (addr, value) in expected.items():
        got, want, verdict = printed[name]
        assert int(got, 16) == value, f"{name}: printed {got}, expected {value:016x}{why}"
        assert int(want, 16) == value, \
            f"{name}: the guest expected {want}, the test expects {value:016x}{why}"
        assert verdict == "ok", f"{name}: the guest said {verdict}{why}"
        assert out.u64(addr) == value, \
            f"{name}: {out.u64(addr):016x} in guest memory, expected {value:016x}{why}"

    # every secondary CPU was started once and turned itself off once
    assert result.exits["CpuUp"] == cpus - 1, why
    assert result.exits["CpuDown"] == cpus - 1, why
    assert result.exits["SystemDown"] == 1, why

    # The vCPUs really overlapped: some CPU found the lock taken or lost a
    # store-exclusive to another CPU. Zero would mean each ran its loop alone and the
    # counts above proved nothing about atomicity.
    contention = [CONTENTION.match(line) for line in lines]
    found = [m for m in contention if m]
    assert len(found) == 1, why
    failures, waits = (int(v, 16) for v in found[0].groups())
    assert failures + waits > 0, f"no contention between the vCPUs{why}"


@pytest.mark.parametrize("arch", ["aarch64", "riscv64"])
def test_the_vcpus_run_guest_code_at_the_same_time(arch):
    """On the patched library a VM's vCPUs are not serialised: no execution lock, and
    both CPUs were inside the software CPU at once during the run (the sync group
    counts the CPUs in a run, whatever the host's core count)."""
    load = LOAD[arch]
    output = bytearray()
    vm = new_vm(arch, ram_size=64 << 20, smp=2, console_write=output.extend)
    try:
        board = vm.board
        assert board.parallel and board.exec_lock is None
        vm.write_guest(load, build(arch, GUEST, load))
        result = vm.run(load, dtb_addr=2, timeout=TIMEOUT_S)
        text = output.decode(errors="replace")
        assert (result.reason, result.status) == ("poweroff", 0), text
        assert board.xsync.max_running == 2, text
        assert board.xsync.running == 0
    finally:
        vm.close()

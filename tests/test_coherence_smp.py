"""Broadcast TLB and code maintenance reaches the other vCPUs (``guests/<arch>/coherence_smp.S``).

Every vCPU is a software CPU of its own, with its own TLB and its own translated
code. In each case of the guests one CPU keeps using something in a tight loop (calls
a function, or loads through a virtual page) so its translated code or its TLB entry
is hot, while the other CPU changes it (rewrites the function; points the page's
last-level entry at another page), runs the architecture's maintenance sequence for
all CPUs, and only then raises a flag. The looping CPU, once it sees the flag, must
get the new value:

* AArch64 (2 CPUs, stage-1 MMU on): IC IVAU, IC IALLUIS, and TLBI VAE1IS, VMALLE1IS,
  ASIDE1IS, VAAE1IS, VALE1IS, VAALE1IS.
* RISC-V (2 harts, Sv39): the SBI RFENCE extension's remote_fence_i,
  remote_sfence_vma and remote_sfence_vma_asid and the legacy calls (EIDs 5, 6, 7),
  with the reading hart doing nothing itself; and a hart's own FENCE.I after another
  hart rewrote the code (the other way the ISA allows).

Each guest prints one line per case (``<case> ok`` or ``<case> BAD got=<hex>
want=<hex>``), then ``coherence_smp: PASS`` and powers off, or ``coherence_smp:
FAIL`` and stops the VM with a hypercall nobody serves. One run per architecture
serves all its tests; every assertion message carries the guest's output and how
the VM ended.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import cache

import pytest
from aarch64_machine import RAM as AARCH64_RAM
from guest_build import build, symbols
from hostile import Run, run_to_end
from riscv64_machine import RAM as RISCV64_RAM

from pyaxvisor.boards.quick import new_vm

GUEST = "coherence_smp"
CPUS = 2
#: Where each guest is linked and loaded (as tests/test_smp_atomics.py does).
LOAD = {"aarch64": AARCH64_RAM + 0x8_0000, "riscv64": RISCV64_RAM}
#: A run takes a second or so; this only keeps a hung guest from hanging the test.
TIMEOUT_S = 60.0
#: The cases each guest runs, in its order.
CASES = {
    "aarch64": ["code_ic_ivau", "code_ic_ialluis", "code_local_ic_iallu", "tlbi_vae1is",
                "tlbi_vmalle1is", "tlbi_aside1is", "tlbi_vaae1is", "tlbi_vale1is",
                "tlbi_vaale1is"],
    "riscv64": ["rfence_fence_i", "legacy_fence_i", "local_fence_i", "rfence_sfence_vma",
                "rfence_sfence_vma_asid", "legacy_sfence_vma", "legacy_sfence_vma_asid"],
}
CASE_LINE = re.compile(r"^(\w+) (ok|BAD got=[0-9a-f]{16} want=[0-9a-f]{16}(?: before| sbi)?)$")


@dataclass
class Outcome:
    """One run of an architecture's guest: what :func:`hostile.run_to_end` gave and
    its wall time."""

    run: Run
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.run.output.decode(errors="replace").replace("\r\n", "\n").splitlines()

    def describe(self) -> str:
        r = self.run.result
        text = self.run.output.decode(errors="replace").replace("\r\n", "\n")
        return (f"\nVM ended after {self.seconds:.2f} s: reason={r.reason} status={r.status} "
                f"error={r.error} exits={dict(r.exits)}\n{r.state}\n--- guest output ---\n"
                f"{text}--- end of guest output ---")


@cache
def run_guest(arch: str) -> Outcome:
    """Build the guest and run it once on a fresh 2-vCPU VM (the CPU count in x0 / a1,
    where a kernel finds its device tree); later calls give the same run."""
    load = LOAD[arch]
    shared = symbols(arch, GUEST, load)["shared"]
    start = time.monotonic()
    run = run_to_end(lambda out: new_vm(arch, ram_size=64 << 20, smp=CPUS, console_write=out),
                     build(arch, GUEST, load), load, results=shared, size=128,
                     dtb_addr=CPUS, timeout=TIMEOUT_S)
    return Outcome(run, time.monotonic() - start)


@pytest.mark.parametrize("arch", ["aarch64", "riscv64"])
def test_guest_passes_and_powers_off(arch):
    out = run_guest(arch)
    why = out.describe()
    result = out.run.result
    print(f"{arch}: {out.seconds:.2f} s{why}")  # shown with pytest -s / -rP
    assert result.reason == "poweroff" and result.status == 0, why
    lines = out.lines
    assert lines and lines[0] == "coherence_smp: 2 CPUs", why
    assert lines[-1] == "coherence_smp: PASS", why
    assert "coherence_smp: FAIL" not in lines, why
    # one line per case, in the guest's order, and nothing else between
    reported = [m.group(1) for m in map(CASE_LINE.match, lines[1:-1]) if m]
    assert reported == CASES[arch] and len(lines) == len(CASES[arch]) + 2, why
    # the second CPU was started once and turned itself off once
    assert result.exits["CpuUp"] == 1, why
    assert result.exits["CpuDown"] == 1, why
    assert result.exits["SystemDown"] == 1, why


@pytest.mark.parametrize(("arch", "case"),
                         [(arch, case) for arch, cases in CASES.items() for case in cases])
def test_other_cpu_sees_the_change(arch, case):
    out = run_guest(arch)
    why = out.describe()
    lines = out.lines
    assert f"{case} ok" in lines, f"case {case} did not pass{why}"

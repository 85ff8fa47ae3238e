"""What the hostile-guest suites (``test_hostile_*.py``) share: one hostile VM run to its
end (:func:`run_to_end`) and what it left behind (:class:`Run`)."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyaxvisor.vm.result import VmResult
from pyaxvisor.vm.vm import Vm


@dataclass
class Run:
    """What a hostile VM did: its result, its console output, its memory at the
    suite's RESULTS address when it ended, and the ports written where nothing is."""

    result: VmResult
    output: bytes
    memory: bytes
    unclaimed: dict[int, int] = field(default_factory=dict)

    def u32(self, offset: int) -> int:
        return int.from_bytes(self.memory[offset:offset + 4], "little")

    def u64(self, offset: int) -> int:
        return int.from_bytes(self.memory[offset:offset + 8], "little")

    def s64(self, offset: int) -> int:
        return int.from_bytes(self.memory[offset:offset + 8], "little", signed=True)


def run_to_end(make_vm: Callable[[Callable[[bytes], Any]], Vm], image: bytes, load: int, *,
               results: int, size: int, table: bytes = b"", table_addr: int = 0,
               **run: Any) -> Run:
    """Build a VM with ``make_vm(console_write)``, write ``image`` at ``load`` (and
    ``table`` at ``table_addr``), run it from ``load`` with ``run`` (``vm.run``'s
    keywords), read ``size`` bytes at ``results`` and close it, whatever happened."""
    output = bytearray()
    vm = make_vm(output.extend)
    try:
        vm.write_guest(load, image)
        if table:
            vm.write_guest(table_addr, table)
        result = vm.run(load, **run)
        memory = vm.read_guest(results, size)
        pio = getattr(vm, "pio", None)
        unclaimed = {int(port): count for port, count in pio.unclaimed.items()} if pio else {}
    finally:
        vm.close()
    return Run(result, bytes(output), memory, unclaimed)


def pcs(state: str, pattern: str) -> dict[int, int]:
    """vCPU -> PC, from a timeout's report: ``pattern`` matches one vCPU's line with
    the vCPU number and the PC (hex) as its two groups."""
    return {int(cpu): int(pc, 16) for cpu, pc in re.findall(pattern, state, re.M)}


def check_stopped_in_loop(run: Run, vcpus: dict[int, int], spin: int, end: int) -> None:
    """The endless-loop guests: vCPU 0 started vCPU 1 (its answer at RESULTS: 0) and
    the timeout found both (``vcpus``: vCPU -> PC) in ``[spin, end)``."""
    assert run.result.reason == "timeout"
    assert run.result.status == 124
    assert run.result.exits["CpuUp"] == 1
    assert run.s64(0) == 0  # vCPU 1 was started into the loop (SUCCESS)
    assert set(vcpus) == {0, 1}, run.result.state
    assert all(spin <= pc < end for pc in vcpus.values()), run.result.state


def check_storm(run: Run, count: int, trap_mmio: bool) -> None:
    """The MMIO-storm guests: they printed ``count`` dots and a newline and powered off,
    after ``count`` reads and ``count`` + 1 writes to the UART, as exits or served
    inside the CPU."""
    assert run.result.reason == "poweroff", run.result
    assert run.result.status == 0
    assert run.output == b"." * count + b"\n"
    exits = run.result.exits
    if trap_mmio:
        assert (exits["MmioWrite"], exits["MmioRead"]) == (count + 1, count)
        assert run.result.in_cpu_accesses == (0, 0)
    else:
        assert exits["MmioWrite"] == exits["MmioRead"] == 0
        assert run.result.in_cpu_accesses == (count, count + 1)


def check_start_abuse(run: Run, rounds: int, refusals: list[int], again: set[int],
                      mark: int) -> list[int]:
    """The CPU_ON / HSM abuse guests: their answers (at RESULTS, the count at 0x7F8) are
    ``refusals`` for three bad calls, then per round a start that succeeds (0) and an
    immediate second start answered with one of ``again``; at ``mark`` (an offset into
    RESULTS) the last round and how often CPU 1 ran, once per successful start.
    Returns the answers."""
    assert run.result.reason == "poweroff", run.result
    slots = [run.s64(8 * i) for i in range(run.u64(0x7F8))]
    assert len(slots) == 3 + 2 * rounds
    assert slots[:3] == refusals
    assert slots[3::2] == [0] * rounds
    assert set(slots[4::2]) <= again
    last_round, starts = struct.unpack("<2Q", run.memory[mark:mark + 16])
    assert last_round == rounds
    assert starts == slots[3:].count(0)  # each success started CPU 1 once
    assert run.result.exits["CpuDown"] == starts
    return slots

"""AArch64 benchmarks: pyaxvisor's software EL2 against qemu-system-aarch64 (TCG),
side by side on the same machine and the same images, median of N runs.

    python benchmarks/aarch64.py [--runs 5] [--only boot|loops|mmio]

Measures
* U-Boot (Debian's qemu_arm64 build) time to its ``=>`` prompt;
* Debian's arm64 Linux with the busybox initramfs, 2 CPUs, time to the userspace
  marker ``PYAXVISOR-USERSPACE-OK``;
* a 10^9-iteration ALU loop and a 10^8-store loop (bare-metal guests built from
  ``benchmarks/guests``), whole run until PSCI SYSTEM_OFF;
* the cost of one MMIO exit to a Python device and back (200 000 UARTFR reads).

Needs ``qemu-system-arm`` and ``binutils-aarch64-linux-gnu`` (Debian) and fetches the
images with ``pyaxvisor.images``. Ratios are pyaxvisor / QEMU: below 1.0 is faster.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench_common import (
    bench_linux_guests,
    build_guest,
    median_of,
    row,
    run_benchmarks,
    three_way,
    time_until,
)

QEMU = "qemu-system-aarch64"
PYAXVISOR = [sys.executable, "-m", "pyaxvisor.cli", "run"]
QEMU_BASE = [QEMU, "-M", "virt", "-cpu", "cortex-a72", "-nographic", "-serial", "stdio",
             "-monitor", "none"]
LOAD = 0x4008_0000


def bench_boot(runs: int) -> None:
    bench_linux_guests(runs, PYAXVISOR, QEMU_BASE, "aarch64", ["-bios"], "ttyAMA0", "CPUs")


def bench_loops(runs: int, work: Path) -> None:
    for name, label in (("alu_loop", "ALU loop (10^9 iterations)"),
                        ("store_loop", "store loop (10^8 stores)")):
        binary = str(build_guest("aarch64", name, LOAD, work))
        ours, stock, qemu = three_way(runs, [*PYAXVISOR, "-kernel", binary],
                                      [*QEMU_BASE, "-kernel", binary], None)
        row(label, ours, qemu, stock=stock)
        print(f"{'':<34}(throughput ratio QEMU/pyaxvisor: {qemu / ours:.2f})")


def bench_mmio(runs: int, work: Path) -> None:
    """Per-access cost of 200 000 UARTFR reads: as MMIO exits to the VM's device (the
    arm_vcpu trap path) and served inside the CPU; QEMU's whole run / 200 000."""
    from pyaxvisor.boards.quick import aarch64_vm as Aarch64Vm

    binary = build_guest("aarch64", "mmio_loop", LOAD, work)

    def once(in_cpu: bool) -> float:
        vm = Aarch64Vm(ram_size=64 << 20, smp=1, in_cpu_mmio=in_cpu)
        try:
            vm.write_guest(LOAD, binary.read_bytes())
            t0 = time.perf_counter()
            result = vm.run(LOAD, dtb_addr=0, timeout=120)
            elapsed = time.perf_counter() - t0
            assert result.reason == "poweroff", result
            assert result.exits["MmioRead"] == (0 if in_cpu else 200_000), result.exits
            return elapsed / 200_000
        finally:
            vm.close()

    qemu = median_of(runs, lambda: time_until([*QEMU_BASE, "-kernel", str(binary)], None))
    qemu /= 200_000
    row("MMIO read as an exit, round trip", median_of(runs, lambda: once(False)) * 1e6,
        qemu * 1e6, "us")
    row("MMIO read served in-CPU", median_of(runs, lambda: once(True)) * 1e6, qemu * 1e6, "us")
    print(f"{'':<34}(QEMU's figure includes its start-up, so it is an upper bound)")


def main() -> None:
    run_benchmarks(__doc__.split("\n\n")[0], (QEMU, "aarch64-linux-gnu-as"),
                   "qemu-system-arm binutils-aarch64-linux-gnu",
                   {"boot": lambda runs, _work: bench_boot(runs), "loops": bench_loops,
                    "mmio": bench_mmio})


if __name__ == "__main__":
    main()

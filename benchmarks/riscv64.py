"""RISC-V 64 benchmarks: pyaxvisor's software engine (pyaxvisor as the SBI firmware)
against qemu-system-riscv64 (TCG) with its default OpenSBI, side by side on the same
images, median of N runs.

    python benchmarks/riscv64.py [--runs 5] [--only boot|loops|sbi]

Measures
* U-Boot S-mode (Debian's ``qemu-riscv64_smode/u-boot.bin``) time to its ``=>`` prompt;
* Debian's riscv64 Linux with the busybox initramfs, 2 harts, time to the userspace
  marker ``PYAXVISOR-USERSPACE-OK``;
* a 10^9-iteration ALU loop (a bare S-mode guest from ``benchmarks/guests/riscv64``),
  whole run until SBI SRST shutdown;
* the SBI call round trip: 200 000 ``get_spec_version`` calls, whole run / 200 000 (QEMU's
  figure includes its start-up, so it is an upper bound).

Needs ``qemu-system-misc`` and ``binutils-riscv64-linux-gnu`` (Debian) and fetches the
images with ``pyaxvisor.images``. Ratios are pyaxvisor / QEMU: below 1.0 is faster.
Targets: boot ≤ 1.0x, ALU throughput ≥ 0.9, SBI call ≤ 5 µs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench_common import (
    OURS,
    bench_linux_guests,
    build_guest,
    median_of,
    row,
    run_benchmarks,
    three_way,
    time_until,
)

QEMU = "qemu-system-riscv64"
PYAXVISOR = [sys.executable, "-m", "pyaxvisor.cli", "run", "--arch", "riscv64"]
QEMU_BASE = [QEMU, "-M", "virt", "-nographic", "-serial", "stdio", "-monitor", "none",
             "-bios", "default"]
LOAD = 0x8020_0000
SBI_CALLS = 200_000


def bench_boot(runs: int) -> None:
    bench_linux_guests(runs, PYAXVISOR, QEMU_BASE, "riscv64", ["-kernel"], "ttyS0", "harts")


def bench_loops(runs: int, work: Path) -> None:
    binary = str(build_guest("riscv64", "alu_loop", LOAD, work))
    ours, stock, qemu = three_way(runs, [*PYAXVISOR, "-kernel", binary],
                                  [*QEMU_BASE, "-kernel", binary], None)
    row("ALU loop (10^9 iterations)", ours, qemu, stock=stock)
    print(f"{'':<34}(throughput ratio QEMU/pyaxvisor: {qemu / ours:.2f})")


def bench_sbi(runs: int, work: Path) -> None:
    binary = str(build_guest("riscv64", "sbi_loop", LOAD, work))
    ours = median_of(runs, lambda: time_until([*PYAXVISOR, "-kernel", binary], None, env=OURS))
    qemu = median_of(runs, lambda: time_until([*QEMU_BASE, "-kernel", binary], None))
    row("SBI call round trip", ours / SBI_CALLS * 1e6, qemu / SBI_CALLS * 1e6, "us")
    print(f"{'':<34}(whole runs / {SBI_CALLS}: start-up included, an upper bound)")


def main() -> None:
    run_benchmarks(__doc__.split("\n\n")[0], (QEMU, "riscv64-linux-gnu-as"),
                   "qemu-system-misc binutils-riscv64-linux-gnu",
                   {"boot": lambda runs, _work: bench_boot(runs), "loops": bench_loops,
                    "sbi": bench_sbi})


if __name__ == "__main__":
    main()

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

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pyaxvisor import images

HERE = Path(__file__).parent
QEMU = "qemu-system-aarch64"
PYAXVISOR = [sys.executable, "-m", "pyaxvisor.cli", "run"]
QEMU_BASE = [QEMU, "-M", "virt", "-cpu", "cortex-a72", "-nographic", "-serial", "stdio",
             "-monitor", "none"]
LOAD = 0x4008_0000


def build_guest(name: str, out: Path) -> Path:
    src = HERE / "guests" / "aarch64" / f"{name}.S"
    obj, elf, binary = out / f"{name}.o", out / f"{name}.elf", out / f"{name}.bin"
    subprocess.run(["aarch64-linux-gnu-as", "-o", obj, src], check=True)
    subprocess.run(["aarch64-linux-gnu-ld", "-e", hex(LOAD), f"-Ttext={LOAD:#x}", "-o", elf,
                    obj], check=True)
    subprocess.run(["aarch64-linux-gnu-objcopy", "-O", "binary", elf, binary], check=True)
    return binary


def time_until(argv: list[str], marker: bytes | None, timeout: float = 300) -> float:
    """Seconds from start until ``marker`` appears on stdout (or until exit if None)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    seen = b""
    try:
        while True:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            if marker is not None and marker in seen:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{argv[0]}: timed out")
        proc.wait()
        if marker is not None:
            raise RuntimeError(f"{' '.join(argv[:6])}…: ended without {marker!r}:\n"
                               f"{seen[-1500:].decode(errors='replace')}")
        return time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def row(name: str, ours: float, qemu: float, unit: str = "s") -> None:
    print(f"{name:<34}{ours:>10.3f} {unit:<3}{qemu:>10.3f} {unit:<3}{ours / qemu:>8.2f}x",
          flush=True)


def bench_boot(runs: int) -> None:
    uboot = images.fetch("u-boot-arm64", log=lambda *_: None)
    kernel = images.fetch("linux-arm64", log=lambda *_: None)
    initrd = images.fetch("initramfs-arm64", log=lambda *_: None)
    prompt = b"=> "
    row("U-Boot to prompt",
        median_of(runs, lambda: time_until([*PYAXVISOR, "-bios", str(uboot)], prompt)),
        median_of(runs, lambda: time_until([*QEMU_BASE, "-bios", str(uboot)], prompt)))
    linux = ["-kernel", str(kernel), "-initrd", str(initrd), "-append", "console=ttyAMA0",
             "-m", "512M", "-smp", "2"]
    marker = images.USERSPACE_MARKER.encode()
    row("Linux to userspace (2 CPUs)",
        median_of(runs, lambda: time_until([*PYAXVISOR, *linux], marker)),
        median_of(runs, lambda: time_until([*QEMU_BASE, *linux], marker)))


def bench_loops(runs: int, work: Path) -> None:
    for name, label in (("alu_loop", "ALU loop (10^9 iterations)"),
                        ("store_loop", "store loop (10^8 stores)")):
        binary = str(build_guest(name, work))
        ours = median_of(runs, lambda b=binary: time_until([*PYAXVISOR, "-kernel", b], None))
        qemu = median_of(runs, lambda b=binary: time_until([*QEMU_BASE, "-kernel", b], None))
        row(label, ours, qemu)
        print(f"{'':<34}(throughput ratio QEMU/pyaxvisor: {qemu / ours:.2f})")


def bench_mmio(runs: int, work: Path) -> None:
    """Per-access cost of 200 000 UARTFR reads: as MMIO exits to the VM's device (the
    arm_vcpu trap path) and served inside the CPU; QEMU's whole run / 200 000."""
    from pyaxvisor.boards.quick import aarch64_vm as Aarch64Vm

    binary = build_guest("mmio_loop", work)

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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=["boot", "loops", "mmio"])
    args = ap.parse_args()
    for tool in (QEMU, "aarch64-linux-gnu-as"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install qemu-system-arm "
                     "binutils-aarch64-linux-gnu")
    print(f"{'benchmark (median of ' + str(args.runs) + ')':<34}{'pyaxvisor':>14}"
          f"{'QEMU TCG':>14}{'ratio':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "boot"):
            bench_boot(args.runs)
        if args.only in (None, "loops"):
            bench_loops(args.runs, work)
        if args.only in (None, "mmio"):
            bench_mmio(args.runs, work)


if __name__ == "__main__":
    main()

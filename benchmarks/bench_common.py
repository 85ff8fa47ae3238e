"""What the benchmark scripts share: building a bare-metal guest from
``benchmarks/guests/<arch>``, timing a command until a marker appears, medians and
the table rows. Run the scripts from the repository (``python benchmarks/<arch>.py``)."""

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

HERE = Path(__file__).parent
#: The cross binutils prefix and the assembler flags of each architecture.
TOOLS = {"aarch64": ("aarch64-linux-gnu-", []), "riscv64": ("riscv64-linux-gnu-",
                                                          ["-march=rv64imac"])}


def build_guest(arch: str, name: str, load: int, out: Path) -> Path:
    """``benchmarks/guests/<arch>/<name>.S`` linked at ``load``, as a flat binary."""
    prefix, flags = TOOLS[arch]
    src = HERE / "guests" / arch / f"{name}.S"
    obj, elf, binary = out / f"{name}.o", out / f"{name}.elf", out / f"{name}.bin"
    subprocess.run([f"{prefix}as", *flags, "-o", obj, src], check=True)
    subprocess.run([f"{prefix}ld", "-e", hex(load), f"-Ttext={load:#x}", "-o", elf, obj],
                   check=True)
    subprocess.run([f"{prefix}objcopy", "-O", "binary", elf, binary], check=True)
    return binary


#: The environment pyaxvisor runs in: this one, but with Python's bytecode cache
#: allowed, as for an installed package (pip compiles it at install; a sandbox that sets
#: PYTHONDONTWRITEBYTECODE would make every run compile the sources again, 0.15 s).
OURS = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
#: What both hypervisors' Linux guests get on their command line, so they boot the same
#: guest at the same cost from run to run: both AArch64 ``virt`` boards give the guest a
#: ``kaslr-seed``, and a randomised arm64 kernel forces page-table isolation on, whose
#: table switch at every system call, exception and interrupt costs a software TLB a flush
#: (several times the guest's system-call cost); the figures recorded before pyaxvisor had
#: the seed were made this way. RISC-V guests get it too: neither randomises then.
SAME_GUEST_ARGS = "nokaslr"
#: The same on the unicorn wheel's stock library instead of the patched build
#: ``pip install .`` made (pyaxvisor.engine.tcg.unicorn_select).
STOCK = {**OURS, "PYAXVISOR_STOCK_UNICORN": "1"}


def time_until(argv: list[str], marker: bytes | None, timeout: float = 300,
               env: dict[str, str] | None = None) -> float:
    """Seconds from start until ``marker`` appears on stdout (or until exit if None)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
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


def row(name: str, ours: float, qemu: float, unit: str = "s",
        stock: float | None = None) -> None:
    """One table row: pyaxvisor (patched engine), the stock wheel's engine when measured,
    QEMU, and the ratio pyaxvisor / QEMU."""
    mid = f"{stock:>10.3f} {unit:<3}" if stock is not None else f"{'':>14}"
    print(f"{name:<34}{ours:>10.3f} {unit:<3}{mid}{qemu:>10.3f} {unit:<3}{ours / qemu:>8.2f}x",
          flush=True)


def three_way(runs: int, ours: list[str], qemu: list[str], marker: bytes | None
              ) -> tuple[float, float, float]:
    """Medians of ``ours`` (patched engine), ``ours`` on the stock library and ``qemu``,
    until ``marker`` (or their end), measured alternately run by run."""
    times: tuple[list[float], list[float], list[float]] = ([], [], [])
    for _ in range(runs):
        times[0].append(time_until(ours, marker, env=OURS))
        times[1].append(time_until(ours, marker, env=STOCK))
        times[2].append(time_until(qemu, marker))
    return tuple(statistics.median(t) for t in times)  # type: ignore[return-value]


def run_benchmarks(description: str, tools: tuple[str, ...], packages: str,
                   benches: dict[str, Callable[[int, Path], None]]) -> None:
    """The command line every script has: ``--runs N`` (median of N) and ``--only NAME``
    (one of ``benches``); refuses to start without ``tools`` (naming the Debian
    ``packages`` to install), prints the table head, and runs each benchmark with a
    scratch directory for the guests it builds."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=sorted(benches))
    args = ap.parse_args()
    for tool in tools:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install {packages}")
    print(f"{'benchmark (median of ' + str(args.runs) + ')':<34}{'pyaxvisor':>14}"
          f"{'stock wheel':>14}{'QEMU TCG':>14}{'ratio':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, bench in benches.items():
            if args.only in (None, name):
                bench(args.runs, Path(tmp))


def compare(runs: int, label: str, ours: list[str], qemu: list[str], args: list[str],
            marker: bytes | None) -> tuple[float, float]:
    """Median seconds of ``ours + args`` (patched and stock engine) and ``qemu + args``
    until ``marker`` (or their end), printed as one table row; returns ours and QEMU's."""
    mine, stock, theirs = three_way(runs, [*ours, *args], [*qemu, *args], marker)
    row(label, mine, theirs, stock=stock)
    return mine, theirs


def bench_linux_guests(runs: int, ours: list[str], qemu: list[str], arch: str,
                       firmware: list[str], console: str, cpus: str) -> None:
    """Debian's U-Boot to its prompt (started with ``firmware`` + the image) and Debian's
    Linux with the busybox initramfs on 2 CPUs to its userspace marker (with
    :data:`SAME_GUEST_ARGS`)."""
    from pyaxvisor import images

    quiet = {"log": lambda *_: None}
    uboot = images.fetch(f"u-boot-{arch}", **quiet)
    kernel, initrd = images.fetch(f"linux-{arch}", **quiet), images.fetch(f"initramfs-{arch}",
                                                                          **quiet)
    compare(runs, "U-Boot to prompt", ours, qemu, [*firmware, str(uboot)], b"=> ")
    compare(runs, f"Linux to userspace (2 {cpus})", ours, qemu,
            ["-kernel", str(kernel), "-initrd", str(initrd), "-append",
             f"console={console} {SAME_GUEST_ARGS}", "-m", "512M", "-smp", "2"],
            images.USERSPACE_MARKER.encode())

"""Many SMP Linux boots in a row: the stress check of parallel vCPUs (issue 12).

    python benchmarks/smp_boots.py [--arch aarch64|riscv64] [--count 50] [--smp 2]

Boots Debian's Linux with the busybox initramfs (the same images and command line as
the boot benchmark) ``--count`` times with ``-smp N`` through ``pyaxvisor run``, each
until the initramfs prints its userspace marker and powers off, and prints one line per
boot and a summary: how many reached userspace and powered off with status 0, and the
boot times (min / median / max). Any boot that fails is reported with the end of its
output; the exit status is the number of failed boots (0: all passed).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CONSOLE = {"aarch64": "ttyAMA0", "riscv64": "ttyS0"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(CONSOLE), default="aarch64")
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds one boot may take (default 120)")
    args = ap.parse_args()
    if not 1 <= args.count <= 10_000 or not 1 <= args.smp <= 8:
        ap.error("--count must be 1..10000 and --smp 1..8")

    from pyaxvisor import images

    quiet = {"log": lambda *_: None}
    kernel = images.fetch(f"linux-{args.arch}", **quiet)
    initrd = images.fetch(f"initramfs-{args.arch}", **quiet)
    marker = images.USERSPACE_MARKER.encode()
    argv = [sys.executable, "-m", "pyaxvisor.cli", "run", "-M", "virt", "-kernel", str(kernel),
            "-initrd", str(initrd), "-append", f"console={CONSOLE[args.arch]}", "-m", "512M",
            "-smp", str(args.smp), "--timeout", str(args.timeout)]
    times: list[float] = []
    failed = 0
    for n in range(1, args.count + 1):
        start = time.monotonic()
        p = subprocess.run(argv, capture_output=True, timeout=args.timeout + 30)
        took = time.monotonic() - start
        ok = p.returncode == 0 and marker in p.stdout
        if ok:
            times.append(took)
        else:
            failed += 1
            tail = (p.stdout[-1500:] + p.stderr[-1500:]).decode(errors="replace")
            print(f"--- boot {n} failed: status {p.returncode}\n{tail}\n---")
        print(f"boot {n:3}/{args.count}: {'ok' if ok else 'FAILED'} {took:6.2f} s", flush=True)
    print(f"\n{args.arch} Linux, {args.smp} CPUs: {len(times)}/{args.count} boots reached "
          "userspace and powered off", end="")
    if times:
        print(f"; boot time min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
              f"max {max(times):.2f} s")
    else:
        print()
    return failed


if __name__ == "__main__":
    sys.exit(main())

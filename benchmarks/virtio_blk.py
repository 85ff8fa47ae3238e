"""virtio-blk throughput: Debian's arm64 Linux on pyaxvisor against qemu-system-aarch64
(TCG, ``-M virt -cpu cortex-a72``), both with the disk on virtio-mmio, side by side on the
same kernel, initramfs, raw image and guest command, median of N runs.

    python benchmarks/virtio_blk.py [--runs 5]

Both guests boot with ``bench_common.SAME_GUEST_ARGS`` (``nokaslr``: without it both
guests would run with page-table isolation; the figures recorded before pyaxvisor gave a
``kaslr-seed`` were made without it).

The guest (the ``initramfs-virtio-arm64`` image: Debian's own virtio_mmio and virtio_blk
modules, busybox 1.35 userspace) times the transfers itself with ``/proc/uptime`` (10 ms
resolution), so boot and start-up are excluded:

* sequential write: ``dd if=/dev/zero of=/dev/vda bs=1M count=256 oflag=direct``;
* sequential read: ``dd if=/dev/vda of=/dev/null bs=1M count=256 iflag=direct``
  (busybox's dd supports ``iflag=direct`` and ``oflag=direct``: O_DIRECT, no guest page
  cache);
* 4 KiB reads, one dd: ``dd bs=4k count=4096 iflag=direct`` — sequential, one request
  at a time (queue depth 1), one process: the request rate of the device path;
* 4 KiB random reads: a shell loop of ``dd bs=4k count=1 skip=$RANDOM… iflag=direct``.
  busybox has no fio, so every read is a fork and exec of busybox in the guest; the row
  below it runs the same loop reading ``/dev/zero`` (no disk at all), which shows how much
  of the figure is process start-up. Treat the random-read IOPS as "dd invocations per
  second", not as the device's IOPS.

The image is a 300 MiB file in a temporary directory, written in full before the first
run, so that no run pays for the host's file system allocating its blocks (with a sparse
file only the first run to write, always the same hypervisor, could); the host's page cache holds
it for both hypervisors (QEMU's default ``cache=writeback``). Each round runs both
hypervisors back to back, the order swapped every round, and the host's dirty pages are
written out (``sync``) before each run, so that no run has the previous one's writeback
going on under it. The ratio column is the median of the rounds' own ratios (pyaxvisor /
QEMU of a rate, above 1.0 is faster, the two runs of a round next to each other in time,
which cancels the slow stretches this host has), with the lowest and highest round after
it; the rate columns are each hypervisor's median. Needs ``qemu-system-arm``; fetches the
images with ``pyaxvisor.images``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import OURS, SAME_GUEST_ARGS

QEMU = "qemu-system-aarch64"
PYAXVISOR = [sys.executable, "-m", "pyaxvisor.cli", "run"]
#: ``-nic none``: pyaxvisor's VM has no network device, and QEMU's default one (a PCI
#: virtio-net) needs the ipxe ROMs, which a ``--no-install-recommends`` QEMU lacks.
QEMU_BASE = [QEMU, "-M", "virt", "-cpu", "cortex-a72", "-nographic", "-serial", "stdio",
             "-monitor", "none", "-nic", "none"]
MIB = 1 << 20
SEQ_MIB = 256
SEQ4K_COUNT = 4096
RANDOM_COUNT = 300
IMAGE_SIZE = 300 * MIB
MARK = "PYAXVISOR-VBENCH"

#: ``$RANDOM`` is 15 bits; two of them give a block number below 65536 (256 MiB / 4 KiB).
_LOOP = ("i=0; while [ $i -lt {n} ]; do "
         "dd if={src} of=/dev/null bs=4k count=1 skip=$(( (RANDOM << 1) | (RANDOM & 1) )) "
         "{flag} 2>/dev/null; i=$((i+1)); done")
#: The guest's command: uptimes (first field) between the steps, on one marked line.
GUEST_CMD = "; ".join([
    "u() { read -r up _ </proc/uptime; echo $up; }",
    "t0=$(u)",
    f"dd if=/dev/zero of=/dev/vda bs=1M count={SEQ_MIB} oflag=direct 2>/dev/null",
    "t1=$(u)",
    f"dd if=/dev/vda of=/dev/null bs=1M count={SEQ_MIB} iflag=direct 2>/dev/null",
    "t2=$(u)",
    f"dd if=/dev/vda of=/dev/null bs=4k count={SEQ4K_COUNT} iflag=direct 2>/dev/null",
    "t3=$(u)",
    _LOOP.format(n=RANDOM_COUNT, src="/dev/vda", flag="iflag=direct"),
    "t4=$(u)",
    _LOOP.format(n=RANDOM_COUNT, src="/dev/zero", flag=""),
    "t5=$(u)",
    f"echo {MARK} $t0 $t1 $t2 $t3 $t4 $t5",
])

#: Row label, unit, and the rate from the step durations d[0..4] (seconds).
ROWS: list[tuple[str, str, int]] = [
    (f"sequential write, {SEQ_MIB} MiB, 1 MiB", "MB/s", 0),
    (f"sequential read, {SEQ_MIB} MiB, 1 MiB", "MB/s", 1),
    ("4 KiB reads, one dd (QD1)", "IOPS", 2),
    ("4 KiB random reads, dd per read", "IOPS", 3),
    ("  same loop on /dev/zero (no disk)", "/s", 4),
]
_WORK = [SEQ_MIB * MIB / 1e6, SEQ_MIB * MIB / 1e6, SEQ4K_COUNT, RANDOM_COUNT, RANDOM_COUNT]


def guest_rates(argv: list[str], env: dict[str, str] | None = None) -> list[float]:
    """Boot ``argv`` (a whole VM command line), return the five rates the guest measured."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                       stdin=subprocess.DEVNULL, env=env)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith(MARK + " ")), None)
    if line is None:
        raise RuntimeError(f"{argv[0]}: no {MARK} line (exit {r.returncode}):\n"
                           f"{r.stdout[-2000:]}{r.stderr[-1000:]}")
    print(f"{argv[0].rsplit('/', 1)[-1]}: {line}", file=sys.stderr, flush=True)
    t = [float(x) for x in line.split()[1:]]
    return [work / max(b - a, 0.01) for work, a, b in zip(_WORK, t[:-1], t[1:], strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if shutil.which(QEMU) is None:
        sys.exit(f"{QEMU} not found: apt-get install qemu-system-arm")
    from pyaxvisor import images

    quiet = {"log": lambda *_: None}
    kernel = images.fetch("linux-arm64", **quiet)
    initrd = images.fetch("initramfs-virtio-arm64", **quiet)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "disk.img"
        allocate(image, IMAGE_SIZE)
        common = ["-kernel", str(kernel), "-initrd", str(initrd), "-append",
                  f'console=ttyAMA0 {SAME_GUEST_ARGS} pyaxvisor.cmd="{GUEST_CMD}"', "-m", "512M",
                  "-drive", f"file={image},format=raw,if=none,id=hd0",
                  "-device", "virtio-blk-device,drive=hd0"]
        runs = {"ours": ([*PYAXVISOR, *common, "--timeout", "800"], OURS),
                "qemu": ([*QEMU_BASE, *common], None)}
        rates: dict[str, list[list[float]]] = {"ours": [], "qemu": []}
        for n in range(args.runs):
            for name in ("ours", "qemu") if n % 2 == 0 else ("qemu", "ours"):
                os.sync()  # the previous run's writes are on the disk, not still going
                argv, env = runs[name]
                rates[name].append(guest_rates(argv, env=env))
    print(f"{'benchmark (median of ' + str(args.runs) + ')':<38}{'pyaxvisor':>14}"
          f"{'QEMU TCG':>14}{'ratio':>8}  {'rounds':>11}")
    for label, unit, i in ROWS:
        mine = statistics.median(run[i] for run in rates["ours"])
        theirs = statistics.median(run[i] for run in rates["qemu"])
        paired = [a[i] / b[i] for a, b in zip(rates["ours"], rates["qemu"], strict=True)]
        print(f"{label:<38}{mine:>9.1f} {unit:<4}{theirs:>9.1f} {unit:<4}"
              f"{statistics.median(paired):>7.2f}x  {min(paired):.2f}-{max(paired):.2f}x",
              flush=True)


def allocate(path: Path, size: int) -> None:
    """Write ``size`` zero bytes to ``path`` and put them on the disk: every block
    allocated before the first run."""
    block = bytes(MIB)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


if __name__ == "__main__":
    main()

"""x86_64 on KVM: pyaxvisor against references measured side by side, in one run.

    python benchmarks/x86_64.py [--runs 5] [--only exit-loop|smp-kernel]

* **exit-loop**: a real-mode guest writes 200 000 times to COM1's scratch register
  (port 0x3FF, served by the 16550 model through the port bus), then to port 0xF4.
  pyaxvisor's VM run loop (``Vm.run`` on the PC board, isa-debug-exit at 0xF4) against
  ``benchmarks/x86_64/kvm_exit_loop.c``, the same KVM_RUN loop in C (built here with
  gcc), on the same guest bytes. Target: ≤ 1.15x.
* **smp-kernel**: the bundled Multiboot test kernel on 2 CPUs (INIT/SIPI, COM1,
  fw_cfg, isa-debug-exit), ``pyaxvisor run`` against ``qemu-system-x86_64 -M
  microvm -enable-kvm``, each a process, wall time, median of ``--runs``; ours is
  the ``pyaxvisor`` command of a fresh venv with the package ``pip install``-ed, as
  the README installs it. Target: ≤ 1.0x.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

HERE = Path(__file__).parent
N_WRITES = 200_000
SCRATCH_PORT = 0x3FF
EXIT_PORT = 0xF4


def exit_loop_guest(n: int = N_WRITES) -> bytes:
    """Real mode at 0x1000: ``mov ecx, n; mov dx, 0x3ff; l: out dx, al; dec ecx;
    jnz l; out 0xf4, al; hlt``."""
    return (b"\x66\xb9" + n.to_bytes(4, "little") + b"\xba" + SCRATCH_PORT.to_bytes(2, "little")
            + b"\xee\x66\x49\x75\xfb" + bytes([0xE6, EXIT_PORT, 0xF4]))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def bench_exit_loop(runs: int) -> tuple[list[float], list[float]]:
    from pyaxvisor.boards.quick import x86_vm as X86Vm

    guest = exit_loop_guest()
    work = Path(tempfile.mkdtemp(prefix="pyaxvisor-bench-"))
    (work / "guest.bin").write_bytes(guest)
    subprocess.run(["gcc", "-O2", "-o", str(work / "ref"), str(HERE / "x86_64/kvm_exit_loop.c")],
                   check=True)
    ours, ref = [], []
    for _ in range(runs):
        out = subprocess.run([str(work / "ref"), str(work / "guest.bin")], check=True,
                             capture_output=True, text=True).stdout.split()
        exits, seconds = int(out[0]), float(out[1])
        if exits != N_WRITES + 1:
            raise SystemExit(f"reference: {exits} exits, expected {N_WRITES + 1}")
        ref.append(seconds / exits)
        vm = X86Vm(ram_size=16 << 20, debug_exits=[(EXIT_PORT, 1)])
        try:
            vm.write_guest(0x1000, guest)
            t0 = time.perf_counter()
            result = vm.run(0x1000, mode="real", timeout=300)
            dt = time.perf_counter() - t0
        finally:
            vm.close()
        writes = result.exits["IoWrite"]
        if result.reason != "debug-exit" or writes < N_WRITES:
            raise SystemExit(f"pyaxvisor: {result.reason} after {writes} port writes")
        ours.append(dt / (writes + 1))
    return ours, ref


def _timed(cmd: list[str], status: int, needle: str) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=120)
    dt = time.perf_counter() - t0
    if p.returncode != status or needle not in p.stdout:
        raise SystemExit(f"{cmd[0]}: status {p.returncode}, output:\n{p.stdout}{p.stderr}")
    return dt


def installed_pyaxvisor(work: Path) -> list[str]:
    """The ``pyaxvisor`` command as a user gets it from the README's ``pip install .``:
    a fresh virtual environment with the package installed (bytecode compiled, no
    development path hooks). Falls back to this interpreter when pip cannot install."""
    venv = work / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", str(HERE.parent)], check=True,
                       capture_output=True)
    except subprocess.CalledProcessError as exc:
        print(f"(pip install into a fresh venv failed, timing {sys.executable} -m "
              f"pyaxvisor.cli instead: {exc.stderr.decode(errors='replace')[-200:]})")
        return [sys.executable, "-m", "pyaxvisor.cli"]
    return [str(venv / "bin/pyaxvisor")]


def bench_smp_kernel(runs: int) -> tuple[list[float], list[float]]:
    kernel = str(resources.files("pyaxvisor.guests").joinpath("x86_64/smp.elf"))
    common = ["-smp", "2", "-m", "128M", "-nographic", "-kernel", kernel,
              "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4"]
    pyaxvisor = installed_pyaxvisor(Path(tempfile.mkdtemp(prefix="pyaxvisor-bench-")))
    ours_cmd = [*pyaxvisor, "run", "-M", "microvm", *common]
    qemu_cmd = ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-no-reboot", *common]
    ours, ref = [], []
    for _ in range(runs):
        ours.append(_timed(ours_cmd, 33, "all 2 CPUs up"))
        ref.append(_timed(qemu_cmd, 33, "all 2 CPUs up"))
    return ours, ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=["exit-loop", "smp-kernel"])
    args = ap.parse_args()
    from pyaxvisor.engine.kvm.probe import kvm_usable

    ok, why = kvm_usable()
    print(f"{cpu_model()}, Linux {platform.release()}, Python {platform.python_version()}")
    if not ok:
        print(f"skipped: KVM not usable: {why}")
        return
    print(f"{'benchmark':<34}{'pyaxvisor':>12}{'reference':>12}{'ratio':>8}  target")
    if args.only in (None, "exit-loop"):
        ours, ref = bench_exit_loop(args.runs)
        o, r = statistics.median(ours) * 1e6, statistics.median(ref) * 1e6
        print(f"{'exit round trip (µs/exit), vs C':<34}{o:>12.2f}{r:>12.2f}{o / r:>7.2f}x"
              f"  ≤ 1.15x {'met' if o / r <= 1.15 else 'missed'}")
    if args.only in (None, "smp-kernel"):
        ours, ref = bench_smp_kernel(args.runs)
        o, r = statistics.median(ours), statistics.median(ref)
        print(f"{'SMP kernel, 2 CPUs (s), vs microvm':<34}{o:>12.3f}{r:>12.3f}{o / r:>7.2f}x"
              f"  ≤ 1.0x {'met' if o / r <= 1.0 else 'missed'}")


if __name__ == "__main__":
    main()

"""x86_64 on KVM: pyaxvisor against references measured side by side, in one run.

    python benchmarks/x86_64.py [--runs 5] [--only exit-loop|smp-kernel|string-io|cpuid-exit]

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
* **string-io**: a Multiboot guest (flat, built here: :func:`string_io_guest`) writes
  64 KiB to COM1 with one ``rep outsb`` and reports through port 0xF4. pyaxvisor's VM
  (in this process, the exit count from the vCPU) with COM1's transmit register
  coalesced, as it runs by default, and with every write an exit (as before
  coalescing), against ``qemu-system-x86_64 -M microvm -enable-kvm`` (the same image;
  its wall time less that of the same guest writing nothing). KiB/s, median of
  ``--runs``. Target: ≥ 2x QEMU.
* **cpuid-exit**: the bundled kernel's ``cpuid=1000`` (1000 CPUIDs of each of eight
  leaves, each timed with RDTSC in the guest) under ``pyaxvisor run`` and QEMU
  microvm: guest-measured cycles per CPUID, the median of the single samples (which
  host preemption does not move) and the loop mean, median of ``--runs`` (and of the
  leaves). Target: ≤ 1.0x.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import struct
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
COM1 = 0x3F8
STRING_BYTES = 64 * 1024
KERNEL_LOAD = 0x10_0000
CPUID_RUNS = 1000


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


def string_io_guest(n: int) -> tuple[bytes, int]:
    """A Multiboot v1 flat image for 1 MiB (the a.out-kludge header; QEMU and
    pyaxvisor boot it with ``-kernel``) and its entry: ``mov esi, text; mov ecx, n;
    mov dx, 0x3f8; cld; rep outsb; mov al, 0; out 0xf4, al``, then an ACPI power-off
    (``outw 0x604, 0x2000``) and ``hlt``; the text is lines of 63 digits."""
    code_off, magic, flags = 36, 0x1BADB002, 1 << 16
    tail = (b"\x66\xba" + COM1.to_bytes(2, "little") + b"\xfc\xf3\x6e"  # mov dx; cld; rep outsb
            + b"\xb0\x00\xe6" + bytes([EXIT_PORT])                     # mov al, 0; out 0xf4
            + b"\x66\xba\x04\x06\x66\xb8\x00\x20\x66\xef"              # outw 0x604, 0x2000
            + b"\xf4\xeb\xfd")                                         # hlt; jmp
    text_addr = KERNEL_LOAD + code_off + 10 + len(tail)
    code = (b"\xbe" + text_addr.to_bytes(4, "little") + b"\xb9" + n.to_bytes(4, "little")
            + tail)
    entry = KERNEL_LOAD + code_off
    header = struct.pack("<8I", magic, flags, -(magic + flags) & 0xFFFF_FFFF, KERNEL_LOAD + 4,
                         KERNEL_LOAD, 0, 0, entry)
    line = bytes(0x30 + i % 10 for i in range(63)) + b"\n"
    text = (line * (n // len(line) + 1))[:n]
    return bytes([0xEB, code_off - 2, 0x90, 0x90]) + header + code + text, entry


def _ours_string_io(guest: bytes, entry: int, coalesce: bool) -> tuple[float, int]:
    """Seconds for the guest's output in pyaxvisor's VM, and the vCPU's exits."""
    from pyaxvisor.boards.quick import x86_vm as X86Vm
    from pyaxvisor.boards.x86_pc.board import PcBoard

    out = bytearray()
    saved, PcBoard.coalesce_com1 = PcBoard.coalesce_com1, coalesce
    try:
        vm = X86Vm(ram_size=32 << 20, debug_exits=[(EXIT_PORT, 1)], console_write=out.extend)
    finally:
        PcBoard.coalesce_com1 = saved
    try:
        vm.write_guest(KERNEL_LOAD, guest)
        t0 = time.perf_counter()
        result = vm.run(entry, mode="protected", timeout=300)
        dt = time.perf_counter() - t0
        exits = vm.vcpu(0).arch.kvm_runs
    finally:
        vm.close()
    if result.reason != "debug-exit" or len(out) != STRING_BYTES:
        raise SystemExit(f"pyaxvisor: {result.reason} after {len(out)} bytes of output")
    return dt, exits


def bench_string_io(runs: int) -> tuple[list[float], list[float], list[float], int, int]:
    """KiB/s of pyaxvisor coalesced, pyaxvisor exiting per byte, and QEMU; the exits of
    the two pyaxvisor runs."""
    guest, entry = string_io_guest(STRING_BYTES)
    empty, _ = string_io_guest(0)
    work = Path(tempfile.mkdtemp(prefix="pyaxvisor-bench-"))
    (work / "strio.bin").write_bytes(guest)
    (work / "empty.bin").write_bytes(empty)
    kib = STRING_BYTES / 1024
    fast, slow, qemu = [], [], []
    exits = {True: 0, False: 0}
    for _ in range(runs):
        for coalesce, into in ((True, fast), (False, slow)):
            dt, exits[coalesce] = _ours_string_io(guest, entry, coalesce)
            into.append(kib / dt)
        times = {}
        for name in ("strio", "empty"):
            t0 = time.perf_counter()
            p = subprocess.run(["qemu-system-x86_64", "-M", "microvm", "-enable-kvm",
                                "-no-reboot", "-nographic", "-kernel", str(work / f"{name}.bin"),
                                "-device", f"isa-debug-exit,iobase={EXIT_PORT:#x},iosize=1"],
                               capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
            times[name] = time.perf_counter() - t0
            want = STRING_BYTES if name == "strio" else 0
            if p.returncode != 1 or p.stdout.count(b"\n") != want // 64:
                raise SystemExit(f"qemu ({name}): status {p.returncode}, "
                                 f"{len(p.stdout)} bytes of output")
        qemu.append(kib / (times["strio"] - times["empty"]))
    return fast, slow, qemu, exits[True], exits[False]


_CPUID_LINE = re.compile(r"cpuid (0x[0-9a-f]+): \d+ in (\d+) cycles each, median (\d+)")


def _cpuid_cycles(cmd: list[str]) -> tuple[float, float]:
    """(median of the per-leaf medians, median of the per-leaf loop means) of one run."""
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=300)
    rows = _CPUID_LINE.findall(p.stdout)
    if len(rows) != 8:
        raise SystemExit(f"{cmd[0]}: status {p.returncode}, output:\n{p.stdout}{p.stderr}")
    return (statistics.median(float(m) for _, _, m in rows),
            statistics.median(float(mean) for _, mean, _ in rows))


def bench_cpuid(runs: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    kernel = str(resources.files("pyaxvisor.guests").joinpath("x86_64/smp.elf"))
    common = ["-smp", "1", "-m", "128M", "-nographic", "-kernel", kernel, "-append",
              f"cpuid={CPUID_RUNS}", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4"]
    ours_cmd = [sys.executable, "-m", "pyaxvisor.cli", "run", "-M", "microvm", *common]
    qemu_cmd = ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-no-reboot", *common]
    ours, ref = [], []
    for _ in range(runs):
        ours.append(_cpuid_cycles(ours_cmd))
        ref.append(_cpuid_cycles(qemu_cmd))
    return ours, ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=["exit-loop", "smp-kernel", "string-io", "cpuid-exit"])
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
    if args.only in (None, "string-io"):
        fast, slow, qemu, fast_exits, slow_exits = bench_string_io(args.runs)
        f, w, q = (statistics.median(v) for v in (fast, slow, qemu))
        print(f"{'rep outsb to COM1 (KiB/s), vs QEMU':<34}{f:>12.1f}{q:>12.1f}{f / q:>7.2f}x"
              f"  ≥ 2x {'met' if f / q >= 2 else 'missed'}")
        print(f"{'  ... every write an exit':<34}{w:>12.1f}{q:>12.1f}{w / q:>7.2f}x")
        print(f"  exits for {STRING_BYTES} bytes: {fast_exits} coalesced "
              f"({STRING_BYTES / fast_exits:.0f} bytes each), {slow_exits} without")
    if args.only in (None, "cpuid-exit"):
        ours_c, ref_c = bench_cpuid(args.runs)
        om, rm = (statistics.median(m for m, _ in v) for v in (ours_c, ref_c))
        oa, ra = (statistics.median(a for _, a in v) for v in (ours_c, ref_c))
        print(f"{'CPUID exit, median (cycles), vs QEMU':<34}{om:>12.0f}{rm:>12.0f}{om / rm:>7.2f}x"
              f"  ≤ 1.0x {'met' if om / rm <= 1.0 else 'missed'}")
        print(f"{'  ... loop mean (cycles)':<34}{oa:>12.0f}{ra:>12.0f}{oa / ra:>7.2f}x")


if __name__ == "__main__":
    main()

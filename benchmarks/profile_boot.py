"""Where the time of a boot goes, per vCPU thread: guest code, every exit kind, Python
frames, lock waits; printed as a table and drawn as a plot.

    python benchmarks/profile_boot.py [--arch aarch64|riscv64] [--smp 2] [--png out.png]
                                      [--guest linux|uboot|bundled] [--no-baseline]

Boots the guest in this process (Debian's Linux with the busybox initramfs to the
userspace marker ``PYAXVISOR-USERSPACE-OK`` by default; U-Boot to its prompt; or the
bundled AArch64 guest to its power-off), with the images of pyaxvisor's image cache
(fetched with ``pyaxvisor.images`` when missing), and measures each vCPU thread with
exclusive timers: every interval of a thread belongs to exactly one category (the
innermost one running), so a thread's categories add up to its wall time.

* guest code: inside the engine's ``emu_start`` (Unicorn's ``Uc.emu_start`` on AArch64,
  the native ``riscv_run`` on RISC-V), less the Python callbacks it makes;
* Python inside the engine: in-CPU device accesses (the UART, GIC, PLIC... served
  without an exit) and the engine's trap/timer callbacks (RISC-V SBI calls are served
  there);
* the vCPU run path (the arch vCPU's ``run`` in Python: entry, trap decoding), each
  exit handler by kind, halted (WFI: the ``Halt`` handler waiting for an interrupt),
  CPU off (``CpuDown`` waiting for a CPU_ON), the run loop itself;
* waits: the per-VM execution lock (``ExecLock``) and the other locks of the vCPU path
  (the VM's, the interrupt controller's, the timers', the vCPUs'), contended
  acquisitions only;
* start-up (per-CPU state, vCPU set-up) and the time before the thread existed
  (secondary CPUs wait for PSCI CPU_ON / SBI HSM).

A sampling thread reads ``sys._current_frames()`` every ``--interval`` (1 ms) for the
vCPU threads and aggregates by function (self and cumulative time); a sample taken
while the thread is in the engine, halted or waiting for a lock gets a pseudo-frame
(``[native] guest code``, ``[idle] halted``, ``[wait] ...``) so that the Python
functions' self time is time spent running Python.

Everything is installed at profile time only (class attributes patched and restored,
locks wrapped on the profiled VM's objects); the normal path is unchanged. Before the
profiled boot an unprofiled one runs in the same process (``--no-baseline`` skips it),
and the output gives both times: the profiler's overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import types
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

perf = time.perf_counter
HERE = os.path.abspath(__file__)

# -- the summary categories ---------------------------------------------------------------
GUEST = "guest code (engine)"
IN_CPU_DEV = "in-CPU device accesses"
STATE = "engine state via ctypes"
ENGINE_CB = "engine callbacks (Python)"
RUN_PATH = "vCPU run path (Python)"
EXITS = "exit handlers"
HALTED = "halted (WFI)"
CPU_OFF = "CPU off (CpuDown)"
EXEC_LOCK = "exec-lock wait"
OTHER_LOCKS = "other lock waits"
LOOP = "run loop (dispatch)"
STARTUP = "thread start-up/teardown"
NOT_STARTED = "not started / stopped"
#: In the order of the table and of the stacked bars.
SUMMARY = (GUEST, IN_CPU_DEV, ENGINE_CB, STATE, RUN_PATH, EXITS, HALTED, CPU_OFF, EXEC_LOCK,
           OTHER_LOCKS, LOOP, STARTUP, NOT_STARTED)
COLORS = {GUEST: "#2e7d32", IN_CPU_DEV: "#66bb6a", ENGINE_CB: "#a5d6a7", STATE: "#ffb300",
          RUN_PATH: "#1565c0", EXITS: "#42a5f5", HALTED: "#bdbdbd", CPU_OFF: "#e0e0e0",
          EXEC_LOCK: "#e53935",
          OTHER_LOCKS: "#ff8a80", LOOP: "#7e57c2", STARTUP: "#8d6e63", NOT_STARTED: "#f5f5f5"}


def summary_of(cat: str) -> str:
    """The summary category of a detailed one ("exit MmioRead" → exit handlers)."""
    if cat.startswith("exit "):
        return {"exit Halt": HALTED, "exit CpuDown": CPU_OFF}.get(cat, EXITS)
    if cat.startswith("device "):
        return IN_CPU_DEV
    if cat.startswith("callback "):
        return ENGINE_CB
    if cat.startswith("lock "):
        return OTHER_LOCKS
    return cat


# -- per-thread exclusive timers ----------------------------------------------------------
class ThreadAcct:
    """The categories of one vCPU thread: a stack whose top is charged for the time
    until the next change, so the categories are exclusive and add up to the wall."""

    __slots__ = ("count", "cpu", "end", "last", "stack", "start", "time")

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.stack = [STARTUP]
        self.time: dict[str, float] = defaultdict(float)
        self.count: Counter[str] = Counter()
        self.start = self.last = perf()
        self.end = 0.0

    def enter(self, cat: str) -> None:
        now = perf()
        self.time[self.stack[-1]] += now - self.last
        self.stack.append(cat)
        self.count[cat] += 1
        self.last = now

    def leave(self) -> None:
        now = perf()
        self.time[self.stack.pop()] += now - self.last
        self.last = now

    def close(self) -> None:
        now = perf()
        self.time[self.stack[-1]] += now - self.last
        self.last = self.end = now


#: Thread ident → its accounts, for the threads of the profiled VM's vCPUs.
ACCTS: dict[int, ThreadAcct] = {}
_ident = threading.get_ident


def timed(fn: Callable[..., Any], cat: str) -> Callable[..., Any]:
    """``fn`` charged to ``cat`` on vCPU threads (a plain function: binds as a method)."""

    def profiled(*args: Any, **kwargs: Any) -> Any:
        acct = ACCTS.get(_ident())
        if acct is None:
            return fn(*args, **kwargs)
        acct.enter(cat)
        try:
            return fn(*args, **kwargs)
        finally:
            acct.leave()

    profiled.__wrapped__ = fn  # type: ignore[attr-defined]
    return profiled


class TimedLock:
    """A Lock/RLock whose contended acquisitions are charged to ``lock NAME``."""

    def __init__(self, lock: Any, name: str) -> None:
        self._lock = lock
        self._cat = f"lock {name}"

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        lock = self._lock
        if lock.acquire(False):
            return True
        if not blocking:
            return False
        acct = ACCTS.get(_ident())
        if acct is None:
            return lock.acquire(True, timeout)
        acct.enter(self._cat)
        try:
            return lock.acquire(True, timeout)
        finally:
            acct.leave()

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


def wrap_locks(obj: Any, owner: str, seen: set[int], depth: int = 2) -> list[tuple[Any, str]]:
    """Wrap the ``_lock``/``lock`` attributes of ``obj`` and of the objects it holds
    (``depth`` levels; lists, tuples and dicts of them too); returns (object, attribute)
    pairs to restore."""
    done: list[tuple[Any, str]] = []
    if id(obj) in seen or not hasattr(obj, "__dict__") or isinstance(obj, type):
        return done
    seen.add(id(obj))
    for name, value in list(vars(obj).items()):
        if name in ("_lock", "lock") and isinstance(value, _LOCK_TYPES):
            setattr(obj, name, TimedLock(value, f"{owner}.{name}"))
            done.append((obj, name))
        elif depth > 0:
            values = (value.values() if isinstance(value, dict)
                      else value if isinstance(value, list | tuple) else (value,))
            for v in values:
                if type(v).__module__.startswith("pyaxvisor"):
                    done += wrap_locks(v, type(v).__name__, seen, depth - 1)
    return done


# -- the sampler ----------------------------------------------------------------------------
#: Pseudo-frames of samples taken while a thread is not running Python.
_PSEUDO = {GUEST: "[native] guest code (emu_start)", STATE: "[ctypes] engine state",
           EXEC_LOCK: "[wait] ExecLock",
           "exit Halt": "[idle] halted (WFI)", "exit CpuDown": "[idle] CPU off"}


class Sampler(threading.Thread):
    """Reads the vCPU threads' stacks every ``interval`` seconds; each sample weighs the
    time since the previous one."""

    def __init__(self, interval: float, fine: bool = False) -> None:
        super().__init__(name="profile-sampler", daemon=True)
        self.interval = interval
        self.fine = fine
        self.stacks: dict[tuple[str, ...], float] = defaultdict(float)
        self.samples = 0
        self.busy = 0.0  # the sampler's own time
        self._stop_event = threading.Event()

    def run(self) -> None:
        # A thread running Python keeps the GIL until it releases it (a ctypes call, a
        # wait) or the switch interval (5 ms) forces it to: samples land on the calls that
        # release it. ``fine``: a switch interval of a tenth of the sampling interval while
        # profiling, so a sample lands where the thread is when the sampler wakes (less
        # bias, more overhead).
        switch = sys.getswitchinterval()
        if self.fine:
            sys.setswitchinterval(min(switch, self.interval / 10))
        try:
            self._sample()
        finally:
            sys.setswitchinterval(switch)

    def _sample(self) -> None:
        names: dict[Any, str] = {}
        last = perf()
        wait = self._stop_event.wait
        while not wait(self.interval):
            now = perf()
            dt, last = now - last, now
            frames = sys._current_frames()
            for ident, acct in list(ACCTS.items()):
                frame = frames.get(ident)
                if frame is None or acct.end:
                    continue
                top = acct.stack[-1]
                key: list[str] = []
                pseudo = _PSEUDO.get(top) or (f"[wait] {top[5:]}" if top.startswith("lock ")
                                              else None)
                if pseudo is not None:
                    key.append(pseudo)
                while frame is not None:
                    code = frame.f_code
                    name = names.get(code)
                    if name is None:
                        name = names[code] = _function_name(code)
                    if name:
                        key.append(name)
                    frame = frame.f_back
                self.stacks[tuple(key)] += dt
                self.samples += 1
            self.busy += perf() - now

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def functions(self) -> tuple[dict[str, float], dict[str, float], float]:
        """Self and cumulative seconds by function, and the total sampled seconds."""
        own: dict[str, float] = defaultdict(float)
        cum: dict[str, float] = defaultdict(float)
        total = 0.0
        for stack, seconds in self.stacks.items():
            total += seconds
            if stack:
                own[stack[0]] += seconds
            for name in set(stack):
                cum[name] += seconds
        return own, cum, total


def _function_name(code: types.CodeType) -> str:
    """``qualname (file:line)``, relative to the package or site-packages; "" for the
    profiler's own frames (its wrappers are transparent)."""
    path = code.co_filename
    if path == HERE:
        return ""
    for marker in ("/site-packages/", "/pyaxvisor/", "/lib/python3"):
        cut = path.rfind(marker)
        if cut >= 0:
            path = path[cut + len(marker):]
            if marker == "/pyaxvisor/":
                path = "pyaxvisor/" + path
            break
    return f"{code.co_qualname} ({path}:{code.co_firstlineno})"


# -- installing the profiler --------------------------------------------------------------
@dataclass
class Profile:
    """What one profiled run measured."""

    threads: dict[int, ThreadAcct] = field(default_factory=dict)
    engine: dict[int, dict[str, int]] = field(default_factory=dict)
    t0: float = 0.0
    t1: float = 0.0
    sampler: Sampler | None = None


@contextlib.contextmanager
def patched(arch: str) -> Iterator[None]:
    """The class-level instrumentation, installed for the ``with`` block only."""
    from pyaxvisor.vcpu.vcpu import VCpu
    from pyaxvisor.vm.vm import Vm

    saved: list[tuple[Any, str, Any]] = []
    missing = object()

    def patch(owner: Any, name: str, value: Any) -> None:
        saved.append((owner, name, vars(owner).get(name, missing)))
        setattr(owner, name, value)

    orig_thread = Vm._vcpu_thread

    def vcpu_thread(self: Vm, cpu: int, *args: Any) -> None:
        acct = ACCTS[_ident()] = ThreadAcct(cpu)
        try:
            orig_thread(self, cpu, *args)
        finally:
            acct.close()

    orig_loop = Vm._loop

    def loop(self: Vm, cpu: int, vcpu: Any) -> None:
        acct = ACCTS.get(_ident())
        if acct is None:
            return orig_loop(self, cpu, vcpu)
        acct.enter(LOOP)
        try:
            return orig_loop(self, cpu, vcpu)
        finally:
            acct.leave()
            self._profile_engine[cpu] = engine_counters(vcpu.arch)

    patch(Vm, "_vcpu_thread", vcpu_thread)
    patch(Vm, "_loop", loop)
    patch(VCpu, "run", timed(VCpu.run, RUN_PATH))
    from pyaxvisor.engine.tcg.exec_lock import ExecLock

    patch(ExecLock, "acquire", timed(ExecLock.acquire, EXEC_LOCK))
    if arch == "aarch64":
        from unicorn.unicorn_py3.unicorn import Uc

        from pyaxvisor.arch.aarch64.vcpu import Aarch64VCpu
        from pyaxvisor.engine.tcg.aarch64 import Aarch64Tcg
        from pyaxvisor.engine.tcg.native import ContextView

        patch(Uc, "emu_start", timed(Uc.emu_start, GUEST))
        # ctypes calls of the run path: ~1 us each alone; on a vCPU thread they also
        # wait for the GIL while the other vCPU threads run Python.
        patch(ContextView, "refresh", timed(ContextView.refresh, STATE))
        patch(Uc, "_do_reg_read", timed(Uc._do_reg_read, STATE))
        patch(Uc, "_do_reg_write", timed(Uc._do_reg_write, STATE))
        for name in ("_on_intr", "_timer_written", "_pmu_changed"):
            patch(Aarch64Tcg, name, timed(getattr(Aarch64Tcg, name), f"callback {name}"))
        vcpu_class: Any = Aarch64VCpu
    else:
        from pyaxvisor.arch.riscv64.vcpu import RISCVVCpu
        from pyaxvisor.engine.tcg import riscv64 as rv

        hooks = types.SimpleNamespace(**vars(rv._hooks))
        hooks.riscv_run = timed(rv._hooks.riscv_run, GUEST)
        patch(rv, "_hooks", hooks)
        patch(rv.Riscv64Tcg, "_trap_callback",
              timed(rv.Riscv64Tcg._trap_callback, "callback trap (SBI, faults)"))
        vcpu_class = RISCVVCpu
    orig_init = vcpu_class.__init__

    def vcpu_init(self: Any, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        wrap_locks(self, type(self).__name__, set(), depth=0)

    patch(vcpu_class, "__init__", vcpu_init)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            if value is missing:  # inherited: drop the patch, the base's shows again
                delattr(owner, name)
            else:
                setattr(owner, name, value)


def engine_counters(arch_vcpu: Any) -> dict[str, int]:
    """The engine's hook counters for a vCPU, as far as its engine keeps them."""
    engine = getattr(arch_vcpu, "_engine", None)
    out: dict[str, int] = {}
    if engine is None:
        return out
    stats = getattr(engine, "stats", None)
    if isinstance(stats, dict):
        out.update(stats)
    elif hasattr(engine, "preempt_stops"):
        out["preempt_stops"] = engine.preempt_stops
        with contextlib.suppress(Exception):
            out["watch_hits"] = engine.watch_hits
            out["pmu_notifications"] = engine._st.pmu.notifications
    if hasattr(arch_vcpu, "guest_exceptions"):
        out["guest_exceptions"] = arch_vcpu.guest_exceptions
    return out


def instrument_vm(vm: Any) -> Callable[[], None]:
    """The instance-level instrumentation of a built VM: its exit handlers, its in-CPU
    device windows and its locks. Returns the undo."""
    table = vm._exit_table()
    wrapped = {cls: timed(fn, f"exit {cls.__name__}") for cls, fn in table.items()}
    orig_other = vm._other

    def other(cpu: int, vcpu: Any, e: Any) -> None:
        acct = ACCTS.get(_ident())
        if acct is None:
            return orig_other(cpu, vcpu, e)
        acct.enter(f"exit {type(e).__name__}")
        try:
            return orig_other(cpu, vcpu, e)
        finally:
            acct.leave()

    vm._exit_table = lambda: wrapped
    vm._other = other
    board = vm.board
    orig_windows = board.in_cpu_windows

    def windows(vm_: Any) -> list[Any]:
        out = []
        for w in orig_windows(vm_):
            owner = getattr(w.read, "__self__", None)
            name = type(owner).__name__ if owner is not None else f"{w.base:#x}"
            out.append(w._replace(read=timed(w.read, f"device {name}"),
                                  write=timed(w.write, f"device {name}")))
        return out

    board.in_cpu_windows = windows
    vm._profile_engine = {}
    locks = wrap_locks(vm, "Vm", set(), depth=2)

    def undo() -> None:
        for obj, name in locks:
            setattr(obj, name, getattr(obj, name)._lock)
        for obj, name in ((vm, "_exit_table"), (vm, "_other"), (board, "in_cpu_windows")):
            with contextlib.suppress(AttributeError):
                delattr(obj, name)

    return undo


# -- booting ----------------------------------------------------------------------------------
@dataclass
class Guest:
    config: Any
    marker: bytes | None  # None: the guest ends by itself (power-off)
    what: str


def guest_config(arch: str, guest: str, smp: int, timeout: float, stats: bool) -> Guest:
    from pyaxvisor import images
    from pyaxvisor.boards.quick import config_for

    def fetch(name: str) -> Path:
        return images.fetch(name, log=lambda *a: print(*a, file=sys.stderr))

    if guest == "linux":
        console = "ttyAMA0" if arch == "aarch64" else "ttyS0"
        cfg = config_for(arch, memory=512 << 20, smp=smp, kernel=fetch(f"linux-{arch}"),
                         initrd=fetch(f"initramfs-{arch}"), append=f"console={console}",
                         timeout=timeout, stats=stats)
        return Guest(cfg, images.USERSPACE_MARKER.encode(),
                     f"Debian {arch} Linux to userspace ({images.USERSPACE_MARKER})")
    if guest == "uboot":
        image = fetch(f"u-boot-{arch}")
        kw: dict[str, Any] = {"bios": image} if arch == "aarch64" else {"kernel": image}
        cfg = config_for(arch, smp=smp, timeout=timeout, stats=stats, **kw)
        return Guest(cfg, b"=> ", "U-Boot to its prompt")
    if arch != "aarch64":
        sys.exit("--guest bundled: only the AArch64 board has a bundled guest")
    cfg = config_for(arch, smp=smp, timeout=timeout, stats=stats)
    return Guest(cfg, None, "the bundled AArch64 guest to PSCI SYSTEM_OFF")


def boot_once(guest: Guest, profile: Profile | None, interval: float, fine: bool = False
              ) -> tuple[float, Any, bytes]:
    """Boot ``guest`` (profiled when ``profile``); returns the seconds from the start of
    the run to the marker (or the end), the VmResult and the console output."""
    from pyaxvisor.boards import board_class
    from pyaxvisor.vm.vm import Vm

    cfg = guest.config
    seen = bytearray()
    hit = threading.Event()
    t_marker = [0.0]

    def console(data: bytes) -> None:
        seen.extend(data)
        if guest.marker is not None and not hit.is_set() \
                and guest.marker in seen[-len(data) - len(guest.marker):]:
            t_marker[0] = perf()
            hit.set()

    ctx = patched(cfg.arch) if profile is not None else contextlib.nullcontext()
    with ctx:
        vm = Vm(cfg, board_class(cfg.arch, cfg.machine)(cfg), console_write=console)
        undo = None
        try:
            vm.load()
            if profile is not None:
                undo = instrument_vm(vm)
                ACCTS.clear()
                profile.sampler = Sampler(interval, fine)
                profile.sampler.start()

            def quit_at_marker() -> None:
                if hit.wait(cfg.timeout or 600) and t_marker[0]:
                    vm.quit()

            watcher = threading.Thread(target=quit_at_marker, daemon=True)
            if guest.marker is not None:
                watcher.start()
            t0 = perf()
            result = vm.run()
            t1 = perf()
            hit.set()
            if profile is not None:
                assert profile.sampler is not None
                profile.sampler.stop()
                profile.t0, profile.t1 = t0, t1
                profile.threads = {a.cpu: a for a in ACCTS.values()}
                profile.engine = dict(vm._profile_engine)
                ACCTS.clear()
        finally:
            if undo is not None:
                undo()
            vm.close()
    if guest.marker is not None:
        if not t_marker[0]:
            raise SystemExit(f"the guest ended ({result.reason}: {result.error}) without "
                             f"{guest.marker!r}:\n{bytes(seen[-1500:]).decode(errors='replace')}")
        return t_marker[0] - t0, result, bytes(seen)
    if result.reason not in ("poweroff", "reset"):
        raise SystemExit(f"the guest ended with {result.reason}: {result.error}")
    return t1 - t0, result, bytes(seen)


# -- the report --------------------------------------------------------------------------------
def breakdown(profile: Profile) -> dict[int, dict[str, tuple[float, int]]]:
    """Per vCPU: summary category → (seconds, count), over the run's window (the
    time before a thread started and after it stopped is "not started / stopped")."""
    window = profile.t1 - profile.t0
    out: dict[int, dict[str, tuple[float, int]]] = {}
    for cpu, acct in sorted(profile.threads.items()):
        cats: dict[str, list[float]] = {c: [0.0, 0] for c in SUMMARY}
        for cat, seconds in acct.time.items():
            cats[summary_of(cat)][0] += seconds
        for cat, n in acct.count.items():
            cats[summary_of(cat)][1] += n
        cats[NOT_STARTED][0] = max(0.0, window - (acct.end - acct.start))
        out[cpu] = {c: (v[0], int(v[1])) for c, v in cats.items()}
    return out


def report(args: argparse.Namespace, guest: Guest, profile: Profile, result: Any,
           boot_s: float, base_s: float | None) -> dict[str, Any]:
    """Print the tables; returns what the plot and ``--json`` use."""
    window = profile.t1 - profile.t0
    per_cpu = breakdown(profile)
    cpus = sorted(per_cpu)
    total_wall = window * len(cpus)
    print(f"\nprofile of {guest.what}: {args.arch}, {len(cpus)} vCPU(s), "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"boot time (run start to {'marker' if guest.marker else 'power-off'}): "
          f"{boot_s:.2f} s profiled", end="")
    if base_s is not None:
        print(f", {base_s:.2f} s without the profiler: overhead "
              f"{(boot_s / base_s - 1) * 100:+.1f}%")
    else:
        print()
    print(f"profiled window (run start to end): {window:.3f} s per vCPU; % of the "
          f"{len(cpus)} vCPUs' wall ({total_wall:.3f} s)")
    head = "".join(f"{'vCPU' + str(c) + ' s':>10}" for c in cpus)
    print(f"\n{'category':<28}{head}{'total s':>10}{'% wall':>8}{'count':>10}")
    rows = []
    for cat in SUMMARY:
        secs = [per_cpu[c][cat][0] for c in cpus]
        count = sum(per_cpu[c][cat][1] for c in cpus)
        total = sum(secs)
        rows.append((cat, secs, total, count))
        cells = "".join(f"{s:>10.3f}" for s in secs)
        print(f"{cat:<28}{cells}{total:>10.3f}{total / total_wall * 100:>7.1f}%"
              f"{count if cat not in (NOT_STARTED, STARTUP) else '':>10}")
    sums = [sum(per_cpu[c][cat][0] for cat in SUMMARY) for c in cpus]
    print(f"{'sum (= wall)':<28}{''.join(f'{s:>10.3f}' for s in sums)}{sum(sums):>10.3f}"
          f"{sum(sums) / total_wall * 100:>7.1f}%")
    print(f"{'wall':<28}{''.join(f'{window:>10.3f}' for _ in cpus)}{total_wall:>10.3f}")

    # exits: the VM's own counts (dispatched and served in-CPU) and handling time
    print(f"\n{'exit kind':<24}{'count':>10}{'total ms':>11}{'mean us':>10}")
    exits = sorted(result.exits.items(), key=lambda kv: -result.exit_time.get(kv[0], 0.0))
    exit_rows = []
    for name, count in exits:
        total = result.exit_time.get(name, 0.0)
        exit_rows.append((name, count, total))
        mean = f"{total / count * 1e6:>10.1f}" if count and total else f"{'-':>10}"
        print(f"{name:<24}{count:>10}{total * 1e3:>11.1f}{mean}")
    reads, writes = result.in_cpu_accesses
    print(f"(served inside the CPU, no exit: {reads} device reads, {writes} writes)")

    detail: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for acct in profile.threads.values():
        for cat, seconds in acct.time.items():
            detail[cat][0] += seconds
        for cat, n in acct.count.items():
            detail[cat][1] += n
    for prefix, title in (("device ", "in-CPU device"), ("callback ", "engine callback"),
                          ("lock ", "lock waited for (contended)")):
        items = sorted(((k, v) for k, v in detail.items() if k.startswith(prefix)),
                       key=lambda kv: -kv[1][0])
        if prefix == "lock ":
            items.insert(0, (EXEC_LOCK, detail.get(EXEC_LOCK, [0.0, 0])))
        if items:
            print(f"\n{title:<40}{'count':>10}{'total ms':>11}{'mean us':>10}")
            for k, (secs, n) in items:
                name = k[len(prefix):] if k.startswith(prefix) else k
                mean = secs / n * 1e6 if n else 0.0
                label = "ExecLock (acquisitions)" if k == EXEC_LOCK else name
                print(f"{label:<40}{int(n):>10}{secs * 1e3:>11.1f}{mean:>10.1f}")
    if profile.engine:
        print("\nengine counters: " + "; ".join(
            f"vCPU{c}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            for c, counts in sorted(profile.engine.items())))

    sampler = profile.sampler
    assert sampler is not None
    own, cum, sampled = sampler.functions()
    pseudo = sorted(((n, t) for n, t in own.items() if n.startswith("[")), key=lambda kv: -kv[1])
    print(f"\nsampled every {args.interval * 1e3:g} ms: {sampler.samples} samples, "
          f"{sampled:.2f} s of vCPU thread time; not running Python: "
          + ", ".join(f"{n} {t / sampled * 100:.1f}%" for n, t in pseudo))
    top = sorted(((n, t) for n, t in own.items() if not n.startswith("[")),
                 key=lambda kv: -kv[1])[:args.top]
    print(f"top {args.top} Python functions by self time (cum: with what they call)")
    print(f"{'self s':>8}{'self%':>7}{'cum s':>8}{'cum%':>7}  function")
    for name, secs in top:
        print(f"{secs:>8.3f}{secs / sampled * 100:>6.1f}%{cum[name]:>8.3f}"
              f"{cum[name] / sampled * 100:>6.1f}%  {name}")
    print(f"\nprofiler overhead: sampler thread {sampler.busy:.3f} s "
          f"({sampler.busy / window * 100:.1f}% of the window)"
          + (f"; boot {boot_s:.2f} s against {base_s:.2f} s unprofiled "
             f"({(boot_s / base_s - 1) * 100:+.1f}%)" if base_s else ""))
    served = [(k[len(p):], v[1], v[0]) for k, v in detail.items()
              for p in ("device ", "callback ") if k.startswith(p)]
    return {"cpus": cpus, "rows": rows, "window": window, "exits": exit_rows,
            "served": served,
            "functions": top, "sampled": sampled, "boot_s": boot_s, "base_s": base_s,
            "per_cpu": {c: {k: v[0] for k, v in d.items()} for c, d in per_cpu.items()},
            "what": guest.what, "arch": args.arch}


def plot(data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 13),
                             gridspec_kw={"height_ratios": [1.2, 1.4, 2.2]})
    ax = axes[0]
    cpus = data["cpus"]
    labels = [f"vCPU {c}" for c in cpus]
    left = [0.0] * len(cpus)
    for cat in SUMMARY:
        widths = [data["per_cpu"][c][cat] for c in cpus]
        if not any(w > 0.0005 * data["window"] for w in widths):
            continue
        ax.barh(labels, widths, left=left, color=COLORS[cat], label=cat, edgecolor="white")
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    over = (f", profiler overhead {(data['boot_s'] / data['base_s'] - 1) * 100:+.0f}%"
            if data["base_s"] else "")
    ax.set_title(f"{data['what'].split(' (')[0]}: where each vCPU's time went{over}",
                 fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))

    ax = axes[1]
    bars = [(f"exit {n} (x{c})", t, "#42a5f5") for n, c, t in data["exits"] if t > 0]
    bars += [(f"in-CPU {n} (x{c})", t, "#66bb6a") for n, c, t in data["served"]]
    bars = sorted(bars, key=lambda b: -b[1])[:14][::-1]
    ax.barh([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_xlabel("seconds (all vCPUs; Halt includes the idle wait)")
    ax.set_title("top exits (blue) and accesses served inside the CPU (green) by time")

    ax = axes[2]
    funcs = data["functions"][:25][::-1]
    names = [n if len(n) < 70 else n[:67] + "..." for n, _ in funcs]
    colors = ["#7e57c2"] * len(funcs)
    ax.barh(names, [s for _, s in funcs], color=colors)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("seconds (self, sampled)")
    ax.set_title("top Python functions by self time (vCPU threads; time outside Python: "
                 "the bars above)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=("aarch64", "riscv64"), default="aarch64")
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--guest", choices=("linux", "uboot", "bundled"), default="linux")
    ap.add_argument("--png", help="write the plot there (needs matplotlib: the "
                    "'profile' extra)")
    ap.add_argument("--json", help="write the figures there as JSON")
    ap.add_argument("--interval", type=float, default=0.001,
                    help="sampling interval in seconds (default 0.001)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--fine", action="store_true",
                    help="sample with a short GIL switch interval: less bias towards the "
                    "calls that release the GIL, more overhead")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the unprofiled boot that measures the overhead")
    args = ap.parse_args(argv)
    if args.png:
        import matplotlib  # noqa: F401  (fail before booting, not after)

    base_s = None
    if not args.no_baseline:
        guest = guest_config(args.arch, args.guest, args.smp, args.timeout, False)
        base_s, _, _ = boot_once(guest, None, args.interval)
    guest = guest_config(args.arch, args.guest, args.smp, args.timeout, True)
    profile = Profile()
    boot_s, result, _ = boot_once(guest, profile, args.interval, args.fine)
    data = report(args, guest, profile, result, boot_s, base_s)
    if args.png:
        plot(data, args.png)
        print(f"plot: {args.png}")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1, default=str))


if __name__ == "__main__":
    main()

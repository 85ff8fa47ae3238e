"""One VM for every architecture (axvm ``AxVM``).

A :class:`Vm` is built from a :class:`~pyaxvisor.vm.config.VmConfig` and the
:class:`~pyaxvisor.vm.board.Board` of its machine. It owns the host memory
(``HostHal``), the guest address space (``AddrSpace`` with the architecture's
nested page table, the configured RAM mapped), the devices
(:class:`~pyaxvisor.vm.devices.VmDevices`), a timer thread for boards that need
one, the vCPUs and their host threads, and the exit statistics (``metrics``, a
:class:`~pyaxvisor.vm.metrics.VmMetrics` when the configuration asks for them; an
:class:`~pyaxvisor.vm.exit_trace.ExitTrace` set as ``exit_trace`` before :meth:`run`
traces exits). The board builds
the machine on top (:meth:`Board.create`) and loads the guest (:meth:`Vm.load`).

Threads: one host thread per vCPU, each with its own per-CPU virtualization
state (``PerCpu``). A board with ``starts_all_cpus`` gets every vCPU created,
set up and bound before any runs (a barrier), because a start signal sent to a
vCPU that does not exist yet would be lost (x86 INIT/SIPI); otherwise only vCPU
0 starts and a ``CpuUp`` exit starts the others (PSCI CPU_ON). The run loop of
each vCPU dispatches exits by their type through a table:

* ``MmioRead``/``MmioWrite``, ``IoRead``/``IoWrite``, ``SysRegRead``/``SysRegWrite``
  → the VM's devices (an MMIO access where no device lives → the board);
* ``NestedPageFault`` → an error naming the address (no RAM and no device there);
* ``Halt`` → the vCPU blocks until an interrupt is pending for it or the VM ends;
* ``CpuUp`` → start the target vCPU, the board maps the outcome to a return code;
  ``CpuDown`` → the vCPU waits until a ``CpuUp`` names it again;
* ``SystemDown`` → the VM ends (power-off or reset); ``ExternalInterrupt`` → the
  HAL's IRQ handler; ``Nothing`` → run again; ``FailEntry`` → an error;
* ``Hypercall`` → the board, else :class:`UnknownHypercall`;
* ``DebugStop`` → the attached debugger (``Vm.debugger``, :mod:`pyaxvisor.vm.debug`),
  which halts every vCPU (all-stop) until gdb resumes them;
* anything else → the board, else ``Unsupported``.

Pausing (:meth:`Vm.pause`, :meth:`Vm.resume`; :mod:`pyaxvisor.vm.pause`): every vCPU
is kicked out of its run and parks before it runs again; interrupts raised while it
is parked wait for its next entry. ``--timeout`` counts paused time: it is the
runner's guard against a run that never ends, and a VM left paused is one. What
happens to the VM as a whole (paused, resumed, ended) goes to the listeners of
:attr:`Vm.events` (:mod:`pyaxvisor.vm.events`).

Ending: a guest power-off or reset, a device (``finish``), the host
(:meth:`quit`, Ctrl-A X) or the timeout stop every vCPU: each is kicked out of
its run and its thread joined. An error a vCPU cannot get past (an exit nobody
serves, a device that fails) ends the VM with that error, which :meth:`run`
returns; the host process is never brought down by a guest.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from pyaxvisor.errors import AxError, BadState, InvalidInput
from pyaxvisor.hal.timer import TimerThread
from pyaxvisor.hal.vcpu_hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table
from pyaxvisor.vcpu import (
    PerCpu,
    VCpu,
    VCpuState,
)
from pyaxvisor.vm.board import Board, BootState
from pyaxvisor.vm.config import VmConfig
from pyaxvisor.vm.devices import VmDevices
from pyaxvisor.vm.events import VmEvents, shutdown_cause
from pyaxvisor.vm.exit_trace import ExitTrace
from pyaxvisor.vm.exits import ExitDispatch, UnknownHypercall
from pyaxvisor.vm.metrics import VmMetrics
from pyaxvisor.vm.pause import PauseGate
from pyaxvisor.vm.power import CpuPower, CpuStart
from pyaxvisor.vm.result import VmResult

__all__ = ["UnknownHypercall", "Vm"]

#: How long vCPU threads may take to start together (boards with ``starts_all_cpus``).
START_TIMEOUT = 30.0
#: How long :meth:`Vm.pause` waits for every vCPU to stop.
PAUSE_TIMEOUT = 10.0

class Vm(ExitDispatch):
    def __init__(self, config: VmConfig, board: Board, *,
                 console_write: Callable[[bytes], None] | None = None) -> None:
        board.check()
        self.config = config
        self.board = board
        self.vm_id = config.id
        self.console_write = console_write or (lambda _b: None)
        self.devices = VmDevices()
        self.exits: Counter[str] = Counter()
        self.exit_time: dict[str, float] = defaultdict(float)
        self.in_cpu_accesses = [0, 0]
        self.guest_exceptions = 0
        #: Exit metrics (``config.stats``); ``snapshot()`` from any thread.
        self.metrics: VmMetrics | None = VmMetrics() if config.stats else None
        #: Exits to trace (set before run; started and closed by its owner).
        self.exit_trace: ExitTrace | None = None
        self.boot: BootState | None = None
        self.hal: HostHal | None = None
        self.space: AddrSpace | None = None
        self._timers: TimerThread | None = None
        self._vcpus: dict[int, VCpu[Any]] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._power = {cpu: CpuPower.OFF for cpu in range(config.cpu_num)}
        self._restart: dict[int, BootState] = {}
        self._lock = threading.RLock()
        self._done = threading.Event()
        self._result: VmResult | None = None
        self._closed = False
        self.events = VmEvents()
        self.pause_gate = PauseGate()
        #: The gdb stub's view of the VM (pyaxvisor.vm.debug), attached before run().
        self.debugger: Any = None
        try:
            self.hal = HostHal(board.host_memory())
            self.space = AddrSpace(self.hal, nested_page_table(self.hal, board.page_table,
                                                               **board.page_table_args))
            for region in config.ram_regions:
                self.space.map_ram(GuestPhysAddr(region.gpa), region.size, region.flags)
            board.create(self)
        except BaseException:
            self.close()
            raise

    def __getattr__(self, name: str) -> Any:
        # Board-specific parts (vm.gic, vm.kvm_vm, vm.uart...) are the board's.
        if name.startswith("_") or "board" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["board"], name)

    # -- guest memory and devices ------------------------------------------------------
    def write_guest(self, gpa: int, data: bytes) -> None:
        self._space.write(GuestPhysAddr(gpa), data)

    def read_guest(self, gpa: int, size: int) -> bytes:
        return self._space.read(GuestPhysAddr(gpa), size)

    @property
    def _space(self) -> AddrSpace:
        if self.space is None:
            raise InvalidInput("the VM is closed")
        return self.space

    @property
    def pio(self) -> Any:
        """The port-I/O bus (``vm.devices.ports``)."""
        return self.devices.ports

    @property
    def uart(self) -> Any:
        """The serial console device (takes host input with ``receive``)."""
        return self.board.console

    @property
    def timers(self) -> TimerThread:
        """The VM's timer thread, started on first use."""
        with self._lock:
            if self._timers is None:
                self._timers = TimerThread(name=f"vm{self.vm_id}-timers")
            return self._timers

    def vcpu(self, cpu: int) -> VCpu[Any] | None:
        """vCPU ``cpu`` once its thread created it (any thread)."""
        return self._vcpus.get(cpu)

    def vcpu_threads(self) -> dict[int, int]:
        """The host thread id (``native_id``) of each vCPU that has a thread."""
        with self._lock:
            return {cpu: t.native_id for cpu, t in sorted(self._threads.items())
                    if t.native_id is not None}

    @property
    def smp(self) -> int:
        return self.config.cpu_num

    @property
    def ram_size(self) -> int:
        return self.config.ram_size

    def finish(self, result: VmResult, cause: str | None = None) -> None:
        """End the VM with ``result`` (the first end counts; any thread); ``cause``: the
        ``SHUTDOWN`` event's reason when not the one ``result`` implies."""
        with self._lock:
            first = self._result is None
            if first:
                self._result = result
            self._done.set()
            self.pause_gate.wake_all()
            for v in self._vcpus.values():
                v.arch.kick()
                v.wake()
        if first:
            self.events.emit("SHUTDOWN", shutdown_cause(result, cause))

    def quit(self, cause: str = "host-ui") -> None:
        """Stop the VM from the host (the console's Ctrl-A X; QMP ``quit`` says
        ``cause="host-qmp-quit"``)."""
        self.finish(VmResult("quit"), cause)

    # -- pausing ----------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self.pause_gate.requested

    def pause(self, timeout: float = PAUSE_TIMEOUT) -> None:
        """Stop every vCPU (any host thread, not a vCPU's) and return once none runs
        guest code; nothing happens when already paused. Emits ``STOP``. Raises
        :class:`BadState` when the VM has ended, or when a vCPU did not stop within
        ``timeout`` seconds (the VM stays paused: :meth:`resume` undoes it)."""
        if self._done.is_set():
            raise BadState("the VM has ended: there is nothing to pause")
        if threading.current_thread() in self._threads.values():
            raise BadState("a vCPU thread cannot pause its own VM (it would wait for itself)")
        if not self.pause_gate.request():
            return
        with self._lock:
            for v in self._vcpus.values():
                v.arch.kick()
        busy = self.pause_gate.wait_quiet(self._vcpu_blocked, timeout)
        self.events.emit("STOP")
        if busy and not self._done.is_set():
            raise BadState(f"vCPU {', '.join(map(str, busy))} did not stop within "
                           f"{timeout:g} s (the VM stays paused)")

    def resume(self) -> None:
        """Let paused vCPUs run again (any thread); nothing happens when not paused.
        Emits ``RESUME``."""
        if self._done.is_set():
            raise BadState("the VM has ended: there is nothing to resume")
        if self.pause_gate.release():
            self.events.emit("RESUME")

    def _vcpu_blocked(self) -> list[tuple[int, bool]]:
        with self._lock:
            return [(cpu, v.state is VCpuState.Blocked or not self._threads[cpu].is_alive())
                    for cpu, v in self._vcpus.items()]

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # -- CPU power ----------------------------------------------------------------------
    def cpu_index(self, hw_id: int) -> int | None:
        """The vCPU whose hardware id is ``hw_id`` (masked with the board's
        ``cpu_id_mask``), or ``None``."""
        try:
            return self.config.cpu_ids.index(hw_id & self.board.cpu_id_mask)
        except ValueError:
            return None

    def cpu_power(self, cpu: int) -> CpuPower:
        with self._lock:
            return self._power[cpu]

    def start_cpu(self, hw_id: int, entry: int, arg: int) -> CpuStart:
        """Turn on the vCPU with hardware id ``hw_id`` at ``entry`` (``CpuUp``)."""
        cpu = self.cpu_index(hw_id)
        if cpu is None:
            return CpuStart.INVALID
        start = self.board.cpu_up_state(cpu, entry, arg)
        with self._lock:
            state = self._power[cpu]
            if state is CpuPower.PENDING:
                return CpuStart.PENDING
            if state is CpuPower.ON:
                return CpuStart.ALREADY_ON
            if cpu in self._threads:  # it turned itself off and waits in _cpu_down
                self._power[cpu] = CpuPower.ON
                self._restart[cpu] = start
                self._vcpus[cpu].wake()
                return CpuStart.STARTED
            self._spawn(cpu, start, None)
        return CpuStart.STARTED

    # -- running --------------------------------------------------------------------------
    def load(self) -> BootState:
        """Load the configured guest (the board's :meth:`~Board.load`)."""
        self.boot = self.board.load(self)
        return self.boot

    def run(self, entry: int | None = None, *, timeout: float | None = None,
            **start: Any) -> VmResult:
        """Start the VM and wait until it ends or ``timeout`` seconds pass.

        vCPU 0 starts as :meth:`load` said, or at ``entry`` with the board's start
        arguments ``start`` for a guest a script put in memory itself
        (:meth:`Board.boot_state`)."""
        if entry is not None:
            self.boot = self.board.boot_state(entry, **start)
        elif self.boot is None:
            self.load()
        assert self.boot is not None
        timeout = self.config.timeout if timeout is None else timeout
        if self.metrics is not None:
            self.metrics.start()
        self.board.start(self)
        with self._lock:
            if self.board.starts_all_cpus:
                barrier = threading.Barrier(self.smp)
                for cpu in range(self.smp):
                    self._spawn(cpu, self.boot if cpu == 0 else None, barrier)
            else:
                self._spawn(0, self.boot, None)
        states: dict[int, str] = {}
        if not self._done.wait(timeout):
            states = {cpu: v.state.name for cpu, v in sorted(self._vcpus.items())}
            self.finish(VmResult("timeout"))
        self._stop_all()
        assert self._result is not None
        result = self._result
        if result.reason == "timeout":
            result.state = self.describe(states)
        result.exits = self.exits
        result.exit_time = self.exit_time
        result.in_cpu_accesses = (self.in_cpu_accesses[0], self.in_cpu_accesses[1])
        result.guest_exceptions = self.guest_exceptions
        if self.metrics is not None:
            self.metrics.stop()
            result.metrics = self.metrics.snapshot()
        return result

    def describe(self, states: dict[int, str] | None = None) -> str:
        """A line per vCPU from its board: where it is and what it waits for."""
        states = states or {}
        return "\n".join(self.board.describe_vcpu(self, cpu, v, states.get(cpu, v.state.name))
                         for cpu, v in sorted(self._vcpus.items()))

    def close(self) -> None:
        """Stop everything and release the VM's host resources (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop_all()
        with self._lock:  # a late quit() or kick finds no closed vCPU
            vcpus = list(self._vcpus.values())
            self._vcpus.clear()
        for v in vcpus:
            v.arch.close()
        if self._timers is not None:
            self._timers.stop()
        self.board.close()
        if self.space is not None:
            self.space.destroy()
        if self.hal is not None:
            self.hal.close()
            self.hal = None

    def _stop_all(self) -> None:
        self._done.set()
        self.pause_gate.wake_all()
        me = threading.current_thread()
        for _ in range(50):
            with self._lock:
                for v in self._vcpus.values():
                    v.arch.kick()
                    v.wake()
                alive = [t for t in self._threads.values() if t is not me and t.is_alive()]
            if not alive:
                return
            alive[0].join(timeout=0.2)

    # -- vCPU threads ---------------------------------------------------------------------
    def _spawn(self, cpu: int, start: BootState | None, barrier: threading.Barrier | None
               ) -> None:
        t = threading.Thread(target=self._vcpu_thread, args=(cpu, start, barrier),
                             name=f"vm{self.vm_id}-vcpu{cpu}", daemon=True)
        self._threads[cpu] = t
        if self._power[cpu] is CpuPower.OFF:
            self._power[cpu] = CpuPower.PENDING
        t.start()

    def _vcpu_thread(self, cpu: int, start: BootState | None,
                     barrier: threading.Barrier | None) -> None:
        board = self.board
        percpu = PerCpu(board.percpu_class)
        vcpu: VCpu[Any] | None = None
        written: Callable[[list[tuple[int, int, int]]], None] | None = None
        try:
            percpu.init(cpu)
            percpu.hardware_enable()
            self._pin(cpu)
            start = start if start is not None else board.secondary_start(self, cpu)
            vcpu = VCpu(self.vm_id, cpu, board.vcpu_class,
                        board.vcpu_create_config(self, cpu, start))
            for index, value in start.gprs.items():
                vcpu.set_gpr(index, value)
            board.prepare_vcpu(self, cpu, vcpu, start)
            vcpu.setup(GuestPhysAddr(start.entry), self._space.root_paddr, start.setup)
            vcpu.bind()
            vcpu.arch.serve_in_cpu(board.in_cpu_windows(self), timing=self.config.stats)
            # what devices write to guest RAM reaches the vCPU (software CPUs drop code)
            written = vcpu.arch.guest_ram_written
            self._space.add_write_listener(written)
            with self._lock:
                self._vcpus[cpu] = vcpu
                self._power[cpu] = CpuPower.ON
            if self._done.is_set():
                return
            if barrier is not None:
                barrier.wait(timeout=START_TIMEOUT)
            self._loop(cpu, vcpu)
        except threading.BrokenBarrierError:
            self.finish(VmResult("error", AxError(f"vCPU {cpu}: another vCPU failed to start")))
        except AxError as exc:
            if barrier is not None:
                barrier.abort()
            self.finish(VmResult("error", exc))
        except Exception as exc:  # a bug in pyaxvisor: report it as the VM's end
            if barrier is not None:
                barrier.abort()
            self.finish(VmResult("error", AxError(f"vCPU {cpu}: internal error: {exc!r}")))
        finally:
            if written is not None:
                self._space.remove_write_listener(written)
            if vcpu is not None and vcpu.state is VCpuState.Ready:
                vcpu.unbind()
            percpu.close()

    def _pin(self, cpu: int) -> None:
        """Keep vCPU ``cpu``'s thread on the host CPUs its ``phys_cpu_sets`` mask names."""
        sets = self.config.cpu_sets
        if sets is None or not sets[cpu]:
            return
        wanted = {bit for bit in range(sets[cpu].bit_length()) if sets[cpu] >> bit & 1}
        usable = wanted & os.sched_getaffinity(0)
        if not usable:
            raise InvalidInput(f"{self.config.prefix('[base] phys_cpu_sets')}vCPU {cpu}'s mask "
                               f"{sets[cpu]:#x} names no host CPU this process may use "
                               f"({sorted(os.sched_getaffinity(0))})")
        os.sched_setaffinity(0, usable)

"""How a :class:`~pyaxvisor.vm.vm.Vm` serves the exits of its vCPUs (the run loop).

Each vCPU thread runs :meth:`ExitDispatch._loop`: ``run()`` the vCPU, look the
exit's type up in a table, call its handler, count it, until the VM is done. When
the configuration asks for statistics (``Vm.metrics``) or exits are traced
(``Vm.exit_trace``) the loop also times each exit and hands it to those
(:meth:`ExitDispatch._dispatch_observed`); otherwise it does no timing. Handlers raise the
error that ends the VM when an exit cannot be served; the vCPU thread turns it
into the VM's result. See :mod:`pyaxvisor.vm.vm` for what each exit does.

:class:`ExitDispatch` is the run-loop half of :class:`~pyaxvisor.vm.vm.Vm` and
uses the VM's state (its devices, board, locks and CPU power table); it is not
used on its own.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyaxvisor.devices.bus import UnhandledMmio
from pyaxvisor.errors import AxError, Unsupported
from pyaxvisor.vcpu import (
    CpuDown,
    CpuUp,
    DebugStop,
    ExitReason,
    ExternalInterrupt,
    FailEntry,
    Halt,
    Hypercall,
    IoRead,
    IoWrite,
    MmioRead,
    MmioWrite,
    NestedPageFault,
    Nothing,
    SysRegRead,
    SysRegWrite,
    SystemDown,
    VCpu,
    VCpuState,
)
from pyaxvisor.vm.metrics import device_of
from pyaxvisor.vm.power import CpuPower
from pyaxvisor.vm.result import VmResult

if TYPE_CHECKING:
    from pyaxvisor.hal.vcpu_hal import HostHal
    from pyaxvisor.vm.board import Board, BootState
    from pyaxvisor.vm.config import VmConfig
    from pyaxvisor.vm.debug import VmDebugger
    from pyaxvisor.vm.devices import VmDevices
    from pyaxvisor.vm.exit_trace import ExitTrace
    from pyaxvisor.vm.metrics import VcpuMetrics, VmMetrics
    from pyaxvisor.vm.pause import PauseGate
    from pyaxvisor.vm.power import CpuStart

__all__ = ["ExitDispatch", "UnknownHypercall"]

#: A handler serves one exit; a read's returns the value the guest got.
Handler = Callable[[int, VCpu[Any], Any], "int | None"]
#: Exits whose handler waits for the guest's next event rather than works.
_WAITS = frozenset({Halt, CpuDown})


class UnknownHypercall(Unsupported):
    """The guest made a hypercall nobody implements."""


class ExitDispatch:
    # The VM's state the handlers use (set by Vm.__init__).
    config: VmConfig
    board: Board
    devices: VmDevices
    hal: HostHal | None
    exits: Counter[str]
    exit_time: dict[str, float]
    in_cpu_accesses: list[int]
    guest_exceptions: int
    metrics: VmMetrics | None
    exit_trace: ExitTrace | None
    _lock: threading.RLock
    _done: threading.Event
    _power: dict[int, CpuPower]
    _restart: dict[int, BootState]
    pause_gate: PauseGate
    debugger: VmDebugger | None

    def finish(self, result: VmResult, cause: str | None = None) -> None: ...
    def start_cpu(self, hw_id: int, entry: int, arg: int) -> CpuStart: ...

    def _exit_table(self) -> dict[type, Handler]:
        return {
            IoWrite: self._io_write, IoRead: self._io_read, MmioRead: self._mmio_read,
            MmioWrite: self._mmio_write, SysRegRead: self._sysreg_read,
            SysRegWrite: self._sysreg_write, Nothing: self._nothing, Halt: self._halt,
            CpuUp: self._cpu_up, CpuDown: self._cpu_down, SystemDown: self._system_down,
            ExternalInterrupt: self._external_interrupt, Hypercall: self._hypercall,
            FailEntry: self._fail_entry, NestedPageFault: self._page_fault,
            DebugStop: self._debug_stop,
        }

    def _loop(self, cpu: int, vcpu: VCpu[Any]) -> None:
        mine = (self.metrics.vcpu(cpu, vcpu.arch.served_counts)
                if self.metrics is not None else None)
        try:
            if mine is None and self.exit_trace is None:
                self._dispatch(cpu, vcpu)
            else:
                self._dispatch_observed(cpu, vcpu, mine, self.exit_trace)
        finally:
            if mine is not None:
                mine.finish()
            served = vcpu.arch.served_counts()
            with self._lock:
                for name, count in served.exits.items():
                    self.exits[name] += count
                for name, seconds in served.exit_time.items():
                    self.exit_time[name] += seconds
                self.in_cpu_accesses[0] += served.accesses[0]
                self.in_cpu_accesses[1] += served.accesses[1]
                self.guest_exceptions += served.guest_exceptions

    def _dispatch(self, cpu: int, vcpu: VCpu[Any]) -> None:
        """Hand each exit ``run`` returns to its handler, counting them."""
        done = self._done
        exits = self.exits
        handlers = self._exit_table()
        other = self._other
        gate = self.pause_gate
        debug = self.debugger
        while not done.is_set():
            if (gate.requested or debug is not None) and self._held(cpu, vcpu):
                continue
            e = vcpu.run()
            cls = type(e)
            handlers.get(cls, other)(cpu, vcpu, e)
            exits[cls.__name__] += 1

    def _held(self, cpu: int, vcpu: VCpu[Any]) -> bool:
        """Before a run: park while the VM is paused or its debugger holds it. True when
        it parked (the run loop then looks at whether the VM ended before it runs)."""
        if self.pause_gate.requested:
            self.pause_gate.park(cpu)
            return True
        if self.debugger is not None:
            self.debugger.checkpoint(cpu, vcpu)  # parks while the debugger holds the VM
            return self._done.is_set()
        return False

    def _dispatch_observed(self, cpu: int, vcpu: VCpu[Any], mine: VcpuMetrics | None,
                           trace: ExitTrace | None) -> None:
        """:meth:`_dispatch`, timing each exit for the metrics ``mine`` and handing the
        kinds ``trace`` asks for to it (with the PC, the device, the value)."""
        done = self._done
        exits = self.exits
        exit_time = self.exit_time
        handlers = self._exit_table()
        other = self._other
        perf = time.perf_counter
        mmio, ports = self.devices.mmio, self.devices.ports
        traced = trace.kinds if trace is not None else frozenset()
        arch = vcpu.arch
        gate = self.pause_gate
        debug = self.debugger
        while not done.is_set():
            if (gate.requested or debug is not None) and self._held(cpu, vcpu):
                continue
            entered = perf()
            e = vcpu.run()
            left = perf()
            cls = type(e)
            pc = arch.exit_pc() if cls in traced else None
            value = handlers.get(cls, other)(cpu, vcpu, e)
            handled = perf()
            name = cls.__name__
            exits[name] += 1
            exit_time[name] += handled - left
            device = device_of(mmio, ports, e)
            if mine is not None:
                mine.exit(name, device, entered, left, handled, cls in _WAITS)
            if cls in traced:
                trace.record(cpu, pc, e, device, value)  # type: ignore[union-attr]

    def _handle(self, cpu: int, vcpu: VCpu[Any], e: ExitReason) -> None:
        """Serve one exit as the run loop would."""
        self._exit_table().get(type(e), self._other)(cpu, vcpu, e)

    # -- exit handlers -------------------------------------------------------------------------
    def _io_write(self, cpu: int, vcpu: VCpu[Any], e: IoWrite) -> None:
        self.devices.ports.write(e.port, e.width, e.data, cpu)

    def _io_read(self, cpu: int, vcpu: VCpu[Any], e: IoRead) -> int:
        value = self.devices.ports.read(e.port, e.width, cpu)
        vcpu.complete_read(value)
        return value

    def _mmio_read(self, cpu: int, vcpu: VCpu[Any], e: MmioRead) -> int:
        try:
            value = self.devices.mmio.read(int(e.addr), e.width, cpu)
        except UnhandledMmio as miss:
            value = self.board.on_unclaimed_mmio(self, cpu, vcpu, e, miss)
        vcpu.complete_read(value)
        return value

    def _mmio_write(self, cpu: int, vcpu: VCpu[Any], e: MmioWrite) -> None:
        try:
            self.devices.mmio.write(int(e.addr), e.width, e.data, cpu)
        except UnhandledMmio as miss:
            self.board.on_unclaimed_mmio(self, cpu, vcpu, e, miss)

    def _sysreg_read(self, cpu: int, vcpu: VCpu[Any], e: SysRegRead) -> int | None:
        value = self.devices.read_sysreg(e.addr, cpu)
        if value is None:
            self._other(cpu, vcpu, e)
        else:
            vcpu.complete_read(value)
        return value

    def _sysreg_write(self, cpu: int, vcpu: VCpu[Any], e: SysRegWrite) -> None:
        if not self.devices.write_sysreg(e.addr, e.value, cpu):
            self._other(cpu, vcpu, e)

    def _nothing(self, cpu: int, vcpu: VCpu[Any], e: Nothing) -> None:
        return

    def _halt(self, cpu: int, vcpu: VCpu[Any], e: Halt) -> None:
        """Wait until an interrupt is pending for the vCPU (whoever raises one wakes it)
        or the VM ends."""
        arch = vcpu.arch
        if arch.interrupt_pending():
            return
        vcpu.block()
        if arch.interrupt_pending():  # raised between the check and block()
            vcpu.wake()
        while not (vcpu.wait_while_blocked(0.5) or self._done.is_set()):
            pass
        if vcpu.state is VCpuState.Blocked:
            vcpu.wake()

    def _cpu_up(self, cpu: int, vcpu: VCpu[Any], e: CpuUp) -> None:
        outcome = self.start_cpu(e.target_cpu, int(e.entry_point), e.arg)
        vcpu.set_return_value(self.board.cpu_up_status(outcome))

    def _cpu_down(self, cpu: int, vcpu: VCpu[Any], e: CpuDown) -> None:
        """The vCPU turned itself off: wait until a CpuUp names it again."""
        with self._lock:
            self._power[cpu] = CpuPower.OFF
        vcpu.block()
        while not self._done.is_set():
            with self._lock:
                if cpu in self._restart:
                    break
            vcpu.wait_while_blocked(0.5)
        if vcpu.state is VCpuState.Blocked:
            vcpu.wake()
        with self._lock:
            start = self._restart.pop(cpu, None)
        if start is not None:
            self.board.restart_vcpu(self, cpu, vcpu, start)

    def _system_down(self, cpu: int, vcpu: VCpu[Any], e: SystemDown) -> None:
        self.finish(VmResult("reset" if e.reset else "poweroff"))

    def _external_interrupt(self, cpu: int, vcpu: VCpu[Any], e: ExternalInterrupt) -> None:
        assert self.hal is not None
        self.hal.irq_handler()

    def _hypercall(self, cpu: int, vcpu: VCpu[Any], e: Hypercall) -> None:
        if not self.board.on_hypercall(self, cpu, vcpu, e):
            raise UnknownHypercall(f"vCPU {cpu}: unknown hypercall {e.nr:#x} with arguments "
                                   f"{', '.join(hex(a) for a in e.args)}")

    def _fail_entry(self, cpu: int, vcpu: VCpu[Any], e: FailEntry) -> None:
        raise AxError(f"vCPU {cpu}: VM entry failed, hardware reason "
                      f"{e.hardware_entry_failure_reason:#x}")

    def _page_fault(self, cpu: int, vcpu: VCpu[Any], e: NestedPageFault) -> None:
        addr = int(e.addr)
        hit = self.devices.mmio.find(addr)
        where = (f"in {hit[0].name}'s window, which cannot be emulated without the access"
                 if hit is not None else "no RAM and no device there")
        raise Unsupported(f"vCPU {cpu}: nested page fault at {addr:#x} "
                          f"({e.access_flags!r}): {where}")

    def _debug_stop(self, cpu: int, vcpu: VCpu[Any], e: DebugStop) -> None:
        if self.debugger is None:
            raise Unsupported(f"vCPU {cpu}: a debug stop ({e.kind} at {e.addr:#x}) with no "
                              "debugger attached")
        self.debugger.stopped(cpu, vcpu, e)

    def _other(self, cpu: int, vcpu: VCpu[Any], e: ExitReason) -> None:
        if not self.board.on_exit(self, cpu, vcpu, e):
            raise Unsupported(f"vCPU {cpu}: the VM cannot handle the exit {e!r}")

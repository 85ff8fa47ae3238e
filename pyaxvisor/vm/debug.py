"""A VM as the gdb stub's :class:`~pyaxvisor.gdb.target.DebugTarget` (all-stop).

:class:`VmDebugger` is attached to a :class:`~pyaxvisor.vm.vm.Vm` before it runs
(``Vm.debugger``); the VM's run loop calls :meth:`VmDebugger.checkpoint` before each
``run()`` of a vCPU and hands it every ``DebugStop`` exit (:meth:`VmDebugger.stopped`).

All-stop: a stop (a vCPU's debug exit, Ctrl-C, a client attaching, ``-S``) halts the
VM: every vCPU that is on is kicked out of its run (a halted one woken) and parks in
:meth:`checkpoint` until :meth:`resume`. A step resumes only the stepped vCPU; the
others stay parked. While parked a vCPU serves the debugger's requests on its own
thread (its engine is driven by that thread only): registers, translations, the
guest-debug configuration. Memory is the VM's (guest-physical, through its address
space); a write drops the software CPUs' translated code of what it changed.

Software breakpoints: the architecture's breakpoint instruction is written into guest
memory at the breakpoint's guest-physical address (translated when it is inserted),
the bytes it replaced are kept and shown to memory reads, and restored on removal.

Threads: the stub's thread calls the ``DebugTarget`` methods; vCPU threads call
:meth:`checkpoint` and :meth:`stopped`. One condition variable guards the state.
A request to a parked vCPU that does not answer within :data:`REQUEST_TIMEOUT` raises
:class:`~pyaxvisor.errors.BadState`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyaxvisor.errors import AxError, BadState, InvalidInput, Unsupported
from pyaxvisor.gdb.target import BreakKind, StopEvent, StopKind
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.vcpu import DebugStop, VCpu, VCpuState
from pyaxvisor.vcpu.debug import GdbLayout, GuestDebug, Watchpoint
from pyaxvisor.vm.power import CpuPower
from pyaxvisor.vm.result import VmResult

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

#: How long a parked vCPU may take to answer a request, and the VM to halt.
REQUEST_TIMEOUT = 10.0
HALT_TIMEOUT = 10.0
PAGE = 4096

_STOP_KINDS = {"step": StopKind.STEP, "breakpoint": StopKind.BREAKPOINT,
               "write": StopKind.WATCH_WRITE, "read": StopKind.WATCH_READ,
               "access": StopKind.WATCH_ACCESS}
_WATCH_KINDS = {BreakKind.WATCH_WRITE: "write", BreakKind.WATCH_READ: "read",
                BreakKind.WATCH_ACCESS: "access"}


class _Request:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class VmDebugger:
    """See the module doc. ``wait``: halt before the first instruction (``-S``)."""

    def __init__(self, vm: Vm, *, wait: bool = False) -> None:
        layout = vm.board.vcpu_class.gdb
        if layout is None:
            raise Unsupported(f"the gdb stub does not support {vm.board.vcpu_class.__name__} "
                              "yet")
        self.vm = vm
        self.layout: GdbLayout = layout
        self.target_xml = layout.xml
        self.register_sizes = layout.sizes
        self.pc_register = layout.pc
        self.hw_breakpoints = layout.hw_breakpoints
        self.watchpoints = layout.watchpoints
        self._cond = threading.Condition()
        self._halted = wait
        self._stop: StopEvent | None = StopEvent(0, StopKind.INTERRUPT) if wait else None
        self._reported = False
        self._step_cpu: int | None = None
        self._parked: dict[int, VCpu[Any]] = {}
        self._requests: dict[int, list[_Request]] = {}
        self._sw: dict[int, tuple[int, bytes, bytes]] = {}   # va -> (gpa, original, insn)
        self._hw: list[int] = []
        self._watch: list[Watchpoint] = []
        self._generation = 0
        self._applied: dict[int, tuple[int, GuestDebug]] = {}

    # -- the vCPU threads' side -----------------------------------------------------------
    def checkpoint(self, cpu: int, vcpu: VCpu[Any]) -> None:
        """Before each run of ``vcpu``: park while the VM is halted, then make sure the
        vCPU has the current guest-debug configuration."""
        if self._halted or (self._step_cpu is not None and self._step_cpu != cpu):
            self._park(cpu, vcpu)
        applied = self._applied.get(cpu)
        step = self._step_cpu == cpu
        # a step is armed anew each time (the CPU disarms it when it has stepped)
        if step or applied is None or applied[0] != self._generation \
                or applied[1].step != step:
            config = self._config(step)
            if applied is not None or config.active:
                vcpu.arch.set_guest_debug(config)
            self._applied[cpu] = (self._generation, config)

    def _config(self, step: bool) -> GuestDebug:
        return GuestDebug(step=step, sw_breakpoints=frozenset(self._sw),
                          hw_breakpoints=tuple(self._hw), watchpoints=tuple(self._watch))

    def _park(self, cpu: int, vcpu: VCpu[Any]) -> None:
        vm = self.vm
        with self._cond:
            self._parked[cpu] = vcpu
            self._cond.notify_all()
            try:
                while (self._halted or (self._step_cpu is not None and self._step_cpu != cpu)) \
                        and not vm.done:
                    queue = self._requests.get(cpu)
                    if queue:
                        req = queue.pop(0)
                        self._cond.release()
                        try:
                            req.result = req.fn()
                        except BaseException as exc:  # handed to the requester
                            req.error = exc
                        finally:
                            self._cond.acquire()
                        req.done = True
                        self._cond.notify_all()
                        continue
                    self._cond.wait(0.2)
            finally:
                self._parked.pop(cpu, None)
                for req in self._requests.pop(cpu, []):
                    req.error = BadState(f"vCPU {cpu} left the debugger")
                    req.done = True
                self._cond.notify_all()

    def stopped(self, cpu: int, vcpu: VCpu[Any], e: DebugStop) -> None:
        """``vcpu`` stopped for the debugger: halt the VM (the first stop is the one
        reported; the vCPU parks at its next checkpoint)."""
        with self._cond:
            if self._stop is None:
                self._stop = StopEvent(cpu, _STOP_KINDS[e.kind], e.addr)
                self._reported = False
            self._halt_locked()

    def _halt_locked(self) -> None:
        self._halted = True
        self._step_cpu = None
        self._cond.notify_all()
        for cpu in range(self.vm.smp):
            v = self.vm.vcpu(cpu)
            if v is None or cpu in self._parked:
                continue
            v.arch.kick()
            if v.state is VCpuState.Blocked and self.vm.cpu_power(cpu) is CpuPower.ON:
                v.wake()

    # -- DebugTarget --------------------------------------------------------------------------
    def _live(self) -> list[int]:
        return [c for c in range(self.vm.smp) if self.vm.cpu_power(c) is not CpuPower.OFF]

    def _wait_parked(self) -> None:
        """Wait (lock held) until every vCPU that is on is parked."""
        deadline = time.monotonic() + HALT_TIMEOUT
        while not self.vm.done:
            # at least one: before the VM starts no CPU is on yet (-S)
            if self._parked and all(c in self._parked for c in self._live()):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise BadState("the VM's vCPUs did not stop within "
                               f"{HALT_TIMEOUT:.0f} s for the debugger")
            self._cond.wait(min(left, 0.2))

    def _exited(self) -> StopEvent:
        return StopEvent(0, StopKind.EXITED)

    def cpus(self) -> list[int]:
        with self._cond:
            return sorted(self._parked)

    def halt(self) -> StopEvent:
        with self._cond:
            if self.vm.done:
                return self._exited()
            if not self._halted:
                live = self._live()
                self._stop = StopEvent(live[0] if live else 0, StopKind.INTERRUPT)
                self._halt_locked()
            self._wait_parked()
            if self.vm.done:
                return self._exited()
            assert self._stop is not None
            self._reported = True
            stop = self._stop
            if stop.cpu not in self._parked and self._parked:
                stop = StopEvent(min(self._parked), stop.kind, stop.addr)
            return stop

    def wait_stop(self, timeout: float) -> StopEvent | None:
        with self._cond:
            if not self._cond.wait_for(
                    lambda: self.vm.done or (self._halted and not self._reported), timeout):
                return None
            if self.vm.done:
                self._reported = True
                return self._exited()
            self._wait_parked()
            if self.vm.done:
                return self._exited()
            self._reported = True
            return self._stop

    def resume(self, step_cpu: int | None) -> None:
        with self._cond:
            if step_cpu is not None and step_cpu not in self._parked:
                raise InvalidInput(f"CPU {step_cpu} is not stopped: it cannot be stepped")
            self._stop = None
            self._reported = False
            self._step_cpu = step_cpu
            self._halted = False
            self._cond.notify_all()

    def _call(self, cpu: int, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(arch_vcpu)`` on parked vCPU ``cpu``'s thread."""
        with self._cond:
            vcpu = self._parked.get(cpu)
            if vcpu is None:
                raise InvalidInput(f"CPU {cpu} is not stopped")
            req = _Request(lambda: fn(vcpu.arch))
            self._requests.setdefault(cpu, []).append(req)
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: req.done, REQUEST_TIMEOUT):
                raise BadState(f"vCPU {cpu} did not answer the debugger")
        if req.error is not None:
            if isinstance(req.error, AxError):
                raise req.error
            raise BadState(f"vCPU {cpu}: {req.error!r}") from req.error
        return req.result

    def read_registers(self, cpu: int) -> list[int]:
        return list(self._call(cpu, lambda a: a.debug_registers()))

    def write_register(self, cpu: int, number: int, value: int) -> None:
        if not 0 <= number < len(self.register_sizes):
            raise InvalidInput(f"register {number} does not exist")
        self._call(cpu, lambda a: a.debug_set_register(number, value))

    def _translate(self, cpu: int, va: int) -> int:
        space = self.vm.space
        if space is None:
            raise BadState("the VM is closed")

        def read_u64(gpa: int) -> int:
            return int.from_bytes(space.read(GuestPhysAddr(gpa), 8), "little")

        return int(self._call(cpu, lambda a: a.debug_translate(va, read_u64)))

    def _pieces(self, cpu: int, addr: int, length: int, physical: bool
                ) -> list[tuple[int, int]]:
        """(gpa, length) of each page-bounded piece of ``[addr, addr + length)``."""
        if addr + length > 1 << 64:
            raise InvalidInput(f"{addr:#x}+{length:#x} passes the end of the address space")
        pieces = []
        pos, end = addr, addr + length
        while pos < end:
            n = min(end - pos, PAGE - (pos & (PAGE - 1)))
            pieces.append((pos if physical else self._translate(cpu, pos), n))
            pos += n
        return pieces

    def read_memory(self, cpu: int, addr: int, length: int, physical: bool) -> bytes:
        out = bytearray()
        for gpa, n in self._pieces(cpu, addr, length, physical):
            out += self.vm.read_guest(gpa, n)
        self._unpatch(addr, out, physical)
        return bytes(out)

    def _unpatch(self, addr: int, out: bytearray, physical: bool) -> None:
        """Show the bytes a software breakpoint replaced instead of its instruction."""
        if not self._sw:
            return
        for va, (gpa, original, _insn) in self._sw.items():
            start = gpa if physical else va
            for i, b in enumerate(original):
                off = start + i - addr
                if 0 <= off < len(out):
                    out[off] = b

    def write_memory(self, cpu: int, addr: int, data: bytes, physical: bool) -> None:
        pieces = self._pieces(cpu, addr, len(data), physical)
        pos = 0
        for gpa, n in pieces:
            chunk = bytearray(data[pos:pos + n])
            for va, (bgpa, original, insn) in list(self._sw.items()):
                lo, hi = max(gpa, bgpa), min(gpa + n, bgpa + len(insn))
                if lo < hi:  # keep the breakpoint; what it replaced is what was written
                    kept = bytearray(original)
                    kept[lo - bgpa:hi - bgpa] = chunk[lo - gpa:hi - gpa]
                    chunk[lo - gpa:hi - gpa] = insn[lo - bgpa:hi - bgpa]
                    self._sw[va] = (bgpa, bytes(kept), insn)
            self.vm.write_guest(gpa, bytes(chunk))
            pos += n

    def insert_breakpoint(self, cpu: int, kind: BreakKind, addr: int, length: int) -> bool:
        with self._cond:
            self._generation += 1
        if kind is BreakKind.SOFTWARE:
            if not self.layout.sw_breakpoints:
                raise Unsupported("this architecture offers no software breakpoints here: "
                                  "use hardware ones (hbreak)")
            insn = self.layout.sw_breakpoints.get(length)
            if insn is None:
                raise InvalidInput(f"no breakpoint instruction of {length} bytes here")
            if addr in self._sw:
                return True
            gpa = self._translate(cpu, addr)
            original = self.vm.read_guest(gpa, len(insn))
            self.vm.write_guest(gpa, insn)
            self._sw[addr] = (gpa, original, insn)
            return True
        if kind is BreakKind.HARDWARE:
            if len(self._hw) >= self.hw_breakpoints:
                return False
            if addr not in self._hw:
                self._hw.append(addr)
            return True
        if len(self._watch) >= self.watchpoints:
            return False
        if not 0 < length <= 8:
            raise InvalidInput(f"a watchpoint covers 1 to 8 bytes, not {length}")
        point = Watchpoint(addr, length, _WATCH_KINDS[kind])  # type: ignore[arg-type]
        if point not in self._watch:
            self._watch.append(point)
            try:  # on the selected CPU now: an address it cannot watch is refused here
                config = self._config(False)
                self._call(cpu, lambda a: a.set_guest_debug(config))
            except AxError:
                self._watch.remove(point)
                raise
        return True

    def remove_breakpoint(self, cpu: int, kind: BreakKind, addr: int, length: int) -> bool:
        with self._cond:
            self._generation += 1
        if kind is BreakKind.SOFTWARE:
            entry = self._sw.pop(addr, None)
            if entry is not None:
                gpa, original, _insn = entry
                self.vm.write_guest(gpa, original)
            return True
        if kind is BreakKind.HARDWARE:
            if addr in self._hw:
                self._hw.remove(addr)
            return self.hw_breakpoints > 0
        point = Watchpoint(addr, length, _WATCH_KINDS[kind])  # type: ignore[arg-type]
        if point in self._watch:
            self._watch.remove(point)
        return self.watchpoints > 0

    def detach(self) -> None:
        errors = []
        for va in list(self._sw):
            try:
                self.remove_breakpoint(0, BreakKind.SOFTWARE, va, 0)
            except AxError as exc:
                errors.append(exc)
        with self._cond:
            self._hw.clear()
            self._watch.clear()
            self._generation += 1
        self.resume(None)
        if errors:
            raise errors[0]

    def kill(self) -> None:
        self.vm.finish(VmResult("quit"))
        self.resume(None)


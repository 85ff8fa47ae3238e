"""The architecture-independent vCPU (axvcpu ``AxVCpu``) and its state machine.

:class:`VCpu` wraps an :class:`~pyaxvisor.vcpu.arch_vcpu.ArchVCpu` and enforces
the call order of the interface (see :mod:`pyaxvisor.vcpu.state` for the state
diagram):

* ``VCpu(...)`` calls ``ArchVCpu.new`` → **Created**.
* ``setup(entry, ept_root, config)`` calls ``set_entry``, ``set_ept_root`` and
  ``setup`` in that order → **Free**.
* ``bind()`` **Free → Ready** on the calling host thread (one bound vCPU per
  thread); ``unbind()`` **Ready → Free**, from the same thread.
* ``run()`` **Ready → Running → Ready**, from the bound thread; a read exit must
  be finished with ``complete_read(value)`` before the next ``run()``.
* ``block()`` **Ready → Blocked** (halted, powered off by PSCI/HSM);
  ``wake()`` **Blocked → Ready** from any thread; ``inject_interrupt`` wakes a
  blocked vCPU.

Errors: a call in the wrong state raises
:class:`~pyaxvisor.vcpu.state.VCpuStateError` naming the current and expected
states and changes nothing. An architecture operation that fails moves the vCPU
to **Invalid** and re-raises (an :class:`~pyaxvisor.errors.AxError` as it is,
anything else wrapped in :class:`~pyaxvisor.vcpu.state.ArchOperationFailed`).
The exception are the register and interrupt calls (``set_gpr``,
``set_return_value``, ``complete_read``, ``inject_interrupt``): an
:class:`~pyaxvisor.errors.InvalidInput` from them means the architecture
rejected an argument without doing anything, so it propagates and the state stays.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from pyaxvisor.errors import AxError, BadState, InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr, HostPhysAddr
from pyaxvisor.vcpu import current
from pyaxvisor.vcpu.arch_vcpu import ArchVCpu
from pyaxvisor.vcpu.exit import READ_EXITS, ExitReason, ReadExit
from pyaxvisor.vcpu.state import (
    ArchOperationFailed,
    NestedVCpuOperation,
    PendingRead,
    VCpuState,
    VCpuStateError,
    WrongHostCpu,
)

A = TypeVar("A", bound=ArchVCpu)
T = TypeVar("T")

S = VCpuState
_READY = S.Ready  # plain globals: cheaper than enum attribute lookups on the hot path
_RUNNING = S.Running


class VCpu(Generic[A]):
    def __init__(self, vm_id: int, vcpu_id: int, arch_cls: type[A], create_config: Any, *,
                 favor_phys_cpu: int = 0, phys_cpu_set: Iterable[int] | None = None) -> None:
        self.vm_id = vm_id
        self.vcpu_id = vcpu_id
        self.favor_phys_cpu = favor_phys_cpu
        self.phys_cpu_set = frozenset(phys_cpu_set) if phys_cpu_set is not None else None
        self._mutex = threading.Lock()  # the lock of _cond, taken directly on hot paths
        self._cond = threading.Condition(self._mutex)
        self._state = S.Invalid
        self._busy = False
        self._bound_thread: int | None = None
        self._pending_read: ReadExit | None = None
        self.last_exit: ExitReason | None = None
        _check_config(arch_cls, "CreateConfig", create_config)
        self._check_not_nested()
        with current.current_vcpu_set(self):
            try:
                self._arch: A = arch_cls.new(vm_id, vcpu_id, create_config)
            except AxError:
                raise
            except Exception as exc:
                raise ArchOperationFailed(
                    f"vCPU {vcpu_id}: {arch_cls.__name__}.new failed: {exc}") from exc
        self._state = S.Created

    # -- inspection -----------------------------------------------------------------
    @property
    def state(self) -> VCpuState:
        return self._state

    @property
    def arch(self) -> A:
        """The architecture vCPU, for architecture-specific inspection."""
        return self._arch

    @property
    def pending_read(self) -> ReadExit | None:
        return self._pending_read

    def __repr__(self) -> str:
        return f"VCpu(vm={self.vm_id}, id={self.vcpu_id}, {self._state.name})"

    # -- lifecycle --------------------------------------------------------------------
    def setup(self, entry: GuestPhysAddr, ept_root: HostPhysAddr, config: Any) -> None:
        if not isinstance(entry, GuestPhysAddr):
            raise InvalidInput(f"entry must be a GuestPhysAddr, got {entry!r}")
        if not isinstance(ept_root, HostPhysAddr):
            raise InvalidInput(f"ept_root must be a HostPhysAddr, got {ept_root!r}")
        _check_config(type(self._arch), "SetupConfig", config)

        def do() -> None:
            self._arch.set_entry(entry)
            self._arch.set_ept_root(ept_root)
            self._arch.setup(config)

        self._operate("setup", (S.Created,), S.Free, do)

    def bind(self) -> None:
        bound = current.get_bound_vcpu()
        if bound is not None and bound is not self and bound.state is not S.Invalid:
            raise WrongHostCpu(
                f"vCPU {self.vcpu_id}: this host CPU already has vCPU {bound.vcpu_id} of VM "
                f"{bound.vm_id} bound; unbind it first")
        self._operate("bind", (S.Free,), S.Ready, self._arch.bind)
        self._bound_thread = threading.get_ident()
        current._set_bound(self)

    def unbind(self) -> None:
        self._check_bound_thread("unbind")
        self._operate("unbind", (S.Ready,), S.Free, self._arch.unbind)
        self._bound_thread = None
        current._set_bound(None)

    def run(self) -> ExitReason:
        """Ready → Running → Ready around ``ArchVCpu.run`` (the hot path: the checks and
        transitions of :meth:`_operate`, written out)."""
        bound = self._bound_thread
        if bound is not None and bound != threading.get_ident():
            self._check_bound_thread("run")
        if self._pending_read is not None:
            raise PendingRead(
                f"vCPU {self.vcpu_id}: the read exit {self._pending_read!r} was not completed; "
                "call complete_read(value) before run()")
        percpu = current._percpu
        if percpu.current is not None:
            self._check_not_nested()
        mutex = self._mutex
        with mutex:
            if self._state is not _READY:
                raise VCpuStateError(self.vcpu_id, "run", self._state, (S.Ready,))
            if self._busy:
                raise BadState(f"vCPU {self.vcpu_id}: run() while another operation on it "
                               "is in progress on another thread")
            self._busy = True
            self._state = _RUNNING
        percpu.current = self
        try:
            exit_reason = self._arch.run()
        except Exception as exc:
            with mutex:
                self._busy = False
            self._fail("run", exc)
            raise AssertionError("unreachable") from exc  # _fail always raises
        finally:
            percpu.current = None
        with mutex:
            self._busy = False
            self._state = _READY  # nothing waits for Running → Ready: no notify
        if not isinstance(exit_reason, ExitReason):
            with mutex:
                self._state = S.Invalid
            raise ArchOperationFailed(
                f"vCPU {self.vcpu_id}: run() returned {exit_reason!r}, not an ExitReason")
        self.last_exit = exit_reason
        if isinstance(exit_reason, READ_EXITS):
            self._pending_read = exit_reason
        return exit_reason

    def complete_read(self, value: int) -> None:
        """Hand the guest the result of the pending MmioRead/IoRead/SysRegRead."""
        pending = self._pending_read
        if pending is None:
            raise BadState(f"vCPU {self.vcpu_id}: complete_read() without a pending read exit")
        self._operate("complete_read", (S.Ready,), S.Ready,
                      lambda: self._arch.complete_read(pending, value), argument_check=True)
        self._pending_read = None

    # -- waiting ----------------------------------------------------------------------
    def block(self) -> None:
        """Ready → Blocked: the vCPU waits for an interrupt or a CpuUp."""
        with self._cond:
            self._require("block", (S.Ready,))
            self._state = S.Blocked

    def wake(self) -> bool:
        """Blocked → Ready from any thread; ``False`` if the vCPU was not blocked."""
        with self._cond:
            if self._state is not S.Blocked:
                return False
            self._state = S.Ready
            self._cond.notify_all()
            return True

    def wait_while_blocked(self, timeout: float | None = None) -> bool:
        """Sleep until the vCPU is no longer Blocked; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._state is not S.Blocked, timeout)

    # -- registers and interrupts -----------------------------------------------------
    def set_gpr(self, index: int, value: int) -> None:
        self._operate("set_gpr", (S.Created, S.Free, S.Ready, S.Blocked), None,
                      lambda: self._arch.set_gpr(index, value), argument_check=True)

    def set_return_value(self, value: int) -> None:
        self._operate("set_return_value", (S.Created, S.Free, S.Ready, S.Blocked), None,
                      lambda: self._arch.set_return_value(value), argument_check=True)

    def inject_interrupt(self, vector: int) -> None:
        """Queue ``vector`` for the guest (any thread); wakes the vCPU if Blocked."""
        with self._cond:
            self._require("inject_interrupt", (S.Free, S.Ready, S.Running, S.Blocked))
        try:
            self._arch.inject_interrupt(vector)
        except InvalidInput:
            raise
        except Exception as exc:
            self._fail("inject_interrupt", exc)
        self.wake()

    # -- machinery ----------------------------------------------------------------------
    def _require(self, op: str, allowed: tuple[VCpuState, ...]) -> None:
        if self._state not in allowed:
            raise VCpuStateError(self.vcpu_id, op, self._state, allowed)

    def _check_not_nested(self) -> None:
        running = current.get_current_vcpu()
        if running is not None:
            raise NestedVCpuOperation(
                f"vCPU {self.vcpu_id} of VM {self.vm_id}: an operation of vCPU "
                f"{running.vcpu_id} of VM {running.vm_id} is running on this host CPU; "
                "nested vCPU operations are not allowed")

    def _check_bound_thread(self, op: str) -> None:
        if self._bound_thread is not None and self._bound_thread != threading.get_ident():
            raise WrongHostCpu(
                f"vCPU {self.vcpu_id}: {op}() from a host thread other than the one it is "
                "bound to")

    def _fail(self, op: str, exc: Exception) -> None:
        with self._cond:
            self._state = S.Invalid
            self._cond.notify_all()
        if current.get_bound_vcpu() is self:
            # A dead context no longer occupies this host CPU.
            current._set_bound(None)
            self._bound_thread = None
        if isinstance(exc, AxError):
            raise exc
        raise ArchOperationFailed(
            f"vCPU {self.vcpu_id}: {type(self._arch).__name__}.{op} failed: {exc!r}") from exc

    def _operate(self, op: str, allowed: tuple[VCpuState, ...], to: VCpuState | None,
                 action: Callable[[], T], during: VCpuState | None = None,
                 argument_check: bool = False) -> T:
        """Run one architecture operation with the state checks and transitions.

        ``argument_check``: the operation only validates and stores an argument, so an
        InvalidInput from it leaves the state as it was instead of invalidating.
        """
        percpu = current._percpu
        if percpu.current is not None:
            self._check_not_nested()
        with self._cond:
            self._require(op, allowed)
            if self._busy:
                raise BadState(f"vCPU {self.vcpu_id}: {op}() while another operation on it "
                               "is in progress on another thread")
            self._busy = True
            before = self._state
            if during is not None:
                self._state = during
        percpu.current = self  # this vCPU is current on the host CPU for the operation
        try:
            result = action()
        except Exception as exc:
            with self._cond:
                self._busy = False
                if argument_check and isinstance(exc, InvalidInput):
                    self._state = before
                    raise
            self._fail(op, exc)
            raise AssertionError("unreachable") from exc  # _fail always raises
        finally:
            percpu.current = None
        with self._cond:
            self._busy = False
            if to is not None:
                self._state = to
            self._cond.notify_all()
        return result


def _check_config(arch_cls: type[ArchVCpu], kind: str, config: Any) -> None:
    expected = getattr(arch_cls, kind, None)
    if expected is None:
        raise InvalidInput(f"{arch_cls.__name__} does not declare its {kind} type")
    if not isinstance(config, expected):
        raise InvalidInput(
            f"{arch_cls.__name__} expects a {expected.__name__} as {kind}, "
            f"got {type(config).__name__}")

"""Low-level access to libunicorn that the Python binding does not offer.

* :class:`Preemptor` installs the native basic-block hook from ``_hooks.c``:
  any thread calls :meth:`Preemptor.request` and the CPU stops at the start of
  its next translation block (a safe point: nothing is half executed).
* :class:`NativeTimer` installs the native MRS/MSR hooks that emulate the Arm
  generic timer's EL0 registers and exposes their state to Python.
* :class:`ContextView` snapshots the CPU state into a reusable Unicorn context
  and exposes it as a ``memoryview`` for ``struct.unpack_from`` at offsets the
  engine's self-test located (register file, exception record).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from unicorn import UC_HOOK_BLOCK, UC_HOOK_INSN, Uc
from unicorn.arm64_const import UC_ARM64_INS_MRS, UC_ARM64_INS_MSR
from unicorn.unicorn_py3 import unicorn as _ucm

from pyaxvisor.engine.tcg import _hooks  # type: ignore[attr-defined]

_uclib: Any = _ucm.uclib


class _PreemptState(ctypes.Structure):
    _fields_ = (("request", ctypes.c_int32), ("pad", ctypes.c_int32),
                ("emu_stop", ctypes.c_void_p), ("stops", ctypes.c_uint64))


class Preemptor:
    """A stop request that the CPU honours at its next basic block."""

    def __init__(self, uc: Uc) -> None:
        self._state = _PreemptState()
        self._state.emu_stop = ctypes.cast(_uclib.uc_emu_stop, ctypes.c_void_p).value
        self._hook = _add_hook(uc, UC_HOOK_BLOCK, _hooks.preempt_hook_address(),
                               ctypes.pointer(self._state))

    def request(self) -> None:
        """Ask the CPU to stop (any thread). A plain aligned int32 store."""
        self._state.request = 1

    def take(self) -> bool:
        """Whether a stop was requested since the last call; clears the request."""
        if self._state.request:
            self._state.request = 0
            return True
        return False

    @property
    def stops(self) -> int:
        return self._state.stops


class ContextView:
    """The CPU state as bytes, refreshed by :meth:`refresh` (~1 µs)."""

    def __init__(self, uc: Uc) -> None:
        self._uc = uc
        self._ctx = uc.context_save()
        buf = (ctypes.c_char * self._ctx.size).from_address(self._ctx.context.value)
        self._buf = buf
        self.view = memoryview(buf).cast("B")

    def refresh(self) -> memoryview:
        self._uc.context_update(self._ctx)
        return self.view

    def snapshot_bytes(self) -> bytes:
        return bytes(self.refresh())


def _add_hook(uc: Uc, kind: int, callback: int, user_data: Any, *extra: int) -> Any:
    handle = _ucm.uc_hook_h()
    err = _uclib.uc_hook_add(uc._uch, ctypes.byref(handle), kind, ctypes.c_void_p(callback),
                             ctypes.cast(user_data, ctypes.c_void_p), 1, 0,
                             *(ctypes.c_int(e) for e in extra))
    if err != 0:
        raise RuntimeError(f"uc_hook_add({kind}) failed with unicorn error {err}")
    return handle


TIMER_VIRT = 0
TIMER_PHYS = 1
_ON_WRITE = ctypes.CFUNCTYPE(None, ctypes.c_int)
_NS = 1_000_000_000


class _TimerState(ctypes.Structure):
    _fields_ = (("base_ns", ctypes.c_int64), ("freq", ctypes.c_uint64),
                ("cntvoff", ctypes.c_uint64), ("ctl", ctypes.c_uint64 * 2),
                ("cval", ctypes.c_uint64 * 2), ("reg_write", ctypes.c_void_p),
                ("on_write", _ON_WRITE), ("reads", ctypes.c_uint64),
                ("writes", ctypes.c_uint64))


class NativeTimer:
    """The generic timer's EL0 registers (CNTFRQ, CNTPCT, CNTVCT, CNTV_*, CNTP_*),
    emulated natively on MRS/MSR. The counter is ``(monotonic_ns - base_ns) * freq
    / 1e9`` — the same clock as ``time.monotonic_ns`` — so Python can compute
    deadlines. ``on_write(timer)`` runs (on the vCPU thread, inside the CPU) after
    the guest writes a CTL/CVAL/TVAL register.
    """

    def __init__(self, uc: Uc, freq: int, base_ns: int,
                 on_write: Callable[[int], None] | None) -> None:
        st = self._state = _TimerState()
        st.base_ns = base_ns
        st.freq = freq
        st.reg_write = ctypes.cast(_uclib.uc_reg_write, ctypes.c_void_p).value
        self._cb = _ON_WRITE(on_write) if on_write is not None else _ON_WRITE()
        st.on_write = self._cb
        mrs, msr = _hooks.timer_hook_addresses()
        ptr = ctypes.pointer(st)
        self._hooks = (_add_hook(uc, UC_HOOK_INSN, mrs, ptr, UC_ARM64_INS_MRS),
                       _add_hook(uc, UC_HOOK_INSN, msr, ptr, UC_ARM64_INS_MSR))

    @property
    def freq(self) -> int:
        return self._state.freq

    def counter(self, now_ns: int) -> int:
        """CNTPCT at host time ``now_ns``."""
        return max(0, now_ns - self._state.base_ns) * self._state.freq // _NS

    def ctl(self, timer: int) -> int:
        return self._state.ctl[timer]

    def cval(self, timer: int) -> int:
        return self._state.cval[timer]

    def set_regs(self, timer: int, ctl: int, cval: int) -> None:
        self._state.ctl[timer] = ctl & 3
        self._state.cval[timer] = cval

    @property
    def cntvoff(self) -> int:
        return self._state.cntvoff

    @cntvoff.setter
    def cntvoff(self, value: int) -> None:
        self._state.cntvoff = value

    def _offset(self, timer: int) -> int:
        return self._state.cntvoff if timer == TIMER_VIRT else 0

    def irq_level(self, timer: int, now_ns: int) -> bool:
        """The timer's interrupt output: ENABLE and not IMASK and condition met."""
        ctl = self._state.ctl[timer]
        if ctl & 3 != 1:
            return False
        return self.counter(now_ns) - self._offset(timer) >= self._state.cval[timer]

    def deadline_ns(self, timer: int) -> int | None:
        """Host monotonic time at which the enabled, unmasked timer fires."""
        st = self._state
        if st.ctl[timer] & 3 != 1:
            return None
        ticks = st.cval[timer] + self._offset(timer)
        return st.base_ns + -(-ticks * _NS // st.freq)

    @property
    def accesses(self) -> tuple[int, int]:
        return self._state.reads, self._state.writes

"""Low-level access to libunicorn that the Python binding does not offer.

* :class:`Preemptor`: any thread calls :meth:`Preemptor.request` and the CPU stops at
  the start of its next translation block (a safe point: nothing is half executed).
* :class:`NativeTimer` is the Python side of the Arm generic timer's EL0 registers,
  which the AArch64 engine's native MRS/MSR hooks emulate (its state is part of the
  engine's native state).
* :class:`ContextView` snapshots the CPU state into a reusable Unicorn context
  and exposes it as a ``memoryview`` for ``struct.unpack_from`` at offsets the
  engine's self-test located (register file, exception record).
* :func:`map_mmio` registers device callbacks with libunicorn directly (the
  binding's wrapper would turn an exception into ``emu_stop()`` inside the
  access, which replays it).
* :func:`add_hook` / :func:`del_hook` install and remove native hooks (a C function
  and a pointer to its state) without the binding's Python wrappers.
* :func:`uc_function` and :class:`ProcessMemory` serve self-tests that call QEMU's
  exported functions and follow pointers inside Unicorn's state: a pointer is
  dereferenced only once ``/proc/self/maps`` says the bytes are readable.
"""

from __future__ import annotations

import bisect
import ctypes
from collections.abc import Callable
from typing import Any

from unicorn import UC_HOOK_BLOCK, Uc, UcError
from unicorn.unicorn_const import UC_CTL_IO_WRITE
from unicorn.unicorn_py3 import unicorn as _ucm

from pyaxvisor.engine.tcg import _hooks  # type: ignore[attr-defined]

_uclib: Any = _ucm.uclib


class _PreemptState(ctypes.Structure):
    """``struct preempt_state`` of ``_hooks.c``."""

    _fields_ = (("request", ctypes.c_int32), ("running", ctypes.c_int32),
                ("emu_stop", ctypes.c_void_p), ("stops", ctypes.c_uint64))


_stop_at_block: Any = getattr(_uclib, "uc_emu_stop_at_block", None)
if _stop_at_block is not None:
    _stop_at_block.restype = ctypes.c_int
    _stop_at_block.argtypes = (ctypes.c_void_p,)


class Preemptor:
    """A stop request that the CPU honours at the start of its next translation block.

    No hook polls for it: :meth:`request` asks libunicorn to stop the CPU
    (``uc_emu_stop_at_block``, from the patched build: never mid-instruction, never lost
    against a run that is starting) when the CPU runs, and leaves a request word that
    the thread running the CPU reads around each run (:meth:`begin` and :meth:`end`).

    Call order on the CPU's thread: ``begin()`` (False: a stop is pending: do not
    run), ``uc_emu_start``, ``end()``; :meth:`take` takes the request when the run is
    over. The word and the running flag are read and written under the GIL, which
    orders them between threads; a request that lands between the run's end and
    :meth:`end` may leave one spurious stop to the next run, which then returns before
    its first block.

    On the stock library (no ``uc_emu_stop_at_block``), ``block_hook=True`` installs a
    native block hook that polls the word instead (the hook costs a call per block).
    An engine whose own block hook polls it passes its ``state`` and ``block_hook=False``.
    """

    def __init__(self, uc: Uc, state: _PreemptState | None = None,
                 block_hook: bool = True) -> None:
        self._state = state if state is not None else _PreemptState()
        self._uch = uc._uch
        self.polled = _stop_at_block is None
        #: What the native hooks call to stop the CPU: at the next block start where
        #: the library can (never replaying an access), else uc_emu_stop.
        self._state.emu_stop = uc_function("uc_emu_stop" if self.polled
                                           else "uc_emu_stop_at_block")
        self._hook = (_add_hook(uc, UC_HOOK_BLOCK, _hooks.preempt_hook_address(),
                                ctypes.pointer(self._state))
                      if block_hook and self.polled else None)

    def request(self) -> None:
        """Ask the CPU to stop (any thread, also a callback inside the CPU)."""
        st = self._state
        st.request = 1
        if st.running and not self.polled:
            _stop_at_block(self._uch)

    def begin(self) -> bool:
        """Before a run (the CPU's thread): mark the CPU running; False (and not
        running) when a stop is pending, which :meth:`take` then takes."""
        st = self._state
        st.running = 1
        if st.request:
            st.running = 0
            return False
        return True

    def end(self) -> None:
        """After a run (the CPU's thread)."""
        self._state.running = 0

    def take(self) -> bool:
        """Whether a stop was requested since the last call; clears the request."""
        st = self._state
        if st.request:
            st.request = 0
            st.stops += 1
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


#: ``uc_ctl`` numbers of UC_CTL_TCG_PARALLEL and UC_CTL_EXIT_AT_BLOCKS_ONLY (pyaxvisor's
#: tcg-parallel and exit-at-blocks-only patches).
UC_CTL_TCG_PARALLEL = 15
UC_CTL_EXIT_AT_BLOCKS_ONLY = 16


def set_tcg_parallel(uc: Uc, on: bool) -> None:
    """Translate guest code for CPUs that run at the same time (host atomics for the
    guest's atomic and exclusive accesses, host barriers for its barriers), or not;
    drops the translated code when the setting changes. Raises ``UcError`` on a library
    without the control (check :attr:`~pyaxvisor.engine.tcg.common.UnicornBuild.parallel`)."""
    uc.ctl(UC_CTL_TCG_PARALLEL, UC_CTL_IO_WRITE, ctypes.c_int(int(on)))


def exit_at_blocks_only(uc: Uc) -> bool:
    """Where the library can (the exit-at-blocks-only patch), honour stop requests only
    at block starts: no helper call after every guest load and store. The engines'
    callbacks never need a stop right after an access (they stop at the next block, or
    raise the guest's exception themselves). Returns whether it is on."""
    try:
        uc.ctl(UC_CTL_EXIT_AT_BLOCKS_ONLY, UC_CTL_IO_WRITE, ctypes.c_int(1))
    except UcError:
        return False
    return True


_set_kick: Any = getattr(_uclib, "uc_set_kick_callback", None)
_kick: Any = getattr(_uclib, "uc_kick", None)
if _set_kick is not None and _kick is not None:
    _set_kick.restype = _kick.restype = ctypes.c_int
    _set_kick.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
    _kick.argtypes = (ctypes.c_void_p,)


class Kicker:
    """Another thread's way into a running CPU without stopping it (the cpu-kick patch):
    :meth:`kick` makes the CPU leave its translated code, call the native ``callback``
    (with ``user_data``) on its own thread and look at its pending interrupts before its
    next block, and go on. A kick while the CPU is stopped is taken when it next runs.
    ``available`` is False on a library without the patch (callers then stop the CPU)."""

    available = _set_kick is not None and _kick is not None

    def __init__(self, uc: Uc, callback: int, user_data: Any) -> None:
        self._uch = uc._uch
        err = _set_kick(self._uch, callback, ctypes.cast(user_data, ctypes.c_void_p))
        if err != 0:
            raise RuntimeError(f"uc_set_kick_callback failed with unicorn error {err}")
        self.kick: Callable[[], int] = lambda: _kick(self._uch)


def uc_function(name: str) -> int:
    """The address of an exported libunicorn function (``uc_*`` or one of QEMU's
    ``*_riscv64``/``*_aarch64`` symbols)."""
    return ctypes.cast(getattr(_uclib, name), ctypes.c_void_p).value  # type: ignore[return-value]


class ProcessMemory:
    """The readable mappings of this process, from ``/proc/self/maps`` when created
    (make a new one after allocations that may have added mappings)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        with open("/proc/self/maps") as maps:
            for line in maps:
                span, perms = line.split(maxsplit=2)[:2]
                if perms[0] == "r":
                    lo, hi = span.split("-")
                    self._starts.append(int(lo, 16))
                    self._ends.append(int(hi, 16))

    def readable(self, addr: int, size: int) -> bool:
        """Whether ``[addr, addr + size)`` lies in one readable mapping."""
        i = bisect.bisect_right(self._starts, addr) - 1
        return i >= 0 and addr + size <= self._ends[i]


_MMIO_READ = _ucm.MMIO_READ_CFUNC
_MMIO_WRITE = _ucm.MMIO_WRITE_CFUNC


_MIRROR_READ, _MIRROR_SIZE = _hooks.mirror_read()


class MirrorMap(ctypes.Structure):
    """``struct mmio_mirror`` of ``mmio_mirror.h``: one mapping of a mirrored window."""

    _fields_ = (("data", ctypes.c_void_p), ("valid", ctypes.c_void_p),
                ("size", ctypes.c_uint64), ("read", ctypes.c_void_p),
                ("read_ud", ctypes.c_void_p), ("served", ctypes.c_uint64))


if ctypes.sizeof(MirrorMap) != _MIRROR_SIZE:
    raise ImportError("pyaxvisor's native struct mmio_mirror and its Python mirror disagree: "
                      "rebuild the extension (python setup.py build_ext --inplace)")


class MappedMmio:
    """What :func:`map_mmio` made: the C callbacks (kept alive as long as the mapping)
    and, for a mirrored window, its :class:`MirrorMap`."""

    def __init__(self, read: Any, write: Any, mirror: MirrorMap | None) -> None:
        self.keep = (read, write)
        self.mirror = mirror

    @property
    def mirror_reads(self) -> int:
        """Reads answered from the mirror's table."""
        return 0 if self.mirror is None else self.mirror.served


def map_mmio(uc: Uc, paddr: int, size: int, read: Callable[[int, int], int],
             write: Callable[[int, int, int], None],
             mirror: tuple[int, int, int] | None = None) -> MappedMmio:
    """Serve physical ``[paddr, paddr + size)`` from ``read(offset, size)`` and
    ``write(offset, size, value)`` inside the CPU; the caller keeps the result as long
    as the mapping. ``mirror`` (the words' and byte masks' addresses and the table's
    size, ``RegisterMirror``) answers reads of published registers in C without
    ``read``. The callbacks must not raise (ctypes would print and drop the exception),
    stop the CPU or write its PC (Unicorn would replay the access); they may request a
    stop at the next block. Raises ``RuntimeError`` with Unicorn's error number when
    libunicorn refuses."""
    rd = _MMIO_READ(lambda _h, off, sz, _ud: read(off, sz))
    wr = _MMIO_WRITE(lambda _h, off, sz, val, _ud: write(off, sz, val))
    table: MirrorMap | None = None
    read_cb: Any = rd
    read_ud: Any = None
    if mirror is not None:
        data, valid, table_size = mirror
        table = MirrorMap(data, valid, min(table_size, size),
                          ctypes.cast(rd, ctypes.c_void_p).value, None, 0)
        read_cb = ctypes.c_void_p(_MIRROR_READ)
        read_ud = ctypes.addressof(table)
    err = _uclib.uc_mmio_map(uc._uch, paddr, size, read_cb, read_ud, wr, None)
    if err != 0:
        raise RuntimeError(f"uc_mmio_map({paddr:#x}, {size:#x}) failed with unicorn error {err}")
    return MappedMmio(rd, wr, table)


def add_hook(uc: Uc, kind: int, callback: int, user_data: Any, *extra: int,
             begin: int = 1, end: int = 0) -> Any:
    """Install the native ``callback`` (an address) for hook ``kind`` over every address
    (or ``[begin, end]`` when ``begin <= end``) with ``user_data`` (a ctypes pointer);
    ``extra`` are the instruction ids of ``UC_HOOK_INSN``. Returns the handle for
    :func:`del_hook`."""
    handle = _ucm.uc_hook_h()
    err = _uclib.uc_hook_add(uc._uch, ctypes.byref(handle), kind, ctypes.c_void_p(callback),
                             ctypes.cast(user_data, ctypes.c_void_p), ctypes.c_uint64(begin),
                             ctypes.c_uint64(end),
                             *(ctypes.c_int(e) for e in extra))
    if err != 0:
        raise RuntimeError(f"uc_hook_add({kind}) failed with unicorn error {err}")
    return handle


def del_hook(uc: Uc, handle: Any) -> None:
    """Remove a hook :func:`add_hook` installed (the CPU must be stopped)."""
    err = _uclib.uc_hook_del(uc._uch, handle)
    if err != 0:
        raise RuntimeError(f"uc_hook_del failed with unicorn error {err}")


_add_hook = add_hook


TIMER_VIRT = 0
TIMER_PHYS = 1
_ON_WRITE = ctypes.CFUNCTYPE(None, ctypes.c_int)
_NS = 1_000_000_000


class _TimerState(ctypes.Structure):
    """``struct timer_state`` of ``_hooks.c``."""

    _fields_ = (("base_ns", ctypes.c_int64), ("freq", ctypes.c_uint64),
                ("cntvoff", ctypes.c_uint64), ("ctl", ctypes.c_uint64 * 2),
                ("cval", ctypes.c_uint64 * 2), ("reg_write", ctypes.c_void_p),
                ("on_write", _ON_WRITE), ("reads", ctypes.c_uint64),
                ("writes", ctypes.c_uint64))


class NativeTimer:
    """The generic timer's EL0 registers (CNTFRQ, CNTPCT, CNTVCT, CNTV_*, CNTP_*),
    emulated natively on MRS/MSR by the hooks of the engine whose native state holds
    ``state``. The counter is ``(monotonic_ns - base_ns) * freq / 1e9`` — the same
    clock as ``time.monotonic_ns`` — so Python can compute deadlines.
    ``on_write(timer)`` runs (on the vCPU thread, inside the CPU) after the guest
    writes a CTL/CVAL/TVAL register.
    """

    def __init__(self, state: _TimerState, freq: int, base_ns: int,
                 on_write: Callable[[int], None] | None) -> None:
        st = self._state = state
        st.base_ns = base_ns
        st.freq = freq
        st.reg_write = ctypes.cast(_uclib.uc_reg_write, ctypes.c_void_p).value
        self._cb = _ON_WRITE(on_write) if on_write is not None else _ON_WRITE()
        st.on_write = self._cb

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

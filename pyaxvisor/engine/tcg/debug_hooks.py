"""A debugger's native hooks on a software CPU, for every architecture's engine.

A gdb stub's hardware breakpoints, single step and watchpoints are Unicorn hooks with
native callbacks in ``_hooks.c`` (each architecture has its own callbacks and state
structure; what they raise is the architecture's business). What is the same for
every engine lives here: one ``UC_HOOK_CODE`` hook over exactly one address per
breakpoint, an optional ``UC_HOOK_CODE`` hook over every address for a step, one
memory hook while any watchpoint is set, the watch table copied into the state
structure (fields ``watches``, ``va``, ``pa``, ``len``, ``access``, arrays of
:data:`DEBUG_WATCHPOINTS`), and translated code dropped when the hooks change
(Unicorn instruments code at translation time).

Call order: :meth:`DebugHooks.set` only while the CPU is stopped, on its thread.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, Uc

from pyaxvisor.engine.tcg.common import EngineError
from pyaxvisor.engine.tcg.native import add_hook, del_hook

__all__ = ["DEBUG_WATCHPOINTS", "DebugHooks"]

#: Watchpoints a software CPU's debugger may set at once (the native tables' size).
DEBUG_WATCHPOINTS = 4


class DebugHooks:
    """The debugger hooks of one engine: ``state`` is its native debug structure (a
    ctypes ``Structure``), ``breakpoint``, ``watch`` and ``step`` the addresses of its
    native callbacks (``step`` None: the engine steps by other means)."""

    def __init__(self, uc: Uc, state: ctypes.Structure, *, breakpoint: int, watch: int,
                 step: int | None = None) -> None:
        self._uc = uc
        self.state = state
        self.pointer = ctypes.pointer(state)
        self._breakpoint, self._watch, self._step = breakpoint, watch, step
        self._points: dict[int, Any] = {}
        self._step_hook: Any = None
        self._watch_hook: Any = None

    def set(self, breakpoints: Sequence[int], watches: Sequence[tuple[int, int, int, int]],
            step: bool = False) -> None:
        """Stop before the instructions at the virtual addresses ``breakpoints``, after
        one instruction (``step``), and at the accesses ``watches`` describe (``(va, pa,
        length, access)``: ``pa`` the engine-physical address of ``va`` now, ``access``
        bit 0 reads, bit 1 writes). CPU stopped."""
        if len(watches) > DEBUG_WATCHPOINTS:
            raise EngineError(f"at most {DEBUG_WATCHPOINTS} debugger watchpoints")
        if step and self._step is None:
            raise EngineError("this engine has no native step hook")
        uc, changed = self._uc, False
        for addr in [a for a in self._points if a not in breakpoints]:
            del_hook(uc, self._points.pop(addr))
            changed = True
        for addr in breakpoints:
            if addr not in self._points:
                self._points[addr] = add_hook(uc, UC_HOOK_CODE, self._breakpoint, self.pointer,
                                              begin=addr, end=addr)
                changed = True
        state = self.state
        for n, (va, pa, length, access) in enumerate(watches):
            state.va[n], state.pa[n], state.len[n], state.access[n] = va, pa, length, access
        state.watches = len(watches)
        self._step_hook, stepped = self._toggle(self._step_hook, step, UC_HOOK_CODE,
                                                self._step)
        self._watch_hook, watched = self._toggle(self._watch_hook, bool(watches),
                                                 UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE,
                                                 self._watch)
        if changed or stepped or watched:
            uc.ctl_flush_tb()

    def _toggle(self, hook: Any, wanted: bool, kind: int, callback: int | None
                ) -> tuple[Any, bool]:
        """``hook`` installed (over every address) or removed as ``wanted`` says; the
        handle and whether it changed."""
        if wanted and hook is None:
            assert callback is not None
            return add_hook(self._uc, kind, callback, self.pointer), True
        if not wanted and hook is not None:
            del_hook(self._uc, hook)
            return None, True
        return hook, False

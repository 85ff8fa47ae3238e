"""The boot status line: while a guest on a terminal has printed nothing for
:data:`QUIET_AFTER` seconds, one line on standard error says what its vCPUs are doing
and how many exits per second the VM serves; it is erased as soon as the guest
prints again, and comes back after the next silence.

Only when both standard output and standard error are terminals
(:meth:`BootStatus.for_terminal` returns None otherwise): a pipe or a file never
sees it.

Threads: :meth:`BootStatus.wrap`'s write runs on whatever thread the guest's console
writes from (vCPU threads, device threads); the line is drawn by the status thread.
One lock orders them: the line is erased before the guest's bytes are written, and
never drawn while the guest has just written.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["QUIET_AFTER", "BootStatus"]

#: Seconds without guest output before the line shows.
QUIET_AFTER = 3.0
#: How often the line is redrawn.
INTERVAL = 0.5
_ERASE = "\r\x1b[K"


class BootStatus:
    def __init__(self, stream: TextIO, *, quiet_after: float = QUIET_AFTER,
                 interval: float = INTERVAL) -> None:
        self._stream = stream
        self._quiet_after = quiet_after
        self._interval = interval
        self._lock = threading.Lock()
        self._last_output = time.monotonic()
        self._started = self._last_output
        self._shown = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._vm: Vm | None = None
        self._last_count = 0
        self._last_time = self._last_output

    @classmethod
    def for_terminal(cls) -> BootStatus | None:
        """A status line on standard error when standard output and standard error are
        both terminals, else None."""
        try:
            if not (os.isatty(sys.stdout.fileno()) and os.isatty(sys.stderr.fileno())):
                return None
        except (OSError, ValueError, AttributeError):
            return None
        return cls(sys.stderr)

    def wrap(self, write: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """``write`` (the console's), erasing the line first when it is shown."""
        def guest_writes(data: bytes) -> None:
            self.guest_spoke()
            write(data)
        return guest_writes

    def guest_spoke(self) -> None:
        """The guest prints now: erase the line (it returns after the next silence)."""
        with self._lock:
            self._last_output = time.monotonic()
            if self._shown:
                self._emit(_ERASE)
                self._shown = False

    def watch(self, vm: Vm) -> None:
        """Start drawing the line for ``vm`` (before it runs)."""
        self._vm = vm
        self._last_output = self._started = self._last_time = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="boot-status", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop and erase the line (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._shown:
                self._emit(_ERASE)
                self._shown = False

    def line(self, now: float) -> str:
        """The status text: how long the guest is silent, each vCPU's state, exits/s."""
        vm = self._vm
        parts = [f"pyaxvisor: {now - self._started:.0f} s, no guest output for "
                 f"{now - self._last_output:.0f} s"]
        if vm is not None:
            states = []
            for cpu in range(vm.smp):
                vcpu = vm.vcpu(cpu)
                states.append(f"{cpu}:{vcpu.state.name if vcpu is not None else 'off'}")
            parts.append("vCPUs " + " ".join(states))
            count = sum(list(vm.exits.values()))
            span = now - self._last_time
            rate = (count - self._last_count) / span if span > 0 else 0.0
            self._last_count, self._last_time = count, now
            parts.append(f"{rate:.0f} exits/s")
        parts.append("Ctrl-A X quits")
        return "; ".join(parts)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                now = time.monotonic()
                if now - self._last_output < self._quiet_after:
                    continue
                width = shutil.get_terminal_size((80, 24)).columns
                self._emit(_ERASE + self.line(now)[:max(width - 1, 10)])
                self._shown = True

    def _emit(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            self._stop.set()

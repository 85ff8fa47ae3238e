"""Several VMs' serial consoles on one terminal (``pyaxvisor run`` with several VMs).

Output: each VM's bytes go to standard output with ``[NAME] `` at the start of each
of its lines (a line is the bytes up to ``\\n``). Two VMs' text never shares a line:
while one VM's line is open on the terminal (its bytes so far shown, no newline yet)
it goes on at once, and the others' output is held until that line ends, or until
that VM has been quiet for :data:`HOLD` seconds (or the others have waited
:data:`MAX_HOLD`) — then its line is ended for it (a line break, ``\\r\\n`` on a
terminal), the others' lines are shown, and its next bytes start a new prefixed
line. With no line open, any VM's bytes are shown at once (an echo is not delayed).
The host's own messages (:meth:`ConsoleMux.notice`: the key help, focus changes, a
VM's end) go to standard error, after ending the open console line the same way when
standard output and error are one terminal or file.
:meth:`flush` shows everything held (at the end).

Input goes to one VM at a time, the *focused* one: the first VM at the start. When
standard input is a TTY it is put in raw mode (restored by :meth:`restore`) and
Ctrl-A is the escape, as in QEMU: Ctrl-A N focuses the next VM (after the last, the
first), Ctrl-A 0..9 the VM of that index (command-line order), Ctrl-A H lists the
keys and the VMs with their states, Ctrl-A X quits (every VM), Ctrl-A Ctrl-A sends a
literal Ctrl-A, Ctrl-A C and other keys are ignored. Input for a VM that has ended
is dropped, and said once (until the focus changes); the focus does not move by
itself. Input for a VM still being built is kept and handed over when it is ready.
When standard input is not a TTY (a pipe, CI) every byte goes to the first VM and
end of file just stops forwarding.

Threads: each VM writes from its own threads (:meth:`writer`'s functions serialize
on one lock); held output is shown by a daemon thread once its wait is over; input
is read on one daemon thread (:meth:`start_input`); a VM's deliver function is
called on that thread, outside the lock.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Sequence
from typing import BinaryIO

from pyaxvisor.cli.console import CTRL_A, terminal_input

__all__ = ["CTRL_A", "HOLD", "KEYS", "MAX_HOLD", "ConsoleMux"]

#: How long (seconds) the VM whose line is open on the terminal keeps it while it is
#: quiet and others have lines to show.
HOLD = 0.25
#: The longest (seconds) the others' output waits for a line that does not end.
MAX_HOLD = 1.0
#: The escape keys, as Ctrl-A H lists them.
KEYS = (("Ctrl-A N", "input to the next VM"),
        ("Ctrl-A 0..9", "input to the VM of that index"),
        ("Ctrl-A H", "this list"),
        ("Ctrl-A X", "quit: stop every VM"),
        ("Ctrl-A Ctrl-A", "send Ctrl-A to the VM"))


class ConsoleMux:
    """The consoles of the VMs ``names`` (their order is the index Ctrl-A 0..9 takes)."""

    def __init__(self, names: Sequence[str], output: BinaryIO | None = None,
                 errors: BinaryIO | None = None, input_fd: int | None = None) -> None:
        self._names = list(names)
        self._prefixes = [f"[{name}] ".encode() for name in names]
        self._out = output if output is not None else sys.stdout.buffer
        self._err = errors if errors is not None else sys.stderr.buffer
        self._in_fd = input_fd
        self._out_break = b"\r\n" if _isatty(self._out) else b"\n"
        self._err_break = b"\r\n" if _isatty(self._err) else b"\n"
        self._shared = _same_file(self._out, self._err)  # notices cut console lines
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._open: int | None = None  # the VM whose output line is not ended yet
        self._held = [bytearray() for _ in names]  # output not on the terminal yet
        self._last = [0.0] * len(names)  # when each VM last wrote (time.monotonic)
        self._since = [0.0] * len(names)  # since when its held output waits
        self._deliver: list[Callable[[bytes], None] | None] = [None] * len(names)
        self._pending = [bytearray() for _ in names]
        self._states = ["starting"] * len(names)
        self._ended = [False] * len(names)
        self._focus = 0
        self._told_dropped = False
        self._saved_tty: list | None = None
        threading.Thread(target=self._flusher, name="console-mux-output", daemon=True).start()

    # -- output ------------------------------------------------------------------------
    def writer(self, index: int) -> Callable[[bytes], None]:
        """The console write function of VM ``index`` (any thread)."""
        return lambda data: self._write(index, data)

    def _write(self, index: int, data: bytes) -> None:
        if not data:
            return
        with self._changed:
            now = time.monotonic()
            if not self._held[index]:
                self._since[index] = now
            self._held[index] += data
            self._last[index] = now
            self._flush(now)
            if any(self._held):
                self._changed.notify()

    def _flush(self, now: float, everything: bool = False) -> None:
        """Emit what may be emitted now (the lock held): the open line's VM goes on; the
        others' output waits until it ends its line, is quiet for :data:`HOLD`
        seconds or the others have waited :data:`MAX_HOLD` (then its line is ended for
        it); a partial line starts only when no line is open. ``everything``: emit all,
        partial lines too."""
        out = bytearray()
        owner = self._open
        if owner is not None:
            self._emit_held(owner, out, partial=True)
            waiting = [self._since[i] for i, held in enumerate(self._held) if held]
            if self._open == owner and not everything and waiting and \
                    now - self._last[owner] < HOLD and now - min(waiting) < MAX_HOLD:
                self._emit(self._out, bytes(out))
                return  # the others wait for its newline (the flusher comes back)
            if self._open is not None and waiting:
                out += self._out_break  # its wait is over: its line is ended for it
                self._open = None
        for index in range(len(self._names)):
            self._emit_held(index, out, partial=everything)
        for index in range(len(self._names)):
            if self._open is None and self._held[index]:
                self._emit_held(index, out, partial=True)
        if out:
            self._emit(self._out, bytes(out))

    def _emit_held(self, index: int, out: bytearray, partial: bool) -> None:
        """Move VM ``index``'s held bytes to ``out``: its complete lines (and the partial
        last one if ``partial``), prefixed, after ending another VM's open line."""
        held = self._held[index]
        cut = len(held) if partial else held.rfind(b"\n") + 1
        if cut <= 0:
            return
        if self._open is not None and self._open != index:
            out += self._out_break
            self._open = None
        data, self._held[index] = bytes(held[:cut]), held[cut:]
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end + 1
            if self._open is None:
                out += self._prefixes[index]
            out += data[start:end]
            self._open = None if data[end - 1] == 0x0A else index
            start = end

    def _flusher(self) -> None:
        """Emit held output once its wait is over (a daemon thread)."""
        with self._changed:
            while True:
                if any(self._held):
                    self._changed.wait(HOLD / 2)
                    self._flush(time.monotonic())
                else:
                    self._changed.wait()

    def flush(self) -> None:
        """Emit everything held (at the end, or when a VM ends)."""
        with self._changed:
            self._flush(time.monotonic(), everything=True)

    def notice(self, text: str) -> None:
        """A host message (one or more lines) on standard error, on lines of its own."""
        with self._lock:
            self._notice(text)

    def _notice(self, text: str) -> None:
        if self._open is not None and self._shared:
            self._emit(self._out, self._out_break)
            self._open = None
        lines = text.split("\n")
        self._emit(self._err, self._err_break.join(line.encode() for line in lines)
                   + self._err_break)

    @staticmethod
    def _emit(stream: BinaryIO, data: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):
            stream.write(data)
            stream.flush()

    # -- the VMs' states ---------------------------------------------------------------
    def attach(self, index: int, deliver: Callable[[bytes], None]) -> None:
        """VM ``index`` is running and takes input through ``deliver``; input kept for
        it so far is handed over now."""
        with self._lock:
            self._deliver[index] = deliver
            self._states[index] = "running"
            kept, self._pending[index] = bytes(self._pending[index]), bytearray()
        if kept:
            deliver(kept)

    def ended(self, index: int, how: str) -> None:
        """VM ``index`` has ended (``how``: a phrase for Ctrl-A H); its output held so
        far is shown; input for it is dropped from now on."""
        with self._lock:
            out = bytearray()
            self._emit_held(index, out, partial=True)
            self._emit(self._out, bytes(out))
            self._ended[index] = True
            self._deliver[index] = None
            self._pending[index] = bytearray()
            self._states[index] = f"ended: {how}"

    @property
    def focus(self) -> int:
        """The index of the VM that takes input."""
        return self._focus

    # -- input -------------------------------------------------------------------------
    def start_input(self, on_quit: Callable[[], None]) -> None:
        """Read standard input on a daemon thread (see the module docstring);
        ``on_quit`` is called on Ctrl-A X."""
        fd = self._in_fd if self._in_fd is not None else sys.stdin.fileno()
        is_tty = os.isatty(fd)
        if is_tty:
            self._saved_tty = termios.tcgetattr(fd)
            tty.setraw(fd)
        thread = threading.Thread(target=self._pump, args=(fd, is_tty, on_quit),
                                  name="console-mux-input", daemon=True)
        thread.start()

    def restore(self) -> None:
        """Give the terminal its mode back (idempotent)."""
        if self._saved_tty is not None:
            fd = self._in_fd if self._in_fd is not None else sys.stdin.fileno()
            with contextlib.suppress(termios.error):
                termios.tcsetattr(fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None

    def _pump(self, fd: int, is_tty: bool, on_quit: Callable[[], None]) -> None:
        for part in terminal_input(fd, is_tty):  # without a TTY the focus stays on VM 0
            if isinstance(part, bytes):
                self._send(self._focus, part)
            elif part == "x":
                on_quit()
                return
            elif part == "n":
                self._focus_on((self._focus + 1) % len(self._names))
            elif part == "h":
                self.notice(self.help_text())
            elif part in "0123456789":
                self._focus_on(int(part))
            # Ctrl-A C and the keys without a meaning: nothing

    def _send(self, index: int, data: bytes) -> None:
        with self._lock:
            if self._ended[index]:
                if not self._told_dropped:
                    self._told_dropped = True
                    self._notice(f"pyaxvisor: [{self._names[index]}] has {self._states[index]}"
                                 f"; its input is dropped (Ctrl-A N or Ctrl-A 0..9 switches, "
                                 "Ctrl-A H lists the VMs)")
                return
            deliver = self._deliver[index]
            if deliver is None:
                self._pending[index] += data
                return
        deliver(data)

    def _focus_on(self, index: int) -> None:
        with self._lock:
            if index >= len(self._names):
                self._notice(f"pyaxvisor: there is no VM {index}: the VMs are 0.."
                             f"{len(self._names) - 1} (Ctrl-A H lists them)")
                return
            self._focus = index
            self._told_dropped = False
            self._notice(f"pyaxvisor: input goes to [{self._names[index]}] (VM {index}, "
                         f"{self._states[index]})")

    def help_text(self) -> str:
        """The keys and the VMs with their states, the focused one marked ``*``."""
        with self._lock:
            states = list(self._states)
        lines = ["pyaxvisor: console keys:"]
        lines += [f"  {key:<14}{what}" for key, what in KEYS]
        lines.append("VMs (* takes the input):")
        lines += [f"  {'*' if i == self._focus else ' '} {i} [{name}] {state}"
                  for i, (name, state) in enumerate(zip(self._names, states, strict=True))]
        return "\n".join(lines)


def _isatty(stream: BinaryIO) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False


def _same_file(one: BinaryIO, other: BinaryIO) -> bool:
    """Whether the two streams write to one file or terminal (or cannot tell)."""
    try:
        a, b = os.fstat(one.fileno()), os.fstat(other.fileno())
    except (OSError, ValueError, AttributeError):
        return True
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

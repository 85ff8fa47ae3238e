"""Several VMs' serial consoles on one terminal (``pyaxvisor run`` with several VMs).

Output: each VM's bytes go to standard output with ``[NAME] `` at the start of each
of its lines. A line is the VM's bytes up to ``\\n``; when another VM writes while a
line is open, the open line is ended first (a line break, ``\\r\\n`` on a terminal)
and the other VM's text starts a new prefixed line, so two VMs' text never share a
line; the interrupted VM's next bytes get a new prefix. The host's own messages
(:meth:`ConsoleMux.notice`: the key help, focus changes, a VM's end) go to standard
error, after the open console line is ended the same way.

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
on one lock); input is read on one daemon thread (:meth:`start_input`); a VM's
deliver function is called on that thread, outside the lock.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import threading
import tty
from collections.abc import Callable, Sequence
from typing import BinaryIO

__all__ = ["CTRL_A", "KEYS", "ConsoleMux"]

CTRL_A = 0x01
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
        self._lock = threading.Lock()
        self._open: int | None = None  # the VM whose output line is not ended yet
        self._deliver: list[Callable[[bytes], None] | None] = [None] * len(names)
        self._pending = [bytearray() for _ in names]
        self._states = ["starting"] * len(names)
        self._ended = [False] * len(names)
        self._focus = 0
        self._told_dropped = False
        self._saved_tty: list | None = None

    # -- output ------------------------------------------------------------------------
    def writer(self, index: int) -> Callable[[bytes], None]:
        """The console write function of VM ``index`` (any thread)."""
        return lambda data: self._write(index, data)

    def _write(self, index: int, data: bytes) -> None:
        if not data:
            return
        prefix = self._prefixes[index]
        with self._lock:
            out = bytearray()
            if self._open is not None and self._open != index:
                out += self._out_break
                self._open = None
            start = 0
            while start < len(data):
                end = data.find(b"\n", start)
                end = len(data) if end < 0 else end + 1
                if self._open is None:
                    out += prefix
                out += data[start:end]
                self._open = None if data[end - 1] == 0x0A else index
                start = end
            self._emit(self._out, bytes(out))

    def notice(self, text: str) -> None:
        """A host message (one or more lines) on standard error, on lines of its own."""
        with self._lock:
            self._notice(text)

    def _notice(self, text: str) -> None:
        if self._open is not None:
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
        """VM ``index`` has ended (``how``: a phrase for Ctrl-A H); input for it is
        dropped from now on."""
        with self._lock:
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
        escape = False
        while True:
            try:
                chunk = os.read(fd, 256)
            except OSError:
                return
            if not chunk:
                return
            if not is_tty:
                self._send(0, chunk)
                continue
            out = bytearray()
            for b in chunk:
                if not escape:
                    if b == CTRL_A:
                        escape = True
                    else:
                        out.append(b)
                    continue
                escape = False
                if b == CTRL_A:
                    out.append(CTRL_A)
                    continue
                key = chr(b).lower()
                if key not in "xnh0123456789":
                    continue  # Ctrl-A C and the keys without a meaning
                if out:
                    self._send(self._focus, bytes(out))
                    out.clear()
                if key == "x":
                    on_quit()
                    return
                if key == "n":
                    self._focus_on((self._focus + 1) % len(self._names))
                elif key == "h":
                    self.notice(self.help_text())
                else:
                    self._focus_on(int(key))
            if out:
                self._send(self._focus, bytes(out))

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

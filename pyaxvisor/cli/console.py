"""The serial console on the terminal, as QEMU's ``-serial stdio`` / ``-nographic``.

Output bytes go to standard output unchanged. Input: when standard input is a
TTY it is put in raw mode (restored on exit) and Ctrl-A X quits, Ctrl-A C is
ignored, Ctrl-A Ctrl-A sends a literal Ctrl-A — QEMU's escapes; every other byte
is handed to the UART. When standard input is not a TTY (a pipe, CI) input is
forwarded as it comes and end of file just stops forwarding.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from typing import BinaryIO

CTRL_A = 0x01


def split_escapes(chunk: bytes, escape: bool) -> tuple[list[bytes | str], bool]:
    """Terminal input cut at QEMU's Ctrl-A escapes: the runs of bytes to hand on (Ctrl-A
    Ctrl-A is one literal Ctrl-A) and, as lower-case one-character strings, the keys
    typed after a Ctrl-A, in order. ``escape``: a Ctrl-A ended the previous chunk; the
    second value says whether one ends this chunk."""
    parts: list[bytes | str] = []
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
        if out:
            parts.append(bytes(out))
            out.clear()
        parts.append(chr(b).lower())
    if out:
        parts.append(bytes(out))
    return parts, escape


def terminal_input(fd: int, is_tty: bool) -> Iterator[bytes | str]:
    """What is read from ``fd`` until its end or an error: from a TTY, the bytes and
    Ctrl-A keys of :func:`split_escapes`; from anything else, the bytes as they come."""
    escape = False
    while True:
        try:
            chunk = os.read(fd, 256)
        except OSError:
            return
        if not chunk:
            return
        if not is_tty:
            yield chunk
            continue
        parts, escape = split_escapes(chunk, escape)
        yield from parts


class Console:
    def __init__(self, output: BinaryIO | None = None, input_fd: int | None = None) -> None:
        self._out = output if output is not None else sys.stdout.buffer
        self._in_fd = input_fd
        self._lock = threading.Lock()
        self._saved_tty: list | None = None
        self._thread: threading.Thread | None = None
        self.captured = bytearray()
        self.capture = False

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.capture:
                self.captured += data
            with contextlib.suppress(OSError, ValueError):
                self._out.write(data)
                self._out.flush()

    def start_input(self, deliver: Callable[[bytes], None], on_quit: Callable[[], None]) -> None:
        """Forward standard input to ``deliver`` on a daemon thread."""
        fd = self._in_fd if self._in_fd is not None else sys.stdin.fileno()
        is_tty = os.isatty(fd)
        if is_tty:
            self._saved_tty = termios.tcgetattr(fd)
            tty.setraw(fd)

        def pump() -> None:
            for part in terminal_input(fd, is_tty):
                if isinstance(part, bytes):
                    deliver(part)
                elif part == "x":
                    on_quit()
                    return
                # Ctrl-A C and the other keys mean nothing here

        self._thread = threading.Thread(target=pump, name="console-input", daemon=True)
        self._thread.start()

    def restore(self) -> None:
        if self._saved_tty is not None:
            fd = self._in_fd if self._in_fd is not None else sys.stdin.fileno()
            termios.tcsetattr(fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None

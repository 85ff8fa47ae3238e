"""A guest's console output kept in a buffer that a harness waits on, and its input.

:class:`ConsoleBuffer` is the VM's ``console_write`` (any thread): bytes are decoded as
UTF-8 as they come (a character split across writes is kept whole, bad bytes become
U+FFFD) and appended to :attr:`ConsoleBuffer.text`, which keeps the last
:data:`MAX_KEPT` characters. :meth:`ConsoleBuffer.expect` waits for a regular
expression to match after the end of the previous match (as pexpect does) and returns
the match; it raises :class:`ConsoleTimeout` with the tail of the output when the time
is up or the VM ended first. :meth:`ConsoleBuffer.send` writes to the console's input
(the guest's serial port, or its virtio console when it has one).
"""

from __future__ import annotations

import codecs
import re
import threading
import time
from collections.abc import Callable

from pyaxvisor.errors import AxError, BadState, InvalidInput

__all__ = ["MAX_KEPT", "ConsoleBuffer", "ConsoleTimeout"]

#: Characters of output kept (older output is dropped; matches never reach into it).
MAX_KEPT = 16 << 20
#: Characters of output a timeout error shows.
TAIL = 2000
#: How often a waiting :meth:`ConsoleBuffer.expect` looks at output without a newline.
POLL = 0.02


class ConsoleTimeout(AxError, TimeoutError):
    """What :meth:`ConsoleBuffer.expect` waited for did not appear."""


class ConsoleBuffer:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._pieces: list[str] = []  # written since _text was last brought up to date
        self._pos = 0  # where the next expect() starts looking
        self._ended: str | None = None
        self._input: Callable[[bytes], None] | None = None

    # -- output (the VM's console_write; any thread) ------------------------------------
    def write(self, data: bytes) -> None:
        """Append ``data`` (O(1): guests write a byte at a time). Waiters are woken at
        a line's end; they look again every :data:`POLL` seconds for the rest (a
        prompt has no newline), which keeps the vCPU thread from waking them per byte."""
        with self._cond:
            piece = self._decoder.decode(data)
            self._pieces.append(piece)
            if "\n" in piece:
                self._cond.notify_all()

    def _joined(self) -> str:
        """The kept output, the pieces written since the last call joined (lock held)."""
        if self._pieces:
            text = self._text + "".join(self._pieces)
            self._pieces.clear()
            if len(text) > MAX_KEPT:
                cut = len(text) - MAX_KEPT
                text = text[cut:]
                self._pos = max(0, self._pos - cut)
            self._text = text
        return self._text

    @property
    def text(self) -> str:
        """Everything kept of the output so far."""
        with self._cond:
            return self._joined()

    def end(self, why: str) -> None:
        """The VM ended (``why`` says how): waiting for more output stops."""
        with self._cond:
            self._ended = why
            self._input = None
            self._cond.notify_all()

    # -- waiting -----------------------------------------------------------------------
    def expect(self, pattern: str | re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
        """Wait up to ``timeout`` seconds for ``pattern`` (a regular expression) to match
        the output after the previous match; return the match. Raises
        :class:`ConsoleTimeout` (showing the output's tail) when the time is up or the VM
        ended without printing it."""
        if not timeout > 0:
            raise InvalidInput(f"expect: timeout must be a positive number of seconds, not "
                               f"{timeout!r}")
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                ended = self._ended  # read before the text: what came before the end counts
                match = regex.search(self._joined(), self._pos)
                if match is not None:
                    self._pos = match.end()
                    return match
                left = deadline - time.monotonic()
                if ended is not None or left <= 0:
                    break
                self._cond.wait(min(left, POLL))
            why = (f"the VM ended ({ended}) first" if ended is not None
                   else f"not within {timeout:g} s")
            tail = self._text[-TAIL:]
        raise ConsoleTimeout(f"the console never printed {regex.pattern!r}: {why}; the last "
                             f"{len(tail)} characters of its output were:\n{tail}")

    # -- input -------------------------------------------------------------------------
    def attach_input(self, deliver: Callable[[bytes], None]) -> None:
        with self._cond:
            self._input = deliver

    def send(self, data: str | bytes) -> None:
        """Type ``data`` (a ``str`` is sent as UTF-8) into the console's input."""
        if isinstance(data, str):
            data = data.encode()
        with self._cond:
            deliver = self._input
            ended = self._ended
        if deliver is None:
            raise BadState(f"the console takes no input: "
                           f"{'the VM ended (' + ended + ')' if ended else 'no VM runs'}")
        deliver(bytes(data))

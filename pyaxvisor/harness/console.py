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
from collections.abc import Callable

from pyaxvisor.errors import AxError, BadState, InvalidInput

__all__ = ["MAX_KEPT", "ConsoleBuffer", "ConsoleTimeout"]

#: Characters of output kept (older output is dropped; matches never reach into it).
MAX_KEPT = 16 << 20
#: Characters of output a timeout error shows.
TAIL = 2000


class ConsoleTimeout(AxError, TimeoutError):
    """What :meth:`ConsoleBuffer.expect` waited for did not appear."""


class ConsoleBuffer:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._pos = 0  # where the next expect() starts looking
        self._ended: str | None = None
        self._input: Callable[[bytes], None] | None = None

    # -- output (the VM's console_write; any thread) ------------------------------------
    def write(self, data: bytes) -> None:
        with self._cond:
            text = self._text + self._decoder.decode(data)
            if len(text) > MAX_KEPT:
                cut = len(text) - MAX_KEPT
                text = text[cut:]
                self._pos = max(0, self._pos - cut)
            self._text = text
            self._cond.notify_all()

    @property
    def text(self) -> str:
        """Everything kept of the output so far."""
        with self._cond:
            return self._text

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
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = regex.search(self._text, self._pos)
            if match is not None:
                found.append(match)
                return True
            return self._ended is not None

        with self._cond:
            self._cond.wait_for(seen, timeout)
            if found:
                self._pos = found[0].end()
                return found[0]
            why = (f"the VM ended ({self._ended}) first" if self._ended is not None
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

"""Cutting a QMP input stream into JSON texts, as QEMU's JSON streamer does.

QMP has no line framing: a client may send ``{"execute": "stop"}`` with no newline
(the ``qemu.qmp`` package does) or several objects on one line. :class:`JsonSplitter`
follows the nesting of ``{}``/``[]`` outside strings (with their ``\\`` escapes) and
hands out each top-level value once its last bracket arrives; a bare scalar at top
level ends at the next white space or bracket. Whether a text is valid JSON is left
to the JSON parser.

Bounds: a value longer than ``max_size`` bytes is not kept: :meth:`JsonSplitter.feed`
reports it once (:class:`TooLong`) and skips the rest of it; a ``}`` or ``]`` with
nothing open is reported (:class:`Unbalanced`) and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JsonSplitter", "TooLong", "Unbalanced"]

_OPEN = frozenset(b"{[")
_CLOSE = frozenset(b"}]")
_SPACE = frozenset(b" \t\r\n")
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


@dataclass(frozen=True)
class TooLong:
    size: int  # bytes seen when it was given up (more than max_size)


@dataclass(frozen=True)
class Unbalanced:
    char: str


class JsonSplitter:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._scalar = False  # inside a bare top-level scalar
        self._skipping = False  # inside a value that grew too long
        self._size = 0

    def feed(self, data: bytes) -> list[bytes | TooLong | Unbalanced]:
        """The values (and problems) ``data`` completes, in order."""
        out: list[bytes | TooLong | Unbalanced] = []
        for byte in data:
            if self._scalar and not self._in_string and (
                    byte in _SPACE or byte in _OPEN or byte in _CLOSE):
                self._end(out)  # the bare scalar ends here; the byte is looked at anew
            if self._depth == 0 and not self._scalar:
                if byte in _SPACE:
                    continue
                if byte in _CLOSE:
                    out.append(Unbalanced(chr(byte)))
                    continue
                self._start()
                if byte in _OPEN:
                    self._depth = 1
                elif byte == _QUOTE:
                    self._scalar, self._in_string = True, True
                else:
                    self._scalar = True
                self._take(byte, out)
                continue
            self._take(byte, out)
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif byte == _BACKSLASH:
                    self._escape = True
                elif byte == _QUOTE:
                    self._in_string = False
                    if self._scalar:
                        self._end(out)
                continue
            if self._scalar:
                continue
            if byte == _QUOTE:
                self._in_string = True
            elif byte in _OPEN:
                self._depth += 1
            elif byte in _CLOSE:
                self._depth -= 1
                if self._depth == 0:
                    self._end(out)
        return out

    def _start(self) -> None:
        self._buf.clear()
        self._size = 0
        self._skipping = False

    def _take(self, byte: int, out: list[bytes | TooLong | Unbalanced]) -> None:
        self._size += 1
        if self._skipping:
            return
        if self._size > self.max_size:
            out.append(TooLong(self._size))
            self._skipping = True
            self._buf.clear()
            return
        self._buf.append(byte)

    def _end(self, out: list[bytes | TooLong | Unbalanced]) -> None:
        if not self._skipping:
            out.append(bytes(self._buf))
        self._buf.clear()
        self._depth = 0
        self._scalar = False
        self._in_string = False
        self._escape = False
        self._skipping = False

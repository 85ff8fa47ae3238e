"""Framing of the gdb remote serial protocol: ``$data#ck`` packets, acks, ``^C``.

A packet is ``$``, its data, ``#`` and two hex digits, the modulo-256 sum of the data
bytes. Inside the data ``}`` escapes the next byte (XOR 0x20); ``*`` run-length encoding
is only sent by stubs, never by gdb, and is neither produced nor accepted here. Until
``QStartNoAckMode`` both sides answer each packet with ``+`` (good) or ``-`` (bad
checksum: send again). Outside a packet a 0x03 byte is an interrupt request.

:class:`PacketReader` takes bytes as they arrive and yields events; it bounds a
packet's data at :data:`MAX_PACKET` bytes (a longer one is dropped and reported as an
error event, so a client can never make the stub hold unbounded memory). Not
thread-safe: one reader per connection, fed by the connection's thread.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The largest packet data accepted (also announced as ``PacketSize``): room for a ``G``
#: of any register file here and an ``X``/``M`` of a few KiB.
MAX_PACKET = 16384
INTERRUPT = 0x03


@dataclass(frozen=True, slots=True)
class Packet:
    """A packet's data (escapes undone); ``ok`` is False when its checksum was wrong."""

    data: bytes
    ok: bool = True


@dataclass(frozen=True, slots=True)
class Interrupt:
    """The client pressed Ctrl-C (a 0x03 byte outside a packet)."""


@dataclass(frozen=True, slots=True)
class Ack:
    """``+`` (``good``) or ``-`` from the client."""

    good: bool


@dataclass(frozen=True, slots=True)
class Oversized:
    """A packet longer than :data:`MAX_PACKET` was dropped."""

    length: int


Event = Packet | Interrupt | Ack | Oversized


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape ``$ # } *`` for the wire (binary replies such as ``qXfer``)."""
    out = bytearray()
    for b in data:
        if b in (0x23, 0x24, 0x7D, 0x2A):
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def frame(data: bytes) -> bytes:
    """``$data#ck`` of already escaped ``data``."""
    return b"$" + data + b"#" + b"%02x" % checksum(data)


class PacketReader:
    """Turns the client's byte stream into events (see the module doc)."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._state = "idle"      # idle, data, escape, ck1, ck2
        self._data = bytearray()
        self._raw_sum = 0
        self._ck = 0
        self._length = 0
        self._over = False

    def feed(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        for b in chunk:
            state = self._state
            if state == "idle":
                if b == 0x24:  # $
                    self._state = "data"
                    self._data.clear()
                    self._raw_sum = 0
                    self._length = 0
                    self._over = False
                elif b == INTERRUPT:
                    events.append(Interrupt())
                elif b in (0x2B, 0x2D):  # + -
                    events.append(Ack(b == 0x2B))
                # anything else between packets is noise and ignored
            elif state in ("data", "escape"):
                if b == 0x23 and state == "data":  # '#'
                    self._state = "ck1"
                    continue
                self._raw_sum += b
                self._length += 1
                if state == "escape":
                    self._state = "data"
                    b ^= 0x20
                elif b == 0x7D:
                    self._state = "escape"
                    continue
                if len(self._data) >= self.max_packet:
                    self._over = True
                else:
                    self._data.append(b)
            elif state == "ck1":
                self._ck = _hexval(b) << 4
                self._state = "ck2"
            else:
                self._ck |= _hexval(b)
                self._state = "idle"
                if self._over:
                    events.append(Oversized(self._length))
                else:
                    ok = self._ck == (self._raw_sum & 0xFF)
                    events.append(Packet(bytes(self._data), ok))
        return events


def _hexval(b: int) -> int:
    """A hex digit's value; a non-digit gives 0x100, which no checksum matches."""
    if 0x30 <= b <= 0x39:
        return b - 0x30
    if 0x61 <= b <= 0x66:
        return b - 0x57
    if 0x41 <= b <= 0x46:
        return b - 0x37
    return 0x100

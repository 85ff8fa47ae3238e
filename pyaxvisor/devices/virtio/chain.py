"""Descriptor chains: what a device gets from one available-ring entry.

A chain (virtio 1.2 §2.7.5) is a list of guest buffers, the device-readable ones
first, then the device-writable ones. :class:`DescriptorChain` keeps the two
lists as :class:`BufferList` objects, each of which a device reads or writes as
one byte stream: virtio 1.x devices may not assume how the driver split a
request across descriptors (§2.6.4, message framing), so a 16-byte header may
arrive as one descriptor or as four.

Every buffer in a chain was checked to lie inside guest RAM when the chain was
popped (:mod:`pyaxvisor.devices.virtio.queue`); reads and writes still go
through :class:`~pyaxvisor.devices.virtio.memory.GuestRam`, so a chain can never
reach anything else. Chains are immutable and may be handed to another thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from pyaxvisor.devices.virtio.memory import GuestRam
from pyaxvisor.errors import InvalidInput


class Buffer(NamedTuple):
    """One guest buffer: ``length`` bytes at guest-physical ``addr``."""

    addr: int
    length: int


class BufferList:
    """Guest buffers in chain order, seen as one byte stream of :attr:`total` bytes.
    Kept as two tuples, the addresses and the lengths (:meth:`of` builds one from
    them without making a :class:`Buffer` per buffer; :attr:`buffers` makes them)."""

    __slots__ = ("addrs", "lengths", "total")

    def __init__(self, buffers: tuple[Buffer, ...] | tuple[tuple[int, int], ...] = ()) -> None:
        self.addrs: tuple[int, ...] = tuple(b[0] for b in buffers)
        self.lengths: tuple[int, ...] = tuple(b[1] for b in buffers)
        self.total = sum(self.lengths)

    @classmethod
    def of(cls, addrs: tuple[int, ...], lengths: tuple[int, ...]) -> BufferList:
        """The buffers ``addrs[i]``, ``lengths[i]`` (same length tuples)."""
        self = cls.__new__(cls)
        self.addrs, self.lengths, self.total = addrs, lengths, sum(lengths)
        return self

    @property
    def buffers(self) -> tuple[Buffer, ...]:
        return tuple(Buffer(a, n) for a, n in zip(self.addrs, self.lengths, strict=True))

    def __len__(self) -> int:
        return len(self.addrs)

    def segments(self, offset: int, length: int, chunk: int | None = None
                 ) -> Iterator[tuple[int, int]]:
        """The ``(guest address, byte count)`` pieces that make up stream bytes
        ``[offset, offset + length)``, in order; none longer than ``chunk`` if given.
        A range past :attr:`total` is a device bug: :class:`InvalidInput`."""
        if offset < 0 or length < 0 or offset + length > self.total:
            raise InvalidInput(f"virtio: stream range [{offset}, +{length}) is outside "
                               f"{self.total} bytes of buffers")
        if chunk is not None and chunk <= 0:
            raise InvalidInput(f"virtio: chunk size {chunk} must be positive")
        if chunk is None:
            if (whole := self._whole(offset, length)) is not None:
                first, last = whole
                return zip(self.addrs[first:last], self.lengths[first:last], strict=True)
            if (inside := self._in_one(offset, length)) is not None:
                return iter((inside,))
        return self._pieces(offset, length, chunk)

    def _in_one(self, offset: int, length: int) -> tuple[int, int] | None:
        """The one piece of stream bytes ``[offset, offset + length)`` when they lie in
        the first or the last buffer (a request's header, its status byte), else
        ``None``: found without walking the buffers between."""
        lengths = self.lengths
        if not lengths or length == 0:
            return None
        if offset + length <= lengths[0]:
            return self.addrs[0] + offset, length
        start = self.total - lengths[-1]
        if offset >= start:
            return self.addrs[-1] + offset - start, length
        return None

    def columns(self, offset: int, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """:meth:`segments` of stream bytes ``[offset, offset + length)`` as two tuples,
        the addresses and the byte counts (slices of the list's own when the range is
        whole buffers, as a request's data between its header and status byte is)."""
        if offset < 0 or length < 0 or offset + length > self.total:
            raise InvalidInput(f"virtio: stream range [{offset}, +{length}) is outside "
                               f"{self.total} bytes of buffers")
        whole = self._whole(offset, length)
        if whole is not None:
            first, last = whole
            return self.addrs[first:last], self.lengths[first:last]
        pieces = list(self._pieces(offset, length, None))
        return tuple(a for a, _n in pieces), tuple(n for _a, n in pieces)

    def _whole(self, offset: int, length: int) -> tuple[int, int] | None:
        """``(first, last)`` when stream bytes ``[offset, offset + length)`` are exactly
        buffers ``first..last-1``, starting at the first or second buffer and ending at
        the last or the one before (no empty buffers); else ``None``."""
        lengths = self.lengths
        if not lengths or min(lengths) <= 0:
            return None
        first = 1 if offset == lengths[0] else 0 if offset == 0 else -1
        if first < 0:
            return None
        rest = self.total - offset - length
        last = len(lengths) if rest == 0 else len(lengths) - 1 if rest == lengths[-1] else -1
        return (first, last) if last >= first else None

    def _pieces(self, offset: int, length: int, chunk: int | None
                ) -> Iterator[tuple[int, int]]:
        pos = 0
        for buf_addr, buf_len in zip(self.addrs, self.lengths, strict=True):
            if length == 0:
                return
            end = pos + buf_len
            if offset < end:
                start = offset - pos
                n = min(buf_len - start, length)
                addr = buf_addr + start
                while n:
                    piece = n if chunk is None else min(n, chunk)
                    yield addr, piece
                    addr += piece
                    n -= piece
                    offset += piece
                    length -= piece
            pos = end

    def read(self, ram: GuestRam, offset: int, length: int, what: str) -> bytes:
        """Stream bytes ``[offset, offset + length)``, gathered from the buffers."""
        return b"".join(ram.read(addr, n, what) for addr, n in self.segments(offset, length))

    def write(self, ram: GuestRam, offset: int, data: bytes, what: str) -> int:
        """Scatter ``data`` to stream bytes ``[offset, offset + len(data))``; returns
        the byte count written."""
        view = memoryview(data)
        pos = 0
        for addr, n in self.segments(offset, len(data)):
            ram.write(addr, bytes(view[pos:pos + n]), what)
            pos += n
        return pos


@dataclass(frozen=True)
class DescriptorChain:
    """One popped chain: the head descriptor index (the used-ring ``id``), its
    device-readable then device-writable buffers, and how many descriptors the
    device walked to collect them (indirect tables included)."""

    head: int
    readable: BufferList
    writable: BufferList
    descriptors: int
    #: The queue instance the chain came from; a completion for a queue that was
    #: reset or re-created since is dropped (see ``VirtioMmio``).
    owner: object = field(default=None, compare=False, repr=False)

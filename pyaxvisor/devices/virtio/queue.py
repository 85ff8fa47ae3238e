"""The split virtqueue (virtio 1.2 §2.7), device side.

Guest memory layout for a queue of ``size`` entries (all fields little-endian):

=================  =====  ==========================================================
part               align  contents
=================  =====  ==========================================================
descriptor table   16     ``size`` x {le64 addr, le32 len, le16 flags, le16 next}
available ring     2      le16 flags, le16 idx, le16 ring[size], le16 used_event
used ring          4      le16 flags, le16 idx, {le32 id, le32 len}[size],
                          le16 avail_event
=================  =====  ==========================================================

``idx`` fields are free-running 16-bit counters; entry ``i`` lives in slot
``i % size`` (``size`` is a power of two, so the wrap at 65536 is seamless).

What the device does, and what it refuses (every refusal is a
:class:`~pyaxvisor.devices.virtio.errors.VirtioGuestError`; the transport turns
it into DEVICE_NEEDS_RESET):

* :meth:`SplitQueue.pop` takes the next available entry and walks its chain:
  it follows ``VIRTQ_DESC_F_NEXT``; with VIRTIO_F_INDIRECT_DESC negotiated, a
  descriptor with ``VIRTQ_DESC_F_INDIRECT`` points at a table of ``len / 16``
  descriptors whose chain starts at entry 0 (§2.7.5.3). Refused: a head or next
  index past the table; an available index more than ``size`` entries ahead of
  the device; more than ``size`` chains in flight; a chain of more than ``size``
  descriptors, or a walk of an indirect table longer than its ``len / 16``
  entries (a loop); an indirect descriptor without the feature, with NEXT set,
  inside an indirect table, with a length that is zero, not a multiple of 16,
  or more than :data:`MAX_INDIRECT` entries; a device-readable buffer after a
  device-writable one; any buffer or table not inside guest RAM.
* :meth:`SplitQueue.push` writes the used element (id, bytes written), then the
  used ``idx`` (in that order, as the used ring's rules in §2.7.8 require), and
  says whether the driver wants an interrupt: with VIRTIO_F_EVENT_IDX by the
  :func:`vring_need_event` rule against ``used_event``, otherwise unless the
  driver set ``VIRTQ_AVAIL_F_NO_INTERRUPT``.
* With VIRTIO_F_EVENT_IDX the device publishes ``avail_event`` = the next entry
  it will read, after each pop and before it reports the queue empty (then it
  reads ``idx`` again, so an entry added meanwhile is not missed).

Thread-safety: one lock per queue serialises :meth:`pop` and :meth:`push`, so a
vCPU thread may pop while a back-end thread pushes.
"""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

from pyaxvisor.devices.virtio.chain import Buffer, BufferList, DescriptorChain
from pyaxvisor.devices.virtio.errors import DescriptorChainError, QueueConfigError
from pyaxvisor.devices.virtio.memory import GuestRam
from pyaxvisor.devices.virtio.spec import (
    AVAIL_ALIGN,
    AVAIL_F_NO_INTERRUPT,
    DESC_ALIGN,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DESC_SIZE,
    MAX_QUEUE_SIZE,
    USED_ALIGN,
)
from pyaxvisor.errors import InvalidInput

#: Most descriptors an indirect table may hold (its length at most 512 KiB).
MAX_INDIRECT = MAX_QUEUE_SIZE

_DESC = struct.Struct("<QIHH")


#: The flags of a readable and of a writable buffer descriptor that has a next one.
_R, _W = DESC_F_NEXT, DESC_F_NEXT | DESC_F_WRITE
#: 0, 1, 2, ...: the next fields of a table walked in order.
_RANGE = tuple(range(MAX_QUEUE_SIZE + 1))


@functools.lru_cache(maxsize=64)
def _desc_table(count: int) -> struct.Struct:
    """The layout of a descriptor table of ``count`` entries."""
    return struct.Struct("<" + "QIHH" * count)

_USED_ELEM = struct.Struct("<II")


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """Whether moving an index from ``old_idx`` to ``new_idx`` crosses ``event_idx``
    (the rule of virtio 1.2 §2.7.7, "Used Buffer Notification Suppression", and
    §2.7.10 for the other direction): true when ``event_idx`` is one of the entries
    ``old_idx .. new_idx - 1``, all modulo 2^16."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


def desc_table_bytes(size: int) -> int:
    return DESC_SIZE * size


def avail_ring_bytes(size: int) -> int:
    return 6 + 2 * size


def used_ring_bytes(size: int) -> int:
    return 6 + 8 * size


class NativeOutcome(NamedTuple):
    """What a native fast path did (virtio-blk's ``_sgio.serve`` returns its fields in
    this order); see :meth:`SplitQueue.serve_native`."""

    next_avail: int          #: the queue's indices after it
    next_used: int
    served: int              #: chains taken and completed
    interrupt: int           #: the driver wants the used-buffer interrupt
    stop: int                #: why it stopped (the device's own codes)
    addrs: tuple[int, ...]   #: the guest pieces it wrote (reported already)
    lengths: tuple[int, ...]
    error: BaseException | None  #: raised by the report, for the caller to raise


NativeServe = Callable[["QueueLayout", int, int, bool], NativeOutcome]


class QueueLayout(NamedTuple):
    """Where the driver put one queue: its size and the guest addresses of the
    descriptor table, the available ring (driver area) and the used ring (device area)."""

    size: int
    desc: int
    avail: int
    used: int


def validate_layout(ram: GuestRam, layout: QueueLayout, max_size: int, name: str) -> None:
    """Refuse (:class:`QueueConfigError`, or ``GuestRangeError`` for RAM) a layout
    whose size is not a power of two in ``1..max_size``, whose parts are misaligned
    (descriptors 16, available ring 2, used ring 4) or not inside guest RAM."""
    size = layout.size
    if not 1 <= size <= max_size or size & (size - 1):
        raise QueueConfigError(f"{name}: QueueNum {size} is not a power of two in "
                               f"1..{max_size}")
    for what, addr, align in (("QueueDesc", layout.desc, DESC_ALIGN),
                              ("QueueDriver (available ring)", layout.avail, AVAIL_ALIGN),
                              ("QueueDevice (used ring)", layout.used, USED_ALIGN)):
        if addr % align:
            raise QueueConfigError(f"{name}: {what} {addr:#x} is not {align}-byte aligned")
    ram.check(layout.desc, desc_table_bytes(size), f"{name}: descriptor table")
    ram.check(layout.avail, avail_ring_bytes(size), f"{name}: available ring")
    ram.check(layout.used, used_ring_bytes(size), f"{name}: used ring")


class SplitQueue:
    """The device side of one split virtqueue the driver made ready.

    ``event_idx`` / ``indirect``: whether VIRTIO_F_EVENT_IDX / VIRTIO_F_INDIRECT_DESC
    were negotiated. ``name`` prefixes error messages. The layout is validated here
    (:func:`validate_layout`); the counters start at 0, as after a reset.
    """

    def __init__(self, ram: GuestRam, layout: QueueLayout, *, max_size: int = MAX_QUEUE_SIZE,
                 event_idx: bool = False, indirect: bool = False, name: str = "virtqueue"
                 ) -> None:
        validate_layout(ram, layout, min(max_size, MAX_QUEUE_SIZE), name)
        self.ram = ram
        self.layout = layout
        self.size = layout.size
        self.event_idx = event_idx
        self.indirect = indirect
        self.name = name
        #: The free-running index of the next available entry the device reads.
        self.next_avail = 0
        #: The free-running index of the next used entry the device writes.
        self.next_used = 0
        #: Chains popped and not yet pushed.
        self.in_flight = 0
        self._lock = threading.Lock()

    # -- ring fields -------------------------------------------------------------------
    def _avail_idx(self) -> int:
        return self.ram.read_u16(self.layout.avail + 2, f"{self.name}: available ring idx")

    def _set_avail_event(self, value: int) -> None:
        self.ram.write_u16(self.layout.used + 4 + 8 * self.size, value,
                           f"{self.name}: used ring avail_event", report=False)

    def _pending(self) -> int:
        avail_idx = self._avail_idx()
        pending = (avail_idx - self.next_avail) & 0xFFFF
        if pending > self.size:
            raise DescriptorChainError(
                f"{self.name}: available idx {avail_idx} is {pending} entries ahead of the "
                f"device's {self.next_avail}, more than the queue size {self.size}")
        return pending

    # -- popping -------------------------------------------------------------------------
    def pop(self) -> DescriptorChain | None:
        """The next available chain, or ``None`` when the driver has made none."""
        with self._lock:
            pending = self._pending()
            if pending == 0:
                if not self.event_idx:
                    return None
                self._set_avail_event(self.next_avail)
                if self._pending() == 0:
                    return None
            if self.in_flight >= self.size:
                raise DescriptorChainError(
                    f"{self.name}: the driver made more chains available than the queue "
                    f"size {self.size} while {self.in_flight} are still in flight")
            slot = self.next_avail % self.size
            head = self.ram.read_u16(self.layout.avail + 4 + 2 * slot,
                                     f"{self.name}: available ring entry")
            chain = self._walk(head)
            self.next_avail = (self.next_avail + 1) & 0xFFFF
            self.in_flight += 1
            if self.event_idx:
                self._set_avail_event(self.next_avail)
            return chain

    def _walk(self, head: int) -> DescriptorChain:
        name, size = self.name, self.size
        if head >= size:
            raise DescriptorChainError(
                f"{name}: head descriptor index {head} is past the queue size {size}")
        readable: list[Buffer] = []
        writable: list[Buffer] = []
        index, total = head, 0
        while True:
            total += 1
            if total > size:
                raise DescriptorChainError(
                    f"{name}: chain from head {head} runs past {size} descriptors "
                    "(a loop in the next fields?)")
            addr, length, flags, nxt = _DESC.unpack(
                self.ram.read(self.layout.desc + DESC_SIZE * index, DESC_SIZE,
                              f"{name}: descriptor {index}"))
            if flags & DESC_F_INDIRECT:
                count = self._indirect_len(index, length, flags, nested=False)
                table = self.ram.read(addr, length, f"{name}: indirect table of descriptor "
                                                    f"{index}")
                fields = _desc_table(count).unpack(table)
                if not readable and not writable:  # the usual: a chain of one indirect
                    lists = self._sequential(fields, count)
                    if lists is not None:
                        return DescriptorChain(head, *lists, total + count, owner=self)
                total += self._walk_table(head, fields, count, readable, writable)
                break
            self._take(head, index, addr, length, flags, readable, writable, "")
            if not flags & DESC_F_NEXT:
                break
            if nxt >= size:
                raise DescriptorChainError(
                    f"{name}: descriptor {index} has next {nxt}, past the queue size {size}")
            index = nxt
        return DescriptorChain(head, BufferList(tuple(readable)), BufferList(tuple(writable)),
                               total, owner=self)

    def _take(self, head: int, index: int, addr: int, length: int, flags: int,
              readable: list[Buffer], writable: list[Buffer], where: str) -> None:
        """Check one buffer descriptor (``where``: "" or "indirect ") and add it."""
        if not self.ram.contains(addr, length):
            self.ram.check(addr, length, f"{self.name}: buffer of {where}descriptor {index}")
        if flags & DESC_F_WRITE:
            writable.append(tuple.__new__(Buffer, (addr, length)))
        elif writable:
            raise DescriptorChainError(
                f"{self.name}: device-readable descriptor {index} follows a device-writable "
                f"one in the chain from head {head}")
        else:
            readable.append(tuple.__new__(Buffer, (addr, length)))

    def _walk_table(self, head: int, fields: tuple[int, ...], count: int,
                    readable: list[Buffer], writable: list[Buffer]) -> int:
        """Walk an indirect table of ``count`` descriptors (``fields``: unpacked, four
        per entry) from entry 0; the descriptors walked. The same rules as the ring's,
        plus no indirect descriptor inside (§2.7.5.3.1)."""
        name = self.name
        contains = self.ram.contains
        index, walked = 0, 0
        while True:
            walked += 1
            if walked > count:
                raise DescriptorChainError(
                    f"{name}: indirect table from head {head} runs past {count} descriptors "
                    "(a loop in the next fields?)")
            at = 4 * index
            addr, length, flags, nxt = fields[at], fields[at + 1], fields[at + 2], fields[at + 3]
            if flags & DESC_F_INDIRECT:
                self._indirect_len(index, length, flags, nested=True)
            # the common cases first: a device-writable buffer, or a device-readable one
            # before any writable, inside RAM, with no flag but NEXT (and WRITE)
            if not flags & ~(DESC_F_WRITE | DESC_F_NEXT) and contains(addr, length) and (
                    flags & DESC_F_WRITE or not writable):
                (writable if flags & DESC_F_WRITE else readable).append(
                    tuple.__new__(Buffer, (addr, length)))
            else:
                self._take(head, index, addr, length, flags, readable, writable, "indirect ")
            if not flags & DESC_F_NEXT:
                return walked
            if nxt >= count:
                raise DescriptorChainError(
                    f"{name}: descriptor {index} has next {nxt}, past the indirect table "
                    f"size {count}")
            index = nxt

    def _sequential(self, fields: tuple[int, ...], count: int
                    ) -> tuple[BufferList, BufferList] | None:
        """The readable and writable buffers of the common indirect table, checked at
        once: all ``count`` entries in order (entry i's next is i + 1, NEXT on all but
        the last), no flag but NEXT and WRITE, the device-readable buffers first, every
        buffer inside one RAM range. ``None`` for anything else (refused or not): the
        entry-by-entry walk then gives the precise error. Built from C-level tuple
        operations only: this runs for every large request."""
        flags = fields[2::4]
        body, last = flags[:-1], flags[-1]
        # all but the last: NEXT (1) or NEXT|WRITE (3); the last: 0 or WRITE (2)
        if (last not in (0, DESC_F_WRITE) or body.count(_R) + body.count(_W) != count - 1
                or fields[3:-4:4] != _RANGE[1:count]):
            return None
        first_w = body.index(_W) if _W in body else (count - 1 if last else count)
        if _R in body[first_w:] or (first_w < count and not last):
            return None       # a device-readable buffer after a writable one
        addrs, lengths = fields[0::4], fields[1::4]
        if not self.ram.contains_all(addrs, lengths):
            return None
        return (BufferList.of(addrs[:first_w], lengths[:first_w]),
                BufferList.of(addrs[first_w:], lengths[first_w:]))

    def _indirect_len(self, index: int, length: int, flags: int, *, nested: bool) -> int:
        """Check an indirect descriptor; the number of entries of its table."""
        name = self.name
        if not self.indirect:
            raise DescriptorChainError(f"{name}: descriptor {index} is indirect but "
                                       "VIRTIO_F_INDIRECT_DESC was not negotiated")
        if nested:
            raise DescriptorChainError(f"{name}: indirect descriptor {index} inside an "
                                       "indirect table")
        if flags & DESC_F_NEXT:
            raise DescriptorChainError(f"{name}: descriptor {index} sets both INDIRECT "
                                       "and NEXT")
        if length == 0 or length % DESC_SIZE:
            raise DescriptorChainError(f"{name}: indirect table length {length} of "
                                       f"descriptor {index} is not a positive multiple of 16")
        if length // DESC_SIZE > MAX_INDIRECT:
            raise DescriptorChainError(f"{name}: indirect table of descriptor {index} has "
                                       f"{length // DESC_SIZE} entries, more than "
                                       f"{MAX_INDIRECT}")
        return length // DESC_SIZE

    # -- native serving --------------------------------------------------------------------
    def serve_native(self, serve: NativeServe) -> NativeOutcome:
        """Let native code pop, carry out and complete chains in the ring itself, from
        :attr:`next_avail` and :attr:`next_used` on (under the queue's lock, so nothing
        else pops or pushes meanwhile): ``serve(layout, next_avail, next_used,
        event_idx)`` returns the new indices first; chains it completes were never in
        flight here. A device's fast path for the chains of one common shape
        (virtio-blk's ``_sgio.serve``); it leaves any other chain for :meth:`pop`."""
        with self._lock:
            outcome = serve(self.layout, self.next_avail, self.next_used, self.event_idx)
            self.next_avail, self.next_used = outcome.next_avail, outcome.next_used
            return outcome

    # -- pushing ---------------------------------------------------------------------------
    def push(self, chain: DescriptorChain, written: int) -> bool:
        """Return ``chain`` to the driver with ``written`` bytes written into its
        device-writable buffers. Returns whether the driver wants an interrupt for it.
        ``chain`` must come from this queue's :meth:`pop` and ``written`` must not
        exceed its writable bytes (device bugs: :class:`InvalidInput`)."""
        return self.push_many(((chain, written),))

    def push_many(self, completions: Sequence[tuple[DescriptorChain, int]]) -> bool:
        """Return several chains at once, in order: their used elements, then one
        write of the used ring's idx. Returns whether the driver wants an interrupt for
        any of them (with VIRTIO_F_EVENT_IDX: whether the used index passed used_event
        anywhere in the batch, §2.7.10.2). Each pair is checked as :meth:`push`'s
        arguments before anything is written."""
        for chain, written in completions:
            if chain.owner is not self:
                raise InvalidInput(f"{self.name}: chain {chain.head} was not popped from "
                                   "this queue")
            if not 0 <= written <= chain.writable.total:
                raise InvalidInput(f"{self.name}: {written} bytes written to a chain with "
                                   f"{chain.writable.total} writable bytes")
        if not completions:
            return False
        with self._lock:
            old = new = self.next_used
            used, size, ram = self.layout.used, self.size, self.ram
            for chain, written in completions:
                ram.write(used + 4 + 8 * (new % size), _USED_ELEM.pack(chain.head, written),
                          f"{self.name}: used ring element", report=False)
                new = (new + 1) & 0xFFFF
            ram.write_u16(used + 2, new, f"{self.name}: used ring idx", report=False)
            self.next_used = new
            self.in_flight = max(0, self.in_flight - len(completions))
            return self._wants_interrupt(old, new)

    def _wants_interrupt(self, old: int, new: int) -> bool:
        avail = self.layout.avail
        if self.event_idx:
            used_event = self.ram.read_u16(avail + 4 + 2 * self.size,
                                           f"{self.name}: available ring used_event")
            return vring_need_event(used_event, new, old)
        flags = self.ram.read_u16(avail, f"{self.name}: available ring flags")
        return not flags & AVAIL_F_NO_INTERRUPT

"""A test-side virtio driver: fake guest RAM and what a guest driver does through
the virtio-mmio registers and the split-queue memory layout (virtio 1.2 §2.7, §4.2.3).

* :class:`FakeRam` — guest RAM as a bytearray at :data:`RAM_BASE` (1 MiB). Any
  access outside it is recorded in :attr:`FakeRam.violations` and raises a
  ``RuntimeError`` (not a pyaxvisor error, so nothing in the device can swallow it):
  tests assert the device never reaches outside RAM.
* :class:`DriverQueue` — the driver side of one split queue: builds descriptor
  chains (direct or through an indirect table), publishes them in the available
  ring, reads the used ring. Works against a bare ``SplitQueue`` or through the
  transport.
* :class:`Driver` — the register side: handshake, feature negotiation, queue set-up,
  notify, interrupt acknowledge.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pyaxvisor.devices.virtio import mmio as regs
from pyaxvisor.devices.virtio.mmio import VirtioMmio
from pyaxvisor.devices.virtio.spec import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    F_VERSION_1,
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
)
from pyaxvisor.vcpu.width import AccessWidth

RAM_BASE = 0x4000_0000
RAM_SIZE = 1 << 20
D = AccessWidth.Dword

_DESC = struct.Struct("<QIHH")


class FakeRam:
    """Guest RAM: ``size`` bytes at ``base``; a bump allocator hands out pieces."""

    def __init__(self, base: int = RAM_BASE, size: int = RAM_SIZE) -> None:
        self.base = base
        self.size = size
        self.data = bytearray(size)
        self.violations: list[tuple[str, int, int]] = []
        self.reads = 0
        self.writes = 0
        self._next = base

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [(self.base, self.size)]

    def _offset(self, what: str, gpa: int, length: int) -> int:
        if not (self.base <= gpa and gpa + length <= self.base + self.size):
            self.violations.append((what, gpa, length))
            raise RuntimeError(f"device {what} outside RAM: {gpa:#x} +{length:#x}")
        return gpa - self.base

    def read(self, gpa: int, length: int) -> bytes:
        self.reads += 1
        off = self._offset("read", gpa, length)
        return bytes(self.data[off:off + length])

    def write(self, gpa: int, data: bytes) -> None:
        self.writes += 1
        off = self._offset("write", gpa, len(data))
        self.data[off:off + len(data)] = data

    def view(self, gpa: int, length: int) -> memoryview:
        off = self._offset("view", gpa, length)
        return memoryview(self.data)[off:off + length]

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self._next + align - 1) & ~(align - 1)
        if addr + size > self.base + self.size:
            raise MemoryError("fake RAM exhausted (a test allocates too much)")
        self._next = addr + size
        return addr

    def u16(self, gpa: int) -> int:
        return int.from_bytes(self.read(gpa, 2), "little")

    def set_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, (value & 0xFFFF).to_bytes(2, "little"))


class CopyingRam(FakeRam):
    """Guest RAM without zero-copy views: devices read and write it by copies."""

    view = None


@dataclass
class Request:
    """A chain the driver made available: its head and its buffers."""

    head: int
    readable: list[tuple[int, int]]
    writable: list[tuple[int, int]]
    descriptors: list[int] = field(default_factory=list)


class DriverQueue:
    """The driver side of a split queue of ``size`` entries laid out in ``ram``.

    Descriptors are handed out from a free list and returned when their chain
    comes back in the used ring (:meth:`collect`). ``start`` presets the driver's
    free-running indices (to test the 16-bit wrap; the device side must be preset
    to the same value).
    """

    def __init__(self, ram: FakeRam, size: int, *, index: int = 0, start: int = 0,
                 buffer_arena: int = 64 << 10) -> None:
        self.ram = ram
        self.size = size
        self.index = index
        self.desc = ram.alloc(16 * size, 16)
        self.avail = ram.alloc(6 + 2 * size, 2)
        self.used = ram.alloc(6 + 8 * size, 4)
        self.avail_idx = start & 0xFFFF
        self.last_used = start & 0xFFFF
        ram.set_u16(self.avail + 2, self.avail_idx)
        ram.set_u16(self.used + 2, self.last_used)
        self.free = list(range(size))
        self.pending: dict[int, Request] = {}
        self._arena = ram.alloc(buffer_arena, 16)
        self._arena_size = buffer_arena
        self._arena_pos = 0

    # -- buffers -------------------------------------------------------------------------
    def buffer(self, size: int) -> int:
        """Guest memory for one buffer (a ring arena: old buffers get reused)."""
        if size > self._arena_size:
            raise MemoryError(f"buffer of {size} bytes does not fit the arena")
        if self._arena_pos + size > self._arena_size:
            self._arena_pos = 0
        addr = self._arena + self._arena_pos
        self._arena_pos = (self._arena_pos + size + 15) & ~15
        return addr

    # -- descriptors ---------------------------------------------------------------------
    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
                   table: int | None = None) -> None:
        base = self.desc if table is None else table
        self.ram.write(base + 16 * i, _DESC.pack(addr, length, flags, nxt))

    def take_desc(self, n: int) -> list[int]:
        if n > len(self.free):
            raise MemoryError(f"{n} descriptors wanted, {len(self.free)} free")
        taken, self.free = self.free[:n], self.free[n:]
        return taken

    def add(self, readable: list[bytes] = (), writable: list[int] = (), *,
            indirect: bool = False, publish: bool = True) -> Request:
        """Build a chain: device-readable buffers holding ``readable``, then
        device-writable buffers of the ``writable`` sizes; publish it."""
        bufs: list[tuple[int, int, int]] = []
        req = Request(0, [], [])
        for data in readable:
            addr = self.buffer(len(data))
            self.ram.write(addr, data)
            bufs.append((addr, len(data), 0))
            req.readable.append((addr, len(data)))
        for size in writable:
            addr = self.buffer(size)
            self.ram.write(addr, b"\xEE" * size)
            bufs.append((addr, size, DESC_F_WRITE))
            req.writable.append((addr, size))
        if indirect:
            table = self.ram.alloc(16 * len(bufs), 16)
            for i, (addr, length, flags) in enumerate(bufs):
                more = DESC_F_NEXT if i + 1 < len(bufs) else 0
                self.write_desc(i, addr, length, flags | more, i + 1, table=table)
            (head,) = self.take_desc(1)
            self.write_desc(head, table, 16 * len(bufs), DESC_F_INDIRECT)
            req.descriptors = [head]
        else:
            ids = self.take_desc(len(bufs))
            for i, (addr, length, flags) in enumerate(bufs):
                more = DESC_F_NEXT if i + 1 < len(bufs) else 0
                self.write_desc(ids[i], addr, length, flags | more,
                                ids[i + 1] if more else 0)
            req.descriptors = ids
        req.head = req.descriptors[0]
        self.pending[req.head] = req
        if publish:
            self.publish(req.head)
        return req

    def publish(self, head: int) -> None:
        """Put ``head`` in the next available-ring slot and bump the available idx."""
        self.ram.set_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.ram.set_u16(self.avail + 2, self.avail_idx)

    # -- rings ---------------------------------------------------------------------------
    @property
    def used_idx(self) -> int:
        return self.ram.u16(self.used + 2)

    @property
    def avail_event(self) -> int:
        return self.ram.u16(self.used + 4 + 8 * self.size)

    def set_used_event(self, value: int) -> None:
        self.ram.set_u16(self.avail + 4 + 2 * self.size, value)

    def set_avail_flags(self, flags: int) -> None:
        self.ram.set_u16(self.avail, flags)

    def collect(self) -> list[tuple[int, int]]:
        """The used elements ``(id, len)`` the device added since the last call;
        their descriptors go back to the free list."""
        out = []
        while self.last_used != self.used_idx:
            slot = self.used + 4 + 8 * (self.last_used % self.size)
            head, length = struct.unpack("<II", self.ram.read(slot, 8))
            out.append((head, length))
            req = self.pending.pop(head, None)
            if req is not None:
                self.free.extend(req.descriptors)
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def written(self, req: Request) -> bytes:
        """What is now in a request's writable buffers, concatenated."""
        return b"".join(self.ram.read(a, n) for a, n in req.writable)


class Driver:
    """What a guest driver does through the registers of ``dev``."""

    def __init__(self, dev: VirtioMmio, ram: FakeRam) -> None:
        self.dev = dev
        self.ram = ram
        self.queues: dict[int, DriverQueue] = {}

    def rd(self, offset: int, width: AccessWidth = D) -> int:
        return self.dev.read(offset, width, 0)

    def wr(self, offset: int, value: int, width: AccessWidth = D) -> None:
        self.dev.write(offset, width, value, 0)

    @property
    def status(self) -> int:
        return self.rd(regs.STATUS)

    def device_features(self) -> int:
        out = 0
        for sel in range(4):
            self.wr(regs.DEVICE_FEATURES_SEL, sel)
            out |= self.rd(regs.DEVICE_FEATURES) << (32 * sel)
        return out

    def write_features(self, features: int) -> None:
        for sel in range(4):
            self.wr(regs.DRIVER_FEATURES_SEL, sel)
            self.wr(regs.DRIVER_FEATURES, (features >> (32 * sel)) & 0xFFFF_FFFF)

    def negotiate(self, features: int | None = None) -> bool:
        """Reset, ACKNOWLEDGE, DRIVER, write ``features`` (default: all offered),
        FEATURES_OK; whether the device kept FEATURES_OK."""
        self.wr(regs.STATUS, 0)
        self.wr(regs.STATUS, STATUS_ACKNOWLEDGE)
        self.wr(regs.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        offered = self.device_features()
        self.write_features(offered if features is None else features)
        self.wr(regs.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        return bool(self.status & STATUS_FEATURES_OK)

    def setup_queue(self, index: int, size: int | None = None, **kw: int) -> DriverQueue:
        """Select queue ``index``, lay it out in RAM, write its registers, QueueReady=1."""
        self.wr(regs.QUEUE_SEL, index)
        size = size or self.rd(regs.QUEUE_NUM_MAX)
        q = DriverQueue(self.ram, size, index=index, **kw)
        self.wr(regs.QUEUE_NUM, size)
        for low, addr in ((regs.QUEUE_DESC_LOW, q.desc), (regs.QUEUE_DRIVER_LOW, q.avail),
                          (regs.QUEUE_DEVICE_LOW, q.used)):
            self.wr(low, addr & 0xFFFF_FFFF)
            self.wr(low + 4, addr >> 32)
        self.wr(regs.QUEUE_READY, 1)
        self.queues[index] = q
        return q

    def start(self, features: int | None = None, queue_sizes: dict[int, int] | None = None,
              **queue_kw: int) -> dict[int, DriverQueue]:
        """The whole initialisation (§3.1.1): negotiate, set up the queues (every
        queue the device has, at its maximum size, unless ``queue_sizes``; ``queue_kw``
        go to :class:`DriverQueue`), DRIVER_OK."""
        assert self.negotiate(features), "the device refused the features"
        if queue_sizes is None:
            queue_sizes = {}
            for i in range(len(self.dev.backend.queue_max_sizes)):
                queue_sizes[i] = 0
        for index, size in queue_sizes.items():
            self.setup_queue(index, size or None, **queue_kw)
        self.wr(regs.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
                | STATUS_DRIVER_OK)
        return self.queues

    def notify(self, index: int = 0) -> None:
        self.wr(regs.QUEUE_NOTIFY, index)

    def ack(self) -> int:
        """Read InterruptStatus and acknowledge every bit in it (what an ISR does)."""
        pending = self.rd(regs.INTERRUPT_STATUS)
        self.wr(regs.INTERRUPT_ACK, pending)
        return pending


#: The features a minimal virtio 1.x driver accepts.
VERSION_1 = 1 << F_VERSION_1

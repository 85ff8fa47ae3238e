"""virtio-blk (virtio 1.2 §5.2) over a raw image file: device ID 2, one queue.

Features offered: VIRTIO_BLK_F_SIZE_MAX (1), VIRTIO_BLK_F_SEG_MAX (2),
VIRTIO_BLK_F_BLK_SIZE (6), VIRTIO_BLK_F_FLUSH (9); VIRTIO_BLK_F_RO (5) for a
read-only image; on a read-write one VIRTIO_BLK_F_WRITE_ZEROES (14) always (zeroes
can always be written) and VIRTIO_BLK_F_DISCARD (13) when the host can deallocate
the image's blocks (probed at open, see
:mod:`~pyaxvisor.devices.virtio.blk_image`).

Configuration space (``struct virtio_blk_config``, little-endian, 60 bytes):
capacity (le64, 512-byte sectors) at 0x00, size_max (le32) at 0x08, seg_max (le32)
at 0x0c, blk_size (le32, 512) at 0x14; with F_DISCARD, max_discard_sectors (0x24),
max_discard_seg (0x28), discard_sector_alignment (0x2c); with F_WRITE_ZEROES,
max_write_zeroes_sectors (0x30), max_write_zeroes_seg (0x34) and the byte
write_zeroes_may_unmap (0x38: 1 if a write zeroes with UNMAP punches a hole). The
limits are QEMU's defaults: :data:`MAX_DISCARD_SECTORS` sectors and one segment per
request, alignment 1 (blk_size / 512). Every other field (geometry, topology,
writeback, num_queues) is 0: their features are not offered.

Requests: a chain's device-readable bytes start with the 16-byte header ``{le32
type, le32 reserved, le64 sector}``, OUT data follows it; the device-writable bytes
hold IN / GET_ID data and end with the one status byte. The framing does not
depend on how the driver split them into descriptors. Outcomes:

* ``VIRTIO_BLK_T_IN`` (0) / ``VIRTIO_BLK_T_OUT`` (1): the data length must be a
  multiple of 512, at most :data:`MAX_REQUEST_BYTES` (seg_max x size_max), and the
  sectors inside the capacity; OUT on a read-only image is refused: otherwise
  VIRTIO_BLK_S_IOERR with no data moved. A host I/O error is IOERR too.
  Data moves straight between the image and guest RAM (``preadv``/``pwritev`` on
  views of the request's buffers) when the guest memory offers views; otherwise it
  is copied in pieces of at most 1 MiB, so one request never holds more host
  memory than that.
* ``VIRTIO_BLK_T_FLUSH`` (4): ``fsync`` of the image, then the completion.
* ``VIRTIO_BLK_T_GET_ID`` (8): the serial, padded with NULs to 20 bytes (cut to the
  data area if the driver gave less).
* ``VIRTIO_BLK_T_DISCARD`` (11) / ``VIRTIO_BLK_T_WRITE_ZEROES`` (13): the OUT data
  is an array of 16-byte segments ``{le64 sector, le32 num_sectors, le32 flags}``.
  In this order: a read-only image is IOERR; a type whose feature is not offered
  is UNSUPP; data that is empty or not whole segments is IOERR; more segments
  than max_*_seg is UNSUPP (as QEMU; nothing past them is read); a flag other than
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP (bit 0), or UNMAP on a discard, is UNSUPP (the
  specification's MUST); num_sectors over max_*_sectors or a range past the
  capacity is IOERR. Every segment is checked before any is carried out, so a
  refused request leaves the image untouched. Discard punches a hole; write
  zeroes punches one too when UNMAP is set and holes are possible, and otherwise
  zeroes the range keeping it allocated (ZERO_RANGE, BLKZEROOUT, or zeroes
  written). A host error is IOERR; a segment of 0 sectors does nothing.
* any other type: VIRTIO_BLK_S_UNSUPP.

The used length is the bytes written to the writable buffers: data plus the status
byte. A chain with less than 16 readable bytes or no writable byte has nowhere to
put a status: that is a guest error (DEVICE_NEEDS_RESET).

Threads: I/O that may block runs off the vCPU threads, on the device's own I/O
thread (``virtio-blk <file>``, started at the first notification), while the vCPU
goes on. A QueueNotify first tries the available requests on the notifying vCPU
thread without blocking: a read whose data the host has in memory (``preadv2`` with
``RWF_NOWAIT``), GET_ID and refused requests complete at once (Linux's io_uring
likewise tries a request without blocking before it hands it to a worker). The first
request that could block (any write, flush, discard or write zeroes; a read of data
not cached) goes to the I/O thread with every request after it, and while the thread
has work every notification goes to it, so requests start in the order the driver
made them available. The thread carries each out (:meth:`VirtioBlk.handle`) and
completes it (``queue.push_many``, which raises the interrupt through the board's
interrupt controller from this thread). Completions of requests carried out back to
back are published together, one used-index update and at most one interrupt
(:class:`_Completions`: a completion waits only for requests of at most
:data:`COALESCE_BYTES` behind it, at most :data:`COALESCE_MAX` together): a 1 MiB
``dd`` block is a 254-page and a 2-page request, and the guest then takes one
interrupt for the pair instead of two. A reset of the device waits for the request
under way (no data reaches guest memory after the driver's reset returns, as QEMU
drains its requests on reset); :meth:`VirtioBlk.drain` waits until nothing is
pending or under way; :meth:`VirtioBlk.close` finishes the request under way, stops
the thread and closes the image. With ``iothread=False`` requests run on the
notifying vCPU thread instead.

Native fast path: the requests Linux's driver makes for reads and writes (one indirect
table: the 16-byte header, the data pieces, the status byte; every piece in the one
RAM range of the guest) are taken from the ring, carried out and completed by
``_sgio.serve`` in C with the GIL released, on whichever thread serves the queue (the
vCPU with ``nowait``: reads of cached data only; the I/O thread: the rest). It stops at
the first request of any other shape, which the Python path above serves (and refuses
with the precise error when it breaks a rule), and applies the same outcomes and the
same completion batches; ``native=False`` turns it off. What a read wrote is reported
to the CPUs (``written_columns``) before the used index shows the request done.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque

from pyaxvisor.devices.virtio import _sgio
from pyaxvisor.devices.virtio.backend import QueueHandle, VirtioBackend
from pyaxvisor.devices.virtio.blk_image import SECTOR_SIZE, RawImage
from pyaxvisor.devices.virtio.chain import DescriptorChain
from pyaxvisor.devices.virtio.errors import BadRequest, VirtioGuestError
from pyaxvisor.devices.virtio.memory import GuestRam
from pyaxvisor.devices.virtio.queue import NativeOutcome, QueueLayout
from pyaxvisor.devices.virtio.spec import DEVICE_ID_BLOCK
from pyaxvisor.errors import InvalidInput

# Feature bits.
F_SIZE_MAX = 1
F_SEG_MAX = 2
F_RO = 5
F_BLK_SIZE = 6
F_FLUSH = 9
F_DISCARD = 13
F_WRITE_ZEROES = 14

# Request types.
T_IN = 0
T_OUT = 1
T_FLUSH = 4
T_GET_ID = 8
T_DISCARD = 11
T_WRITE_ZEROES = 13

#: Discard / write zeroes segment flag: the range may be deallocated.
WRITE_ZEROES_FLAG_UNMAP = 1

# Status byte values.
S_OK = 0
S_IOERR = 1
S_UNSUPP = 2

#: QueueNumMax of the request queue.
QUEUE_SIZE = 256
#: Data segments per request the driver may use: the queue size less the header
#: and status descriptors.
SEG_MAX = QUEUE_SIZE - 2
#: Largest data segment the driver may use.
SIZE_MAX = 1 << 20
#: Largest data transfer of one request.
MAX_REQUEST_BYTES = SEG_MAX * SIZE_MAX
#: Largest piece of data moved between the image and guest RAM at once.
IO_CHUNK = 1 << 20
#: Length of the GET_ID answer.
ID_BYTES = 20
#: Size of the configuration space.
CONFIG_SIZE = 60
#: Largest num_sectors of one discard / write zeroes segment: QEMU's default
#: (``BDRV_REQUEST_MAX_SECTORS``, the most sectors whose byte count fits a signed
#: 32-bit int: 2 GiB less 512 bytes).
MAX_DISCARD_SECTORS = MAX_WRITE_ZEROES_SECTORS = (2**31 - 1) // SECTOR_SIZE
#: Segments per discard / write zeroes request: one, as QEMU (Linux sends one
#: range per request unless the device takes more).
MAX_DISCARD_SEG = MAX_WRITE_ZEROES_SEG = 1
#: discard_sector_alignment: blk_size in sectors, as QEMU.
DISCARD_SECTOR_ALIGNMENT = 1

#: A finished request's completion waits for the next request only if that one has
#: at most this many bytes of buffers (header, data and status)...
COALESCE_BYTES = 64 * 1024
#: ... and at most this many completions wait together.
COALESCE_MAX = 16

#: Why ``_sgio.serve`` stopped: the ring is empty, the next request is not of its
#: shape (Python serves it), it would wait (nowait), it published a batch.
_STOP_EMPTY, _STOP_OTHER, _STOP_WAIT, _STOP_LIMIT = range(4)

_HEADER = struct.Struct("<IIQ")
#: Request types that always go to the I/O thread (T_IN may complete without it).
_MAY_BLOCK = frozenset({T_OUT, T_FLUSH, T_DISCARD, T_WRITE_ZEROES})
#: One discard / write zeroes segment: sector, num_sectors, flags.
_SEGMENT = struct.Struct("<QII")


class _Completions:
    """Completions of requests carried out back to back, published together
    (``push_many``: one used-index update, at most one interrupt), as a device that
    coalesces its interrupts. A completion waits only for small requests behind it:
    :meth:`before` publishes what is done before a request with more than
    :data:`COALESCE_BYTES` of buffers, or when :data:`COALESCE_MAX` are waiting, so a
    request's completion is never held for a large transfer. Not thread-safe: one per
    serving loop."""

    __slots__ = ("done", "queue")

    def __init__(self, queue: QueueHandle) -> None:
        self.queue = queue
        self.done: list[tuple[DescriptorChain, int]] = []

    def before(self, chain: DescriptorChain) -> None:
        """``chain`` is about to be carried out."""
        if self.done and (len(self.done) >= COALESCE_MAX or
                          chain.readable.total + chain.writable.total > COALESCE_BYTES):
            self.publish()

    def add(self, chain: DescriptorChain, used: int) -> None:
        self.done.append((chain, used))

    def publish(self) -> None:
        if self.done:
            done, self.done = self.done, []
            self.queue.push_many(done)


def _default_serial(path: str) -> bytes:
    name = os.path.basename(path).encode("ascii", "replace")
    return name[:ID_BYTES]


class VirtioBlk(VirtioBackend):
    """A block device backed by the raw image at ``path`` (see
    :class:`~pyaxvisor.devices.virtio.blk_image.RawImage` for how it is opened and
    locked, and the errors that name the file). ``serial`` is what GET_ID returns
    (at most 20 ASCII bytes; default: the file's base name, cut to 20 bytes).
    ``close()`` releases the image. ``iothread``: carry requests out on the device's
    I/O thread (default) or on the notifying vCPU thread. Thread-safe: requests share
    no state but the image, whose calls are thread-safe.
    """

    name = "virtio-blk"
    device_id = DEVICE_ID_BLOCK
    queue_max_sizes = (QUEUE_SIZE,)

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False,
                 serial: str | None = None, iothread: bool = True, native: bool = True) -> None:
        if serial is None:
            ident = _default_serial(os.fspath(path))
        else:
            try:
                ident = serial.encode("ascii")
            except UnicodeEncodeError:
                raise InvalidInput(f"virtio-blk serial {serial!r} is not ASCII") from None
            if len(ident) > ID_BYTES:
                raise InvalidInput(f"virtio-blk serial {serial!r} is longer than {ID_BYTES} "
                                   "bytes")
        self.image = RawImage(path, read_only=read_only)
        self.read_only = read_only
        #: F_DISCARD is offered (decided at open; the image may find out later that
        #: it cannot deallocate after all, the feature stays).
        self.discard_offered = self.image.can_discard
        self.serial = ident
        self._config = self._build_config()
        self.iothread = iothread
        #: Requests of the common shape are served in native code (``_sgio.serve``).
        self.native = native
        self._work = threading.Condition()
        self._queue: QueueHandle | None = None  # notified, not yet looked at
        self._carried: deque[DescriptorChain] = deque()  # popped, for the I/O thread
        self._busy = False                       # the I/O thread is carrying requests out
        self._closing = False
        self._thread: threading.Thread | None = None

    def _build_config(self) -> bytes:
        cfg = bytearray(CONFIG_SIZE)
        struct.pack_into("<QII", cfg, 0, self.image.sectors, SIZE_MAX, SEG_MAX)
        struct.pack_into("<I", cfg, 0x14, SECTOR_SIZE)
        if self.discard_offered:
            struct.pack_into("<III", cfg, 0x24, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
                             DISCARD_SECTOR_ALIGNMENT)
        if self.image.can_write_zeroes:
            struct.pack_into("<IIB", cfg, 0x30, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG,
                             self.image.zeroes_may_unmap)
        return bytes(cfg)

    def device_features(self) -> int:
        features = (1 << F_SIZE_MAX) | (1 << F_SEG_MAX) | (1 << F_BLK_SIZE) | (1 << F_FLUSH)
        if self.discard_offered:
            features |= 1 << F_DISCARD
        if self.image.can_write_zeroes:
            features |= 1 << F_WRITE_ZEROES
        return features | (1 << F_RO) if self.read_only else features

    def config_space(self) -> bytes:
        return self._config

    def close(self) -> None:
        """Finish the request under way, stop the I/O thread, release the image."""
        with self._work:
            self._closing = True
            self._work.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.image.close()

    def reset(self) -> None:
        """The driver reset the device: forget a pending notification and wait for
        the request under way to complete (its completion is then dropped)."""
        with self._work:
            self._queue = None
            self._carried.clear()
            while self._busy:
                self._work.wait()

    def drain(self) -> None:
        """Wait until no notification is pending and no request is under way."""
        with self._work:
            while self._queue is not None or self._busy:
                self._work.wait()

    # -- requests ------------------------------------------------------------------------
    def queue_notify(self, queue: QueueHandle) -> None:
        if not self.iothread:
            self._serve(queue)
            return
        with self._work:
            if self._closing:
                return
            idle = self._queue is None and not self._busy
        chain = None
        if idle:
            done = _Completions(queue)
            try:
                while True:
                    stop = self._native(queue, done, nowait=True)
                    if stop == _STOP_EMPTY:
                        return
                    if stop == _STOP_WAIT:
                        break
                    if (chain := queue.pop()) is None:
                        return
                    done.before(chain)
                    try:
                        used = self.handle(chain, queue.ram, nowait=True)
                    except BlockingIOError:
                        break
                    done.add(chain, used)
            finally:
                done.publish()
        self._hand_over(queue, chain)

    def _hand_over(self, queue: QueueHandle, chain: DescriptorChain | None) -> None:
        """Give the I/O thread ``queue``'s requests, starting with ``chain`` if given."""
        with self._work:
            if self._closing:
                return
            if chain is not None:
                self._carried.append(chain)
            self._queue = queue
            if self._thread is None:
                self._thread = threading.Thread(target=self._io_loop, daemon=True,
                                                name=f"virtio-blk {self.image.path}")
                self._thread.start()
            self._work.notify_all()

    def _io_loop(self) -> None:
        work = self._work
        while True:
            with work:
                while self._queue is None and not self._closing:
                    work.wait()
                if self._closing:
                    return
                queue, self._queue = self._queue, None
                self._busy = True
            try:
                self._serve(queue)
            except VirtioGuestError as exc:
                queue.fail(exc)
            finally:
                with work:
                    self._busy = False
                    work.notify_all()

    def _serve(self, queue: QueueHandle) -> None:
        carried = self._carried
        done = _Completions(queue)
        try:
            while True:
                with self._work:
                    chain = carried.popleft() if carried else None
                if chain is None:
                    if self._native(queue, done, nowait=False) == _STOP_EMPTY:
                        return
                    if (chain := queue.pop()) is None:
                        return
                done.before(chain)
                done.add(chain, self.handle(chain, queue.ram))
        finally:
            done.publish()

    def _native(self, queue: QueueHandle, done: _Completions, *, nowait: bool) -> int:
        """Serve the available requests of the fast path's shape in native code
        (``_sgio.serve``: IN and OUT requests as Linux makes them) until it stops; its
        reason (:data:`_STOP_OTHER` when it is off or the guest memory is not one
        view). ``done`` (the Python path's completions) is published first. ``nowait``:
        leave writes, and reads whose data is not cached, in the ring
        (:data:`_STOP_WAIT`)."""
        if not self.native or (nowait and not self.image.nowait_reads):
            return _STOP_OTHER
        whole = queue.ram.whole_range()
        if whole is None:
            return _STOP_OTHER
        done.publish()
        base, view = whole
        fd, capacity, read_only = self.image.fileno(), self.image.sectors * SECTOR_SIZE, \
            self.read_only
        # CPUs drop stale code of what reads wrote (serve checked each piece is in `view`)
        written = queue.ram.written_in_whole_range

        def serve(layout: QueueLayout, next_avail: int, next_used: int,
                  event_idx: bool) -> NativeOutcome:
            return NativeOutcome._make(_sgio.serve(
                fd, view, base, layout.desc, layout.avail, layout.used, layout.size,
                next_avail, next_used, event_idx, capacity, MAX_REQUEST_BYTES, read_only,
                COALESCE_BYTES, nowait, COALESCE_MAX, written))

        while True:
            outcome = queue.serve_native(serve)
            if outcome is None:
                return _STOP_OTHER
            if outcome.error is not None:
                raise outcome.error  # from written(): the requests themselves are done
            if outcome.stop != _STOP_LIMIT:
                return outcome.stop

    def handle(self, chain: DescriptorChain, ram: GuestRam, *, nowait: bool = False) -> int:
        """Carry out one request; the bytes written to its writable buffers.
        Raises :class:`BadRequest` if the chain has no room for header or status.
        ``nowait``: raise :class:`BlockingIOError` instead of doing anything that may
        wait for the host's disk (the request is then not done; do it again later)."""
        what = f"{self.name} request {chain.head}"
        if chain.readable.total < _HEADER.size:
            raise BadRequest(f"{what}: {chain.readable.total} device-readable bytes, the "
                             f"header needs {_HEADER.size}")
        if chain.writable.total < 1:
            raise BadRequest(f"{what}: no device-writable byte for the status")
        kind, _reserved, sector = _HEADER.unpack(
            chain.readable.read(ram, 0, _HEADER.size, f"{what} header"))
        data_len = chain.writable.total - 1
        status, written = S_UNSUPP, 0
        if nowait and kind in _MAY_BLOCK:
            raise BlockingIOError(f"{what}: type {kind} may wait for the disk")
        if kind == T_IN:
            status, written = self._read(chain, ram, sector, data_len, what, nowait)
        elif kind == T_OUT:
            status = self._write(chain, ram, sector, chain.readable.total - _HEADER.size, what)
        elif kind == T_FLUSH:
            status = self._flush()
        elif kind == T_GET_ID:
            ident = self.serial.ljust(ID_BYTES, b"\0")[:min(ID_BYTES, data_len)]
            written = chain.writable.write(ram, 0, ident, f"{what} id")
            status = S_OK
        elif kind in (T_DISCARD, T_WRITE_ZEROES):
            status = self._discard_or_zero(chain, ram, kind == T_WRITE_ZEROES, what)
        chain.writable.write(ram, data_len, bytes((status,)), f"{what} status")
        return written + 1

    def _in_range(self, sector: int, length: int) -> bool:
        return (length % SECTOR_SIZE == 0 and length <= MAX_REQUEST_BYTES
                and sector * SECTOR_SIZE + length <= self.image.sectors * SECTOR_SIZE)

    def _read(self, chain: DescriptorChain, ram: GuestRam, sector: int, length: int,
              what: str, nowait: bool = False) -> tuple[int, int]:
        if not self._in_range(sector, length):
            return S_IOERR, 0
        whole = ram.whole_range()
        if whole is not None:
            addrs, lengths = chain.writable.columns(0, length)
            try:
                self.image.transfer(sector * SECTOR_SIZE, whole[1], whole[0], addrs, lengths,
                                    write=False, nowait=nowait)
            except BlockingIOError:
                if nowait:
                    raise
                return S_IOERR, 0
            except (OSError, ValueError):  # ValueError: a piece outside RAM (checked at pop)
                return S_IOERR, 0
            finally:
                ram.written_columns(addrs, lengths)  # whatever landed: CPUs drop its code
            return S_OK, length
        if ram.has_views:
            pieces = list(chain.writable.segments(0, length))
            views = ram.views(pieces, f"{what} data")
            try:
                self.image.readv(sector * SECTOR_SIZE, views, nowait=nowait)
            except BlockingIOError:
                if nowait:
                    raise
                return S_IOERR, 0
            except OSError:
                return S_IOERR, 0
            finally:
                ram.written(pieces)  # whatever landed: CPUs drop stale code of it
            return S_OK, length
        if nowait:
            raise BlockingIOError(f"{what}: copies are made on the I/O thread")
        offset, written = sector * SECTOR_SIZE, 0
        for addr, n in chain.writable.segments(0, length, IO_CHUNK):
            try:
                data = self.image.read(offset, n)
            except OSError:
                return S_IOERR, written
            ram.write(addr, data, f"{what} data")
            offset += n
            written += n
        return S_OK, written

    def _write(self, chain: DescriptorChain, ram: GuestRam, sector: int, length: int,
               what: str) -> int:
        if self.read_only or not self._in_range(sector, length):
            return S_IOERR
        whole = ram.whole_range()
        if whole is not None:
            addrs, lengths = chain.readable.columns(_HEADER.size, length)
            try:
                self.image.transfer(sector * SECTOR_SIZE, whole[1], whole[0], addrs, lengths,
                                    write=True)
            except (OSError, ValueError):  # ValueError: a piece outside RAM (checked at pop)
                return S_IOERR
            return S_OK
        if ram.has_views:
            views = ram.views(chain.readable.segments(_HEADER.size, length), f"{what} data")
            try:
                self.image.writev(sector * SECTOR_SIZE, views)
            except OSError:
                return S_IOERR
            return S_OK
        offset = sector * SECTOR_SIZE
        for addr, n in chain.readable.segments(_HEADER.size, length, IO_CHUNK):
            data = ram.read(addr, n, f"{what} data")
            try:
                self.image.write(offset, data)
            except OSError:
                return S_IOERR
            offset += n
        return S_OK

    def _flush(self) -> int:
        try:
            self.image.flush()
        except OSError:
            return S_IOERR
        return S_OK

    def _discard_or_zero(self, chain: DescriptorChain, ram: GuestRam, zeroes: bool,
                         what: str) -> int:
        if self.read_only:
            return S_IOERR
        if not (self.image.can_write_zeroes if zeroes else self.discard_offered):
            return S_UNSUPP
        length = chain.readable.total - _HEADER.size
        if length == 0 or length % _SEGMENT.size:
            return S_IOERR
        if length // _SEGMENT.size > (MAX_WRITE_ZEROES_SEG if zeroes else MAX_DISCARD_SEG):
            return S_UNSUPP
        segments = list(_SEGMENT.iter_unpack(
            chain.readable.read(ram, _HEADER.size, length, f"{what} segments")))
        allowed = WRITE_ZEROES_FLAG_UNMAP if zeroes else 0
        if any(flags & ~allowed for _sector, _count, flags in segments):
            return S_UNSUPP
        limit = MAX_WRITE_ZEROES_SECTORS if zeroes else MAX_DISCARD_SECTORS
        if any(count > limit or sector + count > self.image.sectors
               for sector, count, _flags in segments):
            return S_IOERR
        try:
            for sector, count, flags in segments:
                offset, size = sector * SECTOR_SIZE, count * SECTOR_SIZE
                if zeroes:
                    self.image.write_zeroes(offset, size,
                                            unmap=bool(flags & WRITE_ZEROES_FLAG_UNMAP))
                else:
                    self.image.discard(offset, size)
        except OSError:
            return S_IOERR
        return S_OK

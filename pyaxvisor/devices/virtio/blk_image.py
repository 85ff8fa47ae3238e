"""A raw disk image file for virtio-blk: opening, locking, positioned I/O.

Opening (:class:`RawImage`):

* a missing file: :class:`~pyaxvisor.devices.virtio.errors.ImageNotFound`;
* read-write asked of a file the host refuses to write (permission, read-only
  file system) or whose mode has no write bit at all (refused even for root, who
  could override it: a file marked read-only is not written):
  :class:`~pyaxvisor.devices.virtio.errors.ImageReadOnly`;
* not a regular file or block device: :class:`~pyaxvisor.errors.InvalidInput`;
* locked by another user: :class:`~pyaxvisor.devices.virtio.errors.ImageLocked`.
  A read-write image takes an exclusive lock, a read-only one a shared lock, on the
  whole file, without waiting (``F_SETLK`` semantics, as QEMU). The locks are
  open-file-description locks (``F_OFD_SETLK``, Linux): they conflict between two
  opens in the *same* process too (classic POSIX record locks would not), and
  closing one image does not drop another's lock. So: one writer, or any number of
  readers.

Every error names the file. The size is the file's (or block device's) size at
open; :attr:`RawImage.sectors` counts whole 512-byte sectors (a partial last
sector is not addressable, as in QEMU).

Freeing and zeroing ranges (:meth:`RawImage.discard`, :meth:`RawImage.write_zeroes`),
read-write images only:

* a regular file: ``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`` deallocates
  a range, which then reads back as zeroes; ``FALLOC_FL_ZERO_RANGE |
  FALLOC_FL_KEEP_SIZE`` zeroes one and keeps it allocated. Python's ``os`` has no
  such call: :func:`fallocate` calls libc's through ``ctypes``. Whether the file
  system punches holes is probed once, at open, by punching one block *past the end
  of the file* (the size is kept, so nothing a guest can read changes; at most
  blocks preallocated past the end are freed; a file system that cannot says
  ``EOPNOTSUPP`` there as anywhere, and any error counts as "cannot"):
  :attr:`RawImage.can_discard`. A zero-length probe is no use: ``fallocate``
  refuses a length of 0 with ``EINVAL`` before asking the file system.
  ZERO_RANGE is not probed (a probe past the end would allocate blocks there): the
  first ``EOPNOTSUPP`` switches it off for good. Without it, zeroes are written, at
  most :data:`ZERO_CHUNK` bytes at a time.
* a block device: the ``BLKDISCARD`` and ``BLKZEROOUT`` ioctls. Discard is offered
  when the device's queue has a non-zero ``discard_max_bytes`` in sysfs (the
  partition's disk for a partition); ``BLKZEROOUT`` never deallocates (the kernel
  passes it NOUNMAP) and writes zeroes itself where the device cannot.

A discard the host turns out not to support after all (``EOPNOTSUPP`` later on) is
done without freeing anything, as QEMU does: discarding is only ever a hint. Like the
I/O calls below, these are thread-safe; what they learn (a mode the host refuses) is
a flag that only ever goes from true to false.

I/O (:meth:`RawImage.read`, :meth:`RawImage.write`, :meth:`RawImage.readv`,
:meth:`RawImage.writev`, :meth:`RawImage.flush`) is synchronous
``pread``/``pwrite``/``preadv``/``pwritev``/``fsync`` on one descriptor; the calls are
thread-safe (no shared file position), so a worker thread may issue them. ``readv``
and ``writev`` move data straight between the file and the buffers given (guest RAM
views), at most :data:`IOV_BATCH` buffers per system call. They raise
``OSError`` on failure, which the device reports as VIRTIO_BLK_S_IOERR.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import stat
import struct
import threading
from collections.abc import Callable, Sequence

from pyaxvisor.devices.virtio import _sgio  # type: ignore[attr-defined]
from pyaxvisor.devices.virtio.errors import (
    BlockImageError,
    ImageLocked,
    ImageNotFound,
    ImageReadOnly,
)
from pyaxvisor.errors import InvalidInput

SECTOR_SIZE = 512
#: Most buffers handed to one ``preadv``/``pwritev`` (Linux's IOV_MAX is 1024).
IOV_BATCH = 1024
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)

#: ``struct flock`` on Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid.
_FLOCK = struct.Struct("hhqqi4x")

# fallocate(2) modes (linux/falloc.h).
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
# Block device ioctls (linux/fs.h): _IO(0x12, 119) and _IO(0x12, 127), both taking
# ``uint64_t range[2] = {start, length}`` in bytes.
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
_RANGE = struct.Struct("QQ")
#: Largest piece of zeroes written at once when the host cannot zero a range itself.
ZERO_CHUNK = 1 << 20
#: errno values meaning "this file or file system cannot do that at all".
_UNSUPPORTED = frozenset((errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.ENOTTY))


@functools.cache
def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's ``fallocate`` as a ctypes function (errno kept), or ``None``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # off_t is 64-bit on LP64; a 32-bit build needs the explicit 64-bit entry.
        fn = libc.fallocate if ctypes.sizeof(ctypes.c_long) == 8 else libc.fallocate64
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """libc ``fallocate(fd, mode, offset, length)``; ``OSError`` with the call's errno
    on failure (``ENOSYS`` where libc has no ``fallocate``). Retried on ``EINTR``."""
    fn = _libc_fallocate()
    if fn is None:
        raise OSError(errno.ENOSYS, "fallocate is not available")
    while fn(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


def _block_device_discards(rdev: int) -> bool:
    """Whether the block device ``rdev`` takes discards: its request queue's
    ``discard_max_bytes`` (sysfs) is non-zero; a partition has none of its own, its
    disk's (the parent directory) counts."""
    base = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    for queue in (f"{base}/queue", f"{base}/../queue"):
        try:
            with open(f"{queue}/discard_max_bytes", encoding="ascii") as f:
                return int(f.read()) > 0
        except (OSError, ValueError):
            continue
    return False


def _lock(fd: int, path: str, exclusive: bool) -> None:
    cmd = getattr(fcntl, "F_OFD_SETLK", None)
    if cmd is None:
        raise BlockImageError(path, "image locking needs open file description locks "
                                    "(F_OFD_SETLK, Linux)")
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, os.SEEK_SET, 0, 0, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            how = "read-write" if exclusive else "read-only"
            raise ImageLocked(path, f"cannot open it {how}: it is in use (locked by another "
                                    "device or process; one writer or any number of readers)"
                              ) from None
        raise BlockImageError(path, f"cannot lock it: {exc.strerror}") from None


def _advance(buffers: list[memoryview], done: int) -> list[memoryview]:
    """What is left of ``buffers`` after the first ``done`` bytes."""
    i = 0
    while i < len(buffers) and done >= len(buffers[i]):
        done -= len(buffers[i])
        i += 1
    rest = buffers[i:]
    if done and rest:
        rest[0] = rest[0][done:]
    return rest


class RawImage:
    """One open raw image. ``close()`` (or ``with``) releases the file and its lock."""

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        self._fd = self._open()
        try:
            _lock(self._fd, self.path, exclusive=not read_only)
            #: Size of the image in bytes.
            self.size = os.lseek(self._fd, 0, os.SEEK_END)
            self._probe_space_ops()
        except BaseException:
            os.close(self._fd)
            raise
        self._closed = False
        self._close_lock = threading.Lock()
        #: Whether ``readv(nowait=True)`` may succeed (cleared when the file system
        #: refuses RWF_NOWAIT).
        self.nowait_reads = bool(_RWF_NOWAIT)

    def _open(self) -> int:
        path = self.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ImageNotFound(path, "no such file") from None
        except OSError as exc:
            raise BlockImageError(path, f"cannot stat it: {exc.strerror}") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidInput(f"disk image {path!r}: not a regular file or block device")
        if not self.read_only and stat.S_ISREG(st.st_mode) and not st.st_mode & 0o222:
            raise ImageReadOnly(path, f"the file is read-only (mode {st.st_mode & 0o777:o}); "
                                      "open it read-only or make it writable")
        flags = (os.O_RDONLY if self.read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            raise ImageNotFound(path, "no such file") from None
        except OSError as exc:
            if not self.read_only and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ImageReadOnly(path, f"cannot open it read-write ({exc.strerror}); "
                                          "open it read-only") from None
            raise BlockImageError(path, f"cannot open it: {exc.strerror}") from None

    @property
    def sectors(self) -> int:
        """Capacity in whole 512-byte sectors."""
        return self.size // SECTOR_SIZE

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; ``OSError`` if the file ends before."""
        data = os.pread(self._fd, length, offset)
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise OSError(errno.EIO, f"{self.path}: short read at {offset + len(data)}")
            data += more
        return data

    def write(self, offset: int, data: bytes) -> None:
        """Write all of ``data`` at ``offset``."""
        if self.read_only:
            raise OSError(errno.EROFS, f"{self.path}: image is read-only")
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            if n <= 0:
                raise OSError(errno.EIO, f"{self.path}: short write at {offset}")
            view = view[n:]
            offset += n

    def readv(self, offset: int, buffers: list[memoryview], *, nowait: bool = False) -> None:
        """Fill ``buffers`` in order from the file at ``offset``; ``OSError`` if the
        file ends before they are full. ``nowait``: only if that needs no waiting for
        the disk (``RWF_NOWAIT``: the data is in the host's page cache, or a hole);
        otherwise :class:`BlockingIOError`, with the buffers possibly part filled. A
        file system that does not support it raises it every time after the first."""
        pending = [b for b in buffers if len(b)]
        if nowait and not self.nowait_reads:
            raise BlockingIOError(errno.EAGAIN, "non-blocking reads not supported")
        flags = _RWF_NOWAIT if nowait else 0
        while pending:
            batch = pending[:IOV_BATCH]
            want = sum(len(b) for b in batch) if nowait else 0
            try:
                n = os.preadv(self._fd, batch, offset, flags)
            except OSError as exc:
                if nowait and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    self.nowait_reads = False
                    raise BlockingIOError(exc.errno, exc.strerror) from None
                raise
            if nowait and n < want:  # part of it is not in memory: the rest would wait
                raise BlockingIOError(errno.EAGAIN, "the rest would wait for the disk")
            if n <= 0:
                raise OSError(errno.EIO, f"{self.path}: short read at {offset}")
            offset += n
            pending = _advance(pending, n)

    def writev(self, offset: int, buffers: list[memoryview]) -> None:
        """Write ``buffers`` in order to the file at ``offset``."""
        if self.read_only:
            raise OSError(errno.EROFS, f"{self.path}: image is read-only")
        pending = [b for b in buffers if len(b)]
        while pending:
            n = os.pwritev(self._fd, pending[:IOV_BATCH], offset)
            if n <= 0:
                raise OSError(errno.EIO, f"{self.path}: short write at {offset}")
            offset += n
            pending = _advance(pending, n)

    def fileno(self) -> int:
        """The image's file descriptor (for native code; valid until :meth:`close`)."""
        return self._fd

    def transfer(self, offset: int, ram: memoryview, ram_base: int, addrs: Sequence[int],
                 lengths: Sequence[int], *, write: bool, nowait: bool = False) -> None:
        """Move the guest pieces ``addrs[i], lengths[i]`` (in order, inside the view
        ``ram`` of the guest RAM range at ``ram_base``) from the file at ``offset``, or
        to it with ``write``, in native code (:mod:`._sgio`: one system call per
        :data:`IOV_BATCH` pieces, GIL released, no Python object per piece). Errors as
        :meth:`readv` and :meth:`writev` (``nowait`` for reads only); a piece outside
        ``ram`` is ``ValueError`` before any I/O."""
        if write and self.read_only:
            raise OSError(errno.EROFS, f"{self.path}: image is read-only")
        if nowait and not self.nowait_reads:
            raise BlockingIOError(errno.EAGAIN, "non-blocking reads not supported")
        try:
            _sgio.transfer(self._fd, offset, ram, ram_base, addrs, lengths, write,
                           nowait and not write)
        except BlockingIOError:
            raise
        except OSError as exc:
            if nowait and exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self.nowait_reads = False
                raise BlockingIOError(exc.errno, exc.strerror) from None
            raise

    def flush(self) -> None:
        """Make every completed write durable (``fsync``)."""
        os.fsync(self._fd)

    # -- freeing and zeroing ranges ----------------------------------------------------------
    def _probe_space_ops(self) -> None:
        st = os.fstat(self._fd)
        #: A block device (ioctls) rather than a regular file (fallocate).
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        #: :meth:`write_zeroes` works: any read-write image (zeroes can be written).
        self.can_write_zeroes = not self.read_only
        #: :meth:`discard` deallocates (probed here; never on a read-only image).
        self.can_discard = False
        if self.read_only:
            pass
        elif self.is_block_device:
            self.can_discard = _block_device_discards(st.st_rdev)
        else:
            block = max(st.st_blksize, SECTOR_SIZE)
            past_end = -(-self.size // block) * block
            try:
                fallocate(self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, past_end, block)
                self.can_discard = True
            except OSError:
                pass
        #: :meth:`write_zeroes` with ``unmap`` may deallocate the range (a regular file
        #: whose file system punches holes; ``BLKZEROOUT`` never does).
        self.zeroes_may_unmap = self.can_discard and not self.is_block_device
        # ZERO_RANGE / BLKZEROOUT: assumed until the host says EOPNOTSUPP.
        self._zero_in_place_works = not self.read_only

    def _check_range(self, offset: int, length: int) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, f"{self.path}: image is read-only")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OSError(errno.EINVAL, f"{self.path}: range {offset}+{length} is outside "
                                        f"the image ({self.size} bytes)")

    def discard(self, offset: int, length: int) -> None:
        """Deallocate ``length`` bytes at ``offset`` (hole punch or ``BLKDISCARD``); what
        they read afterwards is unspecified (zeroes, for a file). Nothing is done
        where the host cannot discard."""
        self._check_range(offset, length)
        if self.can_discard and length:
            self._punch(offset, length)

    def write_zeroes(self, offset: int, length: int, *, unmap: bool = False) -> None:
        """Make ``length`` bytes at ``offset`` read back as zeroes. With ``unmap`` the
        range may be deallocated (a hole punch); without, it stays allocated
        (``FALLOC_FL_ZERO_RANGE``, ``BLKZEROOUT``, or zeroes written)."""
        self._check_range(offset, length)
        if length == 0:
            return
        if unmap and self.zeroes_may_unmap and self._punch(offset, length):
            return
        if self._zero_in_place_works:
            if self._host_op(BLKZEROOUT, FALLOC_FL_ZERO_RANGE, offset, length):
                return
            self._zero_in_place_works = False  # not asked again
        self._write_zero_bytes(offset, length)

    def _punch(self, offset: int, length: int) -> bool:
        """Deallocate the range; ``False`` (and no more tries) if the host cannot."""
        if self._host_op(BLKDISCARD, FALLOC_FL_PUNCH_HOLE, offset, length):
            return True
        self.can_discard = self.zeroes_may_unmap = False
        return False

    def _host_op(self, ioctl: int, mode: int, offset: int, length: int) -> bool:
        """The block device ``ioctl`` or the file's ``fallocate`` ``mode`` (size kept)
        on the range; ``False`` if the host does not support it, ``OSError`` for any
        other failure."""
        try:
            if self.is_block_device:
                fcntl.ioctl(self._fd, ioctl, _RANGE.pack(offset, length))
            else:
                fallocate(self._fd, mode | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            return False
        return True

    def _write_zero_bytes(self, offset: int, length: int) -> None:
        zeroes = memoryview(bytes(min(length, ZERO_CHUNK)))
        end = offset + length
        while offset < end:
            n = os.pwrite(self._fd, zeroes[:min(end - offset, len(zeroes))], offset)
            if n <= 0:
                raise OSError(errno.EIO, f"{self.path}: short write at {offset}")
            offset += n

    def close(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)

    def __enter__(self) -> RawImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

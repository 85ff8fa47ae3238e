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

I/O (:meth:`RawImage.read`, :meth:`RawImage.write`, :meth:`RawImage.readv`,
:meth:`RawImage.writev`, :meth:`RawImage.flush`) is synchronous
``pread``/``pwrite``/``preadv``/``pwritev``/``fsync`` on one descriptor; the calls are
thread-safe (no shared file position), so a worker thread may issue them. ``readv``
and ``writev`` move data straight between the file and the buffers given (guest RAM
views), at most :data:`IOV_BATCH` buffers per system call. They raise
``OSError`` on failure, which the device reports as VIRTIO_BLK_S_IOERR.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading

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

    def flush(self) -> None:
        """Make every completed write durable (``fsync``)."""
        os.fsync(self._fd)

    def close(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)

    def __enter__(self) -> RawImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""What every loader shares: the error type, the result type, reading a file and
the small address helpers.

Rules every loader follows
    * **Check everything before writing guest memory**: a rejected image leaves
      guest RAM untouched.
    * **Problems with an image are** :class:`ImageError`, whose message starts with
      the file's name (``f"{path}: {problem}"``); problems with the caller's
      arguments (RAM that is not mapped, an unknown mode) are plain
      :class:`~pyaxvisor.errors.InvalidInput`.
    * **Files are bounded before they are read** (:func:`read_image`): a file
      larger than the limit (:data:`MAX_IMAGE_SIZE`, or a smaller one the caller
      gives, such as the guest's RAM size) is refused from its size alone; a
      device is refused; a pipe is read up to the limit.

A :class:`Segment` is one piece of guest memory an image fills: file bytes at a
physical address, then zeros up to ``memsz`` (an ELF ``PT_LOAD`` segment, or a
Multiboot a.out-kludge image); :func:`write_segments` writes a checked list.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = [
    "ELF_MAGIC", "FDT_MAGIC", "KiB", "MAX_IMAGE_SIZE", "MiB", "PAGE_SIZE", "ImageError",
    "LoadedImage", "Segment", "align_down", "align_up", "check_ram", "check_segments_in_ram",
    "covered", "read_image", "require_data", "span", "write_segments",
]

KiB = 1 << 10
MiB = 1 << 20
PAGE_SIZE = 4 * KiB
#: Largest file :func:`read_image` reads unless the caller gives a smaller limit.
MAX_IMAGE_SIZE = 1 << 30

ELF_MAGIC = b"\x7fELF"
FDT_MAGIC = b"\xd0\x0d\xfe\xed"
#: The Linux ``Image`` header of arm64 and RISC-V (its layout: :mod:`.linux_image`).
LINUX_IMAGE_HEADER_SIZE = 64
ARM64_MAGIC = b"ARM\x64"  # 0x644d5241 little endian, at offset 56
RISCV_MAGIC2 = b"RSC\x05"  # at offset 56, like arm64's
RISCV_MAGIC = b"RISCV\0\0\0"  # at offset 48, deprecated since header version 0.2

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
)


class ImageError(InvalidInput):
    """A boot image is unusable; the message names the file and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class LoadedImage(NamedTuple):
    """Where an image went: ``[start, end)`` in guest physical memory, and its entry."""

    entry: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


class Segment(NamedTuple):
    """``data`` at guest physical ``paddr``, zero-filled up to ``memsz`` bytes."""

    paddr: int
    data: bytes | memoryview
    memsz: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


def _mib(size: int) -> str:
    """``size`` in MiB: whole when it is a multiple, else to 2 places with the bytes."""
    if size % MiB == 0:
        return f"{size // MiB} MiB"
    return f"{size / MiB:.2f} MiB ({size} bytes)"


def read_image(path: Path, what: str, *, limit: int = MAX_IMAGE_SIZE,
               limit_reason: str | None = None) -> bytes:
    """The bytes of the ``what`` file (kernel, initrd, firmware) at ``path``.

    The file is opened without waiting (``O_NONBLOCK``: a FIFO with no writer does
    not block the open) and checked on the open descriptor, so what is checked is
    what is read: a missing or unreadable path, a directory, a device or socket, and
    a regular file of more than ``limit`` bytes are clear errors naming it, refused
    before anything is read; so is an empty file. A pipe or FIFO (``-kernel
    <(zcat vmlinuz.gz)``) has no size to check first: it is read up to ``limit``
    bytes and refused when it holds more. ``limit_reason`` says in the message what
    the limit is (e.g. "what fits in the guest's 512 MiB of RAM"); without one the
    message names :data:`MAX_IMAGE_SIZE` as pyaxvisor's own cap, or says the limit
    is the most the guest can take (the boards pass their RAM size).
    """
    if limit <= 0:
        raise InvalidInput(f"the size limit for {what} {path} must be positive, got {limit}")
    name = f"{what} {path}"
    reason = limit_reason or ("the largest image pyaxvisor reads" if limit >= MAX_IMAGE_SIZE
                              else "the most the guest can take")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidInput(f"{name}: no such file") from None
    except OSError as exc:
        raise InvalidInput(f"{name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISFIFO(info.st_mode):
            os.set_blocking(fd, True)  # now wait for the writer's data
            data = _read_bounded(fd, limit + 1, name)
            if len(data) > limit:
                raise ImageError(name, f"the pipe holds more than {_mib(limit)}, the limit "
                                       f"({reason})")
            if not data:
                raise ImageError(name, "the pipe is empty (nothing was written to it)")
        elif not stat.S_ISREG(info.st_mode):
            kind = next((kind for test, kind in _FILE_KINDS if test(info.st_mode)),
                        "a special file")
            raise InvalidInput(f"{what} {path} is not a regular file (it is {kind})")
        elif info.st_size > limit:
            raise ImageError(name, f"the file is {_mib(info.st_size)}, more than the "
                                   f"{_mib(limit)} limit ({reason})")
        else:
            # one byte more than the stat said, to see the file grew since (a read of
            # ``limit + 1`` would allocate that much up front)
            data = _read_bounded(fd, info.st_size + 1, name)
            if len(data) > info.st_size:
                raise ImageError(name, "the file grew while it was read")
    finally:
        os.close(fd)
    if not data:
        raise ImageError(name, "the file is empty")
    return data


#: Bytes read from a descriptor at a time.
_CHUNK = 1 << 20


def _read_bounded(fd: int, most: int, name: str) -> bytes:
    """Up to ``most`` bytes from ``fd``, to its end."""
    chunks: list[bytes] = []
    left = most
    try:
        while left > 0:
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise InvalidInput(f"{name}: {exc.strerror}") from None
    return b"".join(chunks)


def align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def align_down(value: int, align: int) -> int:
    return value // align * align


def span(start: int, end: int) -> str:
    """``[start, end)`` in hex, the way every loader message writes a range."""
    return f"[{start:#x}, {end:#x})"


def covered(space: AddrSpace, start: int, end: int) -> bool:
    """Whether guest RAM regions back every byte of ``[start, end)``."""
    if start < 0 or end > 1 << 64:
        return False
    pos = start
    while pos < end:
        region = space.find_region(GuestPhysAddr(pos))
        if region is None:
            return False
        pos = int(region.end)
    return True


def check_ram(space: AddrSpace, ram_base: int, ram_size: int) -> None:
    """:class:`InvalidInput` unless ``[ram_base, ram_base + ram_size)`` is mapped RAM."""
    if ram_size <= 0 or ram_base < 0:
        raise InvalidInput(f"RAM bank at {ram_base:#x} of size {ram_size:#x} is empty")
    if not covered(space, ram_base, ram_base + ram_size):
        raise InvalidInput(
            f"RAM bank {span(ram_base, ram_base + ram_size)} is not mapped in the guest "
            "address space")


def require_data(data: bytes | bytearray | memoryview, path: str,
                 what: str = "the file") -> None:
    """:class:`TypeError` unless ``data`` is bytes-like; :class:`ImageError` if empty."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"image data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError(path, f"{what} is empty")


def check_segments_in_ram(space: AddrSpace, segments: Sequence[Segment], path: str, *,
                          top: int | None = None) -> None:
    """:class:`ImageError` unless every segment is guest RAM (and ends by ``top``)."""
    for i, seg in enumerate(segments):
        if (top is not None and seg.end > top) or not covered(space, seg.paddr, seg.end):
            ram = "guest RAM" if top is None else f"guest RAM {span(0, top)}"
            raise ImageError(path, f"segment {i} at {span(seg.paddr, seg.end)} lies outside "
                                   f"{ram}")


def write_segments(space: AddrSpace, segments: Sequence[Segment]) -> None:
    """Write checked segments: their file bytes, then zeros up to ``memsz``."""
    for seg in segments:
        space.write(GuestPhysAddr(seg.paddr), seg.data)
        if seg.memsz > len(seg.data):
            space.write(GuestPhysAddr(seg.paddr + len(seg.data)),
                        bytes(seg.memsz - len(seg.data)))

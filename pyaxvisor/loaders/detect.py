"""Telling kernel formats apart: what a file is, and which architecture it is for.

* :func:`detect_format` (arm64 side): ``"arm64-image"`` (the 64-byte ``Image``
  header with ``ARM\\x64`` at offset 56), ``"elf"`` or ``"raw"`` (anything else),
  looking through gzip and EFI zboot(gzip) compression. Recognised but refused
  with a message saying what the file is: an x86 ``bzImage``, a RISC-V Linux
  Image, a U-Boot ``uImage``, a device tree blob, and data compressed with
  something other than gzip (:func:`~.compression.describe_foreign`).
* :func:`detect_x86_format`, in this order: ``"bzimage"`` ("HdrS" at 0x202 and
  the 0xAA55 boot flag at 0x1FE); ``"multiboot"`` (a Multiboot v1 header with a
  valid checksum, 4-byte aligned in the first 8192 bytes; checked before ELF since
  Multiboot kernels are usually ELF files); ``"elf"``; ``"raw"`` (anything else).
  Recognised and refused: an arm64 or RISC-V Linux Image, gzip (with what it
  holds, when that can be seen) and other compressed data, EFI zboot and other PE
  files without a Linux setup header, U-Boot uImages, device trees. An ELF's
  machine is checked by the loader.
* :func:`guess_arch`: the architecture a kernel file is for, from its first
  :data:`GUESS_BYTES` bytes, or None when they do not say (gzip data, raw
  binaries).
"""

from __future__ import annotations

from pyaxvisor.loaders.bzimage import HDRS_MAGIC, OFF_BOOT_FLAG, OFF_HEADER, is_bzimage
from pyaxvisor.loaders.compression import (
    GZIP_MAGIC,
    decompress,
    describe_foreign,
    peek_gzip,
)
from pyaxvisor.loaders.elf import EM_386, EM_AARCH64, EM_RISCV, EM_X86_64
from pyaxvisor.loaders.image import (
    ARM64_MAGIC,
    ELF_MAGIC,
    LINUX_IMAGE_HEADER_SIZE,
    RISCV_MAGIC,
    RISCV_MAGIC2,
    ImageError,
    require_data,
)
from pyaxvisor.loaders.multiboot import MB_SEARCH, find_multiboot

__all__ = ["GUESS_BYTES", "detect_format", "detect_riscv_format", "detect_x86_format",
           "guess_arch"]

#: How much of a kernel file :func:`guess_arch` needs (all of the Multiboot search area).
GUESS_BYTES = MB_SEARCH

_ELF_ARCH = {EM_386: "x86_64", EM_X86_64: "x86_64", EM_AARCH64: "aarch64",
             EM_RISCV: "riscv64"}
#: COFF machine types of PE files (EFI zboot images, EFI-stub kernels).
_PE_ARCH = {0x8664: "x86_64", 0xAA64: "aarch64", 0x5064: "riscv64"}


def _u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off:off + 4], "little")


def _pe_offset(data: bytes) -> int | None:
    """Where the "PE\\0\\0" signature of a PE file is, or None if it is not one."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        return None
    pe = _u32(data, 0x3C)
    return pe if data[pe:pe + 4] == b"PE\0\0" else None


# -- arm64 side -------------------------------------------------------------------------------

def detect_format(data: bytes, *, path: str = "<image>") -> str:
    """``"arm64-image"``, ``"elf"`` or ``"raw"``, looking through gzip/zboot compression.

    Raises :class:`ImageError` for empty data, corrupt compressed data and the
    recognised formats that cannot be booted (see the module docstring).
    """
    data = decompress(data, path=path)
    if data[:4] == ELF_MAGIC:
        return "elf"
    if len(data) >= LINUX_IMAGE_HEADER_SIZE and data[56:60] == ARM64_MAGIC:
        return "arm64-image"
    foreign = describe_foreign(data)
    if foreign is not None:
        raise ImageError(path, f"unsupported image format: this is {foreign}")
    return "raw"


# -- RISC-V side ------------------------------------------------------------------------------

def detect_riscv_format(data: bytes, *, path: str = "<image>") -> str:
    """``"riscv-image"`` (the Linux ``Image`` header with "RSC\\x05" at 56 or the older
    "RISCV" at 48), ``"elf"`` or ``"raw"``, looking through gzip/zboot compression.

    Raises :class:`ImageError` for empty data, corrupt compressed data and the
    recognised formats a RISC-V guest cannot boot (an arm64 Image, a bzImage…).
    """
    data = decompress(data, path=path)
    if data[:4] == ELF_MAGIC:
        return "elf"
    if len(data) >= LINUX_IMAGE_HEADER_SIZE and (data[56:60] == RISCV_MAGIC2
                                                 or data[48:56] == RISCV_MAGIC):
        return "riscv-image"
    if len(data) >= LINUX_IMAGE_HEADER_SIZE and data[56:60] == ARM64_MAGIC:
        raise ImageError(path, "unsupported image format: this is an arm64 Linux Image "
                               "(\"ARM\\x64\" at offset 56), not a RISC-V kernel")
    foreign = describe_foreign(data)
    if foreign is not None:
        raise ImageError(path, f"unsupported image format: this is {foreign}")
    return "raw"


# -- x86 side ---------------------------------------------------------------------------------

def _describe_inner(data: bytes) -> str:
    """What an uncompressed kernel-ish prefix is, for messages."""
    if len(data) >= 64 and data[56:60] == ARM64_MAGIC:
        return "an arm64 Linux Image"
    if is_bzimage(data):
        return "an x86 bzImage"
    if data[:4] == ELF_MAGIC and len(data) >= 20:
        return f"an ELF file (e_machine {int.from_bytes(data[18:20], 'little')})"
    if data[:6] in (b"070701", b"070702"):
        return "a cpio archive (an initramfs, not a kernel)"
    foreign = describe_foreign(data)
    return foreign if foreign is not None else "unrecognised data"


def detect_x86_format(data: bytes, *, path: str) -> str:
    """``"bzimage"``, ``"multiboot"``, ``"elf"`` or ``"raw"`` (see the module doc).

    :class:`ImageError` for an empty file and for recognised formats an x86 guest
    cannot boot, saying what the file is. An ELF's machine is checked by the loader.
    """
    require_data(data, path)
    if is_bzimage(data):
        return "bzimage"
    if find_multiboot(data) is not None:
        return "multiboot"
    if data[:4] == ELF_MAGIC:
        return "elf"
    if len(data) >= 64 and data[56:60] == ARM64_MAGIC:
        raise ImageError(path, "this is an arm64 Linux Image (\"ARM\\x64\" at offset 56), "
                               "not an x86 kernel")
    if data[OFF_HEADER:OFF_HEADER + 4] == HDRS_MAGIC:
        raise ImageError(path, f"\"HdrS\" at {OFF_HEADER:#x} but no 0xAA55 boot flag at "
                               f"{OFF_BOOT_FLAG:#x}: a damaged bzImage")
    if data[:3] == GZIP_MAGIC:
        inner = peek_gzip(data)
        what = f" holding {_describe_inner(inner)}" if inner else ""
        raise ImageError(path, f"gzip-compressed data{what}; an x86 kernel is a bzImage, "
                               "a Multiboot kernel, an ELF or a flat binary")
    if len(data) >= 8 and data[:2] == b"MZ" and data[4:8] == b"zimg":
        raise ImageError(path, "an EFI zboot image (a compressed arm64/RISC-V kernel), not "
                               "an x86 kernel")
    if _pe_offset(data) is not None:
        raise ImageError(path, "a PE/EFI executable without a Linux setup header; EFI "
                               "applications cannot be booted directly")
    foreign = describe_foreign(data)
    if foreign is not None:
        raise ImageError(path, f"unsupported image format: this is {foreign}")
    return "raw"


# -- architecture -----------------------------------------------------------------------------

def guess_arch(head: bytes) -> str | None:
    """The architecture (``"x86_64"``, ``"aarch64"``, ``"riscv64"``) a kernel file is for,
    from its first :data:`GUESS_BYTES` bytes; None when they do not say.

    x86_64: a bzImage ("HdrS" at 0x202), a Multiboot v1 header, an ELF for i386 or
    x86-64. aarch64: an arm64 Image ("ARM\\x64" at 56), an ELF for AArch64. riscv64:
    a RISC-V Image ("RSC\\x05" at 56, or the older "RISCV\\0\\0\\0" at 48), an ELF for
    RISC-V. A PE file (an EFI zboot image or EFI-stub kernel) goes by its COFF
    machine type. gzip data, raw binaries and anything else: None.
    """
    head = bytes(head[:GUESS_BYTES])
    if head[:4] == ELF_MAGIC:
        if len(head) < 20 or head[5] not in (1, 2):
            return None
        order = "little" if head[5] == 1 else "big"  # EI_DATA: 1 LSB, 2 MSB
        return _ELF_ARCH.get(int.from_bytes(head[18:20], order))
    if head[OFF_HEADER:OFF_HEADER + 4] == HDRS_MAGIC:
        return "x86_64"
    if head[56:60] == ARM64_MAGIC:
        return "aarch64"
    if head[56:60] == RISCV_MAGIC2 or head[48:56] == RISCV_MAGIC:
        return "riscv64"
    if find_multiboot(head) is not None:
        return "x86_64"
    pe = _pe_offset(head)
    if pe is not None and len(head) >= pe + 6:
        return _PE_ARCH.get(int.from_bytes(head[pe + 4:pe + 6], "little"))
    return None

"""Compressed kernels, and formats recognised only to say why they cannot be used.

:func:`decompress` removes gzip and EFI ``zboot`` (with a gzip payload) wrappers
with the standard library, up to :data:`MAX_DECOMPRESSED` bytes (Debian ships arm64
kernels as a gzip-compressed ``vmlinuz``; ``zboot`` is the EFI-bootable wrapper of
newer arm64/RISC-V kernels). Nothing legitimately nests deeper than a zboot image
around gzip, so at most two layers are removed; other data comes back unchanged.

:func:`describe_foreign` names data the arm64-side loaders refuse (an x86
``bzImage``, a RISC-V Linux Image, a U-Boot ``uImage``, a device tree, data
compressed with something other than gzip), so that a refusal says what the file is.
:func:`peek_gzip` decompresses only the start of a gzip stream, to say what it holds.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib

from pyaxvisor.loaders.image import FDT_MAGIC, ImageError, require_data, span

__all__ = [
    "GZIP_MAGIC", "MAX_DECOMPRESSED", "decompress", "describe_foreign", "is_zboot",
    "peek_gzip",
]

#: Cap on decompressed kernels (QEMU's LOAD_IMAGE_MAX_GUNZIP_BYTES). Read at call time.
MAX_DECOMPRESSED = 256 << 20

GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1 ID2, CM = deflate (the only method defined)
_ZBOOT = struct.Struct("<2s2x4sII8x32s")  # MZ, "zimg", payload offset/size, comp type

#: Compressions recognised only to say why the file cannot be used.
_OTHER_COMPRESSIONS = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x02\x21\x4c\x18", "lz4 (legacy)"),
    (b"\x89LZO", "lzop"),
)
_BZIP2_BLOCK_MAGIC = b"1AY&SY"  # follows "BZh" and the block size digit


def _gunzip(data: bytes, path: str, what: str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(MAX_DECOMPRESSED + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageError(path, f"{what} is corrupt or truncated ({exc})") from None
    if len(out) > MAX_DECOMPRESSED:
        raise ImageError(path, f"{what} decompresses to more than {MAX_DECOMPRESSED >> 20} MiB")
    if not out:
        raise ImageError(path, f"{what} decompresses to nothing")
    return out


def is_zboot(data: bytes) -> bool:
    """Whether ``data`` starts with a whole EFI zboot header ("MZ", then "zimg" at 4)."""
    return len(data) >= _ZBOOT.size and data[0:2] == b"MZ" and data[4:8] == b"zimg"


def _unwrap_zboot(data: bytes, path: str) -> bytes:
    _mz, _zimg, offset, size, comp = _ZBOOT.unpack_from(data)
    comp_type = comp.split(b"\0", 1)[0].decode("ascii", "replace")
    if comp_type != "gzip":
        raise ImageError(path, f"EFI zboot image with a {comp_type!r} payload; only gzip "
                               "payloads can be unpacked (extract the Image first)")
    if offset + size > len(data) or size == 0:
        raise ImageError(path, f"EFI zboot payload {span(offset, offset + size)} lies "
                               f"outside the {len(data)}-byte file")
    return _gunzip(bytes(data[offset:offset + size]), path, "the EFI zboot gzip payload")


def decompress(data: bytes, *, path: str = "<image>") -> bytes:
    """``data`` with gzip and EFI-zboot(gzip) wrappers removed; other data unchanged."""
    require_data(data, path)
    for _ in range(2):  # a zboot payload is gzip; nothing legitimately nests deeper
        if data[:3] == GZIP_MAGIC:
            data = _gunzip(bytes(data), path, "gzip data")
        elif is_zboot(data):
            data = _unwrap_zboot(data, path)
        else:
            break
    return bytes(data)


def peek_gzip(data: bytes, size: int = 0x1000) -> bytes:
    """Up to ``size`` bytes from the start of gzip ``data``; ``b""`` if it is corrupt."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bytes(data[:1 << 20]), size)
    except zlib.error:
        return b""


def describe_foreign(data: bytes) -> str | None:
    """What ``data`` is, when it is a recognised format the arm64-side loaders refuse
    (the x86 side reports some of these itself first), else None."""
    if len(data) >= 0x206 and data[0x202:0x206] == b"HdrS":
        return "an x86 Linux bzImage (\"HdrS\" at 0x202)"
    if len(data) >= 60 and data[56:60] == b"RSC\x05":
        return "a RISC-V Linux Image (\"RSC\\x05\" at 56)"
    if len(data) >= 56 and data[48:56] == b"RISCV\0\0\0":
        return "a RISC-V Linux Image (\"RISCV\" at 48)"
    if data[:4] == b"\x27\x05\x19\x56":
        return "a U-Boot legacy uImage (strip its 64-byte header or use the payload)"
    if data[:4] == FDT_MAGIC:
        return "a device tree blob, not a kernel"
    compression = next((name for magic, name in _OTHER_COMPRESSIONS
                        if data[:len(magic)] == magic), None)
    if data[:3] == b"BZh" and data[4:10] == _BZIP2_BLOCK_MAGIC:
        compression = "bzip2"
    if compression is not None:
        return f"{compression}-compressed data (only gzip is decompressed; decompress it first)"
    return None

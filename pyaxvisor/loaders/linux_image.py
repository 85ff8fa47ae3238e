"""Linux ``Image`` kernels of arm64 and RISC-V: their shared 64-byte header and
their placement in guest RAM.

The header (all little endian; arm64: ``Documentation/arch/arm64/booting.rst``,
RISC-V: ``Documentation/arch/riscv/boot-image-header.rst``)::

    0 code0 u32   4 code1 u32   8 text_offset u64   16 image_size u64   24 flags u64
    32 (RISC-V: version u32, res1 u32)   40 res u64
    48 (RISC-V: the deprecated magic "RISCV\\0\\0\\0", 8 bytes)
    56 magic: "ARM\\x64" (arm64) / "RSC\\x05" (RISC-V)   60 PE header offset u32

flags bit 0 set means a big-endian kernel, which is refused (only little-endian
guests are supported). ``image_size`` is the kernel's whole footprint, BSS
included: it, not the file size, must fit in RAM. Both loaders take the file
gzip- or EFI-zboot(gzip)-compressed too (:func:`~.compression.decompress`).

A truncated Image is refused (:func:`image_file_end`). No field of the 64-byte
header gives the size of the file part (``image_size`` includes the BSS, which is
not in the file), so the header only tells that a file *larger* than ``image_size``
is wrong. An Image with an EFI stub (code0 "MZ", as every distribution kernel of
both architectures) carries a PE/COFF header at the offset in the last header word,
whose section table places each section's raw data in the file
(``PointerToRawData + SizeOfRawData``; the last one ends at the kernel's
``_edata``): the file must hold the PE header, the section table and every
section's raw data. An Image without an EFI stub has nothing that tells its file
size; only its header is checked.

Placement (``ram_base``/``ram_size`` describe the RAM bank the kernel goes to; it
must be mapped in the address space), entry = load address
    * **arm64** (:func:`load_arm64_image`): at ``align_up(ram_base, 2 MiB) +
      text_offset``, the lowest 2 MiB-aligned base in RAM. That is what
      booting.rst asks when flags bit 3 is 0 ("as close as possible to the base
      of DRAM") and is allowed when bit 3 is 1 ("anywhere"). Unlike QEMU, nothing
      else lives at the bottom of RAM (no boot stub), so ``text_offset`` 0 is used
      as is. ``image_size`` 0 marks a pre-3.17 kernel: ``text_offset`` is taken as
      0x80000 and the file size as the image size (its BSS size is unknown). The
      entry state (x0 = DTB, MMU off, ...) is the vCPU set-up's.
    * **RISC-V, RV64** (:func:`load_riscv_image`): boot.rst ("Kernel location")
      wants the kernel on a PMD boundary, 2 MiB aligned on RV64; ``text_offset``
      is its "Image load offset" from the start of RAM (2 MiB for an S-mode RV64
      kernel, leaving the first 2 MiB to the SBI firmware; 0 for an M-mode one).
      So the load address is ``align_up(ram_base, 2 MiB) + text_offset``, which
      must itself be 2 MiB aligned. ``image_size`` is mandatory
      (boot-image-header.rst: booting fails without it). The entry state the
      vCPU set-up provides: a0 = the hart id, a1 = the DTB address, satp = 0
      (MMU off).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyaxvisor.loaders.compression import decompress, describe_foreign
from pyaxvisor.loaders.image import (
    ARM64_MAGIC,
    ELF_MAGIC,
    LINUX_IMAGE_HEADER_SIZE,
    RISCV_MAGIC,
    RISCV_MAGIC2,
    ImageError,
    KiB,
    LoadedImage,
    MiB,
    align_up,
    check_ram,
    require_data,
    span,
)
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = [
    "ARM64_DEFAULT_TEXT_OFFSET", "ARM64_HEADER_SIZE", "ARM64_MAGIC", "KERNEL_ALIGN",
    "LINUX_IMAGE_HEADER_SIZE", "RISCV_MAGIC", "RISCV_MAGIC2", "Arm64ImageHeader",
    "LinuxImageHeader", "RiscvImageHeader", "image_file_end", "load_arm64_image",
    "load_riscv_image", "parse_arm64_header", "parse_riscv_header",
]

ARM64_HEADER_SIZE = LINUX_IMAGE_HEADER_SIZE
#: The kernel goes ``text_offset`` bytes above a base aligned to this.
KERNEL_ALIGN = 2 * MiB
#: text_offset of arm64 kernels whose header has image_size 0 (before Linux 3.17).
ARM64_DEFAULT_TEXT_OFFSET = 0x80000

_HEADER = struct.Struct("<IIQQQII8x8s4s4x")
#: PE/COFF (EFI stub): "MZ" at 0, the PE header's offset at 60 (the Image header's last
#: word); the PE signature, then the COFF header (20 bytes: NumberOfSections at 2,
#: SizeOfOptionalHeader at 16), the optional header, the section table (40 bytes a
#: section: SizeOfRawData at 16, PointerToRawData at 20).
_PE_OFFSET = 60
_COFF = struct.Struct("<4sHHIIIHH")
_SECTION_SIZE = 40
_SECTION_RAW = struct.Struct("<II")
_SECTION_RAW_AT = 16
_FLAG_BE = 1 << 0
_ARM64_FLAG_PHYS_ANYWHERE = 1 << 3


@dataclass(frozen=True)
class LinuxImageHeader:
    """The header fields both architectures define."""

    text_offset: int
    image_size: int
    flags: int

    @property
    def big_endian(self) -> bool:
        return bool(self.flags & _FLAG_BE)


@dataclass(frozen=True)
class Arm64ImageHeader(LinuxImageHeader):
    """The arm64 Image header: flags bits 2:1 give the page size, bit 3 the placement."""

    @property
    def page_size(self) -> int | None:
        """Kernel page size from flags bits 2:1, or None when unspecified."""
        return {1: 4 * KiB, 2: 16 * KiB, 3: 64 * KiB}.get((self.flags >> 1) & 3)

    @property
    def place_anywhere(self) -> bool:
        """Flags bit 3: the 2 MiB aligned base may be anywhere in physical memory."""
        return bool(self.flags & _ARM64_FLAG_PHYS_ANYWHERE)


@dataclass(frozen=True)
class RiscvImageHeader(LinuxImageHeader):
    """The RISC-V Image header; ``version`` is major << 16 | minor."""

    version: int = 0


@dataclass(frozen=True)
class _Arch:
    """What tells the two architectures' Images apart."""

    name: str  # as messages say it: "arm64", "RISC-V"
    article: str
    #: ``(offset, bytes)``: the file is this architecture's Image if any of them is there.
    magics: tuple[tuple[int, bytes], ...]
    magic_note: str  # the magic a message says is missing
    #: text_offset for a header without image_size; None: such a header is refused.
    legacy_text_offset: int | None
    #: The load address must be a multiple of this.
    load_align: int

    def matches(self, data: bytes) -> bool:
        return any(data[off:off + len(magic)] == magic for off, magic in self.magics)


_ARM64 = _Arch("arm64", "an", ((56, ARM64_MAGIC),), "\"ARM\\x64\" magic at offset 56",
               ARM64_DEFAULT_TEXT_OFFSET, 1)
_RISCV = _Arch("RISC-V", "a", ((56, RISCV_MAGIC2), (48, RISCV_MAGIC)),
               "\"RSC\\x05\" magic at offset 56", None, KERNEL_ALIGN)


def _describe(data: bytes) -> str | None:
    """What a file that is not the expected kind of Image is, when it can be told."""
    if data[56:60] == ARM64_MAGIC:
        return "an arm64 Linux Image (\"ARM\\x64\" at 56)"
    return describe_foreign(data)


def _parse(data: bytes, path: str, arch: _Arch) -> tuple[int, int, int, int]:
    """The one header parser: ``(text_offset, image_size, flags, version)`` of an
    (uncompressed) ``arch`` Image; :class:`ImageError` if there is no such header."""
    require_data(data, path)
    if data[:4] == ELF_MAGIC:
        raise ImageError(path, f"this is an ELF file, not {arch.article} {arch.name} Image "
                               "(load it as ELF)")
    other = None if arch.matches(data) else _describe(data)
    if other is not None:
        raise ImageError(path, f"not {arch.article} {arch.name} Linux Image: this is {other}")
    if len(data) < LINUX_IMAGE_HEADER_SIZE:
        raise ImageError(path, f"truncated: {len(data)} bytes, but the {arch.name} Image "
                               f"header alone is {LINUX_IMAGE_HEADER_SIZE}")
    if not arch.matches(data):
        raise ImageError(path, f"not {arch.article} {arch.name} Linux Image (no "
                               f"{arch.magic_note})")
    _code0, _code1, text_offset, image_size, flags, version, *_ = _HEADER.unpack_from(data)
    return text_offset, image_size, flags, version


def parse_arm64_header(data: bytes, *, path: str = "<image>") -> Arm64ImageHeader:
    """The header of an (uncompressed) arm64 Image; :class:`ImageError` if there is none."""
    text_offset, image_size, flags, _version = _parse(data, path, _ARM64)
    return Arm64ImageHeader(text_offset, image_size, flags)


def parse_riscv_header(data: bytes, *, path: str = "<image>") -> RiscvImageHeader:
    """The header of an (uncompressed) RISC-V Image; :class:`ImageError` if there is none.

    Either magic is enough: "RSC\\x05" at 56 or, in version 0.1 headers, the then
    only magic "RISCV\\0\\0\\0" at 48.
    """
    return RiscvImageHeader(*_parse(data, path, _RISCV))


def image_file_end(data: bytes, path: str) -> int | None:
    """How many bytes the file of an (uncompressed) Image must have, by its EFI stub's
    PE/COFF header: the end of its section table and of every section's raw data;
    None for an Image without an EFI stub (code0 not "MZ"), whose header says nothing
    of it. :class:`ImageError` when the PE header itself is cut off or damaged."""
    if data[:2] != b"MZ":
        return None
    if len(data) < _PE_OFFSET + 4:
        raise ImageError(path, f"truncated: {len(data)} bytes, less than the "
                               f"{LINUX_IMAGE_HEADER_SIZE}-byte Image header")
    pe = int.from_bytes(data[_PE_OFFSET:_PE_OFFSET + 4], "little")
    if len(data) < pe + _COFF.size:
        raise ImageError(path, f"truncated: the EFI stub's PE header at {pe:#x} needs "
                               f"{pe + _COFF.size} bytes, the file has {len(data)}")
    signature, _machine, sections, _t, _s, _n, optional, _c = _COFF.unpack_from(data, pe)
    if signature != b"PE\0\0":
        raise ImageError(path, f"\"MZ\" (an EFI stub) but no PE signature at {pe:#x}, the "
                               "offset the header gives: a damaged Image")
    table = pe + _COFF.size + optional
    end = table + sections * _SECTION_SIZE
    if len(data) < end:
        raise ImageError(path, f"truncated: the EFI stub's PE section table needs {end} "
                               f"bytes, the file has {len(data)}")
    for i in range(sections):
        size, offset = _SECTION_RAW.unpack_from(data, table + i * _SECTION_SIZE
                                                + _SECTION_RAW_AT)
        if size:
            end = max(end, offset + size)
    return end


def _load(space: AddrSpace, data: bytes, arch: _Arch, *, ram_base: int, ram_size: int,
          path: str) -> LoadedImage:
    data = decompress(data, path=path)
    hdr = LinuxImageHeader(*_parse(data, path, arch)[:3])
    file_end = image_file_end(data, path)
    if file_end is not None and len(data) < file_end:
        raise ImageError(path, f"truncated: the EFI stub's PE header places {file_end} bytes "
                               f"of kernel in the file, the file has {len(data)} "
                               f"({len(data) * 100 // file_end}%)")
    check_ram(space, ram_base, ram_size)
    if hdr.big_endian:
        raise ImageError(path, f"big-endian {arch.name} kernel (header flags bit 0); only "
                               "little-endian guests are supported")
    if hdr.image_size == 0:
        if arch.legacy_text_offset is None:
            raise ImageError(path, f"header image_size is 0; {arch.article} {arch.name} "
                                   "Image must give its size (BSS included) to be booted")
        # Before Linux 3.17: text_offset's endianness was unspecified; it is 0x80000.
        text_offset, image_size = arch.legacy_text_offset, len(data)
    else:
        text_offset, image_size = hdr.text_offset, hdr.image_size
        if image_size < len(data):
            raise ImageError(path, f"header image_size {image_size:#x} is smaller than the "
                                   f"{len(data):#x}-byte file")
    ram_end = ram_base + ram_size
    load = align_up(ram_base, KERNEL_ALIGN) + text_offset
    if load % arch.load_align:
        raise ImageError(path, f"text_offset {text_offset:#x} is not a multiple of "
                               f"{arch.load_align >> 20} MiB: the {arch.name} kernel must "
                               f"start on a {arch.load_align >> 20} MiB boundary")
    end = load + image_size
    if end > ram_end:
        raise ImageError(
            path, f"kernel needs {span(load, end)} ({image_size:#x} bytes of image_size, "
                  f"BSS included, at text_offset {text_offset:#x} above a 2 MiB boundary) "
                  f"but RAM is {span(ram_base, ram_end)}")
    space.write(GuestPhysAddr(load), data)
    return LoadedImage(entry=load, start=load, end=end)


def load_arm64_image(space: AddrSpace, data: bytes, *, ram_base: int, ram_size: int,
                     path: str) -> LoadedImage:
    """Load an arm64 Linux ``Image`` (possibly gzip-compressed) per booting.rst.

    Placement: ``align_up(ram_base, 2 MiB) + text_offset``; the image's
    ``image_size`` (which includes BSS) must fit in ``[ram_base, ram_base +
    ram_size)``. Returns the entry (= load address) and the span ``[load,
    load + image_size)``.
    """
    return _load(space, data, _ARM64, ram_base=ram_base, ram_size=ram_size, path=path)


def load_riscv_image(space: AddrSpace, data: bytes, *, ram_base: int, ram_size: int,
                     path: str) -> LoadedImage:
    """Load an RV64 Linux ``Image`` (possibly gzip-compressed); see the module doc.

    Placement: ``align_up(ram_base, 2 MiB) + text_offset``, 2 MiB aligned; the
    ``image_size`` (BSS included, required) must fit in RAM. Returns the entry
    (= load address) and the span ``[load, load + image_size)``.
    """
    return _load(space, data, _RISCV, ram_base=ram_base, ram_size=ram_size, path=path)

"""Putting a guest's boot images into its RAM: kernel, initrd and device tree.

The core (format detection, raw and ELF loading, the initrd and DTB placement)
is architecture-neutral; :func:`load_arm64_image` implements the arm64 Linux
boot protocol (Documentation/arch/arm64/booting.rst). Every function checks
everything it can *before* writing guest memory, so a rejected image leaves
RAM untouched, and reports problems with the image as :class:`ImageError`,
whose message starts with the file's name.

Formats (:func:`detect_format`)
    ``"arm64-image"`` (the 64-byte arm64 ``Image`` header with ``ARM\\x64`` at
    offset 56), ``"elf"`` and ``"raw"`` (anything else). gzip-compressed data
    (Debian ships arm64 kernels as gzip-compressed ``vmlinuz``) and EFI
    ``zboot`` images with a gzip payload are decompressed transparently with
    the standard library, up to :data:`MAX_DECOMPRESSED` bytes. Recognised but
    rejected with a message saying what the file is: an x86 ``bzImage``, a
    RISC-V Linux Image, a U-Boot ``uImage``, a device tree blob, and data
    compressed with something other than gzip. ``load_raw`` and
    ``load_initrd`` take their bytes verbatim (the kernel unpacks a compressed
    initramfs itself).

Placement policy (``ram_base``/``ram_size`` describe the RAM bank the boot
images go to; it must be mapped in the address space)
    * **arm64 kernel**: at ``align_up(ram_base, 2 MiB) + text_offset``, the
      lowest 2 MiB-aligned base in RAM. That is what booting.rst asks when
      flags bit 3 is 0 ("as close as possible to the base of DRAM") and is
      allowed when bit 3 is 1 ("anywhere"). Unlike QEMU, nothing else lives at
      the bottom of RAM (no boot stub), so ``text_offset`` 0 is used as is.
      ``image_size`` 0 marks a pre-3.17 kernel: ``text_offset`` is taken as
      0x80000 and the file size as the image size (its BSS size is unknown).
      The whole ``image_size`` (BSS included) must fit in RAM. Entry = load
      address.
    * **DTB**: at the start of the last whole 2 MiB block of the *boot
      window*, the first ``min(ram_size, 512 MiB)`` of RAM
      (:func:`dtb_address`); the block is reserved for the DTB alone, which
      may not exceed 2 MiB. That satisfies booting.rst in all its versions:
      8-byte aligned, at most 2 MiB, not sharing a 2 MiB block with anything
      (the kernel maps it with blocks of up to 2 MiB), and within 512 MiB of
      the kernel (older kernels' rule). QEMU puts the DTB after the initrd
      instead; a fixed slot lets the DTB be built after the initrd is placed.
    * **initrd**: as high as possible below the DTB block, page aligned (its
      end is the DTB block's start), and not below the page-aligned kernel
      end. Like U-Boot's default, that leaves the RAM after the kernel free
      for the kernel's early allocations.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = [
    "ARM64_DEFAULT_TEXT_OFFSET", "ARM64_HEADER_SIZE", "BOOT_WINDOW", "DTB_MAX_SIZE",
    "DTB_SLOT_ALIGN", "ELF_MACHINES", "KERNEL_ALIGN", "MAX_DECOMPRESSED", "PAGE_SIZE",
    "Arm64ImageHeader", "ImageError", "LoadedImage", "decompress", "detect_format",
    "dtb_address", "load_arm64_image", "load_elf", "load_initrd", "load_raw",
    "parse_arm64_header", "place_dtb",
]

KiB = 1 << 10
MiB = 1 << 20

PAGE_SIZE = 4 * KiB
#: The arm64 kernel goes ``text_offset`` bytes above a base aligned to this.
KERNEL_ALIGN = 2 * MiB
#: text_offset of kernels whose header has image_size 0 (before Linux 3.17).
ARM64_DEFAULT_TEXT_OFFSET = 0x80000
ARM64_HEADER_SIZE = 64
#: Largest device tree booting.rst allows, and the block reserved for it.
DTB_MAX_SIZE = 2 * MiB
DTB_SLOT_ALIGN = 2 * MiB
#: The DTB (and so the initrd) goes into the first this-many bytes of RAM.
BOOT_WINDOW = 512 * MiB
#: Cap on decompressed kernels (QEMU's LOAD_IMAGE_MAX_GUNZIP_BYTES).
MAX_DECOMPRESSED = 256 * MiB

#: ``expected_machine`` -> the ELF ``e_machine`` it requires (pyelftools' names).
ELF_MACHINES = {"aarch64": "EM_AARCH64", "x86_64": "EM_X86_64", "riscv64": "EM_RISCV"}
_MACHINE_NAMES = {
    "EM_AARCH64": "aarch64", "EM_X86_64": "x86_64", "EM_RISCV": "riscv", "EM_386": "i386",
    "EM_ARM": "32-bit arm", "EM_PPC64": "ppc64", "EM_S390": "s390", "EM_MIPS": "mips",
    "EM_LOONGARCH": "loongarch",
}

_ARM64_MAGIC = b"ARM\x64"  # 0x644d5241 little endian, at offset 56
_ARM64_HEADER = struct.Struct("<IIQQQQQQII")
_ARM64_FLAG_BE = 1 << 0
_ARM64_FLAG_PHYS_ANYWHERE = 1 << 3
_ELF_MAGIC = b"\x7fELF"
_GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1 ID2, CM = deflate (the only method defined)
_FDT_MAGIC = b"\xd0\x0d\xfe\xed"
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


class ImageError(InvalidInput):
    """A boot image is unusable; the message names the file and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class LoadedImage:
    """Where an image went: ``[start, end)`` in guest physical memory, and its entry."""

    entry: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Arm64ImageHeader:
    """The fields of the arm64 Image header a loader uses (all little endian)."""

    text_offset: int
    image_size: int
    flags: int

    @property
    def big_endian(self) -> bool:
        return bool(self.flags & _ARM64_FLAG_BE)

    @property
    def page_size(self) -> int | None:
        """Kernel page size from flags bits 2:1, or None when unspecified."""
        return {1: 4 * KiB, 2: 16 * KiB, 3: 64 * KiB}.get((self.flags >> 1) & 3)

    @property
    def place_anywhere(self) -> bool:
        """Flags bit 3: the 2 MiB aligned base may be anywhere in physical memory."""
        return bool(self.flags & _ARM64_FLAG_PHYS_ANYWHERE)


# -- helpers -----------------------------------------------------------------------------------

def read_image(path: Path, what: str) -> bytes:
    """The bytes of ``path``; a missing, unreadable or empty file is a clear error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise InvalidInput(f"{what} {path}: {exc.strerror}") from None
    if not data:
        raise ImageError(f"{what} {path}", "the file is empty")
    return data


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _align_down(value: int, align: int) -> int:
    return value // align * align


def _span(start: int, end: int) -> str:
    return f"[{start:#x}, {end:#x})"


def _covered(space: AddrSpace, start: int, end: int) -> bool:
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


def _check_ram(space: AddrSpace, ram_base: int, ram_size: int) -> None:
    if ram_size <= 0 or ram_base < 0:
        raise InvalidInput(f"RAM bank at {ram_base:#x} of size {ram_size:#x} is empty")
    if not _covered(space, ram_base, ram_base + ram_size):
        raise InvalidInput(
            f"RAM bank {_span(ram_base, ram_base + ram_size)} is not mapped in the guest "
            "address space")


def _require_data(data: bytes, path: str) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"image data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError(path, "the file is empty")


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


def _unwrap_zboot(data: bytes, path: str) -> bytes:
    _mz, _zimg, offset, size, comp = _ZBOOT.unpack_from(data)
    comp_type = comp.split(b"\0", 1)[0].decode("ascii", "replace")
    if comp_type != "gzip":
        raise ImageError(path, f"EFI zboot image with a {comp_type!r} payload; only gzip "
                               "payloads can be unpacked (extract the Image first)")
    if offset + size > len(data) or size == 0:
        raise ImageError(path, f"EFI zboot payload {_span(offset, offset + size)} lies "
                               f"outside the {len(data)}-byte file")
    return _gunzip(bytes(data[offset:offset + size]), path, "the EFI zboot gzip payload")


def _is_zboot(data: bytes) -> bool:
    return len(data) >= _ZBOOT.size and data[0:2] == b"MZ" and data[4:8] == b"zimg"


def _foreign(data: bytes) -> str | None:
    """A description of a recognised format no loader here accepts, else None."""
    if len(data) >= 0x206 and data[0x202:0x206] == b"HdrS":
        return "an x86 Linux bzImage (\"HdrS\" at 0x202)"
    if len(data) >= 60 and data[56:60] == b"RSC\x05":
        return "a RISC-V Linux Image (\"RSC\\x05\" at 56)"
    if len(data) >= 56 and data[48:56] == b"RISCV\0\0\0":
        return "a RISC-V Linux Image (\"RISCV\" at 48)"
    if data[:4] == b"\x27\x05\x19\x56":
        return "a U-Boot legacy uImage (strip its 64-byte header or use the payload)"
    if data[:4] == _FDT_MAGIC:
        return "a device tree blob, not a kernel"
    compression = next((name for magic, name in _OTHER_COMPRESSIONS
                        if data[:len(magic)] == magic), None)
    if data[:3] == b"BZh" and data[4:10] == _BZIP2_BLOCK_MAGIC:
        compression = "bzip2"
    if compression is not None:
        return f"{compression}-compressed data (only gzip is decompressed; decompress it first)"
    return None


# -- format detection --------------------------------------------------------------------------

def decompress(data: bytes, *, path: str = "<image>") -> bytes:
    """``data`` with gzip and EFI-zboot(gzip) wrappers removed; other data unchanged."""
    _require_data(data, path)
    for _ in range(2):  # a zboot payload is gzip; nothing legitimately nests deeper
        if data[:3] == _GZIP_MAGIC:
            data = _gunzip(bytes(data), path, "gzip data")
        elif _is_zboot(data):
            data = _unwrap_zboot(data, path)
        else:
            break
    return bytes(data)


def _classify(data: bytes, path: str) -> str:
    """Format of already-decompressed, non-empty data; raises for rejected formats."""
    if data[:4] == _ELF_MAGIC:
        return "elf"
    if len(data) >= ARM64_HEADER_SIZE and data[56:60] == _ARM64_MAGIC:
        return "arm64-image"
    foreign = _foreign(data)
    if foreign is not None:
        raise ImageError(path, f"unsupported image format: this is {foreign}")
    return "raw"


def detect_format(data: bytes, *, path: str = "<image>") -> str:
    """``"arm64-image"``, ``"elf"`` or ``"raw"``, looking through gzip/zboot compression.

    Raises :class:`ImageError` for empty data, corrupt compressed data and the
    recognised formats that cannot be booted (see the module docstring).
    """
    return _classify(decompress(data, path=path), path)


def parse_arm64_header(data: bytes, *, path: str = "<image>") -> Arm64ImageHeader:
    """The header of an (uncompressed) arm64 Image; :class:`ImageError` if there is none."""
    _require_data(data, path)
    if data[:4] == _ELF_MAGIC:
        raise ImageError(path, "this is an ELF file, not an arm64 Image (load it as ELF)")
    foreign = _foreign(data)
    if foreign is not None and data[56:60] != _ARM64_MAGIC:
        raise ImageError(path, f"not an arm64 Linux Image: this is {foreign}")
    if len(data) < ARM64_HEADER_SIZE:
        raise ImageError(path, f"truncated: {len(data)} bytes, but the arm64 Image header "
                               f"alone is {ARM64_HEADER_SIZE}")
    (_code0, _code1, text_offset, image_size, flags, _res2, _res3, _res4, magic,
     _res5) = _ARM64_HEADER.unpack_from(data)
    if magic != int.from_bytes(_ARM64_MAGIC, "little"):
        raise ImageError(path, "not an arm64 Linux Image (no \"ARM\\x64\" magic at offset 56)")
    return Arm64ImageHeader(text_offset, image_size, flags)


# -- loaders -----------------------------------------------------------------------------------

def load_arm64_image(space: AddrSpace, data: bytes, *, ram_base: int, ram_size: int,
                     path: str) -> LoadedImage:
    """Load an arm64 Linux ``Image`` (possibly gzip-compressed) per booting.rst.

    Placement: ``align_up(ram_base, 2 MiB) + text_offset``; the image's
    ``image_size`` (which includes BSS) must fit in ``[ram_base, ram_base +
    ram_size)``. Returns the entry (= load address) and the span ``[load,
    load + image_size)``.
    """
    data = decompress(data, path=path)
    hdr = parse_arm64_header(data, path=path)
    _check_ram(space, ram_base, ram_size)
    if hdr.big_endian:
        raise ImageError(path, "big-endian arm64 kernel (header flags bit 0); only "
                               "little-endian guests are supported")
    if hdr.image_size == 0:
        # Before Linux 3.17: text_offset's endianness was unspecified; it is 0x80000.
        text_offset, image_size = ARM64_DEFAULT_TEXT_OFFSET, len(data)
    else:
        text_offset, image_size = hdr.text_offset, hdr.image_size
        if image_size < len(data):
            raise ImageError(path, f"header image_size {image_size:#x} is smaller than the "
                                   f"{len(data):#x}-byte file")
    ram_end = ram_base + ram_size
    load = _align_up(ram_base, KERNEL_ALIGN) + text_offset
    end = load + image_size
    if end > ram_end:
        raise ImageError(
            path, f"kernel needs {_span(load, end)} ({image_size:#x} bytes of image_size, "
                  f"BSS included, at text_offset {text_offset:#x} above a 2 MiB boundary) "
                  f"but RAM is {_span(ram_base, ram_end)}")
    space.write(GuestPhysAddr(load), data)
    return LoadedImage(entry=load, start=load, end=end)


def load_elf(space: AddrSpace, data: bytes, *, path: str,
             expected_machine: str) -> LoadedImage:
    """Load the ``PT_LOAD`` segments of a 64-bit little-endian ELF at their ``p_paddr``.

    File bytes are copied and the rest of each segment (``p_memsz >
    p_filesz``, the BSS) is zeroed. Every segment must lie in guest RAM. The
    entry is ``e_entry``, translated to a physical address through the
    segment whose virtual range holds it when ``p_vaddr != p_paddr``.
    gzip-compressed files are decompressed first.
    """
    if expected_machine not in ELF_MACHINES:
        raise InvalidInput(f"expected_machine must be one of {sorted(ELF_MACHINES)}, "
                           f"got {expected_machine!r}")
    data = decompress(data, path=path)
    if data[:4] != _ELF_MAGIC:
        foreign = _foreign(data)
        what = f"this is {foreign}" if foreign else "no \\x7fELF magic"
        raise ImageError(path, f"not an ELF file: {what}")
    # pyelftools is imported when an ELF image is met: it costs start-up time.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf.header["e_machine"]
        e_type = elf.header["e_type"]
        entry = elf.header["e_entry"]
        segments = [seg.header for seg in elf.iter_segments()]
    except (ELFError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(path, f"malformed or truncated ELF file ({exc})") from None

    want = ELF_MACHINES[expected_machine]
    if machine != want:
        found = _MACHINE_NAMES.get(str(machine), "an unknown machine")
        raise ImageError(path, f"ELF is built for {found} (e_machine {machine}), but the "
                               f"guest is {expected_machine} ({want})")
    if elf.elfclass != 64:
        raise ImageError(path, f"32-bit ELF; a {expected_machine} guest needs ELFCLASS64")
    if not elf.little_endian:
        raise ImageError(path, "big-endian ELF; only little-endian guests are supported")
    if e_type not in ("ET_EXEC", "ET_DYN"):
        raise ImageError(path, f"ELF type {e_type} cannot be booted (link it into an "
                               "executable)")

    loads = [s for s in segments if s["p_type"] == "PT_LOAD" and s["p_memsz"] > 0]
    if not loads:
        raise ImageError(path, "ELF has no loadable (PT_LOAD) segment")
    spans: list[tuple[int, int]] = []
    for i, seg in enumerate(loads):
        paddr, filesz, memsz, offset = (seg["p_paddr"], seg["p_filesz"], seg["p_memsz"],
                                        seg["p_offset"])
        if filesz > memsz:
            raise ImageError(path, f"PT_LOAD segment {i} has p_filesz {filesz:#x} > "
                                   f"p_memsz {memsz:#x}")
        if offset + filesz > len(data):
            raise ImageError(path, f"truncated: PT_LOAD segment {i} needs file bytes "
                                   f"{_span(offset, offset + filesz)} of {len(data):#x}")
        span = (paddr, paddr + memsz)
        if not _covered(space, *span):
            raise ImageError(path, f"PT_LOAD segment {i} at {_span(*span)} lies outside "
                                   "guest RAM")
        for j, other in enumerate(spans):
            if span[0] < other[1] and other[0] < span[1]:
                raise ImageError(path, f"PT_LOAD segments {j} {_span(*other)} and {i} "
                                       f"{_span(*span)} overlap")
        spans.append(span)

    if not any(p["p_paddr"] <= entry < p["p_paddr"] + p["p_memsz"] for p in loads):
        holder = next((p for p in loads
                       if p["p_vaddr"] <= entry < p["p_vaddr"] + p["p_memsz"]), None)
        if holder is None:
            raise ImageError(path, f"entry point {entry:#x} is outside every loaded segment")
        entry = entry - holder["p_vaddr"] + holder["p_paddr"]

    for seg in loads:
        paddr, filesz, memsz, offset = (seg["p_paddr"], seg["p_filesz"], seg["p_memsz"],
                                        seg["p_offset"])
        space.write(GuestPhysAddr(paddr), memoryview(data)[offset:offset + filesz])
        if memsz > filesz:
            space.write(GuestPhysAddr(paddr + filesz), bytes(memsz - filesz))
    return LoadedImage(entry=entry, start=min(s for s, _ in spans),
                       end=max(e for _, e in spans))


def load_raw(space: AddrSpace, data: bytes, *, addr: int, path: str) -> LoadedImage:
    """Copy ``data`` verbatim to ``addr`` (which becomes the entry)."""
    _require_data(data, path)
    end = addr + len(data)
    if not _covered(space, addr, end):
        raise ImageError(path, f"{len(data):#x} bytes at {_span(addr, end)} do not fit in "
                               "guest RAM")
    space.write(GuestPhysAddr(addr), data)
    return LoadedImage(entry=addr, start=addr, end=end)


def dtb_address(ram_base: int, ram_size: int) -> int:
    """Where :func:`place_dtb` puts the DTB: the last whole 2 MiB block of the boot window.

    The boot window is ``[ram_base, ram_base + min(ram_size, 512 MiB))``. The
    block ``[addr, addr + 2 MiB)`` belongs to the DTB alone.
    """
    window_end = ram_base + min(ram_size, BOOT_WINDOW)
    addr = _align_down(window_end, DTB_SLOT_ALIGN) - DTB_SLOT_ALIGN
    if addr < ram_base:
        raise InvalidInput(f"RAM {_span(ram_base, ram_base + ram_size)} has no whole "
                           "2 MiB block for the device tree")
    return addr


def load_initrd(space: AddrSpace, data: bytes, *, ram_base: int, ram_size: int,
                kernel_end: int, path: str) -> tuple[int, int]:
    """Place an initrd (verbatim) as high as possible below the DTB block, page aligned.

    Returns ``(start, end)`` with ``end`` exclusive, the values for
    ``linux,initrd-start``/``linux,initrd-end``. The initrd must not go below
    the page-aligned ``kernel_end``.
    """
    _require_data(data, path)
    _check_ram(space, ram_base, ram_size)
    ceiling = dtb_address(ram_base, ram_size)
    floor = max(ram_base, _align_up(kernel_end, PAGE_SIZE))
    start = _align_down(ceiling - len(data), PAGE_SIZE)
    if start < floor:
        room = max(0, ceiling - floor)
        raise ImageError(path, f"initrd of {len(data):#x} bytes does not fit between the "
                               f"kernel end {floor:#x} and the device tree block at "
                               f"{ceiling:#x} ({room:#x} bytes free)")
    end = start + len(data)
    space.write(GuestPhysAddr(start), data)
    return start, end


def place_dtb(space: AddrSpace, dtb: bytes, *, ram_base: int, ram_size: int,
              reserved: Sequence[tuple[int, int]] = (),
              path: str = "<device tree>") -> int:
    """Write a DTB to :func:`dtb_address` and return that address (for x0).

    ``reserved`` lists ``(start, end)`` spans already in use (kernel, initrd);
    none may touch the DTB's 2 MiB block.
    """
    _require_data(dtb, path)
    if bytes(dtb[:4]) != _FDT_MAGIC:
        raise ImageError(path, "not a device tree blob (no 0xd00dfeed magic)")
    if len(dtb) >= 8 and int.from_bytes(dtb[4:8], "big") != len(dtb):
        raise ImageError(path, f"header totalsize {int.from_bytes(dtb[4:8], 'big'):#x} "
                               f"differs from the {len(dtb):#x}-byte blob")
    if len(dtb) > DTB_MAX_SIZE:
        raise ImageError(path, f"{len(dtb):#x} bytes; arm64 Linux accepts at most 2 MiB")
    _check_ram(space, ram_base, ram_size)
    addr = dtb_address(ram_base, ram_size)
    block = (addr, addr + DTB_SLOT_ALIGN)
    for start, end in reserved:
        if start < block[1] and block[0] < end:
            raise ImageError(path, f"the device tree block {_span(*block)} overlaps "
                                   f"{_span(start, end)}, which is already in use")
    space.write(GuestPhysAddr(addr), dtb)
    return addr

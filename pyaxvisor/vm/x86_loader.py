"""Putting x86 boot images into guest RAM: a Linux ``bzImage`` (the x86 boot
protocol, ``Documentation/arch/x86/boot.rst``, 64-bit entry), a Multiboot v1 kernel
(ELF32, or a flat image with the a.out-kludge address fields), a plain ELF and a
raw flat binary. Placement follows :mod:`pyaxvisor.vm.x86_layout`.

Every loader checks everything it can before writing guest memory, so a rejected
image leaves RAM untouched; problems with an image are
:class:`~pyaxvisor.vm.loader.ImageError`, whose message starts with the file's name.

Formats (:func:`detect_x86_format`, in this order)
    ``"bzimage"`` ("HdrS" at 0x202 and the 0xAA55 boot flag at 0x1FE);
    ``"multiboot"`` (a Multiboot v1 header with a valid checksum, 4-byte aligned in
    the first 8192 bytes; checked before ELF since Multiboot kernels are usually
    ELF files); ``"elf"``; ``"raw"`` (anything else). Recognised and refused with a
    message saying what the file is: an arm64 or RISC-V Linux Image, gzip (with
    what it holds, when that can be seen) and other compressed data, EFI zboot and
    other PE files without a Linux setup header, U-Boot uImages, device trees.

Entry states (:class:`X86Boot`)
    * **bzImage**: 64-bit mode at ``KERNEL_LOAD + 0x200`` (``startup_64``), RSI =
      ``boot_params`` (the zero page at :data:`BOOT_PARAMS_ADDR`). The VM's vCPU
      set-up provides what boot.rst asks for the 64-bit entry: identity-mapped
      ``[0, 1 GiB)`` (which must hold the kernel's ``init_size`` footprint, the
      zero page and the command line) and a GDT with ``__BOOT_CS`` 0x10 and
      ``__BOOT_DS`` 0x18.
    * **Multiboot**: 32-bit protected mode at the header's or ELF's entry, EAX =
      0x2BADB002, EBX = the Multiboot information structure.
    * **ELF**: ELF64 x86-64 → 64-bit mode, ELF32 i386 → 32-bit protected mode, at
      ``e_entry``; segments at their physical addresses. No boot information is
      passed (a Linux ``vmlinux`` gets no ``boot_params``: boot its bzImage).
    * **raw**: at ``addr`` (default 1 MiB), entered in the given mode (default
      32-bit protected mode) at its first byte.

Placement
    * **bzImage**: the protected-mode kernel (everything after the setup sectors) at
      ``KERNEL_LOAD`` (1 MiB). It decompresses itself to its *runtime start*,
      boot.rst's rule: ``align_up(max(load, pref_address), kernel_alignment)`` for a
      relocatable kernel, else ``pref_address`` (16 MiB for distribution kernels),
      and needs ``init_size`` bytes there. The kernel's footprint, which
      ``X86Boot.kernel_end`` reports, ends at the higher of the loaded image's end
      and ``runtime start + init_size``; it must fit in low RAM and in the 1 GiB
      identity map. The command line goes to :data:`CMDLINE_ADDR`, the e820 map
      into ``boot_params``, and the initrd page aligned as high as possible below
      ``min(initrd_addr_max + 1, low RAM top)`` and above the footprint.
    * **Multiboot / ELF**: segments at their physical addresses, which must be in
      low RAM at or above 1 MiB (below it live the GDT, ``boot_params``, the page
      tables and the MP table, as Firecracker's and Cloud Hypervisor's loaders
      require). A Multiboot kernel's information structure, the memory map, the
      strings and the module list follow the kernel's end (page aligned), then the
      modules, each page aligned.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.loader import ImageError, _covered, _foreign, _span
from pyaxvisor.vm.x86_layout import (
    BOOT_PARAMS_ADDR,
    CMDLINE_ADDR,
    CMDLINE_MAX,
    HIGH_MEMORY,
    KERNEL_LOAD,
    LOW_RAM_LIMIT,
    e820_map,
)

__all__ = [
    "BOOT_PARAMS_SIZE", "EM_386", "EM_X86_64", "IDENTITY_MAP_END", "MB_SEARCH",
    "MULTIBOOT_BOOTLOADER_MAGIC", "MULTIBOOT_MAGIC", "Mode", "SetupHeader", "X86Boot",
    "detect_x86_format", "load_bzimage", "load_multiboot", "load_x86_elf", "load_x86_raw",
    "parse_setup_header",
]

PAGE = 0x1000
Mode = Literal["real", "protected", "long"]
#: The 64-bit entry's page tables (built by the vCPU set-up) identity-map [0, 1 GiB).
IDENTITY_MAP_END = 1 << 30
#: A real-mode entry must be below 1 MiB (the vCPU set-up derives CS:IP from it).
REAL_MODE_END = HIGH_MEMORY

# -- the setup header and boot_params: offsets into the zero page (= into the file) ------
BOOT_PARAMS_SIZE = 0x1000
OFF_EXT_RAMDISK_IMAGE = 0x0C0
OFF_EXT_RAMDISK_SIZE = 0x0C4
OFF_EXT_CMD_LINE_PTR = 0x0C8
OFF_E820_ENTRIES = 0x1E8
OFF_SETUP_HEADER = 0x1F1  # the setup header starts here ...
OFF_SETUP_SECTS = 0x1F1
OFF_SYSSIZE = 0x1F4
OFF_VID_MODE = 0x1FA
OFF_BOOT_FLAG = 0x1FE
OFF_JUMP = 0x200  # ... and ends at 0x202 + the byte at 0x201 (the jump's displacement)
OFF_HEADER = 0x202
OFF_VERSION = 0x206
OFF_TYPE_OF_LOADER = 0x210
OFF_LOADFLAGS = 0x211
OFF_RAMDISK_IMAGE = 0x218
OFF_RAMDISK_SIZE = 0x21C
OFF_HEAP_END_PTR = 0x224
OFF_CMD_LINE_PTR = 0x228
OFF_INITRD_ADDR_MAX = 0x22C
OFF_KERNEL_ALIGNMENT = 0x230
OFF_RELOCATABLE = 0x234
OFF_XLOADFLAGS = 0x236
OFF_CMDLINE_SIZE = 0x238
OFF_PREF_ADDRESS = 0x258
OFF_INIT_SIZE = 0x260
OFF_E820_TABLE = 0x2D0
E820_ENTRY_SIZE = 20
E820_MAX_ENTRIES = 128

HDRS_MAGIC = b"HdrS"
BOOT_FLAG = 0xAA55
LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
XLF_KERNEL_64 = 0x01
TYPE_OF_LOADER_UNDEFINED = 0xFF
HEAP_END = 0xFE00
VID_MODE_NORMAL = 0xFFFF
MIN_VERSION_64 = 0x020C  # xloadflags, and so XLF_KERNEL_64, exist from protocol 2.12
#: boot.rst's defaults for fields older protocols lack.
DEFAULT_INITRD_ADDR_MAX = 0x37FF_FFFF
DEFAULT_CMDLINE_SIZE = 255
STARTUP_64_OFFSET = 0x200

# -- Multiboot v1 -----------------------------------------------------------------------
MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
MB_SEARCH = 8192  # the header lies, 4-byte aligned, in the first this-many bytes
MB_HEADER_SIZE = 12
MB_AOUT_HEADER_SIZE = 32
MB_PAGE_ALIGN, MB_MEMORY_INFO, MB_VIDEO_MODE, MB_AOUT_KLUDGE = 1 << 0, 1 << 1, 1 << 2, 1 << 16
MB_SUPPORTED_REQUIRED = MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_VIDEO_MODE
MBI_MEM, MBI_CMDLINE, MBI_MODS, MBI_MMAP, MBI_LOADER_NAME = (
    1 << 0, 1 << 2, 1 << 3, 1 << 6, 1 << 9)
MBI_SIZE = 0x80  # the information structure (116 bytes in 0.6.96), zero padded
MBI_OFF_MEM_LOWER, MBI_OFF_MEM_UPPER, MBI_OFF_CMDLINE = 4, 8, 16
MBI_OFF_MODS_COUNT, MBI_OFF_MODS_ADDR = 20, 24
MBI_OFF_MMAP_LENGTH, MBI_OFF_MMAP_ADDR, MBI_OFF_LOADER_NAME = 44, 48, 64
MB_MEM_LOWER_KIB = 639  # conventional memory below the EBDA
MB_MODULE_SIZE = 16
MB_MMAP_ENTRY_SIZE = 24  # the size field (20) plus the 20 bytes it counts
BOOT_LOADER_NAME = "pyaxvisor"

# -- ELF ------------------------------------------------------------------------------------
EM_386, EM_X86_64 = 3, 62
_ELF_MAGIC = b"\x7fELF"
_ELF_MACHINE_NAMES = {
    "EM_AARCH64": "AArch64", "EM_ARM": "32-bit ARM", "EM_RISCV": "RISC-V",
    "EM_PPC": "PowerPC", "EM_PPC64": "PowerPC64", "EM_S390": "s390", "EM_MIPS": "MIPS",
    "EM_SPARC": "SPARC", "EM_SPARCV9": "SPARC64", "EM_IA_64": "Itanium",
    "EM_LOONGARCH": "LoongArch", "EM_386": "i386", "EM_X86_64": "x86-64",
}
_ARM64_MAGIC = b"ARM\x64"


@dataclass(frozen=True)
class X86Boot:
    """Where and how a loaded image starts. ``gprs`` uses the hardware numbering
    (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI); ``[kernel_start,
    kernel_end)`` is the guest physical memory the kernel occupies (for a bzImage,
    up to the end of its decompression footprint)."""

    entry: int
    mode: Mode
    gprs: dict[int, int]
    kernel_start: int
    kernel_end: int
    format: str
    description: str


@dataclass(frozen=True)
class SetupHeader:
    """The setup header fields the loader uses. Fields the image's protocol version
    does not have hold boot.rst's defaults (or 0)."""

    setup_sects: int  # 0 in the file means 4
    syssize: int  # in 16-byte paragraphs
    version: int
    loadflags: int
    xloadflags: int
    kernel_alignment: int
    relocatable_kernel: int
    init_size: int
    cmdline_size: int
    initrd_addr_max: int
    pref_address: int
    header_end: int  # 0x202 + the byte at 0x201: the end of the header in the file

    @property
    def setup_size(self) -> int:
        """Bytes before the protected-mode kernel: the boot sector and setup sectors."""
        return (self.setup_sects + 1) * 512

    @property
    def kernel_size(self) -> int:
        return self.syssize * 16

    @property
    def protocol(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02}"

    def runtime_start(self, load_address: int) -> int:
        """Where the kernel decompresses itself to (boot.rst, on ``init_size``)."""
        if not self.relocatable_kernel:
            return self.pref_address
        start = max(load_address, self.pref_address)
        align = self.kernel_alignment or 1
        return -(-start // align) * align


# -- helpers ----------------------------------------------------------------------------------

def _u16(data: bytes, off: int) -> int:
    return int.from_bytes(data[off:off + 2], "little")


def _u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off:off + 4], "little")


def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def _align_down(value: int, align: int) -> int:
    return value // align * align


def _low_top(ram_size: int) -> int:
    return min(ram_size, LOW_RAM_LIMIT)


def _require_data(data: bytes, path: str, what: str = "the file") -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"image data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError(path, f"{what} is empty")


def _check_low_ram(space: AddrSpace, ram_size: int) -> int:
    """The low RAM top for ``ram_size``, after checking ``[0, top)`` is guest RAM."""
    if not isinstance(ram_size, int) or ram_size <= HIGH_MEMORY:
        raise InvalidInput(f"ram_size {ram_size!r} leaves no RAM above 1 MiB")
    top = _low_top(ram_size)
    if not _covered(space, 0, top):
        raise InvalidInput(f"low RAM {_span(0, top)} for ram_size {ram_size:#x} is not "
                           "mapped in the guest address space")
    return top


def _plural_bits(bits: list[int]) -> str:
    return f"bit {bits[0]}" if len(bits) == 1 else "bits " + ", ".join(map(str, bits))


# -- format detection ---------------------------------------------------------------------

def _is_bzimage(data: bytes) -> bool:
    return (len(data) >= OFF_HEADER + 4 and data[OFF_HEADER:OFF_HEADER + 4] == HDRS_MAGIC
            and _u16(data, OFF_BOOT_FLAG) == BOOT_FLAG)


def _find_multiboot(data: bytes) -> int | None:
    """File offset of the first valid Multiboot v1 header, or None."""
    limit = min(len(data), MB_SEARCH) - MB_HEADER_SIZE
    magic = MULTIBOOT_MAGIC.to_bytes(4, "little")
    off = data.find(magic, 0, limit + 4) if limit >= 0 else -1
    while off >= 0:
        if off % 4 == 0:
            _magic, flags, checksum = struct.unpack_from("<III", data, off)
            if (MULTIBOOT_MAGIC + flags + checksum) & 0xFFFF_FFFF == 0:
                return off
        off = data.find(magic, off + 1, limit + 4)
    return None


def _describe_inner(data: bytes) -> str:
    """What an uncompressed kernel-ish prefix is, for messages."""
    if len(data) >= 64 and data[56:60] == _ARM64_MAGIC:
        return "an arm64 Linux Image"
    if _is_bzimage(data):
        return "an x86 bzImage"
    if data[:4] == _ELF_MAGIC and len(data) >= 20:
        return f"an ELF file (e_machine {_u16(data, 18)})"
    if data[:6] in (b"070701", b"070702"):
        return "a cpio archive (an initramfs, not a kernel)"
    foreign = _foreign(data)
    return foreign if foreign is not None else "unrecognised data"


def _gzip_peek(data: bytes) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bytes(data[:1 << 20]), 0x1000)
    except zlib.error:
        return b""


def _is_pe(data: bytes) -> bool:
    if len(data) < 0x40 or data[:2] != b"MZ":
        return False
    pe = _u32(data, 0x3C)
    return data[pe:pe + 4] == b"PE\0\0"


def detect_x86_format(data: bytes, *, path: str) -> str:
    """``"bzimage"``, ``"multiboot"``, ``"elf"`` or ``"raw"`` (see the module doc).

    :class:`ImageError` for an empty file and for recognised formats an x86 guest
    cannot boot, saying what the file is. An ELF's machine is checked by the loader.
    """
    _require_data(data, path)
    if _is_bzimage(data):
        return "bzimage"
    if _find_multiboot(data) is not None:
        return "multiboot"
    if data[:4] == _ELF_MAGIC:
        return "elf"
    if len(data) >= 64 and data[56:60] == _ARM64_MAGIC:
        raise ImageError(path, "this is an arm64 Linux Image (\"ARM\\x64\" at offset 56), "
                               "not an x86 kernel")
    if data[OFF_HEADER:OFF_HEADER + 4] == HDRS_MAGIC:
        raise ImageError(path, f"\"HdrS\" at {OFF_HEADER:#x} but no 0xAA55 boot flag at "
                               f"{OFF_BOOT_FLAG:#x}: a damaged bzImage")
    if data[:3] == b"\x1f\x8b\x08":
        inner = _gzip_peek(data)
        what = f" holding {_describe_inner(inner)}" if inner else ""
        raise ImageError(path, f"gzip-compressed data{what}; an x86 kernel is a bzImage, "
                               "a Multiboot kernel, an ELF or a flat binary")
    if len(data) >= 8 and data[:2] == b"MZ" and data[4:8] == b"zimg":
        raise ImageError(path, "an EFI zboot image (a compressed arm64/RISC-V kernel), not "
                               "an x86 kernel")
    if _is_pe(data):
        raise ImageError(path, "a PE/EFI executable without a Linux setup header; EFI "
                               "applications cannot be booted directly")
    foreign = _foreign(data)
    if foreign is not None:
        raise ImageError(path, f"unsupported image format: this is {foreign}")
    return "raw"


# -- Linux bzImage ---------------------------------------------------------------------------

def parse_setup_header(data: bytes, *, path: str) -> SetupHeader:
    """The setup header of a bzImage; :class:`ImageError` if there is none.

    Only the header's presence is checked here; :func:`load_bzimage` checks that
    the kernel can be booted.
    """
    _require_data(data, path)
    if len(data) < OFF_HEADER + 4 or data[OFF_HEADER:OFF_HEADER + 4] != HDRS_MAGIC:
        raise ImageError(path, f"not a Linux bzImage (no \"HdrS\" setup header at "
                               f"{OFF_HEADER:#x})")
    if _u16(data, OFF_BOOT_FLAG) != BOOT_FLAG:
        raise ImageError(path, f"not a Linux bzImage (boot flag {_u16(data, OFF_BOOT_FLAG):#x}"
                               f" at {OFF_BOOT_FLAG:#x}, not {BOOT_FLAG:#x})")
    header_end = OFF_HEADER + data[OFF_JUMP + 1]
    if len(data) < max(header_end, OFF_VERSION + 2):
        raise ImageError(path, f"truncated: the setup header ends at {header_end:#x}, the "
                               f"file has {len(data)} bytes")
    version = _u16(data, OFF_VERSION)

    def field(off: int, size: int, since: int, default: int = 0) -> int:
        if version < since or off + size > header_end:
            return default
        return int.from_bytes(data[off:off + size], "little")

    return SetupHeader(
        setup_sects=data[OFF_SETUP_SECTS] or 4,
        syssize=_u32(data, OFF_SYSSIZE) if version >= 0x0204 else _u16(data, OFF_SYSSIZE),
        version=version,
        loadflags=data[OFF_LOADFLAGS],
        xloadflags=field(OFF_XLOADFLAGS, 2, 0x020C),
        kernel_alignment=field(OFF_KERNEL_ALIGNMENT, 4, 0x0205),
        relocatable_kernel=field(OFF_RELOCATABLE, 1, 0x0205),
        init_size=field(OFF_INIT_SIZE, 4, 0x020A),
        cmdline_size=field(OFF_CMDLINE_SIZE, 4, 0x0206, DEFAULT_CMDLINE_SIZE),
        initrd_addr_max=field(OFF_INITRD_ADDR_MAX, 4, 0x0203, DEFAULT_INITRD_ADDR_MAX),
        pref_address=field(OFF_PREF_ADDRESS, 8, 0x020A),
        header_end=header_end)


def load_bzimage(space: AddrSpace, data: bytes, *, ram_size: int, cmdline: str,
                 initrd: bytes | None, path: str, initrd_path: str = "<initrd>") -> X86Boot:
    """Load a bzImage for its 64-bit entry and fill in its ``boot_params``.

    Requires protocol 2.12 or later with ``XLF_KERNEL_64`` and ``LOADED_HIGH``. The
    zero page is the file's setup header in an otherwise zeroed page, plus
    ``type_of_loader`` 0xFF, ``CAN_USE_HEAP`` with ``heap_end_ptr`` 0xFE00,
    ``vid_mode`` 0xFFFF ("normal"), the command line pointer, the initrd fields and
    the e820 map of ``ram_size`` bytes of RAM. See the module doc for placement.
    """
    hdr = parse_setup_header(data, path=path)
    if hdr.version < MIN_VERSION_64:
        raise ImageError(path, f"boot protocol {hdr.protocol} is too old: the 64-bit entry "
                               "needs 2.12 or later")
    if not hdr.loadflags & LOADED_HIGH:
        raise ImageError(path, "a zImage (LOADED_HIGH clear in loadflags) cannot be loaded "
                               "at 1 MiB")
    if not hdr.xloadflags & XLF_KERNEL_64:
        raise ImageError(path, "the kernel has no 64-bit entry point (XLF_KERNEL_64 clear "
                               "in xloadflags)")
    expected = hdr.setup_size + hdr.kernel_size
    if len(data) < expected:
        raise ImageError(path, f"truncated: the setup header announces {expected} bytes "
                               f"({hdr.setup_sects} setup sectors and {hdr.kernel_size} "
                               f"bytes of kernel), the file has {len(data)}")
    if hdr.kernel_size == 0:
        raise ImageError(path, "the setup header announces an empty kernel (syssize 0)")

    raw_cmdline = cmdline.encode()
    if b"\0" in raw_cmdline:
        raise ImageError(path, "the command line contains a NUL byte")
    max_cmdline = min(hdr.cmdline_size, CMDLINE_MAX - 1)
    if len(raw_cmdline) > max_cmdline:
        raise ImageError(path, f"the command line is {len(raw_cmdline)} bytes, the kernel "
                               f"takes at most {max_cmdline}")

    low_top = _check_low_ram(space, ram_size)
    kernel = memoryview(data)[hdr.setup_size:]
    load_end = KERNEL_LOAD + len(kernel)
    runtime = hdr.runtime_start(KERNEL_LOAD)
    footprint_end = max(load_end, runtime + hdr.init_size)
    limit = min(low_top, IDENTITY_MAP_END)
    if footprint_end > limit:
        raise ImageError(path, f"the kernel needs RAM up to {footprint_end:#x} (loaded at "
                               f"{_span(KERNEL_LOAD, load_end)}, decompressing to "
                               f"{_span(runtime, runtime + hdr.init_size)} per init_size) "
                               f"but {'RAM' if limit == low_top else 'the identity map'} "
                               f"ends at {limit:#x}")

    initrd_addr = 0
    if initrd is not None:
        _require_data(initrd, initrd_path, "the initrd")
        ceiling = min(low_top, hdr.initrd_addr_max + 1)
        floor = _align_up(footprint_end, PAGE)
        initrd_addr = _align_down(ceiling - len(initrd), PAGE)
        if initrd_addr < floor:
            raise ImageError(initrd_path, f"the initrd ({len(initrd)} bytes) does not fit "
                                          f"between the kernel's end {floor:#x} and "
                                          f"{ceiling:#x} ({max(0, ceiling - floor)} bytes "
                                          "free)")

    params = bytearray(BOOT_PARAMS_SIZE)
    params[OFF_SETUP_HEADER:hdr.header_end] = data[OFF_SETUP_HEADER:hdr.header_end]
    params[OFF_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    params[OFF_LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", params, OFF_HEAP_END_PTR, HEAP_END)
    struct.pack_into("<H", params, OFF_VID_MODE, VID_MODE_NORMAL)
    struct.pack_into("<I", params, OFF_CMD_LINE_PTR, CMDLINE_ADDR & 0xFFFF_FFFF)
    struct.pack_into("<I", params, OFF_EXT_CMD_LINE_PTR, CMDLINE_ADDR >> 32)
    if initrd is not None:
        struct.pack_into("<I", params, OFF_RAMDISK_IMAGE, initrd_addr & 0xFFFF_FFFF)
        struct.pack_into("<I", params, OFF_RAMDISK_SIZE, len(initrd) & 0xFFFF_FFFF)
        struct.pack_into("<I", params, OFF_EXT_RAMDISK_IMAGE, initrd_addr >> 32)
        struct.pack_into("<I", params, OFF_EXT_RAMDISK_SIZE, len(initrd) >> 32)
    entries = e820_map(ram_size)
    if len(entries) > E820_MAX_ENTRIES:  # pragma: no cover - the layout has at most 4
        raise InvalidInput(f"{len(entries)} e820 entries; boot_params holds "
                           f"{E820_MAX_ENTRIES}")
    params[OFF_E820_ENTRIES] = len(entries)
    for i, (addr, size, kind) in enumerate(entries):
        struct.pack_into("<QQI", params, OFF_E820_TABLE + E820_ENTRY_SIZE * i, addr, size,
                         kind)

    space.write(GuestPhysAddr(KERNEL_LOAD), kernel)
    if initrd is not None:
        space.write(GuestPhysAddr(initrd_addr), initrd)
    space.write(GuestPhysAddr(CMDLINE_ADDR), raw_cmdline + b"\0")
    space.write(GuestPhysAddr(BOOT_PARAMS_ADDR), params)
    return X86Boot(KERNEL_LOAD + STARTUP_64_OFFSET, "long", {6: BOOT_PARAMS_ADDR},
                   KERNEL_LOAD, footprint_end, "bzimage",
                   f"Linux bzImage, boot protocol {hdr.protocol}, 64-bit entry")


# -- ELF segments (shared by Multiboot and plain ELF) ------------------------------------------

@dataclass(frozen=True)
class _Segment:
    paddr: int
    data: bytes
    memsz: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


def _parse_elf(data: bytes, path: str) -> tuple[int, str, int, list[_Segment]]:
    """``(elfclass, e_machine name, physical entry, PT_LOAD segments)`` of an ELF file,
    with the file-level checks done (not the machine: the callers name it)."""
    # pyelftools is imported when an ELF image is met: it costs start-up time.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(data))
        elfclass, machine = elf.elfclass, str(elf.header["e_machine"])
        little, e_type, entry = elf.little_endian, elf.header["e_type"], elf.header["e_entry"]
        headers = [seg.header for seg in elf.iter_segments()]
    except (ELFError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(path, f"malformed or truncated ELF file ({exc})") from None
    if machine not in ("EM_386", "EM_X86_64"):
        name = _ELF_MACHINE_NAMES.get(machine, f"e_machine {machine}")
        raise ImageError(path, f"ELF for {name}, not x86")
    if not little:
        raise ImageError(path, "big-endian ELF; x86 is little-endian")
    if e_type not in ("ET_EXEC", "ET_DYN"):
        raise ImageError(path, f"ELF type {e_type} cannot be booted (link it into an "
                               "executable)")
    loads = [h for h in headers if h["p_type"] == "PT_LOAD" and h["p_memsz"] > 0]
    if not loads:
        raise ImageError(path, "ELF has no loadable (PT_LOAD) segment")
    segments: list[_Segment] = []
    for i, h in enumerate(loads):
        offset, filesz, memsz = h["p_offset"], h["p_filesz"], h["p_memsz"]
        if filesz > memsz:
            raise ImageError(path, f"PT_LOAD segment {i} has p_filesz {filesz:#x} > "
                                   f"p_memsz {memsz:#x}")
        if offset + filesz > len(data):
            raise ImageError(path, f"truncated: PT_LOAD segment {i} needs file bytes "
                                   f"{_span(offset, offset + filesz)}, the file has "
                                   f"{len(data)}")
        seg = _Segment(h["p_paddr"], bytes(data[offset:offset + filesz]), memsz)
        for j, other in enumerate(segments):
            if seg.paddr < other.end and other.paddr < seg.end:
                raise ImageError(path, f"PT_LOAD segments {j} {_span(other.paddr, other.end)}"
                                       f" and {i} {_span(seg.paddr, seg.end)} overlap")
        segments.append(seg)
    if not any(s.paddr <= entry < s.end for s in segments):
        # A kernel linked at a virtual address: translate through its segment.
        holder = next((h for h in loads if h["p_vaddr"] <= entry < h["p_vaddr"] + h["p_memsz"]),
                      None)
        if holder is None:
            raise ImageError(path, f"entry point {entry:#x} is outside every loaded segment")
        entry = entry - holder["p_vaddr"] + holder["p_paddr"]
    return elfclass, machine, entry, segments


def _check_segments(space: AddrSpace, segments: Sequence[_Segment], path: str, *,
                    top: int) -> None:
    """Each segment in guest RAM, in ``[1 MiB, top)``."""
    for i, seg in enumerate(segments):
        span = _span(seg.paddr, seg.end)
        if seg.paddr < HIGH_MEMORY:
            raise ImageError(path, f"segment {i} at {span} starts below 1 MiB, where the "
                                   "boot structures live")
        if seg.end > top or not _covered(space, seg.paddr, seg.end):
            raise ImageError(path, f"segment {i} at {span} lies outside guest RAM "
                                   f"{_span(0, top)}")


def _write_segments(space: AddrSpace, segments: Sequence[_Segment]) -> None:
    for seg in segments:
        space.write(GuestPhysAddr(seg.paddr), seg.data)
        if seg.memsz > len(seg.data):
            space.write(GuestPhysAddr(seg.paddr + len(seg.data)),
                        bytes(seg.memsz - len(seg.data)))


# -- Multiboot v1 -------------------------------------------------------------------------

def _aout_segment(data: bytes, off: int, path: str) -> tuple[_Segment, int]:
    """The image and entry described by the a.out-kludge address fields (flags bit 16)."""
    if off + MB_AOUT_HEADER_SIZE > len(data):
        raise ImageError(path, f"truncated: the Multiboot header at {off:#x} has flags bit "
                               f"16 but the file ends before its address fields")
    header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from(
        "<5I", data, off + MB_HEADER_SIZE)
    if load_addr > header_addr:
        raise ImageError(path, f"Multiboot load_addr {load_addr:#x} is above header_addr "
                               f"{header_addr:#x}")
    start = off - (header_addr - load_addr)
    if start < 0:
        raise ImageError(path, f"Multiboot header_addr {header_addr:#x} - load_addr "
                               f"{load_addr:#x} exceeds the header's file offset {off:#x}")
    if load_end == 0:
        size = len(data) - start
    elif load_end <= load_addr:
        raise ImageError(path, f"Multiboot load_end_addr {load_end:#x} is not above "
                               f"load_addr {load_addr:#x}")
    else:
        size = load_end - load_addr
    if start + size > len(data):
        raise ImageError(path, f"truncated: the Multiboot header loads {size} bytes from "
                               f"file offset {start:#x}, the file has {len(data)}")
    memsz = size
    if bss_end:
        if bss_end < load_addr + size:
            raise ImageError(path, f"Multiboot bss_end_addr {bss_end:#x} is below the "
                                   f"loaded image's end {load_addr + size:#x}")
        memsz = bss_end - load_addr
    if not load_addr <= entry < load_addr + size:
        raise ImageError(path, f"Multiboot entry_addr {entry:#x} is outside the loaded "
                               f"image {_span(load_addr, load_addr + size)}")
    return _Segment(load_addr, bytes(data[start:start + size]), memsz), entry


def load_multiboot(space: AddrSpace, data: bytes, *, ram_size: int, cmdline: str,
                   modules: Sequence[tuple[bytes, str]] = (), path: str) -> X86Boot:
    """Load a Multiboot v1 kernel and build its information structure.

    Required-feature flags: bit 0 (page-align modules: modules always are), bit 1
    (memory information: always provided) and bit 2 (video mode: accepted but not
    honoured, there is no framebuffer; the information has no video fields) are
    supported; any other of bits 0..15 is refused. With bit 16 the header's address
    fields place a flat image (``load_end_addr`` 0: to the end of the file;
    ``bss_end_addr`` 0: no bss), otherwise the file must be an ELF32 i386.

    The information structure has flags MEM, CMDLINE (``cmdline`` exactly as given),
    MODS (each ``(bytes, string)`` of ``modules``), MMAP (the e820 map) and
    BOOT_LOADER_NAME ("pyaxvisor"); ``mem_lower`` 639 KiB, ``mem_upper`` the KiB
    from 1 MiB to the top of low RAM.
    """
    _require_data(data, path)
    off = _find_multiboot(data)
    if off is None:
        raise ImageError(path, f"no Multiboot header (magic {MULTIBOOT_MAGIC:#x} with a valid "
                               f"checksum) in the first {MB_SEARCH} bytes")
    flags = _u32(data, off + 4)
    unsupported = [bit for bit in range(16)
                   if flags & (1 << bit) & ~MB_SUPPORTED_REQUIRED]
    if unsupported:
        raise ImageError(path, f"the Multiboot header requires unsupported feature "
                               f"{_plural_bits(unsupported)}")
    cmd = cmdline.encode()
    if b"\0" in cmd:
        raise ImageError(path, "the command line contains a NUL byte")
    low_top = _check_low_ram(space, ram_size)

    if flags & MB_AOUT_KLUDGE:
        segment, entry = _aout_segment(data, off, path)
        segments, kind = [segment], "flat image with the a.out-kludge address fields"
    else:
        if data[:4] != _ELF_MAGIC:
            raise ImageError(path, "a Multiboot kernel without the address fields (flags bit "
                                   "16) must be an ELF file")
        if len(data) > 4 and data[4] == 2:
            raise ImageError(path, "a 64-bit ELF: Multiboot v1 kernels are 32-bit (ELF32 "
                                   "i386)")
        elfclass, machine, entry, segments = _parse_elf(data, path)
        if elfclass != 32 or machine != "EM_386":
            raise ImageError(path, f"ELF{elfclass} {_ELF_MACHINE_NAMES[machine]}: Multiboot "
                                   "v1 kernels are 32-bit (ELF32 i386)")
        kind = "ELF32"
    _check_segments(space, segments, path, top=low_top)
    kernel_start = min(s.paddr for s in segments)
    kernel_end = max(s.end for s in segments)

    # Layout after the kernel: info | mmap | module list | strings, then each module.
    mbi = _align_up(kernel_end, PAGE)
    mmap = b"".join(struct.pack("<IQQI", MB_MMAP_ENTRY_SIZE - 4, addr, size, kind_)
                    for addr, size, kind_ in e820_map(ram_size))
    mmap_addr = mbi + MBI_SIZE
    mods_addr = mmap_addr + len(mmap)
    strings = bytearray()
    strings_addr = mods_addr + MB_MODULE_SIZE * len(modules)

    def add_string(raw: bytes) -> int:
        addr = strings_addr + len(strings)
        strings.extend(raw + b"\0")
        return addr

    cmdline_addr = add_string(cmd)
    name_addr = add_string(BOOT_LOADER_NAME.encode())
    module_list = bytearray()
    cursor = _align_up(strings_addr + len(strings) + sum(len(n.encode()) + 1
                                                         for _, n in modules), PAGE)
    placed: list[tuple[int, bytes]] = []
    for mod, name in modules:
        raw_name = name.encode()
        if b"\0" in raw_name:
            raise ImageError(path, f"module string {name!r} contains a NUL byte")
        module_list += struct.pack("<4I", cursor, cursor + len(mod), add_string(raw_name), 0)
        placed.append((cursor, mod))
        cursor = _align_up(cursor + len(mod), PAGE)
    end = max(cursor, strings_addr + len(strings))
    if end > low_top:
        raise ImageError(path, f"the kernel {_span(kernel_start, kernel_end)}, its boot "
                               f"information and {len(modules)} module(s) need RAM up to "
                               f"{end:#x}, but low RAM ends at {low_top:#x}")

    info = bytearray(MBI_SIZE)
    struct.pack_into("<I", info, 0, MBI_MEM | MBI_CMDLINE | MBI_MODS | MBI_MMAP
                     | MBI_LOADER_NAME)
    struct.pack_into("<II", info, MBI_OFF_MEM_LOWER, MB_MEM_LOWER_KIB,
                     (low_top - HIGH_MEMORY) // 1024)
    struct.pack_into("<I", info, MBI_OFF_CMDLINE, cmdline_addr)
    struct.pack_into("<II", info, MBI_OFF_MODS_COUNT, len(modules), mods_addr)
    struct.pack_into("<II", info, MBI_OFF_MMAP_LENGTH, len(mmap), mmap_addr)
    struct.pack_into("<I", info, MBI_OFF_LOADER_NAME, name_addr)

    _write_segments(space, segments)
    space.write(GuestPhysAddr(mbi), bytes(info) + mmap + bytes(module_list) + bytes(strings))
    for addr, mod in placed:
        space.write(GuestPhysAddr(addr), mod)
    return X86Boot(entry, "protected", {0: MULTIBOOT_BOOTLOADER_MAGIC, 3: mbi}, kernel_start,
                   kernel_end, "multiboot", f"Multiboot v1 kernel ({kind})")


# -- plain ELF and raw ----------------------------------------------------------------------

def load_x86_elf(space: AddrSpace, data: bytes, *, path: str) -> X86Boot:
    """Load an ELF64 x86-64 (entered in 64-bit mode) or ELF32 i386 (32-bit protected
    mode) kernel: ``PT_LOAD`` segments at ``p_paddr`` with their bss zeroed, entry
    ``e_entry`` (translated to physical through its segment when linked virtually).
    A 64-bit entry must lie in the 1 GiB identity map."""
    _require_data(data, path)
    if data[:4] != _ELF_MAGIC:
        raise ImageError(path, "not an ELF file (no \\x7fELF magic)")
    elfclass, machine, entry, segments = _parse_elf(data, path)
    if (elfclass, machine) not in ((64, "EM_X86_64"), (32, "EM_386")):
        raise ImageError(path, f"ELF{elfclass} for {_ELF_MACHINE_NAMES[machine]}: x86 "
                               "kernels are ELF64 x86-64 or ELF32 i386")
    long = machine == "EM_X86_64"
    for i, seg in enumerate(segments):
        if not _covered(space, seg.paddr, seg.end):
            raise ImageError(path, f"segment {i} at {_span(seg.paddr, seg.end)} lies outside "
                                   "guest RAM")
        if seg.paddr < HIGH_MEMORY:
            raise ImageError(path, f"segment {i} at {_span(seg.paddr, seg.end)} starts below "
                                   "1 MiB, where the boot structures live")
    if long and entry >= IDENTITY_MAP_END:
        raise ImageError(path, f"entry point {entry:#x} is above the {IDENTITY_MAP_END >> 30}"
                               " GiB the 64-bit boot page tables map")
    _write_segments(space, segments)
    return X86Boot(entry, "long" if long else "protected", {},
                   min(s.paddr for s in segments), max(s.end for s in segments), "elf",
                   f"ELF{elfclass} {'x86-64' if long else 'i386'} kernel, "
                   f"{'64-bit' if long else '32-bit protected-mode'} entry")


def load_x86_raw(space: AddrSpace, data: bytes, *, path: str, addr: int = KERNEL_LOAD,
                 mode: Mode = "protected") -> X86Boot:
    """Copy a flat binary verbatim to ``addr`` and enter it there in ``mode`` (a real-mode
    entry must lie below 1 MiB, a 64-bit one in the 1 GiB identity map)."""
    if mode not in get_args(Mode):
        raise InvalidInput(f"unknown x86 start mode {mode!r}: choose one of "
                           f"{', '.join(get_args(Mode))}")
    _require_data(data, path)
    end = addr + len(data)
    if addr < 0 or not _covered(space, addr, end):
        raise ImageError(path, f"{len(data)} bytes at {_span(addr, end)} do not fit in guest "
                               "RAM")
    if mode == "real" and addr >= REAL_MODE_END:
        raise ImageError(path, f"real-mode entry {addr:#x} is not below 1 MiB")
    if mode == "long" and addr >= IDENTITY_MAP_END:
        raise ImageError(path, f"64-bit entry {addr:#x} is above the 1 GiB the boot page "
                               "tables map")
    space.write(GuestPhysAddr(addr), data)
    return X86Boot(addr, mode, {}, addr, end, "raw",
                   f"flat binary at {addr:#x}, {mode}-mode entry")

"""Putting x86 boot images into guest RAM: a Linux ``bzImage`` (the x86 boot
protocol, ``Documentation/arch/x86/boot.rst``, 64-bit entry), a Multiboot v1 kernel
(ELF32 or a flat image with the a.out-kludge address fields), a plain ELF and a
raw flat binary. Placement follows :mod:`pyaxvisor.vm.x86_layout`.

Every loader checks everything it can before writing guest memory, so a rejected
image leaves RAM untouched; problems are :class:`~pyaxvisor.vm.loader.ImageError`
whose message starts with the file's name.

Entry states (:class:`X86Boot`):

* **bzImage**: 64-bit mode at ``KERNEL_LOAD + 0x200`` (``startup_64``), RSI =
  ``boot_params`` (the zero page at :data:`BOOT_PARAMS_ADDR`), identity-mapped
  low memory and a GDT with ``__BOOT_CS`` 0x10 / ``__BOOT_DS`` 0x18 (the VM's
  vCPU set-up provides both).
* **Multiboot**: 32-bit protected mode at the header's or ELF's entry, EAX =
  0x2BADB002, EBX = the Multiboot information structure.
* **ELF**: ELF64 x86-64 → 64-bit mode, ELF32 i386 → 32-bit protected mode, at
  ``e_entry``; segments at their physical addresses.
* **raw**: loaded at 1 MiB, 32-bit protected mode at its first byte.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.loader import ImageError
from pyaxvisor.vm.x86_layout import (
    BOOT_PARAMS_ADDR,
    CMDLINE_ADDR,
    CMDLINE_MAX,
    HIGH_MEMORY,
    KERNEL_LOAD,
    LOW_RAM_LIMIT,
    e820_map,
)

PAGE = 0x1000
Mode = Literal["real", "protected", "long"]

# -- the setup header and boot_params (offsets into the zero page) ---------------------
HDR_START = 0x1F1
OFF_SETUP_SECTS = 0x1F1
OFF_SYSSIZE = 0x1F4
OFF_BOOT_FLAG = 0x1FE
OFF_JUMP = 0x200
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
OFF_VID_MODE = 0x1FA
OFF_EXT_RAMDISK_IMAGE = 0x0C0
OFF_EXT_RAMDISK_SIZE = 0x0C4
OFF_EXT_CMD_LINE_PTR = 0x0C8
OFF_E820_ENTRIES = 0x1E8
OFF_E820_TABLE = 0x2D0
E820_MAX = 128

LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
XLF_KERNEL_64 = 0x01
TYPE_OF_LOADER_UNDEFINED = 0xFF
HEAP_END = 0xFE00
MIN_VERSION_64 = 0x020C  # xloadflags (and so the 64-bit entry) exist from 2.12

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
MB_PAGE_ALIGN, MB_MEMORY_INFO, MB_VIDEO_MODE, MB_AOUT_KLUDGE = 1 << 0, 1 << 1, 1 << 2, 1 << 16
MB_SEARCH = 8192
MBI_MEM, MBI_CMDLINE, MBI_MODS, MBI_MMAP, MBI_LOADER_NAME = 1 << 0, 1 << 2, 1 << 3, 1 << 6, 1 << 9
EM_386, EM_X86_64 = 3, 62
ELF_MACHINE_NAMES = {183: "AArch64", 243: "RISC-V", 40: "ARM", 8: "MIPS", 21: "PowerPC64",
                     20: "PowerPC", 2: "SPARC", 22: "S390"}


@dataclass(frozen=True)
class X86Boot:
    """Where and how a loaded image starts. ``gprs`` uses the hardware numbering
    (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI)."""

    entry: int
    mode: Mode
    gprs: dict[int, int]
    kernel_start: int
    kernel_end: int
    format: str
    description: str


@dataclass(frozen=True)
class SetupHeader:
    setup_sects: int
    syssize: int
    version: int
    loadflags: int
    xloadflags: int
    kernel_alignment: int
    relocatable_kernel: int
    init_size: int
    cmdline_size: int
    initrd_addr_max: int
    pref_address: int
    header_end: int  # end of the header in the file (0x202 + the jump's offset byte)

    @property
    def setup_size(self) -> int:
        return (self.setup_sects + 1) * 512

    @property
    def kernel_size(self) -> int:
        return self.syssize * 16


def _u16(data: bytes, off: int) -> int:
    return struct.unpack_from("<H", data, off)[0]


def _u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0]


def _align_up(v: int, a: int) -> int:
    return (v + a - 1) & ~(a - 1)


def _low_top(ram_size: int) -> int:
    return min(ram_size, LOW_RAM_LIMIT)


def _in_ram(space: AddrSpace, start: int, end: int) -> bool:
    addr = start
    while addr < end:
        region = space.find_region(GuestPhysAddr(addr))
        if region is None:
            return False
        addr = int(region.gpa) + region.size
    return True


def detect_x86_format(data: bytes, *, path: str) -> str:
    """``"bzimage"``, ``"multiboot"``, ``"elf"`` or ``"raw"``; an empty file or a kernel
    for another architecture is an :class:`ImageError`."""
    if not data:
        raise ImageError(path, "the file is empty")
    if len(data) >= 0x206 and data[OFF_HEADER:OFF_HEADER + 4] == b"HdrS" and \
            data[OFF_BOOT_FLAG:OFF_BOOT_FLAG + 2] == b"\x55\xaa":
        return "bzimage"
    if _find_multiboot(data) is not None:
        return "multiboot"
    if data[:4] == b"\x7fELF":
        return "elf"
    if len(data) >= 64 and data[56:60] == b"ARM\x64":
        raise ImageError(path, "this is an arm64 Linux Image, not an x86 kernel")
    if data[:2] == b"\x1f\x8b":
        raise ImageError(path, "gzip-compressed data; an x86 kernel is a bzImage, "
                         "a Multiboot kernel, an ELF or a flat binary")
    return "raw"


# -- Linux bzImage ---------------------------------------------------------------------------

def parse_setup_header(data: bytes, *, path: str) -> SetupHeader:
    if len(data) < 0x268 or data[OFF_HEADER:OFF_HEADER + 4] != b"HdrS":
        raise ImageError(path, "not a Linux bzImage (no 'HdrS' setup header at 0x202)")
    version = _u16(data, OFF_VERSION)
    if version < MIN_VERSION_64:
        raise ImageError(path, f"boot protocol {version >> 8}.{version & 0xFF:02} is too "
                         "old: the 64-bit entry needs 2.12 or later")
    setup_sects = data[OFF_SETUP_SECTS] or 4
    return SetupHeader(
        setup_sects=setup_sects, syssize=_u32(data, OFF_SYSSIZE), version=version,
        loadflags=data[OFF_LOADFLAGS], xloadflags=_u16(data, OFF_XLOADFLAGS),
        kernel_alignment=_u32(data, OFF_KERNEL_ALIGNMENT),
        relocatable_kernel=data[OFF_RELOCATABLE], init_size=_u32(data, OFF_INIT_SIZE),
        cmdline_size=_u32(data, OFF_CMDLINE_SIZE),
        initrd_addr_max=_u32(data, OFF_INITRD_ADDR_MAX),
        pref_address=struct.unpack_from("<Q", data, OFF_PREF_ADDRESS)[0],
        header_end=OFF_HEADER + data[OFF_JUMP + 1])


def load_bzimage(space: AddrSpace, data: bytes, *, ram_size: int, cmdline: str,
                 initrd: bytes | None, path: str, initrd_path: str = "<initrd>") -> X86Boot:
    """Load a bzImage for its 64-bit entry (see the module doc)."""
    hdr = parse_setup_header(data, path=path)
    if not hdr.loadflags & LOADED_HIGH:
        raise ImageError(path, "a zImage (LOADED_HIGH clear) cannot be loaded at 1 MiB")
    if not hdr.xloadflags & XLF_KERNEL_64:
        raise ImageError(path, "the kernel has no 64-bit entry point (XLF_KERNEL_64 "
                         "clear in xloadflags)")
    expected = hdr.setup_size + hdr.kernel_size
    if len(data) < expected:
        raise ImageError(path, f"truncated: the setup header announces {expected} bytes "
                         f"({hdr.setup_sects} setup sectors and {hdr.kernel_size} bytes of "
                         f"kernel), the file has {len(data)}")
    raw_cmdline = cmdline.encode() + b"\0"
    limit = min(hdr.cmdline_size + 1 if hdr.cmdline_size else 256, CMDLINE_MAX)
    if len(raw_cmdline) > limit:
        raise ImageError(path, f"the command line is {len(raw_cmdline) - 1} bytes, the "
                         f"kernel takes at most {limit - 1}")
    kernel = data[hdr.setup_size:]
    low_top = _low_top(ram_size)
    kernel_end = KERNEL_LOAD + max(len(kernel), hdr.init_size)
    if kernel_end > low_top or not _in_ram(space, KERNEL_LOAD, kernel_end):
        raise ImageError(path, f"the kernel needs [{KERNEL_LOAD:#x}, {kernel_end:#x}) "
                         f"(init_size {hdr.init_size:#x}) but RAM ends at {low_top:#x}")
    initrd_addr = 0
    if initrd is not None:
        top = min(low_top, hdr.initrd_addr_max + 1)
        initrd_addr = (top - len(initrd)) & ~(PAGE - 1)
        if initrd_addr < _align_up(kernel_end, PAGE):
            raise ImageError(initrd_path, f"the initrd ({len(initrd)} bytes) does not fit "
                             f"between the kernel's end {kernel_end:#x} and {top:#x}")
    params = bytearray(PAGE)
    params[HDR_START:hdr.header_end] = data[HDR_START:hdr.header_end]
    params[OFF_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    params[OFF_LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", params, OFF_HEAP_END_PTR, HEAP_END)
    struct.pack_into("<H", params, OFF_VID_MODE, 0xFFFF)
    struct.pack_into("<I", params, OFF_CMD_LINE_PTR, CMDLINE_ADDR)
    struct.pack_into("<I", params, OFF_EXT_CMD_LINE_PTR, 0)
    if initrd is not None:
        struct.pack_into("<II", params, OFF_RAMDISK_IMAGE, initrd_addr & 0xFFFF_FFFF,
                         len(initrd) & 0xFFFF_FFFF)
        struct.pack_into("<I", params, OFF_EXT_RAMDISK_IMAGE, initrd_addr >> 32)
        struct.pack_into("<I", params, OFF_EXT_RAMDISK_SIZE, len(initrd) >> 32)
    entries = e820_map(ram_size)
    params[OFF_E820_ENTRIES] = len(entries)
    for i, (addr, size, kind) in enumerate(entries):
        struct.pack_into("<QQI", params, OFF_E820_TABLE + 20 * i, addr, size, kind)
    space.write(GuestPhysAddr(KERNEL_LOAD), kernel)
    if initrd is not None:
        space.write(GuestPhysAddr(initrd_addr), initrd)
    space.write(GuestPhysAddr(CMDLINE_ADDR), raw_cmdline)
    space.write(GuestPhysAddr(BOOT_PARAMS_ADDR), bytes(params))
    v = hdr.version
    return X86Boot(KERNEL_LOAD + 0x200, "long", {6: BOOT_PARAMS_ADDR}, KERNEL_LOAD,
                   kernel_end, "bzimage",
                   f"Linux bzImage, boot protocol {v >> 8}.{v & 0xFF:02}, 64-bit entry")


# -- Multiboot v1 -------------------------------------------------------------------------

def _find_multiboot(data: bytes) -> int | None:
    for off in range(0, min(len(data), MB_SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFF_FFFF == 0:
            return off
    return None


def _load_elf_segments(data: bytes, path: str, machines: tuple[int, ...],
                       what: str) -> tuple[int, list[tuple[int, bytes, int]], int]:
    """(e_entry, [(paddr, file bytes, memsz)], machine) of an ELF, checked."""
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf.header["e_machine"]
        machine_id = machine if isinstance(machine, int) else \
            {"EM_386": EM_386, "EM_X86_64": EM_X86_64, "EM_AARCH64": 183,
             "EM_RISCV": 243, "EM_ARM": 40}.get(machine, -1)
        if machine_id not in machines:
            name = ELF_MACHINE_NAMES.get(machine_id, str(machine))
            raise ImageError(path, f"ELF for {name}, not {what}")
        segments = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            if seg["p_filesz"] > seg["p_memsz"]:
                raise ImageError(path, "a segment's file size exceeds its memory size")
            segments.append((seg["p_paddr"], seg.data(), seg["p_memsz"]))
        if not segments:
            raise ImageError(path, "the ELF has no loadable segment")
        return elf.header["e_entry"], segments, machine_id
    except ELFError as exc:
        raise ImageError(path, f"malformed ELF: {exc}") from None


def _check_segments(space: AddrSpace, segments: list[tuple[int, bytes, int]], path: str,
                    limit: int) -> None:
    for paddr, _data, memsz in segments:
        if paddr + memsz > limit or not _in_ram(space, paddr, paddr + memsz):
            raise ImageError(path, f"segment [{paddr:#x}, {paddr + memsz:#x}) is not in "
                             "guest RAM")


def _write_segments(space: AddrSpace, segments: list[tuple[int, bytes, int]]) -> None:
    for paddr, seg, memsz in segments:
        space.write(GuestPhysAddr(paddr), seg + bytes(memsz - len(seg)))


def load_multiboot(space: AddrSpace, data: bytes, *, ram_size: int, cmdline: str,
                   modules: Sequence[tuple[bytes, str]] = (), path: str) -> X86Boot:
    """Load a Multiboot v1 kernel and build its information structure. The video-mode
    request (flags bit 2) is accepted and not honoured (there is no framebuffer)."""
    off = _find_multiboot(data)
    if off is None:
        raise ImageError(path, f"no Multiboot header in the first {MB_SEARCH} bytes")
    _magic, flags, _ = struct.unpack_from("<III", data, off)
    unknown = flags & 0xFFFF & ~(MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_VIDEO_MODE)
    if unknown:
        raise ImageError(path, f"the Multiboot header requires unsupported feature bit "
                         f"{unknown.bit_length() - 1}")
    low_top = _low_top(ram_size)
    if flags & MB_AOUT_KLUDGE:
        if off + 32 > len(data):
            raise ImageError(path, "truncated Multiboot header")
        header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from(
            "<IIIII", data, off + 12)
        start = off - (header_addr - load_addr)
        if load_addr > header_addr or start < 0:
            raise ImageError(path, f"Multiboot load_addr {load_addr:#x} is after "
                             f"header_addr {header_addr:#x}")
        size = (load_end - load_addr) if load_end else len(data) - start
        if size < 0 or start + size > len(data):
            raise ImageError(path, f"truncated: the Multiboot header asks for {size} bytes "
                             f"from file offset {start:#x}, the file has {len(data)}")
        memsz = max(size, (bss_end - load_addr) if bss_end else size)
        segments = [(load_addr, data[start:start + size], memsz)]
        kind = "flat"
    else:
        if data[:4] != b"\x7fELF":
            raise ImageError(path, "a Multiboot kernel without the address fields "
                             "(flags bit 16) must be an ELF")
        if data[4] != 1:
            raise ImageError(path, "a 64-bit ELF: Multiboot v1 kernels are 32-bit (ELF32)")
        entry, segments, _ = _load_elf_segments(data, path, (EM_386,), "i386")
        kind = "ELF"
    _check_segments(space, segments, path, low_top)
    kernel_start = min(p for p, _, _ in segments)
    kernel_end = max(p + m for p, _, m in segments)
    # The information structure and everything it points to, after the kernel.
    mbi = _align_up(kernel_end, PAGE)
    blob = bytearray(0x100)  # the info structure itself
    strings = bytearray()
    base_strings = mbi + len(blob)

    def add_string(text: str) -> int:
        addr = base_strings + len(strings)
        strings.extend(text.encode() + b"\0")
        return addr

    mmap = b"".join(struct.pack("<IQQI", 20, a, s, t) for a, s, t in e820_map(ram_size))
    cmdline_addr = add_string(cmdline)
    loader_addr = add_string("pyaxvisor")
    mmap_addr = base_strings + len(strings)
    strings.extend(mmap)
    mods_addr = _align_up(base_strings + len(strings), 16)
    strings.extend(bytes(mods_addr - (base_strings + len(strings))))
    mod_list_addr = mods_addr
    strings.extend(bytes(16 * len(modules)))
    names = [add_string(name) for _, name in modules]
    cursor = _align_up(base_strings + len(strings), PAGE)
    placed = []
    for (mod, _name), name_addr in zip(modules, names, strict=True):
        placed.append((cursor, mod, name_addr))
        cursor = _align_up(cursor + len(mod), PAGE)
    if cursor > low_top:
        raise ImageError(path, f"the kernel, its boot information and modules need RAM up "
                         f"to {cursor:#x}, RAM ends at {low_top:#x}")
    for i, (addr, mod, name_addr) in enumerate(placed):
        struct.pack_into("<IIII", strings, mod_list_addr - base_strings + 16 * i, addr,
                         addr + len(mod), name_addr, 0)
    info_flags = MBI_MEM | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME
    mem_upper = (low_top - HIGH_MEMORY) // 1024
    struct.pack_into("<IIIIIII", blob, 0, info_flags, 639, mem_upper, 0, cmdline_addr,
                     len(modules), mod_list_addr)
    struct.pack_into("<II", blob, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", blob, 64, loader_addr)
    _write_segments(space, segments)
    space.write(GuestPhysAddr(mbi), bytes(blob) + bytes(strings))
    for addr, mod, _ in placed:
        space.write(GuestPhysAddr(addr), mod)
    return X86Boot(entry, "protected", {0: MULTIBOOT_BOOTLOADER_MAGIC, 3: mbi}, kernel_start,
                   kernel_end, "multiboot", f"Multiboot v1 kernel ({kind})")


# -- plain ELF and raw ----------------------------------------------------------------------

def load_x86_elf(space: AddrSpace, data: bytes, *, path: str) -> X86Boot:
    entry, segments, machine = _load_elf_segments(data, path, (EM_386, EM_X86_64), "x86")
    _check_segments(space, segments, path, 1 << 52)
    _write_segments(space, segments)
    long = machine == EM_X86_64
    return X86Boot(entry, "long" if long else "protected", {},
                   min(p for p, _, _ in segments), max(p + m for p, _, m in segments), "elf",
                   f"ELF{'64 x86-64' if long else '32 i386'}")


def load_x86_raw(space: AddrSpace, data: bytes, *, path: str, addr: int = KERNEL_LOAD,
                 mode: Mode = "protected") -> X86Boot:
    if not _in_ram(space, addr, addr + len(data)):
        raise ImageError(path, f"{len(data)} bytes at {addr:#x} do not fit guest RAM")
    space.write(GuestPhysAddr(addr), data)
    return X86Boot(addr, mode, {}, addr, addr + len(data), "raw", "flat binary")

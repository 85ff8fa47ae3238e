"""Multiboot v1 kernels: an ELF32 i386 file, or a flat image placed by the header's
a.out-kludge address fields (flags bit 16).

The header (magic 0x1BADB002, flags, checksum making the three sum to 0) lies
4-byte aligned in the first :data:`MB_SEARCH` bytes (:func:`find_multiboot`).

Entry state: 32-bit protected mode at the header's or ELF's entry, EAX =
0x2BADB002, EBX = the Multiboot information structure.

Command line: as QEMU's ``-kernel`` (``hw/i386/multiboot.c``) and GRUB write it, the
kernel's own name first: ``"<kernel> <append>"``, one space between, even when the
``-append`` text is empty (``"<kernel> "``). The name is the kernel path as given.

Placement: segments at their physical addresses, anywhere in low RAM, below 1 MiB
too (:func:`~.x86_entry.check_x86_segments`). The information block (the
information structure, the memory map, the module list and the strings) goes right
after the kernel's end (page aligned), then the modules, each page aligned and right
after the one before; where the image or another boot structure is in the way, each
moves to the lowest free page of RAM above 1 MiB, else of base memory
(:class:`~.x86_entry.BootMemory`, the layout's ``high_windows``). The image is
refused when one of them fits nowhere.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pyaxvisor.boards.x86_pc import layout
from pyaxvisor.loaders.elf import MACHINE_NAMES, accept_x86, parse_elf
from pyaxvisor.loaders.image import (
    ELF_MAGIC,
    PAGE_SIZE,
    ImageError,
    Segment,
    align_up,
    require_data,
    span,
    write_segments,
)
from pyaxvisor.loaders.x86_entry import BootMemory, X86Boot, check_x86_segments
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = [
    "BOOT_LOADER_NAME", "MB_SEARCH", "MULTIBOOT_BOOTLOADER_MAGIC", "MULTIBOOT_MAGIC",
    "find_multiboot", "load_multiboot",
]

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


def find_multiboot(data: bytes) -> int | None:
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


def _plural_bits(bits: list[int]) -> str:
    return f"bit {bits[0]}" if len(bits) == 1 else "bits " + ", ".join(map(str, bits))


def _aout_segment(data: bytes, off: int, path: str) -> tuple[Segment, int]:
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
                               f"image {span(load_addr, load_addr + size)}")
    return Segment(load_addr, bytes(data[start:start + size]), memsz), entry


def _elf_segments(data: bytes, path: str) -> tuple[list[Segment], int]:
    """The segments and entry of a Multiboot ELF kernel, which must be ELF32 i386."""
    if data[:4] != ELF_MAGIC:
        raise ImageError(path, "a Multiboot kernel without the address fields (flags bit "
                               "16) must be an ELF file")
    if len(data) > 4 and data[4] == 2:
        raise ImageError(path, "a 64-bit ELF: Multiboot v1 kernels are 32-bit (ELF32 i386)")
    elf = parse_elf(data, path=path, accept=accept_x86(path))
    if elf.elfclass != 32 or elf.machine != "EM_386":
        raise ImageError(path, f"ELF{elf.elfclass} {MACHINE_NAMES[elf.machine]}: Multiboot "
                               "v1 kernels are 32-bit (ELF32 i386)")
    return list(elf.segments), elf.entry


def load_multiboot(space: AddrSpace, data: bytes, *, ram_size: int, cmdline: str,
                   modules: Sequence[tuple[bytes, str]] = (), path: str,
                   name: str | None = None, memory: BootMemory | None = None) -> X86Boot:
    """Load a Multiboot v1 kernel and build its information structure.

    Required-feature flags: bit 0 (page-align modules: modules always are), bit 1
    (memory information: always provided) and bit 2 (video mode: accepted but not
    honoured, there is no framebuffer; the information has no video fields) are
    supported; any other of bits 0..15 is refused. With bit 16 the header's address
    fields place a flat image (``load_end_addr`` 0: to the end of the file;
    ``bss_end_addr`` 0: no bss), otherwise the file must be an ELF32 i386.

    The information structure has flags MEM, CMDLINE (``"<name> <cmdline>"``, where
    ``name`` is the kernel's name, ``path`` by default: see the module doc), MODS
    (each ``(bytes, string)`` of ``modules``), MMAP (the e820 map) and
    BOOT_LOADER_NAME ("pyaxvisor"); ``mem_lower`` 639 KiB, ``mem_upper`` the KiB
    from 1 MiB to the top of low RAM.

    ``memory`` records what the boot uses (:class:`~.x86_entry.BootMemory`, a new one
    for ``path`` when not given): the kernel's segments, the information block and
    the modules are entered there.
    """
    require_data(data, path)
    off = find_multiboot(data)
    if off is None:
        raise ImageError(path, f"no Multiboot header (magic {MULTIBOOT_MAGIC:#x} with a valid "
                               f"checksum) in the first {MB_SEARCH} bytes")
    flags = int.from_bytes(data[off + 4:off + 8], "little")
    unsupported = [bit for bit in range(16)
                   if flags & (1 << bit) & ~MB_SUPPORTED_REQUIRED]
    if unsupported:
        raise ImageError(path, f"the Multiboot header requires unsupported feature "
                               f"{_plural_bits(unsupported)}")
    cmd = f"{path if name is None else name} {cmdline}".encode()
    if b"\0" in cmd:
        raise ImageError(path, "the command line contains a NUL byte")
    raw_names = [mod_name.encode() for _, mod_name in modules]
    for raw_name, (_, mod_name) in zip(raw_names, modules, strict=True):
        if b"\0" in raw_name:
            raise ImageError(path, f"module string {mod_name!r} contains a NUL byte")
    if memory is None:
        memory = BootMemory(space, ram_size, path)
    low_top = memory.low_top

    if flags & MB_AOUT_KLUDGE:
        segment, entry = _aout_segment(data, off, path)
        segments, kind = [segment], "flat image with the a.out-kludge address fields"
    else:
        segments, entry = _elf_segments(data, path)
        kind = "ELF32"
    check_x86_segments(space, segments, path, top=low_top)
    kernel_start = min(s.paddr for s in segments)
    kernel_end = max(s.end for s in segments)
    memory.claim_segments(segments, "the kernel's segment")

    # The information block: info | mmap | module list | strings.
    mmap = b"".join(struct.pack("<IQQI", MB_MMAP_ENTRY_SIZE - 4, addr, size, kind_)
                    for addr, size, kind_ in layout.e820_map(ram_size))
    strings_size = len(cmd) + 1 + len(BOOT_LOADER_NAME) + 1 + sum(len(n) + 1
                                                                  for n in raw_names)
    block_size = MBI_SIZE + len(mmap) + MB_MODULE_SIZE * len(modules) + strings_size
    windows = layout.high_windows(low_top)
    mbi = memory.place("Multiboot information", block_size, align=PAGE_SIZE,
                       slots=[align_up(kernel_end, PAGE_SIZE)], windows=windows)
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
    cursor = mbi + block_size
    placed: list[tuple[int, bytes]] = []
    for i, ((mod, mod_name), raw_name) in enumerate(zip(modules, raw_names, strict=True)):
        addr = memory.place(f"module {i} ({mod_name})", max(len(mod), 1), align=PAGE_SIZE,
                            slots=[align_up(cursor, PAGE_SIZE)], windows=windows)
        module_list += struct.pack("<4I", addr, addr + len(mod), add_string(raw_name), 0)
        placed.append((addr, mod))
        cursor = addr + len(mod)
    assert len(strings) == strings_size

    info = bytearray(MBI_SIZE)
    struct.pack_into("<I", info, 0, MBI_MEM | MBI_CMDLINE | MBI_MODS | MBI_MMAP
                     | MBI_LOADER_NAME)
    struct.pack_into("<II", info, MBI_OFF_MEM_LOWER, MB_MEM_LOWER_KIB,
                     (low_top - layout.HIGH_MEMORY) // 1024)
    struct.pack_into("<I", info, MBI_OFF_CMDLINE, cmdline_addr)
    struct.pack_into("<II", info, MBI_OFF_MODS_COUNT, len(modules), mods_addr)
    struct.pack_into("<II", info, MBI_OFF_MMAP_LENGTH, len(mmap), mmap_addr)
    struct.pack_into("<I", info, MBI_OFF_LOADER_NAME, name_addr)

    write_segments(space, segments)
    space.write(GuestPhysAddr(mbi), bytes(info) + mmap + bytes(module_list) + bytes(strings))
    for addr, mod in placed:
        space.write(GuestPhysAddr(addr), mod)
    return X86Boot(entry, "protected", {0: MULTIBOOT_BOOTLOADER_MAGIC, 3: mbi}, kernel_start,
                   kernel_end, "multiboot", f"Multiboot v1 kernel ({kind})")

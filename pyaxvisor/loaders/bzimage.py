"""Linux ``bzImage`` kernels: the x86 boot protocol (``Documentation/arch/x86/boot.rst``),
64-bit entry.

Entry state: 64-bit mode at ``KERNEL_LOAD + 0x200`` (``startup_64``), RSI =
``boot_params`` (the zero page at the layout's ``BOOT_PARAMS_ADDR``). The VM's vCPU
set-up provides what boot.rst asks for the 64-bit entry: identity-mapped
``[0, 1 GiB)`` (which must hold the kernel's ``init_size`` footprint, the zero
page and the command line) and a GDT with ``__BOOT_CS`` 0x10 and ``__BOOT_DS`` 0x18.

Placement: the protected-mode kernel (everything after the setup sectors) at
``KERNEL_LOAD`` (1 MiB). It decompresses itself to its *runtime start*, boot.rst's
rule: ``align_up(max(load, pref_address), kernel_alignment)`` for a relocatable
kernel, else ``pref_address`` (16 MiB for distribution kernels), and needs
``init_size`` bytes there. The kernel's footprint, which ``X86Boot.kernel_end``
reports, ends at the higher of the loaded image's end and ``runtime start +
init_size``; it must fit in low RAM and in the 1 GiB identity map. The zero page
goes to the layout's ``BOOT_PARAMS_ADDR`` and the command line to its
``CMDLINE_ADDR`` (the kernel is above 1 MiB, so these slots are always free; they
are entered in the :class:`~.x86_entry.BootMemory` with the kernel's footprint and
the initrd), the e820 map into ``boot_params``, and the initrd page aligned as high
as possible below ``min(initrd_addr_max + 1, low RAM top)`` and above the footprint.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyaxvisor.boards.x86_pc import layout
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.image import (
    PAGE_SIZE,
    ImageError,
    align_down,
    align_up,
    require_data,
    span,
)
from pyaxvisor.loaders.x86_entry import IDENTITY_MAP_END, BootMemory, X86Boot
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = [
    "BOOT_FLAG", "BOOT_PARAMS_SIZE", "HDRS_MAGIC", "MIN_VERSION_64", "OFF_BOOT_FLAG",
    "OFF_HEADER", "SetupHeader", "is_bzimage", "load_bzimage", "parse_setup_header",
]

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
        return align_up(max(load_address, self.pref_address), self.kernel_alignment or 1)


def _u16(data: bytes, off: int) -> int:
    return int.from_bytes(data[off:off + 2], "little")


def _u32(data: bytes, off: int) -> int:
    return int.from_bytes(data[off:off + 4], "little")


def is_bzimage(data: bytes) -> bool:
    """"HdrS" at 0x202 and the 0xAA55 boot flag at 0x1FE."""
    return (len(data) >= OFF_HEADER + 4 and data[OFF_HEADER:OFF_HEADER + 4] == HDRS_MAGIC
            and _u16(data, OFF_BOOT_FLAG) == BOOT_FLAG)


def parse_setup_header(data: bytes, *, path: str) -> SetupHeader:
    """The setup header of a bzImage; :class:`ImageError` if there is none.

    Only the header's presence is checked here; :func:`load_bzimage` checks that
    the kernel can be booted.
    """
    require_data(data, path)
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


def _check_bootable(hdr: SetupHeader, data: bytes, path: str) -> None:
    """What the 64-bit entry needs of the header: protocol, flags, a whole kernel."""
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


def _boot_params(hdr: SetupHeader, data: bytes, *, ram_size: int, cmdline_addr: int,
                 initrd_addr: int, initrd_size: int | None) -> bytearray:
    """The zero page: the file's setup header in a zeroed page, plus the loader's fields."""
    params = bytearray(BOOT_PARAMS_SIZE)
    params[OFF_SETUP_HEADER:hdr.header_end] = data[OFF_SETUP_HEADER:hdr.header_end]
    params[OFF_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    params[OFF_LOADFLAGS] |= CAN_USE_HEAP
    struct.pack_into("<H", params, OFF_HEAP_END_PTR, HEAP_END)
    struct.pack_into("<H", params, OFF_VID_MODE, VID_MODE_NORMAL)
    struct.pack_into("<I", params, OFF_CMD_LINE_PTR, cmdline_addr & 0xFFFF_FFFF)
    struct.pack_into("<I", params, OFF_EXT_CMD_LINE_PTR, cmdline_addr >> 32)
    if initrd_size is not None:
        struct.pack_into("<I", params, OFF_RAMDISK_IMAGE, initrd_addr & 0xFFFF_FFFF)
        struct.pack_into("<I", params, OFF_RAMDISK_SIZE, initrd_size & 0xFFFF_FFFF)
        struct.pack_into("<I", params, OFF_EXT_RAMDISK_IMAGE, initrd_addr >> 32)
        struct.pack_into("<I", params, OFF_EXT_RAMDISK_SIZE, initrd_size >> 32)
    entries = layout.e820_map(ram_size)
    if len(entries) > E820_MAX_ENTRIES:  # pragma: no cover - the layout has at most 4
        raise InvalidInput(f"{len(entries)} e820 entries; boot_params holds "
                           f"{E820_MAX_ENTRIES}")
    params[OFF_E820_ENTRIES] = len(entries)
    for i, (addr, size, kind) in enumerate(entries):
        struct.pack_into("<QQI", params, OFF_E820_TABLE + E820_ENTRY_SIZE * i, addr, size,
                         kind)
    return params


def load_bzimage(space: AddrSpace, data: bytes, *, ram_size: int, cmdline: str,
                 initrd: bytes | None, path: str, initrd_path: str = "<initrd>",
                 memory: BootMemory | None = None) -> X86Boot:
    """Load a bzImage for its 64-bit entry and fill in its ``boot_params``.

    Requires protocol 2.12 or later with ``XLF_KERNEL_64`` and ``LOADED_HIGH``. The
    zero page is the file's setup header in an otherwise zeroed page, plus
    ``type_of_loader`` 0xFF, ``CAN_USE_HEAP`` with ``heap_end_ptr`` 0xFE00,
    ``vid_mode`` 0xFFFF ("normal"), the command line pointer, the initrd fields and
    the e820 map of ``ram_size`` bytes of RAM. See the module doc for placement;
    ``memory`` (a new :class:`~.x86_entry.BootMemory` when not given) records it.
    """
    hdr = parse_setup_header(data, path=path)
    _check_bootable(hdr, data, path)
    raw_cmdline = cmdline.encode()
    if b"\0" in raw_cmdline:
        raise ImageError(path, "the command line contains a NUL byte")
    max_cmdline = min(hdr.cmdline_size, layout.CMDLINE_MAX - 1)
    if len(raw_cmdline) > max_cmdline:
        raise ImageError(path, f"the command line is {len(raw_cmdline)} bytes, the kernel "
                               f"takes at most {max_cmdline}")

    if memory is None:
        memory = BootMemory(space, ram_size, path)
    low_top = memory.low_top
    kernel = memoryview(data)[hdr.setup_size:]
    load_end = layout.KERNEL_LOAD + len(kernel)
    runtime = hdr.runtime_start(layout.KERNEL_LOAD)
    footprint_end = max(load_end, runtime + hdr.init_size)
    limit = min(low_top, IDENTITY_MAP_END)
    if footprint_end > limit:
        raise ImageError(path, f"the kernel needs RAM up to {footprint_end:#x} (loaded at "
                               f"{span(layout.KERNEL_LOAD, load_end)}, decompressing to "
                               f"{span(runtime, runtime + hdr.init_size)} per init_size) "
                               f"but {'RAM' if limit == low_top else 'the identity map'} "
                               f"ends at {limit:#x}")

    initrd_addr = 0
    if initrd is not None:
        require_data(initrd, initrd_path, "the initrd")
        ceiling = min(low_top, hdr.initrd_addr_max + 1)
        floor = align_up(footprint_end, PAGE_SIZE)
        initrd_addr = align_down(ceiling - len(initrd), PAGE_SIZE)
        if initrd_addr < floor:
            raise ImageError(initrd_path, f"the initrd ({len(initrd)} bytes) does not fit "
                                          f"between the kernel's end {floor:#x} and "
                                          f"{ceiling:#x} ({max(0, ceiling - floor)} bytes "
                                          "free)")
    memory.claim(layout.KERNEL_LOAD, footprint_end, "the kernel")
    if initrd is not None:
        memory.claim(initrd_addr, initrd_addr + len(initrd), "the initrd")
    low = layout.low_windows(low_top, IDENTITY_MAP_END)
    params_addr = memory.place("boot_params", BOOT_PARAMS_SIZE, align=PAGE_SIZE,
                               slots=[layout.BOOT_PARAMS_ADDR], windows=low)
    cmdline_addr = memory.place("command line", len(raw_cmdline) + 1,
                                slots=[layout.CMDLINE_ADDR], windows=low)
    params = _boot_params(hdr, data, ram_size=ram_size, cmdline_addr=cmdline_addr,
                          initrd_addr=initrd_addr,
                          initrd_size=None if initrd is None else len(initrd))

    space.write(GuestPhysAddr(layout.KERNEL_LOAD), kernel)
    if initrd is not None:
        space.write(GuestPhysAddr(initrd_addr), initrd)
    space.write(GuestPhysAddr(cmdline_addr), raw_cmdline + b"\0")
    space.write(GuestPhysAddr(params_addr), params)
    return X86Boot(layout.KERNEL_LOAD + STARTUP_64_OFFSET, "long",
                   {6: params_addr}, layout.KERNEL_LOAD, footprint_end, "bzimage",
                   f"Linux bzImage, boot protocol {hdr.protocol}, 64-bit entry")

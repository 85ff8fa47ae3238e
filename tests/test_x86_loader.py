"""x86 boot images in guest RAM: bzImage boot_params, Multiboot information, ELF,
raw binaries and the MP table — read back from guest memory field by field."""

from __future__ import annotations

import struct
from importlib import resources
from pathlib import Path

import pytest

from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal.vcpu_hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table
from pyaxvisor.vm.loader import ImageError
from pyaxvisor.vm.mptable import build_mptable
from pyaxvisor.vm.x86_layout import BOOT_PARAMS_ADDR, CMDLINE_ADDR, KERNEL_LOAD, e820_map
from pyaxvisor.vm.x86_loader import (
    detect_x86_format,
    load_bzimage,
    load_multiboot,
    load_x86_elf,
    load_x86_raw,
    parse_setup_header,
)

RAM = 64 << 20
GUESTS = Path(str(resources.files("pyaxvisor.guests").joinpath("x86_64")))


@pytest.fixture
def space():
    with HostHal(RAM + (8 << 20)) as hal:
        sp = AddrSpace(hal, nested_page_table(hal, "x86_64"))
        sp.map_ram(GuestPhysAddr(0), RAM)
        yield sp
        sp.destroy()


def rd(space, addr, n):
    return space.read(GuestPhysAddr(addr), n)


def u32(space, addr):
    return struct.unpack("<I", rd(space, addr, 4))[0]


def bzimage(*, setup_sects=2, kernel=b"K" * 0x3000, version=0x020F, loadflags=0x01,
            xloadflags=0x1, init_size=0x10000, cmdline_size=255,
            initrd_addr_max=0x37FF_FFFF) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<I", setup, 0x1F4, len(kernel) // 16)
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x200:0x202] = bytes([0xEB, 0x66])  # jmp to 0x268: the header ends there
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x20_0000)
    setup[0x234] = 1
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + kernel


def test_bzimage_boot_params_field_by_field(space):
    image = bzimage()
    initrd = b"I" * 5000
    boot = load_bzimage(space, image, ram_size=RAM, cmdline="console=ttyS0 quiet",
                        initrd=initrd, path="bz")
    assert (boot.entry, boot.mode, boot.gprs) == (KERNEL_LOAD + 0x200, "long",
                                                  {6: BOOT_PARAMS_ADDR})
    bp = BOOT_PARAMS_ADDR
    # the setup header is copied, then the loader's fields are filled in
    assert rd(space, bp + 0x202, 4) == b"HdrS"
    assert rd(space, bp + 0x1F1, 1) == b"\x02"
    assert rd(space, bp + 0x210, 1) == b"\xff"  # type_of_loader
    assert rd(space, bp + 0x211, 1)[0] == 0x81  # LOADED_HIGH | CAN_USE_HEAP
    assert struct.unpack("<H", rd(space, bp + 0x224, 2))[0] == 0xFE00
    assert struct.unpack("<H", rd(space, bp + 0x1FA, 2))[0] == 0xFFFF
    assert u32(space, bp + 0x228) == CMDLINE_ADDR
    assert rd(space, CMDLINE_ADDR, 20) == b"console=ttyS0 quiet\0"
    ramdisk, size = u32(space, bp + 0x218), u32(space, bp + 0x21C)
    assert size == 5000 and ramdisk % 0x1000 == 0
    assert ramdisk + size <= RAM and RAM - (ramdisk + size) < 0x1000  # as high as possible
    assert rd(space, ramdisk, 5000) == initrd
    assert (u32(space, bp + 0xC0), u32(space, bp + 0xC4)) == (0, 0)
    entries = rd(space, bp + 0x1E8, 1)[0]
    assert entries == len(e820_map(RAM)) == 3
    table = [struct.unpack_from("<QQI", rd(space, bp + 0x2D0 + 20 * i, 20))
             for i in range(entries)]
    assert table == [(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2), (0x100000, RAM - 0x100000, 1)]
    assert rd(space, KERNEL_LOAD, 0x3000) == b"K" * 0x3000


@pytest.mark.parametrize(("kwargs", "cut", "message"), [
    ({}, 0x1000, r"bz: truncated: the setup header announces 13824 bytes .*the file has 9728"),
    ({"version": 0x0206}, 0, r"boot protocol 2.06 is too old"),
    ({"loadflags": 0}, 0, r"LOADED_HIGH clear"),
    ({"xloadflags": 0}, 0, r"no 64-bit entry point"),
    ({"init_size": RAM}, 0, r"the kernel needs \[0x100000, 0x4100000\)"),
])
def test_bad_bzimages_are_refused_and_leave_ram_untouched(space, kwargs, cut, message):
    image = bzimage(**kwargs)
    if cut:
        image = image[:-cut]
    with pytest.raises(ImageError, match=message):
        load_bzimage(space, image, ram_size=RAM, cmdline="", initrd=None, path="bz")
    assert rd(space, BOOT_PARAMS_ADDR, 0x1000) == bytes(0x1000)
    assert rd(space, KERNEL_LOAD, 0x100) == bytes(0x100)


def test_bzimage_cmdline_and_initrd_limits(space):
    with pytest.raises(ImageError, match=r"command line is 300 bytes, the kernel takes at "
                                         r"most 255"):
        load_bzimage(space, bzimage(), ram_size=RAM, cmdline="x" * 300, initrd=None,
                     path="bz")
    with pytest.raises(ImageError, match=r"^rd: the initrd \(67108864 bytes\) does not fit"):
        load_bzimage(space, bzimage(), ram_size=RAM, cmdline="", initrd=bytes(RAM),
                     path="bz", initrd_path="rd")
    with pytest.raises(ImageError, match="no 'HdrS'"):
        parse_setup_header(bytes(0x1000), path="x")


def _multiboot_info(space, boot):
    mbi = boot.gprs[3]
    flags, lower, upper, _dev, cmdline, mods_count, mods_addr = \
        struct.unpack("<7I", rd(space, mbi, 28))
    mmap_len, mmap_addr = struct.unpack("<II", rd(space, mbi + 44, 8))
    name = u32(space, mbi + 64)
    return flags, lower, upper, cmdline, mods_count, mods_addr, mmap_len, mmap_addr, name


def _cstr(space, addr):
    return rd(space, addr, 256).split(b"\0")[0].decode()


@pytest.mark.parametrize("image", ["smp.elf", "smp.bin"])
def test_multiboot_kernels_and_their_information(space, image):
    data = (GUESTS / image).read_bytes()
    assert detect_x86_format(data, path=image) == "multiboot"
    boot = load_multiboot(space, data, ram_size=RAM, cmdline="exit=3",
                          modules=[(b"MODULE-ONE" * 100, "one arg"), (b"2", "two")],
                          path=image)
    assert boot.mode == "protected" and boot.gprs[0] == 0x2BADB002
    assert boot.kernel_start == 0x100000
    flags, lower, upper, cmdline, count, mods, mmap_len, mmap_addr, name = \
        _multiboot_info(space, boot)
    assert flags == (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9)
    assert (lower, upper) == (639, (RAM - 0x100000) // 1024)
    assert _cstr(space, cmdline) == "exit=3"
    assert _cstr(space, name) == "pyaxvisor"
    assert boot.gprs[3] >= boot.kernel_end and boot.gprs[3] % 0x1000 == 0
    assert count == 2
    start, end, string, _ = struct.unpack("<4I", rd(space, mods, 16))
    assert start % 0x1000 == 0 and end - start == 1000
    assert rd(space, start, 1000) == b"MODULE-ONE" * 100
    assert _cstr(space, string) == "one arg"
    entries = [struct.unpack("<IQQI", rd(space, mmap_addr + 24 * i, 24))
               for i in range(mmap_len // 24)]
    assert entries == [(20, a, s, t) for a, s, t in e820_map(RAM)]
    # the kernel's bytes are where its entry is: the first instruction is a jmp
    assert rd(space, boot.entry, 1) in (b"\xeb", b"\xe9", b"\xfa", b"\x31", b"\xbc", b"\x89")


def test_multiboot_errors(space):
    header = struct.pack("<III", 0x1BADB002, 1 << 5, (-(0x1BADB002 + (1 << 5))) & 0xFFFFFFFF)
    with pytest.raises(ImageError, match=r"^k: the Multiboot header requires unsupported "
                                         r"feature bit 5"):
        load_multiboot(space, header + bytes(64), ram_size=RAM, cmdline="", path="k")
    bad_sum = struct.pack("<III", 0x1BADB002, 0, 0)
    assert detect_x86_format(bad_sum + bytes(64), path="k") == "raw"
    elf64 = bytearray((GUESTS / "smp.elf").read_bytes())
    elf64[4] = 2  # claim ELFCLASS64
    with pytest.raises(ImageError, match="Multiboot v1 kernels are 32-bit"):
        load_multiboot(space, bytes(elf64), ram_size=RAM, cmdline="", path="k")
    with pytest.raises(ImageError, match=r"segment \[0x100000, .* is not in guest RAM|need "
                                         r"RAM up to"):
        load_multiboot(space, (GUESTS / "smp.elf").read_bytes(), ram_size=1 << 20,
                       cmdline="", path="k")


def _elf(machine: int, cls: int = 2) -> bytes:
    if cls == 2:
        ehdr = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 2, machine, 1,
                           0x200000, 64, 0, 0, 64, 56, 1, 0, 0, 0)
        phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, 0x200000, 0x200000, 4, 0x100, 0x1000)
        return ehdr + phdr + bytes(0x1000 - 120) + b"CODE"
    ehdr = struct.pack("<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, machine, 1,
                       0x300000, 52, 0, 0, 52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 0x1000, 0x300000, 0x300000, 4, 0x10, 5, 0x1000)
    return ehdr + phdr + bytes(0x1000 - 84) + b"CODE"


def test_plain_elf_mode_follows_the_class(space):
    b64 = load_x86_elf(space, _elf(62), path="k64")
    assert (b64.entry, b64.mode) == (0x200000, "long")
    assert rd(space, 0x200000, 8) == b"CODE" + bytes(4)
    b32 = load_x86_elf(space, _elf(3, cls=1), path="k32")
    assert (b32.entry, b32.mode) == (0x300000, "protected")
    assert rd(space, 0x300000, 16) == b"CODE" + bytes(12)  # bss zeroed
    with pytest.raises(ImageError, match=r"^arm: ELF for AArch64, not x86"):
        load_x86_elf(space, _elf(183), path="arm")


def test_raw_and_format_detection(space):
    boot = load_x86_raw(space, b"\xf4", path="r")
    assert (boot.entry, boot.mode) == (KERNEL_LOAD, "protected")
    with pytest.raises(ImageError, match="do not fit guest RAM"):
        load_x86_raw(space, bytes(RAM), path="r")
    arm = bytearray(64)
    arm[56:60] = b"ARM\x64"
    with pytest.raises(ImageError, match="arm64 Linux Image"):
        detect_x86_format(bytes(arm), path="a")
    with pytest.raises(ImageError, match="empty"):
        detect_x86_format(b"", path="a")
    assert detect_x86_format(bzimage(), path="b") == "bzimage"


def test_mptable_layout_and_checksums():
    data = build_mptable(2)
    fp, table = data[:16], data[16:]
    assert fp[:4] == b"_MP_" and struct.unpack_from("<I", fp, 4)[0] == 0x9FC10
    assert fp[8] == 1 and fp[9] == 4 and sum(fp) % 256 == 0
    assert table[:4] == b"PCMP" and sum(table) % 256 == 0
    length, count, lapic = (struct.unpack_from("<H", table, 4)[0],
                            struct.unpack_from("<H", table, 34)[0],
                            struct.unpack_from("<I", table, 36)[0])
    assert (length, lapic) == (len(table), 0xFEE00000)
    assert table[8:16] == b"PYAXVISR"
    # 2 CPUs, 1 bus, 1 IOAPIC, 15 I/O interrupts, 2 local interrupts
    assert count == 2 + 1 + 1 + 15 + 2
    cpu0, cpu1 = table[44:64], table[64:84]
    assert (cpu0[0], cpu0[1], cpu0[3]) == (0, 0, 3) and (cpu1[1], cpu1[3]) == (1, 1)
    assert table[84:92] == b"\x01\x00ISA   "
    assert table[92:100] == bytes([2, 2, 0x11, 1]) + (0xFEC00000).to_bytes(4, "little")
    irq0 = table[100:108]
    assert irq0 == bytes([3, 0, 0, 0, 0, 0, 2, 0])
    with pytest.raises(InvalidInput, match=r"1\.\.254 CPUs"):
        build_mptable(0)

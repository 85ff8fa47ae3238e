"""x86 boot images in guest RAM: bzImage boot_params, Multiboot information, ELF and
raw binaries, read back from guest memory field by field at the offsets the specs give
(written here as literals, not taken from the module under test)."""

from __future__ import annotations

import gzip
import struct
import subprocess

import pytest
import tools

from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal.vcpu_hal import HostHal
from pyaxvisor.loaders import (
    SetupHeader,
    X86Boot,
    detect_x86_format,
    load_bzimage,
    load_multiboot,
    load_x86_elf,
    load_x86_raw,
    parse_setup_header,
)
from pyaxvisor.loaders.image import ImageError
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table

MiB = 1 << 20
RAM = 64 * MiB
BP = 0x7000  # boot_params
CMDLINE = 0x20000
KERNEL = 0x100000
SENTINEL = 0xA5


def make_space(ram: int) -> tuple[HostHal, AddrSpace]:
    hal = HostHal(ram + 8 * MiB)
    space = AddrSpace(hal, nested_page_table(hal, "x86_64"))
    space.map_ram(GuestPhysAddr(0), ram)
    return hal, space


@pytest.fixture
def space():
    hal, sp = make_space(RAM)
    with hal:
        yield sp
        sp.destroy()


def rd(space, addr, n):
    return space.read(GuestPhysAddr(addr), n)


def u16(space, addr):
    return struct.unpack("<H", rd(space, addr, 2))[0]


def u32(space, addr):
    return struct.unpack("<I", rd(space, addr, 4))[0]


def cstr(space, addr):
    return rd(space, addr, 256).split(b"\0")[0].decode()


# Regions a loader may write; a refused image must leave them as they were.
WATCHED = [(BP, 0x1000), (CMDLINE, 0x400), (KERNEL, 0x10000), (RAM - 4 * MiB, 4 * MiB)]


def fill_watched(space):
    for addr, size in WATCHED:
        space.write(GuestPhysAddr(addr), bytes([SENTINEL]) * size)


def watched_untouched(space):
    return all(rd(space, addr, size) == bytes([SENTINEL]) * size for addr, size in WATCHED)


# -- bzImage ------------------------------------------------------------------------------

def bzimage(*, setup_sects=2, kernel=None, version=0x020F, loadflags=0x01, xloadflags=0x1,
            init_size=0x10000, cmdline_size=255, initrd_addr_max=0x37FF_FFFF,
            relocatable=1, kernel_alignment=0x20_0000, pref_address=0, boot_flag=0xAA55,
            magic=b"HdrS") -> bytes:
    """A bzImage with the setup header fields boot.rst defines at their offsets."""
    if kernel is None:
        kernel = bytes(range(256)) * 0x30  # 0x3000 bytes, a recognisable pattern
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<I", setup, 0x1F4, len(kernel) // 16)  # syssize
    struct.pack_into("<H", setup, 0x1FA, 0x0F03)  # vid_mode as a build would set it
    struct.pack_into("<H", setup, 0x1FE, boot_flag)
    setup[0x200:0x202] = bytes([0xEB, 0x66])  # jmp: the header ends at 0x202 + 0x66 = 0x268
    setup[0x202:0x206] = magic
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<H", setup, 0x20E, 0x1234)  # kernel_version (a pointer)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)  # code32_start
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, kernel_alignment)
    setup[0x234] = relocatable
    setup[0x235] = 21  # min_alignment
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    struct.pack_into("<I", setup, 0x264, 0x3C0)  # handover_offset
    setup[0x268:0x300] = b"\xcc" * 0x98  # setup code after the header: must not be copied
    return bytes(setup) + kernel


def test_parse_setup_header_fields():
    hdr = parse_setup_header(bzimage(pref_address=0x100_0000, init_size=0x123000), path="bz")
    assert isinstance(hdr, SetupHeader)
    assert (hdr.setup_sects, hdr.syssize, hdr.version) == (2, 0x300, 0x020F)
    assert (hdr.loadflags, hdr.xloadflags, hdr.relocatable_kernel) == (1, 1, 1)
    assert (hdr.kernel_alignment, hdr.init_size, hdr.pref_address) == (
        0x200000, 0x123000, 0x1000000)
    assert (hdr.cmdline_size, hdr.initrd_addr_max, hdr.header_end) == (255, 0x37FFFFFF, 0x268)
    assert (hdr.setup_size, hdr.kernel_size, hdr.protocol) == (1536, 0x3000, "2.15")
    assert parse_setup_header(bzimage(setup_sects=0), path="bz").setup_sects == 4


def test_bzimage_boot_params_field_by_field(space):
    image = bzimage()
    initrd = bytes(range(250)) * 20  # 5000 bytes
    boot = load_bzimage(space, image, ram_size=RAM, cmdline="console=ttyS0 quiet",
                        initrd=initrd, path="bz")
    assert boot == X86Boot(entry=0x100200, mode="long", gprs={6: 0x7000},
                           kernel_start=0x100000,
                           # relocatable, load 1 MiB < alignment: runs at 2 MiB + init_size
                           kernel_end=0x200000 + 0x10000, format="bzimage",
                           description="Linux bzImage, boot protocol 2.15, 64-bit entry")
    # The page as boot.rst asks, built by hand: the header [0x1F1, 0x268) copied into a
    # zeroed page, then the loader's fields.
    initrd_addr = 0x3FFE000  # RAM top 0x4000000 - 5000, rounded down to 4 KiB
    want = bytearray(0x1000)
    want[0x1F1:0x268] = image[0x1F1:0x268]
    want[0x210] = 0xFF  # type_of_loader: undefined
    want[0x211] = 0x81  # loadflags: LOADED_HIGH | CAN_USE_HEAP
    want[0x224:0x226] = (0xFE00).to_bytes(2, "little")  # heap_end_ptr
    want[0x1FA:0x1FC] = b"\xff\xff"  # vid_mode: normal
    want[0x228:0x22C] = (0x20000).to_bytes(4, "little")  # cmd_line_ptr
    want[0x218:0x21C] = initrd_addr.to_bytes(4, "little")  # ramdisk_image
    want[0x21C:0x220] = (5000).to_bytes(4, "little")  # ramdisk_size
    want[0x1E8] = 3  # e820_entries
    for i, (addr, size, kind) in enumerate([(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2),
                                            (0x100000, RAM - 0x100000, 1)]):
        want[0x2D0 + 20 * i:0x2E4 + 20 * i] = struct.pack("<QQI", addr, size, kind)
    page = rd(space, BP, 0x1000)
    assert page == bytes(want)
    # ... and the same, field by field, for a readable failure
    assert rd(space, BP + 0x202, 4) == b"HdrS"
    assert rd(space, BP + 0x1F1, 1) == b"\x02"
    assert u32(space, BP + 0x1F4) == 0x300  # syssize
    assert u16(space, BP + 0x206) == 0x020F
    assert rd(space, BP + 0x210, 2) == b"\xff\x81"
    assert u16(space, BP + 0x224) == 0xFE00
    assert u16(space, BP + 0x1FA) == 0xFFFF
    assert u32(space, BP + 0x228) == CMDLINE and u32(space, BP + 0xC8) == 0
    assert (u32(space, BP + 0x218), u32(space, BP + 0x21C)) == (initrd_addr, 5000)
    assert (u32(space, BP + 0xC0), u32(space, BP + 0xC4)) == (0, 0)
    assert u32(space, BP + 0x260) == 0x10000  # init_size copied
    assert rd(space, BP + 0x268, 0x2D0 - 0x268) == bytes(0x68)  # setup code not copied
    assert rd(space, CMDLINE, 20) == b"console=ttyS0 quiet\0"
    assert rd(space, initrd_addr, 5000) == initrd
    assert rd(space, KERNEL, 0x3000) == image[1536:]


def test_bzimage_without_initrd_leaves_ramdisk_fields_zero(space):
    boot = load_bzimage(space, bzimage(), ram_size=RAM, cmdline="", initrd=None, path="bz")
    assert boot.gprs == {6: BP}
    assert (u32(space, BP + 0x218), u32(space, BP + 0x21C)) == (0, 0)
    assert rd(space, CMDLINE, 1) == b"\0"


def test_initrd_below_initrd_addr_max(space):
    load_bzimage(space, bzimage(initrd_addr_max=0x1FF_FFFF), ram_size=RAM, cmdline="",
                 initrd=b"R" * 0x1801, path="bz")
    # below 32 MiB: 0x2000000 - 0x1801 rounded down to a page
    assert u32(space, BP + 0x218) == 0x1FFE000
    assert rd(space, 0x1FFE000, 0x1801) == b"R" * 0x1801


def test_initrd_stays_above_the_decompression_footprint(space):
    # Like a distribution kernel: runs at pref_address 16 MiB, init_size 40 MiB, so
    # [16 MiB, 56 MiB) is the kernel's even though the file is small.
    image = bzimage(pref_address=16 * MiB, init_size=40 * MiB)
    boot = load_bzimage(space, image, ram_size=RAM, cmdline="", initrd=bytes(8 * MiB),
                        path="bz")
    assert boot.kernel_end == 56 * MiB
    assert u32(space, BP + 0x218) == 56 * MiB  # exactly fits: 64 - 8
    with pytest.raises(ImageError, match=r"^rd: the initrd \(8392704 bytes\) does not fit "
                                         r"between the kernel's end 0x3800000 and "
                                         r"0x4000000 \(8388608 bytes free\)"):
        load_bzimage(space, image, ram_size=RAM, cmdline="", initrd=bytes(8 * MiB + 4096),
                     path="bz", initrd_path="rd")
    # not relocatable: runs at pref_address whatever the load address
    fixed = bzimage(relocatable=0, pref_address=0x1000000, init_size=0x100000)
    assert load_bzimage(space, fixed, ram_size=RAM, cmdline="", initrd=None,
                        path="bz").kernel_end == 0x1100000


@pytest.mark.parametrize(("kwargs", "cut", "message"), [
    ({}, 0x1000, r"^bz: truncated: the setup header announces 13824 bytes \(2 setup sectors "
                 r"and 12288 bytes of kernel\), the file has 9728$"),
    ({"magic": b"HdrX"}, 0, r"^bz: not a Linux bzImage \(no \"HdrS\" setup header at 0x202\)"),
    ({"boot_flag": 0x1234}, 0, r"^bz: not a Linux bzImage \(boot flag 0x1234"),
    ({"version": 0x020B}, 0, r"^bz: boot protocol 2\.11 is too old: the 64-bit entry needs "
                             r"2\.12 or later"),
    ({"version": 0x0206}, 0, r"boot protocol 2\.06 is too old"),
    ({"xloadflags": 0x2}, 0, r"^bz: the kernel has no 64-bit entry point \(XLF_KERNEL_64"),
    ({"loadflags": 0}, 0, r"^bz: a zImage \(LOADED_HIGH clear"),
    ({"init_size": RAM}, 0, r"^bz: the kernel needs RAM up to 0x4200000 .*decompressing to "
                            r"\[0x200000, 0x4200000\) .*but RAM ends at 0x4000000"),
    ({"kernel": bytes(RAM)}, 0, r"^bz: the kernel needs RAM up to 0x4100000 \(loaded at "
                                r"\[0x100000, 0x4100000\)"),
], ids=["truncated", "no-HdrS", "no-boot-flag", "protocol-2.11", "protocol-2.06",
        "no-64-bit-entry", "zImage", "init_size-too-big", "kernel-too-big"])
def test_bad_bzimages_are_refused_and_leave_ram_untouched(space, kwargs, cut, message):
    image = bzimage(**kwargs)
    if cut:
        image = image[:-cut]
    fill_watched(space)
    with pytest.raises(ImageError, match=message):
        load_bzimage(space, image, ram_size=RAM, cmdline="x", initrd=b"I" * 100, path="bz")
    assert watched_untouched(space)


def test_command_line_limits(space):
    fill_watched(space)
    with pytest.raises(ImageError, match=r"^bz: the command line is 11 bytes, the kernel "
                                         r"takes at most 10$"):
        load_bzimage(space, bzimage(cmdline_size=10), ram_size=RAM, cmdline="x" * 11,
                     initrd=None, path="bz")
    with pytest.raises(ImageError, match="NUL"):
        load_bzimage(space, bzimage(), ram_size=RAM, cmdline="a\0b", initrd=None, path="bz")
    # our buffer is 64 KiB, NUL included, whatever the kernel accepts
    with pytest.raises(ImageError, match=r"command line is 65536 bytes, the kernel takes "
                                         r"at most 65535$"):
        load_bzimage(space, bzimage(cmdline_size=1 << 20), ram_size=RAM,
                     cmdline="y" * 65536, initrd=None, path="bz")
    assert watched_untouched(space)
    load_bzimage(space, bzimage(cmdline_size=10), ram_size=RAM, cmdline="z" * 10,
                 initrd=None, path="bz")
    assert rd(space, CMDLINE, 11) == b"z" * 10 + b"\0"


def test_initrd_errors_name_the_initrd_and_leave_ram_untouched(space):
    fill_watched(space)
    with pytest.raises(ImageError, match=r"^rd: the initrd \(67108864 bytes\) does not fit"):
        load_bzimage(space, bzimage(), ram_size=RAM, cmdline="", initrd=bytes(RAM),
                     path="bz", initrd_path="rd")
    with pytest.raises(ImageError, match=r"^rd: the initrd is empty"):
        load_bzimage(space, bzimage(), ram_size=RAM, cmdline="", initrd=b"", path="bz",
                     initrd_path="rd")
    assert watched_untouched(space)


def test_ram_size_must_be_mapped(space):
    with pytest.raises(InvalidInput, match=r"low RAM \[0x0, 0x8000000\) .* is not mapped"):
        load_bzimage(space, bzimage(), ram_size=2 * RAM, cmdline="", initrd=None, path="bz")


@pytest.mark.slow
def test_debian_kernel_boot_params():
    from pyaxvisor import images

    path = images.fetch("linux-amd64")
    data = path.read_bytes()
    # The header, parsed here independently of the loader.
    setup_sects = data[0x1F1] or 4
    version = struct.unpack_from("<H", data, 0x206)[0]
    header_end = 0x202 + data[0x201]
    init_size = struct.unpack_from("<I", data, 0x260)[0]
    pref_address = struct.unpack_from("<Q", data, 0x258)[0]
    align = struct.unpack_from("<I", data, 0x230)[0]
    assert data[0x202:0x206] == b"HdrS" and version >= 0x020C
    assert data[0x236] & 1 and data[0x234] == 1  # 64-bit entry, relocatable
    runtime = -(-max(KERNEL, pref_address) // align) * align
    footprint_end = runtime + init_size
    ram = footprint_end + 64 * MiB
    ram -= ram % MiB
    initrd = b"07070100" + bytes(range(256)) * 100
    cmdline = "console=ttyS0 earlyprintk=serial panic=-1"
    hal, space = make_space(ram)
    with hal:
        boot = load_bzimage(space, data, ram_size=ram, cmdline=cmdline, initrd=initrd,
                            path=str(path))
        assert (boot.entry, boot.mode, boot.gprs) == (KERNEL + 0x200, "long", {6: BP})
        assert boot.kernel_end == footprint_end
        assert boot.description.startswith(f"Linux bzImage, boot protocol "
                                           f"{version >> 8}.{version & 0xFF:02}")
        assert rd(space, BP + 0x1F1, 1)[0] == data[0x1F1]
        assert rd(space, BP + 0x202, 4) == b"HdrS"
        assert u16(space, BP + 0x206) == version
        assert rd(space, BP + 0x210, 1) == b"\xff"  # type_of_loader
        assert rd(space, BP + 0x211, 1)[0] == data[0x211] | 0x80
        assert u16(space, BP + 0x224) == 0xFE00
        assert u32(space, BP + 0x228) == CMDLINE
        assert cstr(space, CMDLINE) == cmdline
        ramdisk, size = u32(space, BP + 0x218), u32(space, BP + 0x21C)
        assert size == len(initrd) and ramdisk % 4096 == 0
        assert footprint_end <= ramdisk and ramdisk + size <= ram
        assert ram - (ramdisk + size) < 4096  # as high as possible
        assert rd(space, ramdisk, size) == initrd
        assert rd(space, BP + 0x1E8, 1)[0] == 3  # e820 entries
        assert struct.unpack("<QQI", rd(space, BP + 0x2D0 + 40, 20)) == (
            0x100000, ram - 0x100000, 1)
        # the untouched part of the header matches the file byte for byte
        assert rd(space, BP + 0x1F1, 0x1FA - 0x1F1) == data[0x1F1:0x1FA]
        assert rd(space, BP + 0x1FC, 0x210 - 0x1FC) == data[0x1FC:0x210]
        assert rd(space, BP + 0x212, 0x218 - 0x212) == data[0x212:0x218]
        assert rd(space, BP + 0x220, 0x224 - 0x220) == data[0x220:0x224]
        assert rd(space, BP + 0x22C, header_end - 0x22C) == data[0x22C:header_end]
        # nothing else in the page: below the header only the e820 count, above it only
        # the e820 table
        assert rd(space, BP, 0x1E8) == bytes(0x1E8)
        assert rd(space, BP + 0x1E9, 0x1F1 - 0x1E9) == bytes(0x1F1 - 0x1E9)
        assert rd(space, BP + header_end, 0x2D0 - header_end) == bytes(0x2D0 - header_end)
        assert rd(space, BP + 0x2D0 + 60, 0x1000 - 0x2D0 - 60) == bytes(0x1000 - 0x2D0 - 60)
        kernel = data[(setup_sects + 1) * 512:]
        assert rd(space, KERNEL, len(kernel)) == kernel
        space.destroy()


# -- Multiboot ------------------------------------------------------------------------------

MB_MAGIC = 0x1BADB002


def mb_header(flags: int, *, checksum: int | None = None, aout: tuple[int, ...] = ()) -> bytes:
    if checksum is None:
        checksum = -(MB_MAGIC + flags) & 0xFFFFFFFF
    return struct.pack("<III", MB_MAGIC, flags, checksum) + struct.pack(f"<{len(aout)}I", *aout)


def elf32(segments, entry, *, machine=3, cls=1) -> bytes:
    """A little-endian ELF executable; ``segments`` = [(paddr, file bytes, memsz)], each
    put at a page-aligned file offset from 0x1000. ``cls`` 2 makes an ELF64."""
    count = len(segments)
    if cls == 1:
        ehdr = struct.pack("<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, machine, 1,
                           entry, 52, 0, 0, 52, 32, count, 0, 0, 0)
    else:
        ehdr = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 2, machine, 1,
                           entry, 64, 0, 0, 64, 56, count, 0, 0, 0)
    phdrs, body, offset = b"", b"", 0x1000
    for paddr, content, memsz in segments:
        vaddr = paddr if len(segments[0]) == 3 else None
        if cls == 1:
            phdrs += struct.pack("<IIIIIIII", 1, offset, vaddr, paddr, len(content), memsz, 7,
                                 0x1000)
        else:
            phdrs += struct.pack("<IIQQQQQQ", 1, 7, offset, vaddr, paddr, len(content), memsz,
                                 0x1000)
        padded = content + bytes(-len(content) % 0x1000)
        body += padded
        offset += len(padded)
    head = ehdr + phdrs
    return head + bytes(0x1000 - len(head)) + body


def multiboot_elf(flags=0x3, **kw) -> bytes:
    text = b"\xfa\xf4" + bytes(14) + mb_header(flags, **kw) + b"\x90" * 36  # 0x40 bytes
    data = b"DATA" * 4
    return elf32([(0x100000, text, 0x40), (0x101000, data, 0x2000)], 0x100000)


def multiboot_flat(*, load_end=0, bss_end=0x203000, entry=0x200080, flags=0x10003,
                   header_addr=0x200040, total=0x1000) -> bytes:
    image = bytearray(b"F" * total)
    hdr = mb_header(flags, aout=(header_addr, 0x200000, load_end, bss_end, entry))
    image[0x40:0x40 + len(hdr)] = hdr
    return bytes(image)


def mbi_fields(space, mbi):
    flags, lower, upper, _dev, cmdline, mods_count, mods_addr = \
        struct.unpack("<7I", rd(space, mbi, 28))
    mmap_len, mmap_addr = struct.unpack("<II", rd(space, mbi + 44, 8))
    return dict(flags=flags, lower=lower, upper=upper, cmdline=cmdline, count=mods_count,
                mods=mods_addr, mmap_len=mmap_len, mmap=mmap_addr, name=u32(space, mbi + 64))


def test_multiboot_elf_kernel_and_its_information(space):
    data = multiboot_elf()
    assert detect_x86_format(data, path="k") == "multiboot"
    space.write(GuestPhysAddr(0x101000), b"\xa5" * 0x2000)  # the bss must be cleared
    boot = load_multiboot(space, data, ram_size=RAM, cmdline="exit=3 verbose",
                          modules=[(b"MODULE-ONE" * 500, "one arg"), (b"2", "two")], path="k")
    assert boot == X86Boot(entry=0x100000, mode="protected",
                           gprs={0: 0x2BADB002, 3: 0x103000}, kernel_start=0x100000,
                           kernel_end=0x103000, format="multiboot",
                           description="Multiboot v1 kernel (ELF32)")
    assert rd(space, 0x100000, 2) == b"\xfa\xf4"
    assert rd(space, 0x101000, 0x2000) == b"DATA" * 4 + bytes(0x2000 - 16)
    mbi = 0x103000  # the kernel's end, page aligned
    f = mbi_fields(space, mbi)
    assert f["flags"] == 0x24D  # MEM | CMDLINE | MODS | MMAP | BOOT_LOADER_NAME
    assert (f["lower"], f["upper"]) == (639, (RAM - MiB) // 1024)
    # as QEMU does, the kernel's own path is the command line's first word
    assert cstr(space, f["cmdline"]) == "k exit=3 verbose"
    assert cstr(space, f["name"]) == "pyaxvisor"
    assert f["mmap_len"] == 3 * 24
    entries = [struct.unpack("<IQQI", rd(space, f["mmap"] + 24 * i, 24)) for i in range(3)]
    assert entries == [(20, 0, 0x9FC00, 1), (20, 0x9FC00, 0x60400, 2),
                       (20, 0x100000, RAM - 0x100000, 1)]
    assert f["count"] == 2
    mods = [struct.unpack("<4I", rd(space, f["mods"] + 16 * i, 16)) for i in range(2)]
    (s1, e1, n1, r1), (s2, e2, n2, r2) = mods
    assert s1 % 4096 == 0 and s2 % 4096 == 0 and (r1, r2) == (0, 0)
    assert s1 >= mbi + 0x80 and e1 - s1 == 5000 and s2 >= e1 and e2 - s2 == 1
    assert rd(space, s1, 5000) == b"MODULE-ONE" * 500 and rd(space, s2, 1) == b"2"
    assert (cstr(space, n1), cstr(space, n2)) == ("one arg", "two")
    # everything the MBI points to lies between the MBI and the first module
    assert all(mbi < a < s1 for a in (f["cmdline"], f["name"], f["mmap"], f["mods"], n1, n2))


def test_multiboot_flat_image_with_the_aout_kludge(space):
    data = multiboot_flat()
    assert detect_x86_format(data, path="f") == "multiboot"
    space.write(GuestPhysAddr(0x200000), b"\xa5" * 0x3000)
    boot = load_multiboot(space, data, ram_size=RAM, cmdline="", path="f")
    assert (boot.entry, boot.mode, boot.kernel_start, boot.kernel_end) == (
        0x200080, "protected", 0x200000, 0x203000)
    assert boot.gprs == {0: 0x2BADB002, 3: 0x203000}
    assert rd(space, 0x200000, 0x1000) == data  # load_end 0: the whole file
    assert rd(space, 0x201000, 0x2000) == bytes(0x2000)  # bss to bss_end_addr zeroed
    f = mbi_fields(space, 0x203000)
    assert (f["count"], cstr(space, f["cmdline"])) == (0, "f ")  # QEMU's "<kernel> <append>"
    # load_end_addr given: only that much of the file; bss_end_addr 0: no bss
    space.write(GuestPhysAddr(0x200000), b"\xa5" * 0x3000)
    short = multiboot_flat(load_end=0x200800, bss_end=0)
    boot = load_multiboot(space, short, ram_size=RAM, cmdline="", path="f")
    assert boot.kernel_end == 0x200800 and boot.gprs[3] == 0x201000
    assert rd(space, 0x200000, 0x800) == short[:0x800]
    assert rd(space, 0x200800, 0x800) == b"\xa5" * 0x800


def test_multiboot_video_and_optional_bits_are_accepted(space):
    flags = 0x7 | (1 << 16) | (1 << 20)  # page align, memory, video; bit 20 is optional
    boot = load_multiboot(space, multiboot_flat(flags=flags), ram_size=RAM, cmdline="",
                          path="f")
    assert boot.entry == 0x200080


def test_multiboot_detection_rules(space):
    assert detect_x86_format(multiboot_elf(checksum=0), path="k") == "elf"
    assert detect_x86_format(multiboot_flat(flags=0x10003) [:0x40] + bytes(64),
                             path="k") == "raw"
    flat = bytearray(0x3000)
    flat[8180:8192] = mb_header(0)  # 4-byte aligned, ends exactly at 8192
    assert detect_x86_format(bytes(flat), path="k") == "multiboot"
    late = bytearray(0x3000)
    late[8184:8196] = mb_header(0)  # runs past the first 8192 bytes
    assert detect_x86_format(bytes(late), path="k") == "raw"
    odd = bytearray(0x1000)
    odd[0x102:0x10E] = mb_header(0)  # not 4-byte aligned
    assert detect_x86_format(bytes(odd), path="k") == "raw"
    with pytest.raises(ImageError, match=r"^k: no Multiboot header"):
        load_multiboot(space, bytes(odd), ram_size=RAM, cmdline="", path="k")


@pytest.mark.parametrize(("make", "message"), [
    (lambda: multiboot_elf(flags=0x23), r"^k: the Multiboot header requires unsupported "
                                        r"feature bit 5$"),
    (lambda: multiboot_elf(flags=0x8 | 0x800), r"requires unsupported feature bits 3, 11$"),
    (lambda: elf32([(0x100000, b"\x90" * 16 + mb_header(0), 0x100)], 0x100000, machine=62,
                   cls=2), r"^k: a 64-bit ELF: Multiboot v1 kernels are 32-bit"),
    (lambda: elf32([(0x100000, b"\x90" * 16 + mb_header(0), 0x100)], 0x100000, machine=62),
     r"^k: ELF32 x86-64: Multiboot v1 kernels are 32-bit"),
    (lambda: elf32([(100 * MiB, b"\x90" * 16 + mb_header(0), 0x100)], 100 * MiB),
     r"^k: segment 0 at \[0x6400000, 0x6400100\) lies outside guest RAM"),
    (lambda: b"\x90" * 16 + mb_header(0) + bytes(64),
     r"without the address fields \(flags bit 16\) must be an ELF"),
    (lambda: multiboot_flat(header_addr=0x1FFF00),
     r"load_addr 0x200000 is above header_addr 0x1fff00"),
    (lambda: multiboot_flat(header_addr=0x200100),
     r"header_addr 0x200100 - load_addr 0x200000 exceeds the header's file offset 0x40"),
    (lambda: multiboot_flat(load_end=0x202000),
     r"^k: truncated: the Multiboot header loads 8192 bytes from file offset 0x0, the file "
     r"has 4096$"),
    (lambda: multiboot_flat(bss_end=0x200800), r"bss_end_addr 0x200800 is below"),
    (lambda: multiboot_flat(entry=0x201000), r"entry_addr 0x201000 is outside the loaded "
                                             r"image \[0x200000, 0x201000\)"),
    (lambda: multiboot_flat(bss_end=RAM + 0x200000),
     r"segment 0 at \[0x200000, 0x4200000\) lies outside guest RAM"),
])
def test_multiboot_errors_leave_ram_untouched(space, make, message):
    fill_watched(space)
    with pytest.raises(ImageError, match=message):
        load_multiboot(space, make(), ram_size=RAM, cmdline="c", modules=[(b"m", "m")],
                       path="k")
    assert watched_untouched(space)


def test_multiboot_modules_must_fit_in_ram(space):
    fill_watched(space)
    with pytest.raises(ImageError, match=r"^k: no room for the module 0 \(big\) \(67108864 "
                                         r"bytes\) in .*: taken by the kernel's segment 0 "):
        load_multiboot(space, multiboot_elf(), ram_size=RAM, cmdline="",
                       modules=[(bytes(RAM), "big")], path="k")
    assert watched_untouched(space)


def test_multiboot_kernel_built_by_binutils(space, tmp_path):
    # the host's binutils: installing pyaxvisor needs the C toolchain (README)
    (tmp_path / "k.S").write_text("""
        .section .text
        .align 4
        .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)
        .globl _start
    _start:
        movl $0x12345678, %eax
        hlt
        .section .bss
        .space 0x3000
    """)
    subprocess.run(["as", "--32", "-o", tmp_path / "k.o", tmp_path / "k.S"], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-N", "-Ttext=0x100000", "-e", "_start", "-o",
                    tmp_path / "k.elf", tmp_path / "k.o"], check=True)
    data = (tmp_path / "k.elf").read_bytes()
    assert detect_x86_format(data, path="k.elf") == "multiboot"
    boot = load_multiboot(space, data, ram_size=RAM, cmdline="hi", path="k.elf")
    assert boot.entry == 0x10000C and boot.kernel_start == 0x100000
    assert rd(space, 0x100000, 12) == mb_header(3)
    assert rd(space, 0x10000C, 6) == b"\xb8\x78\x56\x34\x12\xf4"
    assert boot.kernel_end >= 0x103000 and boot.gprs[3] == -(-boot.kernel_end // 4096) * 4096


# -- plain ELF ------------------------------------------------------------------------------

def test_elf64_x86_64_enters_long_mode(space):
    space.write(GuestPhysAddr(0x200000), b"\xa5" * 0x100)
    boot = load_x86_elf(space, elf32([(0x200000, b"CODE", 0x100)], 0x200000, machine=62,
                                     cls=2), path="k64")
    assert boot == X86Boot(0x200000, "long", {}, 0x200000, 0x200100, "elf",
                           "ELF64 x86-64 kernel, 64-bit entry")
    assert rd(space, 0x200000, 0x100) == b"CODE" + bytes(0xFC)


def test_elf32_i386_enters_protected_mode(space):
    space.write(GuestPhysAddr(0x300000), b"\xa5" * 0x10)
    boot = load_x86_elf(space, elf32([(0x300000, b"CODE", 0x10)], 0x300004), path="k32")
    assert (boot.entry, boot.mode, boot.gprs, boot.format) == (0x300004, "protected", {},
                                                               "elf")
    assert rd(space, 0x300000, 16) == b"CODE" + bytes(12)


def test_elf_linked_at_a_virtual_address(space):
    data = bytearray(elf32([(0x1000000, b"\x90" * 16, 0x10)], 0xFFFFFFFF81000008,
                           machine=62, cls=2))
    struct.pack_into("<Q", data, 64 + 16, 0xFFFFFFFF81000000)  # p_vaddr of segment 0
    assert load_x86_elf(space, bytes(data), path="vmlinux").entry == 0x1000008


@pytest.mark.parametrize(("machine", "cls", "message"), [
    (183, 2, r"^arm: ELF for AArch64, not x86$"),
    (243, 2, r"^arm: ELF for RISC-V, not x86$"),
    (40, 1, r"^arm: ELF for 32-bit ARM, not x86$"),
    (3, 2, r"^arm: ELF64 for i386: x86 kernels are ELF64 x86-64 or ELF32 i386$"),
])
def test_elf_for_another_machine(space, machine, cls, message):
    with pytest.raises(ImageError, match=message):
        load_x86_elf(space, elf32([(0x200000, b"CODE", 0x10)], 0x200000, machine=machine,
                                  cls=cls), path="arm")


def test_real_aarch64_elf_is_refused(space, tmp_path):
    (tmp_path / "a.S").write_text(".globl _start\n_start: wfi\n b _start\n")
    subprocess.run([tools.tool("aarch64-linux-gnu-as"), "-o", tmp_path / "a.o",
                    tmp_path / "a.S"], check=True)
    subprocess.run([tools.tool("aarch64-linux-gnu-ld"), "-Ttext=0x200000", "-o",
                    tmp_path / "a.elf", tmp_path / "a.o"], check=True)
    data = (tmp_path / "a.elf").read_bytes()
    assert detect_x86_format(data, path="a.elf") == "elf"
    with pytest.raises(ImageError, match=r"^a.elf: ELF for AArch64, not x86"):
        load_x86_elf(space, data, path="a.elf")


def test_elf_segments_outside_ram_leave_ram_untouched(space):
    fill_watched(space)
    with pytest.raises(ImageError, match=r"^k: segment 1 at \[0x4000000, 0x4001000\) lies "
                                         r"outside guest RAM"):
        load_x86_elf(space, elf32([(0x100000, b"A" * 16, 0x10), (RAM, b"B", 0x1000)],
                                  0x100000), path="k")
    with pytest.raises(ImageError, match=r"^k: malformed or truncated ELF"):
        load_x86_elf(space, b"\x7fELF\x01\x01\x01", path="k")
    with pytest.raises(ImageError, match=r"^k: entry point 0x500000 is outside every "
                                         r"loaded segment"):
        load_x86_elf(space, elf32([(0x100000, b"A", 0x10)], 0x500000), path="k")
    assert watched_untouched(space)


# -- raw and format detection ----------------------------------------------------------------

def test_raw_binary(space):
    boot = load_x86_raw(space, b"\xf4\xeb\xfe", path="r")
    assert boot == X86Boot(0x100000, "protected", {}, 0x100000, 0x100003, "raw",
                           "flat binary at 0x100000, protected-mode entry")
    assert rd(space, 0x100000, 3) == b"\xf4\xeb\xfe"
    boot = load_x86_raw(space, b"\xfa\xf4", path="r", addr=0x7C00, mode="real")
    assert (boot.entry, boot.mode) == (0x7C00, "real") and rd(space, 0x7C00, 2) == b"\xfa\xf4"
    fill_watched(space)
    with pytest.raises(ImageError, match=r"^r: 67108864 bytes at \[0x100000, 0x4100000\) do "
                                         r"not fit in guest RAM"):
        load_x86_raw(space, bytes(RAM), path="r")
    with pytest.raises(ImageError, match="real-mode entry 0x100000 is not below 1 MiB"):
        load_x86_raw(space, b"\xf4", path="r", mode="real")
    with pytest.raises(ImageError, match="empty"):
        load_x86_raw(space, b"", path="r")
    with pytest.raises(InvalidInput, match="unknown x86 start mode 'virtual'"):
        load_x86_raw(space, b"\xf4", path="r", mode="virtual")  # type: ignore[arg-type]
    assert watched_untouched(space)


def test_format_detection():
    assert detect_x86_format(bzimage(), path="b") == "bzimage"
    assert detect_x86_format(elf32([(0x100000, b"A", 1)], 0x100000), path="e") == "elf"
    assert detect_x86_format(b"\xfa\xf4" * 100, path="r") == "raw"
    with pytest.raises(ImageError, match=r"^a: the file is empty"):
        detect_x86_format(b"", path="a")
    arm = bytearray(4096)
    arm[56:60] = b"ARM\x64"
    with pytest.raises(ImageError, match=r"^a: this is an arm64 Linux Image"):
        detect_x86_format(bytes(arm), path="a")
    with pytest.raises(ImageError, match=r"^a: gzip-compressed data holding an arm64 Linux "
                                         r"Image"):
        detect_x86_format(gzip.compress(bytes(arm)), path="a")
    with pytest.raises(ImageError, match=r"gzip-compressed data holding a cpio archive"):
        detect_x86_format(gzip.compress(b"070701" + bytes(200)), path="i")
    with pytest.raises(ImageError, match=r"gzip-compressed data holding an x86 bzImage"):
        detect_x86_format(gzip.compress(bzimage()), path="b")
    with pytest.raises(ImageError, match=r"xz-compressed data"):
        detect_x86_format(b"\xfd7zXZ\x00" + bytes(100), path="x")
    with pytest.raises(ImageError, match=r"device tree blob"):
        detect_x86_format(b"\xd0\x0d\xfe\xed" + bytes(100), path="d")
    with pytest.raises(ImageError, match=r"a damaged bzImage"):
        detect_x86_format(bzimage(boot_flag=0), path="b")
    zboot = bytearray(256)
    zboot[0:2], zboot[4:8] = b"MZ", b"zimg"
    with pytest.raises(ImageError, match=r"EFI zboot image"):
        detect_x86_format(bytes(zboot), path="z")
    pe = bytearray(256)
    pe[0:2], pe[0x3C:0x40], pe[0x80:0x84] = b"MZ", (0x80).to_bytes(4, "little"), b"PE\0\0"
    with pytest.raises(ImageError, match=r"PE/EFI executable without a Linux setup header"):
        detect_x86_format(bytes(pe), path="p")


def test_kernels_below_1_mib_load_and_the_boot_structures_keep_out_of_their_way(space):
    # a real-mode style kernel at 0x7000 is not refused: only a real overlap would be
    boot = load_x86_elf(space, elf32([(0x7000, b"A" * 16, 0x10)], 0x7000), path="k")
    assert (boot.entry, boot.kernel_start) == (0x7000, 0x7000)
    assert rd(space, 0x7000, 16) == b"A" * 16
    data = elf32([(0x8000, b"\x90" * 16 + mb_header(0), 0x100)], 0x8000)
    boot = load_multiboot(space, data, ram_size=RAM, cmdline="c", modules=[(b"m", "m")],
                          path="k")
    assert boot.entry == 0x8000
    mbi = boot.gprs[3]
    assert not 0x8000 <= mbi < 0x8100
    f = mbi_fields(space, mbi)
    assert cstr(space, f["cmdline"]) == "k c"
    assert all(not 0x8000 <= a < 0x8100 for a in (f["cmdline"], f["mods"], f["mmap"]))

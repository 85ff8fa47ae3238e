"""Boot image loaders: format detection, arm64 Image, ELF, raw, initrd and DTB placement."""

from __future__ import annotations

import bz2
import gzip
import io
import re
import struct
import subprocess

import fdt
import pytest
from elftools.elf.elffile import ELFFile
from tools import tool

from pyaxvisor.boards.aarch64_virt.fdt import build_aarch64_dtb
from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal import HostHal
from pyaxvisor.loaders import (
    ImageError,
    LoadedImage,
    detect_format,
    dtb_address,
    load_arm64_image,
    load_elf,
    load_initrd,
    load_raw,
    parse_arm64_header,
    place_dtb,
)
from pyaxvisor.loaders import compression as loader
from pyaxvisor.mm import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table

G = GuestPhysAddr
MiB = 1 << 20
RAM_BASE = 0x4000_0000
RAM_SIZE = 32 * MiB
RAM_END = RAM_BASE + RAM_SIZE
PATH = "/boot/vmlinuz-test"
ARM64_HEADER = 64


@pytest.fixture
def hal():
    h = HostHal(64 << 20)
    yield h
    h.close()


@pytest.fixture
def space(hal):
    s = AddrSpace(hal, nested_page_table(hal, "aarch64"))
    s.map_ram(G(RAM_BASE), RAM_SIZE)
    yield s
    s.destroy()


# -- synthetic images --------------------------------------------------------------------------

def arm64_image(payload: bytes = b"", *, text_offset: int = 0x8_0000,
                image_size: int | None = None, flags: int = 0b1010,
                magic: bytes = b"ARM\x64") -> bytes:
    """An arm64 Linux Image: the 64-byte header of booting.rst, then ``payload``."""
    body = payload or bytes(range(256)) * 16
    total = ARM64_HEADER + len(body)
    header = struct.pack(
        "<IIQQQQQQ4sI",
        0x1400_0010,       # code0: b +0x40 (branch over the header)
        0,                 # code1
        text_offset,       # text_offset: offset from a 2 MiB aligned base
        total + 0x1_0000 if image_size is None else image_size,  # image_size (incl. BSS)
        flags,             # flags: bit 0 BE, bits 2:1 page size (1 = 4K), bit 3 place anywhere
        0, 0, 0,           # res2, res3, res4
        magic,             # magic "ARM\x64" (0x644d5241)
        0,                 # res5: PE header offset (no EFI stub)
    )
    assert len(header) == ARM64_HEADER
    return header + body


def bzimage() -> bytes:
    data = bytearray(0x1000)
    data[0x1FE:0x200] = b"\x55\xaa"      # boot sector signature
    data[0x202:0x206] = b"HdrS"          # setup header magic
    return bytes(data)


def riscv_image() -> bytes:
    data = bytearray(0x1000)
    data[48:56] = b"RISCV\0\0\0"          # deprecated magic
    data[56:60] = b"RSC\x05"              # magic2
    return bytes(data)


def zboot(payload: bytes, comp: bytes = b"gzip") -> bytes:
    """An EFI zboot image: MZ, "zimg", payload offset/size, compression type, payload."""
    head = bytearray(0x80)
    struct.pack_into("<2s2x4sII8x32s", head, 0, b"MZ", b"zimg", len(head), len(payload), comp)
    struct.pack_into("<I", head, 0x38, 0x818223CD)  # LINUX_PE_MAGIC
    return bytes(head) + payload


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"


AARCH64_SRC = """
    .text
    .global _start
_start:
    ldr x0, =value
    b .
    .data
value: .quad 0x1122334455667788
    .bss
buf: .skip 0x2000
"""

X86_64_SRC = """
    .text
    .global _start
_start:
    hlt
    jmp _start
"""


def build_elf(tmp_path, arch: str, *, link: list[str], src: str = AARCH64_SRC,
              script: str | None = None) -> bytes:
    prefix = {"aarch64": "aarch64-linux-gnu-", "x86_64": ""}[arch]
    (tmp_path / "g.S").write_text(src)
    run([tool(prefix + "as"), "-o", str(tmp_path / "g.o"), str(tmp_path / "g.S")])
    args = list(link)
    if script is not None:
        (tmp_path / "g.ld").write_text(script)
        args += ["-T", str(tmp_path / "g.ld")]
    run([tool(prefix + "ld"), *args, "-o", str(tmp_path / "g.elf"), str(tmp_path / "g.o")])
    return (tmp_path / "g.elf").read_bytes()


def aarch64_elf(tmp_path, addr: int = 0x4010_0000) -> bytes:
    return build_elf(tmp_path, "aarch64", link=["-e", "_start", f"-Ttext={addr:#x}"])


# -- format detection --------------------------------------------------------------------------

def test_detect_format(tmp_path):
    image = arm64_image()
    assert detect_format(image) == "arm64-image"
    assert detect_format(gzip.compress(image)) == "arm64-image"
    assert detect_format(zboot(gzip.compress(image))) == "arm64-image"
    assert detect_format(aarch64_elf(tmp_path)) == "elf"
    assert detect_format(gzip.compress(aarch64_elf(tmp_path))) == "elf"
    assert detect_format(b"\x00\x00\x80\xd2" * 8) == "raw"
    assert detect_format(b"\x1f") == "raw"
    assert detect_format(b"\x1f\x8b\x00\x00") == "raw"  # not deflate: not gzip
    assert detect_format(b"BZh9 is not bzip2 without the block magic") == "raw"


@pytest.mark.parametrize("data, message", [
    (bzimage(), "x86 Linux bzImage"),
    (riscv_image(), "RISC-V Linux Image"),
    (gzip.compress(bzimage()), "x86 Linux bzImage"),
    (b"\xfd7zXZ\x00" + bytes(64), "xz-compressed"),
    (b"\x28\xb5\x2f\xfd" + bytes(64), "zstd-compressed"),
    (bz2.compress(b"kernel"), "bzip2-compressed"),
    (b"\x27\x05\x19\x56" + bytes(64), "uImage"),
    (zboot(b"\x28\xb5\x2f\xfd" + bytes(64), b"zstd"), "'zstd' payload"),
    (gzip.compress(arm64_image())[:40], "corrupt or truncated"),
    (b"", "the file is empty"),
])
def test_detect_format_rejects_unusable_files_naming_them(data, message):
    with pytest.raises(ImageError, match=re.escape(message)) as info:
        detect_format(data, path=PATH)
    assert str(info.value).startswith(f"{PATH}: ")
    assert info.value.path == PATH


def test_decompression_is_capped(monkeypatch):
    monkeypatch.setattr(loader, "MAX_DECOMPRESSED", 4096)
    with pytest.raises(ImageError, match="more than"):
        detect_format(gzip.compress(bytes(8192)), path=PATH)


def test_parse_arm64_header():
    hdr = parse_arm64_header(arm64_image(text_offset=0x20_0000, image_size=0x123_0000,
                                         flags=0b1110))
    assert (hdr.text_offset, hdr.image_size) == (0x20_0000, 0x123_0000)
    assert hdr.page_size == 64 << 10
    assert hdr.place_anywhere and not hdr.big_endian


# -- arm64 Image -------------------------------------------------------------------------------

def load(space, data, **kw) -> LoadedImage:
    kw.setdefault("ram_base", RAM_BASE)
    kw.setdefault("ram_size", RAM_SIZE)
    kw.setdefault("path", PATH)
    return load_arm64_image(space, data, **kw)


def test_arm64_image_goes_text_offset_above_the_start_of_ram(space):
    image = arm64_image(text_offset=0x8_0000, image_size=0x30_0000)
    got = load(space, image)
    assert got == LoadedImage(entry=RAM_BASE + 0x8_0000, start=RAM_BASE + 0x8_0000,
                              end=RAM_BASE + 0x8_0000 + 0x30_0000)
    assert space.read(G(got.start), len(image)) == image
    assert space.read(G(RAM_BASE), 0x8_0000) == bytes(0x8_0000)  # nothing below it


def test_arm64_image_with_text_offset_zero_and_placement_flag_clear(space):
    image = arm64_image(text_offset=0, flags=0b0010)  # 4K pages, place near RAM base
    got = load(space, image)
    assert got.entry == got.start == RAM_BASE
    assert space.read(G(RAM_BASE), len(image)) == image


def test_arm64_image_base_is_2m_aligned_when_ram_is_not(hal):
    with AddrSpace(hal, nested_page_table(hal, "aarch64")) as sp:
        sp.map_ram(G(0x4010_0000), 8 * MiB)
        got = load(sp, arm64_image(text_offset=0x8_0000), ram_base=0x4010_0000,
                   ram_size=8 * MiB)
        assert got.entry == 0x4020_0000 + 0x8_0000


def test_old_arm64_image_without_image_size_uses_0x80000(space):
    image = arm64_image(text_offset=0, image_size=0)  # pre-3.17: fields not filled in
    got = load(space, image)
    assert got == LoadedImage(entry=RAM_BASE + 0x8_0000, start=RAM_BASE + 0x8_0000,
                              end=RAM_BASE + 0x8_0000 + len(image))
    assert space.read(G(got.start), len(image)) == image


def test_gzip_compressed_arm64_image_is_decompressed(space):
    image = arm64_image(text_offset=0x8_0000)
    got = load(space, gzip.compress(image))
    assert space.read(G(got.start), len(image)) == image
    got2 = load(space, zboot(gzip.compress(image)))
    assert got2 == got


def test_image_size_not_file_size_must_fit_in_ram(space):
    # A 4 KiB file whose image_size (BSS included) runs one page past the end of RAM.
    image = arm64_image(text_offset=0x8_0000, image_size=RAM_SIZE - 0x8_0000 + 0x1000)
    with pytest.raises(ImageError, match="image_size") as info:
        load(space, image)
    assert PATH in str(info.value)
    assert space.read(G(RAM_BASE + 0x8_0000), 64) == bytes(64)  # nothing written
    # Exactly filling RAM is fine.
    load(space, arm64_image(text_offset=0x8_0000, image_size=RAM_SIZE - 0x8_0000))


def test_image_larger_than_ram(space):
    big = arm64_image(b"\xaa" * (RAM_SIZE + 4096), text_offset=0)
    with pytest.raises(ImageError, match=r"but RAM is \[0x40000000, 0x42000000\)"):
        load(space, big)


@pytest.mark.parametrize("data, message", [
    (b"", "the file is empty"),
    (arm64_image()[:40], "truncated: 40 bytes"),
    (arm64_image()[:62], "truncated: 62 bytes"),
    (bzimage(), "x86 Linux bzImage"),
    (riscv_image(), "RISC-V Linux Image"),
    (gzip.compress(riscv_image()), "RISC-V Linux Image"),
    (arm64_image(magic=b"ARM\x65"), "no \"ARM\\x64\" magic"),
    (arm64_image(flags=0b1011), "big-endian"),
    (arm64_image(image_size=0x100), "smaller than"),
])
def test_arm64_loader_rejects(space, data, message):
    with pytest.raises(ImageError, match=re.escape(message)) as info:
        load(space, data)
    assert str(info.value).startswith(f"{PATH}: ")


def test_arm64_loader_rejects_an_elf(space, tmp_path):
    with pytest.raises(ImageError, match="ELF file"):
        load(space, aarch64_elf(tmp_path))


def test_arm64_loader_needs_mapped_ram(space):
    with pytest.raises(InvalidInput, match="not mapped"):
        load(space, arm64_image(), ram_size=64 * MiB)


# -- ELF ---------------------------------------------------------------------------------------

def test_aarch64_elf_segments_go_to_p_paddr_and_bss_is_zeroed(space, tmp_path):
    data = aarch64_elf(tmp_path)
    elf = ELFFile(io.BytesIO(data))
    segs = [s.header for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    bss_segs = [s for s in segs if s["p_memsz"] > s["p_filesz"]]
    assert bss_segs, "the test ELF should have a segment with BSS"
    for s in bss_segs:  # dirty the BSS first: the loader must clear it
        space.write(G(s["p_paddr"] + s["p_filesz"]), b"\xaa" * (s["p_memsz"] - s["p_filesz"]))

    got = load_elf(space, data, path=PATH, expected_machine="aarch64")

    assert got.entry == elf.header["e_entry"] == 0x4010_0000
    assert got.start == min(s["p_paddr"] for s in segs)
    assert got.end == max(s["p_paddr"] + s["p_memsz"] for s in segs)
    for s in segs:
        file_bytes = data[s["p_offset"]:s["p_offset"] + s["p_filesz"]]
        assert space.read(G(s["p_paddr"]), s["p_filesz"]) == file_bytes
        bss = s["p_memsz"] - s["p_filesz"]
        assert space.read(G(s["p_paddr"] + s["p_filesz"]), bss) == bytes(bss)
    value = elf.get_section_by_name(".symtab").get_symbol_by_name("value")[0]["st_value"]
    assert space.read_u64(G(value)) == 0x1122334455667788
    # The first instruction: ldr x0, <literal> (LDR literal, 64-bit: 0x58......).
    assert space.read(G(got.entry), 4)[3] == 0x58


def test_elf_entry_is_translated_when_virtual_and_physical_addresses_differ(space, tmp_path):
    script = """
ENTRY(_start)
SECTIONS {
  . = 0xffff000000100000;
  .text : AT(0x40100000) { *(.text*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) }
}
"""
    data = build_elf(tmp_path, "aarch64", link=[], script=script)
    assert ELFFile(io.BytesIO(data)).header["e_entry"] == 0xFFFF_0000_0010_0000
    got = load_elf(space, data, path=PATH, expected_machine="aarch64")
    assert got.entry == 0x4010_0000
    assert space.read(G(0x4010_0000), 4)[3] == 0x58


def test_elf_for_the_wrong_machine_names_both(space, tmp_path):
    x86 = build_elf(tmp_path, "x86_64", link=["-e", "_start", "-Ttext=0x40100000"],
                    src=X86_64_SRC)
    with pytest.raises(ImageError) as info:
        load_elf(space, x86, path=PATH, expected_machine="aarch64")
    msg = str(info.value)
    assert msg.startswith(f"{PATH}: ")
    assert "x86_64" in msg and "EM_X86_64" in msg
    assert "aarch64" in msg and "EM_AARCH64" in msg
    assert space.read(G(0x4010_0000), 16) == bytes(16)

    with pytest.raises(ImageError, match=r"aarch64 .*riscv64"):
        load_elf(space, aarch64_elf(tmp_path), path=PATH, expected_machine="riscv64")


def test_elf_outside_guest_ram(space, tmp_path):
    data = aarch64_elf(tmp_path, addr=0x1000_0000)
    with pytest.raises(ImageError, match="outside guest RAM"):
        load_elf(space, data, path=PATH, expected_machine="aarch64")


def test_elf_rejections(space, tmp_path):
    data = aarch64_elf(tmp_path)
    cases = [
        (b"", "the file is empty"),
        (data[:100], "ELF"),
        (arm64_image(), "not an ELF file"),
        (bzimage(), "x86 Linux bzImage"),
        ((tmp_path / "g.o").read_bytes(), "ET_REL"),
    ]
    for bad, message in cases:
        with pytest.raises(ImageError, match=re.escape(message)) as info:
            load_elf(space, bad, path=PATH, expected_machine="aarch64")
        assert str(info.value).startswith(f"{PATH}: ")
    with pytest.raises(InvalidInput, match="expected_machine"):
        load_elf(space, data, path=PATH, expected_machine="arm")


def test_gzip_compressed_elf_loads(space, tmp_path):
    got = load_elf(space, gzip.compress(aarch64_elf(tmp_path)), path=PATH,
                   expected_machine="aarch64")
    assert got.entry == 0x4010_0000


# -- raw ---------------------------------------------------------------------------------------

def test_raw_image_is_copied_verbatim(space):
    blob = gzip.compress(b"firmware" * 100)  # raw means raw: not decompressed
    got = load_raw(space, blob, addr=0x4020_0000, path=PATH)
    assert got == LoadedImage(entry=0x4020_0000, start=0x4020_0000, end=0x4020_0000 + len(blob))
    assert space.read(G(0x4020_0000), len(blob)) == blob


def test_raw_image_must_fit_in_ram(space):
    with pytest.raises(ImageError, match="do not fit in guest RAM"):
        load_raw(space, b"x" * 8192, addr=RAM_END - 4096, path=PATH)
    with pytest.raises(ImageError, match="the file is empty"):
        load_raw(space, b"", addr=RAM_BASE, path=PATH)


# -- initrd and DTB ----------------------------------------------------------------------------

def test_dtb_address_is_the_last_2m_block_of_the_first_512m():
    assert dtb_address(RAM_BASE, RAM_SIZE) == RAM_END - 2 * MiB
    assert dtb_address(RAM_BASE, 1 << 30) == RAM_BASE + 510 * MiB
    assert dtb_address(RAM_BASE, 5 * MiB + 4096) == RAM_BASE + 2 * MiB
    with pytest.raises(InvalidInput, match="2 MiB block"):
        dtb_address(RAM_BASE, 1 * MiB)


def test_initrd_goes_high_below_the_dtb_block(space):
    data = bytes(range(251)) * 40  # 10040 bytes, not a page multiple
    start, end = load_initrd(space, data, ram_base=RAM_BASE, ram_size=RAM_SIZE,
                             kernel_end=RAM_BASE + 0x40_0000, path="initrd.img")
    dtb = dtb_address(RAM_BASE, RAM_SIZE)
    assert start % 4096 == 0
    assert end == start + len(data)
    assert end <= dtb and dtb - end < 4096
    assert space.read(G(start), len(data)) == data


def test_initrd_that_does_not_fit_above_the_kernel(space):
    dtb = dtb_address(RAM_BASE, RAM_SIZE)
    with pytest.raises(ImageError, match=r"^initrd.img: initrd of .* does not fit"):
        load_initrd(space, b"x" * (2 * MiB), ram_base=RAM_BASE, ram_size=RAM_SIZE,
                    kernel_end=dtb - MiB, path="initrd.img")
    with pytest.raises(ImageError, match="the file is empty"):
        load_initrd(space, b"", ram_base=RAM_BASE, ram_size=RAM_SIZE, kernel_end=RAM_BASE,
                    path="initrd.img")


def test_full_layout_kernel_initrd_dtb(space):
    kernel = load(space, gzip.compress(arm64_image(image_size=0x80_0000)))
    initrd = load_initrd(space, b"070701" + bytes(5000), ram_base=RAM_BASE, ram_size=RAM_SIZE,
                         kernel_end=kernel.end, path="initrd.img")
    dtb = build_aarch64_dtb(memory=[(RAM_BASE, RAM_SIZE)], cpus=[0], initrd=initrd,
                            bootargs="console=ttyAMA0")
    addr = place_dtb(space, dtb, ram_base=RAM_BASE, ram_size=RAM_SIZE,
                     reserved=[(kernel.start, kernel.end), initrd])
    assert addr == dtb_address(RAM_BASE, RAM_SIZE)
    assert addr % 8 == 0 and addr - RAM_BASE < 512 * MiB
    assert kernel.end <= initrd[0] < initrd[1] <= addr
    tree = fdt.parse_dtb(space.read(G(addr), len(dtb)))
    start = tree.get_property("linux,initrd-start", "/chosen").data
    end = tree.get_property("linux,initrd-end", "/chosen").data
    assert (start[0] << 32 | start[1], end[0] << 32 | end[1]) == initrd


def test_place_dtb_rejections(space):
    dtb = build_aarch64_dtb(memory=[(RAM_BASE, RAM_SIZE)], cpus=[0])
    slot = dtb_address(RAM_BASE, RAM_SIZE)
    with pytest.raises(ImageError, match="overlaps"):
        place_dtb(space, dtb, ram_base=RAM_BASE, ram_size=RAM_SIZE,
                  reserved=[(slot + 2 * MiB - 1, slot + 2 * MiB + 4096)])
    assert space.read(G(slot), 4) == bytes(4)
    with pytest.raises(ImageError, match="not a device tree"):
        place_dtb(space, b"\0" * 64, ram_base=RAM_BASE, ram_size=RAM_SIZE)
    with pytest.raises(ImageError, match="totalsize"):
        place_dtb(space, dtb + b"\0" * 8, ram_base=RAM_BASE, ram_size=RAM_SIZE)
    huge = 2 * MiB + 8
    with pytest.raises(ImageError, match="at most 2 MiB"):
        place_dtb(space, b"\xd0\x0d\xfe\xed" + huge.to_bytes(4, "big") + bytes(huge - 8),
                  ram_base=RAM_BASE, ram_size=RAM_SIZE)
    with pytest.raises(ImageError, match="empty"):
        place_dtb(space, b"", ram_base=RAM_BASE, ram_size=RAM_SIZE)


@pytest.mark.parametrize("call", [
    lambda sp: detect_format(b"", path=PATH),
    lambda sp: load_arm64_image(sp, b"", ram_base=RAM_BASE, ram_size=RAM_SIZE, path=PATH),
    lambda sp: load_elf(sp, b"", path=PATH, expected_machine="aarch64"),
    lambda sp: load_raw(sp, b"", addr=RAM_BASE, path=PATH),
    lambda sp: load_initrd(sp, b"", ram_base=RAM_BASE, ram_size=RAM_SIZE, kernel_end=RAM_BASE,
                           path=PATH),
])
def test_every_loader_rejects_empty_data(space, call):
    with pytest.raises(ImageError, match=f"^{re.escape(PATH)}: the file is empty$"):
        call(space)

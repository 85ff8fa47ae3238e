"""The loader package's shared parts: bounded file reading, architecture guessing, the
RISC-V Linux Image loader and the one ELF parser every ELF loader uses.

Images are built here from the specs' offsets (written as literals) or by binutils,
not taken from the modules under test.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys

import pytest
from tools import tool

from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal import HostHal
from pyaxvisor.loaders.detect import GUESS_BYTES, guess_arch
from pyaxvisor.loaders.elf import load_elf, load_x86_elf
from pyaxvisor.loaders.image import MAX_IMAGE_SIZE, ImageError, LoadedImage, read_image
from pyaxvisor.loaders.linux_image import (
    load_arm64_image,
    load_riscv_image,
    parse_riscv_header,
)
from pyaxvisor.loaders.multiboot import load_multiboot
from pyaxvisor.mm import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table

G = GuestPhysAddr
MiB = 1 << 20
PATH = "/boot/Image-test"


# -- read_image -------------------------------------------------------------------------------

def test_read_image_returns_the_bytes_up_to_the_limit(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(b"K" * 4096)
    assert read_image(path, "kernel") == b"K" * 4096
    assert read_image(path, "kernel", limit=4096) == b"K" * 4096  # exactly the limit
    assert MAX_IMAGE_SIZE == 1 << 30


def test_read_image_refuses_a_file_over_the_limit_by_its_size(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(bytes(MiB + 1))
    with pytest.raises(ImageError) as info:
        read_image(path, "initrd", limit=MiB)
    assert str(info.value) == (f"initrd {path}: the file is 1.00 MiB (1048577 bytes), more "
                               "than the 1 MiB limit (the most the guest can take)")
    assert info.value.path == f"initrd {path}"


def test_read_image_does_not_read_a_huge_file(tmp_path):
    # A sparse 2 GiB file: refused from its size, without reading (or allocating) it.
    path = tmp_path / "huge"
    with open(path, "wb") as f:
        f.truncate(2 << 30)
    with pytest.raises(ImageError) as info:
        read_image(path, "kernel")
    assert str(info.value) == (f"kernel {path}: the file is 2048 MiB, more than the "
                               "1024 MiB limit (the largest image pyaxvisor reads)")


def test_read_image_refuses_a_directory_and_a_fifo(tmp_path):
    with pytest.raises(InvalidInput) as info:
        read_image(tmp_path, "kernel")
    assert str(info.value) == f"kernel {tmp_path} is not a regular file (it is a directory)"
    assert not isinstance(info.value, ImageError)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a pipe is read up to the limit; with no writer the open must not block
    with pytest.raises(ImageError, match=r"the pipe is empty \(nothing was written to it\)$"):
        read_image(fifo, "initrd")


def test_read_image_missing_and_empty_files(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InvalidInput) as info:
        read_image(missing, "firmware")
    assert str(info.value) == f"firmware {missing}: no such file"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ImageError) as info2:
        read_image(empty, "initrd")
    assert str(info2.value) == f"initrd {empty}: the file is empty"
    with pytest.raises(InvalidInput, match="must be positive"):
        read_image(empty, "initrd", limit=0)


# -- synthetic images -------------------------------------------------------------------------

def linux_image(*, magic56: bytes = b"RSC\x05", magic48: bytes = b"RISCV\0\0\0",
                text_offset: int = 0x20_0000, image_size: int | None = None, flags: int = 0,
                version: int = 0x2, body: bytes = b"") -> bytes:
    """A Linux Image: the 64-byte header of boot-image-header.rst / booting.rst, then body."""
    body = body or bytes(range(256)) * 8
    size = 64 + len(body) + 0x1_0000 if image_size is None else image_size
    header = struct.pack("<IIQQQII8x8s4sI", 0x0000_006F, 0, text_offset, size, flags,
                         version, 0, magic48, magic56, 0)
    assert len(header) == 64
    return header + body


def arm64_image() -> bytes:
    return linux_image(magic56=b"ARM\x64", magic48=bytes(8), text_offset=0x8_0000, flags=0b1010,
                       version=0)


def bzimage_header() -> bytes:
    data = bytearray(0x1000)
    data[0x1FE:0x200] = b"\x55\xaa"
    data[0x202:0x206] = b"HdrS"
    return bytes(data)


def multiboot_header(flags: int = 0x3) -> bytes:
    return struct.pack("<III", 0x1BADB002, flags, -(0x1BADB002 + flags) & 0xFFFF_FFFF)


def elf_file(segments: list[tuple[int, bytes, int]], entry: int, *, cls: int, machine: int,
             big_endian: bool = False, e_type: int = 2, head_extra: bytes = b"") -> bytes:
    """An ELF file: header, program headers, ``head_extra`` at 0x100, and each segment's
    ``(paddr, bytes, memsz)`` at page-aligned offsets from 0x1000 (vaddr = paddr)."""
    o = ">" if big_endian else "<"
    ident = struct.pack("4sBBBB8x", b"\x7fELF", cls, 2 if big_endian else 1, 1, 0)
    n = len(segments)
    if cls == 1:
        ehdr = ident + struct.pack(o + "HHIIIIIHHHHHH", e_type, machine, 1, entry, 52, 0, 0,
                                   52, 32, n, 0, 0, 0)
    else:
        ehdr = ident + struct.pack(o + "HHIQQQIHHHHHH", e_type, machine, 1, entry, 64, 0, 0,
                                   64, 56, n, 0, 0, 0)
    phdrs, body, offset = b"", b"", 0x1000
    for paddr, content, memsz in segments:
        if cls == 1:
            phdrs += struct.pack(o + "8I", 1, offset, paddr, paddr, len(content), memsz, 7,
                                 0x1000)
        else:
            phdrs += struct.pack(o + "IIQQQQQQ", 1, 7, offset, paddr, paddr, len(content),
                                 memsz, 0x1000)
        padded = content + bytes(-len(content) % 0x1000)
        body += padded
        offset += len(padded)
    head = bytearray(0x1000)
    head[:len(ehdr) + len(phdrs)] = ehdr + phdrs
    head[0x100:0x100 + len(head_extra)] = head_extra
    return bytes(head) + body


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"


def binutils_elf(tmp_path, prefix: str, as_args: list[str], ld_args: list[str]) -> bytes:
    (tmp_path / "k.S").write_text(".globl _start\n.text\n_start:\n nop\n")
    run([tool(prefix + "as"), *as_args, "-o", str(tmp_path / "k.o"), str(tmp_path / "k.S")])
    run([tool(prefix + "ld"), *ld_args, "-e", "_start", "-Ttext=0x200000", "-o",
         str(tmp_path / "k.elf"), str(tmp_path / "k.o")])
    return (tmp_path / "k.elf").read_bytes()


# -- guess_arch -------------------------------------------------------------------------------

def test_guess_arch_of_elf_files_built_by_binutils(tmp_path):
    assert guess_arch(binutils_elf(tmp_path, "", [], [])[:GUESS_BYTES]) == "x86_64"
    assert guess_arch(binutils_elf(tmp_path, "", ["--32"], ["-m", "elf_i386"])) == "x86_64"


def test_guess_arch_of_an_aarch64_elf_built_by_binutils(tmp_path):
    assert guess_arch(binutils_elf(tmp_path, "aarch64-linux-gnu-", [], [])) == "aarch64"


@pytest.mark.parametrize(("machine", "cls", "big_endian", "arch"), [
    (3, 1, False, "x86_64"),       # EM_386
    (62, 2, False, "x86_64"),      # EM_X86_64
    (183, 2, False, "aarch64"),    # EM_AARCH64
    (183, 2, True, "aarch64"),     # EM_AARCH64, big endian: e_machine read big endian
    (243, 2, False, "riscv64"),    # EM_RISCV
    (40, 1, False, None),          # EM_ARM
    (20, 2, True, None),           # EM_PPC
])
def test_guess_arch_of_elf_headers(machine, cls, big_endian, arch):
    data = elf_file([(0x200000, b"\0" * 16, 16)], 0x200000, cls=cls, machine=machine,
                    big_endian=big_endian)
    assert guess_arch(data[:GUESS_BYTES]) == arch


def test_guess_arch_of_kernel_formats():
    assert guess_arch(bzimage_header()) == "x86_64"
    flat = bytearray(0x3000)
    flat[0x40:0x4C] = multiboot_header(0x10003)
    assert guess_arch(bytes(flat)) == "x86_64"
    assert guess_arch(arm64_image()) == "aarch64"
    assert guess_arch(linux_image()) == "riscv64"
    assert guess_arch(linux_image(magic56=bytes(4))) == "riscv64"  # header version 0.1
    assert guess_arch(linux_image(magic48=bytes(8))) == "riscv64"  # "RISCV" dropped


def test_guess_arch_of_efi_pe_files_goes_by_the_coff_machine():
    pe = bytearray(0x200)
    pe[0:2], pe[4:8] = b"MZ", b"zimg"  # an EFI zboot image
    pe[0x3C:0x40] = (0x80).to_bytes(4, "little")
    pe[0x80:0x84] = b"PE\0\0"
    for machine, arch in ((0xAA64, "aarch64"), (0x5064, "riscv64"), (0x8664, "x86_64"),
                          (0x01C4, None)):
        pe[0x84:0x86] = machine.to_bytes(2, "little")
        assert guess_arch(bytes(pe)) == arch


def test_guess_arch_says_none_when_the_bytes_do_not_tell():
    assert guess_arch(gzip.compress(arm64_image())) is None
    assert guess_arch(gzip.compress(bzimage_header())) is None
    assert guess_arch(b"\xfa\xf4" * 100) is None
    assert guess_arch(b"") is None
    assert guess_arch(b"\x7fELF") is None  # too short to hold e_machine
    late = bytearray(GUESS_BYTES + 0x100)
    late[GUESS_BYTES:GUESS_BYTES + 12] = multiboot_header()  # past the bytes looked at
    assert guess_arch(bytes(late)) is None


# -- RISC-V Linux Image -----------------------------------------------------------------------

RV_RAM = 0x8000_0000
RV_SIZE = 32 * MiB


@pytest.fixture
def hal():
    h = HostHal(96 * MiB)
    yield h
    h.close()


@pytest.fixture
def rv_space(hal):
    s = AddrSpace(hal, nested_page_table(hal, "riscv64"))
    s.map_ram(G(RV_RAM), RV_SIZE)
    yield s
    s.destroy()


def test_parse_riscv_header():
    hdr = parse_riscv_header(linux_image(text_offset=0x20_0000, image_size=0x150_0000,
                                         version=0x2))
    assert (hdr.text_offset, hdr.image_size, hdr.flags, hdr.version) == (
        0x20_0000, 0x150_0000, 0, 0x2)
    assert not hdr.big_endian
    assert parse_riscv_header(linux_image(flags=1)).big_endian


def test_riscv_image_goes_text_offset_above_the_start_of_ram(rv_space):
    image = linux_image(text_offset=0x20_0000, image_size=0x40_0000)
    got = load_riscv_image(rv_space, image, ram_base=RV_RAM, ram_size=RV_SIZE, path=PATH)
    assert got == LoadedImage(entry=RV_RAM + 0x20_0000, start=RV_RAM + 0x20_0000,
                              end=RV_RAM + 0x60_0000)
    assert rv_space.read(G(got.entry), len(image)) == image
    assert rv_space.read(G(RV_RAM), 0x20_0000) == bytes(0x20_0000)  # left to the firmware


def test_riscv_image_base_is_2m_aligned_when_ram_is_not(hal):
    with AddrSpace(hal, nested_page_table(hal, "riscv64")) as sp:
        sp.map_ram(G(RV_RAM + 0x10_0000), 16 * MiB)
        got = load_riscv_image(sp, linux_image(), ram_base=RV_RAM + 0x10_0000,
                               ram_size=16 * MiB, path=PATH)
        assert got.entry == RV_RAM + 0x20_0000 + 0x20_0000


def test_m_mode_riscv_image_and_compressed_images(rv_space):
    image = linux_image(text_offset=0)  # an M-mode kernel: at the start of RAM
    got = load_riscv_image(rv_space, image, ram_base=RV_RAM, ram_size=RV_SIZE, path=PATH)
    assert got.entry == RV_RAM
    assert rv_space.read(G(RV_RAM), len(image)) == image
    old = linux_image(magic56=bytes(4), text_offset=0x20_0000)  # version 0.1: "RISCV" only
    assert load_riscv_image(rv_space, gzip.compress(old), ram_base=RV_RAM, ram_size=RV_SIZE,
                            path=PATH).entry == RV_RAM + 0x20_0000
    assert rv_space.read(G(RV_RAM + 0x20_0000), len(old)) == old


def test_riscv_image_size_must_fit_in_ram(rv_space):
    too_big = linux_image(image_size=RV_SIZE - 0x20_0000 + 0x1000)
    with pytest.raises(ImageError) as info:
        load_riscv_image(rv_space, too_big, ram_base=RV_RAM, ram_size=RV_SIZE, path=PATH)
    assert str(info.value) == (
        f"{PATH}: kernel needs [0x80200000, 0x82001000) (0x1e01000 bytes of image_size, BSS "
        "included, at text_offset 0x200000 above a 2 MiB boundary) but RAM is "
        "[0x80000000, 0x82000000)")
    assert rv_space.read(G(RV_RAM + 0x20_0000), 64) == bytes(64)  # nothing written
    load_riscv_image(rv_space, linux_image(image_size=RV_SIZE - 0x20_0000), ram_base=RV_RAM,
                     ram_size=RV_SIZE, path=PATH)  # exactly filling RAM is fine


@pytest.mark.parametrize(("data", "message"), [
    (linux_image(flags=1), "big-endian RISC-V kernel (header flags bit 0); only "
                           "little-endian guests are supported"),
    (linux_image(magic56=bytes(4), magic48=bytes(8)),
     "not a RISC-V Linux Image (no \"RSC\\x05\" magic at offset 56)"),
    (linux_image(image_size=0), "header image_size is 0; a RISC-V Image must give its size "
                                "(BSS included) to be booted"),
    (linux_image(text_offset=0x8_0000), "text_offset 0x80000 is not a multiple of 2 MiB: the "
                                        "RISC-V kernel must start on a 2 MiB boundary"),
    (linux_image(image_size=0x100), "header image_size 0x100 is smaller than the 0x840-byte "
                                    "file"),
    (arm64_image(), "not a RISC-V Linux Image: this is an arm64 Linux Image (\"ARM\\x64\" "
                    "at 56)"),
    (bzimage_header(), "not a RISC-V Linux Image: this is an x86 Linux bzImage (\"HdrS\" at "
                       "0x202)"),
    (linux_image()[:40], "truncated: 40 bytes, but the RISC-V Image header alone is 64"),
    (b"\x7fELF" + bytes(60), "this is an ELF file, not a RISC-V Image (load it as ELF)"),
    (b"", "the file is empty"),
])
def test_riscv_loader_rejects_and_leaves_ram_untouched(rv_space, data, message):
    with pytest.raises(ImageError) as info:
        load_riscv_image(rv_space, data, ram_base=RV_RAM, ram_size=RV_SIZE, path=PATH)
    assert str(info.value) == f"{PATH}: {message}"
    assert rv_space.read(G(RV_RAM), 0x30_0000) == bytes(0x30_0000)


def test_arm64_and_riscv_share_the_header_parser(rv_space):
    # The same header fields, read by both: the arm64 loader places an arm64 Image
    # exactly as the RISC-V loader places the same header with the RISC-V magic.
    body = bytes(range(256)) * 4
    arm = linux_image(magic56=b"ARM\x64", magic48=bytes(8), text_offset=0x20_0000,
                      image_size=0x30_0000, body=body)
    rv = linux_image(text_offset=0x20_0000, image_size=0x30_0000, body=body)
    a = load_arm64_image(rv_space, arm, ram_base=RV_RAM, ram_size=RV_SIZE, path=PATH)
    r = load_riscv_image(rv_space, rv, ram_base=RV_RAM, ram_size=RV_SIZE, path=PATH)
    assert a == r == LoadedImage(RV_RAM + 0x20_0000, RV_RAM + 0x20_0000, RV_RAM + 0x50_0000)
    assert rv_space.read(G(r.entry), len(rv)) == rv


# -- one ELF parser ---------------------------------------------------------------------------

LOW_RAM = 64 * MiB
SENTINEL = b"\xa5" * 0x3000
SEG = 0x20_0000


@pytest.fixture
def low_space(hal):
    s = AddrSpace(hal, nested_page_table(hal, "x86_64"))
    s.map_ram(G(0), LOW_RAM)
    yield s
    s.destroy()


# Each loader with the ELF class and machine it accepts; Multiboot also wants its header
# (flags 0x3: no address fields, so the file is read as an ELF).
LOADERS = {
    "load_elf": (2, 183, lambda sp, data: load_elf(sp, data, path="k",
                                                   expected_machine="aarch64")),
    "load_x86_elf": (2, 62, lambda sp, data: load_x86_elf(sp, data, path="k")),
    "load_multiboot": (1, 3, lambda sp, data: load_multiboot(sp, data, ram_size=LOW_RAM,
                                                             cmdline="", path="k")),
}


def defective_elf(defect: str, cls: int, machine: int) -> bytes:
    mb = multiboot_header()
    seg = [(SEG, b"\xc3" * 0x100, 0x100)]
    if defect == "truncated segment":
        return elf_file(seg, SEG, cls=cls, machine=machine, head_extra=mb)[:0x1080]
    if defect == "p_filesz > p_memsz":
        return elf_file([(SEG, b"\xc3" * 0x100, 0x80)], SEG, cls=cls, machine=machine,
                        head_extra=mb)
    if defect == "overlap":
        return elf_file([(SEG, b"A", 0x1000), (SEG + 0x800, b"B", 0x1000)], SEG, cls=cls,
                        machine=machine, head_extra=mb)
    if defect == "no PT_LOAD":
        return elf_file([], SEG, cls=cls, machine=machine, head_extra=mb)
    if defect == "entry outside":
        return elf_file(seg, 0x50_0000, cls=cls, machine=machine, head_extra=mb)
    if defect == "ET_REL":
        return elf_file(seg, SEG, cls=cls, machine=machine, e_type=1, head_extra=mb)
    assert defect == "big-endian"
    return elf_file(seg, SEG, cls=cls, machine=machine, big_endian=True, head_extra=mb)


@pytest.mark.parametrize(("defect", "message"), [
    ("truncated segment", "k: truncated: PT_LOAD segment 0 needs file bytes "
                          "[0x1000, 0x1100), the file has 4224"),
    ("p_filesz > p_memsz", "k: PT_LOAD segment 0 has p_filesz 0x100 > p_memsz 0x80"),
    ("overlap", "k: PT_LOAD segments 0 [0x200000, 0x201000) and 1 [0x200800, 0x201800) "
                "overlap"),
    ("no PT_LOAD", "k: ELF has no loadable (PT_LOAD) segment"),
    ("entry outside", "k: entry point 0x500000 is outside every loaded segment"),
    ("ET_REL", "k: ELF type ET_REL cannot be booted (link it into an executable)"),
    ("big-endian", "k: big-endian ELF; only little-endian guests are supported"),
])
def test_every_elf_loader_refuses_a_defect_with_the_same_text(low_space, defect, message):
    texts = {}
    for name, (cls, machine, load) in LOADERS.items():
        low_space.write(G(SEG), SENTINEL)
        with pytest.raises(ImageError) as info:
            load(low_space, defective_elf(defect, cls, machine))
        texts[name] = str(info.value)
        assert low_space.read(G(SEG), len(SENTINEL)) == SENTINEL, name
    assert texts == dict.fromkeys(LOADERS, message)


def test_every_elf_loader_loads_the_same_segments(low_space):
    bss_seg = [(SEG, b"CODE" * 8, 0x100), (SEG + 0x1000, b"DATA", 0x2000)]
    for name, (cls, machine, load) in LOADERS.items():
        low_space.write(G(SEG), SENTINEL)
        data = elf_file(bss_seg, SEG + 4, cls=cls, machine=machine,
                        head_extra=multiboot_header())
        entry = load(low_space, data).entry
        assert entry == SEG + 4, name
        assert low_space.read(G(SEG), 0x100) == b"CODE" * 8 + bytes(0xE0), name
        assert low_space.read(G(SEG + 0x1000), 0x2000) == b"DATA" + bytes(0x1FFC), name


def test_pyelftools_is_imported_only_when_an_elf_is_met():
    code = ("import sys, pyaxvisor.loaders, pyaxvisor.loaders.elf\n"
            "from pyaxvisor.loaders.detect import guess_arch, detect_x86_format\n"
            "guess_arch(b'\\x7fELF' + bytes(60)); detect_x86_format(b'\\x7fELF', path='k')\n"
            "print('elftools' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"

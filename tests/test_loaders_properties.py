"""Random image headers for every loader (``pyaxvisor/loaders/*``): whatever the
bytes, a loader either loads the image or refuses it with a typed error
(:class:`~pyaxvisor.errors.AxError`: :class:`InvalidInput` or :class:`ImageError`,
whose message names the file), and a refused image leaves guest RAM as it was.

Each format starts from a valid template built here from its spec's offsets, whose
header fields hypothesis then sets to values near the boundaries (0, 1, sizes and
addresses around RAM, all ones) or anywhere, with random bytes written over it,
random truncation and, where the format allows it, a gzip wrapper.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from pyaxvisor.errors import AxError
from pyaxvisor.hal import HostHal
from pyaxvisor.loaders import (
    bzimage,
    compression,
    detect,
    elf,
    linux_image,
    multiboot,
    placement,
    raw,
)
from pyaxvisor.loaders import image as image_mod
from pyaxvisor.mm import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table

MiB = 1 << 20
PATH = "/images/fuzzed"
ARM_RAM, ARM_SIZE = 0x4000_0000, 8 * MiB
RV_RAM, RV_SIZE = 0x8000_0000, 8 * MiB
X86_SIZE = 16 * MiB

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# -- guest memory ------------------------------------------------------------------------------

class Ram:
    """A guest address space with one RAM bank, and a digest of that RAM."""

    def __init__(self, arch: str, base: int, size: int) -> None:
        self.hal = HostHal(size + 8 * MiB)
        self.space = AddrSpace(self.hal, nested_page_table(self.hal, arch))
        self.region = self.space.map_ram(GuestPhysAddr(base), size)

    def digest(self) -> bytes:
        return hashlib.sha1(self.space.region_view(self.region)).digest()

    def close(self) -> None:
        self.space.destroy()
        self.hal.close()


@pytest.fixture(scope="module")
def arm_ram() -> Iterator[Ram]:
    ram = Ram("aarch64", ARM_RAM, ARM_SIZE)
    yield ram
    ram.close()


@pytest.fixture(scope="module")
def rv_ram() -> Iterator[Ram]:
    ram = Ram("riscv64", RV_RAM, RV_SIZE)
    yield ram
    ram.close()


@pytest.fixture(scope="module")
def x86_ram() -> Iterator[Ram]:
    ram = Ram("x86_64", 0, X86_SIZE)
    yield ram
    ram.close()


def typed(action: Callable[[], Any], ram: Ram | None = None, path: str = PATH) -> Any:
    """Run a loader: it loads, or raises an :class:`AxError` (an :class:`ImageError`
    naming the file ``path``; then, with ``ram``, guest RAM is unchanged). Any other
    exception fails the test."""
    before = ram.digest() if ram is not None else None
    try:
        result = action()
    except AxError as exc:
        _event(f"refused: {type(exc).__name__}")
        if isinstance(exc, image_mod.ImageError):
            assert path in exc.path and str(exc).startswith(exc.path), str(exc)
        if ram is not None:
            assert ram.digest() == before, f"refused ({exc}) after writing guest RAM"
        return None
    _event("accepted")
    return result


def _event(what: str) -> None:
    """Count an outcome in hypothesis' statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(what)


# -- strategies --------------------------------------------------------------------------------

def _near(*points: int) -> st.SearchStrategy[int]:
    return st.sampled_from(points).flatmap(
        lambda p: st.integers(max(0, p - 2), p + 2))


def field_value(size: int, interesting: tuple[int, ...] = ()) -> st.SearchStrategy[int]:
    top = (1 << (8 * size)) - 1
    return st.one_of(
        st.sampled_from((0, 1, 2, top, top >> 1, *interesting)),
        _near(*interesting) if interesting else st.integers(0, 16),
        st.integers(0, top),
    ).map(lambda v: min(v, top))


@st.composite
def mutated(draw: st.DrawFn, template: bytes, fields: dict[int, int],
            interesting: tuple[int, ...] = (), compress: bool = False) -> bytes:
    """``template`` with some of its header ``fields`` (offset → size in bytes) set
    to drawn little-endian values, random bytes written over it, a random length, and
    perhaps gzip-compressed."""
    data = bytearray(template)
    for offset, size in draw(st.lists(st.sampled_from(sorted(fields.items())), max_size=6)):
        value = draw(field_value(size, interesting))
        data[offset:offset + size] = value.to_bytes(size, "little")
    for offset, chunk in draw(st.lists(st.tuples(st.integers(0, max(0, len(data) - 1)),
                                                 st.binary(min_size=1, max_size=8)),
                                       max_size=3)):
        data[offset:offset + len(chunk)] = chunk
    cut = draw(st.one_of(st.just(len(data)), st.integers(0, len(data)),
                         st.integers(len(data), len(data) + 256)))
    data = data[:cut] if cut <= len(data) else data + bytes(cut - len(data))
    if compress and draw(st.booleans()):
        return gzip.compress(bytes(data), mtime=0)
    return bytes(data)


# -- templates (offsets from the specs) --------------------------------------------------------

def image_template(magic56: bytes, text_offset: int, version: int, efi: bool,
                size: int = 0x4000) -> bytes:
    """An arm64/RISC-V Linux Image (booting.rst, boot-image-header.rst), with an EFI
    stub's PE/COFF header at 0x40 (two sections) when ``efi``."""
    data = bytearray(size)
    code0 = b"MZ\0\0" if efi else (0x1400_0010).to_bytes(4, "little")
    struct.pack_into("<4sIQQQII", data, 0, code0, 0, text_offset, size + 0x1_0000, 0b1010,
                     version, 0)
    data[56:60] = magic56
    if efi:
        struct.pack_into("<I", data, 60, 0x40)
        struct.pack_into("<4sHHIIIHH", data, 0x40, b"PE\0\0", 0xAA64, 2, 0, 0, 0, 0xA0, 0)
        for i, (start, end) in enumerate(((0x1000, 0x2000), (0x2000, size))):
            struct.pack_into("<8sIIII", data, 0xF8 + 40 * i, b".sec", end - start, start,
                             end - start, start)
    return bytes(data)


#: Header fields of the Linux Image and its PE/COFF header: offset → size.
LINUX_FIELDS = {0: 4, 8: 8, 16: 8, 24: 8, 32: 4, 60: 4, 0x46: 2, 0x54: 2,
                0xF8 + 16: 4, 0xF8 + 20: 4, 0xF8 + 56: 4, 0xF8 + 60: 4}
LINUX_POINTS = (0x40, 0x80000, 0x200000, 0x4000, 0x1_4000, ARM_SIZE, 0xF8, 0x148)


def bzimage_template(size: int = 0x3000) -> bytes:
    """A bzImage (x86 boot.rst): 1 setup sector, protocol 2.15, a 64-bit kernel."""
    data = bytearray(size)
    data[0x1F1] = 1
    struct.pack_into("<I", data, 0x1F4, (size - 0x400) // 16)
    struct.pack_into("<H", data, 0x1FE, 0xAA55)
    data[0x200:0x202] = b"\xeb\x66"
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, 0x020F)
    data[0x211] = 0x01
    struct.pack_into("<I", data, 0x22C, 0x37FF_FFFF)
    struct.pack_into("<IB", data, 0x230, 0x20_0000, 1)
    struct.pack_into("<HI", data, 0x236, 0x1, 2048)
    struct.pack_into("<QI", data, 0x258, 0x20_0000, 0x40_0000)
    return bytes(data)


BZ_FIELDS = {0x1F1: 1, 0x1F4: 4, 0x1FE: 2, 0x201: 1, 0x206: 2, 0x211: 1, 0x22C: 4, 0x230: 4,
             0x234: 1, 0x236: 2, 0x238: 4, 0x258: 8, 0x260: 4}
BZ_POINTS = (0x020C, 0x0204, 0x20_0000, 0x40_0000, X86_SIZE, 0x3000, 0x200)


def multiboot_template(size: int = 0x2000) -> bytes:
    """A Multiboot v1 flat kernel: the header at 0 with the a.out kludge (flags bit 16)
    loading the file at 1 MiB."""
    data = bytearray(size)
    flags = 1 << 16 | 0x3
    struct.pack_into("<IIIIIIII", data, 0, 0x1BADB002, flags, -(0x1BADB002 + flags) & 0xFFFF_FFFF,
                     0x10_0000, 0x10_0000, 0x10_0000 + size, 0x10_0000 + size + 0x1000,
                     0x10_0020)
    return bytes(data)


MB_FIELDS = {4: 4, 12: 4, 16: 4, 20: 4, 24: 4, 28: 4}
MB_POINTS = (0x10_0000, 0x10_2000, 0x10_3000, X86_SIZE, 1 << 16 | 3)


@st.composite
def multiboot_image(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(mutated(multiboot_template(), MB_FIELDS, MB_POINTS)))
    if len(data) >= 12 and draw(st.booleans()):  # a valid checksum, to get past the search
        flags = int.from_bytes(data[4:8], "little")
        data[8:12] = (-(0x1BADB002 + flags) & 0xFFFF_FFFF).to_bytes(4, "little")
    return bytes(data)


def elf_template(machine: int, cls: int = 2, at: int = 0x20_0000, size: int = 0x2000) -> bytes:
    """An ELF executable (the ELF spec's header layout) with one PT_LOAD of the file's
    second page at ``at`` (2 MiB), entered there."""
    data = bytearray(size)
    if cls == 2:
        data[0:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
        struct.pack_into("<HHIQQQIHHHHHH", data, 16, 2, machine, 1, at, 64, 0, 0, 64,
                         56, 1, 64, 0, 0)
        struct.pack_into("<IIQQQQQQ", data, 64, 1, 7, 0x1000, at, at, 0x1000, 0x2000, 0x1000)
    else:
        data[0:16] = b"\x7fELF\x01\x01\x01" + bytes(9)
        struct.pack_into("<HHIIIIIHHHHHH", data, 16, 2, machine, 1, at, 52, 0, 0, 52, 32,
                         1, 40, 0, 0)
        struct.pack_into("<IIIIIIII", data, 52, 1, 0x1000, at, at, 0x1000, 0x2000, 7, 0x1000)
    return bytes(data)


ELF64_FIELDS = {5: 1, 16: 2, 18: 2, 24: 8, 32: 8, 54: 2, 56: 2, 64: 4, 72: 8, 80: 8, 88: 8,
                96: 8, 104: 8}
ELF32_FIELDS = {5: 1, 16: 2, 18: 2, 24: 4, 28: 4, 42: 2, 44: 2, 52: 4, 56: 4, 60: 4, 64: 4,
                68: 4, 72: 4}
ELF_POINTS = (0x20_0000, 0x1000, 0x2000, 0x10_0000, 183, 243, 62, 3, 64, 56, 52, 32)


# -- the Linux Image loaders -------------------------------------------------------------------

def linux_images(magic56: bytes, text_offset: int, version: int) -> st.SearchStrategy[bytes]:
    """Mutated Linux Images of one architecture, with and without an EFI stub."""
    return st.one_of(*(mutated(image_template(magic56, text_offset, version, efi=efi),
                               LINUX_FIELDS, LINUX_POINTS, True) for efi in (True, False)))


def load_linux(ram: Ram, load: Callable[..., Any], data: bytes) -> None:
    """Load ``data`` with ``load`` into ``ram``: refused with a typed error, or placed
    2 MiB aligned (plus text_offset) inside RAM."""
    base = int(ram.region.gpa)
    loaded = typed(lambda: load(ram.space, data, ram_base=base, ram_size=ram.region.size,
                                path=PATH), ram)
    if loaded is not None:
        assert base <= loaded.start < loaded.end <= base + ram.region.size


@SETTINGS
@given(data=linux_images(b"ARM\x64", 0x80000, 0))
def test_arm64_images(arm_ram, data):
    typed(lambda: linux_image.parse_arm64_header(data, path=PATH))
    typed(lambda: linux_image.image_file_end(data, PATH))
    load_linux(arm_ram, linux_image.load_arm64_image, data)


@SETTINGS
@given(data=linux_images(b"RSC\x05", 0x200000, 2))
def test_riscv_images(rv_ram, data):
    typed(lambda: linux_image.parse_riscv_header(data, path=PATH))
    load_linux(rv_ram, linux_image.load_riscv_image, data)


def test_a_truncated_efi_stub_image_is_never_loaded(arm_ram):
    whole = image_template(b"ARM\x64", 0x80000, 0, efi=True)
    assert typed(lambda: linux_image.load_arm64_image(
        arm_ram.space, whole, ram_base=ARM_RAM, ram_size=ARM_SIZE, path=PATH)) is not None
    for cut in (64, 0x100, 0x147, 0x148, 0x1000, len(whole) - 1):
        with pytest.raises(image_mod.ImageError, match="truncated"):
            linux_image.load_arm64_image(arm_ram.space, whole[:cut], ram_base=ARM_RAM,
                                         ram_size=ARM_SIZE, path=PATH)


# -- x86 loaders -------------------------------------------------------------------------------

@SETTINGS
@given(data=mutated(bzimage_template(), BZ_FIELDS, BZ_POINTS),
       initrd=st.one_of(st.none(), st.binary(max_size=64)),
       cmdline=st.text(max_size=40))
def test_bzimages(x86_ram, data, initrd, cmdline):
    typed(lambda: bzimage.parse_setup_header(data, path=PATH))
    boot = typed(lambda: bzimage.load_bzimage(x86_ram.space, data, ram_size=X86_SIZE,
                                              cmdline=cmdline, initrd=initrd, path=PATH,
                                              initrd_path=PATH), x86_ram)
    if boot is not None:
        assert boot.kernel_end <= X86_SIZE


@SETTINGS
@given(data=multiboot_image(), module=st.one_of(st.none(), st.binary(max_size=64)))
def test_multiboot_kernels(x86_ram, data, module):
    multiboot.find_multiboot(data)  # never raises
    modules = [] if module is None else [(module, PATH)]
    typed(lambda: multiboot.load_multiboot(x86_ram.space, data, ram_size=X86_SIZE,
                                           cmdline="console=ttyS0", modules=modules,
                                           path=PATH), x86_ram)


@SETTINGS
@given(data=st.one_of(mutated(elf_template(62), ELF64_FIELDS, ELF_POINTS),
                      mutated(elf_template(3, cls=1), ELF32_FIELDS, ELF_POINTS)))
def test_x86_elf_kernels(x86_ram, data):
    typed(lambda: elf.parse_elf(data, path=PATH))
    typed(lambda: elf.load_x86_elf(x86_ram.space, data, path=PATH), x86_ram)


@SETTINGS
@given(data=st.one_of(
    mutated(elf_template(183, at=ARM_RAM + 0x20_0000), ELF64_FIELDS, ELF_POINTS, True),
    mutated(elf_template(243, at=RV_RAM + 0x20_0000), ELF64_FIELDS, ELF_POINTS, True)))
def test_arm64_and_riscv_elf_kernels(arm_ram, rv_ram, data):
    typed(lambda: elf.load_elf(arm_ram.space, data, path=PATH, expected_machine="aarch64"),
          arm_ram)
    typed(lambda: elf.load_elf(rv_ram.space, data, path=PATH, expected_machine="riscv64"),
          rv_ram)


@SETTINGS
@given(data=st.binary(max_size=256), addr=st.integers(-(1 << 64), 1 << 64),
       mode=st.sampled_from(["real", "protected", "long", "v86"]))
def test_flat_binaries(arm_ram, x86_ram, data, addr, mode):
    typed(lambda: raw.load_raw(arm_ram.space, data, addr=addr, path=PATH), arm_ram)
    typed(lambda: raw.load_x86_raw(x86_ram.space, data, path=PATH, addr=addr,
                                   mode=mode), x86_ram)  # type: ignore[arg-type]


# -- what tells formats apart, and compression -------------------------------------------------

ANY_IMAGE = st.one_of(
    st.binary(max_size=512),
    mutated(image_template(b"ARM\x64", 0x80000, 0, efi=True), LINUX_FIELDS, LINUX_POINTS, True),
    mutated(image_template(b"RSC\x05", 0x200000, 2, efi=False), LINUX_FIELDS, LINUX_POINTS, True),
    mutated(bzimage_template(), BZ_FIELDS, BZ_POINTS, True),
    multiboot_image(),
    mutated(elf_template(62), ELF64_FIELDS, ELF_POINTS, True),
    mutated(elf_template(3, cls=1), ELF32_FIELDS, ELF_POINTS),
)


@st.composite
def zboot(draw: st.DrawFn) -> bytes:
    """An EFI zboot wrapper ("MZ", "zimg" at 4, payload offset and size, compression
    name) around a drawn payload, its fields drawn too."""
    payload = gzip.compress(draw(st.binary(max_size=128)), mtime=0)
    offset = draw(st.one_of(st.just(0x40), st.integers(0, 1 << 32)))
    size = draw(st.one_of(st.just(len(payload)), st.integers(0, 1 << 32)))
    comp = draw(st.sampled_from([b"gzip", b"zstd", b"", b"gzip\xff"]))
    head = struct.pack("<2s2x4sII8x32s", b"MZ", b"zimg", offset & 0xFFFF_FFFF,
                       size & 0xFFFF_FFFF, comp)
    return head.ljust(0x40, b"\0") + payload


@SETTINGS
@given(data=st.one_of(ANY_IMAGE, zboot(), zboot().map(lambda z: gzip.compress(z, mtime=0)),
                      st.binary(max_size=64).map(lambda b: b"\x1f\x8b\x08" + b)))
def test_format_detection_and_decompression(data):
    for detector in (detect.detect_format, detect.detect_riscv_format, detect.detect_x86_format):
        kind = typed(lambda detector=detector: detector(data, path=PATH))
        assert kind is None or isinstance(kind, str)
    plain = typed(lambda: compression.decompress(data, path=PATH))
    assert plain is None or len(plain) <= compression.MAX_DECOMPRESSED
    # these only describe: they never raise
    assert detect.guess_arch(data) in (None, "x86_64", "aarch64", "riscv64")
    compression.describe_foreign(data)
    compression.peek_gzip(data)


# -- the initrd, the device tree and files -----------------------------------------------------

@SETTINGS
@given(initrd=st.binary(min_size=0, max_size=64),
       kernel_end=st.integers(-(1 << 40), 1 << 40),
       ram_base=st.sampled_from([ARM_RAM, ARM_RAM - 0x1000, ARM_RAM + 0x20_0000, 0]),
       ram_size=st.sampled_from([ARM_SIZE, 2 * MiB, 0, -1, 1 << 40]))
def test_initrd_placement(arm_ram, initrd, kernel_end, ram_base, ram_size):
    typed(lambda: placement.load_initrd(arm_ram.space, initrd, ram_base=ram_base,
                                        ram_size=ram_size, kernel_end=kernel_end, path=PATH),
          arm_ram)


@SETTINGS
@given(totalsize=st.one_of(st.none(), field_value(4, (64, 0x40, 2 * MiB))),
       body=st.binary(max_size=96),
       magic=st.sampled_from([b"\xd0\x0d\xfe\xed", b"\xed\xfe\x0d\xd0"]),
       reserved=st.lists(st.tuples(st.integers(0, 1 << 33), st.integers(0, 1 << 33)),
                         max_size=2))
def test_device_tree_placement(arm_ram, totalsize, body, magic, reserved):
    size = 8 + len(body) if totalsize is None else totalsize  # None: the blob's own size
    dtb = magic + size.to_bytes(4, "big") + body
    typed(lambda: placement.place_dtb(arm_ram.space, dtb, ram_base=ARM_RAM, ram_size=ARM_SIZE,
                                      reserved=reserved, path=PATH), arm_ram)


@SETTINGS
@given(content=st.binary(max_size=256), limit=st.integers(-4, 300))
def test_reading_image_files(content, limit):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed"
        path.write_bytes(content)
        got = typed(lambda: image_mod.read_image(path, "kernel", limit=limit), path=str(path))
        if got is not None:
            assert got == content and 0 < len(content) <= limit
        else:
            assert not content or limit < len(content) or limit <= 0
        os.chmod(path, 0)
        typed(lambda: image_mod.read_image(path, "kernel", limit=max(limit, 1)), path=str(path))

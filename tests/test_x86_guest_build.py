"""The bundled x86 test kernel (pyaxvisor/guests/x86_64): the committed images are what
``build.sh`` builds from the committed sources, byte for byte, and their Multiboot
headers are the ones the sources document.

The build needs gcc (``-m32 -c`` only, no multilib) and binutils; both are installed
here and on CI, so the rebuild test is skipped only when one is missing. The committed
images were built with Debian 12's gcc 12.2.0 and binutils 2.40: another toolchain
version may generate other bytes, which the failure message then says.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent.parent / "pyaxvisor" / "guests" / "x86_64"
IMAGES = ("smp.elf", "smp.bin")
LOAD_ADDR = 0x100000
MB_MAGIC = 0x1BADB002
MB_MEMINFO = 1 << 1
MB_AOUT_KLUDGE = 1 << 16


def _tool_version(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return f"{tool}: unavailable"
    return out.stdout.splitlines()[0]


def _multiboot_header(image: bytes) -> tuple[int, tuple[int, ...]]:
    """(file offset, the header's u32 fields) of the Multiboot v1 header: the first
    4-byte aligned magic within 8 KiB whose checksum holds."""
    for off in range(0, min(len(image), 8192) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<3I", image, off)
        if magic == MB_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            count = 8 if flags & MB_AOUT_KLUDGE else 3
            return off, struct.unpack_from(f"<{count}I", image, off)
    raise AssertionError("no Multiboot header in the first 8 KiB")


def test_build_reproduces_committed_images(tmp_path: Path) -> None:
    # gcc and binutils: installing pyaxvisor needs the C toolchain (README)
    for out in (tmp_path / "a", tmp_path / "b"):
        subprocess.run(["bash", str(GUEST_DIR / "build.sh"), str(out)], check=True,
                       capture_output=True)
    versions = ", ".join(_tool_version(t) for t in ("gcc", "ld"))
    for name in IMAGES:
        first = (tmp_path / "a" / name).read_bytes()
        second = (tmp_path / "b" / name).read_bytes()
        assert first == second, f"{name}: two builds differ (the build is not deterministic)"
        assert first == (GUEST_DIR / name).read_bytes(), (
            f"{name}: build.sh does not reproduce the committed image with {versions}; "
            "rebuild with `bash pyaxvisor/guests/x86_64/build.sh` (the committed images "
            "come from Debian 12's gcc 12.2.0 and binutils 2.40)")


def test_elf_image_is_multiboot_elf32() -> None:
    image = (GUEST_DIR / "smp.elf").read_bytes()
    assert image[:4] == b"\x7fELF" and image[4] == 1 and image[5] == 1  # ELF32, LE
    e_type, e_machine = struct.unpack_from("<HH", image, 16)
    assert (e_type, e_machine) == (2, 3)  # ET_EXEC, EM_386
    assert struct.unpack_from("<I", image, 24)[0] == LOAD_ADDR  # e_entry
    _off, (_magic, flags, _sum) = _multiboot_header(image)
    assert flags == MB_MEMINFO  # memory info, and no a.out kludge


def test_flat_image_has_aout_kludge_and_starts_with_a_jump() -> None:
    image = (GUEST_DIR / "smp.bin").read_bytes()
    assert len(image) < 64 * 1024
    off, fields = _multiboot_header(image)
    _magic, flags, _sum, header_addr, load_addr, load_end, bss_end, entry = fields
    assert flags == MB_MEMINFO | MB_AOUT_KLUDGE
    assert load_addr == LOAD_ADDR
    assert header_addr == LOAD_ADDR + off
    assert load_end == LOAD_ADDR + len(image)  # the flat file is exactly the load image
    assert bss_end >= load_end
    assert LOAD_ADDR + off + 32 <= entry < load_end
    # Raw entry at the first byte: a short jmp straight to entry_addr.
    assert image[0] == 0xEB
    assert LOAD_ADDR + 2 + struct.unpack_from("b", image, 1)[0] == entry

"""Putting a guest's boot images into its RAM: kernels of every format, the initrd and
the device tree, for arm64, RISC-V and x86 guests.

Modules (each states its own placement and entry rules)

=================== ==============================================================
:mod:`.image`       :class:`ImageError`, :class:`LoadedImage`, :class:`Segment`,
                    :func:`read_image` (bounded file reading) and the address
                    helpers every loader shares; the rules they all follow
:mod:`.compression` gzip and EFI-zboot unwrapping, and naming formats no loader
                    takes (:func:`describe_foreign`)
:mod:`.detect`      :func:`detect_format` (arm64), :func:`detect_x86_format`,
                    :func:`guess_arch` (which architecture a kernel file is for)
:mod:`.elf`         the one ELF parser (:func:`parse_elf`) and its entry rules:
                    :func:`load_elf` (arm64, RISC-V), :func:`load_x86_elf`
:mod:`.linux_image` the Linux ``Image`` header of arm64 and RISC-V:
                    :func:`load_arm64_image`, :func:`load_riscv_image`
:mod:`.bzimage`     x86 Linux ``bzImage``, 64-bit entry: :func:`load_bzimage`
:mod:`.multiboot`   Multiboot v1 kernels: :func:`load_multiboot`
:mod:`.raw`         flat binaries: :func:`load_raw`, :func:`load_x86_raw`
:mod:`.placement`   arm64 initrd and DTB placement: :func:`load_initrd`,
                    :func:`place_dtb`, :func:`dtb_address`
:mod:`.x86_entry`   :class:`X86Boot`, the entry state every x86 loader returns,
                    and the x86 placement checks they share
=================== ==============================================================

Every loader checks everything before writing guest memory, so a rejected image
leaves RAM untouched. The public names of the modules are also importable from
this package; each module is imported when one of its names is first used, and
pyelftools only when an ELF image is met.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name → the module that defines it (imported when the name is first used:
#: an x86 run never imports the arm64 Image code, nor pyelftools).
_HOME = {
    "ARM64_DEFAULT_TEXT_OFFSET": "linux_image", "ARM64_HEADER_SIZE": "linux_image",
    "Arm64ImageHeader": "linux_image", "BOOT_WINDOW": "placement", "DTB_MAX_SIZE": "placement",
    "DTB_SLOT_ALIGN": "placement", "ELF_MACHINES": "elf", "EM_386": "elf", "EM_X86_64": "elf",
    "ElfImage": "elf", "GUESS_BYTES": "detect", "IDENTITY_MAP_END": "x86_entry",
    "ImageError": "image", "KERNEL_ALIGN": "linux_image", "LoadedImage": "image",
    "MAX_DECOMPRESSED": "compression", "MAX_IMAGE_SIZE": "image", "MB_SEARCH": "multiboot",
    "MULTIBOOT_BOOTLOADER_MAGIC": "multiboot", "MULTIBOOT_MAGIC": "multiboot",
    "Mode": "x86_entry", "PAGE_SIZE": "image", "REAL_MODE_END": "x86_entry",
    "RiscvImageHeader": "linux_image", "SetupHeader": "bzimage", "X86Boot": "x86_entry",
    "decompress": "compression", "describe_foreign": "compression", "detect_format": "detect",
    "detect_riscv_format": "detect", "detect_x86_format": "detect",
    "dtb_address": "placement", "guess_arch": "detect",
    "load_arm64_image": "linux_image", "load_bzimage": "bzimage", "load_elf": "elf",
    "load_initrd": "placement", "load_multiboot": "multiboot", "load_raw": "raw",
    "load_riscv_image": "linux_image", "load_x86_elf": "elf", "load_x86_raw": "raw",
    "parse_arm64_header": "linux_image", "parse_elf": "elf", "parse_riscv_header": "linux_image",
    "parse_setup_header": "bzimage", "place_dtb": "placement", "read_image": "image",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    """``pyaxvisor.loaders.NAME``: the name from its module, imported on first use."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

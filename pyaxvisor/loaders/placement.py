"""Where the initrd and the device tree go in an arm64 guest's RAM (booting.rst).

``ram_base``/``ram_size`` describe the RAM bank the boot images go to; it must be
mapped in the address space.

* **DTB** (:func:`place_dtb`): at the start of the last whole 2 MiB block of the
  *boot window*, the first ``min(ram_size, 512 MiB)`` of RAM (:func:`dtb_address`);
  the block is reserved for the DTB alone, which may not exceed 2 MiB. That
  satisfies booting.rst in all its versions: 8-byte aligned, at most 2 MiB, not
  sharing a 2 MiB block with anything (the kernel maps it with blocks of up to
  2 MiB), and within 512 MiB of the kernel (older kernels' rule). QEMU puts the DTB
  after the initrd instead; a fixed slot lets the DTB be built after the initrd is
  placed.
* **initrd** (:func:`load_initrd`, bytes taken verbatim: the kernel unpacks a
  compressed initramfs itself): as high as possible below the DTB block, page
  aligned (its end is the DTB block's start), and not below the page-aligned
  kernel end. Like U-Boot's default, that leaves the RAM after the kernel free for
  the kernel's early allocations.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.image import (
    FDT_MAGIC,
    PAGE_SIZE,
    ImageError,
    MiB,
    align_down,
    align_up,
    check_ram,
    require_data,
    span,
)
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = [
    "BOOT_WINDOW", "DTB_MAX_SIZE", "DTB_SLOT_ALIGN", "dtb_address", "load_initrd",
    "place_dtb",
]

#: Largest device tree booting.rst allows, and the block reserved for it.
DTB_MAX_SIZE = 2 * MiB
DTB_SLOT_ALIGN = 2 * MiB
#: The DTB (and so the initrd) goes into the first this-many bytes of RAM.
BOOT_WINDOW = 512 * MiB


def dtb_address(ram_base: int, ram_size: int) -> int:
    """Where :func:`place_dtb` puts the DTB: the last whole 2 MiB block of the boot window.

    The boot window is ``[ram_base, ram_base + min(ram_size, 512 MiB))``. The
    block ``[addr, addr + 2 MiB)`` belongs to the DTB alone.
    """
    window_end = ram_base + min(ram_size, BOOT_WINDOW)
    addr = align_down(window_end, DTB_SLOT_ALIGN) - DTB_SLOT_ALIGN
    if addr < ram_base:
        raise InvalidInput(f"RAM {span(ram_base, ram_base + ram_size)} has no whole "
                           "2 MiB block for the device tree")
    return addr


def load_initrd(space: AddrSpace, data: bytes, *, ram_base: int, ram_size: int,
                kernel_end: int, path: str) -> tuple[int, int]:
    """Place an initrd (verbatim) as high as possible below the DTB block, page aligned.

    Returns ``(start, end)`` with ``end`` exclusive, the values for
    ``linux,initrd-start``/``linux,initrd-end``. The initrd must not go below
    the page-aligned ``kernel_end``.
    """
    require_data(data, path)
    check_ram(space, ram_base, ram_size)
    ceiling = dtb_address(ram_base, ram_size)
    floor = max(ram_base, align_up(kernel_end, PAGE_SIZE))
    start = align_down(ceiling - len(data), PAGE_SIZE)
    if start < floor:
        room = max(0, ceiling - floor)
        raise ImageError(path, f"initrd of {len(data):#x} bytes does not fit between the "
                               f"kernel end {floor:#x} and the device tree block at "
                               f"{ceiling:#x} ({room:#x} bytes free)")
    end = start + len(data)
    space.write(GuestPhysAddr(start), data)
    return start, end


def place_dtb(space: AddrSpace, dtb: bytes, *, ram_base: int, ram_size: int,
              reserved: Sequence[tuple[int, int]] = (),
              path: str = "<device tree>") -> int:
    """Write a DTB to :func:`dtb_address` and return that address (for x0).

    ``reserved`` lists ``(start, end)`` spans already in use (kernel, initrd);
    none may touch the DTB's 2 MiB block.
    """
    require_data(dtb, path)
    if bytes(dtb[:4]) != FDT_MAGIC:
        raise ImageError(path, "not a device tree blob (no 0xd00dfeed magic)")
    if len(dtb) >= 8 and int.from_bytes(dtb[4:8], "big") != len(dtb):
        raise ImageError(path, f"header totalsize {int.from_bytes(dtb[4:8], 'big'):#x} "
                               f"differs from the {len(dtb):#x}-byte blob")
    if len(dtb) > DTB_MAX_SIZE:
        raise ImageError(path, f"{len(dtb):#x} bytes; arm64 Linux accepts at most 2 MiB")
    check_ram(space, ram_base, ram_size)
    addr = dtb_address(ram_base, ram_size)
    block = (addr, addr + DTB_SLOT_ALIGN)
    for start, end in reserved:
        if start < block[1] and block[0] < end:
            raise ImageError(path, f"the device tree block {span(*block)} overlaps "
                                   f"{span(start, end)}, which is already in use")
    space.write(GuestPhysAddr(addr), dtb)
    return addr

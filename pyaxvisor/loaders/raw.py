"""Flat binaries, copied verbatim (never decompressed) to a given address.

* :func:`load_raw` (arm64, RISC-V): at ``addr``, which becomes the entry; the
  bytes must lie in guest RAM.
* :func:`load_x86_raw`: at ``addr`` (default ``KERNEL_LOAD``, 1 MiB), entered at
  its first byte in ``mode`` (default 32-bit protected mode); a real-mode entry
  must lie below 1 MiB, a 64-bit one in the 1 GiB identity map
  (:mod:`.x86_entry`). With a :class:`~.x86_entry.BootMemory` the image's range is
  entered there, so the boot structures keep out of its way.
"""

from __future__ import annotations

from typing import get_args

from pyaxvisor.boards.x86_pc import layout
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.image import ImageError, LoadedImage, covered, require_data, span
from pyaxvisor.loaders.x86_entry import (
    IDENTITY_MAP_END,
    REAL_MODE_END,
    BootMemory,
    Mode,
    X86Boot,
)
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = ["load_raw", "load_x86_raw"]


def load_raw(space: AddrSpace, data: bytes, *, addr: int, path: str) -> LoadedImage:
    """Copy ``data`` verbatim to ``addr`` (which becomes the entry)."""
    require_data(data, path)
    end = addr + len(data)
    if not covered(space, addr, end):
        raise ImageError(path, f"{len(data):#x} bytes at {span(addr, end)} do not fit in "
                               "guest RAM")
    space.write(GuestPhysAddr(addr), data)
    return LoadedImage(entry=addr, start=addr, end=end)


def load_x86_raw(space: AddrSpace, data: bytes, *, path: str, addr: int = layout.KERNEL_LOAD,
                 mode: Mode = "protected", memory: BootMemory | None = None) -> X86Boot:
    """Copy a flat binary verbatim to ``addr`` and enter it there in ``mode`` (a real-mode
    entry must lie below 1 MiB, a 64-bit one in the 1 GiB identity map)."""
    if mode not in get_args(Mode):
        raise InvalidInput(f"unknown x86 start mode {mode!r}: choose one of "
                           f"{', '.join(get_args(Mode))}")
    require_data(data, path)
    end = addr + len(data)
    if addr < 0 or not covered(space, addr, end):
        raise ImageError(path, f"{len(data)} bytes at {span(addr, end)} do not fit in guest "
                               "RAM")
    if mode == "real" and addr >= REAL_MODE_END:
        raise ImageError(path, f"real-mode entry {addr:#x} is not below 1 MiB")
    if mode == "long" and addr >= IDENTITY_MAP_END:
        raise ImageError(path, f"64-bit entry {addr:#x} is above the 1 GiB the boot page "
                               "tables map")
    if memory is not None:
        memory.claim(addr, end, "the flat binary")
    space.write(GuestPhysAddr(addr), data)
    return X86Boot(addr, mode, {}, addr, end, "raw",
                   f"flat binary at {addr:#x}, {mode}-mode entry")

"""The entry state every x86 loader returns, and the placement rules they share.

Entry state (:class:`X86Boot`)
    ``entry`` is a guest physical address, entered in ``mode``: ``"real"`` (below
    :data:`REAL_MODE_END`, the vCPU set-up derives CS:IP from it), ``"protected"``
    (32-bit, flat segments) or ``"long"`` (64-bit, at most :data:`IDENTITY_MAP_END`:
    the boot page tables the vCPU set-up builds identity-map ``[0, 1 GiB)``).
    ``gprs`` holds the registers the image expects, by hardware number (0 RAX,
    1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI); all others are zero.

Placement (:func:`check_x86_segments`)
    Kernel segments go to *low RAM* (below ``min(ram_size, 3 GiB)``, the layout's
    ``LOW_RAM_LIMIT``) at or above 1 MiB: below it live the GDT, ``boot_params``,
    the page tables and the MP table (see :mod:`pyaxvisor.boards.x86_pc.layout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from pyaxvisor.boards.x86_pc import layout
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.image import ImageError, Segment, check_segments_in_ram, covered, span
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = [
    "IDENTITY_MAP_END", "REAL_MODE_END", "Mode", "X86Boot", "check_low_ram",
    "check_x86_segments",
]

Mode = Literal["real", "protected", "long"]
#: The 64-bit entry's page tables (built by the vCPU set-up) identity-map [0, 1 GiB).
IDENTITY_MAP_END = 1 << 30
#: A real-mode entry must be below 1 MiB (the vCPU set-up derives CS:IP from it).
REAL_MODE_END = layout.HIGH_MEMORY


class X86Boot(NamedTuple):
    """Where and how a loaded image starts. ``gprs`` uses the hardware numbering
    (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI); ``[kernel_start,
    kernel_end)`` is the guest physical memory the kernel occupies (for a bzImage,
    up to the end of its decompression footprint)."""

    entry: int
    mode: Mode
    gprs: dict[int, int]
    kernel_start: int
    kernel_end: int
    format: str
    description: str


def check_low_ram(space: AddrSpace, ram_size: int) -> int:
    """The low RAM top for ``ram_size``, after checking ``[0, top)`` is guest RAM."""
    if not isinstance(ram_size, int) or ram_size <= layout.HIGH_MEMORY:
        raise InvalidInput(f"ram_size {ram_size!r} leaves no RAM above 1 MiB")
    top = min(ram_size, layout.LOW_RAM_LIMIT)
    if not covered(space, 0, top):
        raise InvalidInput(f"low RAM {span(0, top)} for ram_size {ram_size:#x} is not "
                           "mapped in the guest address space")
    return top


def check_x86_segments(space: AddrSpace, segments: Sequence[Segment], path: str, *,
                       top: int | None = None) -> None:
    """Each segment at or above 1 MiB and in guest RAM (below ``top`` when given)."""
    for i, seg in enumerate(segments):
        if seg.paddr < layout.HIGH_MEMORY:
            raise ImageError(path, f"segment {i} at {span(seg.paddr, seg.end)} starts below "
                                   "1 MiB, where the boot structures live")
    check_segments_in_ram(space, segments, path, top=top)

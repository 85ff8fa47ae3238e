"""The entry state every x86 loader returns, and the placement rules they share.

Entry state (:class:`X86Boot`)
    ``entry`` is a guest physical address, entered in ``mode``: ``"real"`` (below
    :data:`REAL_MODE_END`, the vCPU set-up derives CS:IP from it), ``"protected"``
    (32-bit, flat segments) or ``"long"`` (64-bit, at most :data:`IDENTITY_MAP_END`:
    the boot page tables the vCPU set-up builds identity-map ``[0, 1 GiB)``).
    ``gprs`` holds the registers the image expects, by hardware number (0 RAX,
    1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI); all others are zero.

Placement (:class:`BootMemory`, :func:`check_x86_segments`)
    Kernel segments go anywhere in *low RAM* (below ``min(ram_size, 3 GiB)``, the
    layout's ``LOW_RAM_LIMIT``), below 1 MiB too (a real-mode test kernel at
    0x8000, a Multiboot kernel linked at 0x10000). A :class:`BootMemory` records
    the guest physical memory a boot uses: first the image's own ranges
    (:meth:`BootMemory.claim`), then each boot structure as it is placed
    (:meth:`BootMemory.place`): at its fixed slot when nothing there is taken (the
    PC layout's classic addresses, :mod:`pyaxvisor.boards.x86_pc.layout`), else at
    the lowest free address of its windows, in the order given. Only when every
    slot and window of a structure is taken is the image refused, with an
    :class:`ImageError` that names the structure, where it may go and what covers
    those places.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

from pyaxvisor.boards.x86_pc import layout
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.image import (
    ImageError,
    Segment,
    align_up,
    check_segments_in_ram,
    covered,
    span,
)
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = [
    "IDENTITY_MAP_END", "REAL_MODE_END", "BootMemory", "Mode", "Taken", "X86Boot",
    "check_low_ram", "check_x86_segments",
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


class Taken(NamedTuple):
    """``[start, end)`` of guest physical memory, used by ``what``."""

    start: int
    end: int
    what: str


class BootMemory:
    """The guest physical memory one x86 boot uses (see the module doc).

    ``path`` names the image in errors. The RAM below ``min(ram_size, 3 GiB)``
    must be mapped in ``space`` (:func:`check_low_ram`); :attr:`low_top` is its end.
    Placement never writes guest memory: the caller writes each structure where
    :meth:`place` put it.
    """

    def __init__(self, space: AddrSpace, ram_size: int, path: str) -> None:
        self.low_top = check_low_ram(space, ram_size)
        self.path = path
        self.taken: list[Taken] = []

    def claim(self, start: int, end: int, what: str) -> None:
        """Record ``[start, end)`` as the image's (``what`` names it in errors).
        The image may overlap itself; it is never refused here."""
        if end > start:
            self.taken.append(Taken(start, end, what))

    def claim_segments(self, segments: Iterable[Segment], what: str = "segment") -> None:
        """:meth:`claim` every segment, named ``"<what> <i>"``."""
        for i, seg in enumerate(segments):
            self.claim(seg.paddr, seg.end, f"{what} {i}")

    def conflict(self, start: int, end: int) -> Taken | None:
        """The first recorded range overlapping ``[start, end)``, or ``None``."""
        return next((t for t in self.taken if t.start < end and start < t.end), None)

    def place(self, what: str, size: int, *, align: int = 1, slots: Sequence[int] = (),
              windows: Sequence[tuple[int, int]] = ()) -> int:
        """Reserve ``size`` bytes for ``what``: at the first of ``slots`` where nothing
        is taken, else at the lowest free ``align``-aligned address of the first of
        ``windows`` (``[low, high)`` ranges, cut at :attr:`low_top`) that has room.
        Returns the address; raises :class:`ImageError` when nowhere is free."""
        if size <= 0 or align <= 0:
            raise InvalidInput(f"{what}: size {size} and alignment {align} must be positive")
        for slot in slots:
            if slot + size <= self.low_top and self.conflict(slot, slot + size) is None:
                return self._take(slot, size, what)
        for low, high in windows:
            high = min(high, self.low_top)
            start = align_up(low, align)
            while start + size <= high:
                hit = self.conflict(start, start + size)
                if hit is None:
                    return self._take(start, size, what)
                start = align_up(hit.end, align)
        places = [span(s, s + size) for s in slots] + [span(lo, min(hi, self.low_top))
                                                       for lo, hi in windows]
        users = sorted({t for t in self.taken
                        if any(t.start < min(hi, self.low_top) and lo < t.end
                               for lo, hi in [(s, s + size) for s in slots] + list(windows))})
        covers = ", ".join(f"{t.what} {span(t.start, t.end)}" for t in users) or "nothing"
        raise ImageError(self.path, f"no room for the {what} ({size} bytes) in "
                                    f"{' or '.join(places)}: taken by {covers}")

    def _take(self, start: int, size: int, what: str) -> int:
        self.taken.append(Taken(start, start + size, what))
        return start


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
    """Each segment in guest RAM (below ``top`` when given), anywhere from address 0:
    the boot structures move out of the image's way (:class:`BootMemory`)."""
    check_segments_in_ram(space, segments, path, top=top)

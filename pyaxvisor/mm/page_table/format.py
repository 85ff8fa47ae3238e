"""The descriptor format of one architecture's nested page table.

A :class:`PteFormat` knows two things and nothing else:

* **Geometry** — the walk, described by ``level_shifts``: the address bit at
  which each level's index starts, from the root down to the 4 KiB leaf level
  (EPT ``(39, 30, 21, 12)``). Every level below the root has 512 entries (one
  4 KiB frame); the root has ``root_entries`` entries, which may be more than
  512 (RISC-V ``x4`` modes, concatenated AArch64 stage-2 tables: the root is
  then several *contiguous* frames aligned to the root table's total size) or
  fewer (a small AArch64 IPA size uses only the first entries of one frame).
  ``input_bits`` is therefore ``level_shifts[0] + log2(root_entries)``.
  ``block_shifts`` names the non-leaf levels that may also hold a block
  (2 MiB at shift 21, 1 GiB at shift 30).
* **Encoding** — how a table descriptor and a leaf descriptor (a page at shift
  12, a block at a block shift) are built from an output address and
  :class:`~pyaxvisor.mm.flags.MappingFlags`, and how an entry decodes back.

Levels are named by their *shift* throughout (not by the architecture's level
number, which differs: AArch64 stage-2 may start at level 1, x86 counts down
from PML4), because the shift alone decides what an entry at that place may be.

Descriptors are 64-bit little-endian integers; an all-zero entry is never a
valid descriptor in any supported format, which the table relies on to count
used entries cheaply.
"""

from __future__ import annotations

import abc
import itertools
from typing import NamedTuple

from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import PAGE_SIZE_4K
from pyaxvisor.mm.flags import MappingFlags

#: Index bits per level below the root (4 KiB tables of 8-byte entries).
LEVEL_BITS = 9
ENTRIES_PER_TABLE = 1 << LEVEL_BITS
PAGE_SHIFT = 12

_RWX = MappingFlags.READ | MappingFlags.WRITE | MappingFlags.EXECUTE


class Pte(NamedTuple):
    """A decoded descriptor.

    ``paddr`` is the next-level table's address for a table descriptor and the
    output address for a leaf (``0`` when not present).
    """

    present: bool
    is_leaf: bool
    paddr: int
    flags: MappingFlags


NOT_PRESENT = Pte(False, False, 0, MappingFlags(0))


class PteFormat(abc.ABC):
    """Encode/decode plus geometry of one nested page-table format."""

    def __init__(self, *, name: str, level_shifts: tuple[int, ...], root_entries: int,
                 block_shifts: frozenset[int], input_bits: int, output_bits: int) -> None:
        if not level_shifts or level_shifts[-1] != PAGE_SHIFT:
            raise InvalidInput(f"{name}: the last level must map 4 KiB pages")
        for upper, lower in itertools.pairwise(level_shifts):
            if upper - lower != LEVEL_BITS:
                raise InvalidInput(f"{name}: levels must be {LEVEL_BITS} bits apart")
        if root_entries <= 0 or root_entries & (root_entries - 1):
            raise InvalidInput(f"{name}: root entry count {root_entries} is not a power of two")
        if level_shifts[0] + root_entries.bit_length() - 1 != input_bits:
            raise InvalidInput(f"{name}: {root_entries} root entries at shift {level_shifts[0]} "
                               f"do not cover {input_bits} input bits")
        if not block_shifts <= set(level_shifts[:-1]):
            raise InvalidInput(f"{name}: block shifts {sorted(block_shifts)} are not table levels")
        self.name = name
        self.level_shifts = tuple(level_shifts)
        self.root_entries = root_entries
        self.block_shifts = frozenset(block_shifts)
        self.input_bits = input_bits
        self.output_bits = output_bits

    # -- geometry ------------------------------------------------------------------
    @property
    def levels(self) -> int:
        return len(self.level_shifts)

    @property
    def root_frames(self) -> int:
        """4 KiB frames the root table occupies (contiguous)."""
        return max(1, self.root_entries * 8 // PAGE_SIZE_4K)

    @property
    def root_align(self) -> int:
        """Alignment of the root table: its own size (at least 4 KiB)."""
        return self.root_frames * PAGE_SIZE_4K

    def entries_at(self, depth: int) -> int:
        """Number of entries of a table at ``depth`` (0 is the root)."""
        return self.root_entries if depth == 0 else ENTRIES_PER_TABLE

    def page_sizes(self) -> tuple[int, ...]:
        """Leaf sizes this format can map, largest first."""
        return tuple(1 << s for s in self.level_shifts
                     if s == PAGE_SHIFT or s in self.block_shifts)

    # -- permissions -----------------------------------------------------------------
    def validate_flags(self, flags: MappingFlags) -> None:
        """Refuse permissions a leaf cannot express in every supported format.

        A leaf needs at least one of READ/WRITE/EXECUTE (with none, an EPT entry is
        not present and a RISC-V entry is a table pointer), and WRITE needs READ
        (write-only is an EPT misconfiguration and a reserved RISC-V encoding).
        The rule is the same for all formats so callers need not know the
        architecture.
        """
        if not flags & _RWX:
            raise InvalidInput(
                f"{self.name}: a mapping needs READ, WRITE or EXECUTE, got {flags!r}")
        if flags & MappingFlags.WRITE and not flags & MappingFlags.READ:
            raise InvalidInput(f"{self.name}: write-only mappings are not expressible ({flags!r})")

    def canonical_flags(self, flags: MappingFlags) -> MappingFlags:
        """The flags :meth:`decode` reports for a leaf encoded with ``flags``.

        Flags a format cannot express (``USER`` everywhere, memory types on RISC-V)
        are dropped; see the format's docstring.
        """
        return self.decode(self.encode_leaf(0, flags, PAGE_SHIFT), PAGE_SHIFT).flags

    # -- encoding --------------------------------------------------------------------
    @abc.abstractmethod
    def encode_table(self, paddr: int, shift: int) -> int:
        """A descriptor at level ``shift`` pointing to the next-level table at ``paddr``."""

    @abc.abstractmethod
    def encode_leaf(self, paddr: int, flags: MappingFlags, shift: int) -> int:
        """A page (``shift == 12``) or block descriptor mapping output address ``paddr``."""

    @abc.abstractmethod
    def decode(self, entry: int, shift: int) -> Pte:
        """Decode a raw descriptor found at level ``shift``."""

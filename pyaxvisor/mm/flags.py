"""Architecture-neutral mapping permissions (axaddrspace ``MappingFlags``).

Each nested page-table format translates these into its own bits: EPT R/W/X and
memory type, stage-2 S2AP/XN/MemAttr, G-stage R/W/X/U. ``DEVICE`` selects
device (uncached, strongly ordered) memory, ``UNCACHED`` normal non-cacheable.
"""

from __future__ import annotations

import enum

from pyaxvisor.errors import InvalidInput


class MappingFlags(enum.IntFlag):
    READ = 1 << 0
    WRITE = 1 << 1
    EXECUTE = 1 << 2
    USER = 1 << 3
    DEVICE = 1 << 4
    UNCACHED = 1 << 5

    @classmethod
    def rwx(cls) -> MappingFlags:
        return cls.READ | cls.WRITE | cls.EXECUTE

    @classmethod
    def from_str(cls, text: str) -> MappingFlags:
        """Parse a permission string such as ``"rwx"``, ``"r-x"`` or ``"rw-d"``.

        Letters: r read, w write, x execute, u user, d device, c uncached; ``-`` is a
        placeholder.
        """
        letters = {"r": cls.READ, "w": cls.WRITE, "x": cls.EXECUTE, "u": cls.USER,
                   "d": cls.DEVICE, "c": cls.UNCACHED}
        flags = cls(0)
        for ch in text.lower():
            if ch == "-":
                continue
            if ch not in letters:
                raise InvalidInput(f"unknown mapping permission letter {ch!r} in {text!r}")
            flags |= letters[ch]
        return flags


class AccessFlags(enum.IntFlag):
    """The kind of access that caused a nested page fault."""

    READ = 1 << 0
    WRITE = 1 << 1
    EXECUTE = 1 << 2

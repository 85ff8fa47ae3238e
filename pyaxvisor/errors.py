"""Typed errors shared by every layer of pyaxvisor.

The hierarchy mirrors the error kinds the AxVisor crates use (axerrno's
``AxError``): every failure a caller can act on has its own class, and all of
them derive from :class:`AxError`, so a VM run loop can catch one type and keep
the host process alive while reporting exactly what went wrong.
"""

from __future__ import annotations


class AxError(Exception):
    """Base class of every error pyaxvisor raises on purpose."""


class InvalidInput(AxError, ValueError):
    """An argument is malformed or out of range (a bad size, index or config)."""


class BadState(AxError):
    """An operation was called in a state that does not allow it."""


class Unsupported(AxError):
    """The operation or register exists but this implementation does not provide it."""


class NoMemory(AxError, MemoryError):
    """An allocation could not be satisfied (frames, guest RAM, page tables)."""


class AlreadyExists(AxError):
    """Something is already there: an overlapping mapping, a second init."""


class NotFound(AxError, LookupError):
    """The address, device or object asked for does not exist."""


class ImageFetchError(AxError):
    """A guest image could not be fetched from its Debian package or built from it."""


class AlignmentError(InvalidInput):
    """An address or size is not aligned as the operation requires."""

    def __init__(self, what: str, value: int, align: int) -> None:
        super().__init__(f"{what} {value:#x} is not aligned to {align:#x}")
        self.what = what
        self.value = value
        self.align = align

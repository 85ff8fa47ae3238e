"""Device registers a software CPU may read without calling the device.

A device whose registers can be read without side effects (a UART's flag and control
registers, but not its data register, whose read takes a character) publishes their
values in a :class:`RegisterMirror` and keeps them current. A vCPU that serves the
device's window inside its CPU (``ArchVCpu.serve_in_cpu``) answers reads of published
registers from the table, in C (``engine/tcg/mmio_mirror.c``), and calls the device for
everything else: the device sees no difference but the missing calls.

Layout (shared with the C side): the window as 32-bit little-endian words, and per
word a mask of its bytes that hold a published value (bit i: byte i) plus
:data:`WHOLE_WORD` (bit 4) for a register the device takes in aligned 32-bit accesses
only. A read is served from the table only when it lies inside one word and touches
published bytes only, and, where the word has :data:`WHOLE_WORD`, is that whole word
(a narrower read goes to the device, which refuses it as without a table).

A table may be a part of a larger one (:meth:`RegisterMirror.part`): a row of devices
served as one window shares one table, each device publishing in its own part.

Threads: publish and hide under the device's own lock (the one its read and write
take), so the table never disagrees with the device for longer than the update that
is under way; any vCPU thread reads it at any time, without a lock.
"""

from __future__ import annotations

import ctypes

#: Bit 4 of a word's mask: only an aligned 4-byte read is answered from the table.
WHOLE_WORD = 0x10


class RegisterMirror:
    """The published registers of one device window of ``size`` bytes."""

    def __init__(self, size: int, *, within: tuple[RegisterMirror, int] | None = None) -> None:
        if size <= 0 or size % 4:
            raise ValueError(f"a mirrored window is a positive multiple of 4 bytes, not {size}")
        words = size // 4
        self.size = size
        if within is None:
            self.data = (ctypes.c_uint32 * words)()
            self.valid = (ctypes.c_uint32 * words)()
        else:
            whole, at = within
            self.data = (ctypes.c_uint32 * words).from_buffer(whole.data, at)
            self.valid = (ctypes.c_uint32 * words).from_buffer(whole.valid, at)

    def part(self, offset: int, size: int) -> RegisterMirror:
        """The table of the ``size`` bytes at ``offset`` (4-byte aligned, inside this
        window), sharing this one's words: what it publishes, this table answers at
        ``offset`` onwards."""
        if offset % 4 or size <= 0 or size % 4 or not 0 <= offset <= self.size - size:
            raise ValueError(f"a part of a mirrored window is whole words inside its "
                             f"{self.size} bytes, not {size} bytes at {offset:#x}")
        return RegisterMirror(size, within=(self, offset))

    @property
    def addresses(self) -> tuple[int, int]:
        """Where the words and the byte masks are (for the engine)."""
        return ctypes.addressof(self.data), ctypes.addressof(self.valid)

    def _lanes(self, offset: int, size: int) -> tuple[int, int, int]:
        if size not in (1, 2, 4) or offset < 0 or offset + size > self.size \
                or (offset & 3) + size > 4:
            raise ValueError(f"a mirrored register is 1, 2 or 4 bytes inside one word of the "
                             f"{self.size}-byte window, not {size} bytes at {offset:#x}")
        shift = (offset & 3) * 8
        return offset >> 2, shift, ((1 << (8 * size)) - 1) << shift

    def publish(self, offset: int, size: int, value: int) -> None:
        """The register of ``size`` bytes at ``offset`` reads ``value`` until further
        notice (the value is written before the register counts as published)."""
        word, shift, mask = self._lanes(offset, size)
        self.data[word] = (self.data[word] & ~mask) | ((value << shift) & mask)
        self.valid[word] |= _bytes(offset, size)

    def publish_words(self, values: dict[int, int], *, whole: bool = False) -> None:
        """Publish 32-bit registers: ``{offset: value}``, offsets 4-byte aligned (the
        fast form for a device that updates several registers at once); ``whole``:
        registers taken in 32-bit reads only (:data:`WHOLE_WORD`)."""
        data, valid = self.data, self.valid
        mask = 0xF | WHOLE_WORD if whole else 0xF
        for offset, value in values.items():
            if offset & 3 or not 0 <= offset < self.size:
                raise ValueError(f"publish_words: offset {offset:#x} is not 4-byte aligned "
                                 f"inside {self.size} bytes")
            data[offset >> 2] = value
            valid[offset >> 2] = mask

    def set_word(self, offset: int, value: int, mask: int) -> None:
        """The word at ``offset`` (4-byte aligned) holds ``value`` and exactly the bytes
        of ``mask`` (bit i: byte i, and :data:`WHOLE_WORD`) are published: bytes that stop
        being published stop before the value changes, the others start after."""
        if offset & 3 or not 0 <= offset < self.size or not 0 <= mask <= 0x1F:
            raise ValueError(f"set_word: offset {offset:#x} (4-byte aligned, inside "
                             f"{self.size} bytes) or byte mask {mask:#x} (0-0x1f) is wrong")
        word = offset >> 2
        self.valid[word] &= mask
        self.data[word] = value
        self.valid[word] = mask

    def hide(self, offset: int, size: int) -> None:
        """Reads of the register at ``offset`` go to the device again."""
        word = self._lanes(offset, size)[0]
        self.valid[word] &= ~_bytes(offset, size)

    def published(self, offset: int) -> bool:
        """Whether the byte at ``offset`` is answered from the table."""
        return bool(self.valid[offset >> 2] >> (offset & 3) & 1)


def _bytes(offset: int, size: int) -> int:
    """The byte-mask bits of ``size`` bytes at ``offset`` within their word."""
    return ((1 << size) - 1) << (offset & 3)

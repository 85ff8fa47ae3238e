"""A small ACPI Machine Language (AML) encoder: the terms the PC board's DSDT needs.

Encodings are the ACPI specification's (6.5, chapter 20, "ACPI Machine Language
(AML) Specification", and 6.4 "Resource Data Types for ACPI"); every function
returns the bytes of one term:

================================ ======================================================
:func:`pkg_length`               PkgLength: 1 byte for up to 63 bytes (bits 5:0), else
                                 a lead byte whose bits 7:6 count the 1..3 bytes that
                                 follow and whose bits 3:0 are the length's low nibble;
                                 the following bytes hold bits 4..11, 12..19, 20..27.
                                 The length counts the PkgLength bytes themselves.
:func:`name_seg`                 NameSeg: 4 characters, a lead ``A-Z`` or ``_``, then
                                 ``A-Z``, ``0-9`` or ``_``, padded with ``_``
:func:`name_string`              NameString: ``\\`` (RootChar 0x5C) or ``^``
                                 (ParentPrefixChar 0x5E) prefixes, then a NameSeg, a
                                 DualNamePrefix (0x2E) with two, a MultiNamePrefix
                                 (0x2F) with a count byte and more, or NullName (0x00)
:func:`integer`                  ZeroOp 0x00, OneOp 0x01, OnesOp 0xFF (all 64 bits
                                 set), else BytePrefix 0x0A, WordPrefix 0x0B,
                                 DWordPrefix 0x0C or QWordPrefix 0x0E and the value
                                 little endian, the shortest that holds it
:func:`string`                   StringPrefix 0x0D, ASCII 0x01..0x7F, NullChar 0x00
:func:`eisa_id`                  an EISA ID ("PNP0501") compressed into 32 bits as
                                 ``EisaId()`` does: three letters of 5 bits each ('A'
                                 = 1) big endian, then the four hex digits big endian,
                                 as a DWordConst
:func:`name`                     DefName: NameOp 0x08, NameString, the object
:func:`scope`                    DefScope: ScopeOp 0x10, PkgLength, NameString, terms
:func:`device`                   DefDevice: ExtOpPrefix 0x5B, DeviceOp 0x82,
                                 PkgLength, NameString, terms
:func:`package`                  DefPackage: PackageOp 0x12, PkgLength, NumElements
                                 (one byte, at most 255), the elements
:func:`buffer`                   DefBuffer: BufferOp 0x11, PkgLength, BufferSize (an
                                 integer term), the bytes
:func:`resource_template`        a Buffer of resource descriptors ending with the End
                                 Tag (0x79, checksum 0: "the checksum is not used")
:func:`io_port`                  I/O Port descriptor (small item 0x08, 7 bytes: 0x47,
                                 information (bit 0: 16-bit decode), minimum base,
                                 maximum base, alignment, length)
:func:`irq_no_flags`             IRQ descriptor without the information byte (small
                                 item 0x04, 2 bytes: 0x22, the 16-bit IRQ mask): edge
                                 triggered, active high, exclusive
:func:`memory32_fixed`           Fixed Location Memory Range Descriptor (large item
                                 0x06: 0x86, length 9 as 16 bits, information (bit 0:
                                 read-write), base, length, 32 bits each)
:func:`interrupt`                Extended Interrupt Descriptor (large item 0x09: 0x89,
                                 length 2 + 4·n as 16 bits, flags (bit 0 consumer, bit
                                 1 edge, bit 2 active low, bit 3 shared), n, then the
                                 n interrupt numbers, 32 bits each)
================================ ======================================================

Invalid arguments (a name that is not a NameSeg, a value out of range) raise
:class:`~pyaxvisor.errors.InvalidInput`.
"""

from __future__ import annotations

import re

from pyaxvisor.errors import InvalidInput

__all__ = [
    "buffer", "device", "eisa_id", "integer", "interrupt", "io_port", "irq_no_flags",
    "memory32_fixed", "name", "name_seg", "name_string", "package", "pkg_length",
    "resource_template", "scope", "string",
]

ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP = 0x08, 0x10, 0x11, 0x12
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR, PARENT_PREFIX_CHAR = 0x5C, 0x5E
DUAL_NAME_PREFIX, MULTI_NAME_PREFIX, NULL_NAME = 0x2E, 0x2F, 0x00
#: Small resource items: the tag byte is ``type << 3 | length``.
IO_PORT_TAG = 0x08 << 3 | 7
IRQ_NO_FLAGS_TAG = 0x04 << 3 | 2
END_TAG = 0x0F << 3 | 1
#: Large resource items: the tag byte is ``0x80 | type``, then a 16-bit length.
MEMORY32_FIXED_TAG = 0x86
EXTENDED_INTERRUPT_TAG = 0x89
#: Extended Interrupt Descriptor flags.
INT_CONSUMER, INT_EDGE, INT_ACTIVE_LOW, INT_SHARED = 1 << 0, 1 << 1, 1 << 2, 1 << 3
#: The largest PkgLength: 28 bits.
PKG_LENGTH_MAX = (1 << 28) - 1
ONES = (1 << 64) - 1

_NAME_SEG = re.compile(r"[A-Z_][A-Z0-9_]{0,3}")


def pkg_length(content: int) -> bytes:
    """The PkgLength of a package whose contents after the PkgLength are ``content``
    bytes long (the encoded length includes the PkgLength's own bytes)."""
    if not isinstance(content, int) or content < 0:
        raise InvalidInput(f"a package length must be a non-negative integer, not {content!r}")
    if content + 1 <= 0x3F:
        return bytes([content + 1])
    for extra in (1, 2, 3):
        total = content + 1 + extra
        if total < 1 << (4 + 8 * extra):
            lead = extra << 6 | (total & 0xF)
            return bytes([lead]) + (total >> 4).to_bytes(extra, "little")
    raise InvalidInput(f"a package of {content} bytes is longer than AML can encode "
                       f"({PKG_LENGTH_MAX} bytes with its PkgLength)")


def _package(op: bytes, body: bytes) -> bytes:
    return op + pkg_length(len(body)) + body


def name_seg(seg: str) -> bytes:
    """A NameSeg: ``seg`` of 1..4 characters, padded to 4 with ``_``."""
    if not isinstance(seg, str) or _NAME_SEG.fullmatch(seg) is None:
        raise InvalidInput(f"{seg!r} is not an AML name segment (1..4 characters: A-Z or _, "
                           "then A-Z, 0-9 or _)")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """A NameString from ASL spelling: ``"_HID"``, ``"\\\\_SB.COM1"``, ``"^^FOO"``,
    ``"\\\\"`` (the root itself)."""
    if not isinstance(path, str):
        raise InvalidInput(f"an AML name must be a string, not {path!r}")
    prefix = b""
    rest = path
    if rest.startswith("\\"):
        prefix, rest = bytes([ROOT_CHAR]), rest[1:]
    else:
        while rest.startswith("^"):
            prefix, rest = prefix + bytes([PARENT_PREFIX_CHAR]), rest[1:]
    segs = [name_seg(s) for s in rest.split(".")] if rest else []
    if not segs:
        if not prefix:
            raise InvalidInput("an empty AML name")
        return prefix + bytes([NULL_NAME])
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
    if len(segs) > 255:
        raise InvalidInput(f"AML name {path!r} has more than 255 segments")
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


def integer(value: int) -> bytes:
    """An integer constant (64-bit, the DSDT's revision 2 integers), shortest form."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= ONES:
        raise InvalidInput(f"an AML integer is 0..2**64-1, not {value!r}")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == ONES:
        return bytes([ONES_OP])
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4),
                         (QWORD_PREFIX, 8)):
        if value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise AssertionError("unreachable: the value fits in 64 bits")


def string(text: str) -> bytes:
    """A String constant: ASCII characters 0x01..0x7F."""
    if not isinstance(text, str) or any(not 0x01 <= ord(c) <= 0x7F for c in text):
        raise InvalidInput(f"an AML string holds ASCII characters 0x01..0x7F, not {text!r}")
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\0"


def eisa_id(text: str) -> bytes:
    """``EisaId("PNP0501")``: three upper-case letters and four hex digits, compressed
    and encoded as a DWordConst (see the module doc)."""
    if not isinstance(text, str) or re.fullmatch(r"[A-Z]{3}[0-9A-F]{4}", text) is None:
        raise InvalidInput(f"{text!r} is not an EISA ID (three letters A-Z and four "
                           "upper-case hex digits)")
    vendor = (ord(text[0]) - 0x40) << 10 | (ord(text[1]) - 0x40) << 5 | (ord(text[2]) - 0x40)
    return bytes([DWORD_PREFIX]) + vendor.to_bytes(2, "big") + int(text[3:], 16).to_bytes(2, "big")


def name(path: str, obj: bytes) -> bytes:
    """``Name(path, obj)``; ``obj`` is an encoded data object."""
    return bytes([NAME_OP]) + name_string(path) + obj


def scope(path: str, *terms: bytes) -> bytes:
    """``Scope(path) { terms }``."""
    return _package(bytes([SCOPE_OP]), name_string(path) + b"".join(terms))


def device(path: str, *terms: bytes) -> bytes:
    """``Device(path) { terms }``."""
    return _package(bytes([EXT_OP_PREFIX, DEVICE_OP]), name_string(path) + b"".join(terms))


def package(*elements: bytes) -> bytes:
    """``Package() { elements }`` (at most 255: NumElements is one byte)."""
    if len(elements) > 255:
        raise InvalidInput(f"a Package holds at most 255 elements, not {len(elements)}")
    return _package(bytes([PACKAGE_OP]), bytes([len(elements)]) + b"".join(elements))


def buffer(data: bytes) -> bytes:
    """``Buffer() { data }``: the size as an integer term, then the bytes."""
    return _package(bytes([BUFFER_OP]), integer(len(data)) + bytes(data))


def resource_template(*descriptors: bytes) -> bytes:
    """``ResourceTemplate() { descriptors }``: a Buffer ending with the End Tag."""
    return buffer(b"".join(descriptors) + bytes([END_TAG, 0]))


def io_port(minimum: int, maximum: int, alignment: int, length: int, *,
            decode16: bool = True) -> bytes:
    """``IO(Decode16, minimum, maximum, alignment, length)`` (``Decode10`` with
    ``decode16=False``)."""
    for what, value, top in (("minimum", minimum, 0xFFFF), ("maximum", maximum, 0xFFFF),
                             ("alignment", alignment, 0xFF), ("length", length, 0xFF)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise InvalidInput(f"IO descriptor {what} {value!r} is not in 0..{top:#x}")
    if minimum > maximum:
        raise InvalidInput(f"IO descriptor minimum {minimum:#x} is above maximum {maximum:#x}")
    return (bytes([IO_PORT_TAG, 1 if decode16 else 0]) + minimum.to_bytes(2, "little")
            + maximum.to_bytes(2, "little") + bytes([alignment, length]))


def irq_no_flags(*irqs: int) -> bytes:
    """``IRQNoFlags() { irqs }``: ISA IRQs 0..15."""
    mask = 0
    for irq in irqs:
        if isinstance(irq, bool) or not isinstance(irq, int) or not 0 <= irq <= 15:
            raise InvalidInput(f"an ISA IRQ is 0..15, not {irq!r}")
        mask |= 1 << irq
    return bytes([IRQ_NO_FLAGS_TAG]) + mask.to_bytes(2, "little")


def _u32(what: str, value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF_FFFF:
        raise InvalidInput(f"{what} {value!r} is not in 0..0xffffffff")
    return value.to_bytes(4, "little")


def memory32_fixed(base: int, length: int, *, writable: bool = True) -> bytes:
    """``Memory32Fixed(ReadWrite, base, length)`` (``ReadOnly`` with
    ``writable=False``): 32-bit base and length, the range inside 4 GiB."""
    if isinstance(base, int) and isinstance(length, int) and base + length > 1 << 32:
        raise InvalidInput(f"Memory32Fixed [{base:#x}, {base + length:#x}) ends past 4 GiB")
    body = bytes([1 if writable else 0]) + _u32("Memory32Fixed base", base) \
        + _u32("Memory32Fixed length", length)
    return bytes([MEMORY32_FIXED_TAG]) + len(body).to_bytes(2, "little") + body


def interrupt(*irqs: int, edge: bool = False, active_low: bool = False,
              shared: bool = False) -> bytes:
    """``Interrupt(ResourceConsumer, Level|Edge, ActiveHigh|ActiveLow,
    Exclusive|Shared) { irqs }``: 1..255 interrupt numbers (GSIs on x86), level
    triggered, active high and exclusive unless asked otherwise."""
    if not 1 <= len(irqs) <= 255:
        raise InvalidInput(f"an Interrupt descriptor lists 1..255 interrupts, not {len(irqs)}")
    flags = (INT_CONSUMER | (INT_EDGE if edge else 0) | (INT_ACTIVE_LOW if active_low else 0)
             | (INT_SHARED if shared else 0))
    body = bytes([flags, len(irqs)]) + b"".join(_u32("interrupt", irq) for irq in irqs)
    return bytes([EXTENDED_INTERRUPT_TAG]) + len(body).to_bytes(2, "little") + body

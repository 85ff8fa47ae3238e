"""The AArch64 EL1&0 stage-1 translation (VMSAv8-64) as a debugger walks it.

:func:`translate` turns a virtual address into the guest-physical (intermediate
physical) address the guest's own tables give it, reading the descriptors with
``read_u64(gpa)``. It follows SCTLR_EL1.M (off: the address is its own translation),
TCR_EL1's T0SZ/T1SZ, TG0/TG1 (4, 16 and 64 KiB granules), EPD0/EPD1 and TBI0/TBI1,
and TTBR0_EL1/TTBR1_EL1; table and block/page descriptors of 48-bit output addresses
(the 52-bit forms are not followed). Permissions are not checked: a debugger sees
every mapped page. An address without translation raises
:class:`~pyaxvisor.errors.NotFound`.
"""

from __future__ import annotations

from collections.abc import Callable

from pyaxvisor.errors import NotFound

_OA_MASK = (1 << 48) - 1
_TG0 = {0: 12, 1: 16, 2: 14}
_TG1 = {1: 14, 2: 12, 3: 16}


def translate(va: int, sctlr: int, tcr: int, ttbr0: int, ttbr1: int,
              read_u64: Callable[[int], int]) -> int:
    if not sctlr & 1:
        return va
    upper = (va >> 55) & 1
    if upper:
        tsz, granule, epd, tbi, ttbr = ((tcr >> 16) & 63, _TG1.get((tcr >> 30) & 3, 12),
                                        (tcr >> 23) & 1, (tcr >> 38) & 1, ttbr1)
    else:
        tsz, granule, epd, tbi, ttbr = (tcr & 63, _TG0.get((tcr >> 14) & 3, 12),
                                        (tcr >> 7) & 1, (tcr >> 37) & 1, ttbr0)
    va_bits = 64 - max(tsz, 16)
    top_bits = (56 if tbi else 64) - va_bits
    top = (va >> va_bits) & ((1 << top_bits) - 1)
    if epd or top != (((1 << top_bits) - 1) if upper else 0):
        raise NotFound(f"virtual address {va:#x} is outside the translated ranges")
    stride = granule - 3
    levels = -(-(va_bits - granule) // stride)
    table = ttbr & _OA_MASK & ~1
    for level in range(levels):
        shift = granule + stride * (levels - 1 - level)
        bits = min(stride, va_bits - shift)
        index = (va >> shift) & ((1 << bits) - 1)
        desc = read_u64(table + index * 8)
        if not desc & 1:
            raise NotFound(f"virtual address {va:#x} has no translation")
        last = level == levels - 1
        if last or not desc & 2:  # a page, or a block
            if last and not desc & 2:
                raise NotFound(f"virtual address {va:#x} has no translation")
            size = 1 << shift
            return (desc & _OA_MASK & ~(size - 1)) | (va & (size - 1))
        table = desc & _OA_MASK & ~((1 << granule) - 1)
    raise NotFound(f"virtual address {va:#x} has no translation")

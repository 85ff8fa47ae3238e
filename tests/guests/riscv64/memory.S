/* Guest RAM changed by the host while the guest runs: a store to a page made
 * read-only after a load from it, and a load from a region that may be removed. */
.include "sbi.inc"
.equ RO, 0x80040000
.equ EXTRA, 0x90000000
.globl _start, after_store, after_extra
_start:
    li t0, RO
    ld a0, 0(t0)                    /* read first: the translation is cached */
    sd a0, 8(t0)
after_store:
    li t1, EXTRA
    ld a1, 0(t1)
after_extra:
    li t6, RESULTS
    sd a0, 0(t6)
    sd a1, 8(t6)
    SBI EXT_PYAX, 0
    j _start

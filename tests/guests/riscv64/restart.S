/* Records its entry registers and sstatus, then stops itself (HSM hart_stop). */
.include "sbi.inc"
.globl _start
_start:
    SAVE 0x00
    csrr t0, sstatus
    li t6, RESULTS
    sd t0, 0x10(t6)
    csrr t0, satp
    sd t0, 0x18(t6)
    csrsi sstatus, 2
    SBI EXT_HSM, 1
hang:
    j hang

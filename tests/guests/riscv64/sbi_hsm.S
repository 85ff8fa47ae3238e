/* SBI HSM: hart status, start, suspend (retentive and not), stop. */
.include "sbi.inc"
.globl _start, secondary, resume, after_suspend
_start:
    li a0, 0
    SBI EXT_HSM, 2                  /* hart_get_status(0): this hart */
    SAVE 0x00
    li a0, 1
    SBI EXT_HSM, 2                  /* hart_get_status(1): stopped */
    SAVE 0x10
    li a0, 7
    SBI EXT_HSM, 2                  /* no hart 7 */
    SAVE 0x20
    li a0, 1
    la a1, secondary
    li a2, 0xC0FFEE
    SBI EXT_HSM, 0                  /* hart_start(1): the VM's CpuUp */
    SAVE 0x30
    li a0, 1
    li a1, 0x1000                   /* not RAM */
    li a2, 0
    SBI EXT_HSM, 0
    SAVE 0x40
    li a0, 9
    la a1, secondary
    SBI EXT_HSM, 0                  /* no hart 9 */
    SAVE 0x50
    li a0, 0                        /* default retentive suspend: Halt */
    li a1, 0x1111
    SBI EXT_HSM, 3
after_suspend:
    SAVE 0x60
    li a0, 0x10000000               /* platform-specific: not implemented */
    SBI EXT_HSM, 3
    SAVE 0x70
    li a0, 0x80000000               /* default non-retentive suspend */
    li a1, 0x1000                   /* resume address not in RAM */
    SBI EXT_HSM, 3
    SAVE 0xa0
    csrsi sstatus, 2                /* SIE on: the resumed hart must find it off */
    li a0, 0x80000000
    la a1, resume
    li a2, 0xFEED
    SBI EXT_HSM, 3
    j hang                          /* never: the hart resumes at resume */
resume:
    SAVE 0x80
    csrr t0, sstatus
    li t6, RESULTS + 0x90
    sd t0, 0(t6)
    SBI EXT_HSM, 1                  /* hart_stop: CpuDown */
hang:
    j hang
secondary:
    j secondary

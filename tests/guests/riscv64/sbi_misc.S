/* SBI IPI, RFENCE and SRST. */
.include "sbi.inc"
.globl _start
_start:
    li a0, 0x3
    li a1, 0
    SBI EXT_IPI, 0                  /* harts 0 and 1 */
    SAVE 0x00
    li a0, 0
    li a1, -1
    SBI EXT_IPI, 0                  /* every hart */
    SAVE 0x10
    li a0, 1
    li a1, 5
    SBI EXT_IPI, 0                  /* no hart 5: INVALID_PARAM, no exit */
    SAVE 0x20
    li a0, 0x1
    li a1, 0
    SBI EXT_RFENCE, 0               /* remote_fence_i(this hart) */
    SAVE 0x30
    li a0, 0x1
    li a1, 1
    li a2, 0x1000
    li a3, 0x2000
    SBI EXT_RFENCE, 1               /* remote_sfence_vma(hart 1) */
    SAVE 0x40
    li a0, 0
    li a1, -1
    li a4, 7
    SBI EXT_RFENCE, 2               /* remote_sfence_vma_asid(every hart) */
    SAVE 0x50
    li a0, 0x10
    li a1, 0
    SBI EXT_RFENCE, 1               /* no hart 4 */
    SAVE 0x60
    SBI EXT_RFENCE, 3               /* hfence.gvma_vmid: no H extension */
    SAVE 0x70
    SHUTDOWN                        /* SystemDown(reset=False) */
    li a0, 1
    li a1, 0
    SBI EXT_SRST, 0                 /* cold reboot */
    li a0, 2
    li a1, 1
    SBI EXT_SRST, 0                 /* warm reboot, system failure */
    li a0, 3
    li a1, 0
    SBI EXT_SRST, 0                 /* reserved type */
    SAVE 0x80
    li a0, 0
    li a1, 7
    SBI EXT_SRST, 0                 /* reserved reason */
    SAVE 0x90
    SBI EXT_SRST, 1                 /* no such function */
    SAVE 0xa0
    SBI EXT_PYAX, 1                 /* done */
hang:
    j hang

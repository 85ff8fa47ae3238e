/* Hostile: SBI calls with the extension and function IDs and arguments the test
 * wrote at BUF: a count, then per call eight words: EID (a7), FID (a6), a0..a5.
 * RESULTS + 0: calls that returned, + 8: how many returned SBI_ERR_NOT_SUPPORTED
 * (-2) in a0, + 0x100 + 8 * i: a0 after call i. Then an SRST shutdown. */
.include "sbi.inc"
.globl _start
_start:
    li s0, BUF
    ld s1, 0(s0)                    /* count */
    addi s0, s0, 8
    li s2, 0                        /* calls made */
    li s3, 0                        /* NOT_SUPPORTED answers */
    li s4, RESULTS
    li s5, -2
1:  beq s2, s1, 3f
    ld a7, 0(s0)
    ld a6, 8(s0)
    ld a0, 16(s0)
    ld a1, 24(s0)
    ld a2, 32(s0)
    ld a3, 40(s0)
    ld a4, 48(s0)
    ld a5, 56(s0)
    addi s0, s0, 64
    ecall
    slli t0, s2, 3
    add t0, t0, s4
    sd a0, 0x100(t0)
    bne a0, s5, 2f
    addi s3, s3, 1
2:  addi s2, s2, 1
    sd s2, 0(s4)
    sd s3, 8(s4)
    j 1b
3:  SHUTDOWN

/* Self-modifying code with satp = 0 (every page executable, so every page a store
 * reaches may hold translated code), RISC-V's version of
 * tests/guests/aarch64/self_modifying.S: code stored into a page that never ran and
 * then executed; the same instruction rewritten 64 times after it ran (each time
 * followed by fence.i, as the architecture requires), once with byte stores; data
 * stored into pages holding code that ran, read back, and that code still right.
 * Prints "self-modifying code: ok" or "... FAIL <step>" (SBI DBCN), then shuts down. */
.include "sbi.inc"
.equ LI_A0, 0x00000513          /* addi a0, zero, imm is LI_A0 | imm << 20 */
.equ RET, 0x00008067            /* jalr zero, 0(ra) */
.equ OK_LEN, 24                 /* the messages' lengths */
.equ FAIL_LEN, 28
.globl _start
_start:
    la s1, codepage             /* a page no code has run from yet */

    /* 1. store before first execution: data first, then `li a0, 1; ret` */
    li s0, 1
    li t0, 0x800
    li t2, 0x1000
1:  add t1, s1, t0
    sd t0, 0(t1)
    addi t0, t0, 8
    blt t0, t2, 1b
    li t0, LI_A0 | (1 << 20)
    sw t0, 0(s1)
    li t0, RET
    sw t0, 4(s1)
    fence.i
    li a0, 0
    jalr s1
    li t0, 1
    bne a0, t0, fail

    /* 2. rewrite after execution: li a0, i for i = 2 .. 65 */
    li s0, 2
    li s2, 2
2:  slli t0, s2, 20
    li t1, LI_A0
    or t0, t0, t1
    sw t0, 0(s1)
    fence.i
    li a0, 0
    jalr s1
    bne a0, s2, fail
    addi s2, s2, 1
    li t0, 66
    blt s2, t0, 2b
    /* ... and once with byte stores: li a0, 0x77 */
    li s0, 3
    li t0, LI_A0 | (0x77 << 20)
    sb t0, 0(s1)
    srli t0, t0, 8
    sb t0, 1(s1)
    srli t0, t0, 8
    sb t0, 2(s1)
    srli t0, t0, 8
    sb t0, 3(s1)
    fence.i
    li a0, 0
    jalr s1
    li t0, 0x77
    bne a0, t0, fail

    /* 3. data into the second half of the rewritten page, read back */
    li s0, 4
    li s3, 0x5a5a5a5a5a5a
    li t0, 0x800
    li t2, 0x1000
3:  add t1, s1, t0
    xor t3, t0, s3
    sd t3, 0(t1)
    addi t0, t0, 8
    blt t0, t2, 3b
    li t0, 0x800
4:  add t1, s1, t0
    ld t3, 0(t1)
    xor t4, t0, s3
    bne t3, t4, fail
    addi t0, t0, 8
    blt t0, t2, 4b
    li s0, 5
    li a0, 0
    jalr s1                     /* the code on that page is unchanged */
    li t0, 0x77
    bne a0, t0, fail
    /* ... and this page, the one running now */
    li s0, 6
    la s4, scratch
    li t0, 0
    li t2, 256
5:  add t1, s4, t0
    addi t3, t0, 0x123
    sd t3, 0(t1)
    ld t4, 0(t1)
    bne t3, t4, fail
    addi t0, t0, 8
    blt t0, t2, 5b

    la a1, ok_msg
    li a0, OK_LEN
    j print
fail:
    la a1, fail_msg
    addi s0, s0, '0'
    sb s0, FAIL_LEN - 2(a1)     /* the step, one digit */
    li a0, FAIL_LEN
print:
    li a2, 0
    SBI EXT_DBCN, 0
    li a0, 0
    li a1, 0
    SBI EXT_SRST, 0
1:  j 1b

ok_msg: .ascii "self-modifying code: ok\n"
fail_msg: .ascii "self-modifying code: FAIL ?\n"
.balign 8
scratch: .space 256
.balign 4096
codepage: .space 4096

/* Hostile: an illegal instruction with no trap vector set up. a1 at entry picks
 * stvec: 0 leaves it as the hart was reset, 1 points it where there is no RAM.
 * Nothing after the illegal instruction runs on a correct CPU: it would store
 * 0xd0e at RESULTS. */
.include "sbi.inc"
.globl _start, illegal
_start:
    beqz a1, illegal
    li t0, 0x70000000
    csrw stvec, t0
illegal:
    .word 0                         /* all zeros: defined to be illegal */
    li t0, 0xd0e
    STORE t0, 0
1:  j 1b

/* Counts forever: x10 and RESULTS + 0 hold the count. */
.include "sbi.inc"
.globl _start
_start:
    li t6, RESULTS
    li a0, 0
1:  addi a0, a0, 1
    sd a0, 0(t6)
    j 1b

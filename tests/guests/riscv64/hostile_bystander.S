/* The well-behaved VM beside each hostile one: prints "bystander ok" on the UART,
 * counts to COUNT in memory (RESULTS + 0) and shuts down (SRST). */
.include "sbi.inc"
.equ UART, 0x10000000
.equ COUNT, 100000
.globl _start
_start:
    li s0, UART
    la s1, msg
1:  lbu t0, 0(s1)
    beqz t0, 2f
    sb t0, 0(s0)
    addi s1, s1, 1
    j 1b
2:  li t1, COUNT
    li t2, 0
    li t6, RESULTS
3:  addi t2, t2, 1
    sd t2, 0(t6)
    bne t2, t1, 3b
    SHUTDOWN
msg:
    .asciz "bystander ok\n"

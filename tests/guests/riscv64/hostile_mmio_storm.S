/* Hostile: a storm of device accesses. COUNT 1-byte writes of '.' to the UART's THR
 * and COUNT reads of its LSR, then "\n" and an SRST shutdown. RESULTS + 0: the
 * writes done, + 8: the OR of every LSR value read. */
.include "sbi.inc"
.equ UART, 0x10000000
.equ COUNT, 4000
.globl _start
_start:
    li s0, UART
    li s1, COUNT
    li s2, 0
    li s3, 0
    li t1, '.'
1:  sb t1, 0(s0)
    lbu t2, 5(s0)
    or s3, s3, t2
    addi s2, s2, 1
    bne s2, s1, 1b
    li t1, '\n'
    sb t1, 0(s0)
    STORE s2, 0
    STORE s3, 8
    SHUTDOWN

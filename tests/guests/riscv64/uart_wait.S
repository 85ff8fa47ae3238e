/* Prints "rv: waiting", waits for one byte on the UART (polling LSR.DR), prints
 * "rv: got <byte>" and shuts down: a guest that runs until its input comes (for the
 * tests of several VMs in one process). */
.include "sbi.inc"
.equ UART, 0x10000000
.include "uart.inc"
.globl _start
_start:
    la a0, waiting
    call puts
    li t0, UART
1:  lbu t1, 5(t0)                       /* LSR.DR */
    andi t1, t1, 1
    beqz t1, 1b
    lbu s1, 0(t0)                       /* RBR: takes the byte */
    la a0, got
    call puts
    mv a0, s1
    call putc
    call newline
    SHUTDOWN
    UART_ROUTINES
waiting:
    .asciz "rv: waiting\n"
got:
    .asciz "rv: got "

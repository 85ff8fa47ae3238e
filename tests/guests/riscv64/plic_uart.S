/* The PLIC and the UART on the riscv64 virt board: the guest enables the UART's
 * receive interrupt (PLIC source 10) for hart 0's S-mode context, prints "ready",
 * waits in wfi; the interrupt handler claims the source, reads the byte the host
 * sent, completes, claims once more (nothing pending: 0) and prints
 * <'A' + source><byte><'0' + second claim>, then shuts down through SBI SRST. */
.include "sbi.inc"
.equ PLIC, 0x0c000000
.equ PLIC_CTX1_ENABLE, PLIC + 0x2000 + 0x80
.equ PLIC_CTX1, PLIC + 0x200000 + 0x1000
.equ UART, 0x10000000
.globl _start
_start:
    la t0, trap
    csrw stvec, t0
    li t0, PLIC
    li t1, 1
    sw t1, 4 * 10(t0)               /* priority of source 10 */
    li t0, PLIC_CTX1_ENABLE
    li t1, 1 << 10
    sw t1, 0(t0)                    /* enable source 10 for context 1 */
    li t0, PLIC_CTX1
    sw zero, 0(t0)                  /* threshold 0 */
    li t0, UART
    li t1, 1
    sb t1, 1(t0)                    /* IER: received data available */
    la a0, ready
    call puts
    li t0, 0x200                    /* sie.SEIE */
    csrw sie, t0
    csrsi sstatus, 2                /* sstatus.SIE */
wait:
    wfi
    j wait

puts:                               /* a0: NUL-terminated string, to the UART */
    li t0, UART
1:  lbu t1, 0(a0)
    beqz t1, 2f
    sb t1, 0(t0)
    addi a0, a0, 1
    j 1b
2:  ret

    .align 2
trap:
    li t0, PLIC_CTX1
    lw s0, 4(t0)                    /* claim */
    li t1, UART
    lbu s1, 0(t1)                   /* the byte the host sent */
    sw s0, 4(t0)                    /* complete */
    lw s2, 4(t0)                    /* claim again: nothing pending */
    addi t2, s0, 'A'
    sb t2, 0(t1)
    sb s1, 0(t1)
    addi t2, s2, '0'
    sb t2, 0(t1)
    li t2, '\n'
    sb t2, 0(t1)
    SHUTDOWN
hang:
    j hang

ready:
    .asciz "ready\n"

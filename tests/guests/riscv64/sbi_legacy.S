/* The legacy SBI extensions (EIDs 0x00..0x08): a0 is the only result, a1 is kept. */
.include "sbi.inc"
.macro LEGACY eid
    li a7, \eid
    li a6, 0x77                     /* ignored by legacy calls */
    ecall
.endm
.globl _start
_start:
    li a1, 0x1111
    li a0, 'H'
    LEGACY 0x01                     /* console_putchar */
    SAVE 0x00
    li a0, 'i'
    LEGACY 0x01
    LEGACY 0x02                     /* console_getchar: first input byte */
    SAVE 0x10
    LEGACY 0x02                     /* second: none left, -1 */
    SAVE 0x20
    li a0, 0x123456789
    LEGACY 0x00                     /* set_timer */
    SAVE 0x30
    csrsi sip, 2                    /* the guest raises SSIP itself */
    LEGACY 0x03                     /* clear_ipi: it was pending */
    SAVE 0x40
    LEGACY 0x03                     /* clear_ipi: nothing pending */
    SAVE 0x50
    la a0, mask_harts_0_1
    LEGACY 0x04                     /* send_ipi(&mask) */
    SAVE 0x60
    li a0, 0
    LEGACY 0x05                     /* remote_fence_i(NULL): every hart */
    SAVE 0x70
    la a0, mask_hart_1
    li a1, 0x1000
    li a2, 0x2000
    LEGACY 0x06                     /* remote_sfence_vma */
    SAVE 0x80
    la a0, mask_hart_2
    LEGACY 0x07                     /* remote_sfence_vma_asid: no hart 2 */
    SAVE 0x90
    li a0, 0x0BAD0000               /* a mask pointer outside RAM */
    LEGACY 0x04
    SAVE 0xa0
    LEGACY 0x09                     /* not a legacy function */
    SAVE 0xb0
    LEGACY 0x08                     /* shutdown */
hang:
    j hang

    .align 3
mask_harts_0_1: .dword 0x3
mask_hart_1:    .dword 0x2
mask_hart_2:    .dword 0x4

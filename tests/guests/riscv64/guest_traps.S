/* Exceptions the guest handles itself, taken at its stvec without leaving the vCPU:
 * an illegal instruction, ebreak, ecall from U-mode, a page fault, a misaligned AMO.
 * The handler logs (scause, sepc, stval) to RESULTS + 0x100 + 0x18 * n. */
.include "sbi.inc"
.equ PT, 0x80030000
.globl _start, illegal, bkpt, user, pagefault, misaligned
_start:
    la t0, handler
    csrw stvec, t0
    li s2, 0                        /* log index */
illegal:
    csrr t0, mscratch               /* an M-mode CSR: illegal in S-mode */
bkpt:
    ebreak
    la t0, user
    csrw sepc, t0
    li t0, 0x100                    /* sstatus.SPP = U */
    csrc sstatus, t0
    sret                            /* to U-mode */
user:
    ecall                           /* from U: the guest's own */
back_in_s:
    li t0, PT                       /* Sv39: only RAM (1 GiB page), nothing at 0x4000_0000 */
    li t1, 0x200000CF
    sd t1, 16(t0)
    li t0, (8 << 60) | (PT >> 12)
    csrw satp, t0
    sfence.vma
    li t0, 0x40001234
pagefault:
    ld a0, 0(t0)
    csrw satp, zero
    sfence.vma
    li t0, RESULTS + 1
misaligned:
    amoadd.w a0, a1, (t0)
    li a0, 0
    mv a0, s2
    SBI EXT_PYAX, 7                 /* done: a0 = how many the handler saw */
hang:
    j hang

    .align 2
handler:
    li t6, RESULTS + 0x100
    li t5, 0x18
    mul t5, t5, s2
    add t6, t6, t5
    csrr t0, scause
    sd t0, 0(t6)
    csrr t1, sepc
    sd t1, 8(t6)
    csrr t2, stval
    sd t2, 16(t6)
    addi s2, s2, 1
    li t3, 8
    beq t0, t3, from_user
    lhu t4, 0(t1)                   /* step over the instruction: 2 or 4 bytes */
    andi t4, t4, 3
    li t3, 3
    addi t1, t1, 2
    bne t4, t3, 1f
    addi t1, t1, 2
1:  csrw sepc, t1
    sret
from_user:
    li t0, 0x100                    /* back to S-mode after the user ecall */
    csrs sstatus, t0
    la t0, back_in_s
    csrw sepc, t0
    sret

/* Accesses where the virt board has neither RAM nor a device: a load at NOWHERE, the
 * same load again, a store and an AMO there, an instruction fetch just past the end
 * of RAM (the tests give 64 MiB: RAM ends at 0x8400_0000), all in S-mode with
 * sstatus.SIE set (sie is 0: no interrupt is taken), then a load from U-mode. On
 * QEMU's virt board each is an access fault taken at stvec. The handler prints
 * "fault scause=<scause> stval=<stval> sstatus=<its SPP, SPIE and SIE>" (16 hex digits
 * each) on the UART and goes on after the faulting instruction (at ra for the fetch).
 * The U-mode code ends with an ecall, which the handler answers with a shutdown.
 * It starts with a RISC-V Linux Image header (boot-image-header.rst), so that
 * `-M virt -kernel` picks riscv64 and loads it at RAM + 2 MiB, where it is linked. */
.include "sbi.inc"
.option norvc                       /* every instruction 4 bytes: sepc + 4 skips one */
.equ NOWHERE, 0x70000010
.equ RAM_END, 0x84000000
.equ UART, 0x10000000
.globl _start
_start:
    j entry                         /* code0: past the header */
    .word 0                         /* code1 */
    .dword 0x200000                 /* text_offset */
    .dword 0x10000                  /* image_size: the image and room to spare */
    .dword 0                        /* flags: little-endian */
    .word 2                         /* version 0.2 */
    .word 0
    .dword 0
    .ascii "RISCV\0\0\0"            /* magic (deprecated) */
    .ascii "RSC\x05"                /* magic2 */
    .word 0
entry:
    la t0, trap
    csrw stvec, t0
    csrsi sstatus, 2                /* SIE */
    li s0, NOWHERE
    lw t1, 0(s0)
    lw t1, 0(s0)
    sd t1, 8(s0)
    addi t2, s0, 0x10
    amoadd.d t1, t1, (t2)
    li t0, RAM_END
    jalr t0
    li t0, 0x100                    /* sstatus.SPP = U */
    csrc sstatus, t0
    la t0, user
    csrw sepc, t0
    sret
user:
    lw t1, 0x20(s0)
    ecall

    .balign 4
trap:
    mv s1, ra                       /* the fetch's return address */
    csrr t0, scause
    li t1, 8
    bne t0, t1, 1f
    SHUTDOWN                        /* the ecall from U-mode */
1:  la a0, scause_text
    call puts
    csrr a0, scause
    call puthex
    la a0, stval_text
    call puts
    csrr a0, stval
    call puthex
    la a0, sstatus_text
    call puts
    csrr a0, sstatus
    andi a0, a0, 0x122              /* SPP, SPIE, SIE */
    call puthex
    li a0, 10                       /* newline */
    call putc
    mv ra, s1
    csrr t0, scause
    li t1, 1                        /* instruction access fault: back to the caller */
    bne t0, t1, 1f
    csrw sepc, ra
    sret
1:  csrr t0, sepc                   /* a load or store: skip it */
    addi t0, t0, 4
    csrw sepc, t0
    sret

putc:                               /* a0: a byte, to the UART */
    li t0, UART
    sb a0, 0(t0)
    ret

puts:                               /* a0: NUL-terminated string, to the UART */
    li t0, UART
1:  lbu t1, 0(a0)
    beqz t1, 2f
    sb t1, 0(t0)
    addi a0, a0, 1
    j 1b
2:  ret

puthex:                             /* a0: 16 hex digits, to the UART */
    li t0, UART
    li t2, 60
1:  srl t1, a0, t2
    andi t1, t1, 0xf
    addi t1, t1, 48                 /* '0' */
    li t3, 57                       /* '9' */
    ble t1, t3, 2f
    addi t1, t1, 39                 /* to 'a'..'f' */
2:  sb t1, 0(t0)
    addi t2, t2, -4
    bgez t2, 1b
    ret

scause_text: .asciz "fault scause="
stval_text: .asciz " stval="
sstatus_text: .asciz " sstatus="

/* Hostile: an undefined instruction (ud2) with no exception handlers. ESI at entry
 * picks the IDT: 0 the one the VM started with, 1 a full-size IDT where there is no
 * RAM. Nothing after the ud2 runs on a correct CPU: it would store 0xd0e at RESULTS. */
    .code32
    .equ RESULTS, 0x200000
    .globl _start, undefined
_start:
    test %esi, %esi
    jz undefined
    lidt wild_idt
undefined:
    ud2
    movl $0xd0e, RESULTS
1:  hlt
    jmp 1b
wild_idt:
    .word 0x7ff
    .long 0xd0000000

/* An exception (#UD) with an empty IDT: #GP, then a double fault, then a triple
 * fault (shutdown). A fault, not a soft interrupt such as int3, which KVM on a host
 * without NRIPS may have to emulate. */
    .code32
    .globl _start
_start:
    lidt idt
    ud2
1:  hlt
    jmp 1b
idt:
    .word 0
    .long 0

/* Hostile: a triple fault. An empty IDT, then a data segment selector beyond the
 * GDT: #GP, which cannot be delivered (#DF), which cannot either: shutdown. */
    .code32
    .equ RESULTS, 0x200000
    .globl _start
_start:
    lidt empty_idt
    mov $0xfff8, %ax
    mov %ax, %ds
    movl $0xd0e, RESULTS
1:  hlt
    jmp 1b
empty_idt:
    .word 0
    .long 0

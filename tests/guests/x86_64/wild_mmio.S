/* Reads guest physical 0xD0000000: no RAM and no device there. */
    .code32
    .globl _start
_start:
    mov 0xd0000000, %eax
1:  hlt
    jmp 1b

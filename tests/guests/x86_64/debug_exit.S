/* Reports 0x21 through isa-debug-exit at port 0xf4 (a 4-byte OUT), then halts. */
    .code32
    .globl _start
_start:
    mov $0x21, %eax
    out %eax, $0xf4
1:  hlt
    jmp 1b

/* Hostile: an access where there is no RAM and no device (WILD). ESI at entry picks
 * it: 0 a 4-byte load, 1 a 4-byte store, 2 an instruction fetch (a jump there).
 * Falling through stores 0xd0e at RESULTS and powers off. */
    .code32
    .equ RESULTS, 0x200000
    .equ WILD, 0xd0000000
    .globl _start
_start:
    cmp $1, %esi
    je store
    cmp $2, %esi
    je fetch
    mov WILD + 0x10, %eax
    jmp after
store:
    movl $0x5a, WILD + 0x18
    jmp after
fetch:
    mov $WILD, %eax
    jmp *%eax
after:
    movl $0xd0e, RESULTS
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
1:  hlt
    jmp 1b

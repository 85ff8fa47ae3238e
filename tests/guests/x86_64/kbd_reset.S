/* Resets the machine the PC way: command 0xFE (pulse the reset line) to the i8042. */
    .code32
    .globl _start
_start:
1:  in $0x64, %al              /* wait until the input buffer is empty */
    test $2, %al
    jnz 1b
    mov $0xfe, %al
    out %al, $0x64
2:  hlt
    jmp 2b

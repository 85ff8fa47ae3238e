/* Port I/O through the x86 VM's bus, from 32-bit protected mode (loaded raw at
 * 1 MiB). Prints "ports ok" on COM1, stores what an unclaimed port (0x80) and
 * the UART's scratch register read back at `results`, then powers off through
 * port 0x604 (ACPI-style, 0x2000 = SLP_EN with SLP_TYP 0). */
    .code32
    .globl _start
_start:
    mov $0x3ff, %dx            /* COM1 scratch register */
    mov $0x5a, %al
    out %al, %dx
    in %dx, %al
    mov %al, results + 4
    mov $0x80, %dx             /* nothing there: reads all ones */
    in %dx, %al
    mov %al, results
    mov $0x80, %dx
    in %dx, %ax
    mov %ax, results + 2
    mov $msg, %esi
1:  lodsb
    test %al, %al
    jz 2f
    mov $0x3f8, %dx
    out %al, %dx
    jmp 1b
2:  mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
3:  hlt
    jmp 3b
msg:
    .asciz "ports ok\n"
    .balign 8
results:
    .long 0, 0

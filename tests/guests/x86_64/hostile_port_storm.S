/* Hostile: a storm of port I/O. COUNT times: '.' to COM1's THR, a read of its LSR
 * and a write to port 0x80, where nothing is; then the message below with one
 * `rep outsb` to COM1 and power-off through port 0x604. RESULTS + 0: rounds done,
 * + 4: the OR of every LSR value read. */
    .code32
    .equ RESULTS, 0x200000
    .equ COUNT, 4000
    .globl _start
_start:
    xor %ecx, %ecx
    xor %ebx, %ebx
1:  mov $0x3f8, %dx
    mov $'.', %al
    out %al, %dx
    mov $0x3fd, %dx
    in %dx, %al
    movzbl %al, %eax
    or %eax, %ebx
    mov $0x80, %dx
    out %al, %dx
    inc %ecx
    mov %ecx, RESULTS
    cmp $COUNT, %ecx
    jne 1b
    mov %ebx, RESULTS + 4
    mov $msg, %esi
    mov $(msg_end - msg), %ecx
    mov $0x3f8, %dx
    cld
    rep outsb
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
2:  hlt
    jmp 2b
msg:
    .ascii "\nstorm over\n"
msg_end:

/* Hostile: a storm of MMIO to the in-kernel interrupt controllers. COUNT times: a
 * read of the local APIC's version register and a select-and-read of the IOAPIC's
 * version register; then power-off through port 0x604. RESULTS + 0: rounds done,
 * + 4: the OR of the local APIC versions read, + 8: the OR of the IOAPIC's. */
    .code32
    .equ RESULTS, 0x200000
    .equ COUNT, 20000
    .equ LAPIC, 0xfee00000
    .equ IOAPIC, 0xfec00000
    .globl _start
_start:
    xor %ecx, %ecx
    xor %ebx, %ebx
    xor %edi, %edi
1:  mov LAPIC + 0x30, %eax
    or %eax, %ebx
    movl $1, IOAPIC
    mov IOAPIC + 0x10, %eax
    or %eax, %edi
    inc %ecx
    cmp $COUNT, %ecx
    jne 1b
    mov %ecx, RESULTS
    mov %ebx, RESULTS + 4
    mov %edi, RESULTS + 8
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
2:  hlt
    jmp 2b

/* Hostile: INIT/SIPI abuse on a 2-CPU VM through the local APIC's ICR. First a
 * SIPI, an INIT and a SIPI to APIC ID 7 (no such CPU) and a SIPI to itself (a
 * running CPU ignores it); then ROUNDS times INIT, SIPI and a second SIPI (ignored:
 * the AP no longer waits for one) to APIC ID 1, waiting each time for the AP's
 * real-mode entry (copied to TRAMP, vector 8) to count its start at COUNTER; then
 * once more with the all-excluding-self shorthand. RESULTS + 0: the starts the BSP
 * saw. Then power-off through port 0x604. */
    .code32
    .equ RESULTS, 0x200000
    .equ LAPIC, 0xfee00000
    .equ COUNTER, 0x3000
    .equ TRAMP, 0x8000
    .equ ROUNDS, 10
    .equ INIT, 0x4500
    .equ SIPI, 0x4600 + (TRAMP >> 12)
    .equ ALL_BUT_SELF, 0xc0000
    .globl _start, ap_entry, ap_entry_end
    .macro SEND dest, command
    movl $(\dest << 24), LAPIC + 0x310
    movl $\command, LAPIC + 0x300
99: testl $0x1000, LAPIC + 0x300      /* delivery status: pending */
    jnz 99b
    .endm
_start:
    mov $ap_entry, %esi
    mov $TRAMP, %edi
    mov $(ap_entry_end - ap_entry), %ecx
    cld
    rep movsb
    movl $0, COUNTER
    movl $0x1ff, LAPIC + 0xf0          /* SVR: software-enable the local APIC */
    SEND 7, SIPI
    SEND 7, INIT
    SEND 7, SIPI
    SEND 0, SIPI
    xor %ebx, %ebx
1:  SEND 1, INIT
    SEND 1, SIPI
    SEND 1, SIPI
    inc %ebx
2:  pause
    cmp COUNTER, %ebx                 /* until COUNTER >= EBX */
    ja 2b
    cmp $ROUNDS, %ebx
    jne 1b
    SEND 0, ALL_BUT_SELF + INIT
    SEND 0, ALL_BUT_SELF + SIPI
    inc %ebx
3:  pause
    cmp COUNTER, %ebx
    ja 3b
    mov COUNTER, %eax
    mov %eax, RESULTS
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
4:  hlt
    jmp 4b

    .code16
ap_entry:
    xor %ax, %ax
    mov %ax, %ds
    lock incl COUNTER
    cli
5:  hlt
    jmp 5b
ap_entry_end:

/* Hostile: hypercalls (vmcall on Intel, vmmcall elsewhere, by CPUID's vendor) with
 * the numbers and arguments the test wrote at TABLE: a count, then per call five
 * words: EAX (the number), EBX, ECX, EDX, ESI. RESULTS + 0: calls that returned,
 * + 4: how many returned -KVM_ENOSYS (-1000), + 0x100 + 4 * i: EAX after call i.
 * Then power-off through port 0x604. */
    .code32
    .equ RESULTS, 0x200000
    .equ TABLE, 0x300000
    .globl _start, vmcall_insn, vmmcall_insn
_start:
    xor %eax, %eax
    cpuid
    xor %ebp, %ebp
    cmp $0x756e6547, %ebx            /* "Genu": GenuineIntel */
    sete %al
    movzbl %al, %ebp
    mov $TABLE + 4, %edi
    movl $0, RESULTS
    movl $0, RESULTS + 4
1:  mov RESULTS, %eax
    cmp TABLE, %eax
    je 4f
    mov (%edi), %eax
    mov 4(%edi), %ebx
    mov 8(%edi), %ecx
    mov 12(%edi), %edx
    mov 16(%edi), %esi
    add $20, %edi
    test %ebp, %ebp
    jz 2f
vmcall_insn:
    vmcall
    jmp 3f
2:
vmmcall_insn:
    vmmcall
3:  mov RESULTS, %ecx
    mov %eax, RESULTS + 0x100(,%ecx,4)
    cmp $-1000, %eax
    jne 5f
    incl RESULTS + 4
5:  incl RESULTS
    jmp 1b
4:  mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
6:  hlt
    jmp 6b

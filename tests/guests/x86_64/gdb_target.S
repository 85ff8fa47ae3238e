/* For the gdb stub's test: counts 1..5 into `counter` (a memory word), then reports
 * what is in %eax at `report` through isa-debug-exit at port 0xf4 and halts. */
    .code32
    .globl _start, loop, report, counter
_start:
    mov $counter, %ebx
    xor %eax, %eax
loop:
    inc %eax
    mov %eax, (%ebx)
    cmp $5, %eax
    jne loop
report:
    out %eax, $0xf4
1:  hlt
    jmp 1b

    .balign 8
counter:
    .long 0

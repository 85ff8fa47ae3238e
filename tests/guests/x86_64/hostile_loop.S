/* Hostile: spins forever with interrupts off; only the VMM's timeout stops it. */
    .code32
    .globl _start, spin, spin_end
_start:
    cli
spin:
    inc %eax
    jmp spin
spin_end:

/* Spins forever with interrupts off. */
    .code32
    .globl _start
_start:
    cli
1:  jmp 1b

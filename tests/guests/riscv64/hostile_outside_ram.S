/* Hostile: an access where there is no RAM and no device (WILD). a1 at entry picks
 * it: 0 an 8-byte load, 1 an 8-byte store, 2 an instruction fetch (a jump there).
 * The guest has a trap vector: it stores scause, stval and sepc at RESULTS, counts
 * the traps at RESULTS + 0x18 and shuts down. Falling through (no trap) stores
 * 0xd0e at RESULTS + 0x20. */
.include "sbi.inc"
.equ WILD, 0x70000000
.globl _start, trap, after, load, store
_start:
    la t0, trap
    csrw stvec, t0
    li s0, WILD
    li t0, 1
    beq a1, t0, store
    li t0, 2
    beq a1, t0, fetch
load:
    ld t1, 16(s0)
    j after
store:
    sd t1, 24(s0)
    j after
fetch:
    jalr s0
after:
    li t0, 0xd0e
    STORE t0, 0x20
    SHUTDOWN
    .balign 4
trap:
    STORE_CSR scause, 0
    STORE_CSR stval, 8
    STORE_CSR sepc, 0x10
    li t6, RESULTS + 0x18
    ld t0, 0(t6)
    addi t0, t0, 1
    sd t0, 0(t6)
    SHUTDOWN

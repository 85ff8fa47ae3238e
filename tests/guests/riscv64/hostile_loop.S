/* Hostile: spins forever on every hart. Hart 0 starts hart 1 (SBI HSM hart_start)
 * in the same loop, stores the call's error at RESULTS and spins too; only the
 * VMM's timeout stops them. */
.include "sbi.inc"
.globl _start, spin, spin_end
_start:
    li a0, 1
    la a1, spin
    li a2, 0
    SBI EXT_HSM, 0
    STORE a0, 0
spin:
    addi t0, t0, 1
    j spin
spin_end:

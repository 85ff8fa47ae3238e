/* Hostile: SBI HSM abuse on a 2-hart VM. Each call's error (a0) goes to the next
 * slot of RESULTS (slot count at RESULTS + 0x7f8):
 *   hart_start(self), hart_start(7: no such hart), hart_start(all ones), then
 *   ROUNDS times: hart_start(1, secondary, round) and again at once (it is started
 *   or being started); hart 1 counts its starts at MARK + 8, stores round + 1 at
 *   MARK and stops itself (hart_stop); hart 0 waits for the mark and for
 *   hart_get_status(1) to say STOPPED.
 * a1 at entry = 1 instead: one hart_start(1) at an address where there is no RAM;
 * hart 0 shuts down if the call failed and spins if it succeeded. */
.include "sbi.inc"
.equ MARK, 0x80011000
.equ ROUNDS, 20
.globl _start, secondary, bad_entry_done
/* hart_start(\hart, register \entry, register \opaque); a0 to the next slot */
.macro HART_START hart, entry, opaque
    li a0, \hart
    mv a1, \entry
    mv a2, \opaque
    SBI EXT_HSM, 0
    slli t0, s1, 3
    add t0, t0, s0
    sd a0, 0(t0)
    addi s1, s1, 1
    sd s1, 0x7f8(s0)
.endm
_start:
    li s0, RESULTS
    li s1, 0
    bnez a1, bad_entry
    la s2, secondary
    HART_START 0, s2, zero
    HART_START 7, s2, zero
    HART_START -1, s2, zero
    li s3, 0                        /* round */
    li s4, MARK
1:  HART_START 1, s2, s3
    HART_START 1, s2, s3
    addi s5, s3, 1
2:  ld t1, 0(s4)                    /* wait for hart 1's mark */
    bne t1, s5, 2b
3:  li a0, 1
    SBI EXT_HSM, 2                  /* hart_get_status(1) */
    li t1, 1                        /* STOPPED */
    bne a1, t1, 3b
    mv s3, s5
    li t1, ROUNDS
    bne s3, t1, 1b
    SHUTDOWN
bad_entry:
    li s2, 0x70000000
    HART_START 1, s2, zero
    ld a0, 0(s0)
bad_entry_done:
    beqz a0, bad_entry_done
    SHUTDOWN
secondary:
    li t0, MARK
    ld t1, 8(t0)
    addi t1, t1, 1
    sd t1, 8(t0)
    addi t1, a1, 1
    sd t1, 0(t0)
    fence rw, rw
    SBI EXT_HSM, 1                  /* hart_stop */
4:  j 4b

/* SBI TIME and the supervisor timer interrupt through stvec. The deadline is
 * RESULTS+0x48 ticks from now (the test sets it). With RESULTS+0x40 = 0 the hart waits
 * in wfi (Halt exits), otherwise it spins until the interrupt arrives. */
.include "sbi.inc"
.globl _start, after_wfi, trap
_start:
    la t0, trap
    csrw stvec, t0
    li t0, 0x20                     /* sie.STIE */
    csrw sie, t0
    li t6, RESULTS
    ld t2, 0x48(t6)
    rdtime t1
    add a0, t1, t2
    sd a0, 0x00(t6)                 /* the compare value */
    SBI EXT_TIME, 0                 /* set_timer */
    SAVE 0x10
    csrsi sstatus, 2                /* sstatus.SIE */
    li t6, RESULTS
    ld s1, 0x40(t6)
wait:
    bnez s1, spin
    wfi
after_wfi:
spin:
    li t6, RESULTS
    ld t0, 0x20(t6)
    beqz t0, wait
    SHUTDOWN
hang:
    j hang

    .align 2
trap:
    STORE_CSR scause, 0x20
    STORE_CSR sepc, 0x28
    STORE_CSR time, 0x30
    STORE_CSR sip, 0x38
    li a0, -1
    SBI EXT_TIME, 0                 /* no next event: clears STIP */
    STORE_CSR sip, 0x50
    sret

/* A supervisor software interrupt (an IPI) taken through stvec. */
.include "sbi.inc"
.globl _start, trap
_start:
    la t0, trap
    csrw stvec, t0
    li t0, 0x2                      /* sie.SSIE */
    csrw sie, t0
    csrsi sstatus, 2
    li s2, RESULTS
spin:
    ld t1, 0x00(s2)                 /* the handler's scause */
    beqz t1, spin
    SHUTDOWN
hang:
    j hang

    .align 2
trap:
    STORE_CSR scause, 0x00
    STORE_CSR sip, 0x08
    csrci sip, 2                    /* acknowledge */
    STORE_CSR sip, 0x10
    sret

/* Accesses outside RAM that are not MMIO the vCPU can emulate; the test starts the
 * hart at each label. */
.include "sbi.inc"
.globl _start, host_phys, fetch, amo, lr, fp_load, fp_store, fsd_insn
_start:
host_phys:
    li t0, 0x4000000000             /* the host arena's physical base */
    ld a0, 0(t0)
    li t6, RESULTS
    sd a0, 0(t6)
    SBI EXT_PYAX, 0
fetch:
    li t0, DEV
    jr t0
amo:
    li t0, DEV
    amoadd.w a1, a2, (t0)
lr:
    li t0, DEV + 8
    lr.d a1, (t0)
fp_load:
    li t0, 0x6000                   /* sstatus.FS: dirty */
    csrs sstatus, t0
    li t0, DEV + 16
    fld fa0, 0(t0)
fp_store:
    li t0, DEV + 24
fsd_insn:
    fsd fa0, 0(t0)
hang:
    j hang

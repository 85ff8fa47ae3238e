/* Code rewritten behind the CPU's back, as a disk read (DMA) into a page that held
 * code does: the guest calls `f` (a0 = 1), stops with a pyaxvisor hypercall while the
 * test writes a new `f` (a0 = 2) into the same page from the host, runs FENCE.I as a
 * RISC-V guest must before running code something else wrote, and calls `f` again.
 * Results: RESULTS + 0x00 the first call's a0, + 0x08 the second's. */
.include "sbi.inc"
.globl _start, f
_start:
    call f
    STORE a0, 0x00
    SBI EXT_PYAX, 1                 /* the test rewrites f now */
    fence.i
    call f
    STORE a0, 0x08
    SBI EXT_PYAX, 2
1:  j 1b

    .balign 4096
f:  li a0, 1
    ret

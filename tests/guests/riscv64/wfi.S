/* wfi from S-mode: a Halt exit with the PC past it; then a hypercall. */
.include "sbi.inc"
.globl _start, after_wfi
_start:
    wfi
after_wfi:
    SBI EXT_PYAX, 2
hang:
    j hang

/* Device accesses served inside the CPU: no exits, then a hypercall. */
.include "sbi.inc"
.globl _start
_start:
    li s0, DEV
    li t0, 0x12345678
    sw t0, 0(s0)
    lw a0, 4(s0)
    sb t0, 8(s0)
    ld a1, 16(s0)
    SAVE 0x00
    SBI EXT_PYAX, 0
hang:
    j hang

/* Loads and stores to a guest-physical address without RAM: every width, sign and
 * zero extension, x0 as destination, unaligned, compressed forms. */
.include "sbi.inc"
.globl _start, after_sb, after_clw, after_clwsp
.option norvc
_start:
    li s0, DEV
    li t0, 0x41
    sb t0, 0(s0)
after_sb:
    li t0, 0x1122334455667788
    sd t0, 8(s0)
    sh zero, 2(s0)
    sw t0, 4(s0)
    lb a0, 1(s0)
    lbu a1, 1(s0)
    lh a2, 2(s0)
    lhu a3, 2(s0)
    lw a4, 4(s0)
    lwu a5, 4(s0)
    ld a6, 8(s0)
    lw zero, 12(s0)
    lw a7, 3(s0)                    /* unaligned */
    li t6, RESULTS
    sd a0, 0x00(t6)
    sd a1, 0x08(t6)
    sd a2, 0x10(t6)
    sd a3, 0x18(t6)
    sd a4, 0x20(t6)
    sd a5, 0x28(t6)
    sd a6, 0x30(t6)
    sd a7, 0x38(t6)
    li a3, 0xA5A5A5A5A5A5A5A5
    li a4, 0x0123456789ABCDEF
    li sp, DEV + 0x100
.option rvc
    c.lw a1, 16(s0)
after_clw:
    c.ld a2, 24(s0)
    c.sw a3, 32(s0)
    c.sd a4, 40(s0)
    c.lwsp a5, 4(sp)
after_clwsp:
    c.ldsp s1, 8(sp)
    c.swsp a3, 12(sp)
    c.sdsp a4, 16(sp)
.option norvc
    li t6, RESULTS
    sd a1, 0x40(t6)
    sd a2, 0x48(t6)
    sd a5, 0x50(t6)
    sd s1, 0x58(t6)
    SBI EXT_PYAX, 0
hang:
    j hang

/* MMIO with the guest's Sv39 paging on: the instruction and the device address are
 * translated through its own page tables. VA 0x4000_0000 is a 1 GiB page onto
 * physical 0 (the device at VA 0x5000_0000); VA 0x1000 a 4 KiB page onto DEV + 0x2000;
 * RAM is mapped 1:1 with a 1 GiB page. */
.include "sbi.inc"
.equ PT, 0x80030000              /* root, then the level-1 and level-0 tables */
.globl _start, paged
_start:
    li t0, PT
    li t1, 0x200000CF               /* root[2]: 0x8000_0000 1:1, V R W X A D */
    sd t1, 16(t0)
    li t1, 0xC7                     /* root[1]: VA 0x4000_0000 -> PA 0, V R W A D */
    sd t1, 8(t0)
    li t1, ((PT + 0x1000) >> 12 << 10) | 1
    sd t1, 0(t0)                    /* root[0] -> level-1 table */
    li t2, PT + 0x1000
    li t1, ((PT + 0x2000) >> 12 << 10) | 1
    sd t1, 0(t2)                    /* L1[0] -> level-0 table */
    li t2, PT + 0x2000
    li t1, ((DEV + 0x2000) >> 12 << 10) | 0xC7
    sd t1, 8(t2)                    /* L0[1]: VA 0x1000 -> DEV + 0x2000 */
    li t0, (8 << 60) | (PT >> 12)
    csrw satp, t0
    sfence.vma
paged:
    li s0, 0x50000000
    lw a0, 8(s0)                    /* DEV + 8 through the gigapage */
    li s1, 0x1000
    sw a0, 0x10(s1)                 /* DEV + 0x2010 through the 4 KiB page */
.option rvc
    c.ld a1, 16(s0)
.option norvc
    SAVE 0x00
    SBI EXT_PYAX, 0
hang:
    j hang

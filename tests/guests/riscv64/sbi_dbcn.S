/* SBI DBCN: console write/read through guest physical memory, write_byte. */
.include "sbi.inc"
.equ RAM_END, 0x81000000
.globl _start
_start:
    li a0, 5
    la a1, msg
    li a2, 0
    SBI EXT_DBCN, 0                 /* write "hello" */
    SAVE 0x00
    li a0, 4
    li a1, 0x4000000000             /* host memory's physical base: not guest RAM */
    li a2, 0
    SBI EXT_DBCN, 0
    SAVE 0x10
    li a0, 4
    la a1, msg
    li a2, 1                        /* above 64 bits */
    SBI EXT_DBCN, 0
    SAVE 0x20
    li a0, 0x20
    li a1, RAM_END - 8              /* runs out of RAM */
    li a2, 0
    SBI EXT_DBCN, 0
    SAVE 0x30
    li a0, 16
    li a1, BUF
    li a2, 0
    SBI EXT_DBCN, 1                 /* read what is there (3 bytes) */
    SAVE 0x40
    li a0, 4
    li a1, DEV                      /* a device, not RAM */
    li a2, 0
    SBI EXT_DBCN, 1
    SAVE 0x50
    li a0, 4
    li a1, BUF + 0x100
    li a2, 0
    SBI EXT_DBCN, 1                 /* nothing to read: 0 bytes, buffer untouched */
    SAVE 0x60
    li a0, 0x121                    /* only the low byte counts: '!' */
    SBI EXT_DBCN, 2                 /* write_byte */
    SAVE 0x70
    SBI EXT_DBCN, 3                 /* no such function */
    SAVE 0x80
    SHUTDOWN
hang:
    j hang
msg:
    .ascii "hello"

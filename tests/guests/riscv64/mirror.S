/* Reads of a device window with a register mirror (tests/test_register_mirror.py):
 * each width, lanes inside a word, a word only partly published and the window's last
 * word; the values go to RESULTS + 0x00 .. 0x30, then a hypercall. Run twice: the test
 * changes what is published between the runs. */
.include "sbi.inc"
.globl _start
_start:
    li s0, DEV
    lwu a0, 0(s0)           /* a published word */
    lbu a1, 1(s0)           /* one byte lane of it */
    SAVE 0x00
    lhu a0, 2(s0)           /* the upper halfword */
    lwu a1, 4(s0)           /* a word with one byte published: the device answers */
    SAVE 0x10
    lbu a0, 4(s0)           /* ... but its published byte alone: the mirror */
    li t0, 0xffc
    add t0, s0, t0
    lwu a1, 0(t0)           /* the window's last word */
    SAVE 0x20
    lwu a0, 8(s0)           /* a word never published */
    li a1, 0
    SAVE 0x30
    SBI EXT_PYAX, 0
hang:
    j hang

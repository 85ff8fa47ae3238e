/* SBI BASE, PMU, unknown calls and pyaxvisor's hypercall extension. */
.include "sbi.inc"
.macro PROBE eid, off                /* probe_extension(\eid) */
    li a0, \eid
    SBI EXT_BASE, 3
    SAVE \off
.endm
.globl _start
_start:
    SAVE 0x100                      /* entry registers: a0 = hart ID, a1 = DTB */
    SBI EXT_BASE, 0                 /* get_spec_version */
    SAVE 0x00
    SBI EXT_BASE, 1                 /* get_impl_id */
    SAVE 0x10
    SBI EXT_BASE, 2                 /* get_impl_version */
    SAVE 0x20
    PROBE EXT_TIME, 0x30
    PROBE EXT_PMU, 0x40             /* not available */
    PROBE 0x12345678, 0x50          /* unknown */
    PROBE 0x08, 0x60                /* legacy shutdown */
    SBI EXT_BASE, 4                 /* mvendorid */
    SAVE 0x70
    SBI EXT_BASE, 5                 /* marchid */
    SAVE 0x80
    SBI EXT_BASE, 6                 /* mimpid */
    SAVE 0x90
    SBI EXT_BASE, 7                 /* no such function */
    SAVE 0xa0
    SBI EXT_PMU, 0                  /* PMU num_counters: not supported */
    SAVE 0xb0
    li a1, 0x5555
    SBI 0x0BADBEEF, 3               /* no such extension */
    SAVE 0xc0
    li a0, 11
    li a1, 12
    li a2, 13
    li a3, 14
    li a4, 15
    li a5, 16
    SBI EXT_PYAX, 0x42              /* a hypercall: the VM's */
    SAVE 0xd0
    li a0, 0xABCD
    SBI 0x0A000000, 0               /* another firmware-specific EID: unknown */
    SAVE 0xe0
    SHUTDOWN
hang:
    j hang

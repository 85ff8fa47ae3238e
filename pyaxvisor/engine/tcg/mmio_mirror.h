/*
 * Device registers a software CPU reads without calling the device (mmio_mirror.c).
 *
 * A device whose registers can be read without side effects (a UART's flag register,
 * its control registers) publishes their current values in a table it shares with
 * the engines: 32-bit little-endian words, and per word a mask of the bytes that hold
 * a published value (bit i: byte i) and MIRROR_WHOLE_WORD when only an aligned 4-byte
 * read may be answered (a register the device takes in 32-bit accesses only: a narrower
 * read goes to the device, which refuses it). The engine maps the device's in-CPU window
 * with mirror_read as the read callback: a read that lies inside one word and touches
 * published bytes only (and is the whole word where the word says so) is answered from
 * the table; every other read, and every write, goes to the device's own callbacks
 * (Python), as without a mirror.
 *
 * Threads: the device writes the table under its own lock (a word with one 4-byte
 * store, and the value before the mask when a register becomes published, the mask
 * before the value when it stops being published); any vCPU thread reads it with
 * atomic 4-byte loads and no lock, so a read sees a value the register had.
 */
#ifndef PYAXVISOR_MMIO_MIRROR_H
#define PYAXVISOR_MMIO_MIRROR_H

#include <stdint.h>

/* Bit 4 of a word's mask: answered only to an aligned 4-byte read. */
#define MIRROR_WHOLE_WORD 0x10u

typedef uint64_t (*mirror_read_fn)(void *uc, uint64_t offset, unsigned size, void *ud);

/* One mapping of a mirrored window in one engine (Python: native.MirrorMap). */
struct mmio_mirror {
    const uint32_t *data;   /* the window's words (the device's RegisterMirror) */
    const uint32_t *valid;  /* per word, the bytes published (bits 0-3), MIRROR_WHOLE_WORD */
    uint64_t size;          /* the window's size in bytes (a multiple of 4) */
    mirror_read_fn read;    /* the device's read callback, for everything else */
    void *read_ud;
    uint64_t served;        /* reads answered from the table (this engine's thread) */
};

uint64_t mirror_read(void *uc, uint64_t offset, unsigned size, void *user_data);

#endif

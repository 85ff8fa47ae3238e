// Hostile: an access where there is no RAM and no device (WILD). x0 at entry picks
// it: 0 a 4-byte load, 1 a 4-byte store, 2 an instruction fetch (a branch there).
// The guest has vectors: a synchronous exception stores ESR_EL1, FAR_EL1 and
// ELR_EL1 at RESULTS and powers off (PSCI SYSTEM_OFF); RESULTS + 0x18 counts the
// exceptions taken. Falling through (no exception) stores 0xd0e at RESULTS + 0x20.
	.equ RESULTS, 0x40010000
	.equ WILD, 0x7000000000
	.text
	.global _start, vectors, after, load, store
_start:
	ldr	x20, =RESULTS
	ldr	x1, =vectors
	msr	vbar_el1, x1
	isb
	ldr	x2, =WILD
	cmp	x0, #1
	b.eq	store
	cmp	x0, #2
	b.eq	fetch
load:
	ldr	w3, [x2, #0x10]
	b	after
store:
	str	w3, [x2, #0x18]
	b	after
fetch:
	blr	x2
after:
	ldr	x1, =0xd0e
	str	x1, [x20, #0x20]
	ldr	x0, =0x84000008
	hvc	#0
	b	.

	.balign	0x800
vectors:
	.rept	16
	.balign	0x80
	b	sync
	.endr
sync:
	mrs	x1, esr_el1
	mrs	x2, far_el1
	mrs	x3, elr_el1
	stp	x1, x2, [x20]
	str	x3, [x20, #0x10]
	ldr	x4, [x20, #0x18]
	add	x4, x4, #1
	str	x4, [x20, #0x18]
	ldr	x0, =0x84000008			// SYSTEM_OFF
	hvc	#0
	b	.

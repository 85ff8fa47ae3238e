// Reads from a guest-physical address where nothing lives (not RAM, no device).
	.text
	.global _start
_start:
	ldr	x1, =0x7000000000
	ldr	w2, [x1, #0x10]
	b	.

// Hostile: an undefined instruction (UDF) with no vectors set up. x0 at entry picks
// VBAR_EL1: 0 leaves it as the vCPU reset it, 1 points it where there is no RAM.
// Nothing after the UDF runs on a correct CPU: it would store 0xd0e at RESULTS.
	.equ RESULTS, 0x40010000
	.text
	.global _start, undefined
_start:
	ldr	x20, =RESULTS
	cbz	x0, undefined
	ldr	x1, =0x7000000000
	msr	vbar_el1, x1
	isb
undefined:
	udf	#0x5a
	ldr	x1, =0xd0e
	str	x1, [x20]
	b	.

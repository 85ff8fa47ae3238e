// Hostile: hypercalls with the function IDs and arguments the test wrote at TABLE:
// a count, then per call eight words: function ID, conduit (0 HVC, 1 SMC), x1..x6.
// RESULTS + 0: calls that returned, + 8: how many of them returned NOT_SUPPORTED
// (-1), + 0x100 + 8 * i: x0 after call i. Then PSCI SYSTEM_OFF.
	.equ RESULTS, 0x40010000
	.equ TABLE, 0x40020000
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	ldr	x21, =TABLE
	ldr	x22, [x21], #8			// count
	mov	x23, #0				// calls made
	mov	x24, #0				// NOT_SUPPORTED answers
	add	x26, x20, #0x100
1:	cmp	x23, x22
	b.eq	3f
	ldp	x0, x25, [x21], #16
	ldp	x1, x2, [x21], #16
	ldp	x3, x4, [x21], #16
	ldp	x5, x6, [x21], #16
	cbnz	x25, 2f
	hvc	#0
	b	4f
2:	smc	#0
4:	str	x0, [x26, x23, lsl #3]
	cmn	x0, #1
	cinc	x24, x24, eq
	add	x23, x23, #1
	stp	x23, x24, [x20]
	b	1b
3:	ldr	x0, =0x84000008			// SYSTEM_OFF
	hvc	#0
	b	.

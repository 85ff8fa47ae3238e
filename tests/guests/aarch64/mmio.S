// MMIO loads and stores of every width to a device at 0x0900_0000, including
// sign-extending loads into X and W registers, a store of XZR, and an access to an
// IPA that equals a host physical address (it must not reach host memory).
	.equ RESULTS, 0x40010000
	.equ DEV, 0x09000000
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	ldr	x21, =DEV
	mov	w1, #0x41
	strb	w1, [x21]			// 1-byte write of 0x41
	ldr	x2, =0x1122334455667788
	str	x2, [x21, #8]			// 8-byte write
	strh	wzr, [x21, #2]			// 2-byte write of XZR = 0
	ldrsb	x3, [x21, #4]			// signed byte into X3
	str	x3, [x20, #0x00]
	ldrsh	w4, [x21, #6]			// signed halfword into W4
	str	x4, [x20, #0x08]
	ldr	w5, [x21, #0x10]		// 32-bit into W5 (zero-extends)
	str	x5, [x20, #0x10]
	ldr	x6, [x21, #0x18]		// 64-bit
	str	x6, [x20, #0x18]
	ldrb	w7, [x21, #0x20]		// unsigned byte
	str	x7, [x20, #0x20]
	ldr	x8, =0x4000000000		// an IPA equal to the host arena's first address
	ldr	x9, [x8]
	str	x9, [x20, #0x28]
	ldp	x10, x11, [x21]		// load pair: no ISV, the VMM cannot emulate it
	b	.

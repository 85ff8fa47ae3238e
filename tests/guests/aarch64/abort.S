// Accesses where the virt board has neither RAM nor a device: a load at an unmapped
// guest-physical address, the same load again, a store and a load pair (which has no
// instruction syndrome) there, and an instruction fetch just past the end of RAM (the
// tests give 128 MiB: RAM ends at 0x4800_0000). On QEMU's virt board each is a
// synchronous external abort at EL1. The guest's handler records ESR_EL1, FAR_EL1 and
// ELR_EL1 at RESULTS + 0x20 * n, prints "abort ESR=<esr> FAR=<far>", and goes on after
// the faulting instruction (after the call, for the fetch). The number of aborts is at
// RESULTS + 0x100. Then it powers off.
	.include "a64.inc"
	.equ	NOWHERE, 0x7000000010
	.equ	RAM_END, 0x48000000
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	mov	x21, #0
	ldr	x0, =vectors
	msr	vbar_el1, x0
	ldr	x0, =0x40100000
	mov	sp, x0
	isb
	ldr	x1, =NOWHERE
	ldr	w9, [x1]
	ldr	w9, [x1]
	str	w9, [x1, #8]
	ldp	x9, x10, [x1, #0x10]
	ldr	x8, =RAM_END
	blr	x8
	str	x21, [x20, #0x100]
	b	poweroff

sync:
	mov	x15, x30
	mrs	x10, esr_el1
	mrs	x11, far_el1
	mrs	x12, elr_el1
	add	x13, x20, x21, lsl #5
	stp	x10, x11, [x13]
	str	x12, [x13, #16]
	add	x21, x21, #1
	adr	x0, esr_text
	bl	puts
	mov	x4, x10
	bl	puthex
	adr	x0, far_text
	bl	puts
	mov	x4, x11
	bl	puthex
	bl	newline
	lsr	x14, x10, #26
	cmp	x14, #0x21			// instruction abort: back to the caller
	b.ne	1f
	msr	elr_el1, x15
	eret
1:	add	x12, x12, #4			// data abort: skip the access
	msr	elr_el1, x12
	eret

	VECTORS	sync, unexpected, unexpected, unexpected
	A64_LIB
esr_text:	.asciz	"abort ESR="
far_text:	.asciz	" FAR="

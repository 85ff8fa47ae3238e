// EL1 sets up its vectors, drops to EL0; EL0 makes a system call, executes an
// undefined instruction (HVC at EL0 is undefined) and reads a register; the EL1
// handlers record ESR/ELR/SP, and an IRQ handler records the interrupted PC.
	.equ RESULTS, 0x40010000
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	ldr	x0, =vectors
	msr	vbar_el1, x0
	ldr	x0, =0x40100000
	mov	sp, x0				// SP_EL1
	ldr	x0, =0x40200000
	msr	sp_el0, x0
	ldr	x0, =0x5eed
	msr	tpidr_el1, x0
	ldr	x0, =user
	msr	elr_el1, x0
	msr	spsr_el1, xzr			// EL0t, interrupts unmasked
	eret
user:
	svc	#0x42
	hvc	#7				// undefined at EL0 -> EL1 sync
	mov	x19, #0
1:	add	x19, x19, #1			// spin until the VMM raises the IRQ
	b	1b

	.balign 0x800
vectors:
	.rept 8					// current-EL vectors: not expected
	.balign 0x80
	hvc	#0xbad
	.endr
	.balign 0x80				// 0x400: lower EL, synchronous
	b	lower_sync
	.balign 0x80				// 0x480: lower EL, IRQ
	b	lower_irq
	.balign 0x80
	hvc	#0xbad
	.balign 0x80
	hvc	#0xbad
lower_sync:
	mrs	x1, esr_el1
	mrs	x2, elr_el1
	mov	x3, sp
	ldr	x4, [x20, #0x30]		// counter of synchronous exceptions
	add	x5, x20, x4, lsl #4
	stp	x1, x2, [x5]			// RESULTS + 16*n: ESR, ELR
	str	x3, [x20, #0x38]
	add	x4, x4, #1
	str	x4, [x20, #0x30]
	mrs	x6, esr_el1
	lsr	x6, x6, #26
	cmp	x6, #0x15			// SVC: return to the next instruction
	b.eq	2f
	mrs	x2, elr_el1			// undefined: skip the instruction
	add	x2, x2, #4
	msr	elr_el1, x2
2:	eret
lower_irq:
	mrs	x2, elr_el1
	str	x2, [x20, #0x40]
	mrs	x7, tpidr_el1
	str	x7, [x20, #0x48]
	hvc	#0x100
irq_done:
	b	.

// The PMU's overflow interrupt reaches the GIC as PPI 23, from three kinds of wrap:
// the cycle counter (32-bit, PMCR.LC = 0) while the CPU waits in WFI, event counter 0
// counting instructions while it spins, and event counter 1 by a software increment.
// The IRQ handler records GICC_IAR at RESULTS + 0x10 * n and PMOVSSET at RESULTS +
// 0x40 + 0x10 * n, clears the flag, reads GICC_IAR again (RESULTS + 0x08 + 0x10 * n:
// 1023 once the request fell) and ends the interrupt. The count of interrupts is at RESULTS + 0x80. Then it powers off.
	.include "a64.inc"
	.equ	CYCLE, 1 << 31
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	mov	x21, #0				// interrupts taken
	ldr	x0, =vectors
	msr	vbar_el1, x0
	ldr	x0, =0x40100000
	mov	sp, x0
	// GIC: distributor and CPU interface on, PPI 23 enabled at priority 0xa0
	ldr	x1, =GICD
	mov	w0, #1
	str	w0, [x1]
	mov	w0, #(1 << 23)
	str	w0, [x1, #0x100]		// GICD_ISENABLER0
	mov	w0, #0xa0
	strb	w0, [x1, #0x417]		// GICD_IPRIORITYR, INTID 23
	ldr	x1, =GICC
	mov	w0, #0xf0
	str	w0, [x1, #4]			// GICC_PMR
	mov	w0, #1
	str	w0, [x1]			// GICC_CTLR
	// 1. the cycle counter, 4096 cycles before it wraps at 32 bits, while in WFI
	// (with IRQs masked: WFI wakes for a pending interrupt, which is taken once they
	// are unmasked; so none is taken between the check and the WFI)
	ldr	x0, =CYCLE
	msr	pmintenset_el1, x0
	ldr	x0, =0xfffff000
	msr	pmccntr_el0, x0
	mov	x0, #1
	msr	pmcr_el0, x0
	ldr	x0, =CYCLE
	msr	pmcntenset_el0, x0
1:	wfi
	msr	daifclr, #2
	isb
	msr	daifset, #2
	cmp	x21, #1
	b.lo	1b
	msr	daifclr, #2
	ldr	x0, =CYCLE
	msr	pmcntenclr_el0, x0
	msr	pmintenclr_el1, x0
	// 2. event counter 0, instructions, 256 before it wraps, while spinning
	mov	x0, #0x08
	msr	pmevtyper0_el0, x0
	ldr	x0, =0xffffff00
	msr	pmevcntr0_el0, x0
	mov	x0, #1
	msr	pmintenset_el1, x0
	msr	pmcntenset_el0, x0
2:	cmp	x21, #2
	b.lo	2b
	mov	x0, #1
	msr	pmcntenclr_el0, x0
	msr	pmintenclr_el1, x0
	// 3. event counter 1, software increments, at 0xffffffff
	msr	pmevtyper1_el0, xzr
	mov	x0, #0xffffffff
	msr	pmevcntr1_el0, x0
	mov	x0, #2
	msr	pmintenset_el1, x0
	msr	pmcntenset_el0, x0
	msr	pmswinc_el0, x0
3:	cmp	x21, #3
	b.lo	3b
	str	x21, [x20, #0x80]
	b	poweroff

irq:
	ldr	x1, =GICC
	ldr	w10, [x1, #0x0c]		// GICC_IAR
	mrs	x11, pmovsset_el0
	add	x12, x20, x21, lsl #4
	str	w10, [x12]
	str	x11, [x12, #0x40]
	msr	pmovsclr_el0, x11
	ldr	w13, [x1, #0x0c]		// nothing pending any more: 1023
	str	w13, [x12, #0x08]
	str	w10, [x1, #0x10]		// GICC_EOIR
	add	x21, x21, #1
	eret

	VECTORS	unexpected, irq, unexpected, unexpected
	A64_LIB

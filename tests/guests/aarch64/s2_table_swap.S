// A stage-1 walk after the hypervisor moved the guest's translation table to another
// host page (stage 2) and flushed the TLB: the walk must read the new table.
// The one-level table (4 KiB granule, 39-bit VAs: the walk starts at level 1, 1 GiB
// blocks) is at IPA TABLE, outside RAM, where the test maps a page of its own. Entry 1
// maps VA 0x4000_0000 to this RAM (the code runs there); entry 2 maps the alias VA
// 0x8000_0000 to the same RAM in the first table and is invalid in the second.
// RESULTS+0x00: the word read through the alias before the hypercall;
// +0x08: the word read after it (stays 0 if the read faults);
// +0x10: ESR_EL1 of the fault; +0x18: 1 once the second read is over.
	.include "a64.inc"
	.equ	TABLE, 0x50000000
	.equ	ALIAS, 0x80000000
	.equ	MARK_OFF, 0x20000		// RAM + 0x20000 holds the word both reads aim at
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	adr	x0, vectors
	msr	vbar_el1, x0
	mov	x0, #0xff			// MAIR attr 0: normal, write-back
	msr	mair_el1, x0
	// T0SZ 25, IRGN0/ORGN0 write-back, SH0 inner, TG0 4 KiB, EPD1, IPS 40 bits
	ldr	x0, =(25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32))
	msr	tcr_el1, x0
	ldr	x0, =TABLE
	msr	ttbr0_el1, x0
	isb
	mrs	x0, sctlr_el1
	orr	x0, x0, #1			// M
	msr	sctlr_el1, x0
	isb
	ldr	x21, =(ALIAS + MARK_OFF)
	ldr	x1, [x21]
	str	x1, [x20, #0x00]
	ldr	x0, =0x5a5a			// "table moved?": the test swaps it, no TLBI here
	hvc	#0
	mov	x1, #0
	ldr	x1, [x21]			// faults when the walk reads the second table
	str	x1, [x20, #0x08]
	mov	x1, #1
	str	x1, [x20, #0x18]
	b	poweroff

sync:						// record ESR, step over the load (x1 stays 0)
	mrs	x9, esr_el1
	str	x9, [x20, #0x10]
	mrs	x9, elr_el1
	add	x9, x9, #4
	msr	elr_el1, x9
	eret
irq:
	b	unexpected

	VECTORS sync, irq, unexpected, unexpected
	A64_LIB

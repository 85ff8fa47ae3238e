// Debug exceptions reaching the guest's own vectors, with MDSCR_EL1.MDE and KDE set and
// PSTATE.D clear: a hardware breakpoint (EC 0x31); a watchpoint on stores hit at EL1
// (EC 0x35, WnR, FAR: the accessed address; the store is not done until retried with
// the watchpoint off); watchpoints that must not fire (loads only, hit by a store;
// MDSCR_EL1.MDE clear; EL0 only, hit at EL1); a watchpoint on loads hit from EL0 (EC
// 0x34; a halfword load, aligned: with the MMU off data accesses are Device memory,
// where a misaligned one takes an alignment fault, which has priority over the
// watchpoint); then software step of EL0 code (MDSCR_EL1.SS, SPSR_EL1.SS; EC 0x32)
// up to an SVC, and of EL1 code (KDE, SPSR_EL1.D clear; EC 0x33) up to a label where
// the handler masks debug exceptions; each stepped code has an access to a device the
// hypervisor emulates (x8 = 0x0a000000: for the bare test machine, which has no RAM
// there; it writes x3, 1 from EL0 then 3 from EL1). Each exception's ESR, ELR, FAR and
// SPSR are at RESULTS + 0x20 * n, their number at RESULTS + 0x200; the watched
// doubleword when the store watchpoint fired at RESULTS + 0x1e8, after the retry at
// RESULTS + 0x1f0. Then it powers off.
	.include "a64.inc"
	.equ	MDE, 1 << 15
	.equ	KDE, 1 << 13
	.equ	SS, 1
	.equ	BP_E_BOTH, 1 | (3 << 1) | (0xf << 5)		// DBGBCR: E, EL1 and EL0, A64
	.equ	WP_E, 1 | (0xff << 5)				// DBGWCR: E, 8 bytes
	.equ	PAC_BOTH, 3 << 1
	.equ	PAC_EL0, 2 << 1
	.equ	LSC_LOAD, 1 << 3
	.equ	LSC_STORE, 2 << 3
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	mov	x21, #0
	ldr	x0, =vectors
	msr	vbar_el1, x0
	ldr	x0, =0x40100000
	mov	sp, x0
	ldr	x0, =0x40200000
	msr	sp_el0, x0
	ldr	x8, =0x0a000000
	mov	x0, #(MDE | KDE)
	msr	mdscr_el1, x0
	msr	daifclr, #8
	isb
	// a breakpoint
	ldr	x0, =bp_here
	msr	dbgbvr0_el1, x0
	mov	x0, #BP_E_BOTH
	msr	dbgbcr0_el1, x0
	isb
bp_here:
	nop
	// a store watchpoint hit at EL1
	ldr	x1, =watched
	msr	dbgwvr0_el1, x1
	mov	x0, #(WP_E | PAC_BOTH | LSC_STORE)
	msr	dbgwcr0_el1, x0
	isb
	mov	w2, #0x55
st_here:
	str	w2, [x1, #4]
	ldr	x0, [x1]
	str	x0, [x20, #0x1f0]
	// watchpoints that must not fire
	mov	x0, #(WP_E | PAC_BOTH | LSC_LOAD)
	msr	dbgwcr0_el1, x0
	isb
	str	w2, [x1]			// a store, to a load watchpoint
	mov	x0, #KDE
	msr	mdscr_el1, x0
	isb
	ldr	w3, [x1]			// MDE clear
	mov	x0, #(MDE | KDE)
	msr	mdscr_el1, x0
	mov	x0, #(WP_E | PAC_EL0 | LSC_LOAD)
	msr	dbgwcr0_el1, x0
	isb
	ldr	w3, [x1]			// at EL1, to an EL0 watchpoint
	// a load watchpoint hit at EL0
	adr	x0, el0_load
	bl	el0_call
	msr	dbgwcr0_el1, xzr
	// software step of EL0 code (PSTATE.D masks stepping EL1 itself)
	msr	daifset, #8
	mrs	x0, mdscr_el1
	orr	x0, x0, #SS
	msr	mdscr_el1, x0
	isb
	adr	x0, el0_steps
	mov	x9, #(1 << 21)			// SPSR.SS: step one instruction
	bl	el0_call_with
	// software step of EL1 code: KDE set, PSTATE.D clear from the ERET on
	adr	x0, el1_steps
	msr	elr_el1, x0
	ldr	x0, =(1 << 21) | 0x1c5		// SS, EL1h, D clear (A, I, F masked)
	msr	spsr_el1, x0
	eret
el1_steps:
	add	x3, x3, #1
	str	w3, [x8]
	add	x3, x3, #1
el1_steps_end:					// here with PSTATE.D set again
	mrs	x0, mdscr_el1
	bic	x0, x0, #SS
	msr	mdscr_el1, x0
	str	x21, [x20, #0x200]
	b	poweroff

// Run the EL0 routine at x0 (it ends with SVC), SPSR_EL1 = x9; back here after it.
el0_call:
	mov	x9, #0
el0_call_with:
	mov	x22, x30
	msr	elr_el1, x0
	msr	spsr_el1, x9
	eret
el0_load:
	ldrh	w3, [x1, #2]
	svc	#0
el0_steps:
	add	x3, x3, #1
	str	w3, [x8]
	add	x3, x3, #1
	svc	#0

// Record ESR, ELR, FAR, SPSR; x10 = ESR, x14 = EC.
record:
	mrs	x10, esr_el1
	mrs	x11, elr_el1
	mrs	x12, far_el1
	mrs	x13, spsr_el1
	add	x15, x20, x21, lsl #5
	stp	x10, x11, [x15]
	stp	x12, x13, [x15, #16]
	add	x21, x21, #1
	lsr	x14, x10, #26
	ret

cur_sync:
	bl	record
	cmp	x14, #0x31			// breakpoint: off, then back to it
	b.ne	1f
	msr	dbgbcr0_el1, xzr
	isb
	eret
1:	cmp	x14, #0x35			// watchpoint: what memory holds, off, retry
	b.ne	2f
	ldr	x0, [x1]
	str	x0, [x20, #0x1e8]
	msr	dbgwcr0_el1, xzr
	isb
	eret
2:	cmp	x14, #0x33			// software step at EL1: the next instruction,
	b.ne	unexpected			// up to el1_steps_end; there D masks it
	mrs	x0, spsr_el1
	adr	x16, el1_steps_end
	cmp	x11, x16
	b.eq	3f
	orr	x0, x0, #(1 << 21)
	msr	spsr_el1, x0
	eret
3:	orr	x0, x0, #(1 << 9)
	msr	spsr_el1, x0
	eret

low_sync:
	bl	record
	cmp	x14, #0x34			// watchpoint from EL0: off, retry
	b.ne	2f
	msr	dbgwcr0_el1, xzr
	isb
	eret
2:	cmp	x14, #0x32			// software step: step the next instruction
	b.ne	3f
	mrs	x0, spsr_el1
	orr	x0, x0, #(1 << 21)
	msr	spsr_el1, x0
	eret
3:	cmp	x14, #0x15			// SVC: back to EL1, stepping over
	b.ne	unexpected
	msr	elr_el1, x22
	mov	x0, #0x3c5
	msr	spsr_el1, x0
	eret

	.balign	8
watched:
	.quad	0

	VECTORS	cur_sync, unexpected, low_sync, unexpected
	A64_LIB

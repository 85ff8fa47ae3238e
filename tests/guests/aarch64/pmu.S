// The PMU as a Cortex-A72's PMUv3: its identification, a cycle counter that counts
// monotonically, instructions retired, software increments, the PMSELR/PMXEV* views,
// a wrap setting its overflow flag, the registers' writable bits, the EL filters of
// PMCCFILTR and PMEVTYPERn, and EL0 access as PMUSERENR_EL0 allows it. Results at
// RESULTS + offset (see the test); then it powers off.
	.include "a64.inc"
	.equ	E, 1
	.equ	P, 2
	.equ	C, 4
	.equ	CYCLE, 1 << 31
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	ldr	x0, =vectors
	msr	vbar_el1, x0
	ldr	x0, =0x40100000
	mov	sp, x0
	ldr	x0, =0x40200000
	msr	sp_el0, x0
	isb
	// identification
	mrs	x0, pmcr_el0
	str	x0, [x20, #0x00]
	mrs	x0, pmceid0_el0
	str	x0, [x20, #0x08]
	mrs	x0, pmceid1_el0
	str	x0, [x20, #0x10]
	// the cycle counter: eight reads with work between them
	mov	x0, #(E | P | C)
	msr	pmcr_el0, x0
	ldr	x0, =CYCLE
	msr	pmcntenset_el0, x0
	isb
	add	x1, x20, #0x18
	mov	x2, #8
1:	mrs	x0, pmccntr_el0
	str	x0, [x1], #8
	mov	x5, #200
2:	subs	x5, x5, #1
	b.ne	2b
	subs	x2, x2, #1
	b.ne	1b
	// instructions retired: counter 0 over a loop of 2000 instructions
	mov	x0, #0x08
	msr	pmevtyper0_el0, x0
	mov	x0, #1
	msr	pmcntenset_el0, x0
	mrs	x3, pmevcntr0_el0
	mov	x5, #1000
3:	subs	x5, x5, #1
	b.ne	3b
	mrs	x4, pmevcntr0_el0
	sub	x4, x4, x3
	str	x4, [x20, #0x58]
	// software increment: counter 1 counts SW_INCR, counter 2 too but is not enabled,
	// counter 3 too and is enabled but not written to (PMSWINC bits 1 and 2 only)
	msr	pmevtyper1_el0, xzr
	msr	pmevtyper2_el0, xzr
	msr	pmevtyper3_el0, xzr
	mov	x0, #0xa
	msr	pmcntenset_el0, x0
	mov	x0, #6
	msr	pmswinc_el0, x0
	msr	pmswinc_el0, x0
	msr	pmswinc_el0, x0
	mrs	x0, pmevcntr1_el0
	str	x0, [x20, #0x60]
	mrs	x0, pmevcntr2_el0
	str	x0, [x20, #0x68]
	mrs	x0, pmevcntr3_el0
	str	x0, [x20, #0xf8]
	mov	x0, #8
	msr	pmcntenclr_el0, x0
	// PMSELR with PMXEVTYPER / PMXEVCNTR: counter 3
	mov	x0, #3
	msr	pmselr_el0, x0
	mov	x0, #0x11
	msr	pmxevtyper_el0, x0
	ldr	x0, =0xfffffff0
	msr	pmxevcntr_el0, x0
	mrs	x0, pmevtyper3_el0
	str	x0, [x20, #0x70]
	mrs	x0, pmevcntr3_el0
	str	x0, [x20, #0x78]
	mrs	x0, pmselr_el0
	str	x0, [x20, #0x80]
	// a wrap: counter 1 at 0xffffffff plus one software increment
	mov	x0, #0xffffffff
	msr	pmevcntr1_el0, x0
	mov	x0, #2
	msr	pmswinc_el0, x0
	mrs	x0, pmevcntr1_el0
	str	x0, [x20, #0x88]
	mrs	x0, pmovsset_el0
	str	x0, [x20, #0x90]
	mov	x0, #2
	msr	pmovsclr_el0, x0
	mrs	x0, pmovsclr_el0
	str	x0, [x20, #0x98]
	// writable bits
	mov	x0, #-1
	msr	pmevtyper3_el0, x0
	mrs	x1, pmevtyper3_el0
	str	x1, [x20, #0xa0]
	msr	pmccfiltr_el0, x0
	mrs	x1, pmccfiltr_el0
	str	x1, [x20, #0xa8]
	msr	pmcr_el0, x0
	mrs	x1, pmcr_el0
	str	x1, [x20, #0xb0]
	mov	x0, #E
	msr	pmcr_el0, x0
	mrs	x1, pmcntenset_el0
	str	x1, [x20, #0xb8]
	// PMCCFILTR.P: the cycle counter stops at EL1; with U instead it counts there
	mov	x0, #(1 << 31)
	msr	pmccfiltr_el0, x0
	isb
	mrs	x3, pmccntr_el0
	bl	spin
	mrs	x4, pmccntr_el0
	sub	x4, x4, x3
	str	x4, [x20, #0xc0]
	mov	x0, #(1 << 30)
	msr	pmccfiltr_el0, x0
	isb
	mrs	x3, pmccntr_el0
	bl	spin
	mrs	x4, pmccntr_el0
	sub	x4, x4, x3
	str	x4, [x20, #0xc8]
	// PMEVTYPER0.P: instructions at EL0 only
	ldr	x0, =(1 << 31) | 0x08
	msr	pmevtyper0_el0, x0
	mrs	x3, pmevcntr0_el0
	bl	spin
	mrs	x4, pmevcntr0_el0
	sub	x4, x4, x3
	str	x4, [x20, #0xd0]
	mrs	x3, pmevcntr0_el0
	adr	x0, el0_spin
	bl	el0_call
	mrs	x4, pmevcntr0_el0
	sub	x4, x4, x3
	str	x4, [x20, #0xd8]
	// EL0 access: PMUSERENR_EL0 = 0 traps a PMCCNTR read; CR lets it through
	msr	pmuserenr_el0, xzr
	mov	x9, #0x5a
	adr	x0, el0_read_ccntr
	bl	el0_call
	str	x9, [x20, #0xe8]
	mov	x0, #4
	msr	pmuserenr_el0, x0
	mov	x9, #0
	adr	x0, el0_read_ccntr
	bl	el0_call
	str	x9, [x20, #0xf0]
	b	poweroff

// 2000 instructions at the current EL.
spin:
	mov	x5, #1000
4:	subs	x5, x5, #1
	b.ne	4b
	ret

// Run the EL0 routine at x0 (it ends with SVC); back here after it.
el0_call:
	mov	x22, x30
	msr	elr_el1, x0
	msr	spsr_el1, xzr
	eret
el0_spin:
	mov	x5, #1000
5:	subs	x5, x5, #1
	b.ne	5b
	svc	#0
el0_read_ccntr:
	mrs	x9, pmccntr_el0
	svc	#0

low_sync:
	mrs	x10, esr_el1
	lsr	x11, x10, #26
	cmp	x11, #0x15			// SVC: back to el0_call's caller at EL1
	b.ne	6f
	msr	elr_el1, x22
	mov	x11, #0x3c5
	msr	spsr_el1, x11
	eret
6:	str	x10, [x20, #0xe0]		// a trapped access: its ESR; go on after it
	mrs	x11, elr_el1
	add	x11, x11, #4
	msr	elr_el1, x11
	eret

	VECTORS	unexpected, unexpected, low_sync, unexpected
	A64_LIB

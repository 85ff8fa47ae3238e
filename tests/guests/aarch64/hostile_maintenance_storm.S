// Hostile: both CPUs hammer the broadcast maintenance other CPUs must hear of, at the
// same time: COUNT rounds of TLBI VMALLE1IS, TLBI VAE1IS, IC IVAU on their own code,
// IC IALLUIS, each with DSB ISH and ISB. A CPU that issues one waits until every other
// running CPU has dropped what it names; when both issue them at once, each does the
// other's request while it waits, so neither waits for ever. CPU 0 starts CPU 1
// (PSCI CPU_ON), runs its rounds, waits for CPU 1's and powers off.
// RESULTS + 0: CPU 0's rounds, + 8: CPU 1's rounds.
	.include "a64.inc"
	.equ	COUNT, 20000
	.equ	PSCI_CPU_ON, 0xc4000003

	.text
	.global	_start, secondary
_start:
	ldr	x20, =RESULTS
	str	xzr, [x20]
	str	xzr, [x20, #8]
	dsb	ish
	ldr	x0, =PSCI_CPU_ON
	mov	x1, #1
	adr	x2, secondary
	mov	x3, #0
	hvc	#0
	cbnz	x0, failed
	mov	x21, #0				// this CPU's slot
	bl	storm
	ldr	x24, =COUNT
1:	ldr	x1, [x20, #8]			// CPU 1 done?
	cmp	x1, x24
	b.ne	1b
	ldr	x0, =PSCI_SYSTEM_OFF
	hvc	#0
	b	.

secondary:
	ldr	x20, =RESULTS
	mov	x21, #8
	bl	storm
	b	.				// CPU 0 powers the machine off

// COUNT rounds; the round count at RESULTS + x21 (stored with release semantics).
storm:
	mov	x22, #0
	ldr	x24, =COUNT
	adr	x23, storm
2:	tlbi	vmalle1is
	dsb	ish
	lsr	x1, x23, #12
	tlbi	vae1is, x1
	dsb	ish
	ic	ivau, x23
	dsb	ish
	ic	ialluis
	dsb	ish
	isb
	add	x22, x22, #1
	add	x1, x20, x21
	stlr	x22, [x1]
	cmp	x22, x24
	b.ne	2b
	ret

failed:
	ldr	x0, =UNEXPECTED_CALL
	hvc	#0
	b	.

// ALU benchmark: 10^9 iterations of add/eor/subs/branch, then PSCI SYSTEM_OFF (HVC).
	.text
	.global _start
_start:
	ldr	x1, =1000000000
	mov	x0, #0
1:	add	x0, x0, #3
	eor	x2, x0, x1
	subs	x1, x1, #1
	b.ne	1b
	ldr	x0, =0x84000008
	hvc	#0
	b	.

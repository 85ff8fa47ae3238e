// Count forever in x0 and mirror the count to memory; the VMM preempts it.
	.equ RESULTS, 0x40010000
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	mov	x0, #0
1:	add	x0, x0, #1
	str	x0, [x20]
	b	1b

// Code rewritten behind the CPU's back, as a disk read (DMA) into a page that held
// code does. The guest calls `f` (returning 1), stops with an HVC while the test
// writes a new `f` (returning 2) into the same page from the host, then calls `f`
// again. Results at RESULTS: 0x00 the first call's x0, 0x08 the second's.
	.equ RESULTS, 0x40010000
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	bl	f
	str	x0, [x20, #0x00]
	mov	x0, #1
	hvc	#0				// the test rewrites f now
	bl	f
	str	x0, [x20, #0x08]
	mov	x0, #2
	hvc	#0
1:	b	1b
	.ltorg

	.balign 4096
	.global f
f:	mov	x0, #1
	ret

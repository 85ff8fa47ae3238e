// Store benchmark: 10^8 stores walking a 64 KiB buffer in RAM, then SYSTEM_OFF.
	.text
	.global _start
_start:
	ldr	x1, =100000000
	ldr	x3, =0x40200000
	mov	x4, #0
1:	str	x1, [x3, x4]
	add	x4, x4, #8
	and	x4, x4, #0xffff
	subs	x1, x1, #1
	b.ne	1b
	ldr	x0, =0x84000008
	hvc	#0
	b	.

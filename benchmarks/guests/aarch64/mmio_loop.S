// MMIO exit benchmark: 200000 reads of PL011 UARTFR, then PSCI SYSTEM_OFF (HVC).
	.text
	.global _start
_start:
	ldr	x1, =200000
	ldr	x2, =0x09000018
1:	ldr	w3, [x2]
	subs	x1, x1, #1
	b.ne	1b
	ldr	x0, =0x84000008
	hvc	#0
	b	.

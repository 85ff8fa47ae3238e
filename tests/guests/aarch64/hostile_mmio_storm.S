// Hostile: a storm of device accesses. COUNT 1-byte writes of '.' to the PL011's
// data register and COUNT reads of its flag register, then "\n" and PSCI SYSTEM_OFF.
// RESULTS + 0: writes done, + 8: reads done, + 16: the OR of every flag value read.
	.equ RESULTS, 0x40010000
	.equ UART, 0x09000000
	.equ COUNT, 4000
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	ldr	x21, =UART
	ldr	x22, =COUNT
	mov	x23, #0				// writes
	mov	x24, #0				// reads
	mov	x25, #0				// flags seen
	mov	w1, #'.'
1:	strb	w1, [x21]			// UARTDR
	add	x23, x23, #1
	ldr	w2, [x21, #0x18]		// UARTFR
	orr	x25, x25, x2
	add	x24, x24, #1
	cmp	x23, x22
	b.ne	1b
	mov	w1, #'\n'
	strb	w1, [x21]
	stp	x23, x24, [x20]
	str	x25, [x20, #16]
	ldr	x0, =0x84000008			// SYSTEM_OFF
	hvc	#0
	b	.

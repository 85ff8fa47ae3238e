// Hostile: exclusive loads and stores to a device. COUNT times an LDXR of the PL011's
// data register (the receive FIFO is empty: 0) and an STXR of 'x' to it, then "\n"
// and PSCI SYSTEM_OFF. In a VM of several vCPUs the software CPU translates guest code
// for parallel execution, where a store-exclusive is a host atomic, which a device
// register cannot be: the instruction runs once serially instead, as QEMU's
// multi-threaded TCG does, and the store reaches the UART.
// RESULTS + 0: store-exclusives done, + 8: the OR of their status results (0: all
// succeeded), + 16: the OR of the values the LDXRs read.
	.equ RESULTS, 0x40010000
	.equ UART, 0x09000000
	.equ COUNT, 64
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	ldr	x21, =UART
	mov	x22, #COUNT
	mov	x23, #0				// store-exclusives done
	mov	x24, #0				// their status results
	mov	x25, #0				// values read
	mov	w3, #'x'
1:	ldxr	w1, [x21]			// UARTDR
	orr	x25, x25, x1
	stxr	w2, w3, [x21]
	orr	x24, x24, x2
	add	x23, x23, #1
	cmp	x23, x22
	b.ne	1b
	mov	w1, #'\n'
	strb	w1, [x21]
	stp	x23, x24, [x20]
	str	x25, [x20, #16]
	ldr	x0, =0x84000008			// SYSTEM_OFF
	hvc	#0
	b	.

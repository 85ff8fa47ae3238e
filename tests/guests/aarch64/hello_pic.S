// A guest that runs wherever it is loaded (only PC-relative addressing): it prints
// the address it runs at over the virt board's PL011 and powers the machine off
// with PSCI SYSTEM_OFF over HVC.
	.equ UART, 0x09000000
	.equ PSCI_SYSTEM_OFF, 0x84000008

	.text
	.global _start
_start:
	ldr	x1, =UART
	adr	x0, msg
	bl	puts
	adr	x4, _start			// where this code runs
	mov	x5, #60				// print 16 hex digits, most significant first
1:	lsr	x2, x4, x5
	and	x2, x2, #0xf
	cmp	x2, #10
	b.lt	2f
	add	x2, x2, #39			// 'a' - '0' - 10
2:	add	x2, x2, #48			// '0'
	bl	putc
	subs	x5, x5, #4
	b.ge	1b
	adr	x0, newline
	bl	puts
	ldr	x0, =PSCI_SYSTEM_OFF
	hvc	#0
	b	.

// putc(w2): wait while UARTFR.TXFF is set, then write UARTDR (x1 = UART). Uses w3.
putc:
	ldr	w3, [x1, #0x18]
	tbnz	w3, #5, putc
	str	w2, [x1]
	ret

// puts(x0 = NUL-terminated string). Uses x0, x2, x3, x6.
puts:
	mov	x6, x30
3:	ldrb	w2, [x0], #1
	cbz	w2, 4f
	bl	putc
	b	3b
4:	ret	x6

msg:		.asciz "hello from a guest running at 0x"
newline:	.asciz "\r\n"

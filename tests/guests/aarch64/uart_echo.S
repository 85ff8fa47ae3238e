// Console input read by polling UARTFR (served from the PL011's register mirror) and
// UARTDR (the device): prints '?', then echoes each received byte plus one until '.',
// leaves the number of UARTFR reads at RESULTS and powers off.
	.include "a64.inc"
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	mov	x21, #0
	mov	w2, #'?'
	bl	putc
	ldr	x9, =UART
wait:
	ldr	w8, [x9, #0x18]			// UARTFR
	add	x21, x21, #1
	tbnz	w8, #4, wait			// RXFE: nothing received yet
	ldr	w2, [x9]			// UARTDR: takes the byte
	and	w2, w2, #0xff
	cmp	w2, #'.'
	b.eq	done
	add	w2, w2, #1
	bl	putc
	b	wait
done:
	str	x21, [x20]
	b	poweroff
	A64_LIB

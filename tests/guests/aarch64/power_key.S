// The power key (QEMU virt's gpio-keys: PL061 pin 3, SPI 7): arms a rising-edge
// interrupt on pin 3, prints 'R', polls GPIORIS until the key is pressed, leaves
// GPIOMIS at RESULTS + 0, GICD_ISPENDR1 (INTIDs 32..63; SPI 7 = INTID 39 is bit 7) at
// + 8 and GPIORIS after GPIOIC cleared it at + 16, prints 'P' and waits.
	.include "a64.inc"
	.equ	GPIO, 0x09030000
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	ldr	x9, =GPIO
	mov	w1, #(1 << 3)
	str	w1, [x9, #0x40c]		// GPIOIEV: rising edge
	str	w1, [x9, #0x410]		// GPIOIE: pin 3
	mov	w2, #'R'
	bl	putc
wait:
	ldr	w3, [x9, #0x414]		// GPIORIS
	tbz	w3, #3, wait
	ldr	w4, [x9, #0x418]		// GPIOMIS
	str	x4, [x20, #0]
	ldr	x10, =GICD
	ldr	w5, [x10, #0x204]		// GICD_ISPENDR1
	str	x5, [x20, #8]
	str	w1, [x9, #0x41c]		// GPIOIC: clear pin 3's edge
	ldr	w6, [x9, #0x414]
	str	x6, [x20, #16]
	mov	w2, #'P'
	bl	putc
1:	wfe
	b	1b
	A64_LIB

// Self-modifying code with the MMU off (every page executable, so every page a store
// reaches may hold translated code): it must behave as the architecture says whatever
// the engine does to make stores fast.
//  1. code stored into a page that never ran, then executed;
//  2. the same instruction rewritten 64 times after it ran (each time with the
//     DC CVAU / DSB / IC IVAU / DSB / ISB sequence the architecture requires), with
//     word stores and, once, byte stores;
//  3. data stored into a page holding code that ran (the rewritten page and this one),
//     read back, and the code on that page still right.
// Prints "self-modifying code: ok" or "self-modifying code: FAIL <step>", then powers off.
	.include "a64.inc"
	.equ	MOVZ_X0, 0xd2800000		// movz x0, #imm16 is MOVZ_X0 | imm16 << 5
	.equ	RET, 0xd65f03c0
	.text
	.global _start
_start:
	ldr	x0, =0x40100000
	mov	sp, x0
	adr	x21, codepage			// a page no code has run from yet

	// 1. store before first execution: data first (the page is then written as a
	//    page without code), then the routine `movz x0, #1; ret`
	mov	x19, #1
	mov	x1, #0x800
1:	str	x1, [x21, x1]
	add	x1, x1, #8
	cmp	x1, #0x1000
	b.lt	1b
	ldr	w1, =(MOVZ_X0 | 1 << 5)
	str	w1, [x21]
	ldr	w1, =RET
	str	w1, [x21, #4]
	bl	sync_code
	mov	x0, #0
	blr	x21
	cmp	x0, #1
	b.ne	fail

	// 2. rewrite after execution: movz x0, #i for i = 2 .. 65
	mov	x19, #2
	mov	x22, #2
2:	ldr	w1, =MOVZ_X0
	orr	w1, w1, w22, lsl #5
	str	w1, [x21]
	bl	sync_code
	mov	x0, #0
	blr	x21
	cmp	x0, x22
	b.ne	fail
	add	x22, x22, #1
	cmp	x22, #66
	b.lt	2b
	// ... and once with byte stores: movz x0, #0x77
	mov	x19, #3
	ldr	w1, =(MOVZ_X0 | 0x77 << 5)
	strb	w1, [x21]
	lsr	w1, w1, #8
	strb	w1, [x21, #1]
	lsr	w1, w1, #8
	strb	w1, [x21, #2]
	lsr	w1, w1, #8
	strb	w1, [x21, #3]
	bl	sync_code
	mov	x0, #0
	blr	x21
	cmp	x0, #0x77
	b.ne	fail

	// 3. data into pages holding code that ran: the second half of the rewritten
	//    page (stored in step 1; rewrite it with other values and read it back)
	mov	x19, #4
	ldr	x24, =0x5a5a5a5a5a5a
	mov	x1, #0x800
3:	eor	x2, x1, x24
	str	x2, [x21, x1]
	add	x1, x1, #8
	cmp	x1, #0x1000
	b.lt	3b
	mov	x1, #0x800
4:	ldr	x2, [x21, x1]
	eor	x3, x1, x24
	cmp	x2, x3
	b.ne	fail
	add	x1, x1, #8
	cmp	x1, #0x1000
	b.lt	4b
	mov	x19, #5
	mov	x0, #0
	blr	x21				// the code on that page is unchanged
	cmp	x0, #0x77
	b.ne	fail
	// ... and this page, the one running now
	mov	x19, #6
	adr	x23, scratch
	mov	x1, #0
5:	add	x2, x1, #0x123
	str	x2, [x23, x1]
	ldr	x3, [x23, x1]
	cmp	x2, x3
	b.ne	fail
	add	x1, x1, #8
	cmp	x1, #256
	b.lt	5b

	adr	x0, ok_msg
	bl	puts
	b	poweroff
fail:
	adr	x0, fail_msg
	bl	puts
	mov	x4, x19
	bl	puthex
	bl	newline
	b	poweroff

// The architecture's sequence after writing instructions at x21 (one cache line).
sync_code:
	dc	cvau, x21
	dsb	ish
	ic	ivau, x21
	dsb	ish
	isb
	ret

	A64_LIB
	.ltorg
ok_msg:		.asciz "self-modifying code: ok\r\n"
fail_msg:	.asciz "self-modifying code: FAIL "
	.balign	8
scratch:	.space	256
	.balign	4096
codepage:	.space	4096

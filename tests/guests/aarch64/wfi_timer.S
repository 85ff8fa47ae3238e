// The generic timer (virtual): read the frequency and counter, program a short
// timeout, wait for ISTATUS, then WFI; also read an ID register (trapped by TID3
// when the VMM asks) and write a trapped system register.
	.equ RESULTS, 0x40010000
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	mrs	x1, cntfrq_el0
	str	x1, [x20, #0x00]
	mrs	x2, cntvct_el0
	str	x2, [x20, #0x08]
	mov	x3, #6250			// 100 us at 62.5 MHz
	msr	cntv_tval_el0, x3
	mov	x4, #1				// ENABLE, not masked
	msr	cntv_ctl_el0, x4
1:	mrs	x5, cntv_ctl_el0
	tbz	x5, #2, 1b			// until ISTATUS
	str	x5, [x20, #0x10]
	mrs	x6, cntv_cval_el0
	str	x6, [x20, #0x18]
	mrs	x7, cntvct_el0
	str	x7, [x20, #0x20]
	wfi
	mrs	x8, id_aa64mmfr0_el1		// trapped when HCR_EL2.TID3 is set
	str	x8, [x20, #0x28]
	hvc	#0

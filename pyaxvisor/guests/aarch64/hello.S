// pyaxvisor's bundled AArch64 guest: a bare-metal program for the QEMU virt board
// layout. It prints over the PL011, starts CPU 1 with PSCI CPU_ON (CPU 1 prints and
// turns itself off with CPU_OFF), takes a virtual-timer interrupt through the GICv2,
// and powers the machine off with PSCI SYSTEM_OFF. Built by build.sh.
	.equ UART, 0x09000000
	.equ GICD, 0x08000000
	.equ GICC, 0x08010000
	.equ PSCI_CPU_OFF, 0x84000002
	.equ PSCI_CPU_ON, 0xc4000003
	.equ PSCI_SYSTEM_OFF, 0x84000008

	.text
	.global _start
_start:
	adr	x0, msg_hello
	bl	puts
	// CPU_ON(target 1, entry secondary, context 0x5ec)
	ldr	x0, =PSCI_CPU_ON
	mov	x1, #1
	adr	x2, secondary
	mov	x3, #0x5ec
	hvc	#0
	cbz	x0, 1f
	adr	x0, msg_nocpu1
	bl	puts
	b	timer
1:	adr	x9, cpu1_done			// wait for CPU 1
2:	ldr	w10, [x9]
	cbz	w10, 2b
timer:
	// GIC: distributor and CPU interface on, PPI 27 (virtual timer) enabled
	ldr	x1, =GICD
	mov	w2, #1
	str	w2, [x1]			// GICD_CTLR
	mov	w2, #(1 << 27)
	str	w2, [x1, #0x100]		// GICD_ISENABLER0
	ldr	x1, =GICC
	mov	w2, #0xf0
	str	w2, [x1, #4]			// GICC_PMR
	mov	w2, #1
	str	w2, [x1]			// GICC_CTLR
	adr	x1, vectors
	msr	vbar_el1, x1
	// 10 ms: CNTV_TVAL = CNTFRQ / 100
	mrs	x1, cntfrq_el0
	mov	x2, #100
	udiv	x1, x1, x2
	msr	cntv_tval_el0, x1
	mov	x1, #1
	msr	cntv_ctl_el0, x1
	// Wait for the interrupt. IRQs stay masked while the flag is looked at, so the
	// interrupt cannot be taken between the look and the WFI (a WFI after it would
	// sleep for good: the timer is off by then). WFI wakes on a pending interrupt
	// even while it is masked; it is taken between the DAIFClr and the DAIFSet.
	msr	daifset, #2
	adr	x9, irq_seen
3:	ldr	w10, [x9]
	cbnz	w10, 5f
	wfi
	msr	daifclr, #2
	isb
	msr	daifset, #2
	b	3b
5:	adr	x0, msg_bye
	bl	puts
	ldr	x0, =PSCI_SYSTEM_OFF
	hvc	#0
	b	.

secondary:
	mov	x19, x0				// context ID
	adr	x0, msg_cpu1
	bl	puts
	adr	x9, cpu1_done
	mov	w10, #1
	str	w10, [x9]
	ldr	x0, =PSCI_CPU_OFF
	hvc	#0
	b	.				// CPU_OFF does not return

// puts(x0 = NUL-terminated string): poll UARTFR.TXFF, write UARTDR. Uses x0-x3.
puts:
	ldr	x1, =UART
1:	ldrb	w2, [x0], #1
	cbz	w2, 3f
2:	ldr	w3, [x1, #0x18]
	tbnz	w3, #5, 2b
	str	w2, [x1]
	b	1b
3:	ret

// The IRQ handler: taken only inside the wait loop above, so it may use x0-x3 and
// x11, x20, x21 (nothing there needs them).
irq:
	ldr	x11, =GICC
	ldr	w21, [x11, #0xc]		// GICC_IAR (kept in w21: puts uses x0-x3)
	and	w3, w21, #0x3ff
	cmp	w3, #27
	b.ne	4f
	msr	cntv_ctl_el0, xzr		// timer off: the level drops
	adr	x11, irq_seen
	mov	w3, #1
	str	w3, [x11]
	mov	x20, x30
	adr	x0, msg_irq
	bl	puts
	mov	x30, x20
	ldr	x11, =GICC
4:	str	w21, [x11, #0x10]		// GICC_EOIR
	eret

	.balign 0x800
vectors:
	.rept 5
	.balign 0x80
	b	.
	.endr
	.balign 0x80				// 0x280: current EL with SP_ELx, IRQ
	b	irq
	.rept 10
	.balign 0x80
	b	.
	.endr

	.balign 8
cpu1_done:	.word 0
irq_seen:	.word 0
msg_hello:	.asciz "Hello from the pyaxvisor AArch64 guest on CPU 0\r\n"
msg_cpu1:	.asciz "CPU 1 is up (PSCI CPU_ON)\r\n"
msg_nocpu1:	.asciz "CPU 1 did not start (run with --smp 2)\r\n"
msg_irq:	.asciz "virtual timer interrupt 27 taken through the GICv2\r\n"
msg_bye:	.asciz "powering off (PSCI SYSTEM_OFF)\r\n"

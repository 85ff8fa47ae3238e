// Exits the metrics tests know in advance (run with -smp 2 --trap-mmio): vCPU 0
// stores "0123456789" to the PL011's data register (10 one-byte MMIO writes, no
// reads), starts vCPU 1 (PSCI CPU_ON: one CpuUp) and waits for its flag; vCPU 1
// stores "abcde" (5 writes), sets the flag and turns itself off (CPU_OFF: one
// CpuDown); vCPU 0 stores "\n" (1 write) and powers off (SYSTEM_OFF: one SystemDown).
	.include "a64.inc"
	.equ	PSCI_CPU_ON, 0xc4000003
	.equ	PSCI_CPU_OFF, 0x84000002
	.text
	.global _start
_start:
	ldr	x21, =UART
	mov	w1, #'0'
1:	strb	w1, [x21]
	add	w1, w1, #1
	cmp	w1, #'9'
	b.le	1b
	ldr	x0, =PSCI_CPU_ON
	mov	x1, #1
	ldr	x2, =secondary
	mov	x3, #0
	hvc	#0
	ldr	x22, =flag
2:	ldr	w1, [x22]
	cbz	w1, 2b
	dmb	ish
	mov	w1, #'\n'
	strb	w1, [x21]
	ldr	x0, =PSCI_SYSTEM_OFF
	hvc	#0
	b	.
secondary:
	ldr	x21, =UART
	mov	w1, #'a'
3:	strb	w1, [x21]
	add	w1, w1, #1
	cmp	w1, #'e'
	b.le	3b
	dmb	ish
	ldr	x22, =flag
	mov	w1, #1
	str	w1, [x22]
	ldr	x0, =PSCI_CPU_OFF
	hvc	#0
	b	.
	.ltorg
	.balign	8
flag:	.long	0

// SMCCC calls pyaxvisor does not implement, over HVC and SMC, each of which must get
// NOT_SUPPORTED (-1) in X0 (results at RESULTS + 8 * n): plain numbers, an invalid
// fast-call ID, a yielding call, and the vendor hypervisor's general queries Linux makes
// (call UID 0x8600ff01, revision 0xc600ff03). Then a call in pyaxvisor's own hypercall
// range, 0xc6000042 with X1 = 7 and X2 = 8, which the virt board does not serve.
	.include "a64.inc"
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	ldr	x0, =0x539
	hvc	#0
	str	x0, [x20, #0x00]
	ldr	x0, =0xdeadbeef
	hvc	#0
	str	x0, [x20, #0x08]
	ldr	x0, =0x4b000000
	smc	#0
	str	x0, [x20, #0x10]
	ldr	x0, =0x8600ff01
	hvc	#0
	str	x0, [x20, #0x18]
	ldr	x0, =0xc600ff03
	smc	#0
	str	x0, [x20, #0x20]
	ldr	x0, =0x12345
	hvc	#0
	str	x0, [x20, #0x28]
	ldr	x0, =0xc6000042
	mov	x1, #7
	mov	x2, #8
	hvc	#0
	b	.

// Hypercalls and PSCI over HVC and SMC. Results are stored at RESULTS for the test.
	.equ RESULTS, 0x40010000
	.text
	.global _start
_start:
	ldr	x20, =RESULTS
	str	x0, [x20, #0x00]		// x0 at entry: the DTB address
	// a plain hypercall: nr in x0, six arguments in x1..x6
	ldr	x0, =0x12345
	mov	x1, #1
	mov	x2, #2
	mov	x3, #3
	mov	x4, #4
	mov	x5, #5
	mov	x6, #6
	hvc	#0
	str	x0, [x20, #0x08]		// the return value the VMM set
	// PSCI_VERSION (answered inside the vCPU)
	ldr	x0, =0x84000000
	hvc	#0
	str	x0, [x20, #0x10]
	// PSCI_FEATURES(CPU_ON 64-bit) over SMC
	ldr	x0, =0x8400000a
	ldr	x1, =0xc4000003
	smc	#0
	str	x0, [x20, #0x18]
	// CPU_ON(target MPIDR 1, entry, context) as SMC64 over HVC
	ldr	x0, =0xc4000003
	mov	x1, #1
	ldr	x2, =secondary
	ldr	x3, =0xc0ffee
	hvc	#0
	str	x0, [x20, #0x20]
	// an unknown SMCCC call is refused inside the vCPU
	ldr	x0, =0x8400ff00
	hvc	#0
	str	x0, [x20, #0x28]
	// SYSTEM_OFF over SMC
	ldr	x0, =0x84000008
	smc	#0
	b	.
secondary:
	b	.

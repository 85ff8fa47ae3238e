// Hostile: spins forever on every vCPU. vCPU 0 starts vCPU 1 (PSCI CPU_ON) in the
// same loop, then spins too; only the VMM's timeout stops them.
	.equ RESULTS, 0x40010000
	.text
	.global _start, spin, spin_end
_start:
	ldr	x20, =RESULTS
	ldr	x0, =0xc4000003			// CPU_ON(target 1, spin, context 0)
	mov	x1, #1
	ldr	x2, =spin
	mov	x3, #0
	hvc	#0
	str	x0, [x20]			// CPU_ON's return value
	mov	x0, #0
spin:
	add	x0, x0, #1
	b	spin
spin_end:

// Hostile: PSCI CPU_ON abuse on a 2-CPU VM. Each call's x0 goes to the next slot
// of RESULTS (slot count at RESULTS + 0x7f8):
//   CPU_ON(self), CPU_ON(MPIDR 7: no such CPU), CPU_ON(every affinity bit set),
//   then ROUNDS times: CPU_ON(1, secondary, round) and again at once (it is on or
//   being turned on); vCPU 1 counts its starts at MARK + 8, stores round + 1 at
//   MARK and turns itself off
//   (CPU_OFF); vCPU 0 waits for the mark and for AFFINITY_INFO(1) to say OFF.
// x0 at entry = 1 instead: one CPU_ON(1) with an entry point where there is no
// RAM; vCPU 0 powers off if the call failed and spins if it succeeded.
	.equ RESULTS, 0x40010000
	.equ MARK, 0x40011000
	.equ ROUNDS, 20
	.equ CPU_ON, 0xc4000003
	.text
	.global _start, secondary, bad_entry_done
	.macro	CALL_CPU_ON target, entry, context
	ldr	x0, =CPU_ON
	ldr	x1, =\target
	ldr	x2, =\entry
	mov	x3, \context
	hvc	#0
	str	x0, [x20, x21, lsl #3]
	add	x21, x21, #1
	str	x21, [x20, #0x7f8]
	.endm
_start:
	ldr	x20, =RESULTS
	mov	x21, #0
	cbnz	x0, bad_entry
	CALL_CPU_ON 0, secondary, #0
	CALL_CPU_ON 7, secondary, #0
	CALL_CPU_ON 0xff00ffffff, secondary, #0
	ldr	x22, =MARK
	mov	x23, #0				// round
1:	CALL_CPU_ON 1, secondary, x23
	CALL_CPU_ON 1, secondary, x23
	add	x24, x23, #1
2:	ldr	x1, [x22]			// wait for vCPU 1's mark
	cmp	x1, x24
	b.ne	2b
3:	ldr	x0, =0xc4000004			// AFFINITY_INFO(1, level 0)
	mov	x1, #1
	mov	x2, #0
	hvc	#0
	cmp	x0, #1				// OFF
	b.ne	3b
	mov	x23, x24
	cmp	x23, #ROUNDS
	b.ne	1b
	ldr	x0, =0x84000008			// SYSTEM_OFF
	hvc	#0
	b	.
bad_entry:
	CALL_CPU_ON 1, 0x7000000000, #0
	ldr	x0, [x20]
bad_entry_done:
	cbz	x0, .
	ldr	x0, =0x84000008
	hvc	#0
	b	.
secondary:
	ldr	x1, =MARK
	ldr	x2, [x1, #8]			// MARK + 8 counts vCPU 1's starts
	add	x2, x2, #1
	str	x2, [x1, #8]
	add	x0, x0, #1
	str	x0, [x1]
	dmb	ish
	ldr	x0, =0x84000002			// CPU_OFF
	hvc	#0
	b	.

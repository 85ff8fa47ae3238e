// SMP stress of the exclusive-access instructions: every CPU of the VM hammers the
// same few words of memory at once, and the boot CPU checks afterwards that no
// update was lost and no neighbouring byte was clobbered.
//
// The CPU model is a Cortex-A72 (ARMv8.0-A): it has no LSE atomics, so LDADD, CAS,
// SWP and friends would be UNDEFINED. Everything here is built from load/store
// exclusive pairs (LDXR/STXR and their acquire/release, pair and byte forms) only.
//
// Entry: x0 = how many CPUs to use (1..8; the test passes it where a kernel would
// get its device tree, as the hostile guests receive their case). The boot CPU
// starts CPUs 1..n-1 with PSCI CPU_ON (MPIDR Aff0 = i, context ID = i), every CPU
// meets the others at a start barrier, then runs ITERS rounds of:
//   a) counter64 += 1 with LDXR/STXR;
//   b) take a spinlock (LDAXR/STXR, released with STLR) and do a plain
//      LDR/ADD/STR on plain_counter under it;
//   c) pair += (1, 2) with LDXP/STXP on a 16-byte-aligned pair of doublewords
//      (different steps, so swapped halves show);
//   d) counter32 += 1 with 32-bit LDXR/STXR (the next word is a guard that must
//      survive), and its own byte of byte_counters += 1 with LDXRB/STXRB (the
//      eight bytes share one doubleword; bytes of CPUs not in the run keep a
//      guard value).
// Each exclusive window (and the lock's critical section) has a forward branch in
// it: the software CPU only switches vCPUs between translation blocks, and a branch
// ends one, so another CPU can run between the load-exclusive and the
// store-exclusive; without it the window would never be interrupted.
//
// Then each CPU adds one to `done` (LDAXR/STLXR); the secondaries turn themselves off
// (PSCI CPU_OFF). The boot CPU waits until done = n and prints on the PL011
//   "atomics_smp: <n> CPUs, iterations <ITERS in 16 hex digits>",
// one line per value checked,
//   "<name> got=<16 hex digits> want=<16 hex digits> ok" (or "BAD"),
// how often the CPUs collided (summed over the CPUs; for the record, not checked),
//   "contention stxr_failures=<16 hex digits> lock_waits=<16 hex digits>",
// and then "atomics_smp: PASS" and powers off (PSCI SYSTEM_OFF), or
// "atomics_smp: FAIL" and makes the hypercall ATOMICS_FAILED (x1 = how many values
// were wrong), which pyaxvisor does not serve: the VM stops with an error naming it.
// A CPU_ON that fails, a count out of range or an unexpected exception also end
// the run with a hypercall (never a power-off).
//
// The guest runs with the MMU off, so its memory is Device-nGnRnE: real hardware
// need not support exclusives there, the emulated CPU does. Every access here is
// naturally aligned (Device memory faults on unaligned ones).
	.include "a64.inc"
	.equ	ITERS, 1000000
	.equ	MAX_CPUS, 8			// one byte each in byte_counters
	.equ	PSCI_CPU_ON, 0xc4000003
	.equ	PSCI_CPU_OFF, 0x84000002
	.equ	ATOMICS_FAILED, 0xc600fa11	// pyaxvisor's range, served by nobody
	.equ	GUARD8, 0xa5
	.equ	GUARD32, 0x5a5a5a5a
	.equ	GUARD64, 0xa5a5a5a5a5a5a5a5

	.text
	.global	_start, secondary, work, counter64, lock, plain_counter, pair
	.global	counter32, byte_counters, done, ncpus, stxr_failures, lock_waits
_start:
	adr	x1, vectors
	msr	vbar_el1, x1
	isb
	mov	x19, x0				// CPU count
	cbz	x19, bad_count
	cmp	x19, #MAX_CPUS
	b.hi	bad_count
	adr	x1, ncpus
	str	x19, [x1]
	// this run's bytes start at 0; the others keep GUARD8
	adr	x1, byte_counters
	mov	x2, #0
1:	strb	wzr, [x1, x2]
	add	x2, x2, #1
	cmp	x2, x19
	b.ne	1b
	dsb	ish
	// CPU_ON(i, secondary, i) for i = 1 .. n-1
	mov	x20, #1
2:	cmp	x20, x19
	b.eq	3f
	ldr	x0, =PSCI_CPU_ON
	mov	x1, x20
	adr	x2, secondary
	mov	x3, x20
	hvc	#0
	cbnz	x0, cpu_on_failed
	add	x20, x20, #1
	b	2b
3:	mov	x20, #0				// this CPU's index
	b	work

secondary:
	adr	x1, vectors
	msr	vbar_el1, x1
	isb
	mov	x20, x0				// the context ID: this CPU's index

// Every CPU: x20 = its index.
work:
	adr	x1, ncpus
	ldr	x19, [x1]
	// start barrier: count in, wait for the others
	adr	x9, ready
1:	ldaxr	x10, [x9]
	add	x10, x10, #1
	stlxr	w11, x10, [x9]
	cbnz	w11, 1b
2:	ldar	x10, [x9]
	cmp	x10, x19
	b.ne	2b

	adr	x22, counter64
	adr	x23, lock
	adr	x24, plain_counter
	adr	x25, pair
	adr	x26, counter32
	adr	x27, byte_counters
	add	x27, x27, x20			// this CPU's byte
	ldr	x21, =ITERS
	mov	w12, #1				// the lock's "held" value
	mov	x16, #0				// failed store-exclusives
	mov	x17, #0				// looks at a lock another CPU held
round:
	// a) 64-bit counter
1:	ldxr	x1, [x22]
	add	x1, x1, #1
	b	11f				// a TB boundary inside the window
11:	stxr	w2, x1, [x22]
	add	x16, x16, x2			// count failed store-exclusives
	cbnz	w2, 1b

	// b) spinlock around a plain increment
2:	ldaxr	w1, [x23]
	cbz	w1, 20f
	add	x17, x17, #1			// held by another CPU: count, look again
	b	2b
20:	b	21f
21:	stxr	w2, w12, [x23]
	add	x16, x16, x2
	cbnz	w2, 2b
	ldr	x1, [x24]
	add	x1, x1, #1
	b	22f				// may switch CPUs while the lock is held
22:	str	x1, [x24]
	stlr	wzr, [x23]

	// c) the pair: low += 1, high += 2
3:	ldxp	x1, x4, [x25]
	add	x1, x1, #1
	add	x4, x4, #2
	b	31f
31:	stxp	w2, x1, x4, [x25]
	add	x16, x16, x2
	cbnz	w2, 3b

	// d) 32-bit counter, then this CPU's byte
4:	ldxr	w1, [x26]
	add	w1, w1, #1
	b	41f
41:	stxr	w2, w1, [x26]
	add	x16, x16, x2
	cbnz	w2, 4b
5:	ldxrb	w1, [x27]
	add	w1, w1, #1
	b	51f
51:	stxrb	w2, w1, [x27]
	add	x16, x16, x2
	cbnz	w2, 5b

	subs	x21, x21, #1
	b.ne	round

	// leave this CPU's contention counts, count out; the secondaries are finished
	adr	x9, stxr_failures
	str	x16, [x9, x20, lsl #3]
	adr	x9, lock_waits
	str	x17, [x9, x20, lsl #3]
	adr	x9, done
6:	ldaxr	x10, [x9]
	add	x10, x10, #1
	stlxr	w11, x10, [x9]
	cbnz	w11, 6b
	cbz	x20, collect
	ldr	x0, =PSCI_CPU_OFF
	hvc	#0
	b	unexpected			// CPU_OFF does not return

// The boot CPU: wait for every CPU, then compare and report. x28 counts mismatches.
collect:
7:	ldar	x10, [x9]
	cmp	x10, x19
	b.ne	7b
	mov	x28, #0
	adr	x0, msg_head
	bl	puts
	add	w2, w19, #'0'
	bl	putc
	adr	x0, msg_cpus
	bl	puts
	ldr	x4, =ITERS
	bl	puthex
	bl	newline

	ldr	x13, =ITERS
	mul	x14, x13, x19			// CPUS * ITERS
	adr	x0, name_counter64
	ldr	x9, [x22]
	mov	x10, x14
	bl	check
	adr	x0, name_plain
	ldr	x9, [x24]
	mov	x10, x14
	bl	check
	adr	x0, name_lock
	ldr	x9, [x23]
	mov	x10, #0				// free at the end
	bl	check
	adr	x0, name_pair_low
	ldr	x9, [x25]
	mov	x10, x14
	bl	check
	adr	x0, name_pair_high
	ldr	x9, [x25, #8]
	lsl	x10, x14, #1
	bl	check
	adr	x0, name_counter32
	ldr	x9, [x26]			// the counter and its guard word above it
	ldr	x10, =GUARD32 << 32
	orr	x10, x10, x14
	bl	check
	// byte i < n: ITERS mod 256; the rest GUARD8
	adr	x1, byte_counters
	ldr	x10, =GUARD64
	and	x11, x13, #0xff
	mov	x2, #0
8:	lsl	x3, x2, #3
	mov	x4, #0xff
	lsl	x4, x4, x3
	bic	x10, x10, x4
	lsl	x4, x11, x3
	orr	x10, x10, x4
	add	x2, x2, #1
	cmp	x2, x19
	b.ne	8b
	ldr	x9, [x1]
	adr	x0, name_bytes
	bl	check
	adr	x0, name_done
	adr	x1, done
	ldr	x9, [x1]
	mov	x10, x19
	bl	check

	// how often the CPUs actually collided (for the record, not checked here)
	adr	x0, msg_contention
	bl	puts
	adr	x1, stxr_failures
	bl	sum_cpus
	bl	puthex
	adr	x0, msg_lock_waits
	bl	puts
	adr	x1, lock_waits
	bl	sum_cpus
	bl	puthex
	bl	newline

	cbnz	x28, failed
	adr	x0, msg_pass
	bl	puts
	b	poweroff
failed:
	adr	x0, msg_fail
	bl	puts
	ldr	x0, =ATOMICS_FAILED
	mov	x1, x28
	mov	x2, #0				// the other arguments: nothing to say
	mov	x3, #0
	mov	x4, #0
	mov	x5, #0
	mov	x6, #0
	hvc	#0
	b	.

// check(x0 = name, x9 = value, x10 = expected): print the line, count a mismatch in
// x28. Uses x0-x7, x15.
check:
	mov	x15, x30
	bl	puts
	adr	x0, msg_got
	bl	puts
	mov	x4, x9
	bl	puthex
	adr	x0, msg_want
	bl	puts
	mov	x4, x10
	bl	puthex
	adr	x0, msg_ok
	cmp	x9, x10
	b.eq	1f
	add	x28, x28, #1
	adr	x0, msg_bad
1:	bl	puts
	bl	newline
	ret	x15

// sum_cpus(x1 = an array of doublewords, one per CPU): x4 = the sum of the first
// x19. Uses x1-x3.
sum_cpus:
	mov	x4, #0
	mov	x2, #0
1:	ldr	x3, [x1, x2, lsl #3]
	add	x4, x4, x3
	add	x2, x2, #1
	cmp	x2, x19
	b.ne	1b
	ret

bad_count:
	adr	x0, msg_bad_count
	bl	puts
	ldr	x0, =ATOMICS_FAILED
	mov	x1, #-1
	mov	x2, x19
	hvc	#0
	b	.
cpu_on_failed:
	mov	x21, x0
	adr	x0, msg_cpu_on
	bl	puts
	mov	x4, x20
	bl	puthex
	adr	x0, msg_returned
	bl	puts
	mov	x4, x21
	bl	puthex
	bl	newline
	ldr	x0, =ATOMICS_FAILED
	mov	x1, #-2
	mov	x2, x20
	mov	x3, x21
	hvc	#0
	b	.

	A64_LIB
	.ltorg

msg_head:	.asciz	"atomics_smp: "
msg_cpus:	.asciz	" CPUs, iterations "
msg_got:	.asciz	" got="
msg_want:	.asciz	" want="
msg_ok:		.asciz	" ok"
msg_bad:	.asciz	" BAD"
msg_contention:	.asciz	"contention stxr_failures="
msg_lock_waits:	.asciz	" lock_waits="
msg_pass:	.asciz	"atomics_smp: PASS\r\n"
msg_fail:	.asciz	"atomics_smp: FAIL\r\n"
msg_bad_count:	.asciz	"atomics_smp: FAIL: the CPU count in x0 must be 1..8\r\n"
msg_cpu_on:	.asciz	"atomics_smp: FAIL: CPU_ON of CPU "
msg_returned:	.asciz	" returned "
name_counter64:	.asciz	"counter64"
name_plain:	.asciz	"plain_counter"
name_lock:	.asciz	"lock"
name_pair_low:	.asciz	"pair_low"
name_pair_high:	.asciz	"pair_high"
name_counter32:	.asciz	"counter32"
name_bytes:	.asciz	"byte_counters"
name_done:	.asciz	"done"

// The shared data, in the image (the loader zeroes nothing else for us). Each group
// sits in its own 64-byte block.
	.balign	64
counter64:	.quad	0
	.balign	64
lock:		.quad	0
plain_counter:	.quad	0
	.balign	64
pair:		.quad	0, 0
	.balign	64
counter32:	.word	0, GUARD32
	.balign	64
byte_counters:	.quad	GUARD64
	.balign	64
ready:		.quad	0
done:		.quad	0
ncpus:		.quad	0
stxr_failures:	.fill	MAX_CPUS, 8, 0
lock_waits:	.fill	MAX_CPUS, 8, 0

	VECTORS	unexpected, unexpected, unexpected, unexpected

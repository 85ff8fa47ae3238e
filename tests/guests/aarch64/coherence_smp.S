// Broadcast cache and TLB maintenance between two CPUs: what one CPU changes (code,
// or a page table entry) and announces with the architecture's IS maintenance, the
// other CPU must see, even though it has the old code translated or the old
// translation in its TLB.
//
// Entry: x0 = how many CPUs the VM has (at least 2; the test passes it where a kernel
// would get its device tree). CPU0 turns its stage-1 MMU on, starts CPU1 with PSCI
// CPU_ON (MPIDR Aff0 = 1), which turns its own MMU on with the same tables, and then
// runs each case of the table `cases` with it:
//
//   1. CPU0 names the case (kind, target) and raises `go`.
//   2. CPU1 runs a tight loop: use the target (code: call it; TLB: load from it),
//      publish the value in `seen`, bump `count`, look at `flag`; until flag is set.
//   3. CPU0 waits until count >= WARM (CPU1 has the old code translated / the old
//      translation in its TLB, and keeps using it), keeps `seen` (must be the old
//      value), makes the change and its maintenance sequence exactly as the
//      architecture requires, and only then sets `flag` (store-release).
//   4. CPU1 sees the flag (load-acquire), executes ISB, uses the target once more and
//      answers with that value in `result` (and the case number in `done`). It does
//      no maintenance of its own (except in code_local_ic_iallu): what makes it see
//      the change must be CPU0's broadcast maintenance.
//   5. CPU0 prints "<case> ok", or "<case> BAD got=<hex> want=<hex>" (with
//      " before" when it was CPU1's value before the change that was wrong).
//
// The cases:
//   code_ic_ivau      f's first instruction "b old" (old: movz x0, #1; ret) becomes
//                     "b new" (movz x0, #2; ret); STR, DC CVAU, DSB ISH, IC IVAU,
//                     DSB ISH, ISB. CPU1 must then get 2 from f.
//   code_ic_ialluis   the same on another page with IC IALLUIS (new value 3).
//   code_local_ic_iallu  the same on a third page (new value 4) without any IC on
//                     CPU0: STR, DC CVAU, DSB ISH; CPU1, after seeing the flag,
//                     invalidates its own instruction cache: IC IALLU, DSB NSH, ISB
//                     (the other way the architecture allows).
//   tlbi_<op>         the last-level entry of a virtual page V (one V per case) points
//                     at page p_old and is changed to p_new; STR, DSB ISHST,
//                     TLBI <op>, DSB ISH, ISB. CPU1 must then load NEW_VAL from V.
//                     <op>: vae1is, vmalle1is, aside1is (V's entry is non-global,
//                     ASID 0), vaae1is, vale1is, vaale1is.
// Only B instructions are rewritten while CPU1 may be executing them: B -> B is one
// of the modifications the architecture allows concurrently with execution (the
// other CPU executes either the old or the new one), a MOVZ -> MOVZ is not.
//
// Then CPU0 sends CPU1 away (go = -1: CPU1 answers and turns itself off with
// PSCI CPU_OFF), waits until AFFINITY_INFO says it is off, prints
// "coherence_smp: PASS" and powers off (PSCI SYSTEM_OFF), or "coherence_smp: FAIL"
// and makes the hypercall COHERENCE_FAILED (x1 = how many cases failed), which
// pyaxvisor does not serve: the VM stops with an error naming it. A bad CPU count,
// a CPU_ON that fails or an unexpected exception also end the run with a hypercall.
//
// Memory map (TTBR0, 4 KiB granule, 39-bit VA, walks start at level 1):
//   VA 0x0000_0000 + 1 GiB: 1:1 block, Device-nGnRnE, never executable (UART, GIC)
//   VA 0x4000_0000 + 1 GiB: 1:1 block, Normal write-back, inner shareable (RAM)
//   VA 0x8000_0000 + 4 KiB * i: the test pages V_i (level-3 entries in l3_table)
	.include "a64.inc"
	.equ	PSCI_CPU_ON, 0xc4000003
	.equ	PSCI_CPU_OFF, 0x84000002
	.equ	PSCI_AFFINITY_INFO, 0xc4000004
	.equ	COHERENCE_FAILED, 0xc600fa11	// pyaxvisor's range, served by nobody
	.equ	WARM, 0x4000			// CPU1's rounds before CPU0 changes anything
	.equ	OLD_VAL, 0x1111111111111111	// at p_old
	.equ	NEW_VAL, 0x2222222222222222	// at p_new
	.equ	VBASE, 0x80000000		// V_0; V_i = VBASE + i * 4 KiB
	.equ	KIND_CODE, 0
	.equ	KIND_TLB, 1
	.equ	KIND_CODE_LOCAL, 2		// code; CPU1 invalidates its I-cache itself
	.equ	B_OP, 0x14000000		// b: B_OP | ((target - pc) >> 2 & 0x3ffffff)
	// MAIR_EL1: attribute 0 Device-nGnRnE, attribute 1 Normal write-back
	.equ	MAIR, 0xff00
	// TCR_EL1: T0SZ = 25, walks write-back cacheable and inner shareable, TG0 4 KiB,
	// EPD1 (no TTBR1 walks), IPS 40 bits
	.equ	TCR, 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32)
	.equ	SCTLR_MCI, (1 << 0) | (1 << 2) | (1 << 12)	// M, C, I
	// descriptors: AttrIndx [4:2], AP [7:6] = 0 (EL1 read/write), SH [9:8],
	// AF bit 10, nG bit 11, PXN/UXN bits 53/54
	.equ	XN, 3 << 53
	.equ	DEV_BLOCK, 1 | (1 << 10) | XN
	.equ	RAM_BLOCK, 1 | (1 << 2) | (3 << 8) | (1 << 10)
	.equ	TABLE, 3
	.equ	DATA_PAGE, 3 | (1 << 2) | (3 << 8) | (1 << 10) | XN
	.equ	NG, 1 << 11
	// the shared block: written by CPU0 (and COUNT and SEEN zeroed by it while CPU1
	// waits for the next case)
	.equ	GO, 0
	.equ	KIND, 8
	.equ	TARGET, 16
	.equ	FLAG, 24
	// ... and by CPU1, on a cache line of its own
	.equ	COUNT, 64
	.equ	SEEN, 72
	.equ	RESULT, 80
	.equ	DONE, 88
	// a case: name, kind, target, what to patch, new stub / new descriptor, the value
	// before, the value after, maintenance routine
	.equ	CASE_SIZE, 64

	.text
	.global	_start, secondary, cases, shared, fa, fb, fc, l3_table, p_old, p_new
_start:
	adr	x1, vectors
	msr	vbar_el1, x1
	isb
	mov	x19, x0				// CPU count
	cmp	x19, #2
	b.lo	bad_count
	bl	mmu_on
	ldr	x0, =PSCI_CPU_ON
	mov	x1, #1
	adr	x2, secondary
	mov	x3, #1
	hvc	#0
	cbnz	x0, cpu_on_failed

	adr	x0, msg_head
	bl	puts
	adr	x22, shared
	mov	x28, #0				// cases that failed
	mov	x20, #0				// case number
	adr	x19, cases
1:	ldr	x0, [x19]
	cbz	x0, 2f
	add	x20, x20, #1
	bl	run_case
	add	x19, x19, #CASE_SIZE
	b	1b

	// send CPU1 away and wait until it is off
2:	mov	x1, #-1
	add	x2, x22, #GO
	stlr	x1, [x2]
	add	x2, x22, #DONE
3:	ldar	x3, [x2]
	cmn	x3, #1
	b.ne	3b
4:	ldr	x0, =PSCI_AFFINITY_INFO
	mov	x1, #1
	mov	x2, #0
	hvc	#0
	cbz	x0, 4b				// ON
	cmp	x0, #2				// ON_PENDING (1: OFF; negative: cannot tell)
	b.eq	4b
	cbnz	x28, failed
	adr	x0, msg_pass
	bl	puts
	b	poweroff
failed:
	adr	x0, msg_fail
	bl	puts
	ldr	x0, =COHERENCE_FAILED
	mov	x1, x28
	mov	x2, #0
	mov	x3, #0
	mov	x4, #0
	mov	x5, #0
	mov	x6, #0
	hvc	#0
	b	.

// One case (CPU0): x19 = its entry in `cases`, x20 = its number (1, 2, ...),
// x22 = shared. Counts a failure in x28. Uses x0-x17, x21, x27, x29.
run_case:
	mov	x29, x30
	ldr	x10, [x19, #8]			// kind
	ldr	x11, [x19, #16]			// target
	ldr	x21, [x19, #24]			// what to patch
	ldr	x12, [x19, #32]			// the new stub / the new descriptor
	ldr	x13, [x19, #40]			// CPU1's value before
	ldr	x14, [x19, #48]			// ... and after
	ldr	x15, [x19, #56]			// the maintenance routine
	str	xzr, [x22, #FLAG]
	str	x10, [x22, #KIND]
	str	x11, [x22, #TARGET]
	str	xzr, [x22, #COUNT]		// CPU1's until it answers: idle now
	str	xzr, [x22, #SEEN]
	add	x1, x22, #GO
	stlr	x20, [x1]			// publishes the five above too
	// CPU1 must be warm: WARM rounds since this case began
	add	x1, x22, #COUNT
1:	ldar	x2, [x1]
	cmp	x2, #WARM
	b.lo	1b
	ldr	x16, [x22, #SEEN]		// written before that count
	cmp	x10, #KIND_TLB
	b.eq	2f
	sub	x1, x12, x21			// code: "b new" at f
	ubfx	x1, x1, #2, #26
	mov	w2, #B_OP
	orr	w1, w1, w2
	str	w1, [x21]
	b	3f
2:	str	x12, [x21]			// TLB: the new descriptor
3:	blr	x15				// the maintenance sequence
	mov	x1, #1
	add	x2, x22, #FLAG
	stlr	x1, [x2]
	add	x1, x22, #DONE			// CPU1's answer
4:	ldar	x2, [x1]
	cmp	x2, x20
	b.ne	4b
	ldr	x17, [x22, #RESULT]

	ldr	x0, [x19]
	bl	puts
	mov	x9, x16
	mov	x10, x13
	cmp	x9, x10
	b.ne	5f
	mov	x9, x17
	mov	x10, x14
	cmp	x9, x10
	b.ne	6f
	adr	x0, msg_ok
	bl	puts
	b	7f
5:	bl	bad
	adr	x0, msg_before
	bl	puts
	b	7f
6:	bl	bad
7:	bl	newline
	ret	x29

// bad(x9 = got, x10 = want): print " BAD got=... want=...", count it in x28.
bad:
	mov	x27, x30
	add	x28, x28, #1
	adr	x0, msg_bad
	bl	puts
	mov	x4, x9
	bl	puthex
	adr	x0, msg_want
	bl	puts
	mov	x4, x10
	bl	puthex
	ret	x27

// The maintenance sequences (CPU0, after the store): x21 = the patched address,
// x11 = the target (f, or V). Use x1 only.
m_ic_ivau:
	dc	cvau, x21
	dsb	ish
	ic	ivau, x21
	dsb	ish
	isb
	ret
m_ic_ialluis:
	dc	cvau, x21
	dsb	ish
	ic	ialluis
	dsb	ish
	isb
	ret
m_dc_cvau:					// CPU1 invalidates its I-cache itself
	dc	cvau, x21
	dsb	ish
	ret
m_vae1is:
	dsb	ishst
	lsr	x1, x11, #12			// VA[55:12], ASID 0
	tlbi	vae1is, x1
	dsb	ish
	isb
	ret
m_vmalle1is:
	dsb	ishst
	tlbi	vmalle1is
	dsb	ish
	isb
	ret
m_aside1is:
	dsb	ishst
	mov	x1, #0				// ASID 0 in bits 63:48
	tlbi	aside1is, x1
	dsb	ish
	isb
	ret
m_vaae1is:
	dsb	ishst
	lsr	x1, x11, #12
	tlbi	vaae1is, x1
	dsb	ish
	isb
	ret
m_vale1is:
	dsb	ishst
	lsr	x1, x11, #12
	tlbi	vale1is, x1
	dsb	ish
	isb
	ret
m_vaale1is:
	dsb	ishst
	lsr	x1, x11, #12
	tlbi	vaale1is, x1
	dsb	ish
	isb
	ret

// Stage-1 translation on with the tables at l1_table (each CPU). Uses x1, x2.
mmu_on:
	ldr	x1, =MAIR
	msr	mair_el1, x1
	ldr	x1, =TCR
	msr	tcr_el1, x1
	adr	x1, l1_table			// ASID 0
	msr	ttbr0_el1, x1
	isb
	tlbi	vmalle1				// nothing left from before (this CPU only)
	dsb	nsh
	mrs	x1, sctlr_el1
	ldr	x2, =SCTLR_MCI
	orr	x1, x1, x2
	msr	sctlr_el1, x1
	isb
	ret

// CPU1: x0 = the context ID.
secondary:
	adr	x1, vectors
	msr	vbar_el1, x1
	isb
	bl	mmu_on
	adr	x22, shared
	mov	x20, #0				// the last case seen
wait_case:
	add	x1, x22, #GO
1:	ldar	x2, [x1]
	cmp	x2, x20
	b.eq	1b
	mov	x20, x2
	cmn	x20, #1
	b.eq	go_off
	ldr	x10, [x22, #KIND]
	ldr	x11, [x22, #TARGET]
	add	x23, x22, #COUNT
	add	x24, x22, #FLAG
	mov	x12, #0
	cmp	x10, #KIND_TLB
	b.eq	tlb_loop
code_loop:
	blr	x11
	str	x0, [x22, #SEEN]
	add	x12, x12, #1
	stlr	x12, [x23]
	ldar	x1, [x24]
	cbz	x1, code_loop
	cmp	x10, #KIND_CODE_LOCAL
	b.ne	1f
	ic	iallu
	dsb	nsh
1:	isb
	blr	x11
	b	answer
tlb_loop:
	ldr	x0, [x11]
	str	x0, [x22, #SEEN]
	add	x12, x12, #1
	stlr	x12, [x23]
	ldar	x1, [x24]
	cbz	x1, tlb_loop
	isb
	ldr	x0, [x11]
answer:
	str	x0, [x22, #RESULT]
	add	x1, x22, #DONE
	stlr	x20, [x1]
	b	wait_case
go_off:
	add	x1, x22, #DONE
	stlr	x20, [x1]
	ldr	x0, =PSCI_CPU_OFF
	hvc	#0
	b	unexpected			// CPU_OFF does not return

bad_count:
	adr	x0, msg_bad_count
	bl	puts
	ldr	x0, =COHERENCE_FAILED
	mov	x1, #-1
	mov	x2, x19
	hvc	#0
	b	.
cpu_on_failed:
	mov	x21, x0
	adr	x0, msg_cpu_on
	bl	puts
	mov	x4, x21
	bl	puthex
	bl	newline
	ldr	x0, =COHERENCE_FAILED
	mov	x1, #-2
	mov	x2, x21
	hvc	#0
	b	.

	A64_LIB
	.ltorg

msg_head:	.asciz	"coherence_smp: 2 CPUs\r\n"
msg_ok:		.asciz	" ok"
msg_bad:	.asciz	" BAD got="
msg_want:	.asciz	" want="
msg_before:	.asciz	" before"
msg_pass:	.asciz	"coherence_smp: PASS\r\n"
msg_fail:	.asciz	"coherence_smp: FAIL\r\n"
msg_bad_count:	.asciz	"coherence_smp: FAIL: the CPU count in x0 must be at least 2\r\n"
msg_cpu_on:	.asciz	"coherence_smp: FAIL: CPU_ON of CPU 1 returned "
n_ivau:		.asciz	"code_ic_ivau"
n_ialluis:	.asciz	"code_ic_ialluis"
n_local:	.asciz	"code_local_ic_iallu"
n_vae1is:	.asciz	"tlbi_vae1is"
n_vmalle1is:	.asciz	"tlbi_vmalle1is"
n_aside1is:	.asciz	"tlbi_aside1is"
n_vaae1is:	.asciz	"tlbi_vaae1is"
n_vale1is:	.asciz	"tlbi_vale1is"
n_vaale1is:	.asciz	"tlbi_vaale1is"

	.balign	8
cases:
	.quad	n_ivau, KIND_CODE, fa, fa, fa_new, 1, 2, m_ic_ivau
	.quad	n_ialluis, KIND_CODE, fb, fb, fb_new, 1, 3, m_ic_ialluis
	.quad	n_local, KIND_CODE_LOCAL, fc, fc, fc_new, 1, 4, m_dc_cvau
	.quad	n_vae1is, KIND_TLB, VBASE + 0x0000, l3_table + 0, p_new + DATA_PAGE
	.quad	OLD_VAL, NEW_VAL, m_vae1is
	.quad	n_vmalle1is, KIND_TLB, VBASE + 0x1000, l3_table + 8, p_new + DATA_PAGE
	.quad	OLD_VAL, NEW_VAL, m_vmalle1is
	.quad	n_aside1is, KIND_TLB, VBASE + 0x2000, l3_table + 16, p_new + DATA_PAGE + NG
	.quad	OLD_VAL, NEW_VAL, m_aside1is
	.quad	n_vaae1is, KIND_TLB, VBASE + 0x3000, l3_table + 24, p_new + DATA_PAGE
	.quad	OLD_VAL, NEW_VAL, m_vaae1is
	.quad	n_vale1is, KIND_TLB, VBASE + 0x4000, l3_table + 32, p_new + DATA_PAGE
	.quad	OLD_VAL, NEW_VAL, m_vale1is
	.quad	n_vaale1is, KIND_TLB, VBASE + 0x5000, l3_table + 40, p_new + DATA_PAGE
	.quad	OLD_VAL, NEW_VAL, m_vaale1is
	.quad	0

	VECTORS	unexpected, unexpected, unexpected, unexpected

// The rewritten code, each function on a page of its own (nothing else is stored
// there, and no other code runs from there).
	.balign	4096
fa:	b	fa_old				// becomes "b fa_new"
fa_old:	movz	x0, #1
	ret
fa_new:	movz	x0, #2
	ret
	.balign	4096
fb:	b	fb_old				// becomes "b fb_new"
fb_old:	movz	x0, #1
	ret
fb_new:	movz	x0, #3
	ret
	.balign	4096
fc:	b	fc_old				// becomes "b fc_new"
fc_old:	movz	x0, #1
	ret
fc_new:	movz	x0, #4
	ret

// The data CPU0 and CPU1 share, on a page of its own.
	.balign	4096
shared:	.fill	16, 8, 0

// The translation tables.
	.balign	4096
l1_table:
	.quad	0x00000000 + DEV_BLOCK		// VA 0: devices
	.quad	0x40000000 + RAM_BLOCK		// VA 0x4000_0000: RAM
	.quad	l2_table + TABLE		// VA 0x8000_0000: the test pages
	.fill	509, 8, 0
l2_table:
	.quad	l3_table + TABLE
	.fill	511, 8, 0
l3_table:					// V_i, one per TLB case, all on p_old
	.quad	p_old + DATA_PAGE
	.quad	p_old + DATA_PAGE
	.quad	p_old + DATA_PAGE + NG		// aside1is: an entry of ASID 0
	.quad	p_old + DATA_PAGE
	.quad	p_old + DATA_PAGE
	.quad	p_old + DATA_PAGE
	.fill	506, 8, 0

// What the test pages point to, before and after.
p_old:	.quad	OLD_VAL
	.balign	4096
p_new:	.quad	NEW_VAL
	.balign	4096

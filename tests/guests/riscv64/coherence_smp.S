/* Remote fences between two harts: what hart 0 changes (code, or a page table entry)
 * and announces with an SBI remote fence, hart 1 must see, even though it has the old
 * code translated or the old translation in its TLB. RISC-V's version of
 * tests/guests/aarch64/coherence_smp.S.
 *
 * Entry (S-mode): a0 = the hart id, a1 = how many harts the VM has (at least 2; the
 * test passes it where a kernel would get its device tree). Hart 0 builds the Sv39
 * tables, turns paging on, starts hart 1 with SBI HSM hart_start (which turns paging
 * on with the same tables) and runs each case of the table `cases` with it:
 *   1. hart 0 names the case (kind, target) and raises `go`;
 *   2. hart 1 runs a tight loop: use the target (code: call it; TLB: load from it),
 *      publish the value in `seen`, bump `count`, look at `flag`; until flag is set;
 *   3. hart 0 waits until count >= WARM (hart 1 has the old code translated / the old
 *      translation in its TLB, and keeps using it), keeps `seen` (must be the old
 *      value), makes the change and its maintenance, and only then sets `flag`
 *      (fence rw, w first);
 *   4. hart 1 sees the flag (fence r, rw after it), uses the target once more and
 *      answers with that value in `result` (and the case number in `done`). It
 *      executes no FENCE.I or SFENCE.VMA of its own (except in local_fence_i): what
 *      makes it see the change must be the remote fence hart 0 asked for;
 *   5. hart 0 prints "<case> ok", or "<case> BAD got=<hex> want=<hex>" with " before"
 *      when it was hart 1's value before the change that was wrong, or " sbi" when
 *      the SBI call returned an error (got = the error).
 *
 * The cases (all harts: hart_mask 0 with hart_mask_base -1; the legacy calls get a
 * pointer to the mask 0b11):
 *   rfence_fence_i          f ("li a0, 1; ret") becomes "li a0, 2; ret"; SW, FENCE,
 *                           FENCE.I, RFENCE remote_fence_i. Hart 1 must get 2.
 *   legacy_fence_i          the same on another page with legacy EID 5 (new value 3).
 *   local_fence_i           the same on a third page (new value 4) with no SBI call:
 *                           hart 0 only orders its store (FENCE) before the flag, and
 *                           hart 1 executes FENCE.I itself after seeing the flag (the
 *                           other way the ISA allows).
 *   rfence_sfence_vma       the leaf entry of a 4 KiB page V (one V per case) points
 *                           at p_old and is changed to p_new; SD, SFENCE.VMA V,
 *                           FENCE, RFENCE remote_sfence_vma(V, 4096). Hart 1 must then
 *                           load NEW_VAL from V.
 *   rfence_sfence_vma_asid  the same with remote_sfence_vma_asid (ASID 0; no entry is
 *                           global).
 *   legacy_sfence_vma       the same with legacy EID 6.
 *   legacy_sfence_vma_asid  the same with legacy EID 7.
 * The rewritten instructions are naturally aligned 32-bit words, stored with one SW.
 *
 * Then hart 0 sends hart 1 away (go = -1: hart 1 answers and stops itself with
 * hart_stop), waits until hart_get_status says it stopped, prints
 * "coherence_smp: PASS" and shuts down (SBI SRST), or "coherence_smp: FAIL" and
 * makes pyaxvisor hypercall FID_FAILED (a0 = how many cases failed), which no one
 * serves: the VM stops with an error naming it. A bad hart count, a failed
 * hart_start or an unexpected trap also end the run with a hypercall.
 *
 * Memory map (Sv39, ASID 0):
 *   VA 0x0000_0000 + 1 GiB: 1:1 gigapage, read/write (the UART)
 *   VA 0x4000_0000 + 4 KiB * i: the test pages V_i (leaf entries in l0)
 *   VA 0x8000_0000 + 1 GiB: 1:1 gigapage, read/write/execute (RAM) */
.include "sbi.inc"
.include "uart.inc"
.option norelax                         /* data (strings) sits between code and its
                                        * alignments: no linker relaxation */
.equ UART, 0x10000000                   /* ns16550a: THR at 0, LSR at 5 */
.equ FID_FAILED, 0xfa11                 /* pyaxvisor hypercalls nobody serves */
.equ FID_UNEXPECTED, 0xbad0
.equ EXT_LEGACY_FENCE_I, 5
.equ EXT_LEGACY_SFENCE_VMA, 6
.equ EXT_LEGACY_SFENCE_VMA_ASID, 7
.equ HSM_STOPPED, 1
.equ WARM, 0x4000                       /* hart 1's rounds before hart 0 changes anything */
.equ OLD_VAL, 0x1111111111111111        /* at p_old */
.equ NEW_VAL, 0x2222222222222222        /* at p_new */
.equ VBASE, 0x40000000                  /* V_0; V_i = VBASE + i * 4 KiB */
.equ LI_A0, 0x00000513                  /* addi a0, zero, imm is LI_A0 | imm << 20 */
.equ KIND_CODE, 0
.equ KIND_TLB, 1
.equ KIND_CODE_LOCAL, 2                 /* code; hart 1 executes FENCE.I itself */
/* PTE bits: V 1, R 2, W 4, X 8, A 0x40, D 0x80 (never G, never U) */
.equ PTE_TABLE, 0x01
.equ PTE_RW, 0xc7
.equ PTE_RWX, 0xcf
.equ SATP_SV39, 8 << 60
/* the shared block: written by hart 0 (and COUNT and SEEN zeroed by it while hart 1
 * waits for the next case) */
.equ GO, 0
.equ KIND, 8
.equ TARGET, 16
.equ FLAG, 24
/* ... and by hart 1, on a cache line of its own */
.equ COUNT, 64
.equ SEEN, 72
.equ RESULT, 80
.equ DONE, 88
/* a case: name, kind, target, what to patch, new instruction / new page, the value
 * before, the value after, maintenance routine */
.equ CASE_SIZE, 64
.globl _start, secondary, cases, shared, fa, fb, fc, root, l0, p_old, p_new
_start:
    la t0, trap
    csrw stvec, t0
    li t0, 2
    bltu a1, t0, bad_count
    call build_tables
    call mmu_on
    li a0, 1                            /* hart_start(1, secondary, 1) */
    la a1, secondary
    li a2, 1
    SBI EXT_HSM, 0
    bnez a0, hart_start_failed

    la a0, msg_head
    call puts
    la s5, shared
    li s9, 0                            /* cases that failed */
    li s0, 0                            /* case number */
    la s1, cases
1:  ld t0, 0(s1)
    beqz t0, 2f
    addi s0, s0, 1
    call run_case
    addi s1, s1, CASE_SIZE
    j 1b

    /* send hart 1 away and wait until it stopped */
2:  li t0, -1
    fence rw, w
    sd t0, GO(s5)
3:  ld t1, DONE(s5)
    bne t1, t0, 3b
4:  li a0, 1
    SBI EXT_HSM, 2                      /* hart_get_status(1) */
    bnez a0, 5f                         /* cannot tell: do not wait */
    li t0, HSM_STOPPED
    bne a1, t0, 4b
5:  bnez s9, failed
    la a0, msg_pass
    call puts
    SHUTDOWN
    j unexpected
failed:
    la a0, msg_fail
    call puts
    mv a0, s9
    li a1, 0
    li a2, 0
    li a3, 0
    li a4, 0
    li a5, 0
    SBI EXT_PYAX, FID_FAILED
    j .

/* One case (hart 0): s1 = its entry in `cases`, s0 = its number (1, 2, ...),
 * s5 = shared. Counts a failure in s9. Uses a0-a7, t0-t5, s2-s4, s6-s8, s10, s11. */
run_case:
    mv s11, ra
    ld s6, 8(s1)                        /* kind */
    ld s3, 16(s1)                       /* target */
    ld s2, 24(s1)                       /* what to patch */
    ld s4, 32(s1)                       /* the new instruction / the new page */
    ld s10, 56(s1)                      /* the maintenance routine */
    sd zero, FLAG(s5)
    sd s6, KIND(s5)
    sd s3, TARGET(s5)
    sd zero, COUNT(s5)                  /* hart 1's until it answers: idle now */
    sd zero, SEEN(s5)
    fence rw, w                         /* publishes the five above */
    sd s0, GO(s5)
    /* hart 1 must be warm: WARM rounds since this case began */
    li t1, WARM
1:  ld t0, COUNT(s5)
    bltu t0, t1, 1b
    fence r, rw
    ld s7, SEEN(s5)                     /* written before that count */
    li t0, KIND_TLB
    beq s6, t0, 2f
    sw s4, 0(s2)                        /* code: the new instruction */
    j 3f
2:  srli t0, s4, 12                     /* TLB: the leaf entry of the new page */
    slli t0, t0, 10
    ori t0, t0, PTE_RW
    sd t0, 0(s2)
3:  jalr s10                            /* the maintenance; a0 = the SBI error */
    mv s8, a0
    fence rw, w
    li t0, 1
    sd t0, FLAG(s5)
4:  ld t0, DONE(s5)                     /* hart 1's answer */
    bne t0, s0, 4b
    fence r, rw
    ld s4, RESULT(s5)

    ld a0, 0(s1)
    call puts
    beqz s8, 5f
    mv a3, s8                           /* the SBI call failed */
    li a4, 0
    call bad
    la a0, msg_sbi
    j 8f
5:  ld a4, 40(s1)
    beq s7, a4, 6f
    mv a3, s7                           /* the value before was wrong */
    call bad
    la a0, msg_before
    j 8f
6:  ld a4, 48(s1)
    beq s4, a4, 7f
    mv a3, s4
    call bad
    j 9f
7:  la a0, msg_ok
8:  call puts
9:  call newline
    mv ra, s11
    ret

/* bad(a3 = got, a4 = want): print " BAD got=... want=...", count it in s9.
 * Uses a0, t0-t3, t5. */
bad:
    mv t5, ra
    addi s9, s9, 1
    la a0, msg_bad
    call puts
    mv a0, a3
    call puthex
    la a0, msg_want
    call puts
    mv a0, a4
    call puthex
    mv ra, t5
    ret

/* The maintenance (hart 0, after the store): s2 = the patched address, s3 = the
 * target (f, or V). Return a0 = the SBI error (0: none). */
m_rfence_fence_i:
    fence rw, rw                        /* the new code visible to the other harts */
    fence.i
    li a0, 0                            /* all harts */
    li a1, -1
    SBI EXT_RFENCE, 0
    ret
m_legacy_fence_i:
    fence rw, rw
    fence.i
    la a0, all_harts
    SBI EXT_LEGACY_FENCE_I, 0
    ret
m_data_fence:                           /* hart 1 fences itself */
    fence rw, rw
    li a0, 0
    ret
m_rfence_sfence_vma:
    sfence.vma s3, zero
    fence rw, rw                        /* the new entry visible to the other harts */
    li a0, 0
    li a1, -1
    mv a2, s3
    li a3, 4096
    SBI EXT_RFENCE, 1
    ret
m_rfence_sfence_vma_asid:
    sfence.vma s3, zero
    fence rw, rw
    li a0, 0
    li a1, -1
    mv a2, s3
    li a3, 4096
    li a4, 0                            /* ASID 0 */
    SBI EXT_RFENCE, 2
    ret
m_legacy_sfence_vma:
    sfence.vma s3, zero
    fence rw, rw
    la a0, all_harts
    mv a1, s3
    li a2, 4096
    SBI EXT_LEGACY_SFENCE_VMA, 0
    ret
m_legacy_sfence_vma_asid:
    sfence.vma s3, zero
    fence rw, rw
    la a0, all_harts
    mv a1, s3
    li a2, 4096
    li a3, 0                            /* ASID 0 */
    SBI EXT_LEGACY_SFENCE_VMA_ASID, 0
    ret

/* The Sv39 tables (hart 0, paging off; the image holds them zeroed). A table's
 * address is page aligned, so its PPN << 10 is the address >> 2. Uses t0-t3. */
build_tables:
    la t0, root
    li t1, PTE_RW                       /* root[0]: VA 0 -> PA 0 */
    sd t1, 0(t0)
    la t2, l1                           /* root[1] -> l1 */
    srli t2, t2, 2
    ori t2, t2, PTE_TABLE
    sd t2, 8(t0)
    li t1, (0x80000000 >> 2) | PTE_RWX  /* root[2]: VA 0x8000_0000 -> RAM */
    sd t1, 16(t0)
    la t0, l1                           /* l1[0] -> l0 */
    la t2, l0
    srli t2, t2, 2
    ori t2, t2, PTE_TABLE
    sd t2, 0(t0)
    la t0, l0                           /* l0[i]: V_i -> p_old, i = 0 .. 3 */
    la t2, p_old
    srli t2, t2, 2
    ori t2, t2, PTE_RW
    li t3, 4
1:  sd t2, 0(t0)
    addi t0, t0, 8
    addi t3, t3, -1
    bnez t3, 1b
    fence rw, rw
    ret

/* Paging on with the tables at root (each hart). Uses t0, t1. */
mmu_on:
    la t0, root
    srli t0, t0, 12
    li t1, SATP_SV39
    or t0, t0, t1
    csrw satp, t0
    sfence.vma
    ret

/* Hart 1: a1 = opaque. */
secondary:
    la t0, trap
    csrw stvec, t0
    call mmu_on
    la s5, shared
    li s0, 0                            /* the last case seen */
wait_case:
1:  ld t0, GO(s5)
    beq t0, s0, 1b
    fence r, rw
    mv s0, t0
    li t1, -1
    beq s0, t1, go_off
    ld s6, KIND(s5)
    ld s3, TARGET(s5)
    li s4, 0
    li t0, KIND_TLB
    beq s6, t0, tlb_loop
code_loop:
    jalr s3
    sd a0, SEEN(s5)
    addi s4, s4, 1
    fence rw, w
    sd s4, COUNT(s5)
    ld t0, FLAG(s5)
    beqz t0, code_loop
    fence r, rw
    li t0, KIND_CODE_LOCAL
    bne s6, t0, 2f
    fence.i
2:  jalr s3
    j answer
tlb_loop:
    ld a0, 0(s3)
    sd a0, SEEN(s5)
    addi s4, s4, 1
    fence rw, w
    sd s4, COUNT(s5)
    ld t0, FLAG(s5)
    beqz t0, tlb_loop
    fence r, rw
    ld a0, 0(s3)
answer:
    sd a0, RESULT(s5)
    fence rw, w
    sd s0, DONE(s5)
    j wait_case
go_off:
    fence rw, w
    sd s0, DONE(s5)
    SBI EXT_HSM, 1                      /* hart_stop: does not return */
    j unexpected

UART_ROUTINES
bad_count:
    mv s1, a1
    la a0, msg_bad_count
    call puts
    li a0, -1
    mv a1, s1
    SBI EXT_PYAX, FID_FAILED
    j .

hart_start_failed:
    mv s2, a0
    la a0, msg_hart_start
    call puts
    mv a0, s2
    call puthex
    call newline
    li a0, -2
    mv a1, s2
    SBI EXT_PYAX, FID_FAILED
    j .

    .align 2
trap:
unexpected:
    csrr a0, scause
    csrr a1, sepc
    csrr a2, stval
    SBI EXT_PYAX, FID_UNEXPECTED
    j .

msg_head:       .asciz "coherence_smp: 2 CPUs\n"
msg_ok:         .asciz " ok"
msg_bad:        .asciz " BAD got="
msg_want:       .asciz " want="
msg_before:     .asciz " before"
msg_sbi:        .asciz " sbi"
msg_pass:       .asciz "coherence_smp: PASS\n"
msg_fail:       .asciz "coherence_smp: FAIL\n"
msg_bad_count:  .asciz "coherence_smp: FAIL: the hart count in a1 must be at least 2\n"
msg_hart_start: .asciz "coherence_smp: FAIL: hart_start of hart 1 returned "
n_rfence_i:     .asciz "rfence_fence_i"
n_legacy_i:     .asciz "legacy_fence_i"
n_local_i:      .asciz "local_fence_i"
n_rvma:         .asciz "rfence_sfence_vma"
n_rvma_asid:    .asciz "rfence_sfence_vma_asid"
n_lvma:         .asciz "legacy_sfence_vma"
n_lvma_asid:    .asciz "legacy_sfence_vma_asid"

    .balign 8
all_harts:      .dword 0b11             /* the legacy calls' hart mask: harts 0 and 1 */
cases:
    .dword n_rfence_i, KIND_CODE, fa, fa, LI_A0 | (2 << 20), 1, 2, m_rfence_fence_i
    .dword n_legacy_i, KIND_CODE, fb, fb, LI_A0 | (3 << 20), 1, 3, m_legacy_fence_i
    .dword n_local_i, KIND_CODE_LOCAL, fc, fc, LI_A0 | (4 << 20), 1, 4, m_data_fence
    .dword n_rvma, KIND_TLB, VBASE + 0x0000, l0 + 0, p_new, OLD_VAL, NEW_VAL
    .dword m_rfence_sfence_vma
    .dword n_rvma_asid, KIND_TLB, VBASE + 0x1000, l0 + 8, p_new, OLD_VAL, NEW_VAL
    .dword m_rfence_sfence_vma_asid
    .dword n_lvma, KIND_TLB, VBASE + 0x2000, l0 + 16, p_new, OLD_VAL, NEW_VAL
    .dword m_legacy_sfence_vma
    .dword n_lvma_asid, KIND_TLB, VBASE + 0x3000, l0 + 24, p_new, OLD_VAL, NEW_VAL
    .dword m_legacy_sfence_vma_asid
    .dword 0

/* The rewritten code, each function on a page of its own (nothing else is stored
 * there, and no other code runs from there); uncompressed, so the first instruction
 * is one aligned word. */
.option push
.option norvc
    .balign 4096
fa: li a0, 1                            /* becomes li a0, 2 */
    ret
    .balign 4096
fb: li a0, 1                            /* becomes li a0, 3 */
    ret
    .balign 4096
fc: li a0, 1                            /* becomes li a0, 4 */
    ret
.option pop

/* The data the harts share, on a page of its own. */
    .balign 4096
shared:         .fill 16, 8, 0

/* The page tables (filled in by build_tables) and the pages the V_i point to. */
    .balign 4096
root:           .fill 512, 8, 0
l1:             .fill 512, 8, 0
l0:             .fill 512, 8, 0
p_old:          .dword OLD_VAL
    .balign 4096
p_new:          .dword NEW_VAL
    .balign 4096

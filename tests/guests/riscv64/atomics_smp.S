/* SMP stress of the A extension: every hart of the VM works on the same few words
 * of memory at once; hart 0 checks afterwards that no update was lost and that no
 * neighbouring word was clobbered.
 *
 * Entry (S-mode): a0 = the hart id, a1 = how many harts to use (1..8; the test
 * passes it where a kernel would get its device tree). Hart 0 starts harts 1..n-1
 * with SBI HSM hart_start (start address `secondary`, opaque = the hart's index,
 * which arrives in a1), every hart meets the others at a start barrier and then
 * runs ITERS rounds of:
 *   a) counter64 += 1 with LR.D/SC.D;
 *   b) counter32 += 1 with LR.W/SC.W (the word above it is a guard that must
 *      survive);
 *   c) amo_counter += 1 with AMOADD.D;
 *   d) a spinlock (test with a plain load, take with AMOSWAP.W.AQ, give back with
 *      AMOSWAP.W.RL) around a plain LD/ADDI/SD of plain_counter;
 *   e) its own word of hart_words += 1 with AMOADD.W (the eight words share four
 *      doublewords; the words of harts not in the run keep a guard value).
 * Each LR/SC window (and the lock's critical section) has a forward jump in it: the
 * software CPU switches harts only between translation blocks, and a jump ends one,
 * so another hart may run between the LR and its SC. A forward jump keeps the
 * LR/SC loop a constrained one (the unprivileged spec's forward-progress rules).
 *
 * Then each hart adds one to `done` (LR.D.AQ/SC.D.RL); harts 1..n-1 stop themselves
 * (hart_stop). Hart 0 waits until done = n and prints on the UART
 *   "atomics_smp: <n> harts, iterations <ITERS in 16 hex digits>",
 * one line per value checked,
 *   "<name> got=<16 hex digits> want=<16 hex digits> ok" (or "BAD"),
 * how often the harts collided (summed over the harts; for the record, not checked),
 *   "contention sc_failures=<16 hex digits> lock_waits=<16 hex digits>",
 * then "atomics_smp: PASS" and shuts down (SBI SRST), or "atomics_smp: FAIL" and
 * makes pyaxvisor hypercall FID_FAILED (a0 = how many values were wrong), which no
 * one serves: the VM stops with an error naming it. A failed hart_start, a count out
 * of range or an unexpected trap also end the run with a hypercall, never a
 * shutdown. */
.include "sbi.inc"
.include "uart.inc"
.equ UART, 0x10000000                   /* ns16550a: THR at 0, LSR at 5 */
.equ ITERS, 1000000
.equ MAX_HARTS, 8
.equ FID_FAILED, 0xfa11                 /* pyaxvisor hypercalls nobody serves */
.equ FID_UNEXPECTED, 0xbad0
.equ GUARD32, 0x5a5a5a5a
.equ NAME_WORDS_LEN, 13                 /* "hart_words_N" and its NUL */
.globl _start, secondary, work, counter64, counter32, amo_counter, lock, plain_counter
.globl hart_words, done, ncpus, sc_failures, lock_waits
_start:
    la t0, trap
    csrw stvec, t0
    mv s1, a1                           /* hart count */
    beqz s1, bad_count
    li t0, MAX_HARTS
    bgtu s1, t0, bad_count
    la t0, ncpus
    sd s1, 0(t0)
    la t0, hart_words                   /* this run's words start at 0 */
    li t1, 0
1:  sw zero, 0(t0)
    addi t0, t0, 4
    addi t1, t1, 1
    bne t1, s1, 1b
    fence rw, rw
    li s0, 1                            /* hart_start(i, secondary, i), i = 1 .. n-1 */
2:  beq s0, s1, 3f
    mv a0, s0
    la a1, secondary
    mv a2, s0
    SBI EXT_HSM, 0
    bnez a0, hart_start_failed
    addi s0, s0, 1
    j 2b
3:  li s0, 0                            /* this hart's index */
    j work

secondary:
    la t0, trap
    csrw stvec, t0
    mv s0, a1                           /* opaque: this hart's index */

/* Every hart: s0 = its index. */
work:
    la t0, ncpus
    ld s1, 0(t0)
    la t0, ready                        /* start barrier */
    li t1, 1
    amoadd.d.aqrl zero, t1, (t0)
1:  ld t1, 0(t0)
    bne t1, s1, 1b
    fence r, rw

    la s3, counter64
    la s4, counter32
    la s5, amo_counter
    la s6, lock
    la s7, plain_counter
    la s8, hart_words
    slli t0, s0, 2
    add s8, s8, t0                      /* this hart's word */
    li s2, ITERS
    li s10, 0                           /* failed SCs */
    li s11, 0                           /* looks at a lock another hart held */
    li t4, 1
round:
    /* a) LR.D/SC.D */
1:  lr.d t0, (s3)
    addi t0, t0, 1
    j 11f                               /* a block boundary inside the window */
11: sc.d t1, t0, (s3)
    snez t2, t1
    add s10, s10, t2
    bnez t1, 1b

    /* b) LR.W/SC.W */
2:  lr.w t0, (s4)
    addiw t0, t0, 1
    j 21f
21: sc.w t1, t0, (s4)
    snez t2, t1
    add s10, s10, t2
    bnez t1, 2b

    /* c) AMOADD.D */
    amoadd.d zero, t4, (s5)

    /* d) the spinlock around a plain increment */
3:  lw t0, 0(s6)
    beqz t0, 31f
    addi s11, s11, 1                    /* held by another hart: count, look again */
    j 3b
31: amoswap.w.aq t0, t4, (s6)
    bnez t0, 3b                         /* another hart took it first */
    ld t0, 0(s7)
    addi t0, t0, 1
    j 32f                               /* may switch harts while the lock is held */
32: sd t0, 0(s7)
    amoswap.w.rl zero, zero, (s6)

    /* e) this hart's word */
    amoadd.w zero, t4, (s8)

    addi s2, s2, -1
    bnez s2, round

    /* leave this hart's contention counts, count out; harts 1.. are finished */
    slli t0, s0, 3
    la t1, sc_failures
    add t1, t1, t0
    sd s10, 0(t1)
    la t1, lock_waits
    add t1, t1, t0
    sd s11, 0(t1)
    la t0, done
4:  lr.d.aq t1, (t0)
    addi t1, t1, 1
    sc.d.rl t2, t1, (t0)
    bnez t2, 4b
    beqz s0, collect
    SBI EXT_HSM, 1                      /* hart_stop: does not return */
    j unexpected

/* Hart 0: wait for every hart, then compare and report; s9 counts mismatches. */
collect:
5:  ld t1, 0(t0)
    bne t1, s1, 5b
    fence r, rw
    li s9, 0
    la a0, msg_head
    call puts
    addi a0, s1, '0'
    call putc
    la a0, msg_harts
    call puts
    li a0, ITERS
    call puthex
    call newline

    li t0, ITERS
    mul s2, s1, t0                      /* harts * ITERS */
    la a0, name_counter64
    ld a3, 0(s3)
    mv a4, s2
    call check
    la a0, name_counter32
    ld a3, 0(s4)                        /* the counter and the guard word above it */
    li a4, GUARD32
    slli a4, a4, 32
    or a4, a4, s2
    call check
    la a0, name_amo
    ld a3, 0(s5)
    mv a4, s2
    call check
    la a0, name_plain
    ld a3, 0(s7)
    mv a4, s2
    call check
    la a0, name_lock
    ld a3, 0(s6)
    li a4, 0                            /* free at the end */
    call check
    /* hart_words, a doubleword at a time: word i = ITERS if i < n, else GUARD32 */
    li s3, 0                            /* word index */
    la s4, hart_words
    la s5, name_words
6:  mv a0, s3
    call word_want
    mv a4, a0
    addi a0, s3, 1
    call word_want
    slli a0, a0, 32
    or a4, a4, a0
    ld a3, 0(s4)
    mv a0, s5
    call check
    addi s3, s3, 2
    addi s4, s4, 8
    addi s5, s5, NAME_WORDS_LEN
    li t0, MAX_HARTS
    bne s3, t0, 6b
    la a0, name_done
    la t0, done
    ld a3, 0(t0)
    mv a4, s1
    call check

    /* how often the harts actually collided (for the record, not checked here) */
    la a0, msg_contention
    call puts
    la a0, sc_failures
    call sum_harts
    call puthex
    la a0, msg_lock_waits
    call puts
    la a0, lock_waits
    call sum_harts
    call puthex
    call newline

    bnez s9, failed
    la a0, msg_pass
    call puts
    SHUTDOWN
    j unexpected
failed:
    la a0, msg_fail
    call puts
    mv a0, s9
    li a1, 0                            /* the other arguments: nothing to say */
    li a2, 0
    li a3, 0
    li a4, 0
    li a5, 0
    SBI EXT_PYAX, FID_FAILED
    j .

/* word_want(a0 = word index): a0 = what hart_words[index] must hold. */
word_want:
    bltu a0, s1, 1f
    li a0, GUARD32
    ret
1:  li a0, ITERS
    ret

/* sum_harts(a0 = an array of doublewords, one per hart): a0 = the sum of the
 * first n. Uses t0-t2. */
sum_harts:
    li t0, 0
    li t1, 0
1:  ld t2, 0(a0)
    add t0, t0, t2
    addi a0, a0, 8
    addi t1, t1, 1
    bne t1, s1, 1b
    mv a0, t0
    ret

/* check(a0 = name, a3 = value, a4 = expected): print the line, count a mismatch in
 * s9. Uses a0, t0-t3, t5. */
check:
    mv t5, ra
    call puts
    la a0, msg_got
    call puts
    mv a0, a3
    call puthex
    la a0, msg_want
    call puts
    mv a0, a4
    call puthex
    la a0, msg_ok
    beq a3, a4, 1f
    addi s9, s9, 1
    la a0, msg_bad
1:  call puts
    call newline
    mv ra, t5
    ret

UART_ROUTINES
bad_count:
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
    mv a0, s0
    call puthex
    la a0, msg_returned
    call puts
    mv a0, s2
    call puthex
    call newline
    li a0, -2
    mv a1, s0
    mv a2, s2
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

msg_head:       .asciz "atomics_smp: "
msg_harts:      .asciz " harts, iterations "
msg_got:        .asciz " got="
msg_want:       .asciz " want="
msg_ok:         .asciz " ok"
msg_bad:        .asciz " BAD"
msg_contention: .asciz "contention sc_failures="
msg_lock_waits: .asciz " lock_waits="
msg_pass:       .asciz "atomics_smp: PASS\n"
msg_fail:       .asciz "atomics_smp: FAIL\n"
msg_bad_count:  .asciz "atomics_smp: FAIL: the hart count in a1 must be 1..8\n"
msg_hart_start: .asciz "atomics_smp: FAIL: hart_start of hart "
msg_returned:   .asciz " returned "
name_counter64: .asciz "counter64"
name_counter32: .asciz "counter32"
name_amo:       .asciz "amo_counter"
name_plain:     .asciz "plain_counter"
name_lock:      .asciz "lock"
name_done:      .asciz "done"
/* four names of the same length, one per doubleword of hart_words */
name_words:     .asciz "hart_words_0"
                .asciz "hart_words_1"
                .asciz "hart_words_2"
                .asciz "hart_words_3"

/* The shared data, in the image; each group in its own 64-byte block. */
    .balign 64
counter64:      .dword 0
    .balign 64
counter32:      .word 0, GUARD32
    .balign 64
amo_counter:    .dword 0
    .balign 64
lock:           .dword 0
plain_counter:  .dword 0
    .balign 64
hart_words:     .fill MAX_HARTS, 4, GUARD32
    .balign 64
ready:          .dword 0
done:           .dword 0
ncpus:          .dword 0
sc_failures:    .fill MAX_HARTS, 8, 0
lock_waits:     .fill MAX_HARTS, 8, 0

/*
 * Native hooks for the software CPU engine (Unicorn). Python callbacks cost
 * microseconds each; these run on every basic block or every system-register
 * access, so they are C. They need no Unicorn headers: the few libunicorn
 * functions they call are handed over as pointers in the shared structs, which
 * Python owns (ctypes) and reads directly.
 *
 * 1. preempt_block_hook (UC_HOOK_BLOCK): a safe preemption point on the stock
 *    library. Stock Unicorn can be stopped cleanly only at a block boundary;
 *    uc_emu_stop from another thread or a timeout may cut an instruction after its
 *    load and replay it. At the start of each block the hook checks a request word
 *    any host thread may set and, if set, stops the CPU before the block runs (PC =
 *    block start). pyaxvisor's patched build stops at block starts by itself
 *    (uc_emu_stop_at_block), so the engines install no such hook there.
 *
 * 2. timer_access (called by the AArch64 MRS/MSR hooks of (4)): the Arm generic
 *    timer. Unicorn's own timer does not work (CNTV_CTL/CVAL writes read back 0, the
 *    counter runs at a fixed host-derived rate), and a Python hook on MRS would
 *    run for every MRS (DAIF saves included). The hooks return 0 at once for
 *    every register they do not emulate; for the EL0 timer block (op0=3 op1=3
 *    CRn=14 CRm=0..3) this emulates
 *    CNTFRQ/CNTPCT/CNTVCT and CNTV_/CNTP_ CTL/CVAL/TVAL from the shared state
 *    with CLOCK_MONOTONIC as the counter's time base. After a write to CTL or
 *    CVAL (TVAL writes become CVAL) it calls back into Python so the host timer
 *    event can be rescheduled.
 *
 * 3. The RISC-V 64 CPU (pyaxvisor plays M-mode; the guest runs in S/U-mode):
 *    - riscv_block_hook (UC_HOOK_BLOCK): the preemption point of (1), and before
 *      it the interrupt lines (STIP/SEIP/SSIP) any thread changed are written to
 *      mip, so the CPU takes them at the next block boundary;
 *    - riscv_intr_hook (UC_HOOK_INTR): every exception. Unicorn adds 4 to the PC
 *      before interrupt hooks, also for faults and 2-byte instructions: undone
 *      first (by pc_skew, which the engine's self-test measured). Causes the
 *      guest handles itself are delivered to its trap vector with QEMU's own trap
 *      entry (riscv_cpu_do_interrupt, the cause's medeleg bit set for it), without
 *      leaving the CPU; the others (traps to M) are recorded and handed to Python's
 *      on_trap callback, which resumes, delivers them or stops the CPU;
 *    - riscv_insn_invalid_hook (UC_HOOK_INSN_INVALID): EBREAK, which Unicorn turns
 *      into "invalid instruction" instead of an exception: delivered to the guest;
 *    - riscv_mem_invalid_hook (UC_HOOK_MEM_INVALID): an access Unicorn cannot do
 *      (no memory there, or against the mapping's permissions) becomes the
 *      architectural access fault at the faulting instruction, so it reaches
 *      riscv_intr_hook as a trap to M;
 *    - riscv_fence_i_hook (UC_HOOK_INSN FENCE.I, the patched build): in an SMP VM,
 *      drops the hart's translated code at its next block (xsync.h);
 *    - riscv_rdtime: the time CSR, (CLOCK_MONOTONIC - base) * freq / 1e9 with the
 *      base and frequency the calling thread set (QEMU's callback has no argument,
 *      so they are per host thread: the thread that runs the CPU sets them).
 *
 * 4. The AArch64 CPU: see the comment at its section below.
 *
 * 5. mirror_read (mmio_mirror.c): the read callback of device windows whose
 *    side-effect-free registers the device publishes in a table.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "mmio_mirror.h"
#include "xsync.h"

static inline void preempt_check(void *uc, struct preempt_state *st)
{
    if (st->request)
        st->emu_stop(uc);
}

static void preempt_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    (void)address;
    (void)size;
    preempt_check(uc, user_data);
}

/* Counter ticks at ``freq`` Hz since CLOCK_MONOTONIC read ``base_ns`` (0 before). */
static uint64_t ticks_since(int64_t base_ns, uint64_t freq)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec - base_ns;
    if (ns < 0)
        ns = 0;
    return (uint64_t)(((unsigned __int128)ns * freq) / 1000000000ULL);
}

struct cp_reg {                 /* uc_arm64_cp_reg */
    uint32_t crn, crm, op0, op1, op2;
    uint64_t val;
};

enum { T_VIRT = 0, T_PHYS = 1 };

struct timer_state {
    int64_t base_ns;            /* CLOCK_MONOTONIC ns at which the counter read 0 */
    uint64_t freq;              /* counter frequency, Hz (CNTFRQ_EL0) */
    uint64_t cntvoff;           /* CNTVCT = CNTPCT - CNTVOFF */
    uint64_t ctl[2];            /* ENABLE bit 0, IMASK bit 1 (ISTATUS computed) */
    uint64_t cval[2];
    int (*reg_write)(void *uc, int regid, const void *value);   /* uc_reg_write */
    void (*on_write)(int timer);                               /* Python, may be NULL */
    uint64_t reads, writes;
};

static uint64_t counter_now(const struct timer_state *t)
{
    return ticks_since(t->base_ns, t->freq);
}

/* An access to the EL0 timer block (op0=3 op1=3 CRn=14 CRm=0..3); 0 lets Unicorn do it. */
static uint32_t timer_access(void *uc, int reg, const struct cp_reg *cp,
                             struct timer_state *t, int is_read)
{
    int timer;
    if (cp->crm == 0) {
        timer = -1;
    } else if (cp->crm == 2) {
        timer = T_PHYS;
    } else if (cp->crm == 3) {
        timer = T_VIRT;
    } else {
        return 0;
    }
    uint64_t phys = counter_now(t);
    uint64_t now = phys;
    if (timer == T_VIRT)
        now = phys - t->cntvoff;
    if (is_read) {
        uint64_t v;
        if (timer < 0) {
            switch (cp->op2) {
            case 0: v = t->freq; break;
            case 1: v = phys; break;
            case 2: v = phys - t->cntvoff; break;
            default: return 0;
            }
        } else {
            switch (cp->op2) {
            case 0: v = (uint64_t)(uint32_t)(t->cval[timer] - now); break;       /* TVAL */
            case 1: v = (t->ctl[timer] & 3) | ((now >= t->cval[timer]) ? 4 : 0); break;
            case 2: v = t->cval[timer]; break;
            default: return 0;
            }
        }
        t->reads++;
        t->reg_write(uc, reg, &v);
        return 1;
    }
    if (timer < 0)
        return 1;               /* CNTFRQ/counters are read-only at EL1: ignore */
    switch (cp->op2) {
    case 0: t->cval[timer] = now + (uint64_t)(int64_t)(int32_t)cp->val; break;
    case 1: t->ctl[timer] = cp->val & 3; break;
    case 2: t->cval[timer] = cp->val; break;
    default: return 0;
    }
    t->writes++;
    if (t->on_write)
        t->on_write(timer);
    return 1;
}

/* ------------------------------------------------------------------ AArch64 */

/*
 * 4. The AArch64 CPU's native state (struct a64_state; Python's ctypes _A64State in
 *    aarch64.py has the same fields in the same order) and its hooks:
 *    - a64_block_hook (UC_HOOK_BLOCK): while `work` is set it follows the guest's
 *      exception level, counts instructions for the PMU and re-translates watched
 *      addresses; on the stock library it is also the preemption point of (1). On
 *      the patched build Python installs it only while there is work (`hooked`);
 *      when a PMU access makes work appear without it, the MRS/MSR hook stops the
 *      CPU at the next block so that Python installs it;
 *    - a64_mrs_hook / a64_msr_hook (UC_HOOK_INSN MRS, MSR): the generic timer of (2),
 *      the PMU (every PMUv3 register but PMUSERENR_EL0, which Unicorn keeps: its
 *      value decides EL0 accesses, which Unicorn traps when they are not allowed),
 *      and the watchpoint registers (DBGWVRn_EL1/DBGWCRn_EL1: Unicorn stores them
 *      but never fires a watchpoint, its cpu_check_watchpoint is empty);
 *    - a64_sys_hook (UC_HOOK_INSN SYS): while a watchpoint is armed, TLBIs make the
 *      block hook translate the watched pages again; while the CPU runs a vCPU of a
 *      VM with other CPUs (`group`), broadcast TLBIs and instruction-cache
 *      maintenance reach those CPUs (xsync.h). Python installs it while either holds;
 *    - a64_watch_hook (UC_HOOK_MEM_READ and UC_HOOK_MEM_WRITE), installed by Python
 *      only while a watchpoint is armed;
 *    - a64_intr_hook (UC_HOOK_INTR): the guest's own exceptions to EL1 (SVC, aborts,
 *      undefined instructions, BRK) taken inside the CPU with QEMU's exception entry,
 *      without leaving it; traps to EL2 handed to Python.
 *
 *    PMU (a Cortex-A72's PMUv3 with four 32-bit event counters, not its six: this
 *    Unicorn's QEMU defines PMEVCNTRn/PMEVTYPERn for n < 4 only, and a hook cannot
 *    skip an access to a register QEMU does not define, whose translated code then
 *    never leaves its block; and the 64-bit cycle counter). Accesses to counters
 *    n >= 4 are UNDEFINED (QEMU's), which the architecture permits for n >= PMCR.N.
 *    A counter adds what its source did while it counted (PMCR.E and its
 *    PMCNTENSET bit): CPU_CYCLES is the host's CLOCK_MONOTONIC at one cycle per
 *    nanosecond (a 1 GHz clock, as QEMU's), INST_RETIRED the instructions of the
 *    translated blocks the block hook saw start (an exception in the middle of a
 *    block counts the rest of it too), SW_INCR the PMSWINC writes; the filters of
 *    PMEVTYPERn/PMCCFILTR choose EL0 and EL1 (Non-secure rules: EL0 counts when
 *    U == NSU, EL1 when P == NSK), for which the block hook keeps the time and the
 *    instructions per EL. Counters are brought up to date ("folded") at every PMU
 *    register access and when an instruction counter may have wrapped; a wrap sets
 *    its PMOVSSET bit. The overflow interrupt request is PMCR.E && (PMINTENSET &
 *    PMOVSSET); `deadline` is when a counted cycle counter with its interrupt
 *    enabled wraps while the guest stays at its EL, so a host timer can raise the
 *    request at that time. on_change (Python) hears when either changes.
 *
 *    Watchpoints: Python arms them (ranges of virtual bytes, their pages); the block
 *    hook translates the pages through the guest's current translation (again after
 *    a TTBR/TCR/SCTLR write or a TLBI, and at every EL change while a page has no
 *    translation); the memory hook matches the physical address of each load and
 *    store against them and, when the architecture's conditions hold (MDSCR_EL1.MDE,
 *    KDE and PSTATE.D at EL1, DBGWCR's PAC/SSC/LSC), takes the watchpoint exception
 *    with QEMU's exception entry before the access is done: EC 0x34/0x35, WnR, FAR =
 *    the accessed address (at least the watched range's start).
 */

#define A64_PMU_N 4                     /* event counters (PMCR_EL0.N): see above */
#define A64_CYC A64_PMU_N               /* index of PMCCNTR_EL0 in the counter arrays */
#define A64_CYC_BIT 31                  /* its bit in PMCNTEN, PMINTEN, PMOVS */
#define A64_PMU_BITS ((1ULL << A64_CYC_BIT) | ((1ULL << A64_PMU_N) - 1))
#define PMCR_E 0x1ULL
#define PMCR_P 0x2ULL
#define PMCR_C 0x4ULL
#define PMCR_D 0x8ULL
#define PMCR_X 0x10ULL
#define PMCR_DP 0x20ULL
#define PMCR_LC 0x40ULL
#define PMCR_RW (PMCR_E | PMCR_D | PMCR_X | PMCR_DP | PMCR_LC)
/* IMP 0x41 (Arm), IDCODE 0x02 (Cortex-A72), N */
#define PMCR_RO ((0x41ULL << 24) | (0x02ULL << 16) | ((uint64_t)A64_PMU_N << 11))
#define EVTYPER_MASK 0xFC0003FFULL       /* P U NSK NSU NSH M, evtCount[9:0] (PMUv3 of ARMv8.0) */
#define CCFILTR_MASK 0xFC000000ULL       /* P U NSK NSU NSH M */
#define EV_SW_INCR 0x00
#define EV_INST_RETIRED 0x08
#define EV_CPU_CYCLES 0x11
#define PMCEID0 ((1ULL << EV_SW_INCR) | (1ULL << EV_INST_RETIRED) | (1ULL << EV_CPU_CYCLES))
#define U32_MASK 0xFFFFFFFFULL

#define A64_WATCHPOINTS 4               /* DBGWVR/DBGWCR pairs of a Cortex-A72 */
#define A64_WATCH_PAGES 16              /* 4 KiB pages one watchpoint may cover */
#define A64_NO_PAGE 1ULL                /* page_pa of a page that has no translation now */

enum { A64_WORK_PMU = 1, A64_WORK_XLATE = 2, A64_WORK_WATCH = 4 };
enum { UC_MEM_READ_ = 16, UC_MEM_WRITE_ = 17 };
enum { UC_PROT_READ_ = 1 };
#define EXCP_DATA_ABORT 4               /* QEMU's exception number */

struct a64_pmu {
    uint64_t pmcr;                      /* PMCR_EL0's writable bits */
    uint64_t cnten, inten, ovs;         /* bit n: event counter n, bit 31: PMCCNTR */
    uint64_t selr;                      /* PMSELR_EL0.SEL */
    uint64_t type[A64_PMU_N + 1];       /* PMEVTYPERn_EL0; [A64_CYC]: PMCCFILTR_EL0 */
    uint64_t value[A64_PMU_N + 1];      /* the counts at the last fold */
    uint64_t snap[A64_PMU_N + 1];       /* the source of each counter at the last fold */
    uint64_t insns[2];                  /* instructions at EL0 / EL1 while counted */
    uint64_t el_ns[2];                  /* host ns at EL0 / EL1 while tracked */
    int64_t el_since;                   /* when the stretch at last_el began (tracking) */
    int64_t insn_budget;                /* instructions until an instruction counter may wrap */
    uint64_t tracking;                  /* el_ns is kept (a counted cycle counter filters ELs) */
    uint64_t el_sensitive;              /* the deadline depends on the EL */
    uint64_t irq;                       /* the overflow interrupt request */
    int64_t deadline;                   /* CLOCK_MONOTONIC ns of the next such wrap, 0: none */
    void (*on_change)(void);            /* Python, may be NULL: irq or deadline changed */
    uint64_t notifications;
};

struct a64_watch {
    uint64_t wvr[A64_WATCHPOINTS], wcr[A64_WATCHPOINTS];    /* as the guest wrote them */
    uint64_t start[A64_WATCHPOINTS], end[A64_WATCHPOINTS];  /* watched virtual bytes */
    uint64_t page_va[A64_WATCHPOINTS][A64_WATCH_PAGES];
    uint64_t page_pa[A64_WATCHPOINTS][A64_WATCH_PAGES];     /* or A64_NO_PAGE */
    uint64_t pages[A64_WATCHPOINTS];
    uint64_t enabled;                   /* bit n: watchpoint n is armed (Python sets it) */
    uint64_t unmapped;                  /* an armed page has no translation now */
    uint64_t rehook;                    /* a watch register changed: Python re-arms */
    uint64_t hits, translations;
};

struct a64_state {
    struct preempt_state preempt;       /* first: the block hook's stop request */
    struct timer_state timer;
    uint8_t *env;                       /* CPUARMState */
    uint64_t pstate_off;                /* env->pstate: M[3:0] (EL in bits 3:2), SS bit 21 */
    uint64_t vaddress_off;              /* env->exception.vaddress: the next exception's FAR */
    int (*reg_read)(void *uc, int regid, void *value);                      /* uc_reg_read */
    int (*vmem_translate)(void *uc, uint64_t va, int prot, uint64_t *pa);   /* uc_vmem_translate */
    void (*raise)(void *env, uint32_t excp, uint32_t syndrome, uint32_t target_el);
    uint64_t reg_cp, reg_pstate;        /* UC_ARM64_REG_CP_REG, UC_ARM64_REG_PSTATE */
    uint64_t work;                      /* A64_WORK_*: the block hook's work besides preempting */
    uint64_t last_el;                   /* 0 (EL0) or 1 (EL1) of the last block, while work */
    uint64_t hooked;                    /* a64_block_hook is installed (Python sets it) */
    struct xsync_group *group;          /* the CPUs of the bound vCPU's VM, or NULL */
    struct xsync_peer *peer;            /* this CPU's place in such groups */
    struct a64_pmu pmu;
    struct a64_watch watch;
    /* The virtual IRQ line, HCR_EL2.VI (a64_set_virq, on the CPU's thread only). */
    void *uc;
    void *cpu;                          /* its CPUState */
    void (*cpu_exit)(void *cpu);        /* leave the chain of translated blocks */
    uint64_t virq;                      /* the level HCR_EL2.VI has */
    uint64_t virq_want;                 /* the level another thread asked for (a64_kick) */
    uint64_t virq_kicked;               /* kicks that changed the line */
    /* Exceptions (a64_intr_hook). */
    void (*do_interrupt)(void *cpu);    /* arm_cpu_do_interrupt_aarch64: QEMU's entry */
    uint64_t target_el_off;             /* env->exception.target_el */
    uint64_t deliver;                   /* take the guest's own exceptions here (else Python) */
    void (*on_trap)(uint32_t intno);    /* Python: every exception not taken here */
    uint64_t delivered;                 /* exceptions taken here */
};

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static unsigned a64_el(const struct a64_state *st)
{
    return (*(const uint32_t *)(st->env + st->pstate_off) >> 2) & 3;
}

static void a64_work_on(struct a64_state *st, uint64_t bits)
{
    if (!st->work)
        st->last_el = a64_el(st) ? 1 : 0;
    st->work |= bits;
}

/* -- the virtual IRQ line */

#define HCR_VI (1ULL << 7)

/* HCR_EL2.VI = level, on the CPU's own thread (between runs, in a callback inside the
 * CPU, or in a64_kick). QEMU's HCR_EL2 write raises or drops the CPU's VIRQ request;
 * ``leave``: make a running CPU leave its chained blocks so that it looks at it (not
 * needed in a64_kick, which runs where the CPU looks next). */
static void a64_set_virq(struct a64_state *st, uint64_t level, int leave)
{
    if (level == st->virq)
        return;
    struct cp_reg hcr = {1, 1, 3, 4, 0, 0};
    st->reg_read(st->uc, (int)st->reg_cp, &hcr);
    hcr.val = level ? hcr.val | HCR_VI : hcr.val & ~HCR_VI;
    st->timer.reg_write(st->uc, (int)st->reg_cp, &hcr);
    st->virq = level;
    if (level && leave)
        st->cpu_exit(st->cpu);
}

/* uc_set_kick_callback: runs on the CPU's thread between two blocks after another
 * thread asked for a new line level (virq_want) and called uc_kick (patch cpu-kick). */
static void a64_kick(void *uc, void *user_data)
{
    struct a64_state *st = user_data;
    (void)uc;
    uint64_t want = __atomic_load_n(&st->virq_want, __ATOMIC_SEQ_CST);
    if (want != st->virq) {
        a64_set_virq(st, want, 0);
        st->virq_kicked++;
    }
}

/* -- exceptions */

/* QEMU's exception numbers of the synchronous exceptions a guest takes itself. */
#define A64_GUEST_EXCPS ((1u << 1) | (1u << 2) | (1u << 3) | (1u << 4) | (1u << 7))

/* UC_HOOK_INTR: every exception the CPU raises (IRQs it takes itself, not here). One
 * whose target is EL1 and that is an undefined instruction, SVC, abort or BRK (EXCP_UDEF,
 * SWI, PREFETCH_ABORT, DATA_ABORT, BKPT) is the guest's own: with `deliver` set it is
 * taken here with QEMU's exception entry (ESR/FAR/ELR/SPSR_EL1, PSTATE, vector; Unicorn
 * then clears the exception and the CPU goes on at the vector) and counted. Everything
 * else (traps to EL2: HVC, SMC, stage-2 aborts, trapped instructions) goes to Python's
 * on_trap, which records it and stops the CPU. */
static void a64_intr_hook(void *uc, uint32_t intno, void *user_data)
{
    struct a64_state *st = user_data;
    (void)uc;
    if (st->deliver && intno < 32 && (A64_GUEST_EXCPS >> intno & 1)
            && *(const uint32_t *)(st->env + st->target_el_off) == 1) {
        st->do_interrupt(st->cpu);
        st->delivered++;
        return;
    }
    st->on_trap(intno);
}

/* -- PMU */

static unsigned pmu_bit(int i)
{
    return i == A64_CYC ? A64_CYC_BIT : (unsigned)i;
}

static unsigned pmu_event(const struct a64_pmu *p, int i)
{
    return i == A64_CYC ? EV_CPU_CYCLES : (unsigned)(p->type[i] & 0x3FF);
}

/* The ELs a filter lets its counter count at: bit 0 EL0, bit 1 EL1 (Non-secure). */
static unsigned pmu_els(uint64_t filter)
{
    unsigned els = 0;
    if ((((filter >> 30) ^ (filter >> 28)) & 1) == 0)
        els |= 1;
    if ((((filter >> 31) ^ (filter >> 29)) & 1) == 0)
        els |= 2;
    return els;
}

static int pmu_counting(const struct a64_pmu *p, int i)
{
    return (p->pmcr & PMCR_E) && (p->cnten >> pmu_bit(i) & 1);
}

static uint64_t pmu_el_ns(const struct a64_state *st, unsigned el, int64_t now)
{
    const struct a64_pmu *p = &st->pmu;
    uint64_t ns = p->el_ns[el];
    if (p->tracking && st->last_el == el)
        ns += (uint64_t)(now - p->el_since);
    return ns;
}

/* Host ns counter i's cycles come from (before PMCR.D's division). */
static uint64_t pmu_cycle_ns(const struct a64_state *st, int i, int64_t now)
{
    unsigned els = pmu_els(st->pmu.type[i]);
    if (els == 3)
        return (uint64_t)now;
    return (els & 1 ? pmu_el_ns(st, 0, now) : 0) + (els & 2 ? pmu_el_ns(st, 1, now) : 0);
}

static int pmu_divided(const struct a64_pmu *p, int i)
{
    return i == A64_CYC && (p->pmcr & PMCR_D);
}

/* What counter i counts, at host time now: a monotonic source whose increase the
 * counter adds while it counts. */
static uint64_t pmu_source(const struct a64_state *st, int i, int64_t now)
{
    const struct a64_pmu *p = &st->pmu;
    unsigned els = pmu_els(p->type[i]);
    switch (pmu_event(p, i)) {
    case EV_INST_RETIRED:
        return (els & 1 ? p->insns[0] : 0) + (els & 2 ? p->insns[1] : 0);
    case EV_CPU_CYCLES: {
        uint64_t ns = pmu_cycle_ns(st, i, now);
        return pmu_divided(p, i) ? ns >> 6 : ns;
    }
    default:
        return 0;   /* SW_INCR: PMSWINC writes add to the counter; other events never count */
    }
}

static void pmu_add(struct a64_pmu *p, int i, uint64_t delta)
{
    uint64_t old = p->value[i];
    int wrapped;
    if (i == A64_CYC && (p->pmcr & PMCR_LC)) {
        p->value[i] = old + delta;
        wrapped = p->value[i] < old;
    } else {
        unsigned __int128 low = (unsigned __int128)(old & U32_MASK) + delta;
        wrapped = low > U32_MASK;
        p->value[i] = i == A64_CYC ? old + delta : (uint64_t)low & U32_MASK;
    }
    if (wrapped)
        p->ovs |= 1ULL << pmu_bit(i);
}

/* Bring every counter up to host time now. */
static void pmu_fold(struct a64_state *st, int64_t now)
{
    struct a64_pmu *p = &st->pmu;
    for (int i = 0; i <= A64_CYC; i++) {
        uint64_t s = pmu_source(st, i, now);
        if (pmu_counting(p, i))
            pmu_add(p, i, s - p->snap[i]);
        p->snap[i] = s;
    }
}

/* Counts left until counter i wraps (0: 2^64 for a 64-bit cycle counter at 0). */
static uint64_t pmu_to_wrap(const struct a64_pmu *p, int i)
{
    if (i == A64_CYC && (p->pmcr & PMCR_LC))
        return -p->value[i];
    return (1ULL << 32) - (p->value[i] & U32_MASK);
}

/* After the counters were folded to now and the configuration may have changed: the
 * block hook's work, the instruction budget, the EL tracking, the interrupt request and
 * the deadline; Python hears when the last two change. */
static void pmu_update(struct a64_state *st, int64_t now)
{
    struct a64_pmu *p = &st->pmu;
    int insns = 0, split = 0, sensitive = 0;
    int64_t budget = INT64_MAX, deadline = 0;
    unsigned el = (st->work ? (unsigned)st->last_el : (a64_el(st) ? 1u : 0u));
    for (int i = 0; i <= A64_CYC; i++) {
        unsigned els = pmu_els(p->type[i]);
        uint64_t left;
        if (!pmu_counting(p, i) || !els)
            continue;
        left = pmu_to_wrap(p, i);
        if (pmu_event(p, i) == EV_INST_RETIRED) {
            insns = 1;
            if (left && left < (uint64_t)budget)
                budget = (int64_t)left;
        } else if (pmu_event(p, i) == EV_CPU_CYCLES) {
            if (els != 3)
                split = 1;
            if (!(p->inten >> pmu_bit(i) & 1))
                continue;
            if (els != 3)
                sensitive = 1;
            if ((els >> el & 1) && left && left < (1ULL << 40)) {
                uint64_t wait = left;
                if (pmu_divided(p, i)) {
                    uint64_t ns = pmu_cycle_ns(st, i, now);
                    wait = (((ns >> 6) + left) << 6) - ns;
                }
                if (!deadline || now + (int64_t)wait < deadline)
                    deadline = now + (int64_t)wait;
            }
        }
    }
    if (insns || split)
        a64_work_on(st, A64_WORK_PMU);
    else
        st->work &= ~(uint64_t)A64_WORK_PMU;
    if (split && !p->tracking) {
        p->el_since = now;
        p->tracking = 1;
    } else if (!split && p->tracking) {
        p->el_ns[st->last_el] += (uint64_t)(now - p->el_since);
        p->tracking = 0;
    }
    p->el_sensitive = (uint64_t)sensitive;
    p->insn_budget = budget;
    uint64_t irq = (p->pmcr & PMCR_E) && (p->inten & p->ovs);
    if (irq != p->irq || deadline != p->deadline) {
        p->irq = irq;
        p->deadline = deadline;
        p->notifications++;
        if (p->on_change)
            p->on_change();
    }
}

static void pmu_resnap(struct a64_state *st, int64_t now)
{
    for (int i = 0; i <= A64_CYC; i++)
        st->pmu.snap[i] = pmu_source(st, i, now);
}

enum pmu_reg {
    PMR_NONE, PMR_RAZ, PMR_PMCR, PMR_CNTENSET, PMR_CNTENCLR, PMR_OVSCLR, PMR_SWINC, PMR_SELR,
    PMR_CEID0, PMR_CEID1, PMR_CCNTR, PMR_XEVTYPER, PMR_XEVCNTR, PMR_OVSSET, PMR_INTENSET,
    PMR_INTENCLR, PMR_EVCNTR, PMR_EVTYPER, PMR_CCFILTR,
};

/* Which PMU register an MRS/MSR names (op0 = 3; op1 3 CRn 9 CRm 12-14, op1 3 CRn 14
 * CRm 8-15, op1 0 CRn 9 CRm 14 op2 1-2); *n: the counter of PMEVCNTRn/PMEVTYPERn. */
static int pmu_reg(const struct cp_reg *cp, unsigned *n)
{
    static const int c12[8] = {PMR_PMCR, PMR_CNTENSET, PMR_CNTENCLR, PMR_OVSCLR, PMR_SWINC,
                               PMR_SELR, PMR_CEID0, PMR_CEID1};
    if (cp->op1 == 0)
        return cp->op2 == 1 ? PMR_INTENSET : PMR_INTENCLR;
    if (cp->crn == 9) {
        if (cp->crm == 12)
            return c12[cp->op2 & 7];
        if (cp->crm == 13)
            return cp->op2 == 0 ? PMR_CCNTR : cp->op2 == 1 ? PMR_XEVTYPER
                 : cp->op2 == 2 ? PMR_XEVCNTR : PMR_NONE;
        return cp->op2 == 3 ? PMR_OVSSET : PMR_NONE;   /* op2 0: PMUSERENR_EL0, Unicorn's */
    }
    *n = ((cp->crm & 3) << 3) | cp->op2;
    if (*n == 31)
        return cp->crm < 12 ? PMR_NONE : PMR_CCFILTR;
    if (*n >= A64_PMU_N)
        return PMR_NONE;        /* a counter that does not exist: QEMU's UNDEFINED */
    return cp->crm < 12 ? PMR_EVCNTR : PMR_EVTYPER;
}

/* Whether EL0 may make this access (PMUSERENR_EL0: EN bit 0, SW 1, CR 2, ER 3). */
static int pmu_el0_allowed(void *uc, const struct a64_state *st, int r, int is_read)
{
    struct cp_reg userenr = {9, 14, 3, 3, 0, 0};
    uint64_t u;
    if (r == PMR_INTENSET || r == PMR_INTENCLR)
        return 0;
    if (st->reg_read(uc, (int)st->reg_cp, &userenr) != 0)
        return 0;
    u = userenr.val;
    if (u & 1)
        return 1;
    switch (r) {
    case PMR_SWINC: return !is_read && (u >> 1 & 1);
    case PMR_CCNTR: return is_read && (u >> 2 & 1);
    case PMR_SELR: return (int)(u >> 3 & 1);
    case PMR_XEVCNTR: case PMR_EVCNTR: return is_read && (u >> 3 & 1);
    default: return 0;
    }
}

static void pmu_swinc(struct a64_pmu *p, uint64_t v, unsigned el)
{
    for (int i = 0; i < A64_PMU_N; i++)
        if ((v >> i & 1) && pmu_counting(p, i) && pmu_event(p, i) == EV_SW_INCR
                && (pmu_els(p->type[i]) >> el & 1))
            pmu_add(p, i, 1);
}

static uint64_t pmu_read(const struct a64_pmu *p, int r, unsigned n)
{
    switch (r) {
    case PMR_PMCR: return PMCR_RO | (p->pmcr & PMCR_RW);
    case PMR_CNTENSET: case PMR_CNTENCLR: return p->cnten;
    case PMR_INTENSET: case PMR_INTENCLR: return p->inten;
    case PMR_OVSSET: case PMR_OVSCLR: return p->ovs;
    case PMR_SELR: return p->selr;
    case PMR_CEID0: return PMCEID0;
    case PMR_CCNTR: return p->value[A64_CYC];
    case PMR_CCFILTR: return p->type[A64_CYC];
    case PMR_EVCNTR: return n < A64_PMU_N ? p->value[n] : 0;
    case PMR_EVTYPER: return n < A64_PMU_N ? p->type[n] : 0;
    default: return 0;  /* PMCEID1; PMXEV* for a counter that does not exist (RAZ/WI) */
    }
}

static void pmu_write(struct a64_pmu *p, int r, unsigned n, uint64_t v, unsigned el)
{
    switch (r) {
    case PMR_PMCR:
        if (v & PMCR_P)
            for (int i = 0; i < A64_PMU_N; i++)
                p->value[i] = 0;
        if (v & PMCR_C)
            p->value[A64_CYC] = 0;
        p->pmcr = v & PMCR_RW;
        break;
    case PMR_CNTENSET: p->cnten |= v & A64_PMU_BITS; break;
    case PMR_CNTENCLR: p->cnten &= ~v; break;
    case PMR_INTENSET: p->inten |= v & A64_PMU_BITS; break;
    case PMR_INTENCLR: p->inten &= ~v; break;
    case PMR_OVSSET: p->ovs |= v & A64_PMU_BITS; break;
    case PMR_OVSCLR: p->ovs &= ~v; break;
    case PMR_SWINC: pmu_swinc(p, v, el); break;
    case PMR_SELR: p->selr = v & 0x1F; break;
    case PMR_CCNTR: p->value[A64_CYC] = v; break;
    case PMR_CCFILTR: p->type[A64_CYC] = v & CCFILTR_MASK; break;
    case PMR_EVCNTR: if (n < A64_PMU_N) p->value[n] = v & U32_MASK; break;
    case PMR_EVTYPER: if (n < A64_PMU_N) p->type[n] = v & EVTYPER_MASK; break;
    default: break;
    }
}

static uint32_t pmu_access(void *uc, int reg, const struct cp_reg *cp, struct a64_state *st,
                           int is_read)
{
    struct a64_pmu *p = &st->pmu;
    unsigned n = 0, el;
    int r = pmu_reg(cp, &n);
    int64_t now;
    if (r == PMR_NONE || (r == PMR_SWINC && is_read)
            || ((r == PMR_CEID0 || r == PMR_CEID1) && !is_read))
        return 0;               /* Unicorn's: an undefined access (a write-only register read...) */
    el = a64_el(st) ? 1 : 0;
    if (el == 0 && !pmu_el0_allowed(uc, st, r, is_read))
        return 0;               /* Unicorn traps it, from the same PMUSERENR_EL0 */
    if (r == PMR_XEVTYPER || r == PMR_XEVCNTR) {
        n = (unsigned)p->selr;
        if (n == 31)
            r = r == PMR_XEVTYPER ? PMR_CCFILTR : PMR_RAZ;
        else
            r = r == PMR_XEVTYPER ? PMR_EVTYPER : PMR_EVCNTR;
    }
    now = mono_ns();
    pmu_fold(st, now);
    if (is_read) {
        uint64_t v = pmu_read(p, r, n);
        st->timer.reg_write(uc, reg, &v);
    } else {
        pmu_write(p, r, n, cp->val, el);
        pmu_resnap(st, now);    /* a counter's source may have changed with its settings */
    }
    pmu_update(st, now);
    return 1;
}

/* -- watchpoints */

/* The architecture's conditions for a watchpoint with DBGWCR `wcr` to fire now; *el: the EL. */
static int watch_conditions(void *uc, const struct a64_state *st, uint64_t wcr, unsigned *el)
{
    uint64_t pstate = 0;
    struct cp_reg mdscr = {0, 2, 2, 0, 2, 0};   /* MDSCR_EL1 */
    if (st->reg_read(uc, (int)st->reg_pstate, &pstate) != 0
            || st->reg_read(uc, (int)st->reg_cp, &mdscr) != 0)
        return 0;
    *el = (unsigned)(pstate >> 2) & 3;
    if (*el > 1 || !(mdscr.val >> 15 & 1))                                /* MDE */
        return 0;
    if (*el == 1 && (!(mdscr.val >> 13 & 1) || (pstate >> 9 & 1)))        /* KDE, PSTATE.D */
        return 0;
    if (((wcr >> 14) & 3) == 2)                 /* SSC: Secure state only */
        return 0;
    if (!((wcr >> 1) >> (*el == 0 ? 1 : 0) & 1))  /* PAC: bit 0 EL1, bit 1 EL0 */
        return 0;
    return !(wcr >> 20 & 1);                    /* WT: linked watchpoints never match here */
}

static void a64_watch_hook(void *uc, int type, uint64_t addr, int size, int64_t value,
                           void *user_data)
{
    struct a64_state *st = user_data;
    struct a64_watch *w = &st->watch;
    int write = type == UC_MEM_WRITE_;
    uint64_t page = addr & ~0xFFFULL;
    (void)value;
    if (type != UC_MEM_READ_ && type != UC_MEM_WRITE_)
        return;
    for (int n = 0; n < A64_WATCHPOINTS; n++) {
        if (!(w->enabled >> n & 1) || !((w->wcr[n] >> 3) >> write & 1))   /* LSC */
            continue;
        for (uint64_t k = 0; k < w->pages[n]; k++) {
            uint64_t va = w->page_va[n][k] | (addr & 0xFFF);
            unsigned el;
            if (w->page_pa[n][k] != page || va >= w->end[n] || va + (uint64_t)size <= w->start[n]
                    || !watch_conditions(uc, st, w->wcr[n], &el))
                continue;
            w->hits++;
            *(uint64_t *)(st->env + st->vaddress_off) = va > w->start[n] ? va : w->start[n];
            /* Unicorn put the PC on the access's instruction before calling memory hooks;
             * this unwinds the translated block (no return) */
            st->raise(st->env, EXCP_DATA_ABORT,
                      ((el == 1 ? 0x35u : 0x34u) << 26) | (1u << 25) | ((uint32_t)write << 6)
                      | 0x22u, 1);
            return;
        }
    }
}

static void watch_translate(void *uc, struct a64_state *st)
{
    struct a64_watch *w = &st->watch;
    uint64_t unmapped = 0;
    st->work &= ~(uint64_t)A64_WORK_XLATE;
    for (int n = 0; n < A64_WATCHPOINTS; n++) {
        if (!(w->enabled >> n & 1))
            continue;
        for (uint64_t k = 0; k < w->pages[n]; k++) {
            uint64_t pa = 0;
            if (st->vmem_translate(uc, w->page_va[n][k], UC_PROT_READ_, &pa) == 0) {
                w->page_pa[n][k] = pa & ~0xFFFULL;
            } else {
                w->page_pa[n][k] = A64_NO_PAGE;
                unmapped = 1;
            }
        }
    }
    w->unmapped = unmapped;
    w->translations++;
}

/* The SYS operations other CPUs must hear of (op0 = 1): the TLBI broadcast forms of
 * EL1 (op1 0, CRn 8, CRm 3: VMALLE1IS, VAE1IS, ASIDE1IS, VAAE1IS, VALE1IS, VAALE1IS),
 * IC IALLUIS (op1 0, CRn 7, CRm 1, op2 0), IC IALLU (op1 0, CRn 7, CRm 5, op2 0: this
 * CPU only) and IC IVAU (op1 3, CRn 7, CRm 5, op2 1, Xt = the virtual address; its
 * page is found through this CPU's translation, as a read; one it cannot translate
 * drops all code). Each engine caches its own translations, so these reach the other
 * CPUs of the VM through xsync (xsync.h). */
static void a64_xsync(void *uc, struct a64_state *st, const struct cp_reg *cp)
{
    if (cp->crn == 8) {
        if (cp->op1 == 0 && cp->crm == 3)
            xsync_broadcast(st->group, st->peer, XSYNC_TLB, 0, 0);  /* own TLB: QEMU's */
    } else if (cp->crn == 7) {
        if (cp->op1 == 0 && cp->op2 == 0 && (cp->crm == 1 || cp->crm == 5)) {
            if (cp->crm == 1)
                xsync_broadcast(st->group, st->peer, XSYNC_CODE_ALL, 0, XSYNC_CODE_ALL);
            else
                xsync_local(st->peer, XSYNC_CODE_ALL, 0);
        } else if (cp->op1 == 3 && cp->crm == 5 && cp->op2 == 1) {
            uint64_t pa = 0;
            if (st->vmem_translate(uc, cp->val, UC_PROT_READ_, &pa) == 0)
                xsync_broadcast(st->group, st->peer, XSYNC_CODE_PAGE, pa, XSYNC_CODE_PAGE);
            else
                xsync_broadcast(st->group, st->peer, XSYNC_CODE_ALL, 0, XSYNC_CODE_ALL);
        }
    }
}

static uint32_t a64_sys_hook(void *uc, int reg, const struct cp_reg *cp, void *user_data)
{
    struct a64_state *st = user_data;
    (void)reg;
    if (cp->crn == 8 && (st->work & A64_WORK_WATCH))
        st->work |= A64_WORK_XLATE;             /* TLBI: the next block translates again */
    if (st->group != NULL && cp->op0 == 1)
        a64_xsync(uc, st, cp);
    return 0;
}

/* -- the debugger's hardware breakpoints and watchpoints (pyaxvisor.vcpu.debug)
 *
 * Not the guest's debug registers: a gdb stub's own, reported to EL2 (Python's
 * on_trap) as the architecture's debug exceptions would be with MDCR_EL2.TDE set.
 * a64_debug_code_hook is a UC_HOOK_CODE Python installs over exactly one address per
 * breakpoint (Unicorn instruments only the instructions in a hook's range; it puts
 * the PC on the instruction before calling the hook): a breakpoint exception (EC
 * 0x30) before the instruction runs. a64_debug_watch_hook (UC_HOOK_MEM_READ and
 * UC_HOOK_MEM_WRITE, installed while a watchpoint is set) matches the physical
 * address of each access against the watched ranges (Python translated their virtual
 * addresses when it set them) and takes a watchpoint exception (EC 0x34, WnR, FAR =
 * the watched virtual address accessed) before the access is done. */

#define A64_DEBUG_WATCH 4
#define EXCP_PREFETCH_ABORT 3

struct a64_debug {
    uint8_t *env;                       /* CPUARMState */
    uint64_t vaddress_off;              /* env->exception.vaddress */
    void (*raise)(void *env, uint32_t excp, uint32_t syndrome, uint32_t target_el);
    uint64_t watches;                   /* watchpoints in use (the first `watches`) */
    uint64_t pa[A64_DEBUG_WATCH], va[A64_DEBUG_WATCH], len[A64_DEBUG_WATCH];
    uint64_t access[A64_DEBUG_WATCH];   /* bit 0: reads, bit 1: writes */
    uint64_t hits;
};

static void a64_debug_code_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct a64_debug *d = user_data;
    (void)uc;
    (void)size;
    d->hits++;
    *(uint64_t *)(d->env + d->vaddress_off) = address;
    d->raise(d->env, EXCP_PREFETCH_ABORT, (0x30u << 26) | (1u << 25) | 0x22u, 2);
}

static void a64_debug_watch_hook(void *uc, int type, uint64_t addr, int size, int64_t value,
                                 void *user_data)
{
    struct a64_debug *d = user_data;
    unsigned write = type == UC_MEM_WRITE_;
    (void)uc;
    (void)value;
    if (type != UC_MEM_READ_ && type != UC_MEM_WRITE_)
        return;
    for (uint64_t n = 0; n < d->watches && n < A64_DEBUG_WATCH; n++) {
        if (!(d->access[n] >> write & 1) || addr >= d->pa[n] + d->len[n]
                || addr + (uint64_t)size <= d->pa[n])
            continue;
        d->hits++;
        *(uint64_t *)(d->env + d->vaddress_off) =
            d->va[n] + (addr > d->pa[n] ? addr - d->pa[n] : 0);
        d->raise(d->env, EXCP_DATA_ABORT, (0x34u << 26) | (1u << 25) | (write << 6) | 0x22u, 2);
        return;
    }
}

/* -- hooks */

static void a64_el_changed(struct a64_state *st, unsigned el)
{
    struct a64_pmu *p = &st->pmu;
    if (p->tracking) {
        int64_t now = mono_ns();
        p->el_ns[st->last_el] += (uint64_t)(now - p->el_since);
        p->el_since = now;
        st->last_el = el;
        if (p->el_sensitive) {
            pmu_fold(st, now);
            pmu_update(st, now);
        }
    } else {
        st->last_el = el;
    }
    if ((st->work & A64_WORK_WATCH) && st->watch.unmapped)
        st->work |= A64_WORK_XLATE;
}

static void a64_block_work(void *uc, struct a64_state *st, uint32_t size)
{
    unsigned el = a64_el(st) ? 1 : 0;
    if (el != st->last_el)
        a64_el_changed(st, el);
    if (st->work & A64_WORK_PMU) {
        struct a64_pmu *p = &st->pmu;
        uint64_t n = size >> 2;
        p->insns[el] += n;
        p->insn_budget -= (int64_t)n;
        if (p->insn_budget <= 0) {
            int64_t now = mono_ns();
            pmu_fold(st, now);
            pmu_update(st, now);
        }
    }
    if (st->work & A64_WORK_XLATE)
        watch_translate(uc, st);
}

static void a64_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct a64_state *st = user_data;
    (void)address;
    if (st->work)
        a64_block_work(uc, st, size);
    preempt_check(uc, &st->preempt);
}

static uint32_t a64_sysreg(void *uc, int reg, const struct cp_reg *cp, struct a64_state *st,
                           int is_read)
{
    if (cp->op0 == 3) {
        if (cp->op1 == 3) {
            if (cp->crn == 14) {
                if (cp->crm < 4)
                    return timer_access(uc, reg, cp, &st->timer, is_read);
                return cp->crm >= 8 ? pmu_access(uc, reg, cp, st, is_read) : 0;
            }
            return cp->crn == 9 && cp->crm >= 12 ? pmu_access(uc, reg, cp, st, is_read) : 0;
        }
        if (cp->op1 == 0) {
            if (cp->crn == 9 && cp->crm == 14 && (cp->op2 == 1 || cp->op2 == 2))
                return pmu_access(uc, reg, cp, st, is_read);
            if (!is_read && (st->work & A64_WORK_WATCH) && cp->crm == 0
                    && ((cp->crn == 2 && cp->op2 <= 2) || (cp->crn == 1 && cp->op2 == 0)))
                st->work |= A64_WORK_XLATE;     /* TTBR0/TTBR1/TCR/SCTLR_EL1 */
        }
        return 0;
    }
    if (cp->op0 == 2 && !is_read && cp->op1 == 0 && cp->crn == 0 && cp->op2 >= 6
            && cp->crm < A64_WATCHPOINTS && a64_el(st) >= 1) {
        /* DBGWVRn_EL1 (op2 6), DBGWCRn_EL1 (op2 7): Unicorn stores the value too (0 is
         * returned); Python re-arms the watchpoints before the guest goes on */
        (cp->op2 == 6 ? st->watch.wvr : st->watch.wcr)[cp->crm] = cp->val;
        st->watch.rehook = 1;
        st->preempt.emu_stop(uc);
    }
    return 0;
}

/* Block-hook work appeared (a PMU access started counting) while the block hook is
 * not installed: stop at the next block so Python installs it. */
static inline void a64_want_block_hook(void *uc, struct a64_state *st)
{
    if (st->work && !st->hooked)
        st->preempt.emu_stop(uc);
}

/* MRS: ``reg`` is the destination register; MSR: ``cp->val`` is the value written. */
static uint32_t a64_mrs_hook(void *uc, int reg, const struct cp_reg *cp, void *user_data)
{
    uint32_t skip = a64_sysreg(uc, reg, cp, user_data, 1);
    a64_want_block_hook(uc, user_data);
    return skip;
}

static uint32_t a64_msr_hook(void *uc, int reg, const struct cp_reg *cp, void *user_data)
{
    uint32_t skip = a64_sysreg(uc, reg, cp, user_data, 0);
    a64_want_block_hook(uc, user_data);
    return skip;
}

/* ------------------------------------------------------------------ RISC-V 64 */

enum { RV_STOP = 0, RV_RESUME = 1, RV_DELIVER = 2 };   /* what on_trap answers */

#define RV_CSR_MIP 0x344
#define RV_CSR_MEDELEG 0x302
#define RV_ECALL 8              /* Unicorn reports every ECALL as 8 (U-mode's cause) */
#define RV_PRV_U 0
#define RV_INST_ACCESS_FAULT 1
#define RV_LOAD_ACCESS_FAULT 5
#define RV_STORE_ACCESS_FAULT 7

/* uc_mem_type (unicorn.h) */
enum {
    UC_MEM_READ_UNMAPPED_ = 19, UC_MEM_WRITE_UNMAPPED_ = 20, UC_MEM_FETCH_UNMAPPED_ = 21,
    UC_MEM_WRITE_PROT_ = 22, UC_MEM_READ_PROT_ = 23, UC_MEM_FETCH_PROT_ = 24,
};

struct rv_state {
    struct preempt_state preempt;   /* first: the stop request of the block hook */
    void *uc;                       /* the Unicorn handle */
    int (*emu_start)(void *uc, uint64_t begin, uint64_t until, uint64_t timeout, size_t count);
    int64_t time_base_ns;           /* the time CSR of this CPU: base and frequency */
    uint64_t time_freq;
    uint8_t *env;                   /* CPURISCVState (located by the engine's self-test) */
    void *cpu;                      /* its CPUState */
    uint64_t pc_off, priv_off, badaddr_off;     /* offsets in env */
    uint64_t pc_skew;               /* what Unicorn added to the PC before the hook */
    void (*do_interrupt)(void *cpu);            /* riscv_cpu_do_interrupt */
    int (*csrrw)(void *env, int csrno, uint64_t *old, uint64_t value, uint64_t mask);
    void (*raise_exception)(void *env, uint32_t cause, uintptr_t retaddr);
    void (*cpu_exit)(void *cpu);    /* leave the chain of translated blocks */
    int (*on_trap)(void);           /* Python, may be NULL (= stop) */
    uint64_t guest_causes;          /* bit n: exception n is the guest's (delivered here) */
    uint64_t line_level;            /* wanted level of the hypervisor-driven mip bits */
    uint64_t line_dirty;            /* mip bits whose level changed since last applied */
    /* the last trap to M */
    int64_t cause;
    uint64_t epc, tval, priv;
    uint64_t mem_fault;             /* the trap came from riscv_mem_invalid_hook */
    uint64_t mem_pending;           /* set by riscv_mem_invalid_hook for the next trap */
    uint64_t trap_stop;             /* the CPU stopped at the recorded trap */
    /* statistics */
    uint64_t traps, delivered, breakpoints, mem_faults, line_updates;
    struct xsync_peer *peer;        /* this hart's, while it runs a hart of an SMP VM */
    uint64_t fences_i;              /* FENCE.I instructions seen (riscv_fence_i_hook) */
    uint64_t ebreak_to_m;           /* a debugger is on: EBREAK goes to on_trap (cause 3) */
};

/* Write the changed interrupt lines to mip (the CPU's thread). ``leave``: make a running
 * CPU leave its chained blocks to look at them (not from riscv_kick, which runs where the
 * CPU looks next). */
static void rv_apply_lines(struct rv_state *st, int leave)
{
    uint64_t dirty = __atomic_exchange_n(&st->line_dirty, 0, __ATOMIC_SEQ_CST);
    if (dirty) {
        uint64_t level = __atomic_load_n(&st->line_level, __ATOMIC_SEQ_CST);
        uint64_t old;
        st->csrrw(st->env, RV_CSR_MIP, &old, level & dirty, dirty);
        /* Unicorn's cpu_interrupt() only notes the request: without leaving the
         * chained blocks the CPU would not look at it until something else stops it. */
        if (leave)
            st->cpu_exit(st->cpu);
        st->line_updates++;
    }
}

/* Take exception ``cause`` (the CPU's pending one) in the guest's S-mode, as if
 * medeleg delegated it: QEMU's trap entry, with the cause's medeleg bit set for it. */
static void rv_deliver(struct rv_state *st, uint32_t cause)
{
    uint64_t bit = 1ULL << (cause & 63), old, ignored;
    st->csrrw(st->env, RV_CSR_MEDELEG, &old, bit, bit);
    st->do_interrupt(st->cpu);
    st->csrrw(st->env, RV_CSR_MEDELEG, &ignored, old, bit);
    st->delivered++;
}

static void riscv_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct rv_state *st = user_data;
    (void)address;
    (void)size;
    if (__atomic_load_n(&st->line_dirty, __ATOMIC_RELAXED))
        rv_apply_lines(st, 1);
    preempt_check(uc, &st->preempt);
}

/* uc_set_kick_callback (patch cpu-kick): another thread changed lines and called uc_kick. */
static void riscv_kick(void *uc, void *user_data)
{
    (void)uc;
    rv_apply_lines(user_data, 0);
}

static void riscv_intr_hook(void *uc, uint32_t intno, void *user_data)
{
    struct rv_state *st = user_data;
    uint64_t *pc = (uint64_t *)(st->env + st->pc_off);
    uint64_t priv = *(uint64_t *)(st->env + st->priv_off);
    uint64_t mem_fault = st->mem_pending;
    *pc -= st->pc_skew;
    st->mem_pending = 0;
    st->traps++;
    if (intno < 64 && (st->guest_causes >> intno & 1) && !(intno == RV_ECALL && priv != RV_PRV_U)) {
        rv_deliver(st, intno);
        return;
    }
    /* the architectural cause: an ecall is 8 + the mode it came from (U 8, S 9, M 11) */
    st->cause = intno == RV_ECALL ? RV_ECALL + (int64_t)priv : intno;
    st->epc = *pc;
    st->tval = *(uint64_t *)(st->env + st->badaddr_off);
    st->priv = priv;
    st->mem_fault = mem_fault;
    int action = st->on_trap ? st->on_trap() : RV_STOP;
    if (action == RV_DELIVER) {
        rv_deliver(st, intno);
    } else if (action != RV_RESUME) {
        st->trap_stop = 1;
        st->preempt.emu_stop(uc);
    }
}

/* FENCE.I (UC_HOOK_INSN UC_RISCV_INS_FENCE_I, installed while the hart runs a hart of
 * an SMP VM): another hart may have written the code this one runs next, and this
 * engine's translations do not see other engines' stores, so it drops them all at its
 * next block start when another hart ran since it last did (xsync_fence_i). */
static void riscv_fence_i_hook(void *uc, void *user_data)
{
    struct rv_state *st = user_data;
    (void)uc;
    st->fences_i++;
    if (st->peer != NULL)
        xsync_fence_i(st->peer);
}

static bool riscv_insn_invalid_hook(void *uc, void *user_data)
{
    /* Reached only for EBREAK: the other "stop" exception, Unicorn's end address, is
     * never hit (the engine runs until -1). The PC is at the EBREAK, the exception
     * number still set: QEMU's trap entry delivers it to the guest. */
    struct rv_state *st = user_data;
    st->breakpoints++;
    if (st->ebreak_to_m) {
        /* as any trap to M (the intr hook takes Unicorn's PC skew off again) */
        *(uint64_t *)(st->env + st->pc_off) += st->pc_skew;
        riscv_intr_hook(uc, 3, st);
        return true;
    }
    rv_deliver(st, 3);
    return true;
}

static bool riscv_mem_invalid_hook(void *uc, int type, uint64_t address, int size,
                                  int64_t value, void *user_data)
{
    struct rv_state *st = user_data;
    uint32_t cause;
    (void)uc;
    (void)size;
    (void)value;
    switch (type) {
    case UC_MEM_READ_UNMAPPED_:
    case UC_MEM_READ_PROT_:
        cause = RV_LOAD_ACCESS_FAULT;
        break;
    case UC_MEM_WRITE_UNMAPPED_:
    case UC_MEM_WRITE_PROT_:
        cause = RV_STORE_ACCESS_FAULT;
        break;
    case UC_MEM_FETCH_UNMAPPED_:
    case UC_MEM_FETCH_PROT_:
        cause = RV_INST_ACCESS_FAULT;
        break;
    default:
        return false;
    }
    /* Unicorn synchronised the PC to the faulting instruction before calling the
     * hook; raising the exception unwinds the translated block (no return). */
    *(uint64_t *)(st->env + st->badaddr_off) = address;
    st->mem_pending = 1;
    st->mem_faults++;
    st->raise_exception(st->env, cause, 0);
    return false;
}

static __thread int64_t rv_time_base_ns;
static __thread uint64_t rv_time_freq = 10000000;

static uint64_t riscv_rdtime(void)
{
    return ticks_since(rv_time_base_ns, rv_time_freq);
}

/* One run of the CPU from its PC (the calling thread, GIL released while the guest
 * runs; on_trap takes it again): the time source and pending line changes are set
 * first. Returns Unicorn's error code; trap_stop says whether a trap ended the run. */
static PyObject *riscv_run(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    int err;
    (void)self;
    if (!PyArg_ParseTuple(args, "K", &addr))
        return NULL;
    struct rv_state *st = (struct rv_state *)(uintptr_t)addr;
    uint64_t pc = *(uint64_t *)(st->env + st->pc_off);
    rv_time_base_ns = st->time_base_ns;
    rv_time_freq = st->time_freq;
    st->trap_stop = 0;
    Py_BEGIN_ALLOW_THREADS
    if (__atomic_load_n(&st->line_dirty, __ATOMIC_RELAXED))
        rv_apply_lines(st, 1);
    err = st->emu_start(st->uc, pc, UINT64_MAX, 0, 0);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(err);
}

/* The debugger's step and hardware breakpoints on RISC-V (pyaxvisor.vcpu.debug): UC_HOOK_CODE
 * hooks (Unicorn puts the PC on the instruction before calling them) that raise a
 * trap to M (cause 24, custom) before an instruction runs and note it in `fired`. rv_step_hook is installed over
 * every address for one step: it lets `skip` instructions (1) run, then raises;
 * rv_bp_hook is installed over exactly one address per breakpoint. */
#define RV_DEBUG_WATCH 4

struct rv_debug {
    uint8_t *env;
    void (*raise)(void *env, uint32_t cause, uintptr_t retaddr);
    uint64_t skip;                      /* instructions the step hook lets run */
    uint64_t fired;                     /* 1: a step ended, 2: a breakpoint was hit,
                                         * 3: a watched read, 4: a watched write */
    uint64_t hits;
    uint64_t addr;                      /* the watched virtual address accessed */
    uint64_t watches;                   /* watchpoints in use (the first `watches`) */
    uint64_t pa[RV_DEBUG_WATCH], va[RV_DEBUG_WATCH], len[RV_DEBUG_WATCH];
    uint64_t access[RV_DEBUG_WATCH];    /* bit 0: reads, bit 1: writes */
};

/* A cause of the custom range, which no instruction raises: it reaches the intr hook
 * (Unicorn turns cause 3 into an invalid-instruction event) and on_trap. */
#define RV_EXCP_DEBUGGER 24

static void rv_step_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct rv_debug *d = user_data;
    (void)uc;
    (void)address;
    (void)size;
    if (d->skip) {
        d->skip--;
        return;
    }
    d->fired = 1;
    d->hits++;
    d->raise(d->env, RV_EXCP_DEBUGGER, 0);
}

static void rv_bp_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct rv_debug *d = user_data;
    (void)uc;
    (void)address;
    (void)size;
    d->fired = 2;
    d->hits++;
    d->raise(d->env, RV_EXCP_DEBUGGER, 0);
}

/* UC_HOOK_MEM_READ and UC_HOOK_MEM_WRITE while a watchpoint is set: the physical address
 * of each access against the watched ranges (translated by Python when it set them); a
 * match traps to M before the access is done. */
static void rv_watch_hook(void *uc, int type, uint64_t addr, int size, int64_t value,
                          void *user_data)
{
    struct rv_debug *d = user_data;
    unsigned write = type == UC_MEM_WRITE_;
    (void)uc;
    (void)value;
    if (type != UC_MEM_READ_ && type != UC_MEM_WRITE_)
        return;
    for (uint64_t n = 0; n < d->watches && n < RV_DEBUG_WATCH; n++) {
        if (!(d->access[n] >> write & 1) || addr >= d->pa[n] + d->len[n]
                || addr + (uint64_t)size <= d->pa[n])
            continue;
        d->fired = write ? 4 : 3;
        d->addr = d->va[n] + (addr > d->pa[n] ? addr - d->pa[n] : 0);
        d->hits++;
        d->raise(d->env, RV_EXCP_DEBUGGER, 0);
        return;
    }
}

static PyObject *rv_debug_hooks(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(NNNn)", PyLong_FromVoidPtr((void *)rv_step_hook),
                         PyLong_FromVoidPtr((void *)rv_bp_hook),
                         PyLong_FromVoidPtr((void *)rv_watch_hook),
                         (Py_ssize_t)sizeof(struct rv_debug));
}

static PyObject *riscv_hook_addresses(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(NNNNNNN)", PyLong_FromVoidPtr((void *)riscv_block_hook),
                         PyLong_FromVoidPtr((void *)riscv_intr_hook),
                         PyLong_FromVoidPtr((void *)riscv_insn_invalid_hook),
                         PyLong_FromVoidPtr((void *)riscv_mem_invalid_hook),
                         PyLong_FromVoidPtr((void *)riscv_rdtime),
                         PyLong_FromVoidPtr((void *)riscv_fence_i_hook),
                         PyLong_FromVoidPtr((void *)riscv_kick));
}

static PyObject *riscv_set_time(PyObject *self, PyObject *args)
{
    long long base_ns;
    unsigned long long freq;
    (void)self;
    if (!PyArg_ParseTuple(args, "LK", &base_ns, &freq))
        return NULL;
    rv_time_base_ns = base_ns;
    rv_time_freq = freq;
    Py_RETURN_NONE;
}

static PyObject *riscv_time_now(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromUnsignedLongLong(riscv_rdtime());
}

static PyObject *riscv_set_lines(PyObject *self, PyObject *args)
{
    unsigned long long addr, mask;
    int level;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKp", &addr, &mask, &level))
        return NULL;
    struct rv_state *st = (struct rv_state *)(uintptr_t)addr;
    if (level)
        __atomic_fetch_or(&st->line_level, mask, __ATOMIC_SEQ_CST);
    else
        __atomic_fetch_and(&st->line_level, ~mask, __ATOMIC_SEQ_CST);
    __atomic_fetch_or(&st->line_dirty, mask, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *riscv_apply_lines(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    (void)self;
    if (!PyArg_ParseTuple(args, "K", &addr))
        return NULL;
    rv_apply_lines((struct rv_state *)(uintptr_t)addr, 1);
    Py_RETURN_NONE;
}

static PyObject *riscv_csr(PyObject *self, PyObject *args)
{
    unsigned long long addr, value, mask;
    int csrno;
    (void)self;
    if (!PyArg_ParseTuple(args, "KiKK", &addr, &csrno, &value, &mask))
        return NULL;
    struct rv_state *st = (struct rv_state *)(uintptr_t)addr;
    uint64_t old = 0;
    if (st->csrrw(st->env, csrno, &old, value, mask) != 0)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(old);
}

static PyObject *preempt_hook_address(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return PyLong_FromVoidPtr((void *)preempt_block_hook);
}

static PyObject *a64_hook_addresses(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(NNNNNNN)", PyLong_FromVoidPtr((void *)a64_block_hook),
                         PyLong_FromVoidPtr((void *)a64_mrs_hook),
                         PyLong_FromVoidPtr((void *)a64_msr_hook),
                         PyLong_FromVoidPtr((void *)a64_sys_hook),
                         PyLong_FromVoidPtr((void *)a64_watch_hook),
                         PyLong_FromVoidPtr((void *)a64_kick),
                         PyLong_FromVoidPtr((void *)a64_intr_hook));
}

/* (code hook, memory hook, sizeof struct a64_debug) of the debugger's hooks. */
static PyObject *a64_debug_hooks(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(NNn)", PyLong_FromVoidPtr((void *)a64_debug_code_hook),
                         PyLong_FromVoidPtr((void *)a64_debug_watch_hook),
                         (Py_ssize_t)sizeof(struct a64_debug));
}

/* The PMU brought up to now (fold), or its sources taken as they are now without counting
 * (resnap: after Python set the counters); then re-evaluated. CPU stopped. */
static PyObject *a64_pmu_sync(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    int resnap;
    (void)self;
    if (!PyArg_ParseTuple(args, "Kp", &addr, &resnap))
        return NULL;
    struct a64_state *st = (struct a64_state *)(uintptr_t)addr;
    int64_t now = mono_ns();
    if (resnap)
        pmu_resnap(st, now);
    else
        pmu_fold(st, now);
    pmu_update(st, now);
    Py_RETURN_NONE;
}

/* (sizeof, offsetof pmu, offsetof watch) of struct a64_state, for Python's check. */
static PyObject *a64_layout(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(nnnn)", (Py_ssize_t)sizeof(struct a64_state),
                         (Py_ssize_t)offsetof(struct a64_state, pmu),
                         (Py_ssize_t)offsetof(struct a64_state, watch),
                         (Py_ssize_t)offsetof(struct a64_state, virq));
}

/* HCR_EL2.VI = level; the CPU's thread only (CPU stopped, or from a callback inside it). */
static PyObject *py_a64_set_virq(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    int level;
    (void)self;
    if (!PyArg_ParseTuple(args, "Kp", &addr, &level))
        return NULL;
    struct a64_state *st = (struct a64_state *)(uintptr_t)addr;
    __atomic_store_n(&st->virq_want, (uint64_t)level, __ATOMIC_SEQ_CST);
    a64_set_virq(st, (uint64_t)level, 1);
    Py_RETURN_NONE;
}

/* Set (on) or clear (off) block-hook work bits; CPU stopped. */
static PyObject *a64_set_work(PyObject *self, PyObject *args)
{
    unsigned long long addr, on, off;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKK", &addr, &on, &off))
        return NULL;
    struct a64_state *st = (struct a64_state *)(uintptr_t)addr;
    st->work &= ~(uint64_t)off;
    if (on)
        a64_work_on(st, on);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------- mirrored windows (mmio_mirror.h) */

static PyObject *py_mirror_read(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(Nn)", PyLong_FromVoidPtr((void *)mirror_read),
                         (Py_ssize_t)sizeof(struct mmio_mirror));
}

/* ------------------------------------------------------------------ xsync (xsync.h) */

static PyObject *py_xsync_layout(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(nn)", (Py_ssize_t)sizeof(struct xsync_peer),
                         (Py_ssize_t)sizeof(struct xsync_group));
}

static PyObject *py_xsync_drain(PyObject *self, PyObject *args)
{
    unsigned long long peer;
    (void)self;
    if (!PyArg_ParseTuple(args, "K", &peer))
        return NULL;
    return PyBool_FromLong(xsync_drain((struct xsync_peer *)(uintptr_t)peer));
}

static PyObject *py_xsync_broadcast(PyObject *self, PyObject *args)
{
    unsigned long long group, peer, page;
    int kind;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKiK", &group, &peer, &kind, &page))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    xsync_broadcast((struct xsync_group *)(uintptr_t)group, (struct xsync_peer *)(uintptr_t)peer,
                    kind, page, kind);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_xsync_dma_written(PyObject *self, PyObject *args)
{
    unsigned long long peer;
    Py_buffer ranges;
    (void)self;
    if (!PyArg_ParseTuple(args, "Ky*", &peer, &ranges))
        return NULL;
    const uint64_t *r = ranges.buf;
    for (Py_ssize_t i = 0; i + 1 < ranges.len / 8; i += 2)
        xsync_dma_written((struct xsync_peer *)(uintptr_t)peer, r[i], r[i + 1]);
    PyBuffer_Release(&ranges);
    Py_RETURN_NONE;
}

/* The columns form: pieces addrs[i] + offset, lengths[i] (two sequences of ints). */
static PyObject *py_xsync_dma_written_columns(PyObject *self, PyObject *args)
{
    unsigned long long peer, offset;
    PyObject *addrs_obj, *lengths_obj;
    (void)self;
    if (!PyArg_ParseTuple(args, "KOOK", &peer, &addrs_obj, &lengths_obj, &offset))
        return NULL;
    PyObject *addrs = PySequence_Fast(addrs_obj, "addrs must be a sequence");
    if (addrs == NULL)
        return NULL;
    PyObject *lengths = PySequence_Fast(lengths_obj, "lengths must be a sequence");
    if (lengths == NULL) {
        Py_DECREF(addrs);
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(addrs);
    if (PySequence_Fast_GET_SIZE(lengths) != n) {
        PyErr_SetString(PyExc_ValueError, "addrs and lengths differ in length");
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(addrs, i));
        unsigned long long len = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(lengths, i));
        if (PyErr_Occurred())
            goto out;
        xsync_dma_written((struct xsync_peer *)(uintptr_t)peer, a + offset, len);
    }
    result = Py_None;
    Py_INCREF(result);
out:
    Py_DECREF(lengths);
    Py_DECREF(addrs);
    return result;
}

static PyMethodDef methods[] = {
    {"preempt_hook_address", preempt_hook_address, METH_NOARGS,
     "UC_HOOK_BLOCK callback; user_data: struct preempt_state*."},
    {"a64_debug_hooks", a64_debug_hooks, METH_NOARGS,
     "(code hook, memory hook, sizeof) of the debugger's breakpoints and watchpoints."},
    {"a64_hook_addresses", a64_hook_addresses, METH_NOARGS,
     "(block, MRS, MSR, SYS, memory hooks, kick callback, intr hook) of the AArch64 CPU; user_data: "
     "struct a64_state*."},
    {"a64_pmu_sync", a64_pmu_sync, METH_VARARGS,
     "a64_pmu_sync(state, resnap): fold the PMU's counters to now (or take their sources "
     "afresh) and re-evaluate it; CPU stopped."},
    {"a64_layout", a64_layout, METH_NOARGS,
     "(sizeof, offsetof pmu, offsetof watch) of struct a64_state."},
    {"a64_set_virq", py_a64_set_virq, METH_VARARGS,
     "a64_set_virq(state, level): HCR_EL2.VI = level, on the CPU's thread only."},
    {"a64_set_work", a64_set_work, METH_VARARGS,
     "a64_set_work(state, on, off): set and clear the block hook's work bits; CPU stopped."},
    {"rv_debug_hooks", rv_debug_hooks, METH_NOARGS,
     "(step hook, breakpoint hook, sizeof) of the debugger's RISC-V hooks."},
    {"riscv_hook_addresses", riscv_hook_addresses, METH_NOARGS,
     "(block, intr, insn_invalid, mem_invalid hooks; rdtime callback; FENCE.I hook; kick "
     "callback); user_data: "
     "struct rv_state*."},
    {"riscv_run", riscv_run, METH_VARARGS,
     "riscv_run(state) -> unicorn error: run the CPU from its PC (GIL released)."},
    {"riscv_set_time", riscv_set_time, METH_VARARGS,
     "riscv_set_time(base_ns, freq): the time CSR of CPUs run by the calling thread."},
    {"riscv_time_now", riscv_time_now, METH_NOARGS,
     "The time CSR value now, for the calling thread's base and frequency."},
    {"riscv_set_lines", riscv_set_lines, METH_VARARGS,
     "riscv_set_lines(state, mask, level): drive mip bits (any thread)."},
    {"riscv_apply_lines", riscv_apply_lines, METH_VARARGS,
     "riscv_apply_lines(state): write changed lines to mip now (CPU stopped)."},
    {"riscv_csr", riscv_csr, METH_VARARGS,
     "riscv_csr(state, csrno, value, mask) -> old value or None: CSR read-modify-write "
     "with M-mode rights (mask 0 reads)."},
    {"mirror_read", py_mirror_read, METH_NOARGS,
     "(address of mirror_read, sizeof struct mmio_mirror): the read callback of mirrored "
     "in-CPU windows; user_data: struct mmio_mirror*."},
    {"xsync_layout", py_xsync_layout, METH_NOARGS,
     "(sizeof struct xsync_peer, sizeof struct xsync_group)."},
    {"xsync_drain", py_xsync_drain, METH_VARARGS,
     "xsync_drain(peer) -> bool: do the work other CPUs queued (between runs); True: "
     "dropping all translated code is left to the caller."},
    {"xsync_dma_written", py_xsync_dma_written, METH_VARARGS,
     "xsync_dma_written(peer, ranges): a device wrote guest RAM at the (pa, len) pairs "
     "of native-endian u64s in `ranges`; the peer drops the translated code it had of "
     "them (any thread, no wait)."},
    {"xsync_dma_written_columns", py_xsync_dma_written_columns, METH_VARARGS,
     "xsync_dma_written_columns(peer, addrs, lengths, offset): xsync_dma_written of the "
     "pieces (addrs[i] + offset, lengths[i]) of two sequences of ints."},
    {"xsync_broadcast", py_xsync_broadcast, METH_VARARGS,
     "xsync_broadcast(group, peer, kind, page): what this CPU's maintenance owes the "
     "group's CPUs (GIL released while it waits for them)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hooks", "Native Unicorn hooks for pyaxvisor.", -1, methods,
};

PyMODINIT_FUNC PyInit__hooks(void) { return PyModule_Create(&module); }

/*
 * Native hooks for the software CPU engine (Unicorn). Python callbacks cost
 * microseconds each; these run on every basic block or every system-register
 * access, so they are C. They need no Unicorn headers: the few libunicorn
 * functions they call are handed over as pointers in the shared structs, which
 * Python owns (ctypes) and reads directly.
 *
 * 1. preempt_block_hook (UC_HOOK_BLOCK): a safe preemption point. Unicorn can be
 *    stopped cleanly only at a block boundary; uc_emu_stop from another thread or
 *    a timeout may cut an instruction after its load and replay it. At the start
 *    of each block the hook checks a request word any host thread may set and, if
 *    set, stops the CPU before the block runs (PC = block start).
 *
 * 2. timer_sysreg_hook (UC_HOOK_INSN for MRS and MSR): the Arm generic timer.
 *    Unicorn's own timer does not work (CNTV_CTL/CVAL writes read back 0, the
 *    counter runs at a fixed host-derived rate), and a Python hook on MRS would
 *    run for every MRS (DAIF saves included). This hook returns 0 at once for
 *    every register but the EL0 timer block (op0=3 op1=3 CRn=14), and emulates
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
 *    - riscv_rdtime: the time CSR, (CLOCK_MONOTONIC - base) * freq / 1e9 with the
 *      base and frequency the calling thread set (QEMU's callback has no argument,
 *      so they are per host thread: the thread that runs the CPU sets them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct preempt_state {
    volatile int32_t request;   /* set non-zero by any thread to stop the CPU */
    int32_t pad;
    int (*emu_stop)(void *uc);  /* uc_emu_stop */
    uint64_t stops;
};

static inline void preempt_check(void *uc, struct preempt_state *st)
{
    if (st->request) {
        st->stops++;
        st->emu_stop(uc);
    }
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

static uint32_t timer_access(void *uc, int reg, const struct cp_reg *cp,
                             struct timer_state *t, int is_read)
{
    if (cp->op0 != 3 || cp->op1 != 3 || cp->crn != 14)
        return 0;               /* not the EL0 timer block: let Unicorn do it */
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

/* MRS: ``reg`` is the destination register; MSR: ``cp->val`` is the value written. */
static uint32_t timer_mrs_hook(void *uc, int reg, const struct cp_reg *cp, void *user_data)
{
    return timer_access(uc, reg, cp, user_data, 1);
}

static uint32_t timer_msr_hook(void *uc, int reg, const struct cp_reg *cp, void *user_data)
{
    return timer_access(uc, reg, cp, user_data, 0);
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
};

static void rv_apply_lines(struct rv_state *st)
{
    uint64_t dirty = __atomic_exchange_n(&st->line_dirty, 0, __ATOMIC_SEQ_CST);
    if (dirty) {
        uint64_t level = __atomic_load_n(&st->line_level, __ATOMIC_SEQ_CST);
        uint64_t old;
        st->csrrw(st->env, RV_CSR_MIP, &old, level & dirty, dirty);
        /* Unicorn's cpu_interrupt() only notes the request: without leaving the
         * chained blocks the CPU would not look at it until something else stops it. */
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
        rv_apply_lines(st);
    preempt_check(uc, &st->preempt);
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

static bool riscv_insn_invalid_hook(void *uc, void *user_data)
{
    /* Reached only for EBREAK: the other "stop" exception, Unicorn's end address, is
     * never hit (the engine runs until -1). The PC is at the EBREAK, the exception
     * number still set: QEMU's trap entry delivers it to the guest. */
    struct rv_state *st = user_data;
    (void)uc;
    st->breakpoints++;
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
        rv_apply_lines(st);
    err = st->emu_start(st->uc, pc, UINT64_MAX, 0, 0);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(err);
}

static PyObject *riscv_hook_addresses(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(NNNNN)", PyLong_FromVoidPtr((void *)riscv_block_hook),
                         PyLong_FromVoidPtr((void *)riscv_intr_hook),
                         PyLong_FromVoidPtr((void *)riscv_insn_invalid_hook),
                         PyLong_FromVoidPtr((void *)riscv_mem_invalid_hook),
                         PyLong_FromVoidPtr((void *)riscv_rdtime));
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
    rv_apply_lines((struct rv_state *)(uintptr_t)addr);
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

static PyObject *timer_hook_addresses(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
    return Py_BuildValue("(NN)", PyLong_FromVoidPtr((void *)timer_mrs_hook),
                         PyLong_FromVoidPtr((void *)timer_msr_hook));
}

static PyMethodDef methods[] = {
    {"preempt_hook_address", preempt_hook_address, METH_NOARGS,
     "UC_HOOK_BLOCK callback; user_data: struct preempt_state*."},
    {"timer_hook_addresses", timer_hook_addresses, METH_NOARGS,
     "(MRS hook, MSR hook) for UC_HOOK_INSN; user_data: struct timer_state*."},
    {"riscv_hook_addresses", riscv_hook_addresses, METH_NOARGS,
     "(block, intr, insn_invalid, mem_invalid hooks; rdtime callback); user_data: "
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hooks", "Native Unicorn hooks for pyaxvisor.", -1, methods,
};

PyMODINIT_FUNC PyInit__hooks(void) { return PyModule_Create(&module); }

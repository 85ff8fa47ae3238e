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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

struct preempt_state {
    volatile int32_t request;   /* set non-zero by any thread to stop the CPU */
    int32_t pad;
    int (*emu_stop)(void *uc);  /* uc_emu_stop */
    uint64_t stops;
};

static void preempt_block_hook(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct preempt_state *st = user_data;
    (void)address;
    (void)size;
    if (st->request) {
        st->stops++;
        st->emu_stop(uc);
    }
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
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec - t->base_ns;
    if (ns < 0)
        ns = 0;
    return (uint64_t)(((unsigned __int128)ns * t->freq) / 1000000000ULL);
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hooks", "Native Unicorn hooks for pyaxvisor.", -1, methods,
};

PyMODINIT_FUNC PyInit__hooks(void) { return PyModule_Create(&module); }

/* Cross-engine synchronisation of cached translations: see xsync.h. */
#include "xsync.h"

#include <sched.h>
#include <stddef.h>
#include <time.h>

#define RAM_ADDR_INVALID UINT64_MAX
#define PAGE_MASK_4K (~(uint64_t)0xFFF)

static void lock(struct xsync_peer *p)
{
    while (__atomic_exchange_n(&p->lock, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&p->lock, __ATOMIC_RELAXED))
            sched_yield();
}

static void unlock(struct xsync_peer *p)
{
    __atomic_store_n(&p->lock, 0, __ATOMIC_RELEASE);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Drop the peer's translated code of the 4 KiB physical page `pa` (its RAM only). */
static void invalidate_page(struct xsync_peer *p, uint64_t pa)
{
    for (uint64_t i = 0; i < p->nram; i++) {
        if (pa - p->ram_pa[i] < p->ram_size[i]) {
            void *host = (void *)(uintptr_t)(p->ram_host[i] + (pa - p->ram_pa[i]));
            uint64_t ram = p->ram_addr(p->uc, host);
            if (ram != RAM_ADDR_INVALID)
                p->invalidate(p->uc, ram, ram + 0x1000);
            p->code_pages++;
            return;
        }
    }
}

/* Take the queued work of `p` and do what can be done inside a running CPU. */
static int do_work(struct xsync_peer *p)
{
    uint64_t pages[XSYNC_PAGES];
    lock(p);
    uint64_t gen = p->req;
    int tlb = (int)p->tlb;
    uint64_t n = p->npages;
    for (uint64_t i = 0; i < n; i++)
        pages[i] = p->page[i];
    p->tlb = 0;
    p->npages = 0;
    int all = (int)p->code_all;
    unlock(p);
    if (tlb) {
        p->tlb_flush(p->cpu);
        p->tlb_flushes++;
    }
    for (uint64_t i = 0; i < n; i++)
        invalidate_page(p, pages[i]);
    __atomic_store_n(&p->done, gen, __ATOMIC_RELEASE);
    return all;
}

int xsync_service(struct xsync_peer *self)
{
    return do_work(self);
}

/* The runs the other peers of `self`'s group began, or ~0 when one runs now. */
static uint64_t others_runs(struct xsync_peer *self)
{
    struct xsync_group *group = self->group;
    uint64_t sum = 0;
    if (group == NULL)
        return 0;
    uint64_t n = group->n < XSYNC_PEERS ? group->n : XSYNC_PEERS;
    for (uint64_t i = 0; i < n; i++) {
        struct xsync_peer *p = group->peer[i];
        if (p == NULL || p == self)
            continue;
        if (__atomic_load_n(&p->preempt->running, __ATOMIC_ACQUIRE))
            return UINT64_MAX;
        sum += __atomic_load_n(&p->runs, __ATOMIC_ACQUIRE);
    }
    return sum;
}

void xsync_fence_i(struct xsync_peer *self)
{
    uint64_t others = others_runs(self);
    if (others != UINT64_MAX && others == self->seen_others) {
        self->fences_skipped++;
        return;
    }
    xsync_local(self, XSYNC_CODE_ALL, 0);
}

int xsync_drain(struct xsync_peer *self)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* after `running` was set: see xsync.h */
    int all = do_work(self);
    if (all) {
        lock(self);
        self->code_all = 0;
        unlock(self);
        self->code_flushes++;
        /* the caller drops the code now: what others do from here on is news */
        self->seen_others = others_runs(self);
    }
    return all;
}

/* Queue `kind` in `p`; returns the generation to wait for (0: nothing to wait for). */
static uint64_t queue(struct xsync_peer *p, int kind, uint64_t page)
{
    uint64_t gen = 0;
    lock(p);
    if (kind & XSYNC_TLB)
        p->tlb = 1;
    if (kind & XSYNC_CODE_ALL)
        p->code_all = 1;
    if (kind & XSYNC_CODE_PAGE) {
        uint64_t n = p->npages;
        if (n && p->page[n - 1] == page)
            ;                                   /* the same page again (IC IVAU loops) */
        else if (n < XSYNC_PAGES)
            p->page[p->npages++] = page;
        else
            p->code_all = 1;                    /* too many: drop all code too */
    }
    if (kind & (XSYNC_TLB | XSYNC_CODE_PAGE))
        gen = ++p->req;
    unlock(p);
    return gen;
}

void xsync_dma_written(struct xsync_peer *p, uint64_t pa, uint64_t len)
{
    int queued = 0;
    if (len == 0 || p->has_code == NULL)
        return;
    for (uint64_t page = pa & PAGE_MASK_4K; page < pa + len; page += 0x1000) {
        for (uint64_t i = 0; i < p->nram; i++) {
            if (page - p->ram_pa[i] >= p->ram_size[i])
                continue;
            void *host = (void *)(uintptr_t)(p->ram_host[i] + (page - p->ram_pa[i]));
            uint64_t ram = p->ram_addr(p->uc, host);
            if (ram != RAM_ADDR_INVALID && p->has_code(p->uc, ram)) {
                queue(p, XSYNC_CODE_PAGE, page);
                p->dma_pages++;
                queued = 1;
            }
            break;
        }
    }
    if (!queued)
        return;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* the request before `running` */
    if (__atomic_load_n(&p->preempt->running, __ATOMIC_RELAXED)) {
        p->stop(p->uc);
        p->stops_sent++;
    }
}

void xsync_local(struct xsync_peer *self, int kind, uint64_t page)
{
    if (kind & XSYNC_TLB) {
        self->tlb_flush(self->cpu);
        self->tlb_flushes++;
    }
    if (kind & XSYNC_CODE_ALL) {
        lock(self);
        self->code_all = 1;
        unlock(self);
        self->stop(self->uc);
    } else if (kind & XSYNC_CODE_PAGE) {
        invalidate_page(self, page & PAGE_MASK_4K);
    }
}

void xsync_broadcast(struct xsync_group *group, struct xsync_peer *self, int kind,
                     uint64_t page, int own)
{
    uint64_t gens[XSYNC_PEERS];
    uint64_t n = group->n < XSYNC_PEERS ? group->n : XSYNC_PEERS;
    int wait = 0;
    page &= PAGE_MASK_4K;
    for (uint64_t i = 0; i < n; i++) {
        struct xsync_peer *p = group->peer[i];
        gens[i] = 0;
        if (p == NULL || p == self)
            continue;
        gens[i] = queue(p, kind, page);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* the request before `running` */
        if (__atomic_load_n(&p->preempt->running, __ATOMIC_RELAXED)) {
            p->stop(p->uc);
            self->stops_sent++;
            wait |= gens[i] != 0;
        }
    }
    xsync_local(self, own, page);
    if (!wait)
        return;
    int64_t start = now_ns();
    unsigned spins = 0;
    self->waits++;
    for (uint64_t i = 0; i < n; i++) {
        struct xsync_peer *p = group->peer[i];
        if (!gens[i] || p == NULL)
            continue;
        while (__atomic_load_n(&p->done, __ATOMIC_ACQUIRE) < gens[i]
               && __atomic_load_n(&p->preempt->running, __ATOMIC_ACQUIRE)) {
            /* a peer waiting for us meanwhile gets its answer */
            if (__atomic_load_n(&self->req, __ATOMIC_RELAXED)
                    != __atomic_load_n(&self->done, __ATOMIC_RELAXED))
                do_work(self);
            if (now_ns() - start > XSYNC_WAIT_NS) {
                self->timeouts++;
                goto out;
            }
            if (spins < XSYNC_SPINS) {
                spins++;
                sched_yield();
            } else {
                /* leave the core to the CPU we wait for (a host with fewer cores than
                 * busy threads) */
                struct timespec nap = {0, 20000};
                nanosleep(&nap, NULL);
            }
        }
    }
out:
    self->wait_ns += (uint64_t)(now_ns() - start);
}

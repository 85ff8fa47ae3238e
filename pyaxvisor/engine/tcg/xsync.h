/*
 * Cross-engine synchronisation of cached translations (xsync): what a broadcast TLB or
 * instruction-cache maintenance operation of one CPU owes the other CPUs of its VM.
 *
 * Each software CPU is its own Unicorn engine with its own TLB and translated code, so
 * a TLBI ...IS or an IC IVAU (AArch64), or an SBI remote fence (RISC-V), executed by
 * one CPU reaches none of the others by itself, as it would on hardware or in QEMU's
 * one-process TCG. Each engine owns one `struct xsync_peer`; the CPUs that run one VM
 * are the peers of one `struct xsync_group` (Python allocates both and keeps the
 * group's list up to date as vCPUs bind to engines).
 *
 * A CPU that executes such an operation (on its own thread, inside the CPU: a hook or
 * an SBI callback) queues the work in each other peer (xsync_request) and, if that
 * peer's CPU is running, stops it at its next block start (uc_emu_stop_at_block; on
 * the stock library, where CPUs never run at the same time, the peer simply finds the
 * work before its next run). TLB flushes and code-page invalidations are synchronous,
 * as the architecture makes them complete at the issuing CPU's next DSB: the issuing
 * CPU waits (xsync_wait) until every running peer has done them. A waiting CPU does
 * the work queued for itself meanwhile, so two CPUs that wait for each other both
 * finish. Dropping *all* translated code cannot be done inside a running CPU (it frees
 * the code buffer), so it is done at the peer's next stop and not waited for.
 *
 * A peer does its queued work between runs, on its own thread (xsync_drain, called by
 * Python after marking the CPU running, so that a request made before is never
 * missed: the issuing CPU's store of the request and load of `running`, and the
 * peer's store of `running` and load of the request, are each ordered by a full
 * fence).
 */
#ifndef PYAXVISOR_XSYNC_H
#define PYAXVISOR_XSYNC_H

#include <stdint.h>

#define XSYNC_PEERS 64          /* CPUs of one VM that one group can reach */
#define XSYNC_PAGES 32          /* code pages queued before "drop all code" instead */
#define XSYNC_RAM 8             /* RAM regions of a peer (for physical -> ram_addr) */
#define XSYNC_WAIT_NS 2000000000LL  /* give up waiting for a peer after 2 s (a hang guard:
                                       a loaded host can hold a thread off for a while) */
#define XSYNC_SPINS 64              /* yields before a waiting CPU sleeps between looks */

enum { XSYNC_TLB = 1, XSYNC_CODE_PAGE = 2, XSYNC_CODE_ALL = 4 };

/* A CPU's stop request (Python's Preemptor owns it; first member of the engines'
 * native states). */
struct preempt_state {
    volatile int32_t request;   /* set non-zero by any thread to stop the CPU */
    volatile int32_t running;   /* Python's: the CPU is in a run (Preemptor) */
    int (*emu_stop)(void *uc);  /* uc_emu_stop_at_block (patched build), else uc_emu_stop */
    uint64_t stops;             /* counted by Python when it takes a request */
};

struct xsync_peer {
    volatile int32_t lock;      /* spinlock over the queued work */
    int32_t pad;
    uint64_t req;               /* generation of the last synchronous request queued */
    uint64_t done;              /* generation the peer has done (release store) */
    uint64_t tlb;               /* a TLB flush is queued */
    uint64_t code_all;          /* dropping all translated code is queued */
    uint64_t npages;            /* queued code pages (physical, page-aligned) */
    uint64_t page[XSYNC_PAGES];
    void *uc;                   /* the engine */
    void *cpu;                  /* its CPUState */
    struct preempt_state *preempt;  /* its stop request (the `running` flag) */
    int (*stop)(void *uc);                              /* uc_emu_stop_at_block */
    void (*tlb_flush)(void *cpu);                       /* tlb_flush_<arch> */
    uint64_t (*ram_addr)(void *uc, void *host);         /* qemu_ram_addr_from_host_<arch> */
    void (*invalidate)(void *uc, uint64_t start, uint64_t end);  /* tb_invalidate_phys_range */
    uint64_t nram;
    uint64_t ram_pa[XSYNC_RAM], ram_size[XSYNC_RAM], ram_host[XSYNC_RAM];
    /* statistics */
    uint64_t tlb_flushes, code_pages, code_flushes, stops_sent, waits, wait_ns, timeouts;
    /* FENCE.I (xsync_fence_i) */
    struct xsync_group *group;  /* the group the peer is in (Python sets it), or NULL */
    uint64_t runs;              /* runs the engine began (Python counts them) */
    uint64_t seen_others;       /* the other peers' runs at the last code drop, or ~0 */
    uint64_t fences_skipped;
    /* Device writes to guest RAM (xsync_dma_written) */
    int (*has_code)(void *uc, uint64_t ram_addr);       /* tb_page_has_code_<arch> */
    uint64_t dma_pages;         /* pages written by a device that held translated code */
};

struct xsync_group {
    uint64_t n;
    struct xsync_peer *peer[XSYNC_PEERS];
};

/* Queue `kind` (XSYNC_*; `page`: the physical address for XSYNC_CODE_PAGE) in every peer
 * of `group` but `self`, stopping the running ones; with XSYNC_TLB or XSYNC_CODE_PAGE,
 * wait until they have done it. `self` does `own` (what the instruction did not do to
 * its own CPU already) as xsync_local does. */
void xsync_broadcast(struct xsync_group *group, struct xsync_peer *self, int kind,
                     uint64_t page, int own);

/* `self`'s own part of `kind`, inside its CPU: TLB and page at once, all code at its
 * next stop (it is stopped at its next block start for that). */
void xsync_local(struct xsync_peer *self, int kind, uint64_t page);

/* A local instruction-cache invalidation (RISC-V FENCE.I) inside `self`'s CPU: drop
 * its translated code at its next stop, unless no other CPU of its group ran guest
 * code since its code was last dropped (nobody else can have written code: its own
 * stores keep its translations coherent) — Linux runs FENCE.I tens of thousands of
 * times while it patches its own code on the boot hart alone. */
void xsync_fence_i(struct xsync_peer *self);

/* A device wrote guest RAM [pa, pa + len) (`p`'s physical addresses), on any thread:
 * the pages of it that hold translated code of `p` are queued for `p` to drop, and a
 * running CPU is stopped at its next block to do so (one that is not running does it
 * before its next run). Does not wait. Whether a page holds code is read from `p`'s
 * page descriptors without its thread: a translation made from the page at that very
 * moment (the guest running code it is overwriting by DMA) may be missed. */
void xsync_dma_written(struct xsync_peer *p, uint64_t pa, uint64_t len);

/* Do the work queued for `self` that can be done inside its running CPU (TLB flush,
 * code pages); returns whether dropping all code is still queued. */
int xsync_service(struct xsync_peer *self);

/* Between runs, on the peer's thread, after its `running` flag was set: all queued
 * work but dropping all code, whose being queued is returned (the caller drops it). */
int xsync_drain(struct xsync_peer *self);

#endif

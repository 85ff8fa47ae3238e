"""Cached translations kept coherent between the software CPUs of one VM (``xsync.c``).

Each software CPU is a Unicorn engine of its own, with its own TLB and translated code.
What one CPU's broadcast maintenance owes the others (AArch64: TLBI ...IS, IC IVAU,
IC IALLUIS; RISC-V: the SBI remote fences) reaches them through a :class:`SyncGroup`
(one per VM, shared by the vCPUs' configurations) of :class:`SyncPeer` (one per
engine): see ``xsync.h`` for the protocol. An engine joins the group of the vCPU bound
to it and leaves it at unbind.

Threads: :meth:`SyncGroup.add` and :meth:`SyncGroup.remove` from any thread (a lock
orders them; the native side reads the slots without one, and an empty slot is
skipped); :meth:`SyncPeer.drain` and :meth:`SyncPeer.broadcast` on the engine's
thread only (between runs, or inside the CPU for ``broadcast``).
"""

from __future__ import annotations

import array
import ctypes
import threading
from collections.abc import Sequence
from typing import Any

from pyaxvisor.engine.tcg import _hooks  # type: ignore[attr-defined]
from pyaxvisor.engine.tcg.common import EngineError
from pyaxvisor.engine.tcg.native import set_tcg_parallel, uc_function

PEERS = 64
PAGES = 32
RAM_REGIONS = 8
TLB, CODE_PAGE, CODE_ALL = 1, 2, 4
_U64 = ctypes.c_uint64
_P = ctypes.c_void_p


class _Peer(ctypes.Structure):
    """``struct xsync_peer``."""

    _fields_ = (("lock", ctypes.c_int32), ("pad", ctypes.c_int32), ("req", _U64),
                ("done", _U64), ("tlb", _U64), ("code_all", _U64), ("npages", _U64),
                ("page", _U64 * PAGES), ("uc", _P), ("cpu", _P), ("preempt", _P),
                ("stop", _P), ("tlb_flush", _P), ("ram_addr", _P), ("invalidate", _P),
                ("nram", _U64), ("ram_pa", _U64 * RAM_REGIONS),
                ("ram_size", _U64 * RAM_REGIONS), ("ram_host", _U64 * RAM_REGIONS),
                ("tlb_flushes", _U64), ("code_pages", _U64), ("code_flushes", _U64),
                ("stops_sent", _U64), ("waits", _U64), ("wait_ns", _U64),
                ("timeouts", _U64), ("group", _P), ("runs", _U64), ("seen_others", _U64),
                ("fences_skipped", _U64), ("has_code", _P), ("dma_pages", _U64))


class _Group(ctypes.Structure):
    """``struct xsync_group``."""

    _fields_ = (("n", _U64), ("peer", ctypes.POINTER(_Peer) * PEERS))


if (ctypes.sizeof(_Peer), ctypes.sizeof(_Group)) != _hooks.xsync_layout():
    raise EngineError("pyaxvisor's native xsync structures and their Python mirrors "
                      "disagree: rebuild the extension (python setup.py build_ext --inplace)")


def _has_code(arch: str) -> int | None:
    """``tb_page_has_code_<arch>`` (patch notdirty-code-pages), or None (stock library:
    its stores to code pages are all detected, but DMA writes are not followed)."""
    try:
        return uc_function(f"tb_page_has_code_{arch}")
    except AttributeError:
        return None


class SyncPeer:
    """One engine's place in sync groups. ``arch`` names QEMU's target (``aarch64``,
    ``riscv64``) whose TLB and code functions it calls; ``stop_fn`` is the address
    of the function that stops the engine at its next block; ``preempt`` its
    :class:`~pyaxvisor.engine.tcg.native._PreemptState` (the ``running`` flag)."""

    def __init__(self, uch: int, cpu: int, preempt: Any, stop_fn: int, arch: str) -> None:
        p = self._peer = _Peer()
        p.uc, p.cpu = uch, cpu
        p.preempt = ctypes.addressof(preempt)
        p.stop = stop_fn
        p.tlb_flush = uc_function(f"tlb_flush_{arch}")
        p.ram_addr = uc_function(f"qemu_ram_addr_from_host_{arch}")
        p.invalidate = uc_function(f"tb_invalidate_phys_range_{arch}")
        p.has_code = _has_code(arch)
        self.address = ctypes.addressof(p)
        self._preempt = preempt  # kept alive: the peer points into it

    def set_ram(self, regions: list[tuple[int, int, int]]) -> None:
        """The engine's RAM as ``(physical base, size, host address)`` (CPU stopped)."""
        if len(regions) > RAM_REGIONS:
            raise EngineError(f"{len(regions)} RAM regions: cached code of at most "
                              f"{RAM_REGIONS} can be kept coherent between CPUs")
        p = self._peer
        p.nram = 0
        for i, (pa, size, host) in enumerate(regions):
            p.ram_pa[i], p.ram_size[i], p.ram_host[i] = pa, size, host
        p.nram = len(regions)

    def pending(self) -> bool:
        """Whether work other CPUs queued here waits (a racy read: a stop follows any
        request made after it)."""
        p = self._peer
        return bool(p.tlb or p.npages or p.code_all or p.req != p.done)

    def drain(self) -> bool:
        """Between runs, after the CPU was marked running: do the queued work but
        dropping all translated code, which the caller must do when this is True."""
        return bool(_hooks.xsync_drain(self.address))

    def dma_written(self, ranges: Sequence[tuple[int, int]]) -> None:
        """A device wrote this engine's RAM at the physical ``(pa, length)`` ranges: the
        engine drops the translated code it had of those pages (at its next block if it
        runs, else before its next run), as QEMU's DMA writes invalidate translations.
        Any thread; does not wait. A no-op on a library without ``tb_page_has_code``."""
        flat = array.array("Q")
        for pa, length in ranges:
            flat.append(pa)
            flat.append(length)
        _hooks.xsync_dma_written(self.address, flat)

    def dma_written_columns(self, addrs: Sequence[int], lengths: Sequence[int],
                            offset: int = 0) -> None:
        """:meth:`dma_written` of the ranges ``(addrs[i] + offset, lengths[i])`` given as
        two sequences of ints (walked in native code)."""
        _hooks.xsync_dma_written_columns(self.address, addrs, lengths, offset)

    def broadcast(self, group: SyncGroup, kind: int, page: int = 0) -> None:
        """What this CPU's maintenance owes every CPU of ``group`` (itself included):
        ``kind`` :data:`TLB`, :data:`CODE_PAGE` (``page``: physical) or
        :data:`CODE_ALL`; waits (GIL released) until the running ones did the TLB and
        page work."""
        _hooks.xsync_broadcast(group.address, self.address, kind, page)

    @property
    def stats(self) -> dict[str, int]:
        p = self._peer
        return {"xsync_tlb_flushes": p.tlb_flushes, "xsync_code_pages": p.code_pages,
                "xsync_code_flushes": p.code_flushes, "xsync_stops_sent": p.stops_sent,
                "xsync_waits": p.waits, "xsync_wait_us": p.wait_ns // 1000,
                "xsync_timeouts": p.timeouts, "xsync_fences_i_skipped": p.fences_skipped,
                "xsync_dma_code_pages": p.dma_pages}


class SyncGroup:
    """The engines running one VM's vCPUs (at most :data:`PEERS`)."""

    def __init__(self) -> None:
        self._group = _Group()
        self.address = ctypes.addressof(self._group)
        self._members: dict[int, SyncPeer] = {}
        self._ever: dict[int, SyncPeer] = {}  # every peer that was a member, for stats
        self._lock = threading.Lock()
        #: CPUs of the group inside a run now, and the most there ever were at once.
        self.running = 0
        self.max_running = 0

    def run_begins(self, peer: SyncPeer) -> None:
        """``peer``'s engine begins a run (its thread)."""
        peer._peer.runs += 1
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)

    def run_ends(self) -> None:
        with self._lock:
            self.running -= 1

    def add(self, peer: SyncPeer) -> None:
        with self._lock:
            if peer.address in self._members:
                return
            g = self._group
            slots = [i for i in range(g.n) if not g.peer[i]]
            if slots:
                i = slots[0]
            elif g.n < PEERS:
                i = g.n
            else:
                raise EngineError(f"more than {PEERS} CPUs in one VM")
            g.peer[i] = ctypes.pointer(peer._peer)
            peer._peer.group = self.address
            self._members[peer.address] = peer
            self._ever[peer.address] = peer
            if i == g.n:
                g.n = i + 1

    @property
    def stats(self) -> dict[str, int]:
        """The figures of :attr:`SyncPeer.stats` summed over every engine that was in
        the group (an engine's counters run over all the VMs it served)."""
        with self._lock:
            peers = list(self._ever.values())
        total: dict[str, int] = {}
        for peer in peers:
            for key, value in peer.stats.items():
                total[key] = total.get(key, 0) + value
        return total

    def remove(self, peer: SyncPeer) -> None:
        with self._lock:
            if self._members.pop(peer.address, None) is None:
                return
            g = self._group
            for i in range(g.n):
                if g.peer[i] and ctypes.addressof(g.peer[i].contents) == peer.address:
                    g.peer[i] = None
            peer._peer.group = None


class Membership:
    """The sync group an engine's bound vCPU belongs to, and whether the engine
    translates for CPUs that run at the same time (the engine's thread, CPU stopped)."""

    def __init__(self, uc: Any, peer: SyncPeer) -> None:
        self._uc = uc
        self.peer = peer
        self.group: SyncGroup | None = None
        self.parallel = False

    def join(self, group: SyncGroup | None, parallel: bool) -> bool:
        """Belong to ``group`` (``None``: a VM of one CPU); returns whether the group
        changed."""
        if parallel != self.parallel:
            set_tcg_parallel(self._uc, parallel)
            self.parallel = parallel
        if group is self.group:
            return False
        self.leave()
        if group is not None:
            group.add(self.peer)
            self.group = group
        return True

    def leave(self) -> bool:
        """Leave the group (at unbind); returns whether there was one."""
        group = self.group
        if group is None:
            return False
        group.remove(self.peer)
        self.group = None
        return True

    def broadcast(self, kind: int) -> None:
        """:meth:`SyncPeer.broadcast` to the group (nothing without one)."""
        if self.group is not None:
            self.peer.broadcast(self.group, kind)

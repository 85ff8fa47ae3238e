"""SiFive-compatible Platform-Level Interrupt Controller, as on QEMU's RISC-V ``virt``.

One :class:`Plic` is both the MMIO :class:`~pyaxvisor.devices.bus.Device` of the
PLIC window (QEMU ``virt``: 0x0c00_0000) and the
:class:`~pyaxvisor.devices.irq.IrqSink` the devices' lines drive
(``set_irq_level(source, level)``, sources 1..num_sources-1; source 0 does not
exist). Its outputs are the interrupt-request lines of its *contexts*: on the
``virt`` board context ``2*h`` is hart ``h``'s M-mode external interrupt (MEIP)
and context ``2*h + 1`` its S-mode one (SEIP). ``on_context_irq(context, level)``
reports each change of a context's line.

The register map is the RISC-V PLIC specification's (riscv-plic-spec 1.0.0, the
layout of SiFive's PLIC), checked against QEMU's ``hw/intc/sifive_plic.c``:

====================================== ===================================================
offset                                 register (all 32 bits)
====================================== ===================================================
``0x00_0000 + 4*s``                    priority of source ``s`` (0 < s < num_sources)
``0x00_1000 + 4*w``                    pending bits of sources ``32*w .. 32*w+31``
                                       (read-only)
``0x00_2000 + 0x80*c + 4*w``           enable bits of context ``c`` for sources
                                       ``32*w .. 32*w+31``
``0x20_0000 + 0x1000*c``               priority threshold of context ``c``
``0x20_0000 + 0x1000*c + 4``           claim (read) / complete (write) of context ``c``
====================================== ===================================================

The window is ``0x20_0000 + 0x1000 * num_contexts`` bytes (:attr:`Plic.size`, the
``layout.plic_size(harts)`` of the board).

Rules:

* **Priorities** are WARL: a write keeps the implemented low bits (enough bits for
  ``priorities``, 3 bits for QEMU's 7 levels) and a result above ``priorities``
  reads as ``priorities``. Priority 0 means "never interrupt". Thresholds are WARL
  the same way.
* **Sources are level-triggered**, as QEMU's ``virt`` wires its devices: a source is
  pending while its line is high and it is not *in flight*; lowering the line before
  a claim withdraws the request (QEMU does the same). A claim puts the source in
  flight: it does not read as pending, and is not claimed again, whatever its line
  does, until it is completed; after the completion it is pending again if its line
  is still high.
* **Claim** (reading claim/complete) returns the pending source, enabled for the
  context, with the highest priority above the context's threshold (ties: the lowest
  source ID), clears its pending bit and puts it in flight for that context; it
  returns 0 when there is none.
* **Complete** (writing a source ID to claim/complete) ends the flight of a source
  that this context claimed and that is still enabled for it (the specification:
  completions of sources not enabled for the target are ignored). Any other
  completion (another context's claim, a source not in flight, an ID that is not a
  source) is ignored.
* A context's **output** is high while some pending source enabled for it has a
  priority above its threshold.
* **Access**: aligned 32-bit accesses only; any other width or a misaligned offset
  raises :class:`~pyaxvisor.devices.bus.BadAccess` naming the access, and so does an
  offset past the window. Reserved offsets inside the window read as zero and ignore
  writes; so do the pending bits (read-only), the priority of source 0, enable bit 0
  (source 0) and bits naming no source.
* :meth:`Plic.reset` returns priorities, enables, thresholds and claims to zero; the
  input line levels are kept (the devices still drive them).

Threads: every register access and line change takes the PLIC's lock. The output
callback is never called with that lock held: each change is recorded under the
lock and then delivered, one call at a time and in order, by whichever thread is
delivering (a thread that finds another one delivering leaves its change to it).
So a callback may call back into the PLIC (a vCPU claiming at once); it runs on
whatever thread changed the state, and it must not wait for another thread that is
itself inside a PLIC call. A level that rises and falls again before it is delivered
is not reported at all: the callback sees only changes of the delivered level.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth

__all__ = [
    "CLAIM_COMPLETE", "CONTEXT_BASE", "CONTEXT_STRIDE", "ENABLE_BASE", "ENABLE_STRIDE",
    "MAX_CONTEXTS", "MAX_SOURCES", "PENDING_BASE", "PRIORITY_BASE", "THRESHOLD", "Plic",
]

#: Register blocks (offsets into the window) and their strides.
PRIORITY_BASE = 0x0000
PENDING_BASE = 0x1000
ENABLE_BASE = 0x2000
ENABLE_STRIDE = 0x80
CONTEXT_BASE = 0x20_0000
CONTEXT_STRIDE = 0x1000
#: Offsets inside one context's block.
THRESHOLD = 0x0
CLAIM_COMPLETE = 0x4

#: What the specification's map has room for: source IDs 0..1023, contexts 0..15871
#: (the enable blocks end at 0x1F_1FFF; the rest below 0x20_0000 is reserved).
MAX_SOURCES = 1024
MAX_CONTEXTS = 15872

_M32 = 0xFFFF_FFFF


class Plic(Device):
    """A PLIC with ``num_sources`` source IDs (0 included, which does not exist),
    ``num_contexts`` contexts and ``priorities`` priority levels above 0."""

    name = "plic"

    def __init__(self, num_sources: int, num_contexts: int, priorities: int,
                 on_context_irq: Callable[[int, bool], None] | None = None) -> None:
        if not isinstance(num_sources, int) or not 2 <= num_sources <= MAX_SOURCES:
            raise InvalidInput(f"a PLIC has 2..{MAX_SOURCES} source IDs (source 0 included), "
                               f"not {num_sources!r}")
        if not isinstance(num_contexts, int) or not 1 <= num_contexts <= MAX_CONTEXTS:
            raise InvalidInput(f"a PLIC has 1..{MAX_CONTEXTS} contexts, not {num_contexts!r}")
        if not isinstance(priorities, int) or not 1 <= priorities <= _M32:
            raise InvalidInput(f"a PLIC has 1..{_M32:#x} priority levels above 0, "
                               f"not {priorities!r}")
        self.num_sources = num_sources
        self.num_contexts = num_contexts
        self.priorities = priorities
        self.on_context_irq = on_context_irq
        #: Bytes of the MMIO window.
        self.size = CONTEXT_BASE + CONTEXT_STRIDE * num_contexts
        #: Bits naming real sources (1..num_sources-1).
        self._sources = ((1 << num_sources) - 1) & ~1
        self._prio_mask = (1 << priorities.bit_length()) - 1
        self._lock = threading.Lock()
        self._line = 0  # input levels, one bit per source; kept across reset
        self._delivered = [False] * num_contexts
        self._delivering = False  # some thread is calling on_context_irq
        self._reset_state()

    # ------------------------------------------------------------------ inputs

    def set_irq_level(self, irq: int, level: bool) -> None:
        """Drive the line of source ``irq`` (1..num_sources-1)."""
        if not isinstance(irq, int) or not 1 <= irq < self.num_sources:
            raise InvalidInput(
                f"PLIC sources are 1..{self.num_sources - 1}, not {irq!r}")
        bit = 1 << irq
        with self._lock:
            line = self._line | bit if level else self._line & ~bit
            if line == self._line:
                return
            self._line = line
            self._update()
        self._deliver()

    # ------------------------------------------------------------------ outputs

    def context_irq(self, context: int) -> bool:
        """The level of context ``context``'s interrupt request now."""
        if not isinstance(context, int) or not 0 <= context < self.num_contexts:
            raise InvalidInput(
                f"the PLIC has contexts 0..{self.num_contexts - 1}, not {context!r}")
        with self._lock:
            return self._out[context]

    def reset(self) -> None:
        """Priorities, enables, thresholds and claims back to zero (line levels kept)."""
        with self._lock:
            self._reset_state()
            self._update()
        self._deliver()

    # ------------------------------------------------------------------ MMIO

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self._check(offset, width, "read")
        with self._lock:
            if offset < CONTEXT_BASE:
                return self._read_source_register(offset)
            context, reg = divmod(offset - CONTEXT_BASE, CONTEXT_STRIDE)
            if reg == THRESHOLD:
                return self._threshold[context]
            if reg != CLAIM_COMPLETE:
                return 0
            source = self._claim(context)
            if source:
                self._update()
        self._deliver()
        return source

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self._check(offset, width, "write")
        value &= _M32
        with self._lock:
            if offset < CONTEXT_BASE:
                changed = self._write_source_register(offset, value)
            else:
                context, reg = divmod(offset - CONTEXT_BASE, CONTEXT_STRIDE)
                changed = True
                if reg == THRESHOLD:
                    self._threshold[context] = self._warl(value)
                elif reg == CLAIM_COMPLETE:
                    changed = self._complete(context, value)
                else:
                    changed = False
            if not changed:
                return
            self._update()
        self._deliver()

    def _read_source_register(self, offset: int) -> int:
        """A priority, pending or enable word (the lock is held)."""
        if offset >= ENABLE_BASE:
            context, reg = divmod(offset - ENABLE_BASE, ENABLE_STRIDE)
            if context >= self.num_contexts:
                return 0
            return (self._enable[context] >> (8 * reg)) & _M32
        if offset >= PENDING_BASE:
            return (self._pending() >> (8 * (offset - PENDING_BASE))) & _M32
        source = offset >> 2
        return self._priority[source] if source < self.num_sources else 0

    def _write_source_register(self, offset: int, value: int) -> bool:
        """Write a priority or enable word; whether anything changed (the lock is held).
        Pending words are read-only and the rest of the block is reserved."""
        if offset >= ENABLE_BASE:
            context, reg = divmod(offset - ENABLE_BASE, ENABLE_STRIDE)
            if context >= self.num_contexts:
                return False
            shift = 8 * reg
            old = self._enable[context]
            self._enable[context] = ((old & ~(_M32 << shift)) | value << shift) & self._sources
            return self._enable[context] != old
        source = offset >> 2
        if offset >= PENDING_BASE or not 1 <= source < self.num_sources:
            return False
        self._set_priority(source, self._warl(value))
        return True

    # ------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        n = self.num_contexts
        self._priority = [0] * self.num_sources
        #: priority -> bitmap of the sources that have it (priorities > 0 only).
        self._by_priority: dict[int, int] = {}
        self._enable = [0] * n
        self._threshold = [0] * n
        self._in_flight = 0  # bitmap of claimed, not yet completed sources
        self._claimed_by: dict[int, int] = {}  # source -> context that claimed it
        self._out = [False] * n

    def _check(self, offset: int, width: AccessWidth, what: str) -> None:
        if width != AccessWidth.Dword or offset % 4:
            raise BadAccess(f"{width.size}-byte PLIC {what} at {offset:#x}: the PLIC takes "
                            "aligned 32-bit accesses only")
        if not 0 <= offset <= self.size - 4:
            raise BadAccess(f"PLIC {what} at {offset:#x} is past its {self.size:#x}-byte window "
                            f"({self.num_contexts} contexts)")

    def _warl(self, value: int) -> int:
        return min(value & self._prio_mask, self.priorities)

    def _set_priority(self, source: int, priority: int) -> None:
        bit = 1 << source
        old = self._priority[source]
        if old:
            rest = self._by_priority[old] & ~bit
            if rest:
                self._by_priority[old] = rest
            else:
                del self._by_priority[old]
        if priority:
            self._by_priority[priority] = self._by_priority.get(priority, 0) | bit
        self._priority[source] = priority

    def _pending(self) -> int:
        return self._line & ~self._in_flight & self._sources

    def _best(self, context: int, pending: int) -> int:
        """The source context ``context`` would claim from ``pending``, or 0."""
        candidates = pending & self._enable[context]
        if not candidates:
            return 0
        threshold = self._threshold[context]
        best_priority, best = threshold, 0
        for priority, sources in self._by_priority.items():
            if priority > best_priority and candidates & sources:
                best_priority, best = priority, candidates & sources
        return (best & -best).bit_length() - 1 if best else 0

    def _claim(self, context: int) -> int:
        source = self._best(context, self._pending())
        if source:
            self._in_flight |= 1 << source
            self._claimed_by[source] = context
        return source

    def _complete(self, context: int, source: int) -> bool:
        """End the flight of ``source`` if ``context`` may; whether it did."""
        if self._claimed_by.get(source) != context or not self._enable[context] >> source & 1:
            return False
        del self._claimed_by[source]
        self._in_flight &= ~(1 << source)
        return True

    def _update(self) -> None:
        """Recompute every context's output (the lock is held)."""
        pending = self._pending()
        self._out = [bool(pending and self._best(c, pending)) for c in range(self.num_contexts)]

    def _deliver(self) -> None:
        """Report each output change to ``on_context_irq``, outside the lock, one call at
        a time. A thread that finds delivery under way (in another thread, or further up
        its own stack: a callback that called back into the PLIC) leaves its change to
        that delivery, which looks again under the lock before it stops."""
        with self._lock:
            if self._delivering:
                return
            self._delivering = True
        done = False
        try:
            while True:
                with self._lock:
                    callback = self.on_context_irq
                    change = self._next_change(callback is not None)
                    if callback is None or change is None:
                        self._delivering = False
                        done = True
                        return
                callback(*change)
        finally:
            if not done:  # the callback raised: let the next caller deliver
                with self._lock:
                    self._delivering = False

    def _next_change(self, report: bool) -> tuple[int, bool] | None:
        """The first context whose output differs from what was last reported, marked as
        reported (the lock is held). Without a callback (``report`` false) every level
        counts as reported."""
        if not report:
            self._delivered = list(self._out)
            return None
        for context, level in enumerate(self._out):
            if level != self._delivered[context]:
                self._delivered[context] = level
                return context, level
        return None

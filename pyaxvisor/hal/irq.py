"""Host interrupt lines for a user-space hypervisor.

On real hardware a physical interrupt taken while a guest runs forces a VM exit
and the hypervisor asks the HAL which IRQ it was (``irq_fetch``) and hands it to
the host kernel (``irq_handler``). pyaxvisor's "host interrupts" are events
raised by host threads (timer expiry, console input, device back-ends): they are
queued here with :meth:`HostIrqs.raise_irq` from any thread and dispatched on the
vCPU thread that fetches them, in raising order.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from pyaxvisor.errors import AlreadyExists, InvalidInput, NotFound

IrqHandler = Callable[[int], None]


class HostIrqs:
    def __init__(self) -> None:
        self._handlers: dict[int, IrqHandler] = {}
        self._pending: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()

    def register(self, irq: int, handler: IrqHandler) -> None:
        if irq < 0:
            raise InvalidInput(f"IRQ number must be non-negative, got {irq}")
        with self._lock:
            if irq in self._handlers:
                raise AlreadyExists(f"host IRQ {irq} already has a handler")
            self._handlers[irq] = handler

    def unregister(self, irq: int) -> None:
        with self._lock:
            if self._handlers.pop(irq, None) is None:
                raise NotFound(f"host IRQ {irq} has no handler")

    def raise_irq(self, irq: int) -> None:
        """Mark ``irq`` pending (any thread)."""
        with self._lock:
            if irq not in self._handlers:
                raise NotFound(f"host IRQ {irq} has no handler; raising it would lose it")
            self._pending.append(irq)

    def fetch(self) -> int | None:
        """The IRQ that would be dispatched next, or ``None`` when none is pending."""
        with self._lock:
            return self._pending[0] if self._pending else None

    def dispatch(self) -> int | None:
        """Take the oldest pending IRQ and run its handler; returns it (``None`` if idle)."""
        with self._lock:
            if not self._pending:
                return None
            irq = self._pending.popleft()
            handler = self._handlers.get(irq)
        if handler is not None:
            handler(irq)
        return irq

"""Host input for a UART: bytes typed on the host wait in a backlog and move into
the guest-visible receive FIFO as it drains, so nothing is ever dropped.

:class:`HostInput` is mixed into a UART model. The model calls
:meth:`_init_host_input` in its constructor and provides ``_capacity()`` (FIFO
depth right now), ``_rx_blocked()`` (true in loopback, when the receiver hears
only the transmitter), ``_update_irq()`` and optionally ``_rx_arrived()``
(called after host bytes entered the FIFO). All of it runs under ``self._lock``.
"""

from __future__ import annotations

import threading
from collections import deque


class HostInput:
    _lock: threading.RLock
    _rx: deque[int]
    _backlog: deque[int]

    def _init_host_input(self) -> None:
        self._lock = threading.RLock()
        self._rx = deque()
        self._backlog = deque()

    def _capacity(self) -> int:
        raise NotImplementedError

    def _rx_blocked(self) -> bool:
        return False

    def _update_irq(self) -> None:
        raise NotImplementedError

    def _rx_arrived(self) -> None:
        """Hook: host bytes have just entered the receive FIFO."""

    def receive(self, data: bytes) -> None:
        """Queue bytes typed on the host for the guest. Thread-safe; never drops."""
        if not data:
            return
        with self._lock:
            self._backlog.extend(data)
            self._fill()
            self._update_irq()

    @property
    def backlog(self) -> int:
        """Bytes received from the host that are not yet in the guest-visible FIFO."""
        with self._lock:
            return len(self._backlog)

    @property
    def rx_fifo_level(self) -> int:
        """Characters in the receive FIFO (or the single holding register)."""
        with self._lock:
            return len(self._rx)

    def _fill(self) -> None:
        """Move host input from the backlog into the FIFO while there is room."""
        if self._rx_blocked():
            return
        cap = self._capacity()
        moved = False
        while self._backlog and len(self._rx) < cap:
            self._rx.append(self._backlog.popleft())
            moved = True
        if moved:
            self._rx_arrived()

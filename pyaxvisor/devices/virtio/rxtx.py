"""What the virtio back-ends with a receive queue fed from the host and a transmit queue
share (console, net): queue 0 ``receiveq`` (host → guest), queue 1 ``transmitq``
(guest → host).

:class:`RxTxBackend` keeps the host-side backlog and the receive queue's handle, and
moves backlog into the guest's receive chains whenever both exist (:meth:`_fill`: on
the host thread that adds input, on the vCPU thread that posts buffers); a subclass
says what one chain gets (:meth:`_deliver`) and what transmitting is (:meth:`_transmit`).
It never pops a receive chain it has nothing for, so no chain is held between calls.

Threads: ``_rx_lock`` serialises the receive side (backlog and receive queue),
``_tx_lock`` the transmit side (a subclass's ``_transmit`` takes it). Lock order: a
back-end lock, then the transport's (``pop``/``push``).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sized
from typing import ClassVar

from pyaxvisor.devices.virtio.backend import QueueHandle, VirtioBackend
from pyaxvisor.devices.virtio.chain import DescriptorChain

RECEIVEQ = 0
TRANSMITQ = 1


class RxTxBackend(VirtioBackend):
    """A back-end with ``receiveq`` and ``transmitq``; subclasses set ``_backlog``."""

    queue_max_sizes: ClassVar[tuple[int, ...]]

    def __init__(self) -> None:
        self._rx_lock = threading.Lock()
        self._tx_lock = threading.Lock()
        #: The receive queue's handle, once the transport handed it over.
        self._rxq: QueueHandle | None = None
        self._backlog: Sized

    @property
    def backlog(self) -> int:
        """What waits for a guest receive buffer (bytes or frames, as the device keeps)."""
        with self._rx_lock:
            return len(self._backlog)

    def queue_notify(self, queue: QueueHandle) -> None:
        if queue.index == RECEIVEQ:
            with self._rx_lock:
                self._rxq = queue
                self._fill()
        elif queue.index == TRANSMITQ:
            self._transmit(queue)

    def _fill(self) -> None:
        """Move backlog into the guest's receive chains (under ``_rx_lock``)."""
        queue = self._rxq
        if queue is None:
            return
        while self._backlog:
            chain = queue.pop()
            if chain is None:
                return
            if not self._deliver(queue, chain):
                return

    @abc.abstractmethod
    def _deliver(self, queue: QueueHandle, chain: DescriptorChain) -> bool:
        """Give ``chain`` (popped from the receive queue) what it takes of the backlog
        and push it; False: stop filling (the guest broke the queue)."""

    @abc.abstractmethod
    def _transmit(self, queue: QueueHandle) -> None:
        """Take every chain the guest made available on the transmit queue."""

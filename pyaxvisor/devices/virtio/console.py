"""virtio-console, the console device (virtio 1.2 §5.3): device ID 3, one port.

Queues: 0 = ``receiveq`` (host → guest), 1 = ``transmitq`` (guest → host). No
multiport (VIRTIO_CONSOLE_F_MULTIPORT is not offered, so there are no control
queues and the single port is port 0, the guest's ``hvc0``), no emergency write.
VIRTIO_CONSOLE_F_SIZE is offered only when the back-end is given a size, which the
configuration space then reports.

Configuration space (12 bytes, little-endian): le16 cols, le16 rows (0 without
F_SIZE), le32 max_nr_ports (1; meaningful only with MULTIPORT), le32 emerg_wr (reads
0; EMERG_WRITE is not offered, so writes are ignored).

Transmit: each chain's device-readable bytes go to ``output`` in chain order, read
at most :data:`MAX_REQUEST` bytes at a time (a huge chain costs bounded host
memory); its writable buffers are ignored and it completes with 0 bytes written.

Receive: host input (:meth:`VirtioConsole.receive`, any thread) is appended to a
backlog that is never bounded and never dropped: console input is precious and the
terminal is slow anyway. Whenever there is backlog and the guest has receive
buffers available, the device takes the next chain, fills its writable buffers with
up to :data:`MAX_REQUEST` bytes of the backlog (the rest waits for the next chains)
and completes it, which raises the used-buffer interrupt if the driver wants it.
That happens on the thread that made it possible: the input thread in
:meth:`~VirtioConsole.receive`, a vCPU thread in ``queue_notify`` (the guest posted
buffers) or at DRIVER_OK. The device never pops a receive chain it cannot fill, so
no chain is held across calls. The backlog survives a device reset (a guest that
re-initialises its driver still gets what was typed). A chain with no writable byte
completes with 0 bytes.

Threads: ``_rx_lock`` serialises the receive side (backlog and receiveq), and
``_tx_lock`` the transmit side, so that bytes of concurrent transmit notifications
reach ``output`` whole and in chain order (``output`` runs under ``_tx_lock``; it
must not call back into this device). Lock order: a back-end lock, then the
transport's (``pop``/``push``); the transport never calls the back-end holding its
own lock.
"""

from __future__ import annotations

from collections.abc import Callable

from pyaxvisor.devices.virtio.backend import QueueHandle
from pyaxvisor.devices.virtio.chain import DescriptorChain
from pyaxvisor.devices.virtio.errors import VirtioGuestError
from pyaxvisor.devices.virtio.rxtx import RECEIVEQ, TRANSMITQ, RxTxBackend
from pyaxvisor.devices.virtio.spec import DEVICE_ID_CONSOLE
from pyaxvisor.errors import InvalidInput

__all__ = ["RECEIVEQ", "TRANSMITQ", "VirtioConsole"]
#: QueueNumMax of both queues.
QUEUE_SIZE = 128
#: Most bytes one receive chain gets, and the piece size transmit data is read in.
MAX_REQUEST = 64 << 10
#: Feature bits (virtio 1.2 §5.3.3).
F_SIZE = 0
F_MULTIPORT = 1
F_EMERG_WRITE = 2


class VirtioConsole(RxTxBackend):
    """A single-port virtio console. ``output(bytes)`` receives what the guest
    transmits (called on a vCPU thread, under the transmit lock); ``size`` is
    ``(cols, rows)`` to offer VIRTIO_CONSOLE_F_SIZE (``None``: not offered).
    Thread-safe (see the module's docstring)."""

    name = "virtio-console"
    device_id = DEVICE_ID_CONSOLE
    queue_max_sizes = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, output: Callable[[bytes], None],
                 size: tuple[int, int] | None = None) -> None:
        if size is not None and not all(0 <= v <= 0xFFFF for v in size):
            raise InvalidInput(f"{self.name}: size {size[0]}x{size[1]}: cols and rows are "
                               "16-bit values")
        super().__init__()
        self._output = output
        self._size = size
        self._backlog = bytearray()

    # -- identity and configuration ---------------------------------------------------------
    def device_features(self) -> int:
        return 1 << F_SIZE if self._size is not None else 0

    def config_space(self) -> bytes:
        cols, rows = self._size if self._size is not None else (0, 0)
        return (cols.to_bytes(2, "little") + rows.to_bytes(2, "little")
                + (1).to_bytes(4, "little") + bytes(4))

    # -- host side --------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Queue host input for the guest; delivered at once if it has receive buffers
        available, else when it posts some. Any thread; never drops."""
        if not data:
            return
        with self._rx_lock:
            self._backlog += data
            self._fill()

    # -- the transport's calls ----------------------------------------------------------------
    def _deliver(self, queue: QueueHandle, chain: DescriptorChain) -> bool:
        n = min(chain.writable.total, MAX_REQUEST, len(self._backlog))
        try:
            written = chain.writable.write(queue.ram, 0, bytes(self._backlog[:n]),
                                           f"{self.name}: receive buffer") if n else 0
        except VirtioGuestError as exc:  # the bytes stay in the backlog
            queue.fail(exc)
            return False
        del self._backlog[:written]
        queue.push(chain, written)
        return True

    def _transmit(self, queue: QueueHandle) -> None:
        with self._tx_lock:
            while (chain := queue.pop()) is not None:
                total = chain.readable.total
                for offset in range(0, total, MAX_REQUEST):
                    self._output(chain.readable.read(
                        queue.ram, offset, min(MAX_REQUEST, total - offset),
                        f"{self.name}: transmit buffer"))
                queue.push(chain, 0)

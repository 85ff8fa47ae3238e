"""virtio-rng, the entropy device (virtio 1.2 §5.4): device ID 4, one queue
(``requestq``), no feature bits, no configuration space.

Each chain the driver makes available is a request for random bytes: the device
fills its device-writable buffers with bytes from ``os.urandom`` and completes it
with the count written. A request gets at most :data:`MAX_REQUEST` (64 KiB) bytes,
however large its buffers (the driver accepts fewer bytes than it asked for;
this bounds the host memory one request costs). Device-readable buffers carry
nothing for this device and are ignored. A chain with no writable byte completes
with 0 bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pyaxvisor.devices.virtio.backend import QueueHandle, VirtioBackend
from pyaxvisor.devices.virtio.spec import DEVICE_ID_ENTROPY

#: Most random bytes one request gets.
MAX_REQUEST = 64 << 10
#: QueueNumMax of the request queue.
QUEUE_SIZE = 256


class VirtioRng(VirtioBackend):
    """The entropy device. ``source(n)`` returns ``n`` random bytes (``os.urandom``
    by default; tests may pass a deterministic one). Stateless, so thread-safe."""

    name = "virtio-rng"
    device_id = DEVICE_ID_ENTROPY
    queue_max_sizes = (QUEUE_SIZE,)

    def __init__(self, source: Callable[[int], bytes] = os.urandom) -> None:
        self._source = source

    def queue_notify(self, queue: QueueHandle) -> None:
        while (chain := queue.pop()) is not None:
            n = min(chain.writable.total, MAX_REQUEST)
            written = chain.writable.write(queue.ram, 0, self._source(n),
                                           f"{self.name}: request buffer") if n else 0
            queue.push(chain, written)

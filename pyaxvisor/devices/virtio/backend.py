"""What a virtio device type plugs into a transport: :class:`VirtioBackend`.

A back-end declares what the device is (:attr:`~VirtioBackend.device_id`), the
device-type feature bits it offers, how many queues it has and how large each may
be, and its configuration space; the transport (``VirtioMmio``) does everything
else: registers, feature negotiation, queue set-up and validation, interrupts,
reset.

When the driver notifies a queue, the transport calls
:meth:`VirtioBackend.queue_notify` with a :class:`QueueHandle` for it. The back-end
takes chains with ``pop()`` and completes each with ``push(chain, written)``:
right away, or later from another thread (``push`` is thread-safe, and a chain
completed after the device was reset or the queue re-created is dropped, never
written to guest memory); ``push_many`` completes several with one used-index update
and at most one interrupt, and ``serve_native(serve)`` lets the back-end's native code
pop, carry out and complete chains in the ring itself (virtio-blk's fast path). A
back-end that finds a request malformed raises a
:class:`~pyaxvisor.devices.virtio.errors.VirtioGuestError` from ``queue_notify``
(or, on another thread, passes it to ``handle.fail``); the transport then marks
the device DEVICE_NEEDS_RESET. Any other exception is a bug of the back-end and is
not caught.

Call order, from the transport: ``activate(features)`` when the driver sets
DRIVER_OK; ``queue_notify(handle)`` for each notification (and once per ready
queue at DRIVER_OK, so buffers made available before it are seen); ``reset()``
when the driver writes 0 to Status. ``queue_notify`` may run on several vCPU
threads at once, and ``config_space``/``config_write`` at any time: back-ends
serialise their own state.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Protocol

from pyaxvisor.devices.virtio.chain import DescriptorChain
from pyaxvisor.devices.virtio.errors import VirtioGuestError
from pyaxvisor.devices.virtio.memory import GuestRam
from pyaxvisor.devices.virtio.queue import NativeOutcome, NativeServe

#: Feature bits a device type may use (virtio 1.2 §6: 0..23 and 50..127); the rest
#: belong to the transport and the queue, which offer their own.
DEVICE_TYPE_FEATURES = ((1 << 24) - 1) | (((1 << 128) - 1) & ~((1 << 50) - 1))


class QueueHandle(Protocol):
    """One queue of a live device, as a back-end sees it."""

    #: The queue's index (what the driver writes to QueueNotify).
    index: int
    #: Bounds-checked guest RAM, to read and write the chains' buffers.
    ram: GuestRam

    def pop(self) -> DescriptorChain | None:
        """The next available chain, or ``None`` (queue empty, not live, or the
        driver broke a rule: the device is then marked DEVICE_NEEDS_RESET)."""
        ...

    def push(self, chain: DescriptorChain, written: int) -> None:
        """Complete ``chain`` with ``written`` bytes written to its writable buffers
        and interrupt the driver if it wants. Thread-safe."""
        ...

    def push_many(self, completions: Sequence[tuple[DescriptorChain, int]]) -> None:
        """Complete several chains, in order, with one used-index update and at most
        one interrupt (interrupt coalescing, as a device that finished them together).
        Thread-safe."""
        ...

    def serve_native(self, serve: NativeServe) -> NativeOutcome | None:
        """Let native code serve chains in the ring itself
        (:meth:`~pyaxvisor.devices.virtio.queue.SplitQueue.serve_native`), raising the
        interrupt if it says so; ``None`` when the queue may not be processed now."""
        ...

    def fail(self, error: VirtioGuestError) -> None:
        """Report a guest error found outside ``queue_notify`` (another thread)."""
        ...


class VirtioBackend(abc.ABC):
    """One virtio device type. Subclasses set :attr:`device_id`,
    :attr:`queue_max_sizes` and :attr:`name`, and implement :meth:`queue_notify`."""

    #: Short name for messages ("virtio-blk").
    name: str = "virtio"
    #: The virtio device ID (virtio 1.2 §5).
    device_id: int = 0
    #: The largest size of each queue (QueueNumMax), powers of two up to 32768.
    queue_max_sizes: tuple[int, ...] = ()

    def device_features(self) -> int:
        """The device-type feature bits offered (only :data:`DEVICE_TYPE_FEATURES`)."""
        return 0

    def config_space(self) -> bytes:
        """The device configuration space as the driver sees it now (little-endian
        fields), at most 256 bytes."""
        return b""

    def config_write(self, offset: int, data: bytes) -> None:  # noqa: B027 - optional hook
        """The driver wrote ``data`` at ``offset`` of the configuration space. By
        default the space is read-only and writes are ignored."""

    def activate(self, features: int) -> None:  # noqa: B027 - optional hook
        """The driver set DRIVER_OK having negotiated ``features``."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """The driver reset the device: forget per-session state."""

    @abc.abstractmethod
    def queue_notify(self, queue: QueueHandle) -> None:
        """The driver notified ``queue``: process its available chains."""

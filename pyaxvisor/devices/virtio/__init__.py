"""virtio devices over the virtio-mmio transport (virtio 1.2).

One concern per module:

* :mod:`.spec` — the numbers the specification defines;
* :mod:`.errors` — guest errors (→ DEVICE_NEEDS_RESET) and image errors;
* :mod:`.memory` — the :class:`GuestMemory` protocol and :class:`GuestRam`, the
  bounds check every guest-supplied range passes;
* :mod:`.chain` — descriptor chains and their buffers as byte streams;
* :mod:`.queue` — the split virtqueue;
* :mod:`.backend` — :class:`VirtioBackend`, what a device type implements;
* :mod:`.mmio` — :class:`VirtioMmio`, the transport (a bus ``Device``);
* :mod:`.rng`, :mod:`.blk` (with :mod:`.blk_image`), :mod:`.console`, :mod:`.net`
  (with :mod:`.net_backend` and :mod:`.tap`) — the entropy, block, console and
  network devices.

Typical wiring (the VM's side)::

    blk = VirtioBlk("disk.img")
    dev = VirtioMmio(blk, AddressedMemory(aspace, GuestPhysAddr), ram_ranges, irq_line)
    bus.attach(base, MMIO_SIZE, dev)
"""

from pyaxvisor.devices.virtio.backend import QueueHandle, VirtioBackend
from pyaxvisor.devices.virtio.blk import VirtioBlk
from pyaxvisor.devices.virtio.console import VirtioConsole
from pyaxvisor.devices.virtio.memory import AddressedMemory, GuestMemory, GuestRam
from pyaxvisor.devices.virtio.mmio import MMIO_SIZE, VirtioMmio
from pyaxvisor.devices.virtio.net import VirtioNet
from pyaxvisor.devices.virtio.rng import VirtioRng

__all__ = [
    "MMIO_SIZE", "AddressedMemory", "GuestMemory", "GuestRam", "QueueHandle", "VirtioBackend",
    "VirtioBlk", "VirtioConsole", "VirtioMmio", "VirtioNet", "VirtioRng",
]

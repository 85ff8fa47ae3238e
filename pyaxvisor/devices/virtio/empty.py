"""A virtio-mmio transport with no device behind it (DeviceID 0).

QEMU's ``virt`` boards create all their virtio-mmio transports whatever the command
line asks for, and describe every one in the device tree; a transport nothing is
plugged into identifies itself (MagicValue, Version 2, VendorID) with DeviceID 0,
which tells a driver to leave it alone (virtio 1.2 §4.2.3.1.1). :class:`EmptyTransport`
is that: those four registers, every other register below 0x100 reads as 0 and
ignores writes, and so does the configuration space.

Accesses follow :class:`~pyaxvisor.devices.virtio.mmio.VirtioMmio`'s rules: aligned
32-bit accesses below 0x100, 1/2/4/8-byte ones in the configuration space, nothing
outside the 0x200-byte window (:class:`~pyaxvisor.devices.bus.BadAccess`).
The four identity registers are published for 32-bit reads in :attr:`mirror` (its own
table, or its part of a row's: ``mirror=``). Stateless, so thread-safe.
"""

from __future__ import annotations

from pyaxvisor.devices.bus import Device
from pyaxvisor.devices.virtio.mmio import MMIO_SIZE, check_access, identity_registers
from pyaxvisor.vcpu.register_mirror import RegisterMirror
from pyaxvisor.vcpu.width import AccessWidth

__all__ = ["EmptyTransport"]

_IDENTITY = identity_registers(0)


class EmptyTransport(Device):
    """An unused virtio-mmio slot: DeviceID 0, nothing else."""

    def __init__(self, name: str = "virtio-mmio (empty)", *,
                 mirror: RegisterMirror | None = None) -> None:
        self.name = name
        self.mirror = mirror if mirror is not None else RegisterMirror(MMIO_SIZE)
        self.mirror.publish_words(_IDENTITY, whole=True)

    def _check(self, offset: int, width: AccessWidth, what: str) -> None:
        check_access(self.name, offset, width, what)

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self._check(offset, width, "read")
        return _IDENTITY.get(offset, 0)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self._check(offset, width, "write")

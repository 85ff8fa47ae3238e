"""Test doubles written with the port-I/O method names: a :class:`PioDevice` is a
:class:`~pyaxvisor.devices.bus.Device` whose ``read``/``write`` are its
``pio_read``/``pio_write``."""

from __future__ import annotations

import abc

from pyaxvisor.devices.bus import Device
from pyaxvisor.vcpu.width import AccessWidth


class PioDevice(Device):
    @abc.abstractmethod
    def pio_read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int: ...

    @abc.abstractmethod
    def pio_write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None: ...

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        return self.pio_read(offset, width, vcpu_id)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self.pio_write(offset, width, value, vcpu_id)

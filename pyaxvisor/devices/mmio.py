"""The MMIO device interface and the bus that routes guest accesses to devices.

A device occupies one or more guest-physical windows. The VM run loop turns an
``MmioRead``/``MmioWrite`` exit into ``bus.read(gpa, width, vcpu_id)`` /
``bus.write(...)``; the bus finds the device by address and calls it with the
offset into its window. ``vcpu_id`` is the accessing CPU (banked registers of
an interrupt controller depend on it; most devices ignore it).

Accesses that hit no device raise :class:`UnhandledMmio` (a typed error the VM
reports; it never crashes the host). A device that gets an access it does not
implement at all (bad width, offset past its registers) raises
:class:`BadMmioAccess`; reserved registers that the hardware ignores are
read-as-zero / write-ignored inside the device instead.
"""

from __future__ import annotations

import abc
import bisect
import threading
from dataclasses import dataclass

from pyaxvisor.errors import AlreadyExists, InvalidInput, NotFound
from pyaxvisor.vcpu.width import AccessWidth


class UnhandledMmio(NotFound):
    """A guest access to an address where no device lives."""

    def __init__(self, gpa: int, width: AccessWidth, write: bool, value: int | None = None):
        what = f"write of {value:#x}" if write and value is not None else "read"
        super().__init__(f"guest MMIO {what} ({width.size} bytes) at {gpa:#x}: no device there")
        self.gpa = gpa
        self.width = width
        self.write = write


class BadMmioAccess(InvalidInput):
    """A device refused an access (unsupported width or offset)."""


class MmioDevice(abc.ABC):
    """One device model. Implementations serialise their own state (a lock)
    because vCPU threads and host back-end threads may reach them at once."""

    name: str = "device"

    @abc.abstractmethod
    def mmio_read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int: ...

    @abc.abstractmethod
    def mmio_write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None: ...


@dataclass(frozen=True)
class _Window:
    base: int
    size: int
    device: MmioDevice


class MmioBus:
    def __init__(self) -> None:
        self._windows: list[_Window] = []
        self._bases: list[int] = []
        self._lock = threading.Lock()

    def attach(self, base: int, size: int, device: MmioDevice) -> None:
        if size <= 0:
            raise InvalidInput(f"{device.name}: MMIO window size must be positive")
        with self._lock:
            for w in self._windows:
                if base < w.base + w.size and w.base < base + size:
                    raise AlreadyExists(
                        f"{device.name} at [{base:#x}, {base + size:#x}) overlaps "
                        f"{w.device.name} at [{w.base:#x}, {w.base + w.size:#x})")
            i = bisect.bisect(self._bases, base)
            self._windows.insert(i, _Window(base, size, device))
            self._bases.insert(i, base)

    def find(self, gpa: int) -> tuple[MmioDevice, int] | None:
        """The device at ``gpa`` and the offset into its window, or ``None``."""
        i = bisect.bisect_right(self._bases, gpa) - 1
        if i >= 0:
            w = self._windows[i]
            if gpa < w.base + w.size:
                return w.device, gpa - w.base
        return None

    def read(self, gpa: int, width: AccessWidth, vcpu_id: int = 0) -> int:
        hit = self.find(gpa)
        if hit is None:
            raise UnhandledMmio(gpa, width, write=False)
        device, offset = hit
        return device.mmio_read(offset, width, vcpu_id) & width.mask

    def write(self, gpa: int, width: AccessWidth, value: int, vcpu_id: int = 0) -> None:
        hit = self.find(gpa)
        if hit is None:
            raise UnhandledMmio(gpa, width, write=True, value=value)
        device, offset = hit
        device.mmio_write(offset, width, value & width.mask, vcpu_id)

    @property
    def devices(self) -> list[tuple[int, int, MmioDevice]]:
        return [(w.base, w.size, w.device) for w in self._windows]

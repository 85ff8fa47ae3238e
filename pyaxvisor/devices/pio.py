"""The x86 port-I/O device interface and the bus that routes ``in``/``out`` to devices.

The port-I/O counterpart of :mod:`pyaxvisor.devices.mmio`. The VM run loop turns
an ``IoRead``/``IoWrite`` exit into ``bus.read(port, width, vcpu_id)`` /
``bus.write(...)``; the bus finds the device whose port range holds ``port``
and calls it with the offset into that range. A device decides itself what an
access that runs past the end of its range means (the bus routes by the first
port only).

Unlike MMIO, an access to a port where no device lives is not an error: on PC
hardware (and in QEMU) nothing drives the data lines, so reads see all ones
(``0xFF`` / ``0xFFFF`` / ``0xFFFFFFFF`` for the width) and writes go nowhere.
Guests probe for devices that way (``in al, 0x80``-style delays, legacy
controllers that are absent), so the bus answers such accesses and counts them
per port in :attr:`PioBus.unclaimed` for diagnostics.

x86 port accesses are 1, 2 or 4 bytes wide; a Qword access raises
:class:`BadPioAccess`, as does an access a device refuses (bad width or
offset past its registers).
"""

from __future__ import annotations

import abc
import bisect
import threading
from collections import Counter
from dataclasses import dataclass

from pyaxvisor.errors import AlreadyExists, InvalidInput
from pyaxvisor.vcpu.width import AccessWidth, Port

#: Number of x86 I/O ports.
PORT_SPACE = 0x1_0000

_PIO_WIDTHS = (AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword)
#: Width → value mask, for the widths port I/O has.
_MASKS = {w: w.mask for w in _PIO_WIDTHS}
_MISS = object()


class BadPioAccess(InvalidInput):
    """A port access the bus or a device refuses (unsupported width or offset)."""


class PioDevice(abc.ABC):
    """One port-I/O device model. Implementations serialise their own state (a
    lock) because vCPU threads and host back-end threads may reach them at once."""

    name: str = "device"

    @abc.abstractmethod
    def pio_read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int: ...

    @abc.abstractmethod
    def pio_write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None: ...


@dataclass(frozen=True)
class _Range:
    base: int
    count: int
    device: PioDevice


class PioBus:
    """Routes port accesses to the devices attached at port ranges."""

    def __init__(self) -> None:
        self._ranges: list[_Range] = []
        self._bases: list[int] = []
        self._lock = threading.Lock()
        # port -> (device, offset) or None (no device), filled as ports are used;
        # emptied when a device is attached.
        self._route: dict[int, tuple[PioDevice, int] | None] = {}
        #: Accesses (reads and writes) that hit no device, per port.
        self.unclaimed: Counter[int] = Counter()

    def attach(self, base: int, count: int, device: PioDevice) -> None:
        """Give ``device`` the ports ``[base, base + count)``."""
        if count <= 0:
            raise InvalidInput(f"{device.name}: port range size must be positive")
        if base < 0 or base + count > PORT_SPACE:
            raise InvalidInput(
                f"{device.name}: ports [{base:#x}, {base + count:#x}) leave 0..0xffff")
        with self._lock:
            for r in self._ranges:
                if base < r.base + r.count and r.base < base + count:
                    raise AlreadyExists(
                        f"{device.name} at ports [{base:#x}, {base + count:#x}) overlaps "
                        f"{r.device.name} at [{r.base:#x}, {r.base + r.count:#x})")
            i = bisect.bisect(self._bases, base)
            self._ranges.insert(i, _Range(base, count, device))
            self._bases.insert(i, base)
            self._route = {}

    def port_table(self) -> dict[int, tuple[PioDevice, int]]:
        """Every claimed port → (device, offset into its range): what a vCPU needs to
        serve the accesses itself (see ``X86VCpu.serve_ports``)."""
        with self._lock:
            return {r.base + i: (r.device, i) for r in self._ranges for i in range(r.count)}

    def find(self, port: int) -> tuple[PioDevice, int] | None:
        """The device at ``port`` and the offset into its range, or ``None``."""
        i = bisect.bisect_right(self._bases, port) - 1
        if i >= 0:
            r = self._ranges[i]
            if port < r.base + r.count:
                return r.device, port - r.base
        return None

    def read(self, port: int, width: AccessWidth, vcpu_id: int = 0) -> int:
        mask = _MASKS.get(width)
        hit = self._route.get(port, _MISS)
        if hit is _MISS or mask is None:
            hit = self._resolve(port, width, "read")
            mask = width.mask
        if hit is None:
            with self._lock:
                self.unclaimed[port] += 1
            return mask  # nothing drives the bus: all ones
        device, offset = hit
        return device.pio_read(offset, width, vcpu_id) & mask

    def write(self, port: int, width: AccessWidth, value: int, vcpu_id: int = 0) -> None:
        mask = _MASKS.get(width)
        hit = self._route.get(port, _MISS)
        if hit is _MISS or mask is None:
            hit = self._resolve(port, width, "write")
            mask = width.mask
        if hit is None:
            with self._lock:
                self.unclaimed[port] += 1
            return  # dropped
        device, offset = hit
        device.pio_write(offset, width, value & mask, vcpu_id)

    def _resolve(self, port: int, width: AccessWidth, what: str) -> tuple[PioDevice, int] | None:
        """Check the access and find (and remember) where ``port`` goes."""
        port = self._check(port, width, what)
        hit = self.find(port)
        self._route[port] = hit
        return hit

    @staticmethod
    def _check(port: int, width: AccessWidth, what: str) -> int:
        port = int(Port(port))
        if width not in _PIO_WIDTHS:
            raise BadPioAccess(
                f"{width.size}-byte port {what} at {port:#x}: x86 port I/O is 1, 2 or 4 bytes")
        return port

    @property
    def devices(self) -> list[tuple[int, int, PioDevice]]:
        return [(r.base, r.count, r.device) for r in self._ranges]

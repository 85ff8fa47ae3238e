"""The device interface and the bus that routes guest accesses to devices (axdevice).

One :class:`Device` interface for every device model and one :class:`Bus` for
every address space a guest reaches devices through: guest-physical MMIO and x86
port I/O. A device occupies one or more windows (``[base, base + size)``); the
bus keeps them sorted, refuses overlaps, and calls ``device.read(offset, width,
vcpu_id)`` / ``device.write(offset, width, value, vcpu_id)`` with the offset into
the window. ``vcpu_id`` is the accessing CPU (an interrupt controller's banked
registers depend on it; most devices ignore it). Any device can sit on either
bus: a 16550 on the PC's ports or, with registers one byte apart, on MMIO as on
QEMU's RISC-V ``virt`` board.

What differs between the two address spaces is a :class:`BusKind`, not code:

* **MMIO** (:data:`MMIO`): 64-bit addresses, accesses of 1..8 bytes; an access
  where no device lives raises :class:`UnhandledMmio`, and the VM decides what the
  machine does there (its board).
* **Ports** (:data:`PORTS`): ports 0..0xFFFF, accesses of 1, 2 or 4 bytes; an
  access where no device lives is not an error — on PC hardware (and in QEMU)
  nothing drives the data lines, so reads see all ones and writes go nowhere.
  Guests probe for absent devices that way; the bus answers and counts them per
  port in :attr:`Bus.unclaimed`.

An access of a width the bus does not have, or one a device refuses (bad width,
offset past its registers), raises :class:`BadAccess`. Reserved registers the
hardware ignores are read-as-zero / write-ignored inside the device instead.

Threads: vCPU threads and host back-end threads reach a bus at once. ``attach``
takes the bus lock; lookups read an immutable snapshot and a route cache that is
only ever replaced, never edited in place, so they need no lock. Devices
serialise their own state.
"""

from __future__ import annotations

import abc
import bisect
import threading
from collections import Counter
from typing import NamedTuple

from pyaxvisor.errors import AlreadyExists, InvalidInput, NotFound
from pyaxvisor.vcpu.register_mirror import RegisterMirror
from pyaxvisor.vcpu.width import AccessWidth

__all__ = [
    "MMIO", "PORTS", "BadAccess", "Bus", "BusKind", "Device", "UnhandledMmio", "mmio_bus",
    "port_bus",
]

#: Route cache entries a bus keeps before starting over (ports: the whole space fits).
ROUTE_CACHE = 1 << 16
_MISS = object()


class BadAccess(InvalidInput):
    """A device or the bus refused an access (unsupported width or offset)."""


class UnhandledMmio(NotFound):
    """A guest MMIO access to an address where no device lives."""

    def __init__(self, gpa: int, width: AccessWidth, write: bool, value: int | None = None):
        what = f"write of {value:#x}" if write and value is not None else "read"
        super().__init__(f"guest MMIO {what} ({width.size} bytes) at {gpa:#x}: no device there")
        self.gpa = gpa
        self.width = width
        self.write = write


class Device(abc.ABC):
    """One device model. Implementations serialise their own state (a lock),
    because vCPU threads and host back-end threads may reach them at once.

    ``read`` returns the register's value (the bus masks it to the access width);
    ``write`` gets the value already masked. ``mmio_*``/``pio_*`` are the same
    calls under each bus's name, for scripts and tests that drive a device
    directly.
    """

    name: str = "device"
    #: The registers a software CPU may read without calling :meth:`read` (a device
    #: that publishes them keeps them current under its lock; see RegisterMirror).
    mirror: RegisterMirror | None = None

    @abc.abstractmethod
    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int: ...

    @abc.abstractmethod
    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None: ...

    def mmio_read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        return self.read(offset, width, vcpu_id)

    def mmio_write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self.write(offset, width, value, vcpu_id)

    def pio_read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        return self.read(offset, width, vcpu_id)

    def pio_write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self.write(offset, width, value, vcpu_id)


class BusKind(NamedTuple):
    """What one address space is: its size, its access widths, what a window is
    called in messages, and what an access where nothing lives does."""

    name: str
    limit: int
    widths: tuple[AccessWidth, ...]
    window: str  # "MMIO window" / "port range"
    where: str  # "" / "ports ", before a range in messages
    width_rule: str
    unclaimed_reads_all_ones: bool


MMIO = BusKind("MMIO", 1 << 64, tuple(AccessWidth), "MMIO window", "",
               "MMIO accesses are 1, 2, 4 or 8 bytes", unclaimed_reads_all_ones=False)
PORTS = BusKind("port", 1 << 16, (AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword),
                "port range", "ports ", "x86 port I/O is 1, 2 or 4 bytes",
                unclaimed_reads_all_ones=True)


class _Window(NamedTuple):
    base: int
    size: int
    device: Device


class Bus:
    """Routes accesses in one address space (:class:`BusKind`) to the devices
    attached at their windows."""

    def __init__(self, kind: BusKind = MMIO) -> None:
        self.kind = kind
        self._windows: list[_Window] = []
        self._bases: list[int] = []
        self._lock = threading.Lock()
        self._masks = {w: w.mask for w in kind.widths}
        # address -> (device, offset) or None (no device), filled as addresses are
        # used; replaced by a new empty dict when a device is attached.
        self._route: dict[int, tuple[Device, int] | None] = {}
        #: Accesses (reads and writes) that hit no device, per address (port buses).
        self.unclaimed: Counter[int] = Counter()

    # -- devices ----------------------------------------------------------------------
    def attach(self, base: int, size: int, device: Device) -> None:
        """Give ``device`` the addresses ``[base, base + size)``."""
        kind = self.kind
        if size <= 0:
            raise InvalidInput(f"{device.name}: {kind.window} size must be positive")
        if base < 0 or base + size > kind.limit:
            raise InvalidInput(f"{device.name}: {kind.where}[{base:#x}, {base + size:#x}) "
                               f"leave 0..{kind.limit - 1:#x}")
        with self._lock:
            for w in self._windows:
                if base < w.base + w.size and w.base < base + size:
                    raise AlreadyExists(
                        f"{device.name} at {kind.where}[{base:#x}, {base + size:#x}) overlaps "
                        f"{w.device.name} at [{w.base:#x}, {w.base + w.size:#x})")
            i = bisect.bisect(self._bases, base)
            self._windows.insert(i, _Window(base, size, device))
            self._bases.insert(i, base)
            self._route = {}

    @property
    def devices(self) -> list[tuple[int, int, Device]]:
        return [(w.base, w.size, w.device) for w in self._windows]

    def find(self, addr: int) -> tuple[Device, int] | None:
        """The device at ``addr`` and the offset into its window, or ``None``."""
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            w = self._windows[i]
            if addr < w.base + w.size:
                return w.device, addr - w.base
        return None

    def port_table(self) -> dict[int, tuple[Device, int]]:
        """Every claimed address → (device, offset into its window): what a vCPU needs
        to serve the accesses itself (``ArchVCpu.serve_in_cpu``). For port buses and
        other small spaces: it has one entry per address."""
        with self._lock:
            return {w.base + i: (w.device, i) for w in self._windows for i in range(w.size)}

    # -- accesses ----------------------------------------------------------------------
    def read(self, addr: int, width: AccessWidth, vcpu_id: int = 0) -> int:
        mask = self._masks.get(width)
        hit = self._route.get(addr, _MISS)
        if hit is _MISS or mask is None:
            hit = self._resolve(addr, width, "read")
            mask = width.mask
        if hit is None:
            return self._unclaimed(addr, width, write=False)
        device, offset = hit
        return device.read(offset, width, vcpu_id) & mask

    def write(self, addr: int, width: AccessWidth, value: int, vcpu_id: int = 0) -> None:
        mask = self._masks.get(width)
        hit = self._route.get(addr, _MISS)
        if hit is _MISS or mask is None:
            hit = self._resolve(addr, width, "write")
            mask = width.mask
        if hit is None:
            self._unclaimed(addr, width, write=True, value=value & mask)
            return
        device, offset = hit
        device.write(offset, width, value & mask, vcpu_id)

    def _unclaimed(self, addr: int, width: AccessWidth, *, write: bool,
                   value: int | None = None) -> int:
        """An access where no device lives: an :class:`UnhandledMmio` on MMIO; on ports
        counted, and a read sees all ones (nothing drives the bus), a write is dropped."""
        if not self.kind.unclaimed_reads_all_ones:
            raise UnhandledMmio(addr, width, write=write, value=value)
        with self._lock:
            self.unclaimed[addr] += 1
        return width.mask

    def _resolve(self, addr: int, width: AccessWidth, what: str) -> tuple[Device, int] | None:
        """Check the access and find (and remember) where ``addr`` goes."""
        kind = self.kind
        if not isinstance(addr, int) or not 0 <= addr < kind.limit:
            raise InvalidInput(f"{kind.name} address {addr!r} is outside 0..{kind.limit - 1:#x}")
        addr = int(addr)
        if width not in self._masks:
            raise BadAccess(f"{width.size}-byte {kind.name} {what} at {addr:#x}: "
                            f"{kind.width_rule}")
        hit = self.find(addr)
        route = self._route
        if len(route) >= ROUTE_CACHE:
            route = self._route = {}
        route[addr] = hit
        return hit


def mmio_bus() -> Bus:
    """A guest-physical MMIO bus."""
    return Bus(MMIO)


def port_bus() -> Bus:
    """An x86 port-I/O bus (PC semantics for unclaimed ports)."""
    return Bus(PORTS)

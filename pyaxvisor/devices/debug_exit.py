"""QEMU's ``isa-debug-exit`` device: a guest write to its port ends the VM.

Behaviour matches QEMU's ``hw/misc/debugexit.c``:

* The device occupies ``iosize`` ports (1, 2 or 4; QEMU's default is 2 ports
  at ``iobase`` 0x501; test harnesses commonly use ``iobase=0xf4,iosize=4``).
* A write of value ``v`` requests a VM exit with status ``(v << 1) | 1``;
  the status is odd, so a guest can never make QEMU exit with 0. The
  model calls ``on_exit(status)``; the status is the full integer (QEMU
  hands it to ``exit()``, where the host keeps only its low 8 bits).
  The offset within the window does not matter.
* Accesses of 1, 2 or 4 bytes are valid. Like QEMU's memory core, an access
  that runs past the end of the window only delivers the bytes that fall
  inside it (a 4-byte ``out`` to a 1-port device exits with ``(v & 0xff) << 1 | 1``).
* Reads return 0 (guests use that as the only way to detect the device).
"""

from __future__ import annotations

from collections.abc import Callable

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth

#: QEMU's default ``iobase`` and ``iosize`` properties.
DEFAULT_IOBASE = 0x501
DEFAULT_IOSIZE = 2


def exit_status(value: int) -> int:
    """The exit status QEMU derives from a written value: ``(value << 1) | 1``."""
    return (value << 1) | 1


class DebugExit(Device):
    name = "isa-debug-exit"

    def __init__(
        self,
        on_exit: Callable[[int], None],
        iosize: int = DEFAULT_IOSIZE,
        *,
        name: str = "isa-debug-exit",
    ) -> None:
        if iosize not in (1, 2, 4):
            raise InvalidInput(f"{name}: iosize must be 1, 2 or 4 bytes, got {iosize}")
        self.name = name
        self.iosize = iosize
        self._on_exit = on_exit

    def _check(self, offset: int, width: AccessWidth, what: str) -> None:
        if width not in (AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword):
            raise BadAccess(f"{self.name}: {width.size}-byte {what}: accesses are 1..4 bytes")
        if not 0 <= offset < self.iosize:
            raise BadAccess(f"{self.name}: {what} at offset {offset:#x} is outside the device")

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self._check(offset, width, "read")
        return 0

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self._check(offset, width, "write")
        inside = min(width.size, self.iosize - offset)
        value &= (1 << (8 * inside)) - 1
        self._on_exit(exit_status(value))

"""A CFI parallel NOR flash with the Intel/Sharp command set (QEMU ``pflash_cfi01``).

The QEMU ``virt`` board has two 64 MiB flash banks at 0x0 and 0x0400_0000;
firmware such as U-Boot probes them with CFI queries and keeps its environment
in the second one. This model is one bank of one 32-bit wide device (port width
= device width = 4 bytes), so CFI byte ``n`` of the query table is read at
offset ``4 * n``.

Modes, entered by writing a command byte (the low byte of the write):

* ``0xFF`` read array (reset state): reads return the stored bytes;
* ``0x98`` CFI query: reads return the query table (QRY, geometry);
* ``0x90`` read identifier: manufacturer 0x89 (Intel) at 0, device 0x0018 at 1;
* ``0x70`` read status (bit 7 = ready), ``0x50`` clear status;
* ``0x40``/``0x10`` program: the next write stores its data (NOR semantics: bits
  can only go from 1 to 0, so the data is ANDed in);
* ``0x20`` then ``0xD0``: erase the 256 KiB block addressed (to 0xFF);
* ``0x60`` then ``0xD0``/``0x01``: block unlock/lock (accepted, no locking).

Any other command sets the status register's error bits (0x30), as the parts do.

ROM device mode: given ``storage`` (the guest memory that backs the bank) and
``on_array_mode``, the VM maps the bank read-only into the guest while it is in
read-array mode, so reads cost nothing, and unmaps it in the other modes so the
guest's reads reach :meth:`read`; writes always arrive here.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth

BLOCK_SIZE = 256 << 10
MANUFACTURER_INTEL = 0x89
DEVICE_ID = 0x0018
STATUS_READY = 0x80
STATUS_ERRORS = 0x30

_READ_ARRAY, _QUERY, _READ_ID, _READ_STATUS = range(4)


def _query_table(size: int) -> bytes:
    blocks = size // BLOCK_SIZE
    t = bytearray(0x40)
    t[0x10:0x13] = b"QRY"
    t[0x13:0x15] = (0x0001).to_bytes(2, "little")    # primary command set: Intel/Sharp
    t[0x15:0x17] = (0x0031).to_bytes(2, "little")    # primary extended table at 0x31
    t[0x1B], t[0x1C] = 0x45, 0x55                    # Vcc 4.5 V .. 5.5 V (BCD)
    t[0x1F] = 0x07                                   # typical word program 2^7 us
    t[0x21] = 0x0A                                   # typical block erase 2^10 ms
    t[0x23], t[0x25] = 0x04, 0x04                    # max = typical * 2^4
    t[0x27] = size.bit_length() - 1                  # device size 2^n bytes
    t[0x28:0x2A] = (0x0003).to_bytes(2, "little")    # interface: x32
    t[0x2A:0x2C] = (0).to_bytes(2, "little")         # no write buffer
    t[0x2C] = 1                                      # one erase block region
    t[0x2D:0x2F] = (blocks - 1).to_bytes(2, "little")
    t[0x2F:0x31] = (BLOCK_SIZE // 256).to_bytes(2, "little")
    t[0x31:0x36] = b"PRI10"                          # extended table "PRI", version 1.0
    return bytes(t)


class CfiFlash(Device):
    def __init__(self, size: int = 64 << 20, contents: bytes = b"", name: str = "pflash",
                 storage: memoryview | None = None,
                 on_array_mode: Callable[[bool], None] | None = None) -> None:
        if size <= 0 or size % BLOCK_SIZE or size & (size - 1):
            raise InvalidInput(f"{name}: flash size {size:#x} must be a power of two multiple "
                               f"of {BLOCK_SIZE:#x}")
        if len(contents) > size:
            raise InvalidInput(f"{name}: {len(contents)} bytes do not fit {size:#x} of flash")
        self.name = name
        self.size = size
        if storage is not None and len(storage) != size:
            raise InvalidInput(f"{name}: storage of {len(storage)} bytes for {size:#x} of flash")
        self.data: bytearray | memoryview = storage if storage is not None else bytearray(size)
        # erased flash reads all ones (one memset: a Python bytes of 64 MiB costs 0.1 s)
        ctypes.memset((ctypes.c_char * size).from_buffer(self.data), 0xFF, size)
        self.data[:len(contents)] = contents
        self._on_array_mode = on_array_mode
        self._query = _query_table(size)
        self._mode = _READ_ARRAY
        self._pending: int | None = None   # first cycle of a two-cycle command
        self._status = STATUS_READY
        self._lock = threading.Lock()

    def _check(self, offset: int, width: AccessWidth) -> None:
        if offset + width.size > self.size:
            raise BadAccess(f"{self.name}: access past the end of the flash at {offset:#x}")
        if width is AccessWidth.Qword:
            raise BadAccess(f"{self.name}: 8-byte accesses are not supported")

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self._check(offset, width)
        with self._lock:
            mode = self._mode
            if mode == _READ_ARRAY:
                return int.from_bytes(self.data[offset:offset + width.size], "little")
            if mode == _QUERY:
                index = offset >> 2
                return self._query[index] if index < len(self._query) else 0
            if mode == _READ_ID:
                index = (offset >> 2) & 0xFF
                return {0: MANUFACTURER_INTEL, 1: DEVICE_ID}.get(index, 0)
            return self._status

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self._check(offset, width)
        with self._lock:
            was_array = self._mode == _READ_ARRAY
            self._command(offset, width, value)
            now_array = self._mode == _READ_ARRAY
        if was_array != now_array and self._on_array_mode is not None:
            self._on_array_mode(now_array)

    @property
    def array_mode(self) -> bool:
        return self._mode == _READ_ARRAY

    def _command(self, offset: int, width: AccessWidth, value: int) -> None:
        cmd = value & 0xFF
        pending, self._pending = self._pending, None
        if pending in (0x40, 0x10):
            for i in range(width.size):
                self.data[offset + i] &= (value >> (8 * i)) & 0xFF
            self._mode = _READ_STATUS
            return
        if pending == 0x20:
            if cmd == 0xD0:
                start = offset - offset % BLOCK_SIZE
                self.data[start:start + BLOCK_SIZE] = b"\xff" * BLOCK_SIZE
            else:
                self._status |= STATUS_ERRORS
            self._mode = _READ_STATUS
            return
        if pending == 0x60:
            self._mode = _READ_STATUS
            return
        if cmd == 0xFF:
            self._mode = _READ_ARRAY
        elif cmd == 0x98:
            self._mode = _QUERY
        elif cmd == 0x90:
            self._mode = _READ_ID
        elif cmd == 0x70:
            self._mode = _READ_STATUS
        elif cmd == 0x50:
            self._status = STATUS_READY
        elif cmd in (0x40, 0x10, 0x20, 0x60):
            self._pending = cmd
        else:
            self._status |= STATUS_ERRORS
            self._mode = _READ_STATUS

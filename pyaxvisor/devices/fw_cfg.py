"""QEMU's firmware configuration device (``fw_cfg``) over legacy x86 port I/O.

The guest-side interface follows QEMU's ``docs/specs/fw_cfg.rst``; where the
spec leaves the port-I/O details open, the behaviour of QEMU's
``hw/nvram/fw_cfg.c`` (the ``fw_cfg_io`` device, "comb" register pair) is
the reference. Only the traditional interface exists: no DMA (the ID item
reports bit 0 only, so firmware never looks for the DMA port at 0x514).

Registers (the device takes two ports; on the PC they are 0x510/0x511,
:data:`pyaxvisor.boards.x86_pc.layout.FW_CFG_PORT`, attach with
``bus.attach(FW_CFG_PORT, FwCfg.PORT_COUNT, fw_cfg)``):

====== ============ ==========================================================
offset name         behaviour
====== ============ ==========================================================
0      selector     a 16-bit ``out`` selects an item (little-endian, as the
                    spec says for the I/O port) and rewinds its read offset
1      data         an 8-bit ``in`` returns the next byte of the item
====== ============ ==========================================================

Access widths, as QEMU's memory core and the ``fw_cfg_io`` region decide them
(the region ignores which of its two ports was hit):

* **8-bit read** at either port reads the next data byte (so ``inb 0x510``
  streams data too, exactly as in QEMU). Past the end of the item, and for a
  key with no item, it reads 0 and the offset stays where it is.
* **16-bit write at the selector** selects ``value & 0xffff``.
* **8-bit write** at either port is a data-register write: ignored (QEMU
  dropped data writes in v2.4; the write channel bit is not honoured). So an
  8-bit ``out`` to the selector does **not** select anything.
* **16-bit read at the selector** is an access QEMU's region refuses; QEMU
  answers refused reads with 0, and so does this model.
* Accesses that run past the two ports (``inw 0x511``, ``outl 0x510``) are cut
  at the window the way QEMU splits them: the part inside the window is
  handled as above (``outl 0x510, v`` selects ``v & 0xffff``; ``inw 0x511``
  reads one data byte), the bytes beyond it reach no device: they read as all
  ones (``0xFF`` each, the undriven bus) and writes to them go nowhere.

Selector keys: bit 15 (:data:`ARCH_LOCAL`) picks the architecture-specific
item table; bit 14 (:data:`WRITE_CHANNEL`) is ignored when selecting (QEMU
masks it off, so ``0x4000`` reads the signature). Items are added with the
``add_*`` methods; the constructor installs the standard items QEMU's PC
provides (see :class:`FwCfg`). Files get the keys from :data:`FILE_FIRST`
(0x20) in name order, as QEMU's non-legacy machines assign them: adding a
file whose name sorts before existing ones moves their keys up by one, so
look keys up with :meth:`FwCfg.file_key` once every file is in. The
:data:`FILE_DIR` item (0x19) is QEMU's ``FWCfgFiles``: a big-endian u32
count then :data:`FILE_SLOTS` 64-byte entries ``{u32 size BE, u16 select BE,
u16 reserved, char name[56]}``, unused entries zero; like QEMU the item
exists (at full slot size) from the first file on.

Reset (:meth:`FwCfg.reset`, also the power-on state) selects the signature.
All state is behind one lock: vCPU threads may race on the two ports.
"""

from __future__ import annotations

import struct
import threading

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.errors import AlreadyExists, InvalidInput, NotFound
from pyaxvisor.vcpu.width import AccessWidth

#: Ports the device occupies: selector, data.
PORT_COUNT = 2
SELECTOR = 0
DATA = 1

# Well-known keys (QEMU include/standard-headers/linux/qemu_fw_cfg.h).
SIGNATURE = 0x00
ID = 0x01
UUID = 0x02
RAM_SIZE = 0x03
NOGRAPHIC = 0x04
NB_CPUS = 0x05
MACHINE_ID = 0x06
KERNEL_ADDR = 0x07
KERNEL_SIZE = 0x08
KERNEL_CMDLINE = 0x09
INITRD_ADDR = 0x0A
INITRD_SIZE = 0x0B
BOOT_DEVICE = 0x0C
NUMA = 0x0D
BOOT_MENU = 0x0E
MAX_CPUS = 0x0F
KERNEL_ENTRY = 0x10
KERNEL_DATA = 0x11
INITRD_DATA = 0x12
CMDLINE_ADDR = 0x13
CMDLINE_SIZE = 0x14
CMDLINE_DATA = 0x15
SETUP_ADDR = 0x16
SETUP_SIZE = 0x17
SETUP_DATA = 0x18
FILE_DIR = 0x19
FILE_FIRST = 0x20

WRITE_CHANNEL = 0x4000
ARCH_LOCAL = 0x8000
ENTRY_MASK = 0x3FFF

#: Directory slots (QEMU's default ``x-file-slots``): at most this many files.
FILE_SLOTS = 0x20
#: Bytes of a file name in a directory entry, the terminating NUL included.
FILE_NAME_SIZE = 56
_DIR_ENTRY = struct.Struct(">IHH56s")  # 64 bytes

#: The ID item's "traditional interface" bit (bit 1, DMA, is never set here).
ID_TRADITIONAL = 0x1

SIGNATURE_BYTES = b"QEMU"


def _window(offset: int, width: AccessWidth, ports: int) -> int:
    """Size of the part of an access at ``offset`` that lands inside a window of
    ``ports`` ports, as QEMU's memory core cuts it (clamped to the window, then
    to the natural alignment of the offset)."""
    size = min(width.size, ports - offset)
    align = offset & -offset
    if align and align < size:
        size = align
    return size


class FwCfg(Device):
    """The fw_cfg device with QEMU's standard PC items.

    ``FwCfg(nb_cpus=..., ram_size=..., cmdline="", max_cpus=None,
    kernel_size=None, initrd_size=None)`` installs:

    =============== ====== =====================================================
    item            key    content
    =============== ====== =====================================================
    SIGNATURE       0x00   ``b"QEMU"``
    ID              0x01   u32 1 (traditional interface, no DMA)
    UUID            0x02   16 zero bytes
    RAM_SIZE        0x03   u64 ``ram_size``
    NOGRAPHIC       0x04   u16 1
    NB_CPUS         0x05   u16 ``nb_cpus``
    BOOT_MENU       0x0E   u16 0
    MAX_CPUS        0x0F   u16 ``max_cpus`` (default ``nb_cpus``)
    KERNEL_SIZE     0x08   u32, only when ``kernel_size`` is given
    INITRD_SIZE     0x0B   u32, only when ``initrd_size`` is given
    CMDLINE_SIZE    0x14   u32 length of the command line with its NUL; 0 when
                           the command line is empty
    CMDLINE_DATA    0x15   the command line and a NUL; an empty item when the
                           command line is empty
    =============== ====== =====================================================

    Integers are little-endian, as QEMU stores them. (QEMU itself only adds the
    command-line items when it loads a kernel, and then with size 1 for an empty
    line; this board always provides them, empty meaning "no command line".)
    The command line is UTF-8 encoded.
    """

    name = "fw_cfg"
    PORT_COUNT = PORT_COUNT

    def __init__(
        self,
        *,
        nb_cpus: int,
        ram_size: int,
        cmdline: str = "",
        max_cpus: int | None = None,
        kernel_size: int | None = None,
        initrd_size: int | None = None,
    ) -> None:
        if max_cpus is None:
            max_cpus = nb_cpus
        if not 1 <= nb_cpus <= 0xFFFF:
            raise InvalidInput(f"fw_cfg: nb_cpus must be 1..65535, got {nb_cpus}")
        if not nb_cpus <= max_cpus <= 0xFFFF:
            raise InvalidInput(
                f"fw_cfg: max_cpus must be nb_cpus ({nb_cpus})..65535, got {max_cpus}")
        self._lock = threading.Lock()
        self._items: dict[int, bytes] = {}
        self._files: list[tuple[bytes, bytes]] = []  # (name, data), sorted by name
        self._key = SIGNATURE
        self._offset = 0

        cmd = cmdline.encode()
        if b"\0" in cmd:
            raise InvalidInput("fw_cfg: the kernel command line contains a NUL")
        self.add_bytes(SIGNATURE, SIGNATURE_BYTES)
        self.add_u32(ID, ID_TRADITIONAL)
        self.add_bytes(UUID, bytes(16))
        self.add_u64(RAM_SIZE, ram_size)
        self.add_u16(NOGRAPHIC, 1)
        self.add_u16(NB_CPUS, nb_cpus)
        self.add_u16(BOOT_MENU, 0)
        self.add_u16(MAX_CPUS, max_cpus)
        if kernel_size is not None:
            self.add_u32(KERNEL_SIZE, kernel_size)
        if initrd_size is not None:
            self.add_u32(INITRD_SIZE, initrd_size)
        self.add_u32(CMDLINE_SIZE, len(cmd) + 1 if cmd else 0)
        self.add_bytes(CMDLINE_DATA, cmd + b"\0" if cmd else b"")

    # ------------------------------------------------------------------ host side

    def add_bytes(self, key: int, data: bytes) -> None:
        """Install item ``key`` (a well-known key below 0x20, or an arch-local key
        with bit 15 set). Files use :meth:`add_file`; each key can be set once."""
        if not 0 <= key <= 0xFFFF or key & WRITE_CHANNEL:
            raise InvalidInput(f"fw_cfg: bad item key {key:#x}")
        if not key & ARCH_LOCAL and (key == FILE_DIR or key >= FILE_FIRST):
            raise InvalidInput(f"fw_cfg: key {key:#x} belongs to the file directory; "
                               "use add_file")
        if len(data) >= 1 << 32:
            raise InvalidInput(f"fw_cfg: item {key:#x} is larger than 4 GiB")
        with self._lock:
            if key in self._items:
                raise AlreadyExists(f"fw_cfg: item {key:#x} is already set")
            self._items[key] = bytes(data)

    def add_u16(self, key: int, value: int) -> None:
        self.add_bytes(key, self._pack("<H", key, value))

    def add_u32(self, key: int, value: int) -> None:
        self.add_bytes(key, self._pack("<I", key, value))

    def add_u64(self, key: int, value: int) -> None:
        self.add_bytes(key, self._pack("<Q", key, value))

    def add_string(self, key: int, value: str) -> None:
        """Install ``value`` UTF-8 encoded with a terminating NUL (QEMU's
        ``fw_cfg_add_string``)."""
        data = value.encode()
        if b"\0" in data:
            raise InvalidInput(f"fw_cfg: string for item {key:#x} contains a NUL")
        self.add_bytes(key, data + b"\0")

    def add_file(self, name: str, data: bytes) -> None:
        """Add a named file: it is listed in the directory (sorted by name) and
        gets the key ``FILE_FIRST + its index`` there."""
        raw = name.encode()
        if not raw or b"\0" in raw or len(raw) >= FILE_NAME_SIZE:
            raise InvalidInput(
                f"fw_cfg: file name {name!r} must be 1..{FILE_NAME_SIZE - 1} bytes, no NUL")
        if len(data) >= 1 << 32:
            raise InvalidInput(f"fw_cfg: file {name!r} is larger than 4 GiB")
        with self._lock:
            if any(n == raw for n, _ in self._files):
                raise AlreadyExists(f"fw_cfg: duplicate file name {name!r}")
            if len(self._files) >= FILE_SLOTS:
                raise InvalidInput(f"fw_cfg: no free file slot for {name!r} "
                                   f"({FILE_SLOTS} files at most)")
            self._files.append((raw, bytes(data)))
            self._files.sort(key=lambda f: f[0])

    def file_key(self, name: str) -> int:
        """The key file ``name`` is selected by (valid until another file is added)."""
        raw = name.encode()
        with self._lock:
            for i, (n, _) in enumerate(self._files):
                if n == raw:
                    return FILE_FIRST + i
        raise NotFound(f"fw_cfg: no file {name!r}")

    def item(self, key: int) -> bytes | None:
        """The bytes the guest reads for ``key`` (``None`` when there is no item)."""
        with self._lock:
            return self._lookup(key & ~WRITE_CHANNEL)

    def reset(self) -> None:
        """Device reset: select the signature, offset 0 (QEMU's ``fw_cfg_reset``)."""
        with self._lock:
            self._key, self._offset = SIGNATURE, 0

    @property
    def selected(self) -> tuple[int, int]:
        """The selected key (write-channel bit removed) and the read offset."""
        with self._lock:
            return self._key, self._offset

    @staticmethod
    def _pack(fmt: str, key: int, value: int) -> bytes:
        try:
            return struct.pack(fmt, value)
        except struct.error:
            raise InvalidInput(
                f"fw_cfg: value {value} does not fit item {key:#x} ({fmt[1:]})") from None

    def _lookup(self, key: int) -> bytes | None:
        if not key & ARCH_LOCAL:
            if key == FILE_DIR:
                return self._directory() if self._files else None
            if FILE_FIRST <= key < FILE_FIRST + len(self._files):
                return self._files[key - FILE_FIRST][1]
        return self._items.get(key)

    def _directory(self) -> bytes:
        out = bytearray(struct.pack(">I", len(self._files)))
        for i, (name, data) in enumerate(self._files):
            out += _DIR_ENTRY.pack(len(data), FILE_FIRST + i, 0, name)
        out += bytes(_DIR_ENTRY.size * (FILE_SLOTS - len(self._files)))
        return bytes(out)

    # ------------------------------------------------------------------ guest side

    def _next_byte(self) -> int:
        data = self._lookup(self._key)
        if data is None or self._offset >= len(data):
            return 0
        self._offset += 1
        return data[self._offset - 1]

    def _check(self, offset: int, width: AccessWidth, what: str) -> None:
        if width not in (AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword):
            raise BadAccess(f"{self.name}: {width.size}-byte {what}: port I/O is 1..4 bytes")
        if not 0 <= offset < PORT_COUNT:
            raise BadAccess(f"{self.name}: {what} at offset {offset:#x} is outside the device")

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self._check(offset, width, "read")
        inside = _window(offset, width, PORT_COUNT)
        beyond = ((1 << (8 * width.size)) - 1) & ~((1 << (8 * inside)) - 1)
        if inside == 2:  # a 16-bit read: refused by the region, reads 0
            return beyond
        with self._lock:
            return self._next_byte() | beyond

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self._check(offset, width, "write")
        if _window(offset, width, PORT_COUNT) == 2:  # 16 bits at the selector
            key = value & 0xFFFF
            with self._lock:
                self._key, self._offset = key & ~WRITE_CHANNEL, 0
        # an 8-bit write is a data write: ignored since QEMU 2.4

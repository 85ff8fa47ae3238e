"""Numbers the virtio 1.2 specification defines, shared by the transport, the
virtqueue and the device back-ends (virtio 1.2 §2.1, §2.7, §4.2.2, §6).

Only values live here; what they mean for this implementation is documented
where they are used.
"""

from __future__ import annotations

# -- device status field (§2.1) ---------------------------------------------------------
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 64
STATUS_FAILED = 128

# -- reserved (device-independent) feature bits (§6) ------------------------------------
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_VERSION_1 = 32

# -- device IDs (§5) ----------------------------------------------------------------------
DEVICE_ID_NET = 1
DEVICE_ID_BLOCK = 2
DEVICE_ID_CONSOLE = 3
DEVICE_ID_ENTROPY = 4

# -- split virtqueue (§2.7) ---------------------------------------------------------------
#: Largest queue size a split virtqueue may have.
MAX_QUEUE_SIZE = 32768
#: Descriptor flags.
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
#: One descriptor: le64 addr, le32 len, le16 flags, le16 next.
DESC_SIZE = 16
#: Available ring flag: the driver asks for no used-buffer notifications.
AVAIL_F_NO_INTERRUPT = 1
#: Alignment the driver must give each part of a split queue (§2.7, table 2.x).
DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4

# -- virtio-mmio transport (§4.2.2) -------------------------------------------------------
MMIO_MAGIC = 0x74726976  # "virt", little-endian
MMIO_VERSION = 2
#: The vendor ID QEMU reports ("QEMU", little-endian).
VENDOR_ID_QEMU = 0x554D4551
#: InterruptStatus / InterruptACK bits.
INT_USED_BUFFER = 1
INT_CONFIG_CHANGE = 2

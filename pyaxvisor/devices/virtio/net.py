"""virtio-net, the network device (virtio 1.2 §5.1): device ID 1, one queue pair.

Queues: 0 = ``receiveq`` (host → guest), 1 = ``transmitq`` (guest → host). No
control queue (VIRTIO_NET_F_CTRL_VQ is not offered) and no multiqueue.

Features offered: VIRTIO_NET_F_MAC (the configured address is in the configuration
space), VIRTIO_NET_F_STATUS (the link is always up), VIRTIO_NET_F_MTU when an MTU is
configured. No checksum or segmentation offload, no mergeable receive buffers: each
frame is a plain Ethernet frame and fits one receive chain.

Configuration space (12 bytes, little-endian): u8 mac[6], le16 status (LINK_UP),
le16 max_virtqueue_pairs (1), le16 mtu (0 without F_MTU). Read-only.

Every packet, both ways, is preceded by the 12-byte ``virtio_net_hdr`` (VERSION_1 is
always negotiated: the transport requires it): u8 flags, u8 gso_type, le16 hdr_len,
le16 gso_size, le16 csum_start, le16 csum_offset, le16 num_buffers.

Transmit: the chain's device-readable bytes are the header then the frame. A chain
shorter than the header, longer than :data:`MAX_FRAME` after it, with NEEDS_CSUM set
(no checksum offload was offered) or a gso_type other than NONE (no GSO was offered)
is a guest error (DEVICE_NEEDS_RESET). The frame goes to the back-end's ``send`` and
the chain completes with 0 bytes written.

Receive: frames from the back-end (:meth:`VirtioNet.receive`, its thread) wait in a
backlog of at most :data:`BACKLOG` frames (a newer frame pushes out the oldest,
counted in :attr:`VirtioNet.rx_overruns`, as a NIC's full ring would). Whenever the
backlog is not empty and the guest has receive buffers, the device takes the next
chain and writes a zero header with num_buffers 1 and the frame into its writable
buffers. A frame that does not fit the chain is dropped and counted in
:attr:`VirtioNet.rx_too_big`, and the chain completes with 0 bytes (Linux counts it
as a length error and reposts the buffer). A device reset empties the backlog.

Threads: ``_rx_lock`` serialises the receive side (backlog and receiveq; taken by
the back-end's thread, by vCPU threads notifying the receiveq and at DRIVER_OK), and
``_tx_lock`` the transmit side so frames reach ``send`` one at a time in chain order.
Lock order: a back-end lock, then the transport's. ``send`` runs under ``_tx_lock``
and must not call back into this device.
"""

from __future__ import annotations

import struct
from collections import deque

from pyaxvisor.devices.virtio.backend import QueueHandle
from pyaxvisor.devices.virtio.chain import DescriptorChain
from pyaxvisor.devices.virtio.errors import BadRequest, VirtioGuestError
from pyaxvisor.devices.virtio.net_backend import NetBackend
from pyaxvisor.devices.virtio.rxtx import RECEIVEQ, TRANSMITQ, RxTxBackend
from pyaxvisor.devices.virtio.spec import DEVICE_ID_NET
from pyaxvisor.errors import InvalidInput

__all__ = ["RECEIVEQ", "TRANSMITQ", "VirtioNet"]
#: QueueNumMax of both queues.
QUEUE_SIZE = 256
#: Feature bits (virtio 1.2 §5.1.3).
F_CSUM = 0
F_MTU = 3
F_MAC = 5
F_MRG_RXBUF = 15
F_STATUS = 16
#: Configuration-space status bit.
S_LINK_UP = 1
#: ``virtio_net_hdr``: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
#: num_buffers.
HDR = struct.Struct("<BBHHHHH")
HDR_SIZE = HDR.size
HDR_F_NEEDS_CSUM = 1
GSO_NONE = 0
#: Largest frame either way (no GSO: an MTU of at most 65535 plus the Ethernet header).
MAX_FRAME = 65535 + 14
#: Frames held while the guest has no receive buffer.
BACKLOG = 256
#: The header of every received packet: no flags, no GSO, one buffer.
RX_HEADER = HDR.pack(0, GSO_NONE, 0, 0, 0, 0, 1)


class VirtioNet(RxTxBackend):
    """A virtio NIC on ``backend`` with MAC address ``mac`` (6 bytes) and, if given, an
    MTU offered with VIRTIO_NET_F_MTU (68..65535). The device starts the back-end at
    once (frames arriving before the driver is ready wait in the backlog);
    :meth:`close` closes it. Thread-safe (see the module's docstring)."""

    name = "virtio-net"
    device_id = DEVICE_ID_NET
    queue_max_sizes = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, backend: NetBackend, mac: bytes, mtu: int | None = None) -> None:
        if len(mac) != 6:
            raise InvalidInput(f"{self.name}: a MAC address has 6 bytes, not {len(mac)}")
        if mtu is not None and not 68 <= mtu <= 65535:
            raise InvalidInput(f"{self.name}: MTU {mtu} is not in 68..65535")
        super().__init__()
        self.backend = backend
        self.mac = bytes(mac)
        self.mtu = mtu
        self._backlog: deque[bytes] = deque()
        #: Frames pushed out of a full backlog.
        self.rx_overruns = 0
        #: Frames dropped because they did not fit the guest's receive chain.
        self.rx_too_big = 0
        #: Frames delivered to the guest and frames it transmitted.
        self.rx_frames = 0
        self.tx_frames = 0
        backend.start(self.receive)

    # -- identity and configuration ---------------------------------------------------------
    def device_features(self) -> int:
        features = (1 << F_MAC) | (1 << F_STATUS)
        return features | (1 << F_MTU) if self.mtu is not None else features

    def config_space(self) -> bytes:
        return self.mac + struct.pack("<HHH", S_LINK_UP, 1, self.mtu or 0)

    def reset(self) -> None:
        with self._rx_lock:
            self._backlog.clear()

    def close(self) -> None:
        """Close the back-end (its thread stops; idempotent)."""
        self.backend.close()

    # -- host side --------------------------------------------------------------------------
    def receive(self, frame: bytes) -> None:
        """A frame from the host: delivered at once if the guest has a receive buffer,
        else kept in the bounded backlog. Any thread."""
        with self._rx_lock:
            if len(self._backlog) >= BACKLOG:
                self._backlog.popleft()
                self.rx_overruns += 1
            self._backlog.append(bytes(frame))
            self._fill()

    # -- the transport's calls ----------------------------------------------------------------
    def _deliver(self, queue: QueueHandle, chain: DescriptorChain) -> bool:
        frame = self._backlog.popleft()
        if HDR_SIZE + len(frame) > chain.writable.total:
            self.rx_too_big += 1
            queue.push(chain, 0)
            return True
        try:
            written = chain.writable.write(queue.ram, 0, RX_HEADER + frame,
                                           f"{self.name}: receive buffer")
        except VirtioGuestError as exc:
            queue.fail(exc)
            return False
        self.rx_frames += 1
        queue.push(chain, written)
        return True

    def _transmit(self, queue: QueueHandle) -> None:
        with self._tx_lock:
            while (chain := queue.pop()) is not None:
                total = chain.readable.total
                what = f"{self.name}: transmit buffer"
                if total < HDR_SIZE:
                    raise BadRequest(f"{self.name}: a transmit chain of {total} bytes has no "
                                     f"room for the {HDR_SIZE}-byte header")
                if total - HDR_SIZE > MAX_FRAME:
                    raise BadRequest(f"{self.name}: a {total - HDR_SIZE}-byte frame is longer "
                                     f"than {MAX_FRAME} bytes (no GSO was offered)")
                flags, gso_type, *_ = HDR.unpack(chain.readable.read(queue.ram, 0, HDR_SIZE,
                                                                     what))
                if gso_type != GSO_NONE:
                    raise BadRequest(f"{self.name}: gso_type {gso_type} on transmit: no GSO "
                                     "was offered")
                if flags & HDR_F_NEEDS_CSUM:
                    raise BadRequest(f"{self.name}: NEEDS_CSUM on transmit: no checksum "
                                     "offload was offered")
                self.backend.send(chain.readable.read(queue.ram, HDR_SIZE, total - HDR_SIZE,
                                                      what))
                self.tx_frames += 1
                queue.push(chain, 0)

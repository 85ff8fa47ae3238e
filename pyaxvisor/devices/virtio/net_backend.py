"""Where a virtio-net device's frames go and come from: :class:`NetBackend`.

A back-end carries whole Ethernet frames (no virtio header, no preamble or FCS)
between the device and the host. The device hands it its receive callback once,
with :meth:`NetBackend.start`; from then on the back-end calls it with each frame
that arrives from the host, on a thread of its own. The device calls
:meth:`NetBackend.send` for each frame the guest transmits, on a vCPU thread, one
call at a time and in the guest's order. :meth:`NetBackend.close` stops the
back-end's thread (no callback runs after it returns) and releases what it holds;
it is idempotent.

A back-end never raises from ``send`` for a host-side problem (a full queue, an
interface that is down): it drops the frame and counts it, as a NIC's wire would.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

#: What a back-end calls with each frame from the host (any thread).
Deliver = Callable[[bytes], None]


class NetBackend(abc.ABC):
    """A host end of a virtio-net device (see the module's docstring)."""

    #: Short description for messages ("tap tap0").
    name: str = "net"

    @abc.abstractmethod
    def start(self, deliver: Deliver) -> None:
        """Begin handing host frames to ``deliver`` (called once)."""

    @abc.abstractmethod
    def send(self, frame: bytes) -> None:
        """Transmit one frame to the host (dropped and counted if it cannot go)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop delivering and release host resources (idempotent)."""

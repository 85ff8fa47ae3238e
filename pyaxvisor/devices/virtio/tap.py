"""A Linux TAP interface as a virtio-net back-end: :class:`TapBackend`.

The back-end opens ``/dev/net/tun`` and attaches it with TUNSETIFF to the TAP
interface ``ifname`` (IFF_TAP | IFF_NO_PI: each read and write is one bare Ethernet
frame); the kernel creates the interface if it does not exist (which needs
CAP_NET_ADMIN) and removes it again when the descriptor is closed, unless it was made
persistent. Bringing the interface up and giving it an address is the host's
business: pyaxvisor runs no scripts.

The descriptor is non-blocking. A reader thread (``pyaxvisor-tap-IFNAME``) waits in
``poll`` on it and on a wake-up pipe, reads every frame that is ready and hands each
to the device's receive callback. :meth:`TapBackend.close` writes to the pipe, joins
the thread and closes the descriptors; no callback runs after it returns.
:meth:`TapBackend.send` writes a frame on the caller's thread; a frame the kernel
does not take (its queue is full, the interface is down: EAGAIN, ENOBUFS, EIO...) is
dropped and counted in :attr:`TapBackend.tx_dropped`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import threading

from pyaxvisor.devices.virtio.errors import TapSetupError, TapUnavailable
from pyaxvisor.devices.virtio.net_backend import Deliver, NetBackend
from pyaxvisor.errors import InvalidInput

TUN_DEVICE = "/dev/net/tun"
#: ``_IOW('T', 202, int)``.
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
#: IFNAMSIZ, terminating NUL included.
IFNAMSIZ = 16
#: Largest read: a frame of the largest MTU with its Ethernet header, rounded up.
READ_SIZE = 65536 + 64


def check_ifname(ifname: str) -> None:
    """A name the kernel may give an interface (1..15 bytes, no ``/``, ``:``, white
    space, not ``.`` or ``..``): else :class:`InvalidInput`."""
    raw = ifname.encode("utf-8", "surrogateescape")
    if (not raw or len(raw) >= IFNAMSIZ or ifname in (".", "..")
            or any(c in ifname for c in "/: \t\n\0")):
        raise InvalidInput(f"tap interface {ifname!r}: not a valid interface name (1 to "
                           f"{IFNAMSIZ - 1} bytes, no '/', ':' or white space)")


class TapBackend(NetBackend):
    """The TAP interface ``ifname``, opened at once: a missing ``/dev/net/tun`` is
    :class:`TapUnavailable`, a refused TUNSETIFF (no permission, a bad name, an
    interface of another kind) :class:`TapSetupError`, both naming the interface.
    Threads: see the module's docstring."""

    def __init__(self, ifname: str) -> None:
        check_ifname(ifname)
        self.ifname = ifname
        self.name = f"tap {ifname}"
        #: Frames the kernel did not take.
        self.tx_dropped = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TapUnavailable(ifname, f"{TUN_DEVICE} does not exist (no TUN/TAP driver on "
                                         "this host)") from None
        except OSError as exc:
            raise TapSetupError(ifname, f"cannot open {TUN_DEVICE}: "
                                        f"{exc.strerror or exc}") from None
        try:
            ifr = struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(fd)
            hint = {errno.EPERM: " (creating or attaching a tap needs CAP_NET_ADMIN, or a "
                                 "persistent tap owned by this user)",
                    errno.EBUSY: " (another process has it open)",
                    errno.EINVAL: " (an interface of another kind has this name?)"}
            raise TapSetupError(ifname, f"TUNSETIFF failed: {exc.strerror or exc}"
                                        f"{hint.get(exc.errno or 0, '')}") from None
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def start(self, deliver: Deliver) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                raise InvalidInput(f"{self.name}: started twice or after close")
            self._thread = threading.Thread(target=self._reader, args=(deliver,),
                                            name=f"pyaxvisor-tap-{self.ifname}", daemon=True)
            self._thread.start()

    def send(self, frame: bytes) -> None:
        try:
            os.write(self._fd, frame)
        except OSError:
            self.tx_dropped += 1

    def _reader(self, deliver: Deliver) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            events = dict(poller.poll())
            if self._wake_r in events:
                return
            if not events.get(self._fd, 0) & select.POLLIN:
                if events:  # POLLERR/POLLHUP without data: the interface went away
                    return
                continue
            while True:
                try:
                    frame = os.read(self._fd, READ_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    return
                if frame:
                    deliver(frame)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        os.write(self._wake_w, b"x")
        if thread is not None:
            thread.join()
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)

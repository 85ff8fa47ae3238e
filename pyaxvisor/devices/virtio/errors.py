"""Typed errors of the virtio device models.

Two families:

* :class:`VirtioGuestError` and its subclasses: the *guest* broke the rules (a
  descriptor pointing outside RAM, a loop in a chain, a bad queue layout, a
  malformed request). They are :class:`~pyaxvisor.errors.InvalidInput`. The
  transport never lets them reach a vCPU: it catches them, sets
  DEVICE_NEEDS_RESET and raises the configuration-change interrupt.
* :class:`BlockImageError` and its subclasses: the *host* configuration is wrong
  (a missing image, a read-only file asked read-write, an image another user
  holds). Raised when the device is built, each naming the file.
* :class:`NetBackendError` and its subclasses: a network back-end cannot be set up
  (no ``/dev/net/tun``, TUNSETIFF refused). Raised when the device is built, each
  naming the interface.
"""

from __future__ import annotations

from pyaxvisor.errors import AlreadyExists, AxError, InvalidInput, NotFound


class VirtioGuestError(InvalidInput):
    """The guest driver broke a rule of the virtio specification."""


class GuestRangeError(VirtioGuestError):
    """A guest-supplied address range does not lie entirely inside one RAM range."""

    def __init__(self, what: str, addr: int, length: int) -> None:
        super().__init__(f"{what}: guest range [{addr:#x}, +{length:#x}) is not inside "
                         "guest RAM")
        self.what = what
        self.addr = addr
        self.length = length


class QueueConfigError(VirtioGuestError):
    """A queue the driver made ready has a bad size or layout."""


class DescriptorChainError(VirtioGuestError):
    """A descriptor chain is malformed (loop, bad index, nested indirect table...)."""


class BadRequest(VirtioGuestError):
    """A request's buffers do not have the shape the device type requires."""


class BlockImageError(AxError):
    """A block device's image file cannot be used as asked."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"disk image {path!r}: {problem}")
        self.path = path


class ImageNotFound(BlockImageError, NotFound):
    """The image file does not exist."""


class ImageReadOnly(BlockImageError, InvalidInput):
    """A read-only image (file mode or file system) was asked to be opened read-write."""


class ImageLocked(BlockImageError, AlreadyExists):
    """Another user (a device in this or another process) holds a conflicting lock."""


class NetBackendError(AxError):
    """A virtio-net back-end (a TAP interface) cannot be set up."""

    def __init__(self, ifname: str, problem: str) -> None:
        super().__init__(f"tap interface {ifname!r}: {problem}")
        self.ifname = ifname


class TapUnavailable(NetBackendError, NotFound):
    """The host has no TUN/TAP driver (``/dev/net/tun`` is missing)."""


class TapSetupError(NetBackendError, InvalidInput):
    """The kernel refused the interface (no permission, a bad or busy name)."""

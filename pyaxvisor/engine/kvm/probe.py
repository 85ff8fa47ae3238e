"""Is Linux KVM usable here? (``/dev/kvm`` present, accessible, API version 12.)

``KVM_GET_API_VERSION`` is ``_IO(KVMIO=0xAE, 0x00)``; every KVM since Linux
2.6.22 answers 12 and the API is only defined for that value.
"""

from __future__ import annotations

import errno
import fcntl
import os

from pyaxvisor.errors import Unsupported

KVM_DEVICE = "/dev/kvm"
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


class KvmUnavailable(Unsupported):
    """KVM cannot be used on this host; the message says why."""


def kvm_api_version(device: str = KVM_DEVICE) -> int:
    """Open ``device`` and return its API version, or raise :class:`KvmUnavailable`."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KvmUnavailable(f"{device} does not exist: the kernel has no KVM module loaded "
                             "or the host has no hardware virtualization") from None
    except PermissionError:
        raise KvmUnavailable(f"{device} is not accessible to this user: add the user to the "
                             "'kvm' group or run with access to it") from None
    except OSError as exc:
        raise KvmUnavailable(f"cannot open {device}: {errno.errorcode.get(exc.errno, '?')} "
                             f"{exc.strerror}") from None
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        raise KvmUnavailable(f"KVM_GET_API_VERSION on {device} failed: {exc.strerror}") from None
    finally:
        os.close(fd)
    return version


def kvm_usable(device: str = KVM_DEVICE) -> tuple[bool, str]:
    """``(True, "API 12")`` or ``(False, reason)``, for messages and test skips."""
    try:
        version = kvm_api_version(device)
    except KvmUnavailable as exc:
        return False, str(exc)
    if version != KVM_API_VERSION:
        return False, f"{device} speaks KVM API {version}, pyaxvisor needs {KVM_API_VERSION}"
    return True, f"API {version}"

"""The per-physical-CPU "current vCPU" (axvcpu ``CURRENT_VCPU``).

A host thread plays one physical CPU. While a vCPU operation runs on it, that
vCPU is *current*; code below (an architecture exit handler, the HAL) can ask
for it with :func:`get_current_vcpu`. Starting a second vCPU operation while one
is current on the same thread is refused with
:class:`~pyaxvisor.vcpu.state.NestedVCpuOperation` — it would mean two guest
contexts loaded on one CPU.

The thread also remembers which vCPU is *bound* to it (between ``bind`` and
``unbind``): at most one at a time, as a VMCS or EL2 context is loaded per CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pyaxvisor.vcpu.state import NestedVCpuOperation

if TYPE_CHECKING:
    from pyaxvisor.vcpu.vcpu import VCpu


class _PerCpu(threading.local):
    current: VCpu | None = None
    bound: VCpu | None = None


_percpu = _PerCpu()


def get_current_vcpu() -> VCpu | None:
    """The vCPU whose operation is running on this host thread, if any."""
    return _percpu.current


def get_bound_vcpu() -> VCpu | None:
    """The vCPU bound to this host thread, if any."""
    return _percpu.bound


def _set_bound(vcpu: VCpu | None) -> None:
    _percpu.bound = vcpu


@contextmanager
def current_vcpu_set(vcpu: VCpu) -> Iterator[None]:
    """Make ``vcpu`` current for the duration of the block; refuse nesting."""
    running = _percpu.current
    if running is not None:
        raise NestedVCpuOperation(
            f"vCPU {vcpu.vcpu_id} of VM {vcpu.vm_id}: an operation is already running for "
            f"vCPU {running.vcpu_id} of VM {running.vm_id} on this host CPU; nested vCPU "
            "operations are not allowed"
        )
    _percpu.current = vcpu
    try:
        yield
    finally:
        _percpu.current = None

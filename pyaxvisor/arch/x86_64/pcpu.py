"""Per-CPU virtualization state for x86_64 (x86_vcpu ``VmxPerCpuState``) on Linux KVM.

On bare metal, enabling VMX on a CPU means setting CR4.VMXE, allocating a VMXON
region and executing VMXON (SVM: EFER.SVME and the host save area). Under Linux
the kernel's KVM module does all of that itself, per CPU, when the first VM is
created, and undoes it when the last one goes: user space can neither execute
VMXON nor needs to. So here

* ``hardware_enable`` opens ``/dev/kvm`` (a :class:`KvmSystem`) for this host
  CPU — after it, VMs and vCPUs can be created through :attr:`X86PerCpu.system`;
* ``hardware_disable`` closes it again.

:meth:`X86PerCpu.has_hardware_support` is true when the CPU advertises VMX
(CPUID leaf 1 ECX bit 5, the ``vmx`` flag of ``/proc/cpuinfo``) or SVM (CPUID
leaf 0x8000_0001 ECX bit 2, ``svm``), or when a usable ``/dev/kvm`` speaking API
12 exists (a nested host may hide the flags but still offer KVM). With only the
flags and no usable ``/dev/kvm``, ``hardware_enable`` raises
:class:`~pyaxvisor.engine.kvm.probe.KvmUnavailable` saying why.
"""

from __future__ import annotations

import functools
from typing import Self

from pyaxvisor.engine.kvm.probe import KVM_DEVICE, kvm_usable
from pyaxvisor.engine.kvm.system import KvmSystem
from pyaxvisor.errors import BadState
from pyaxvisor.vcpu.percpu import ArchPerCpu

CPUINFO = "/proc/cpuinfo"


def cpu_flags(path: str = CPUINFO) -> frozenset[str]:
    """The ``flags`` of the first processor in ``/proc/cpuinfo`` (empty if unreadable)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def virtualization_extension() -> str | None:
    """``"vmx"`` (Intel VT-x), ``"svm"`` (AMD-V) or ``None``, from the CPU flags (cached)."""
    flags = cpu_flags()
    if "vmx" in flags:
        return "vmx"
    if "svm" in flags:
        return "svm"
    return None


def has_hardware_support() -> bool:
    return virtualization_extension() is not None or kvm_usable()[0]


class X86PerCpu(ArchPerCpu):
    def __init__(self, cpu_id: int, device: str = KVM_DEVICE) -> None:
        self.cpu_id = cpu_id
        self.device = device
        self._system: KvmSystem | None = None

    @classmethod
    def new(cls, cpu_id: int) -> Self:
        return cls(cpu_id)

    @property
    def system(self) -> KvmSystem:
        """The open ``/dev/kvm`` of this host CPU (only while enabled)."""
        if self._system is None:
            raise BadState(f"virtualization is not enabled on CPU {self.cpu_id}")
        return self._system

    def is_enabled(self) -> bool:
        return self._system is not None

    def hardware_enable(self) -> None:
        """Open ``/dev/kvm``; KVM itself executes VMXON (or sets EFER.SVME) on demand."""
        if self._system is not None:
            raise BadState(f"virtualization is already enabled on CPU {self.cpu_id}")
        self._system = KvmSystem(self.device)

    def hardware_disable(self) -> None:
        """Close ``/dev/kvm``; KVM executes VMXOFF when its last VM is gone."""
        system, self._system = self._system, None
        if system is not None:
            system.close()

    @classmethod
    def has_hardware_support(cls) -> bool:
        return has_hardware_support()

    def max_guest_page_table_levels(self) -> int:
        return 4

"""KVM ioctl request numbers, computed from the ``<asm-generic/ioctl.h>`` encoding.

A request is ``dir << 30 | size << 16 | type << 8 | nr`` with ``type`` = ``KVMIO``
(0xAE), ``dir`` a bit set of write (1: user space -> kernel) and read (2), and
``size`` the ``sizeof`` of the argument structure. :data:`IOCTL_NAMES` maps each
number back to its name for error messages.
"""

from __future__ import annotations

import ctypes

from pyaxvisor.engine.kvm import structs as s

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit the encoding")
    return ((direction << _IOC_DIRSHIFT) | (typ << _IOC_TYPESHIFT)
            | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT))


def _IO(typ: int, nr: int) -> int:
    return _ioc(_IOC_NONE, typ, nr, 0)


def _IOR(typ: int, nr: int, argtype: type) -> int:
    return _ioc(_IOC_READ, typ, nr, ctypes.sizeof(argtype))


def _IOW(typ: int, nr: int, argtype: type) -> int:
    return _ioc(_IOC_WRITE, typ, nr, ctypes.sizeof(argtype))


def _IOWR(typ: int, nr: int, argtype: type) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, typ, nr, ctypes.sizeof(argtype))


# -- /dev/kvm --------------------------------------------------------------------------
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, s.KvmCpuid2)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, s.KvmMsrs)  # struct kvm_msr_list: same header

# -- VM fd -----------------------------------------------------------------------------
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, s.KvmUserspaceMemoryRegion)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, s.KvmIrqLevel)
KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, s.KvmIrqLevel)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, s.KvmPitConfig)
KVM_REGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x67, s.KvmCoalescedMmioZone)
KVM_UNREGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x68, s.KvmCoalescedMmioZone)
KVM_XEN_HVM_CONFIG = _IOW(KVMIO, 0x7A, s.KvmXenHvmConfig)

# -- vCPU fd ---------------------------------------------------------------------------
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, s.KvmRegs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, s.KvmRegs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, s.KvmSregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, s.KvmSregs)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, ctypes.c_uint32)  # struct kvm_interrupt { __u32 irq; }
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, s.KvmMsrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, s.KvmMsrs)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, s.KvmFpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, s.KvmFpu)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, s.KvmCpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, s.KvmCpuid2)
KVM_TRANSLATE = _IOWR(KVMIO, 0x85, s.KvmTranslation)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, s.KvmGuestDebug)

IOCTL_NAMES: dict[int, str] = {
    value: name for name, value in dict(globals()).items()
    if name.startswith("KVM_") and isinstance(value, int)
}


def ioctl_name(request: int) -> str:
    return IOCTL_NAMES.get(request, f"ioctl {request:#x}")


# -- capabilities (KVM_CHECK_EXTENSION) ------------------------------------------------
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_COALESCED_MMIO = 15  # the answer is the ring's page offset in a vCPU's mmap
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_IRQ_INJECT_STATUS = 26
KVM_CAP_PIT2 = 33
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_XEN_HVM = 38
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_COALESCED_PIO = 162

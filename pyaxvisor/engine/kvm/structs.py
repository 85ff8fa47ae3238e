"""ctypes mirrors of the x86-64 KVM ABI structures (``<linux/kvm.h>``, ``<asm/kvm.h>``).

Sizes and offsets are checked against the kernel's in ``tests/test_kvm_engine.py``
(``kvm_regs`` 144 bytes, ``kvm_sregs`` 312, ``kvm_fpu`` 416, the ``kvm_run``
header 32 bytes followed by a 256-byte exit union, ...). The variable-length
structures (``kvm_cpuid2``, ``kvm_msrs``) are built with :func:`cpuid2_type` /
:func:`msrs_type`, which append an entry array of the wanted length to the header.
"""

from __future__ import annotations

import ctypes
from functools import cache

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64
s32 = ctypes.c_int32

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

KVM_NR_INTERRUPTS = 256
KVM_SYNC_X86_REGS_SIZE = 2048  # the kvm_run.s padding


class KvmUserspaceMemoryRegion(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class KvmRegs(ctypes.Structure):
    _fields_ = [(name, u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
        "rip", "rflags")]


class KvmSegment(ctypes.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class KvmDtable(ctypes.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u16),
        ("padding", u16 * 3),
    ]


class KvmSregs(ctypes.Structure):
    _fields_ = [
        *[(seg, KvmSegment) for seg in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")],
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        *[(reg, u64) for reg in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")],
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class KvmFpu(ctypes.Structure):
    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class KvmGuestDebug(ctypes.Structure):
    """``struct kvm_guest_debug`` (x86: ``kvm_guest_debug_arch`` is DR0-DR7)."""

    _fields_ = [
        ("control", u32),
        ("pad", u32),
        ("debugreg", u64 * 8),
    ]


class KvmTranslation(ctypes.Structure):
    _fields_ = [
        ("linear_address", u64),
        ("physical_address", u64),
        ("valid", u8),
        ("writeable", u8),
        ("usermode", u8),
        ("pad", u8 * 5),
    ]


class KvmPitConfig(ctypes.Structure):
    _fields_ = [
        ("flags", u32),
        ("pad", u32 * 15),
    ]


KVM_PIT_SPEAKER_DUMMY = 1


class KvmIrqLevel(ctypes.Structure):
    # union { __u32 irq; __s32 status; } — irq going in, status coming back
    _fields_ = [
        ("irq", u32),
        ("level", u32),
    ]


class KvmCpuidEntry2(ctypes.Structure):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0


class KvmCpuid2(ctypes.Structure):
    """The header of ``struct kvm_cpuid2``; ``entries[]`` follows (see :func:`cpuid2_type`)."""

    _fields_ = [
        ("nent", u32),
        ("padding", u32),
    ]


@cache
def cpuid2_type(nent: int) -> type[ctypes.Structure]:
    """``struct kvm_cpuid2`` with room for ``nent`` entries."""
    return type(f"KvmCpuid2_{nent}", (ctypes.Structure,), {
        "_fields_": [("nent", u32), ("padding", u32), ("entries", KvmCpuidEntry2 * nent)]})


class KvmMsrEntry(ctypes.Structure):
    _fields_ = [
        ("index", u32),
        ("reserved", u32),
        ("data", u64),
    ]


class KvmMsrs(ctypes.Structure):
    """The header of ``struct kvm_msrs``; ``entries[]`` follows (see :func:`msrs_type`)."""

    _fields_ = [
        ("nmsrs", u32),
        ("pad", u32),
    ]


@cache
def msrs_type(nmsrs: int) -> type[ctypes.Structure]:
    """``struct kvm_msrs`` with room for ``nmsrs`` entries."""
    return type(f"KvmMsrs_{nmsrs}", (ctypes.Structure,), {
        "_fields_": [("nmsrs", u32), ("pad", u32), ("entries", KvmMsrEntry * nmsrs)]})


class KvmCoalescedMmioZone(ctypes.Structure):
    """``struct kvm_coalesced_mmio_zone``: ``addr``/``size`` of an MMIO range, or of a
    port range with ``pio`` = 1 (``KVM_CAP_COALESCED_PIO``)."""

    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class KvmCoalescedMmio(ctypes.Structure):
    """``struct kvm_coalesced_mmio``: one queued write (``phys_addr`` is the port for
    a PIO zone; ``len`` bytes of ``data``)."""

    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


#: ``struct kvm_coalesced_mmio_ring``'s header: the ``first`` and ``last`` indices.
COALESCED_RING_HEADER = 8


def coalesced_ring_entries(page_size: int) -> int:
    """``KVM_COALESCED_MMIO_MAX``: the records one ring page holds."""
    return (page_size - COALESCED_RING_HEADER) // ctypes.sizeof(KvmCoalescedMmio)


# -- struct kvm_run ------------------------------------------------------------------

class KvmRunHw(ctypes.Structure):
    _fields_ = [("hardware_exit_reason", u64)]


class KvmRunFailEntry(ctypes.Structure):
    _fields_ = [
        ("hardware_entry_failure_reason", u64),
        ("cpu", u32),
    ]


class KvmRunEx(ctypes.Structure):
    _fields_ = [
        ("exception", u32),
        ("error_code", u32),
    ]


class KvmRunIo(ctypes.Structure):
    _fields_ = [
        ("direction", u8),
        ("size", u8),
        ("port", u16),
        ("count", u32),
        ("data_offset", u64),  # relative to the start of kvm_run
    ]


class KvmDebugExitArch(ctypes.Structure):
    _fields_ = [
        ("exception", u32),
        ("pad", u32),
        ("pc", u64),
        ("dr6", u64),
        ("dr7", u64),
    ]


class KvmRunMmio(ctypes.Structure):
    _fields_ = [
        ("phys_addr", u64),
        ("data", u8 * 8),
        ("len", u32),
        ("is_write", u8),
    ]


class _HypercallTail(ctypes.Union):
    _fields_ = [("longmode", u32), ("flags", u64)]


class KvmRunHypercall(ctypes.Structure):
    _anonymous_ = ("_tail",)
    _fields_ = [
        ("nr", u64),
        ("args", u64 * 6),
        ("ret", u64),
        ("_tail", _HypercallTail),
    ]


class KvmRunInternal(ctypes.Structure):
    _fields_ = [
        ("suberror", u32),
        ("ndata", u32),
        ("data", u64 * 16),
    ]


class _SystemEventTail(ctypes.Union):
    _fields_ = [("flags", u64), ("data", u64 * 16)]


class KvmRunSystemEvent(ctypes.Structure):
    _anonymous_ = ("_tail",)
    _fields_ = [
        ("type", u32),
        ("ndata", u32),
        ("_tail", _SystemEventTail),
    ]


#: ``kvm_xen_hvm_config.flags``: send hypercalls to user space.
KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL = 1 << 1
#: ``kvm_xen_exit.type`` of an intercepted hypercall.
KVM_EXIT_XEN_HCALL = 1


class KvmXenHcall(ctypes.Structure):
    """``kvm_xen_exit.u.hcall``: a ``vmcall``/``vmmcall`` intercepted in Xen mode."""

    _fields_ = [
        ("longmode", u32),
        ("cpl", u32),
        ("input", u64),
        ("result", u64),
        ("params", u64 * 6),
    ]


class KvmRunXen(ctypes.Structure):
    """``struct kvm_xen_exit`` (``KVM_EXIT_XEN``); ``type`` 1 is ``KVM_EXIT_XEN_HCALL``."""

    _fields_ = [("type", u32), ("_pad", u32), ("hcall", KvmXenHcall)]


class KvmXenHvmConfig(ctypes.Structure):
    """``struct kvm_xen_hvm_config`` (``KVM_XEN_HVM_CONFIG``)."""

    _fields_ = [
        ("flags", u32),
        ("msr", u32),
        ("blob_addr_32", u64),
        ("blob_addr_64", u64),
        ("blob_size_32", u8),
        ("blob_size_64", u8),
        ("pad2", u8 * 30),
    ]


class KvmRunExit(ctypes.Union):
    _fields_ = [
        ("hw", KvmRunHw),
        ("fail_entry", KvmRunFailEntry),
        ("ex", KvmRunEx),
        ("io", KvmRunIo),
        ("debug", KvmDebugExitArch),
        ("mmio", KvmRunMmio),
        ("hypercall", KvmRunHypercall),
        ("internal", KvmRunInternal),
        ("system_event", KvmRunSystemEvent),
        ("xen", KvmRunXen),
        ("padding", ctypes.c_char * 256),
    ]


class KvmRun(ctypes.Structure):
    """``struct kvm_run`` (x86-64): the header, the 256-byte exit union, and the
    synced-register area. ``KVM_GET_VCPU_MMAP_SIZE`` is larger (PIO data and the
    coalesced-MMIO ring follow in later pages)."""

    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("exit", KvmRunExit),  # the anonymous union of the C struct
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
        ("s", ctypes.c_char * KVM_SYNC_X86_REGS_SIZE),
    ]

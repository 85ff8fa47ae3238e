"""The KVM engine layer (``pyaxvisor.engine.kvm``): ABI structures, ioctl numbers,
and tiny real-mode guests run on /dev/kvm.

Guests are raw 16-bit machine code loaded at guest physical 0x1000 of a 64 KiB
memory slot backed by a :class:`HostMemory` arena; CS base is 0, so RIP = 0x1000.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
import threading
import time

import pytest

from pyaxvisor.engine.kvm import ioctls
from pyaxvisor.engine.kvm import structs as st
from pyaxvisor.engine.kvm.exits import (
    KVM_EXIT_HLT,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_IN,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    exit_reason_name,
)
from pyaxvisor.engine.kvm.probe import KvmUnavailable, kvm_usable
from pyaxvisor.engine.kvm.system import KvmError, KvmSystem
from pyaxvisor.errors import AxError, BadState
from pyaxvisor.hal.memory import HostMemory

_ok, _reason = kvm_usable()
pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not _ok, reason=f"KVM not usable: {_reason}")]

RAM_SIZE = 0x10000  # guest RAM [0, 64 KiB); everything above is unbacked (MMIO)
LOAD = 0x1000


@pytest.fixture(scope="module")
def kvm():
    with KvmSystem() as system:
        yield system


@pytest.fixture
def mem():
    with HostMemory(2 << 20) as m:
        yield m


@pytest.fixture
def vm(kvm, mem):
    with kvm.create_vm() as v:
        v.set_user_memory_region(0, 0, RAM_SIZE, int(mem.virt_base))
        yield v


def gpa(mem, addr):
    return int(mem.phys_base) + addr


def load_guest(vm, mem, code: bytes, **regs: int):
    """Put ``code`` at LOAD, create vCPU 0 in real mode at CS:IP = 0:LOAD."""
    mem.write(gpa(mem, LOAD), code)
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.sregs
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpu.set_sregs(sregs)
    r = vcpu.regs
    r.rip = LOAD
    r.rflags = 0x2
    for name, value in regs.items():
        setattr(r, name, value)
    vcpu.set_regs(r)
    return vcpu


# -- ABI -------------------------------------------------------------------------------

def test_struct_sizes_match_the_kernel_abi():
    sizes = {
        st.KvmUserspaceMemoryRegion: 32, st.KvmRegs: 144, st.KvmSegment: 24,
        st.KvmDtable: 16, st.KvmSregs: 312, st.KvmFpu: 416, st.KvmPitConfig: 64,
        st.KvmIrqLevel: 8, st.KvmCpuidEntry2: 40, st.KvmCpuid2: 8, st.KvmMsrEntry: 16,
        st.KvmMsrs: 8, st.KvmRunExit: 256, st.KvmRunHypercall: 72,
        st.KvmRunInternal: 136, st.KvmRunSystemEvent: 136, st.KvmRun: 2352,
    }
    for typ, size in sizes.items():
        assert ctypes.sizeof(typ) == size, typ.__name__
    assert ctypes.sizeof(st.cpuid2_type(3)) == 8 + 3 * 40
    assert ctypes.sizeof(st.msrs_type(2)) == 8 + 2 * 16


def test_kvm_run_layout():
    r = st.KvmRun
    offsets = {"request_interrupt_window": 0, "immediate_exit": 1, "exit_reason": 8,
               "ready_for_interrupt_injection": 12, "if_flag": 13, "flags": 14, "cr8": 16,
               "apic_base": 24, "exit": 32, "kvm_valid_regs": 288, "kvm_dirty_regs": 296,
               "s": 304}
    for name, off in offsets.items():
        assert getattr(r, name).offset == off, name
    assert (st.KvmRunIo.direction.offset, st.KvmRunIo.size.offset, st.KvmRunIo.port.offset,
            st.KvmRunIo.count.offset, st.KvmRunIo.data_offset.offset) == (0, 1, 2, 4, 8)
    assert (st.KvmRunMmio.phys_addr.offset, st.KvmRunMmio.data.offset,
            st.KvmRunMmio.len.offset, st.KvmRunMmio.is_write.offset) == (0, 8, 16, 20)
    assert st.KvmRunInternal.data.offset == 8
    assert st.KvmRunSystemEvent._tail.offset == 8
    assert st.KvmSregs.gdt.offset == 192 and st.KvmSregs.cr0.offset == 224
    assert st.KvmSregs.interrupt_bitmap.offset == 280


def test_ioctl_numbers_match_linux_kvm_h():
    # values as printed by a C program including <linux/kvm.h> on x86-64
    expected = {
        "KVM_GET_API_VERSION": 0xAE00, "KVM_CREATE_VM": 0xAE01, "KVM_CHECK_EXTENSION": 0xAE03,
        "KVM_GET_VCPU_MMAP_SIZE": 0xAE04, "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
        "KVM_CREATE_VCPU": 0xAE41, "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
        "KVM_SET_TSS_ADDR": 0xAE47, "KVM_SET_IDENTITY_MAP_ADDR": 0x4008AE48,
        "KVM_CREATE_IRQCHIP": 0xAE60, "KVM_IRQ_LINE": 0x4008AE61,
        "KVM_CREATE_PIT2": 0x4040AE77, "KVM_RUN": 0xAE80, "KVM_GET_REGS": 0x8090AE81,
        "KVM_SET_REGS": 0x4090AE82, "KVM_GET_SREGS": 0x8138AE83, "KVM_SET_SREGS": 0x4138AE84,
        "KVM_GET_MSRS": 0xC008AE88, "KVM_SET_MSRS": 0x4008AE89, "KVM_GET_FPU": 0x81A0AE8C,
        "KVM_SET_FPU": 0x41A0AE8D, "KVM_SET_CPUID2": 0x4008AE90,
    }
    for name, value in expected.items():
        assert getattr(ioctls, name) == value, name
        assert ioctls.ioctl_name(value) == name


def test_exit_reason_names():
    assert exit_reason_name(2) == "KVM_EXIT_IO"
    assert exit_reason_name(24) == "KVM_EXIT_SYSTEM_EVENT"
    assert exit_reason_name(999) == "KVM_EXIT_999"


# -- /dev/kvm ----------------------------------------------------------------------------

def test_system_queries(kvm):
    assert kvm.api_version == 12
    assert kvm.vcpu_mmap_size >= ctypes.sizeof(st.KvmRun)
    assert kvm.check_extension(ioctls.KVM_CAP_USER_MEMORY) > 0
    assert kvm.check_extension(ioctls.KVM_CAP_NR_MEMSLOTS) > 0
    cpuid = kvm.supported_cpuid()
    leaves = {cpuid.entries[i].function for i in range(cpuid.nent)}
    assert 0 in leaves and 1 in leaves


def test_missing_device_is_unavailable():
    with pytest.raises(KvmUnavailable, match="does not exist"):
        KvmSystem("/dev/no-such-kvm")


# -- guests ------------------------------------------------------------------------------

def test_out_gives_io_exit(vm, mem):
    # mov al, 0x42      B0 42
    # out 0x10, al      E6 10
    # hlt               F4
    vcpu = load_guest(vm, mem, bytes.fromhex("B042 E610 F4"))
    assert vcpu.run() == KVM_EXIT_IO
    io = vcpu.io
    assert (io.port, io.size, io.direction, io.count) == (0x10, 1, KVM_EXIT_IO_OUT, 1)
    assert io.is_out and bytes(io.data) == b"\x42"
    del io
    assert vcpu.run() == KVM_EXIT_HLT
    assert vcpu.exit_reason_name == "KVM_EXIT_HLT"
    with pytest.raises(BadState, match="not KVM_EXIT_IO"):
        _ = vcpu.io


def test_in_data_reaches_the_guest(vm, mem):
    # in al, 0x20           E4 20
    # mov [0x0500], al      A2 00 05
    # hlt                   F4
    vcpu = load_guest(vm, mem, bytes.fromhex("E420 A20005 F4"))
    assert vcpu.run() == KVM_EXIT_IO
    io = vcpu.io
    assert (io.port, io.size, io.direction, io.count) == (0x20, 1, KVM_EXIT_IO_IN, 1)
    io.data[0] = 0x99
    del io
    assert vcpu.run() == KVM_EXIT_HLT
    assert mem.read(gpa(mem, 0x500), 1) == b"\x99"


def test_mmio_write_and_read_to_unbacked_memory(vm, mem):
    # mov ax, 0x2000                    B8 00 20
    # mov ds, ax                        8E D8
    # mov dword [0x0010], 0xdeadbeef    66 C7 06 10 00 EF BE AD DE   (gpa 0x20010)
    # mov bx, [0x0020]                  8B 1E 20 00                  (gpa 0x20020)
    # hlt                               F4
    code = bytes.fromhex("B80020 8ED8 66C7061000EFBEADDE 8B1E2000 F4")
    vcpu = load_guest(vm, mem, code)
    assert vcpu.run() == KVM_EXIT_MMIO
    m = vcpu.mmio
    assert (m.addr, m.len, m.is_write) == (0x20010, 4, True)
    assert bytes(m.data) == struct.pack("<I", 0xDEADBEEF)
    del m
    assert vcpu.run() == KVM_EXIT_MMIO
    m = vcpu.mmio
    assert (m.addr, m.len, m.is_write) == (0x20020, 2, False)
    m.data[:] = struct.pack("<H", 0xBEEF)
    del m
    assert vcpu.run() == KVM_EXIT_HLT
    assert vcpu.regs.rbx & 0xFFFF == 0xBEEF


def test_registers_set_before_run_are_seen(vm, mem):
    # mov [0x0600], bx      89 1E 00 06
    # mov cx, 0x5678        B9 78 56
    # hlt                   F4
    code = bytes.fromhex("891E0006 B97856 F4")
    vcpu = load_guest(vm, mem, code, rbx=0x1234)
    assert vcpu.run() == KVM_EXIT_HLT
    assert mem.read(gpa(mem, 0x600), 2) == struct.pack("<H", 0x1234)
    regs = vcpu.regs
    assert regs.rcx & 0xFFFF == 0x5678
    assert regs.rip == LOAD + len(code)


def test_immediate_exit_returns_intr(vm, mem):
    vcpu = load_guest(vm, mem, bytes.fromhex("F4"))  # hlt
    vcpu.immediate_exit = True
    assert vcpu.run() == KVM_EXIT_INTR
    assert vcpu.regs.rip == LOAD  # nothing ran
    vcpu.immediate_exit = False
    assert vcpu.run() == KVM_EXIT_HLT


def test_kick_from_another_thread(vm, mem):
    # spin: jmp spin        EB FE
    vcpu = load_guest(vm, mem, bytes.fromhex("EBFE"))
    main = threading.get_ident()
    stop = threading.Event()

    def kicker():
        time.sleep(0.05)  # let the guest spin inside KVM_RUN
        while not stop.is_set():
            vcpu.immediate_exit = True
            signal.pthread_kill(main, signal.SIGUSR1)
            stop.wait(0.05)

    old = signal.signal(signal.SIGUSR1, lambda *_: None)
    thread = threading.Thread(target=kicker, daemon=True)
    try:
        thread.start()
        result = vcpu.run()
    finally:
        stop.set()
        thread.join()
        signal.signal(signal.SIGUSR1, old)
    assert result == KVM_EXIT_INTR
    assert vcpu.regs.rip == LOAD


# -- errors and other state --------------------------------------------------------------

def test_overlapping_slot_raises(vm, mem):
    with pytest.raises(KvmError, match=r"KVM_SET_USER_MEMORY_REGION failed: EEXIST") as ei:
        vm.set_user_memory_region(1, 0x8000, 0x10000, int(mem.virt_base) + 0x100000)
    assert ei.value.errno == errno.EEXIST and ei.value.ioctl == "KVM_SET_USER_MEMORY_REGION"
    assert isinstance(ei.value, AxError)


def test_invalid_slot_size_raises(vm, mem):
    with pytest.raises(KvmError, match=r"^KVM_SET_USER_MEMORY_REGION failed: EINVAL "
                                       r"\(Invalid argument\)") as ei:
        vm.set_user_memory_region(1, 0x100000, 0x1001, int(mem.virt_base) + 0x100000)
    assert ei.value.errno_name == "EINVAL"


def test_duplicate_vcpu_id_raises(vm):
    vm.create_vcpu(0)
    with pytest.raises(KvmError, match="KVM_CREATE_VCPU failed: EEXIST"):
        vm.create_vcpu(0)


def test_msrs_fpu_cpuid(kvm, vm):
    vcpu = vm.create_vcpu(0)
    vcpu.set_cpuid2(kvm.supported_cpuid())
    vcpu.set_msrs({0x174: 0x10, 0x175: 0x7000})  # IA32_SYSENTER_CS / _ESP
    assert vcpu.get_msrs([0x174, 0x175]) == {0x174: 0x10, 0x175: 0x7000}
    fpu = vcpu.fpu
    assert fpu.fcw == 0x37F  # FNINIT state
    fpu.fcw = 0x27F
    vcpu.set_fpu(fpu)
    assert vcpu.fpu.fcw == 0x27F


def test_irqchip_pit_and_vmx_addresses(kvm):
    with kvm.create_vm() as v:
        v.set_tss_addr(0xFFFBD000)
        v.set_identity_map_addr(0xFFFBC000)
        v.create_irqchip()
        v.create_pit2()
        v.irq_line(4, 1)
        v.irq_line(4, 0)
        v.create_vcpu(0)


def test_close_releases_file_descriptors(kvm):
    v = kvm.create_vm()
    vcpu = v.create_vcpu(0)
    fds = (v.fd, vcpu.fd)
    with v:
        pass
    assert v.closed and vcpu.closed
    for fd in fds:
        with pytest.raises(OSError) as ei:
            os.fstat(fd)
        assert ei.value.errno == errno.EBADF
    with pytest.raises(BadState):
        vcpu.run()

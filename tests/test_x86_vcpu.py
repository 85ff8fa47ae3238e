"""The x86_64 vCPU on KVM, driven through the generic :class:`VCpu` wrapper.

Guests are tiny machine-code snippets (assembly and encoding in the comments)
loaded at guest physical :data:`LOAD` of 1 MiB of guest RAM ``[0, 1 MiB)`` in an
EPT-format :class:`AddrSpace`; every address above that has no memory slot and is
emulated MMIO.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pyaxvisor.arch.x86_64.pcpu import X86PerCpu
from pyaxvisor.arch.x86_64.vcpu import (
    KvmInternalError,
    X86VCpu,
    X86VCpuCreateConfig,
    X86VCpuSetupConfig,
)
from pyaxvisor.engine.kvm.exits import (
    KVM_EXIT_DEBUG,
    KVM_EXIT_EXCEPTION,
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_SYSTEM_EVENT,
    KVM_EXIT_XEN,
    KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
)
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.engine.kvm.system import FailEntry as KvmFailEntry
from pyaxvisor.engine.kvm.system import InternalError, KvmSystem, SystemEvent
from pyaxvisor.errors import InvalidInput, Unsupported
from pyaxvisor.hal.vcpu_hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr, HostPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table
from pyaxvisor.vcpu.debug import GuestDebug
from pyaxvisor.vcpu.exit import (
    DebugStop,
    FailEntry,
    Halt,
    Hypercall,
    IoRead,
    IoWrite,
    MmioRead,
    MmioWrite,
    Nothing,
    SystemDown,
)
from pyaxvisor.vcpu.percpu import PerCpu
from pyaxvisor.vcpu.state import PendingRead, VCpuState, VCpuStateError
from pyaxvisor.vcpu.vcpu import VCpu
from pyaxvisor.vcpu.width import AccessWidth

_ok, _reason = kvm_usable()
pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not _ok, reason=f"KVM not usable: {_reason}")]

RAM = 1 << 20
LOAD = 0x1000
DATA = 0x2000
UART = 0x3F8

# -- guests ------------------------------------------------------------------------------
# 16-bit real mode, CS = DS = 0.
OUT_BYTE = bytes.fromhex(
    "baf803"    # mov dx, 0x3f8
    "b041"      # mov al, 0x41
    "ee"        # out dx, al
    "f4")       # hlt
IN_STORE = bytes.fromhex(
    "baf803"    # mov dx, 0x3f8
    "ec"        # in al, dx
    "a20020"    # mov [0x2000], al
    "f4")       # hlt
OUT_WORD = bytes.fromhex(
    "baf803"    # mov dx, 0x3f8
    "b83412"    # mov ax, 0x1234
    "ef"        # out dx, ax
    "f4")       # hlt
# ES = 0xFFFF has base 0xFFFF0, so ES:0x10 is guest physical 1 MiB: past RAM.
MMIO_REAL = bytes.fromhex(
    "b8ffff"          # mov ax, 0xffff
    "8ec0"            # mov es, ax
    "26c7061000efbe"  # mov word es:[0x10], 0xbeef   -> MMIO write 0x100000
    "26a11200"        # mov ax, es:[0x12]            -> MMIO read 0x100002
    "a30020"          # mov [0x2000], ax
    "f4")             # hlt
OUT_BX = bytes.fromhex(
    "baf803"    # mov dx, 0x3f8
    "89d8"      # mov ax, bx
    "ef"        # out dx, ax
    "f4")       # hlt
STI_HLT = bytes.fromhex(
    "fb"        # sti
    "f4"        # hlt        (woken by the injected interrupt)
    "f4")       # hlt
HANDLER = bytes.fromhex(
    "baf803"    # mov dx, 0x3f8
    "b049"      # mov al, 'I'
    "ee"        # out dx, al
    "cf")       # iret

# 32-bit protected mode, flat segments.
PROT = bytes.fromhex(
    "66baf803"      # mov dx, 0x3f8
    "b8efbeadde"    # mov eax, 0xdeadbeef
    "ef"            # out dx, eax
    "a3000000d0"    # mov [0xd0000000], eax   -> MMIO write
    "a1040000d0"    # mov eax, [0xd0000004]   -> MMIO read
    "a300200000"    # mov [0x2000], eax
    "f4")           # hlt
UD2 = bytes.fromhex("0f0b")  # ud2: #UD with IDT limit 0 -> #GP -> #DF -> triple fault

# 64-bit long mode, identity-mapped first GiB.
LONG = bytes.fromhex(
    "48b88877665544332211"  # mov rax, 0x1122334455667788
    "4889c3"                # mov rbx, rax
    "48c1e304"              # shl rbx, 4                 rbx = 0x1223344556677880
    "4889d8"                # mov rax, rbx
    "48a30000003000000000"  # mov [0x30000000], rax      -> MMIO write (qword)
    "48c1e820"              # shr rax, 32                rax = 0x12233445
    "66baf803"              # mov dx, 0x3f8
    "ef"                    # out dx, eax
    "48a10800003000000000"  # mov rax, [0x30000008]      -> MMIO read (qword)
    "48890425" "00200000"   # mov [0x2000], rax
    "f4")                   # hlt


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kvm():
    with KvmSystem() as system:
        yield system


@pytest.fixture(scope="module")
def hal():
    with HostHal(8 << 20) as h:
        yield h


@pytest.fixture
def space(hal):
    s = AddrSpace(hal, nested_page_table(hal, "x86_64"))
    s.map_ram(GuestPhysAddr(0), RAM)
    yield s
    s.destroy()


@pytest.fixture
def kvm_vm(kvm):
    with kvm.create_vm() as vm:
        yield vm


@pytest.fixture
def make(kvm_vm, space):
    """``make(code, mode=...)``: load ``code`` at LOAD, set up and bind a vCPU."""
    made = []

    def build(code: bytes, mode: str = "real", *, vcpu_id: int = 0, bind: bool = True,
              entry: int = LOAD) -> VCpu[X86VCpu]:
        space.write(GuestPhysAddr(entry), code)
        vcpu = VCpu(0, vcpu_id, X86VCpu, X86VCpuCreateConfig(kvm_vm, space))
        vcpu.setup(GuestPhysAddr(entry), space.root_paddr, X86VCpuSetupConfig(mode=mode))
        if bind:
            vcpu.bind()
        made.append(vcpu)
        return vcpu

    yield build
    for v in made:
        if v.state is VCpuState.Ready:
            v.unbind()


def run_to(vcpu: VCpu, limit: int = 8):
    """Run, skipping ``Nothing`` exits."""
    for _ in range(limit):
        e = vcpu.run()
        if e != Nothing():
            return e
    raise AssertionError("only Nothing exits")


# -- per-CPU state ---------------------------------------------------------------------
def test_percpu_enable_disable():
    with PerCpu(X86PerCpu) as pc:
        pc.init(0)
        pc.hardware_enable()
        assert pc.is_enabled() and pc.arch.system.api_version == 12
        pc.hardware_disable()
        assert not pc.is_enabled()


# -- real mode ---------------------------------------------------------------------------
def test_out_byte_then_halt(make):
    v = make(OUT_BYTE)
    assert v.run() == IoWrite(UART, AccessWidth.Byte, 0x41)
    assert v.run() == Halt()
    assert v.state is VCpuState.Ready


def test_in_completed_value_reaches_guest_memory(make, space):
    v = make(IN_STORE)
    assert v.run() == IoRead(UART, AccessWidth.Byte)
    with pytest.raises(PendingRead):
        v.run()
    v.complete_read(0x125A)  # only the low byte counts
    assert v.run() == Halt()
    assert space.read(GuestPhysAddr(DATA), 1) == b"\x5a"


def test_out_word(make):
    v = make(OUT_WORD)
    assert v.run() == IoWrite(UART, AccessWidth.Word, 0x1234)


def test_mmio_write_and_read_real_mode(make, space):
    v = make(MMIO_REAL)
    assert v.run() == MmioWrite(GuestPhysAddr(0x100000), AccessWidth.Word, 0xBEEF)
    e = v.run()
    assert e == MmioRead(GuestPhysAddr(0x100002), AccessWidth.Word, 0, AccessWidth.Word, False)
    v.complete_read(0xCAFE)
    assert v.run() == Halt()
    assert space.read(GuestPhysAddr(DATA), 2) == (0xCAFE).to_bytes(2, "little")


def test_entry_above_64k_uses_cs_segment(make):
    v = make(OUT_BYTE, entry=0x12340)
    assert v.run() == IoWrite(UART, AccessWidth.Byte, 0x41)
    sregs = v.arch.kvm.sregs
    assert (sregs.cs.selector, sregs.cs.base) == (0x1000, 0x10000)


def test_set_gpr_uses_hardware_order(make):
    v = make(OUT_BX)
    v.set_gpr(3, 0xFFFF_0000_0000_BEEF)  # 3 = RBX
    v.set_return_value(7)
    assert v.arch.get_gpr(0) == 7
    assert v.run() == IoWrite(UART, AccessWidth.Word, 0xBEEF)
    with pytest.raises(InvalidInput):
        v.set_gpr(16, 0)
    assert v.state is VCpuState.Ready


def test_injected_interrupt_runs_the_real_mode_handler(make, space):
    space.write(GuestPhysAddr(0x20 * 4), (0x1100).to_bytes(2, "little") + b"\0\0")  # IVT[0x20]
    space.write(GuestPhysAddr(0x1100), HANDLER)
    v = make(STI_HLT)
    assert v.run() == Halt()
    v.inject_interrupt(0x20)
    assert run_to(v) == IoWrite(UART, AccessWidth.Byte, ord("I"))
    assert run_to(v) == Halt()
    assert v.arch.pending_interrupts == ()


def test_set_gpr_before_setup_survives_setup(kvm_vm, space):
    space.write(GuestPhysAddr(LOAD), OUT_BX)
    v = VCpu(0, 0, X86VCpu, X86VCpuCreateConfig(kvm_vm, space))
    v.set_gpr(3, 0x4242)
    v.setup(GuestPhysAddr(LOAD), space.root_paddr, X86VCpuSetupConfig())
    v.bind()
    try:
        assert v.run() == IoWrite(UART, AccessWidth.Word, 0x4242)
    finally:
        v.unbind()


def test_kick_makes_run_return_nothing_once(make):
    v = make(OUT_BYTE)
    v.arch.kick()
    assert v.run() == Nothing()
    assert not v.arch.kvm.immediate_exit
    assert v.run() == IoWrite(UART, AccessWidth.Byte, 0x41)


def test_inject_with_in_kernel_irqchip_pulses_the_line(kvm, space):
    with kvm.create_vm() as vm:
        vm.create_irqchip()
        v = VCpu(0, 0, X86VCpu, X86VCpuCreateConfig(vm, space, irqchip=True))
        v.setup(GuestPhysAddr(LOAD), space.root_paddr, X86VCpuSetupConfig())
        v.inject_interrupt(4)  # KVM_IRQ_LINE 4 high, then low
        assert v.arch.pending_interrupts == ()
        with pytest.raises(InvalidInput):
            v.inject_interrupt(256)


def test_wrapper_state_errors_still_hold(make):
    v = make(OUT_BYTE, bind=False)
    assert v.state is VCpuState.Free
    with pytest.raises(VCpuStateError):
        v.run()
    v.bind()
    assert v.run() == IoWrite(UART, AccessWidth.Byte, 0x41)
    with pytest.raises(VCpuStateError):
        v.setup(GuestPhysAddr(LOAD), HostPhysAddr(0), X86VCpuSetupConfig())


def test_wrong_ept_root_is_refused(kvm_vm, space):
    v = VCpu(0, 0, X86VCpu, X86VCpuCreateConfig(kvm_vm, space))
    with pytest.raises(InvalidInput, match="EPT root"):
        v.setup(GuestPhysAddr(LOAD), HostPhysAddr(int(space.root_paddr) + 0x1000),
                X86VCpuSetupConfig())
    assert v.state is VCpuState.Invalid


def test_two_vcpus_share_the_slots(make, space):
    a = make(OUT_BYTE, vcpu_id=0, bind=False)
    b = make(OUT_WORD, vcpu_id=1, entry=0x3000, bind=False)
    a.bind()
    assert a.run() == IoWrite(UART, AccessWidth.Byte, 0x41)
    a.unbind()
    b.bind()
    assert b.run() == IoWrite(UART, AccessWidth.Word, 0x1234)


# -- protected mode -----------------------------------------------------------------------
def test_protected_mode_out_mmio_and_halt(make, space):
    v = make(PROT, "protected")
    assert v.run() == IoWrite(UART, AccessWidth.Dword, 0xDEADBEEF)
    assert v.run() == MmioWrite(GuestPhysAddr(0xD000_0000), AccessWidth.Dword, 0xDEADBEEF)
    assert v.run() == MmioRead(GuestPhysAddr(0xD000_0004), AccessWidth.Dword, 0,
                               AccessWidth.Dword, False)
    v.complete_read(0x0123_4567)
    assert v.run() == Halt()
    assert space.read(GuestPhysAddr(DATA), 4) == (0x0123_4567).to_bytes(4, "little")


def test_triple_fault_is_system_reset(make):
    v = make(UD2, "protected")
    assert v.run() == SystemDown(reset=True)


# -- long mode -----------------------------------------------------------------------------
def test_long_mode_64bit_values(make, space):
    v = make(LONG, "long")
    assert v.run() == MmioWrite(GuestPhysAddr(0x3000_0000), AccessWidth.Qword,
                                0x1223_3445_5667_7880)
    assert v.run() == IoWrite(UART, AccessWidth.Dword, 0x1223_3445)
    assert v.run() == MmioRead(GuestPhysAddr(0x3000_0008), AccessWidth.Qword, 0,
                               AccessWidth.Qword, False)
    v.complete_read(0xFEDC_BA98_7654_3210)
    assert v.run() == Halt()
    assert space.read_u64(GuestPhysAddr(DATA)) == 0xFEDC_BA98_7654_3210
    sregs = v.arch.kvm.sregs
    assert sregs.efer & 0x500 == 0x500 and sregs.cr3 == 0x9000


def test_long_mode_page_tables_must_be_in_ram(kvm_vm, hal):
    small = AddrSpace(hal, nested_page_table(hal, "x86_64"))
    small.map_ram(GuestPhysAddr(0), 0x8000)  # [0, 32 KiB): 0x9000 is outside
    try:
        v = VCpu(0, 0, X86VCpu, X86VCpuCreateConfig(kvm_vm, small))
        with pytest.raises(InvalidInput, match="page tables"):
            v.setup(GuestPhysAddr(LOAD), small.root_paddr, X86VCpuSetupConfig(mode="long"))
    finally:
        small.destroy()


# -- errors ----------------------------------------------------------------------------------
def test_rep_outs_comes_as_one_write_per_element(make, space):
    space.write(GuestPhysAddr(0x3000), b"ABC")
    # mov dx, 0x3f8; mov cx, 3; mov si, 0x3000; rep outsb; hlt
    v = make(bytes.fromhex("baf803" "b90300" "be0030" "f36e" "f4"))
    seen = [run_to(v) for _ in range(4)]
    assert seen == [IoWrite(UART, AccessWidth.Byte, 0x41), IoWrite(UART, AccessWidth.Byte, 0x42),
                    IoWrite(UART, AccessWidth.Byte, 0x43), Halt()]


def test_rep_ins_fills_guest_memory_element_by_element(make, space):
    # mov dx, 0x3f8; mov cx, 3; mov di, 0x3000; rep insw; hlt
    v = make(bytes.fromhex("baf803" "b90300" "bf0030" "f36d" "f4"))
    for value in (0x1111, 0x2222, 0x3333):
        assert run_to(v) == IoRead(UART, AccessWidth.Word)
        v.complete_read(value)
    assert run_to(v) == Halt()
    assert space.read(GuestPhysAddr(0x3000), 6) == bytes.fromhex("111122223333")


def test_served_string_io_calls_the_handler_per_element(make, space):
    space.write(GuestPhysAddr(0x3000), bytes.fromhex("3412" "7856"))
    log = PortLog()
    # mov dx, 0x80; mov cx, 2; mov si, 0x3000; rep outsw;
    # mov dx, 0x81; mov cx, 2; mov di, 0x3100; rep insb; hlt
    v = make(bytes.fromhex("ba8000" "b90200" "be0030" "f36f"
                           "ba8100" "b90200" "bf0031" "f36c" "f4"))
    v.arch.serve_ports({0x80: (log.write, None, 0), 0x81: (None, log.read, 1)})
    assert run_to(v) == Halt()
    assert log.calls == [("w", 0, AccessWidth.Word, 0x1234, 0),
                         ("w", 0, AccessWidth.Word, 0x5678, 0),
                         ("r", 1, AccessWidth.Byte, 0), ("r", 1, AccessWidth.Byte, 0)]
    assert space.read(GuestPhysAddr(0x3100), 2) == b"\xa5\xa5"
    assert v.arch.served[:2] == (2, 2)


def _fake(**exit_views):
    return SimpleNamespace(vcpu_id=5, kvm=SimpleNamespace(**exit_views))


def test_decode_other_exits():
    err = InternalError(1, (0x10, 0x20))
    with pytest.raises(KvmInternalError, match=r"suberror 1 .*0x10, 0x20"):
        X86VCpu._decode(_fake(internal_error=err), KVM_EXIT_INTERNAL_ERROR)
    reset = SystemEvent(KVM_SYSTEM_EVENT_RESET, ())
    off = SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, ())
    assert X86VCpu._decode(_fake(system_event=reset), KVM_EXIT_SYSTEM_EVENT) == \
        SystemDown(reset=True)
    assert X86VCpu._decode(_fake(system_event=off), KVM_EXIT_SYSTEM_EVENT) == \
        SystemDown(reset=False)
    assert X86VCpu._decode(_fake(fail_entry=KvmFailEntry(0x80000021, 0)),
                           KVM_EXIT_FAIL_ENTRY) == FailEntry(0x80000021)
    assert X86VCpu._decode(_fake(), KVM_EXIT_INTR) == Nothing()
    with pytest.raises(Unsupported, match="KVM_EXIT_EXCEPTION"):
        X86VCpu._decode(_fake(), KVM_EXIT_EXCEPTION)
    # a debug exit: B0 of DR6 is the first hardware breakpoint, else the step ended
    fake = _fake(debug_exit=SimpleNamespace(pc=0x1234, dr6=0xFFFF0FF1))
    fake._debug = GuestDebug(hw_breakpoints=(0x1234,))
    assert X86VCpu._decode(fake, KVM_EXIT_DEBUG) == DebugStop("breakpoint", 0x1234)
    fake = _fake(debug_exit=SimpleNamespace(pc=0x1236, dr6=0xFFFF4FF0))
    fake._debug = GuestDebug(step=True)
    assert X86VCpu._decode(fake, KVM_EXIT_DEBUG) == DebugStop("step", 0x1236)


def test_cpuid_carries_each_vcpus_apic_id_and_can_hide_pv_hypercalls():
    from pyaxvisor.arch.x86_64.vcpu import KVM_PV_HYPERCALL_FEATURES, cpuid_for
    from pyaxvisor.engine.kvm import structs as st

    buf = st.cpuid2_type(4)()
    buf.nent = 4
    for entry, (fn, idx) in zip(buf.entries, [(1, 0), (0xB, 0), (0xB, 1), (0x4000_0001, 0)],
                                strict=True):
        entry.function, entry.index = fn, idx
        entry.ebx, entry.edx, entry.eax = 0xAB00_0800, 0, 0xFFFF_FFFF
    cpuid_for(buf, 3, hide_pv_hypercalls=True)
    assert buf.entries[0].ebx == 0x0300_0800
    assert (buf.entries[1].edx, buf.entries[2].edx) == (3, 3)
    assert buf.entries[3].eax == 0xFFFF_FFFF & ~KVM_PV_HYPERCALL_FEATURES
    assert KVM_PV_HYPERCALL_FEATURES == 0x2880


def test_xen_hypercall_exit_decodes_to_hypercall_and_return_value_goes_to_result():
    from pyaxvisor.engine.kvm import structs as st

    xen = st.KvmRunXen(type=st.KVM_EXIT_XEN_HCALL)
    xen.hcall.input = 0x1234
    regs = st.KvmRegs(rdi=1, rsi=2, rdx=3, rcx=4, r8=5, r9=6, rax=0x1234)
    fake = SimpleNamespace(vcpu_id=5, kvm=SimpleNamespace(xen=xen, regs=regs),
                           _in_hypercall=False)
    e = X86VCpu._decode(fake, KVM_EXIT_XEN)
    assert e == Hypercall(0x1234, (1, 2, 3, 4, 5, 6))
    X86VCpu.set_return_value(fake, 0xFFFF_FFFF_FFFF_FC18)
    assert xen.hcall.result == 0xFFFF_FFFF_FFFF_FC18
    xen.type = 2
    with pytest.raises(Unsupported, match="Xen exit type 2"):
        X86VCpu._decode(fake, KVM_EXIT_XEN)


def test_hypercall_interception_needs_kvm_xen_support():
    from pyaxvisor.engine.kvm.ioctls import KVM_CAP_XEN_HVM
    from pyaxvisor.engine.kvm.structs import KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL
    from pyaxvisor.engine.kvm.system import KvmError

    with KvmSystem() as kvm, kvm.create_vm() as vm:
        if kvm.check_extension(KVM_CAP_XEN_HVM) & KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL:
            vm.intercept_hypercalls()  # accepted where KVM has Xen support
        else:
            with pytest.raises(KvmError, match=r"KVM_XEN_HVM_CONFIG failed: .*cannot "
                                               r"intercept hypercalls \(KVM_CAP_XEN_HVM"):
                vm.intercept_hypercalls()


# -- ports served inside run() -------------------------------------------------------------
SERVED = bytes.fromhex(
    "ba8000"    # mov dx, 0x80
    "b011"      # mov al, 0x11
    "ee"        # out dx, al        -> served: write(0, Byte, 0x11)
    "b83322"    # mov ax, 0x2233
    "ef"        # out dx, ax        -> served: write(0, Word, 0x2233)
    "e481"      # in al, 0x81       -> served: read(1, Byte) = 0x1A5, the guest gets 0xA5
    "baf803"    # mov dx, 0x3f8
    "ee"        # out dx, al        -> not served: run() returns it
    "e480"      # in al, 0x80       -> port 0x80 has no read handler: run() returns it
    "f4")       # hlt


class PortLog:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self.calls.append(("w", offset, width, value, vcpu_id))

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self.calls.append(("r", offset, width, vcpu_id))
        return 0x1A5


def test_served_ports_reach_their_handlers_and_only_the_rest_return(make):
    log = PortLog()
    v = make(SERVED, vcpu_id=3)
    v.arch.serve_ports({0x80: (log.write, None, 0), 0x81: (None, log.read, 1)}, timing=True)
    assert v.run() == IoWrite(UART, AccessWidth.Byte, 0xA5)
    assert log.calls == [("w", 0, AccessWidth.Byte, 0x11, 3),
                         ("w", 0, AccessWidth.Word, 0x2233, 3),
                         ("r", 1, AccessWidth.Byte, 3)]
    assert v.run() == IoRead(0x80, AccessWidth.Byte)
    v.complete_read(0)
    assert v.run() == Halt()
    writes, reads, write_s, read_s = v.arch.served
    assert (writes, reads) == (2, 1)
    assert write_s > 0 and read_s > 0


def test_serving_can_be_turned_off(make):
    log = PortLog()
    v = make(SERVED)
    v.arch.serve_ports({0x80: (log.write, None, 0)})
    v.arch.serve_ports({})
    assert v.run() == IoWrite(0x80, AccessWidth.Byte, 0x11)
    assert log.calls == [] and v.arch.served[:2] == (0, 0)


def test_a_served_handler_that_raises_ends_run_with_its_error(make):
    def refuse(offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        raise InvalidInput(f"port offset {offset}: {width.size}-byte write of {value:#x} refused")

    v = make(SERVED)
    v.arch.serve_ports({0x80: (refuse, None, 0)})
    with pytest.raises(InvalidInput, match=r"port offset 0: 1-byte write of 0x11 refused"):
        v.run()
    assert v.state is VCpuState.Invalid


def test_serve_ports_refuses_a_port_outside_the_io_space(make):
    v = make(SERVED)
    with pytest.raises(InvalidInput):
        v.arch.serve_ports({0x10000: (None, None, 0)})

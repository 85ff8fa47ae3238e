"""The x86_64 vCPU (x86_vcpu ``VmxVcpu``) on Linux KVM.

The hardware part of an x86 vCPU — the VMCS (VMX) or VMCB (SVM), VM entry and
exit, the real EPT/NPT — belongs to the kernel. :class:`X86VCpu` owns one KVM
vCPU (``KVM_CREATE_VCPU`` on the VM's shared :class:`KvmVm`) and maps the
``ArchVCpu`` interface onto it:

* ``new`` creates the KVM vCPU with ``vcpu_id`` and gives it the CPUID KVM
  supports on this host (``KVM_GET_SUPPORTED_CPUID`` → ``KVM_SET_CPUID2``), with
  the vCPU's own APIC ID = ``vcpu_id`` in leaf 1 EBX[31:24] and in EDX of the
  x2APIC topology leaves 0xB and 0x1F (KVM's local APIC uses ``vcpu_id`` as its
  ID, so the two agree).
* ``set_entry(gpa)`` records the first instruction. In real mode it is reached
  as ``CS:IP`` with ``CS.selector = (gpa >> 4) & 0xF000``, ``CS.base =
  selector << 4`` and ``IP = gpa & 0xFFFF``: for ``gpa < 64 KiB`` that is CS = 0,
  IP = gpa; any ``gpa < 1 MiB`` works. In protected and long mode the segments are
  flat and RIP = gpa.
* ``set_ept_root(hpa)``: KVM builds and owns the real EPT/NPT from its memory
  slots, so the nested table of the :class:`AddrSpace` is not walked by the
  hardware. The vCPU checks that ``hpa`` is that space's ``root_paddr`` (the
  contract of the interface: the root names the address space) and makes every
  RAM region of the space a KVM memory slot whose ``userspace_addr`` is the host
  pointer of the region's backing (``hal.phys_to_virt(region.hpa)``). Slots are
  registered once per :class:`KvmVm` (the VM's vCPUs share them); the registry
  is a module-level ``WeakKeyDictionary``. Guest physical addresses outside the
  RAM regions have no slot, so accesses there exit as ``KVM_EXIT_MMIO``. On an
  Intel host the VM also gets its real-mode TSS (``KVM_SET_TSS_ADDR`` at
  :data:`TSS_ADDR`, as QEMU does).
* ``setup(config)`` loads the registers for ``config.mode`` (see
  :class:`X86VCpuSetupConfig`).
* ``run()`` is ``KVM_RUN``; the exit becomes an exit reason (:meth:`X86VCpu.run`).
* ``complete_read`` writes the device's value into the ``kvm_run`` data area of
  the IN / MMIO-read exit; KVM moves it into the destination register (and
  finishes the instruction) at the next ``KVM_RUN``.

Register numbering of ``set_gpr`` is the x86 hardware encoding (the ModRM/REX
register number): 0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI,
8..15 R8..R15. ``set_return_value`` sets RAX.

Interrupts (``inject_interrupt(vector)``): without an in-kernel irqchip the
vector is queued and handed to KVM with ``KVM_INTERRUPT`` at the next entry
where ``kvm_run.ready_for_interrupt_injection`` says the guest can take it;
until then the vCPU asks for an interrupt-window exit
(``request_interrupt_window``), which ``run`` reports as ``Nothing``. With the
in-kernel irqchip (``X86VCpuCreateConfig.irqchip``, i.e. the VM called
``KVM_CREATE_IRQCHIP``) ``KVM_INTERRUPT`` is refused, so ``vector`` is taken as
the irqchip input (GSI) and pulsed with ``KVM_IRQ_LINE`` (high, then low); the
in-kernel PIC/IOAPIC pick the vector. To make a running vCPU notice a queued
vector, a VM layer calls :meth:`X86VCpu.kick` (and signals the thread).

Hypercalls (``vmcall``/``vmmcall``): KVM answers them in the kernel (its PV
interface; an unknown number gets ``-KVM_ENOSYS`` = -1000 in RAX) unless the VM
was made to intercept them (:meth:`KvmVm.intercept_hypercalls
<pyaxvisor.engine.kvm.system.KvmVm.intercept_hypercalls>`, which needs a KVM
built with Xen support, ``KVM_CAP_XEN_HVM``). Intercepted, a hypercall exits as
``Hypercall(nr=RAX, args=(RDI, RSI, RDX, RCX, R8, R9))``; ``set_return_value``
then sets the value KVM puts in RAX as it steps over the instruction.

Threads: KVM wants a vCPU's ioctls from one thread; ``bind`` records the
calling thread and ``run`` refuses any other. :meth:`X86VCpu.kick` works from
any thread: it sets ``immediate_exit`` and signals the bound thread
(:mod:`pyaxvisor.engine.kvm.kick`), so a vCPU sleeping in ``KVM_RUN`` (a guest
HLT handled by the in-kernel LAPIC, an AP waiting for its SIPI) returns too.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Self

from pyaxvisor.arch.x86_64 import gdb as x86gdb
from pyaxvisor.arch.x86_64.pcpu import virtualization_extension
from pyaxvisor.engine.kvm import structs as st
from pyaxvisor.engine.kvm.exits import (
    KVM_EXIT_DEBUG,
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HLT,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_IRQ_WINDOW_OPEN,
    KVM_EXIT_MMIO,
    KVM_EXIT_SHUTDOWN,
    KVM_EXIT_SYSTEM_EVENT,
    KVM_EXIT_XEN,
    KVM_SYSTEM_EVENT_RESET,
    exit_reason_name,
)
from pyaxvisor.engine.kvm.ioctls import KVM_INTERRUPT
from pyaxvisor.engine.kvm.kick import install as install_kick
from pyaxvisor.engine.kvm.kick import kick_thread
from pyaxvisor.engine.kvm.system import KvmVCpu, KvmVm, io_exit_key, kvm_ioctl
from pyaxvisor.errors import (
    AlreadyExists,
    AxError,
    BadState,
    InvalidInput,
    NotFound,
    Unsupported,
)
from pyaxvisor.mm.addr import GuestPhysAddr, HostPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vcpu.arch_vcpu import ArchVCpu, InCpuWindow, Served
from pyaxvisor.vcpu.debug import GuestDebug
from pyaxvisor.vcpu.exit import (
    U64,
    ExitReason,
    FailEntry,
    Halt,
    Hypercall,
    IoRead,
    IoWrite,
    MmioRead,
    MmioWrite,
    Nothing,
    ReadExit,
    SystemDown,
    read_register_value,
)
from pyaxvisor.vcpu.width import AccessWidth, Port

#: ``set_gpr`` index → ``kvm_regs`` field (x86 hardware register encoding).
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

#: Three pages for Intel's real-mode emulation (``KVM_SET_TSS_ADDR``), below 4 GiB.
TSS_ADDR = 0xFFFB_D000

#: How many distinct port exits a vCPU keeps ready-made (see :meth:`X86VCpu.run`).
IO_EXIT_CACHE = 4096
#: The widths a served port access passes to its handler, for 1, 2 and 4 bytes.
PORT_WIDTHS = (AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword)

#: ``write(offset, width, value, vcpu_id)``, the port-I/O device write signature.
PortWrite = Callable[[int, AccessWidth, int, int], None]
#: ``read(offset, width, vcpu_id) -> value``, the port-I/O device read signature.
PortRead = Callable[[int, AccessWidth, int], int]

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED = 1 << 1

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_PS = 1 << 7

#: Flat protected/long-mode selectors: the GDT of :func:`gdt_bytes` (Linux's boot
#: protocol names them ``__BOOT_CS`` and ``__BOOT_DS``).
CODE32_SELECTOR = 0x08
CODE_SELECTOR = 0x10
DATA_SELECTOR = 0x18

#: Segment descriptors (base 0, limit 4 GiB, G = 1): 32-bit code, 64-bit code, data.
DESC_CODE32 = 0x00CF_9B00_0000_FFFF
DESC_CODE64 = 0x00AF_9B00_0000_FFFF
DESC_DATA = 0x00CF_9300_0000_FFFF


def gdt_bytes(long: bool) -> bytes:
    """A GDT: null, 0x08 flat 32-bit code, 0x10 flat code of the start mode (64-bit
    in long mode), 0x18 flat data (all accessed bits set, so loading a selector never
    writes the table)."""
    entries = (0, DESC_CODE32, DESC_CODE64 if long else DESC_CODE32, DESC_DATA)
    return b"".join(e.to_bytes(8, "little") for e in entries)


class KvmInternalError(AxError):
    """``KVM_EXIT_INTERNAL_ERROR``: KVM could not go on (e.g. an instruction its
    emulator does not know). ``suberror`` is ``kvm_run.internal.suberror``."""

    _SUBERRORS: ClassVar[dict[int, str]] = {
        1: "emulation failure", 2: "simultaneous exceptions", 3: "event delivery failure",
        4: "unexpected exit reason"}

    def __init__(self, vcpu_id: int, suberror: int, data: tuple[int, ...]) -> None:
        name = self._SUBERRORS.get(suberror, "unknown")
        words = ", ".join(f"{d:#x}" for d in data) or "none"
        super().__init__(f"vCPU {vcpu_id}: KVM internal error, suberror {suberror} ({name}); "
                         f"data: {words}")
        self.suberror = suberror
        self.data = data


@dataclass(frozen=True)
class X86VCpuCreateConfig:
    """``kvm_vm``: the VM's :class:`KvmVm` (one per VM, shared by its vCPUs);
    ``space``: the VM's guest physical address space; ``irqchip``: the VM has the
    in-kernel irqchip (``KVM_CREATE_IRQCHIP`` was called before the vCPUs)."""

    kvm_vm: KvmVm
    space: AddrSpace
    irqchip: bool = False
    #: The VM intercepts hypercalls: hide the KVM PV features guests use them for.
    hypercalls_intercepted: bool = False
    #: Called with the vCPU, on its thread, when the guest triple-faults
    #: (``KVM_EXIT_SHUTDOWN``), before :meth:`X86VCpu.run` returns the reset: the VM
    #: can tell a triple fault from a reset the guest asked for.
    on_triple_fault: Callable[[X86VCpu], None] | None = None


Mode = Literal["real", "protected", "long"]


@dataclass(frozen=True)
class X86VCpuSetupConfig:
    """How the vCPU starts.

    * ``"real"``: CR0.PE = 0; DS/ES/FS/GS/SS selector and base 0, limit 0xFFFF;
      CS:IP from the entry (see the module doc).
    * ``"protected"``: CR0.PE = 1, no paging; flat 4 GiB 32-bit code (selector
      0x08) and data (0x10) segments loaded directly into the hidden segment state.
    * ``"long"``: 64-bit mode with paging: at ``page_table_gpa`` the vCPU writes
      a PML4, at +0x1000 a PDPT and at +0x2000 one page directory of 512 2 MiB
      pages identity-mapping ``[0, 1 GiB)`` (read/write, supervisor); CR3 = the
      PML4, CR4.PAE, EFER.LME | LMA, CR0.PG | PE; 64-bit code segment (L = 1).
      The three pages must lie in guest RAM.

    In every mode RFLAGS = 0x2 (interrupts off) and RSP = ``stack_pointer``; the
    other GPRs keep their values (KVM's reset values, or what ``set_gpr`` put
    there before ``setup``). Protected and long mode load CS = 0x10 and the data
    segments with 0x18. With ``gdt_gpa`` the vCPU writes the matching GDT of
    :func:`gdt_bytes` there (32 bytes of guest RAM) and points GDTR at it, as the
    Linux boot protocol requires; without it GDTR is base 0 limit 0 and the guest
    must load its own GDT before reloading a segment register. IDTR is base 0 limit
    0: any exception before the guest loads an IDT escalates to a triple fault.
    """

    mode: Mode = "real"
    stack_pointer: int = 0x8000
    page_table_gpa: int = 0x9000
    gdt_gpa: int | None = None


@dataclass
class _VmState:
    slots: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # gpa -> size,host,slot
    next_slot: int = 0
    tss_set: bool = False


_vm_state: weakref.WeakKeyDictionary[KvmVm, _VmState] = weakref.WeakKeyDictionary()
_vm_state_lock = threading.Lock()


def register_memory_slots(kvm_vm: KvmVm, space: AddrSpace) -> None:
    """Make every RAM region of ``space`` a memory slot of ``kvm_vm`` (idempotent)."""
    with _vm_state_lock:
        state = _vm_state.setdefault(kvm_vm, _VmState())
        for region in space.regions:
            gpa = int(region.gpa)
            host = int(space.hal.phys_to_virt(region.hpa))
            known = state.slots.get(gpa)
            if known is not None:
                if known[:2] != (region.size, host):
                    raise AlreadyExists(
                        f"guest RAM at {gpa:#x} is already a KVM memory slot of size "
                        f"{known[0]:#x} backed by {known[1]:#x}, not {region.size:#x} "
                        f"backed by {host:#x}")
                continue
            slot = state.next_slot
            kvm_vm.set_user_memory_region(slot, gpa, region.size, host)
            state.slots[gpa] = (region.size, host, slot)
            state.next_slot += 1
        if not state.tss_set and virtualization_extension() == "vmx":
            kvm_vm.set_tss_addr(TSS_ADDR)
            state.tss_set = True


def _set_segment(seg: st.KvmSegment, *, selector: int, base: int, limit: int, type_: int,
                 db: int = 0, l_: int = 0, g: int = 0) -> None:
    seg.selector = selector
    seg.base = base
    seg.limit = limit
    seg.type = type_
    seg.present = 1
    seg.dpl = 0
    seg.db = db
    seg.s = 1
    seg.l = l_
    seg.g = g
    seg.avl = 0
    seg.unusable = 0


#: KVM_CPUID_FEATURES (leaf 0x4000_0001) EAX bits whose PV operations are hypercalls:
#: PV_UNHALT (7, KVM_HC_KICK_CPU), PV_SEND_IPI (11), PV_SCHED_YIELD (13).
KVM_PV_HYPERCALL_FEATURES = (1 << 7) | (1 << 11) | (1 << 13)
KVM_CPUID_FEATURES = 0x4000_0001


def cpuid_for(cpuid: ctypes.Structure, apic_id: int, *,
              hide_pv_hypercalls: bool = False) -> ctypes.Structure:
    """``cpuid`` (a filled ``kvm_cpuid2``) with ``apic_id`` as the initial APIC ID:
    leaf 1 EBX[31:24] and EDX of every subleaf of leaves 0xB and 0x1F. With
    ``hide_pv_hypercalls`` the KVM PV features that a guest would drive with
    hypercalls are cleared (when hypercalls come to the VM, KVM does not answer them)."""
    for entry in cpuid.entries[:cpuid.nent]:
        if entry.function == 1:
            entry.ebx = (entry.ebx & 0x00FF_FFFF) | ((apic_id & 0xFF) << 24)
        elif entry.function in (0xB, 0x1F):
            entry.edx = apic_id
        elif entry.function == KVM_CPUID_FEATURES and hide_pv_hypercalls:
            entry.eax &= ~KVM_PV_HYPERCALL_FEATURES
    return cpuid


@dataclass
class _StringIo:
    """A string port access (INS/OUTS) being handed out one element per exit;
    ``index`` is the element the last exit was for (-1 before the first), ``data``
    views the ``count * width`` bytes in ``kvm_run``."""

    port: int
    width: AccessWidth
    is_out: bool
    count: int
    data: memoryview
    index: int = -1


class X86VCpu(ArchVCpu):
    CreateConfig = X86VCpuCreateConfig
    SetupConfig = X86VCpuSetupConfig
    gdb = x86gdb.LAYOUT

    def __init__(self, vm_id: int, vcpu_id: int, config: X86VCpuCreateConfig,
                 kvm_vcpu: KvmVCpu) -> None:
        self.vm_id = vm_id
        self.vcpu_id = vcpu_id
        self.kvm_vm = config.kvm_vm
        self.space = config.space
        self.irqchip = config.irqchip
        self.kvm = kvm_vcpu
        self.entry: GuestPhysAddr | None = None
        self.mode: Mode | None = None
        self._thread: int | None = None
        self._pending: list[int] = []
        self._pending_lock = threading.Lock()
        self._in_hypercall = False
        self._io_exits: dict[int, ExitReason] = {}
        self._ports: dict[int, tuple[object, object, int, int]] | None = None
        self._string: _StringIo | None = None
        self._served = array("Q", bytes(8 * 6))
        self._on_triple_fault = config.on_triple_fault
        self._debug = GuestDebug()

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def new(cls, vm_id: int, vcpu_id: int, config: X86VCpuCreateConfig) -> Self:
        kvm_vcpu = config.kvm_vm.create_vcpu(vcpu_id)
        try:
            kvm_vcpu.set_cpuid2(cpuid_for(config.kvm_vm.system.supported_cpuid(), vcpu_id,
                                          hide_pv_hypercalls=config.hypercalls_intercepted))
        except BaseException:
            config.kvm_vm.vcpus.remove(kvm_vcpu)
            kvm_vcpu.close()
            raise
        return cls(vm_id, vcpu_id, config, kvm_vcpu)

    def set_entry(self, entry: GuestPhysAddr) -> None:
        self.entry = entry

    def set_ept_root(self, ept_root: HostPhysAddr) -> None:
        """KVM owns the real EPT; check the root names our space and register its RAM."""
        if int(ept_root) != int(self.space.root_paddr):
            raise InvalidInput(
                f"vCPU {self.vcpu_id}: EPT root {int(ept_root):#x} is not the root "
                f"{int(self.space.root_paddr):#x} of the vCPU's address space")
        register_memory_slots(self.kvm_vm, self.space)

    def setup(self, config: X86VCpuSetupConfig) -> None:
        if self.entry is None:
            raise BadState(f"vCPU {self.vcpu_id}: setup() before set_entry()")
        entry = int(self.entry)
        sregs = self.kvm.sregs
        regs = self.kvm.regs  # keeps GPRs set with set_gpr before setup
        regs.rflags = RFLAGS_RESERVED
        regs.rsp = config.stack_pointer
        if config.mode == "real":
            if entry >= 1 << 20:
                raise InvalidInput(f"real-mode entry {entry:#x} is not below 1 MiB")
            cs = (entry >> 4) & 0xF000
            _set_segment(sregs.cs, selector=cs, base=cs << 4, limit=0xFFFF, type_=0xB)
            for name in ("ds", "es", "fs", "gs", "ss"):
                _set_segment(getattr(sregs, name), selector=0, base=0, limit=0xFFFF, type_=0x3)
            sregs.cr0 = CR0_ET
            sregs.cr4 = 0
            sregs.efer = 0
            sregs.idt.base, sregs.idt.limit = 0, 0x3FF
            regs.rip = entry - (cs << 4)
        elif config.mode in ("protected", "long"):
            long = config.mode == "long"
            if not long and entry >= 1 << 32:
                raise InvalidInput(f"protected-mode entry {entry:#x} is not below 4 GiB")
            _set_segment(sregs.cs, selector=CODE_SELECTOR, base=0, limit=0xFFFF_FFFF,
                         type_=0xB, db=0 if long else 1, l_=1 if long else 0, g=1)
            for name in ("ds", "es", "fs", "gs", "ss"):
                _set_segment(getattr(sregs, name), selector=DATA_SELECTOR, base=0,
                             limit=0xFFFF_FFFF, type_=0x3, db=1, g=1)
            sregs.gdt.base, sregs.gdt.limit = 0, 0
            if config.gdt_gpa is not None:
                table = gdt_bytes(long)
                if self.space.find_region(GuestPhysAddr(config.gdt_gpa)) is None:
                    raise InvalidInput(f"the GDT at {config.gdt_gpa:#x} is not in guest RAM")
                self.space.write(GuestPhysAddr(config.gdt_gpa), table)
                sregs.gdt.base, sregs.gdt.limit = config.gdt_gpa, len(table) - 1
            sregs.idt.base, sregs.idt.limit = 0, 0
            sregs.cr0 = CR0_ET | CR0_PE
            sregs.cr4 = 0
            sregs.efer = 0
            if long:
                sregs.cr3 = self._build_identity_map(config.page_table_gpa)
                sregs.cr4 = CR4_PAE
                sregs.efer = EFER_LME | EFER_LMA
                sregs.cr0 |= CR0_PG
            regs.rip = entry
        else:
            raise InvalidInput(f"unknown x86 start mode {config.mode!r}: choose 'real', "
                               "'protected' or 'long'")
        self.kvm.set_sregs(sregs)
        self.kvm.set_regs(regs)
        self.mode = config.mode

    def _build_identity_map(self, gpa: int) -> int:
        """PML4 at ``gpa``, PDPT at +4 KiB, PD at +8 KiB: ``[0, 1 GiB)`` in 2 MiB pages."""
        if gpa % 0x1000:
            raise InvalidInput(f"page-table GPA {gpa:#x} is not 4 KiB aligned")
        pml4, pdpt, pd = gpa, gpa + 0x1000, gpa + 0x2000
        if self.space.find_region(GuestPhysAddr(pml4)) is None or \
                self.space.find_region(GuestPhysAddr(pd + 0xFFF)) is None:
            raise InvalidInput(f"the long-mode page tables at [{gpa:#x}, {gpa + 0x3000:#x}) "
                               "are not in guest RAM")
        table = bytearray(0x3000)
        table[0:8] = (pdpt | PTE_P | PTE_RW).to_bytes(8, "little")
        table[0x1000:0x1008] = (pd | PTE_P | PTE_RW).to_bytes(8, "little")
        for i in range(512):
            table[0x2000 + 8 * i:0x2008 + 8 * i] = \
                ((i << 21) | PTE_P | PTE_RW | PTE_PS).to_bytes(8, "little")
        self.space.write(GuestPhysAddr(gpa), table)
        return pml4

    # -- ports served inside run() --------------------------------------------------------
    def serve_ports(self, ports: Mapping[int, tuple[PortWrite | None, PortRead | None, int]],
                    *, timing: bool = False) -> None:
        """Serve the port accesses to ``ports`` inside :meth:`run`, the way x86_vcpu
        handles some exits itself before returning one to the VM: ``ports[port] =
        (write, read, offset)``; an OUT calls ``write(offset, width, value,
        vcpu_id)``, an IN ``read(offset, width, vcpu_id)`` (masked to the access size
        and handed to the guest), string I/O once per element in order, and
        ``KVM_RUN`` is entered again without leaving the native call. Each is still a
        full exit to user space; :meth:`run` returns only the exits no handler
        claims. A handler's exception ends ``run`` with it. The handlers run on this
        vCPU's thread while the vCPU is Running. :attr:`served` counts them (and
        times them with ``timing``). Call before the first :meth:`run`, from the
        bound thread; an empty mapping turns serving off.

        String I/O: KVM hands out an ``INS`` up to a page of elements per exit and an
        ``OUTS`` one element per exit (its instruction emulator completes each
        element before the next); either way every element reaches the handler, in
        order. Writes to ports the VM coalesces (:meth:`KvmVm.coalesce_pio
        <pyaxvisor.engine.kvm.system.KvmVm.coalesce_pio>`) do not exit at all: KVM
        queues them (a ``rep outsb`` of a page: about 170 elements per exit, the
        ring's size) and each run hands the queued writes to their handlers, oldest
        first, before anything else."""
        self._ports = {int(Port(port)): (write, read, int(offset), self.vcpu_id)
                       for port, (write, read, offset) in ports.items()} or None
        self._served[0] = int(timing)

    def serve_in_cpu(self, windows: Sequence[InCpuWindow], *, timing: bool = False) -> bool:
        """The ``ArchVCpu`` form of :meth:`serve_ports`: every port of the "port"
        windows is served inside :meth:`run` (MMIO windows are not: KVM hands MMIO
        to user space as exits)."""
        ports = {window.base + i: (window.write, window.read, i)
                 for window in windows if window.space == "port" for i in range(window.size)}
        self.serve_ports(ports, timing=timing)
        return bool(ports)

    @property
    def served(self) -> tuple[int, int, float, float]:
        """``(writes, reads, seconds in writes, seconds in reads)`` served inside
        :meth:`run` so far (the times are 0 without ``timing``)."""
        s = self._served
        return s[1], s[2], s[3] / 1e9, s[4] / 1e9

    @property
    def kvm_runs(self) -> int:
        """Returns from ``KVM_RUN`` inside :meth:`run` while ports are served: the
        guest's exits to user space, whether a device took them there or not."""
        return self._served[5]

    def served_counts(self) -> Served:
        """:attr:`served` as ``IoWrite``/``IoRead`` exits."""
        writes, reads, write_s, read_s = self.served
        return Served(exits={"IoWrite": writes, "IoRead": reads},
                      exit_time={"IoWrite": write_s, "IoRead": read_s},
                      engine={"kvm_runs": self.kvm_runs})

    def exit_pc(self) -> int | None:
        """RIP as KVM reports it after the exit (an offset from CS's base in real
        mode); one KVM_GET_REGS."""
        try:
            return self.kvm.regs.rip
        except AxError:
            return None

    # -- threads -------------------------------------------------------------------------
    def bind(self) -> None:
        install_kick()
        self._thread = threading.get_ident()

    def unbind(self) -> None:
        self._thread = None

    def kick(self) -> None:
        """Make the current or next ``run`` return ``Nothing`` soon (any thread): set
        ``immediate_exit``, then signal the bound thread out of ``KVM_RUN``."""
        self.kvm.immediate_exit = True
        thread = self._thread
        if thread is not None and thread != threading.get_ident():
            kick_thread(thread)

    # -- running ---------------------------------------------------------------------------
    def run(self) -> ExitReason:
        """``KVM_RUN`` and map the exit:

        * ``KVM_EXIT_IO``: OUT → ``IoWrite(port, width, data)`` (data little-endian
          from the ``kvm_run`` data area), IN → ``IoRead(port, width)``; string I/O
          (INS/OUTS, count > 1) comes as one such exit per element, in order, from
          this and the following calls, before KVM resumes the guest;
        * ``KVM_EXIT_MMIO``: ``MmioWrite(addr, width, data)`` or ``MmioRead(addr,
          width, reg=0, reg_width=width, signed_ext=False)`` — KVM's instruction
          emulator knows the destination register and extension and completes it
          itself from the data the read is completed with, so ``reg`` is nominal;
        * ``KVM_EXIT_HLT`` → ``Halt``;
        * ``KVM_EXIT_SHUTDOWN`` → ``SystemDown(reset=True)``: a triple fault, which
          resets a real PC (the create configuration's ``on_triple_fault`` is told
          first);
        * ``KVM_EXIT_SYSTEM_EVENT`` → ``SystemDown(reset=type == RESET)``;
        * ``KVM_EXIT_FAIL_ENTRY`` → ``FailEntry(hardware_entry_failure_reason)``;
        * ``KVM_EXIT_INTERNAL_ERROR`` raises :class:`KvmInternalError`;
        * ``KVM_EXIT_INTR`` (signal or :meth:`kick`) and
          ``KVM_EXIT_IRQ_WINDOW_OPEN`` → ``Nothing``;
        * anything else raises Unsupported naming the exit.
        """
        if self._thread is not None and self._thread != threading.get_ident():
            raise BadState(f"vCPU {self.vcpu_id}: run() from a thread other than the bound one")
        if self.mode is None:
            raise BadState(f"vCPU {self.vcpu_id}: run() before setup()")
        self._in_hypercall = False
        if self._string is not None:
            element = self._next_string_element()
            if element is not None:
                return element
        if self._pending:
            self._deliver_pending()
        # Exits are immutable values and the port exits a guest makes repeat (a UART's
        # registers, a POST port): each distinct one is built and checked once, and
        # then comes back ready-made from the native run.
        if self._ports is None:
            fields = self.kvm.run_fields(self._io_exits)
        else:
            fields = self.kvm.run_fields(self._io_exits, self._ports, PORT_WIDTHS, self._served,
                                         self.kvm_vm.coalesced_ring())
        if type(fields) is not tuple:
            return fields  # type: ignore[return-value]
        reason, a, b, c = fields
        if reason == KVM_EXIT_IO:
            size, direction, count = b & 0xFF, b >> 8 & 0xFF, b >> 16
            exit_reason = self._decode_io(a, size, direction, count, c)
            if count == 1 and len(self._io_exits) < IO_EXIT_CACHE:
                self._io_exits[io_exit_key(a, size, direction, c)] = exit_reason
            return exit_reason
        if reason == KVM_EXIT_INTR:
            self.kvm.immediate_exit = False
            return Nothing()
        if reason == KVM_EXIT_MMIO:
            return self._decode_mmio(a, b & 0xFF, bool(b >> 8), c)
        return self._decode(reason)

    def _decode_io(self, port: int, size: int, direction: int, count: int,
                   value: int) -> ExitReason:
        width = AccessWidth.from_size(size)
        if count != 1:
            # String I/O (INS/OUTS, with REP up to a page of data per exit) is what
            # hardware does one element at a time: hand out one exit per element,
            # the next ones from the following run() calls, before KVM resumes.
            self._string = _StringIo(port, width, direction == KVM_EXIT_IO_OUT, count,
                                     self.kvm.io.data)
            element = self._next_string_element()
            assert element is not None
            return element
        if direction == KVM_EXIT_IO_OUT:
            return IoWrite(port, width, value)
        return IoRead(port, width)

    def _next_string_element(self) -> ExitReason | None:
        """The exit for the next element of the string I/O in progress, or ``None``
        (and the string done) once every element was handed out."""
        s = self._string
        assert s is not None
        s.index += 1
        if s.index >= s.count:
            self._string = None
            return None
        if s.is_out:
            size = s.width.size
            start = s.index * size
            return IoWrite(s.port, s.width,
                           int.from_bytes(s.data[start:start + size], "little"))
        return IoRead(s.port, s.width)

    def _decode_mmio(self, addr: int, size: int, is_write: bool, value: int) -> ExitReason:
        try:
            width = AccessWidth.from_size(size)
        except InvalidInput:
            raise Unsupported(f"vCPU {self.vcpu_id}: MMIO access of {size} bytes at "
                              f"{addr:#x} is not supported") from None
        if is_write:
            return MmioWrite(GuestPhysAddr(addr), width, value & width.mask)
        return MmioRead(GuestPhysAddr(addr), width, 0, width, False)

    def _decode(self, reason: int) -> ExitReason:
        kvm = self.kvm
        if reason == KVM_EXIT_HLT:
            return Halt()
        if reason == KVM_EXIT_XEN:
            xen = kvm.xen
            if xen.type != st.KVM_EXIT_XEN_HCALL:
                raise Unsupported(f"vCPU {self.vcpu_id}: Xen exit type {xen.type} is not "
                                  "supported")
            regs = kvm.regs
            self._in_hypercall = True
            return Hypercall(xen.hcall.input,
                             (regs.rdi, regs.rsi, regs.rdx, regs.rcx, regs.r8, regs.r9))
        if reason == KVM_EXIT_SHUTDOWN:
            if self._on_triple_fault is not None:
                self._on_triple_fault(self)
            return SystemDown(reset=True)
        if reason == KVM_EXIT_SYSTEM_EVENT:
            return SystemDown(reset=kvm.system_event.type == KVM_SYSTEM_EVENT_RESET)
        if reason == KVM_EXIT_FAIL_ENTRY:
            return FailEntry(kvm.fail_entry.hardware_entry_failure_reason)
        if reason == KVM_EXIT_INTERNAL_ERROR:
            err = kvm.internal_error
            raise KvmInternalError(self.vcpu_id, err.suberror, err.data)
        if reason in (KVM_EXIT_INTR, KVM_EXIT_IRQ_WINDOW_OPEN):
            return Nothing()
        if reason == KVM_EXIT_DEBUG:
            d = kvm.debug_exit
            return x86gdb.debug_stop(d.pc, d.dr6, self._debug)
        raise Unsupported(f"vCPU {self.vcpu_id}: KVM exit {exit_reason_name(reason)} "
                          f"({reason}) is not supported")

    def complete_read(self, exit_reason: ReadExit, value: int) -> None:
        """Write the low ``width`` bytes of ``value`` into the exit's ``kvm_run`` data;
        KVM loads them into the destination register at the next ``KVM_RUN``."""
        match exit_reason:
            case IoRead(width=width):
                data = self.kvm.io.data
                if self._string is not None:  # an element of an INS
                    start = self._string.index * width.size
                    data = data[start:start + width.size]
            case MmioRead(width=width):
                data = self.kvm.mmio.data
            case _:
                raise InvalidInput(f"vCPU {self.vcpu_id}: {exit_reason!r} is not an x86 read "
                                   "exit")
        raw = read_register_value(exit_reason, value) & width.mask
        data[:width.size] = raw.to_bytes(width.size, "little")

    # -- registers -------------------------------------------------------------------------
    def set_gpr(self, index: int, value: int) -> None:
        """Set GPR ``index`` in hardware order: RAX RCX RDX RBX RSP RBP RSI RDI R8..R15."""
        if not isinstance(index, int) or not 0 <= index < len(GPR_NAMES):
            raise InvalidInput(f"x86 GPR index must be 0..15, got {index!r}")
        if not isinstance(value, int) or not 0 <= value <= U64:
            raise InvalidInput(f"register value must be an unsigned 64-bit integer, "
                               f"got {value!r}")
        regs = self.kvm.regs
        setattr(regs, GPR_NAMES[index], value)
        self.kvm.set_regs(regs)

    def get_gpr(self, index: int) -> int:
        if not isinstance(index, int) or not 0 <= index < len(GPR_NAMES):
            raise InvalidInput(f"x86 GPR index must be 0..15, got {index!r}")
        return getattr(self.kvm.regs, GPR_NAMES[index])

    def set_return_value(self, value: int) -> None:
        """RAX; after a ``Hypercall`` exit, the result KVM writes to RAX as it completes
        the hypercall instruction at the next ``run``."""
        if self._in_hypercall:
            if not isinstance(value, int) or not 0 <= value <= U64:
                raise InvalidInput(f"register value must be an unsigned 64-bit integer, "
                                   f"got {value!r}")
            self.kvm.xen.hcall.result = value
            return
        self.set_gpr(0, value)

    # -- interrupts ------------------------------------------------------------------------
    def inject_interrupt(self, vector: int) -> None:
        """Queue ``vector`` for the next entry, or pulse irqchip input ``vector`` when the
        VM has the in-kernel irqchip (see the module doc). Thread-safe."""
        if not isinstance(vector, int) or not 0 <= vector <= 255:
            raise InvalidInput(f"x86 interrupt vector must be 0..255, got {vector!r}")
        if self.irqchip:
            self.kvm_vm.irq_line(vector, 1)
            self.kvm_vm.irq_line(vector, 0)
            return
        with self._pending_lock:
            self._pending.append(vector)

    @property
    def pending_interrupts(self) -> tuple[int, ...]:
        with self._pending_lock:
            return tuple(self._pending)

    def _deliver_pending(self) -> None:
        with self._pending_lock:
            if self._pending and self.kvm.ready_for_interrupt_injection:
                vector = self._pending.pop(0)
                kvm_ioctl(self.kvm.fd, KVM_INTERRUPT, ctypes.c_uint32(vector),
                          detail=f"vector {vector:#x}")
            self.kvm.request_interrupt_window = bool(self._pending)

    # -- teardown --------------------------------------------------------------------------
    # -- the debugger (pyaxvisor.vcpu.debug; on the bound thread, between runs) -----------
    def debug_registers(self) -> list[int]:
        return x86gdb.read_registers(self.kvm)

    def debug_set_register(self, number: int, value: int) -> None:
        x86gdb.write_register(self.kvm, number, value)

    def debug_translate(self, va: int, read_u64: Callable[[int], int]) -> int:
        gpa = self.kvm.translate(va)
        if gpa is None:
            raise NotFound(f"virtual address {va:#x} has no translation")
        return gpa

    def set_guest_debug(self, config: GuestDebug) -> None:
        """KVM_SET_GUEST_DEBUG (see :mod:`pyaxvisor.arch.x86_64.gdb`)."""
        control, dr = x86gdb.debug_control(config)
        self.kvm.set_guest_debug(control, dr)
        self._debug = config

    def close(self) -> None:
        """Close the KVM vCPU (the :class:`KvmVm` also closes it when it is closed)."""
        if self.kvm in self.kvm_vm.vcpus:
            self.kvm_vm.vcpus.remove(self.kvm)
        self.kvm.close()


__all__ = [
    "GPR_NAMES",
    "KvmInternalError",
    "X86VCpu",
    "X86VCpuCreateConfig",
    "X86VCpuSetupConfig",
]

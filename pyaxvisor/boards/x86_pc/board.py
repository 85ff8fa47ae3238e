"""pyaxvisor's x86_64 PC on Linux KVM (x86_vcpu): the layout of :mod:`.layout`.

What runs where:

* **In the kernel** (KVM): the CPUs, the EPT/NPT, the interrupt controllers
  (``KVM_CREATE_IRQCHIP``: the two 8259 PICs, the IOAPIC, a local APIC per vCPU —
  INIT/SIPI between vCPUs, the APIC timer and HLT are handled there) and the
  i8254 PIT (``KVM_CREATE_PIT2``).
* **Here**, on the VM's port bus: COM1 (a 16550A on IRQ 4, driven into the
  in-kernel irqchip with ``KVM_IRQ_LINE``), fw_cfg, the i8042 (its reset line),
  the ACPI PM registers (:class:`~pyaxvisor.devices.acpi_pm.AcpiPm`: PM1a event
  and control blocks, the latter the power-off register, and the PM timer; the
  SCI on IRQ 9), and ``isa-debug-exit`` devices when configured (and, for the
  bundled test kernel, at 0xF4). Every port device is served inside the vCPUs'
  native ``KVM_RUN`` (no round trip through the VM loop); unclaimed ports read as
  all ones and writes to them are dropped and counted.
* **Here**, on the VM's MMIO bus: a row of 8 virtio-mmio transports at 0xFEB00000
  (QEMU ``microvm``'s addresses; every access exits), all present, the configured
  virtio devices plugged in in QEMU's order (:class:`~pyaxvisor.boards.virtio_slots.VirtioBoard`),
  each raising its own line of the in-kernel I/O APIC with ``KVM_IRQ_LINE``, level
  triggered (GSIs 5, 6, 7, 8, 13, 10, 11, 12 for slots 0..7: see :mod:`.layout`).
  An OS finds the ones in use in the DSDT (``LNRO0005`` devices) and, a Linux
  bzImage, on its command line too (``virtio_mmio.device=512@0xfeb00e00:12``...):
  :mod:`.boot`.
* **Firmware tables** (:mod:`.boot`): the MP table and the ACPI tables
  (:mod:`.acpi`), for kernels that boot with ACPI or without.

COM1's transmit register (port 0x3F8) is *coalesced* (``KVM_CAP_COALESCED_PIO``)
while the UART can raise no interrupt (IER = 0, which the guest sets with an exit):
KVM queues the guest's writes there instead of exiting for each, and the vCPUs hand
them to the UART, in order, after their next exit (any exit: a read of the line
status, the next port access). A ``rep outsb`` to COM1 so costs one exit per ring of
about 170 bytes instead of one per byte. A write's only effects then are the byte
on the console (and, in loopback, in the receiver, which a read only sees after the
drain), so the guest cannot tell; a host timer kicks vCPU 0 every
:data:`COALESCED_FLUSH_NS` while writes wait, so output never waits longer. With an
interrupt enabled in IER, every write exits again (THRE interrupts come at once).

Every vCPU is created, set up and bound before any runs (``starts_all_cpus``):
an INIT/SIPI sent to a vCPU that does not exist yet is lost. vCPU 0 starts at the
boot image's entry; the others wait in KVM's wait-for-SIPI state, inside their
own ``KVM_RUN``, until the guest starts them.

Power button: the ACPI fixed-feature one (PM1_STS.PWRBTN_STS and the SCI), pressed by
:meth:`press_power_button` (QMP ``system_powerdown``).

Ending: a guest power-off (ACPI S5 through PM1a_CNT at port 0x604: SLP_EN with
the ``\\_S5`` sleep type 0, ``KVM_SYSTEM_EVENT_SHUTDOWN``), a reset (the i8042's
reset line or the FADT's reset register, which is the same, a triple fault,
``KVM_SYSTEM_EVENT_RESET``) or a debug-exit write end the VM. A triple fault is a
"reset" whose :attr:`~pyaxvisor.vm.result.VmResult.detail` says so ("triple fault on
vCPU 0 (protected mode, CS:RIP 0x10:0x100005)"). Every reset ends the run, as QEMU
does with ``-no-reboot`` (without it QEMU would reboot the guest). MMIO where no
device lives stops the VM with an error naming the access.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pyaxvisor.arch.x86_64.pcpu import X86PerCpu
from pyaxvisor.arch.x86_64.vcpu import X86VCpu, X86VCpuCreateConfig, X86VCpuSetupConfig
from pyaxvisor.boards.virtio_slots import VIRTIO_DEVICE_TYPES, VirtioBoard, VirtioSlots
from pyaxvisor.boards.x86_pc import boot
from pyaxvisor.boards.x86_pc import layout as L
from pyaxvisor.devices.acpi_pm import AcpiPm
from pyaxvisor.devices.bus import Device, UnhandledMmio
from pyaxvisor.devices.debug_exit import DebugExit
from pyaxvisor.devices.fw_cfg import FwCfg
from pyaxvisor.devices.i8042 import I8042
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.uart16550 import IER, LCR, Uart16550
from pyaxvisor.engine.kvm.ioctls import KVM_CAP_MAX_VCPUS, KVM_CAP_NR_VCPUS, KVM_CAP_XEN_HVM
from pyaxvisor.engine.kvm.structs import KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL
from pyaxvisor.engine.kvm.system import KvmSystem, KvmVm
from pyaxvisor.errors import AxError, InvalidInput, Unsupported
from pyaxvisor.vcpu import MmioRead, MmioWrite, VCpu
from pyaxvisor.vcpu.arch_vcpu import InCpuWindow
from pyaxvisor.vcpu.width import AccessWidth
from pyaxvisor.vm.board import BootState
from pyaxvisor.vm.config import MemoryRegion
from pyaxvisor.vm.power import CpuStart
from pyaxvisor.vm.result import VmResult

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["BOARD", "COALESCED_FLUSH_NS", "Com1", "KvmIrqSink", "PcBoard"]

#: The devices a configuration may ask for by name, on this board's ports.
DEBUG_EXIT = "isa-debug-exit"
#: How often a host timer looks for coalesced COM1 writes no exit has drained yet.
COALESCED_FLUSH_NS = 20_000_000
LCR_DLAB = 0x80
IER_ALL = 0x0F


class KvmIrqSink:
    """Device IRQ lines into KVM's in-kernel PIC/IOAPIC (``KVM_IRQ_LINE``; the level
    is the wire's: the guest programs edge or level triggering)."""

    def __init__(self, kvm_vm: KvmVm) -> None:
        self._vm = kvm_vm

    def set_irq_level(self, irq: int, level: bool) -> None:
        self._vm.irq_line(irq, level)


class Com1(Device):
    """COM1 on the port bus: the 16550A, with its transmit register coalesced while
    IER enables no interrupt (see the module doc). ``coalesce(on)`` turns KVM's
    queueing of port 0x3F8 on or off; it is called after each write to IER or LCR
    that changes whether the UART can interrupt (IER is read with DLAB clear; while
    DLAB is set IER is hidden and cannot change)."""

    name = "com1"

    def __init__(self, uart: Uart16550, coalesce: Callable[[bool], None] | None) -> None:
        self.uart = uart
        self._coalesce = coalesce
        self._lock = threading.Lock()
        self.coalesced: bool | None = None

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        return self.uart.read(offset, width, vcpu_id)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self.uart.write(offset, width, value, vcpu_id)
        if offset in (IER, LCR):
            self.update()

    def update(self) -> None:
        """Coalesce the transmit register exactly while IER enables no interrupt."""
        if self._coalesce is None:
            return
        with self._lock:
            if self.uart.read(LCR, AccessWidth.Byte, 0) & LCR_DLAB:
                return
            quiet = not self.uart.read(IER, AccessWidth.Byte, 0) & IER_ALL
            if quiet != self.coalesced:
                self._coalesce(quiet)
                self.coalesced = quiet


class PcBoard(VirtioBoard):
    arch = "x86_64"
    machines = ("pc", "q35", "microvm", "isapc")
    cpu_models = ("host", "max", "qemu64", "kvm64")
    machine_hint = ("machine {machine!r} is not supported for x86_64: pc, q35, microvm, "
                    "isapc (all run pyaxvisor's PC board)")
    cpu_hint = ("CPU model {cpu!r} is not supported for x86_64: the vCPUs get the host CPU's "
                "features KVM supports (-cpu host)")
    default_memory = 256 << 20
    max_cpus = 254  # the MP table's APIC IDs leave room for the IOAPIC
    page_table = "x86_64"
    vcpu_class = X86VCpu
    percpu_class = X86PerCpu
    starts_all_cpus = True
    refused_options: ClassVar[dict[str, str]] = {
        "bios": "-bios is not supported on x86_64: give the kernel with -kernel (bzImage, "
                "Multiboot, ELF or raw)",
        "trap_mmio": "--trap-mmio is for aarch64: on x86_64 KVM's in-kernel irqchip serves "
                     "the APICs",
    }
    device_types: ClassVar[tuple[str, ...]] = (DEBUG_EXIT, *VIRTIO_DEVICE_TYPES)
    virtio_slots: ClassVar[VirtioSlots] = VirtioSlots(L.VIRTIO_BASE, L.VIRTIO_STRIDE,
                                                      L.VIRTIO_COUNT, L.VIRTIO_IRQS[0],
                                                      L.VIRTIO_IRQS)
    device_windows: ClassVar[dict[str, tuple[int, int]]] = {
        "IO APIC": (L.IOAPIC_ADDR, 0x1000), "Local APIC": (L.LAPIC_ADDR, 0x1000)}
    #: Coalesce COM1's transmit register when KVM can (see the module doc); False
    #: makes every write to it an exit (to measure the difference).
    coalesce_com1: ClassVar[bool] = True

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.kvm: KvmSystem | None = None
        self.kvm_vm: KvmVm | None = None
        self.hypercalls_intercepted = False
        self.uart: Uart16550 | None = None
        self.com1: Com1 | None = None
        self.fw_cfg: FwCfg | None = None
        self.i8042: I8042 | None = None
        self.acpi_pm: AcpiPm | None = None
        self._vm: Vm | None = None
        self._last_drained = -1

    @classmethod
    def default_memory_regions(cls, size: int) -> tuple[MemoryRegion, ...]:
        return tuple(MemoryRegion(gpa, length) for gpa, length in L.ram_regions(size))

    def check(self) -> None:
        super().check()
        config = self.config
        ram = config.ram_size
        key = config.prefix("[kernel] memory_regions")
        if ram < L.MIN_RAM:
            raise InvalidInput(f"{key}RAM size {ram:#x} is less than the {L.MIN_RAM >> 20} MiB "
                               "an x86 VM needs")
        if ram > L.MAX_RAM:
            raise InvalidInput(f"{key}RAM size {ram >> 30} GiB is more than this VM supports "
                               f"({L.MAX_RAM >> 30} GiB)")
        if config.ram_regions != self.default_memory_regions(ram):
            layout = ", ".join(f"[{r.gpa:#x}, {r.end:#x})"
                               for r in self.default_memory_regions(ram))
            raise InvalidInput(f"{key}the PC board's {ram >> 20} MiB of RAM are {layout} (the "
                               "boot protocols' e820 map); other RAM layouts are not supported")
        if config.cpu_ids != tuple(range(config.cpu_num)):
            raise InvalidInput(f"{config.prefix('[base] phys_cpu_ids')}the PC board's APIC IDs "
                               f"are the vCPU numbers 0..{config.cpu_num - 1}, not "
                               f"{list(config.cpu_ids)}")
        if config.bios is not None:
            raise InvalidInput(f"{config.prefix('[kernel] bios_path')}firmware is not "
                               "supported on x86_64: give the kernel itself (bzImage, "
                               "Multiboot, ELF or raw)")
        if config.dtb is not None:
            raise InvalidInput(f"{config.prefix('[kernel] dtb_path')}x86_64 guests get no "
                               "device tree (the boot protocols pass e820 and the MP table)")
        if config.initrd is not None and config.initrd.load_addr is not None:
            raise InvalidInput(f"{config.prefix('[kernel] ramdisk_load_addr')}x86 kernels get "
                               "their initrd where their boot protocol puts it; leave it out")
        for i, dev in enumerate(config.devices):
            if dev.name != DEBUG_EXIT:
                raise InvalidInput(f"{config.prefix(f'[devices] emu_devices[{i}]')}device "
                                   f"{dev.name!r} is not supported on the PC board: only "
                                   f"{DEBUG_EXIT}")

    # -- building ------------------------------------------------------------------------
    def create(self, vm: Vm) -> None:
        config = self.config
        self.kvm = KvmSystem()
        limit = self.kvm.check_extension(KVM_CAP_MAX_VCPUS) or \
            self.kvm.check_extension(KVM_CAP_NR_VCPUS) or 4
        if config.cpu_num > limit:
            raise InvalidInput(f"{config.cpu_num} vCPUs: this host's KVM allows at most {limit}")
        self.kvm_vm = self.kvm.create_vm()
        self.kvm_vm.create_irqchip()
        self.kvm_vm.create_pit2()
        # Hypercalls reach the VM where KVM can hand them over (Xen interception);
        # elsewhere KVM answers them itself (see pyaxvisor.arch.x86_64.vcpu).
        caps = self.kvm.check_extension(KVM_CAP_XEN_HVM)
        self.hypercalls_intercepted = bool(caps & KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL)
        if self.hypercalls_intercepted:
            self.kvm_vm.intercept_hypercalls()
        self._vm = vm
        ports = vm.devices.ports
        sink = KvmIrqSink(self.kvm_vm)
        self.uart = Uart16550(tx=vm.console_write, irq=IrqLine(sink, L.COM1_IRQ))
        kvm_vm = self.kvm_vm
        coalesce = ((lambda on: kvm_vm.coalesce_pio(L.COM1_PORT, 1, on))
                    if self.coalesce_com1 and kvm_vm.coalesced_pio_supported() else None)
        self.com1 = Com1(self.uart, coalesce)
        ports.attach(L.COM1_PORT, 8, self.com1)
        self.fw_cfg = FwCfg(nb_cpus=config.cpu_num, ram_size=config.ram_size,
                            cmdline=config.cmdline)
        ports.attach(L.FW_CFG_PORT, 2, self.fw_cfg)
        self.i8042 = I8042(on_reset=lambda: vm.finish(VmResult("reset")))
        ports.attach(L.I8042_DATA_PORT, 1, self.i8042.data_port)
        ports.attach(L.I8042_CMD_PORT, 1, self.i8042.command_port)
        self.acpi_pm = AcpiPm(lambda: vm.finish(VmResult("poweroff")),
                              sci=IrqLine(sink, L.ACPI_SCI_IRQ), timers=_VmTimers(vm))
        ports.attach(L.ACPI_PM1A_EVT_PORT, AcpiPm.EVENT_PORTS, self.acpi_pm.event)
        ports.attach(L.ACPI_PM1A_CNT_PORT, AcpiPm.CONTROL_PORTS, self.acpi_pm.control)
        ports.attach(L.ACPI_PM_TMR_PORT, AcpiPm.TIMER_PORTS, self.acpi_pm.timer)
        self._debug_exits(vm, [(d.base, d.length) for d in config.devices
                               if d.name == DEBUG_EXIT])
        self.virtio.create(vm, lambda irq: IrqLine(sink, irq))

    def _debug_exits(self, vm: Vm, windows: list[tuple[int, int]]) -> None:
        for i, (iobase, iosize) in enumerate(windows):
            vm.devices.ports.attach(iobase, iosize, DebugExit(
                lambda status: vm.finish(VmResult("debug-exit", exit_status=status)), iosize,
                name=f"{DEBUG_EXIT}{i}"))

    def load(self, vm: Vm) -> BootState:
        assert vm.space is not None
        if self.config.kernel is None and not any(d.name == DEBUG_EXIT
                                                  for d in self.config.devices):
            self._debug_exits(vm, [boot.BUNDLED_DEBUG_EXIT])  # the bundled guest reports there
        return boot.load(vm.space, self.config,
                         self.virtio_slots.plugged(len(self.config.virtio)))

    def boot_state(self, entry: int, *, mode: str = "protected",
                   gprs: dict[int, int] | None = None, **start: Any) -> BootState:
        """``vm.run(entry, mode=..., gprs=...)``: start in ``"real"``, ``"protected"`` or
        ``"long"`` mode with the GPRs ``gprs`` (hardware numbering)."""
        super().boot_state(entry, **start)
        return BootState(entry, dict(gprs or {}), X86VCpuSetupConfig(
            mode=mode, stack_pointer=boot.BOOT_STACK,  # type: ignore[arg-type]
            page_table_gpa=L.PAGE_TABLE_ADDR, gdt_gpa=L.GDT_ADDR))

    def vcpu_create_config(self, vm: Vm, cpu: int, start: BootState | None
                           ) -> X86VCpuCreateConfig:
        assert self.kvm_vm is not None and vm.space is not None

        def triple_fault(vcpu: X86VCpu) -> None:
            vm.finish(VmResult("reset", detail=f"triple fault on vCPU {vcpu.vcpu_id} "
                                               f"({self._where(vcpu)})"))

        return X86VCpuCreateConfig(kvm_vm=self.kvm_vm, space=vm.space, irqchip=True,
                                   hypercalls_intercepted=self.hypercalls_intercepted,
                                   on_triple_fault=triple_fault)

    def start(self, vm: Vm) -> None:
        """Coalesce COM1's transmit register from the start (IER is 0 at power-on) and
        keep an eye on the writes KVM queues."""
        assert self.com1 is not None
        self.com1.update()
        if self.com1.coalesced is not None:
            vm.timers.schedule(vm.timers.timers.now() + COALESCED_FLUSH_NS, self._flush)

    def _flush(self, now: int) -> None:
        """Kick vCPU 0 out of ``KVM_RUN`` when coalesced writes have waited in the ring
        a whole period with no vCPU draining it (the guest made no exit), so they reach
        COM1 within two :data:`COALESCED_FLUSH_NS`; again and again while the VM runs."""
        vm, kvm_vm = self._vm, self.kvm_vm
        if vm is None or kvm_vm is None or vm.done:
            return
        drained = kvm_vm.coalesced_drained
        if kvm_vm.coalesced_pending and drained == self._last_drained:
            vcpu = vm.vcpu(0)
            if vcpu is not None:
                with contextlib.suppress(AxError):  # closing at this very moment
                    vcpu.arch.kick()
        self._last_drained = drained
        vm.timers.schedule(now + COALESCED_FLUSH_NS, self._flush)

    def secondary_start(self, vm: Vm, cpu: int) -> BootState:
        # An AP: KVM keeps it waiting for INIT/SIPI, which set its registers.
        return BootState(0, {}, X86VCpuSetupConfig())

    def in_cpu_windows(self, vm: Vm) -> list[InCpuWindow]:
        # Port exits to the devices are served inside the vCPU's run (no round trip
        # through the VM loop); unclaimed ports and string I/O still come to the VM.
        return vm.devices.windows("port")

    # -- exits ---------------------------------------------------------------------------
    def on_unclaimed_mmio(self, vm: Vm, cpu: int, vcpu: VCpu[Any],
                          exit_reason: MmioRead | MmioWrite, miss: UnhandledMmio) -> int:
        what = "read" if isinstance(exit_reason, MmioRead) else "write"
        raise Unsupported(f"vCPU {cpu}: {exit_reason.width.size}-byte MMIO {what} at "
                          f"{int(exit_reason.addr):#x}: no RAM and no device there")

    def cpu_up_status(self, outcome: CpuStart) -> int:
        return 0  # x86 CPUs start with INIT/SIPI inside KVM: no CpuUp exit reaches here

    @staticmethod
    def _where(arch: X86VCpu, *, full: bool = False) -> str:
        """``"<mode> mode, CS:RIP <cs>:<rip>"`` (with RFLAGS and RSP when ``full``)."""
        try:
            regs, sregs = arch.kvm.regs, arch.kvm.sregs
        except AxError as exc:
            return f"registers unavailable: {exc}"
        mode = ("long" if sregs.efer & (1 << 10) else
                "protected" if sregs.cr0 & 1 else "real")
        where = f"{mode} mode, CS:RIP {sregs.cs.selector:#x}:{regs.rip:#x}"
        return f"{where}, RFLAGS {regs.rflags:#x}, RSP {regs.rsp:#x}" if full else where

    def describe_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], state: str) -> str:
        return f"vCPU {cpu}: {state}, {self._where(vcpu.arch, full=True)}"

    def press_power_button(self, vm: Vm) -> bool:
        """QMP ``system_powerdown``: the ACPI fixed-feature power button (PWRBTN_STS,
        the SCI), as QEMU's PC; the guest's OSPM decides what to do."""
        assert self.acpi_pm is not None
        self.acpi_pm.press_power_button()
        return True

    @property
    def console(self) -> Uart16550:
        assert self.uart is not None
        return self.uart

    def close(self) -> None:
        """Release the virtio devices' images and TAP interfaces, then the KVM VM."""
        super().close()
        if self.kvm_vm is not None:
            self.kvm_vm.close()
        if self.kvm is not None:
            self.kvm.close()


class _VmTimers:
    """The VM's timer thread, started only when a device first schedules something."""

    def __init__(self, vm: Vm) -> None:
        self._vm = vm

    def schedule(self, deadline_ns: int, callback: Callable[[int], None]) -> Any:
        return self._vm.timers.schedule(deadline_ns, callback)

    def cancel(self, event: Any) -> bool:
        return self._vm.timers.cancel(event)


BOARD = PcBoard

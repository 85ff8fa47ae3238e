"""pyaxvisor's x86_64 PC on Linux KVM (x86_vcpu): the layout of :mod:`.layout`.

What runs where:

* **In the kernel** (KVM): the CPUs, the EPT/NPT, the interrupt controllers
  (``KVM_CREATE_IRQCHIP``: the two 8259 PICs, the IOAPIC, a local APIC per vCPU —
  INIT/SIPI between vCPUs, the APIC timer and HLT are handled there) and the
  i8254 PIT (``KVM_CREATE_PIT2``).
* **Here**, on the VM's port bus: COM1 (a 16550A on IRQ 4, driven into the
  in-kernel irqchip with ``KVM_IRQ_LINE``), fw_cfg, the i8042 (its reset line),
  the power-off port, and ``isa-debug-exit`` devices when configured (and, for the
  bundled test kernel, at 0xF4). Every port device is served inside the vCPUs'
  native ``KVM_RUN`` (no round trip through the VM loop); unclaimed ports read as
  all ones and writes to them are dropped and counted.

Every vCPU is created, set up and bound before any runs (``starts_all_cpus``):
an INIT/SIPI sent to a vCPU that does not exist yet is lost. vCPU 0 starts at the
boot image's entry; the others wait in KVM's wait-for-SIPI state, inside their
own ``KVM_RUN``, until the guest starts them.

Ending: a guest power-off (port 0x604, ``KVM_SYSTEM_EVENT_SHUTDOWN``), a reset
(i8042, triple fault, ``KVM_SYSTEM_EVENT_RESET``) or a debug-exit write end the VM.
MMIO where no device lives stops it with an error naming the access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pyaxvisor.arch.x86_64.pcpu import X86PerCpu
from pyaxvisor.arch.x86_64.vcpu import X86VCpu, X86VCpuCreateConfig, X86VCpuSetupConfig
from pyaxvisor.boards.x86_pc import boot
from pyaxvisor.boards.x86_pc import layout as L
from pyaxvisor.devices.bus import UnhandledMmio
from pyaxvisor.devices.debug_exit import DebugExit
from pyaxvisor.devices.fw_cfg import FwCfg
from pyaxvisor.devices.i8042 import I8042
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.power import PowerPort
from pyaxvisor.devices.uart16550 import Uart16550
from pyaxvisor.engine.kvm.ioctls import KVM_CAP_MAX_VCPUS, KVM_CAP_NR_VCPUS, KVM_CAP_XEN_HVM
from pyaxvisor.engine.kvm.structs import KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL
from pyaxvisor.engine.kvm.system import KvmSystem, KvmVm
from pyaxvisor.errors import AxError, InvalidInput, Unsupported
from pyaxvisor.vcpu import MmioRead, MmioWrite, VCpu
from pyaxvisor.vcpu.arch_vcpu import InCpuWindow
from pyaxvisor.vm.board import Board, BootState
from pyaxvisor.vm.config import MemoryRegion
from pyaxvisor.vm.power import CpuStart
from pyaxvisor.vm.result import VmResult

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["BOARD", "KvmIrqSink", "PcBoard"]

#: The devices a configuration may ask for by name, on this board's ports.
DEBUG_EXIT = "isa-debug-exit"


class KvmIrqSink:
    """Device IRQ lines into KVM's in-kernel PIC/IOAPIC (``KVM_IRQ_LINE``; the level
    is the wire's: the guest programs edge or level triggering)."""

    def __init__(self, kvm_vm: KvmVm) -> None:
        self._vm = kvm_vm

    def set_irq_level(self, irq: int, level: bool) -> None:
        self._vm.irq_line(irq, level)


class PcBoard(Board):
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
    device_windows: ClassVar[dict[str, tuple[int, int]]] = {
        "IO APIC": (L.IOAPIC_ADDR, 0x1000), "Local APIC": (L.LAPIC_ADDR, 0x1000)}

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.kvm: KvmSystem | None = None
        self.kvm_vm: KvmVm | None = None
        self.hypercalls_intercepted = False
        self.uart: Uart16550 | None = None
        self.fw_cfg: FwCfg | None = None
        self.i8042: I8042 | None = None
        self.power: PowerPort | None = None

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
        ports = vm.devices.ports
        self.uart = Uart16550(tx=vm.console_write,
                              irq=IrqLine(KvmIrqSink(self.kvm_vm), L.COM1_IRQ))
        ports.attach(L.COM1_PORT, 8, self.uart)
        self.fw_cfg = FwCfg(nb_cpus=config.cpu_num, ram_size=config.ram_size,
                            cmdline=config.cmdline)
        ports.attach(L.FW_CFG_PORT, 2, self.fw_cfg)
        self.i8042 = I8042(on_reset=lambda: vm.finish(VmResult("reset")))
        ports.attach(L.I8042_DATA_PORT, 1, self.i8042.data_port)
        ports.attach(L.I8042_CMD_PORT, 1, self.i8042.command_port)
        self.power = PowerPort(on_power_off=lambda: vm.finish(VmResult("poweroff")))
        ports.attach(L.POWER_OFF_PORT, 2, self.power)
        self._debug_exits(vm, [(d.base, d.length) for d in config.devices
                               if d.name == DEBUG_EXIT])

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
        return boot.load(vm.space, self.config)

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
        return X86VCpuCreateConfig(kvm_vm=self.kvm_vm, space=vm.space, irqchip=True,
                                   hypercalls_intercepted=self.hypercalls_intercepted)

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

    def describe_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], state: str) -> str:
        try:
            regs, sregs = vcpu.arch.kvm.regs, vcpu.arch.kvm.sregs
        except AxError as exc:
            return f"vCPU {cpu}: {state}, registers unavailable: {exc}"
        mode = ("long" if sregs.efer & (1 << 10) else
                "protected" if sregs.cr0 & 1 else "real")
        return (f"vCPU {cpu}: {state}, {mode} mode, CS:RIP {sregs.cs.selector:#x}:"
                f"{regs.rip:#x}, RFLAGS {regs.rflags:#x}, RSP {regs.rsp:#x}")

    @property
    def console(self) -> Uart16550:
        assert self.uart is not None
        return self.uart

    def close(self) -> None:
        if self.kvm_vm is not None:
            self.kvm_vm.close()
        if self.kvm is not None:
            self.kvm.close()


BOARD = PcBoard

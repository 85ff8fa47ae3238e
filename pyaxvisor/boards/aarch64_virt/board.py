"""QEMU's ``virt`` board for AArch64 guests on the software EL2 (arm_vcpu).

The machine (:mod:`.layout`): two flash banks, a GICv2, a PL011 and RAM, the
generic timers on PPIs 27/30 and the PMU's overflow interrupt on PPI 23
(:mod:`.timer`), PSCI 1.1 over HVC. vCPU 0 starts at boot; PSCI CPU_ON starts the
others (``CpuUp``), CPU_OFF stops one (``CpuDown``) until a CPU_ON names it again.
The board answers PSCI's AFFINITY_INFO from the VM's CPU power states and turns a
CPU_ON outcome into PSCI's return code.

The architecture, as QEMU's ``virt`` board and KVM follow it, where a guest does what
nothing here implements:

* HVC/SMC: the vCPUs are the guest's SMCCC conduit: a call that is neither PSCI/SMCCC
  nor one of pyaxvisor's hypercalls (SMCCC owner 6, vendor-specific hypervisor
  service, functions 0x0000..0xFEFF: ``0x8600_0000..0x8600_FEFF`` and
  ``0xC600_0000..0xC600_FEFF``, see :mod:`pyaxvisor.arch.aarch64.psci`) returns
  NOT_SUPPORTED (-1) in X0, counted as ``SmcccNotSupported`` in the VM's exits. A call
  in pyaxvisor's range is a ``Hypercall`` exit, which this board does not serve: the
  VM stops with ``UnknownHypercall`` naming it.
* An instruction fetch or data access where there is no RAM and no device: the guest
  takes a synchronous external abort at its EL1 vectors, counted as
  ``ExternalAbort``; each such address is reported once (the first
  :data:`~pyaxvisor.boards.soft_virt.WILD_ACCESS_REPORTS` of a VM) as a warning of the
  ``pyaxvisor`` logger, which Python prints on standard error when the program
  configured no logging.

virtio: 32 virtio-mmio transports at ``0x0a00_0000`` (SPIs 16..47), the configured
devices in QEMU's slots (see :mod:`pyaxvisor.boards.virtio_slots`); each access exits.

Power key: a PL061 GPIO at ``0x0903_0000`` (SPI 7) whose pin 3 is the ``gpio-keys``
power key, as in QEMU; :meth:`press_power_button` (QMP ``system_powerdown``) presses it.

Devices: the GIC and the UART are served inside the CPU (their windows are
mapped by the stage-2 table onto the engine's in-CPU MMIO window, as KVM serves
its in-kernel devices) unless the configuration asks every access to exit
(``--trap-mmio``). Flash bank 1 is a CFI flash run as a ROM device: mapped
read-only while in read-array mode, trapping otherwise. The vCPUs of a VM run guest
code at the same time, each on its thread (see
:mod:`pyaxvisor.boards.soft_virt`).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from pyaxvisor.arch.aarch64.pcpu import Aarch64PerCpu
from pyaxvisor.arch.aarch64.psci import AffinityState, PsciRet, encode_return
from pyaxvisor.arch.aarch64.vcpu import (
    Aarch64VCpu,
    Aarch64VCpuCreateConfig,
    Aarch64VCpuSetupConfig,
    ExternalAbort,
)
from pyaxvisor.boards.aarch64_virt import boot
from pyaxvisor.boards.aarch64_virt import layout as L
from pyaxvisor.boards.aarch64_virt.timer import GenericTimers
from pyaxvisor.boards.soft_virt import SoftVirtBoard, WildAccessReports
from pyaxvisor.boards.virtio_slots import VirtioSlots
from pyaxvisor.devices.gicv2 import CPU_IF_SIZE, DIST_SIZE, GicV2
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.pflash import CfiFlash
from pyaxvisor.devices.pl011 import MMIO_SIZE as UART_SIZE
from pyaxvisor.devices.pl011 import Pl011
from pyaxvisor.devices.pl061 import MMIO_SIZE as GPIO_SIZE
from pyaxvisor.devices.pl061 import Pl061
from pyaxvisor.engine.tcg.aarch64 import BOOT_NS, IN_CPU_MMIO_BASE
from pyaxvisor.engine.tcg.native import TIMER_VIRT
from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal.timer import TimerEvent, monotonic_ns
from pyaxvisor.mm.addr import GuestPhysAddr, HostPhysAddr
from pyaxvisor.mm.flags import MappingFlags
from pyaxvisor.vcpu import VCpu
from pyaxvisor.vm.board import BootState
from pyaxvisor.vm.power import CpuPower, CpuStart

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["BOARD", "VirtBoard"]

_PSCI_STATUS = {CpuStart.STARTED: PsciRet.SUCCESS, CpuStart.ALREADY_ON: PsciRet.ALREADY_ON,
                CpuStart.PENDING: PsciRet.ON_PENDING,
                CpuStart.INVALID: PsciRet.INVALID_PARAMETERS}
_AFFINITY = {CpuPower.ON: AffinityState.ON, CpuPower.OFF: AffinityState.OFF,
             CpuPower.PENDING: AffinityState.ON_PENDING}
#: MPIDR_EL1 affinity fields Aff3 and Aff2.Aff1.Aff0.
MPIDR_AFFINITY = 0xFF_00FF_FFFF
MPIDR_RES1 = 0x8000_0000


class VirtBoard(SoftVirtBoard):
    arch = "aarch64"
    machines = ("virt",)
    cpu_models = ("cortex-a72", "max", "host")
    machine_hint = "machine {machine!r} is not supported: only 'virt'"
    cpu_hint = "CPU model {cpu!r} is not supported: only cortex-a72"
    default_memory = 512 << 20
    max_cpus = 8  # a GICv2 targets 8 CPUs
    page_table = "aarch64"
    vcpu_class = Aarch64VCpu
    percpu_class = Aarch64PerCpu
    starts_all_cpus = False
    cpu_id_mask = MPIDR_AFFINITY
    page_table_args: ClassVar[dict[str, int]] = {"ipa_bits": L.IPA_BITS}
    ram_base, min_ram, ram_align = L.RAM_BASE, L.MIN_RAM, L.RAM_ALIGN
    max_ram, address_bits = L.MAX_RAM, L.IPA_BITS
    #: Command-line options this board does not take, and why.
    virtio_slots: ClassVar[VirtioSlots] = VirtioSlots(L.VIRTIO_BASE, L.VIRTIO_STRIDE,
                                                      L.VIRTIO_COUNT, 32 + L.VIRTIO_SPI)
    #: Device windows a configuration may name (passthrough devices stand for these).
    device_windows: ClassVar[dict[str, tuple[int, int]]] = {
        "intc": (L.GIC_DIST_BASE, 0x2_0000), "pl011": (L.UART_BASE, UART_SIZE),
        "pl061": (L.GPIO_BASE, GPIO_SIZE),
        "flash": (L.FLASH_BASE, 2 * L.FLASH_SIZE)}

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.gic: GicV2 | None = None
        self.uart: Pl011 | None = None
        self.gpio: Pl061 | None = None
        self._power_key_lock = threading.Lock()
        self._power_key_release: TimerEvent | None = None
        self.flash1: CfiFlash | None = None
        self.cntvoff = 0
        self._timers: GenericTimers | None = None
        self._wild = WildAccessReports("a synchronous external abort", "ExternalAbort")

    def check(self) -> None:
        super().check()
        config = self.config
        if config.bios is not None and config.kernel is not None:
            what = "bios_path and kernel_path" if config.source else "-bios and -kernel"
            raise InvalidInput(f"{config.prefix('[kernel] bios_path')}{what} together are not "
                               "supported: the firmware loads the kernel itself")
        for cpu_id in config.cpu_ids:
            if not 0 <= cpu_id <= 0xFF_FFFF:
                raise InvalidInput(f"{config.prefix('[base] phys_cpu_ids')}MPIDR affinity "
                                   f"{cpu_id:#x} is not Aff2.Aff1.Aff0 (0..0xffffff)")

    def host_memory(self) -> int:
        return self.config.ram_size + 2 * L.FLASH_SIZE + (64 << 20)

    # -- building ------------------------------------------------------------------------
    def create(self, vm: Vm) -> None:
        self.vm = vm
        space = vm.space
        assert space is not None
        # Flash bank 0 holds firmware and is executed in place: guest RAM, read-write
        # (QEMU runs it as a ROM device; a CFI probe of bank 0 reads back RAM and finds
        # no flash there). Bank 1 is a CFI flash (the firmware's environment) run as a
        # ROM device: mapped read-only while in read-array mode, trapping otherwise.
        space.map_ram(GuestPhysAddr(L.FLASH_BASE), L.FLASH_SIZE, MappingFlags.READ
                      | MappingFlags.WRITE | MappingFlags.EXECUTE)
        bank1 = space.map_ram(GuestPhysAddr(L.FLASH_BASE + L.FLASH_SIZE), L.FLASH_SIZE,
                              MappingFlags.READ)
        bus = vm.devices.mmio
        self.gic = GicV2(num_cpus=self.config.cpu_num, on_cpu_irq=self._cpu_irq)
        self.uart = Pl011(tx=vm.console_write, irq=IrqLine(self.gic, L.UART_INTID))
        self.gpio = Pl061(irq=IrqLine(self.gic, L.GPIO_INTID))
        bus.attach(L.GPIO_BASE, GPIO_SIZE, self.gpio)
        fast = ((L.GIC_DIST_BASE, DIST_SIZE, self.gic.distributor),
                (L.GIC_CPU_BASE, CPU_IF_SIZE, self.gic.cpu_interface),
                (L.UART_BASE, UART_SIZE, self.uart))
        for base, size, device in fast:
            if self.attach_fast(vm, base, size, device):
                # the stage-2 table routes the window to the engine's in-CPU MMIO window
                space.map_mmio_window(GuestPhysAddr(base), HostPhysAddr(IN_CPU_MMIO_BASE + base),
                                      size)
        self.flash1 = CfiFlash(L.FLASH_SIZE, name="pflash1", storage=space.region_view(bank1),
                               on_array_mode=self._flash_array_mode)
        bus.attach(L.FLASH_BASE + L.FLASH_SIZE, L.FLASH_SIZE, self.flash1)
        self._timers = GenericTimers(vm, self.gic)
        gic = self.gic
        self.virtio.create(vm, lambda intid: IrqLine(gic, intid))
        # the transports sit 0x200 apart: the row's pages are served in-CPU as one window
        base, size = self.virtio_slots.window
        if self.offer_in_cpu(base, size, self.virtio.row()):
            space.map_mmio_window(GuestPhysAddr(base), HostPhysAddr(IN_CPU_MMIO_BASE + base),
                                  size)

    def load(self, vm: Vm) -> BootState:
        assert vm.space is not None
        return boot.load(vm.space, self.config)

    def boot_state(self, entry: int, *, dtb_addr: int = 0, **start: Any) -> BootState:
        """``vm.run(entry, dtb_addr=...)``: x0 = the device tree's address."""
        super().boot_state(entry, **start)
        return BootState(entry, {0: dtb_addr})

    def start(self, vm: Vm) -> None:
        # The virtual counter starts at 0 when the VM starts (CNTVOFF = CNTPCT now).
        self.cntvoff = (monotonic_ns() - BOOT_NS) * L.TIMER_FREQ // 1_000_000_000

    def vcpu_create_config(self, vm: Vm, cpu: int, start: BootState | None
                           ) -> Aarch64VCpuCreateConfig:
        assert vm.hal is not None
        return Aarch64VCpuCreateConfig(
            mpidr_el1=MPIDR_RES1 | self.config.cpu_ids[cpu],
            dtb_addr=start.gprs.get(0, 0) if start is not None else 0, memory=vm.hal.memory,
            hal=vm.hal, psci=self, cntvoff=self.cntvoff, exec_lock=self.exec_lock,
            xsync=self.xsync, parallel=self.parallel)

    def prepare_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], start: BootState) -> None:
        assert self._timers is not None
        arch = vcpu.arch
        arch.attach_interrupt_controller(self)
        arch.on_timer_write = self._timers.written
        arch.on_pmu_change = self._timers.pmu_changed
        arch.unclaimed = self.no_device_at
        arch.on_external_abort = self._report_abort
        start.setup = dataclasses.replace(start.setup or Aarch64VCpuSetupConfig(),
                                          smccc_conduit=True)

    def restart_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], start: BootState) -> None:
        vcpu.arch.restart(start.entry, start.gprs.get(0, 0))

    # -- PSCI and SMCCC --------------------------------------------------------------------
    def cpu_up_status(self, outcome: CpuStart) -> int:
        return encode_return(_PSCI_STATUS[outcome])

    def affinity_info(self, target_mpidr: int, lowest_level: int) -> int:
        """PSCI AFFINITY_INFO (the vCPUs' ``PsciPlatform``)."""
        vm = self.vm
        cpu = None if vm is None or lowest_level != 0 else vm.cpu_index(target_mpidr)
        if cpu is None or vm is None:
            return PsciRet.INVALID_PARAMETERS
        return _AFFINITY[vm.cpu_power(cpu)]

    # -- what the guest does where nothing is ------------------------------------------------
    def _report_abort(self, abort: ExternalAbort) -> None:
        """A vCPU made its guest take an external abort: say so, once per address."""
        self._wild.report(abort.vcpu_id, abort.ipa, abort.pc, fetch=abort.fetch,
                          write=abort.write)

    # -- interrupts --------------------------------------------------------------------------
    def _cpu_irq(self, cpu: int, asserted: bool) -> None:
        v = self.vm.vcpu(cpu) if self.vm is not None else None
        if v is not None:
            v.arch.set_irq_line(asserted)
            if asserted:
                v.wake()

    def inject(self, cpu_id: int, intid: int) -> None:
        """The vCPUs' ``inject_interrupt``: raise ``intid`` for ``cpu_id`` at the GIC."""
        assert self.gic is not None
        if 16 <= intid < 32:
            self.gic.set_ppi_level(cpu_id, intid, True)
        elif intid >= 32:
            self.gic.set_irq_level(intid, True)
        else:
            raise InvalidInput(f"SGIs are sent by the guest, not injected (INTID {intid})")

    def _flash_array_mode(self, array: bool) -> None:
        vm = self.vm
        assert vm is not None and vm.space is not None
        vm.space.set_region_mapped(GuestPhysAddr(L.FLASH_BASE + L.FLASH_SIZE), array)
        for cpu in range(self.config.cpu_num):
            v = vm.vcpu(cpu)
            if v is not None:
                v.arch.request_tlb_flush()

    # -- reports -------------------------------------------------------------------------------
    def describe_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], state: str) -> str:
        """Where the vCPU is now (its live PC and exception level, not the last exit's),
        its interrupt line and timers."""
        a = vcpu.arch
        assert self.gic is not None
        vctl, vcval, pctl, _pcval = a.timer_state()
        deadline = a.timer_deadline(TIMER_VIRT)
        due = "" if deadline is None else \
            f" (due in {(deadline - monotonic_ns()) / 1e6:.1f} ms)"
        mode = a.current_pstate() & 0xF
        level = f"EL{mode >> 2}{'h' if mode & 1 and mode >> 2 else 't'}"
        return (f"vCPU {cpu}: {state}, PC {a.current_pc():#x} ({level}), IRQ line "
                f"{'high' if a.irq_line else 'low'} (GIC output "
                f"{'high' if self.gic.irq_asserted(cpu) else 'low'}), virtual timer "
                f"CTL {vctl:#x} CVAL {vcval:#x}{due}, physical timer CTL {pctl:#x}")

    def press_power_button(self, vm: Vm) -> bool:
        """QMP ``system_powerdown``: the power key (PL061 pin 3) goes high for
        :data:`~.layout.POWER_KEY_PRESS_NS` (QEMU's ``gpio-key``); the guest's
        ``gpio-keys`` driver reports KEY_POWER."""
        gpio = self.gpio
        assert gpio is not None
        with self._power_key_lock:
            if self._power_key_release is not None:
                vm.timers.cancel(self._power_key_release)
            gpio.set_input(L.POWER_KEY_PIN, True)
            self._power_key_release = vm.timers.schedule(
                monotonic_ns() + L.POWER_KEY_PRESS_NS,
                lambda: gpio.set_input(L.POWER_KEY_PIN, False))
        return True

    @property
    def console(self) -> Pl011:
        assert self.uart is not None
        return self.uart


BOARD = VirtBoard

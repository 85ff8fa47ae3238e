"""QEMU's ``virt`` board for RISC-V 64 guests on the software engine (riscv_vcpu).

The machine (:mod:`.layout`): a PLIC, an ns16550a UART on PLIC source 10 and RAM,
with pyaxvisor as the M-mode SBI firmware (:mod:`.platform`): the guest runs in
S-mode (the software CPU has no H extension), its ``ecall``s are SBI calls, and the
board serves what they need from the machine. Hart 0 starts at boot with a0 = its
hart id and a1 = the device tree; SBI HSM ``hart_start`` starts the others
(``CpuUp``), ``hart_stop`` stops one (``CpuDown``) until started again. The board
answers ``hart_get_status`` from the VM's CPU power states and turns a start's
outcome into SBI's error codes; ``send_ipi`` (a ``SendIPI`` exit) raises the
targets' supervisor software interrupt; the PLIC's S-mode contexts drive the harts'
supervisor external interrupt; SBI ``set_timer`` the supervisor timer interrupt.

A load, store or instruction fetch where there is no RAM and no device: the guest
takes the access fault at its ``stvec`` (scause 1, 5 or 7, stval = the address, sepc
= the faulting instruction or, for a fetch, the address fetched), as on QEMU's
``virt`` board, counted as ``AccessFault``; each such address is reported once (the
first :data:`~pyaxvisor.boards.soft_virt.WILD_ACCESS_REPORTS` of a VM) as a warning
of the ``pyaxvisor`` logger, which Python prints on standard error when the program
configured no logging.

virtio: 8 virtio-mmio transports at ``0x1000_1000`` (PLIC sources 1..8), the
configured devices in QEMU's slots (see :mod:`pyaxvisor.boards.virtio_slots`); each
access exits.

Devices: the PLIC and the UART are served inside the CPU unless the configuration
asks every access to exit (``--trap-mmio``). The harts of a VM run guest code at
the same time, each on its thread (see :mod:`pyaxvisor.boards.soft_virt`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pyaxvisor.arch.riscv64.pcpu import RISCVPerCpu
from pyaxvisor.arch.riscv64.traps import AccessFault
from pyaxvisor.arch.riscv64.vcpu import RISCVVCpu, RISCVVCpuCreateConfig, RISCVVCpuSetupConfig
from pyaxvisor.boards.riscv64_virt import boot
from pyaxvisor.boards.riscv64_virt import layout as L
from pyaxvisor.boards.riscv64_virt.platform import SbiBoard, harts_in_mask
from pyaxvisor.boards.soft_virt import SoftVirtBoard, WildAccessReports
from pyaxvisor.boards.virtio_slots import VirtioSlots
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.plic import Plic
from pyaxvisor.devices.uart16550 import Uart16550
from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal.timer import monotonic_ns
from pyaxvisor.vcpu import ExitReason, SendIPI, VCpu
from pyaxvisor.vm.board import BootState
from pyaxvisor.vm.power import CpuStart

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["BOARD", "RiscvVirtBoard"]

#: SBI error codes (SBI v2.0, table 1) a hart start answers with.
SBI_SUCCESS, SBI_ERR_INVALID_PARAM, SBI_ERR_ALREADY_AVAILABLE = 0, -3, -6
_START_STATUS = {CpuStart.STARTED: SBI_SUCCESS, CpuStart.ALREADY_ON: SBI_ERR_ALREADY_AVAILABLE,
                 CpuStart.PENDING: SBI_ERR_ALREADY_AVAILABLE,
                 CpuStart.INVALID: SBI_ERR_INVALID_PARAM}
_U64 = (1 << 64) - 1
#: Registers a0 and a1 (x10, x11): the hart id and the device tree / opaque value.
A0, A1 = 10, 11


class RiscvVirtBoard(SoftVirtBoard):
    arch = "riscv64"
    machines = ("virt",)
    cpu_models = ("rv64", "max")
    machine_hint = "machine {machine!r} is not supported for riscv64: only 'virt'"
    cpu_hint = "CPU model {cpu!r} is not supported for riscv64: only rv64"
    default_memory = 512 << 20
    max_cpus = 8
    page_table = "riscv64"
    ram_base, min_ram, ram_align = L.RAM_BASE, L.MIN_RAM, L.RAM_ALIGN
    max_ram, address_bits = L.MAX_RAM, L.GPA_BITS
    vcpu_class = RISCVVCpu
    percpu_class = RISCVPerCpu
    starts_all_cpus = False
    virtio_slots: ClassVar[VirtioSlots] = VirtioSlots(L.VIRTIO_BASE, L.VIRTIO_STRIDE,
                                                      L.VIRTIO_COUNT, L.VIRTIO_IRQ)
    device_windows: ClassVar[dict[str, tuple[int, int]]] = {
        "plic": (L.PLIC_BASE, L.plic_size(8)), "uart": (L.UART_BASE, L.UART_SIZE)}

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.plic: Plic | None = None
        self.uart: Uart16550 | None = None
        self.sbi: SbiBoard | None = None
        self.time_base_ns = monotonic_ns()
        self._wild = WildAccessReports("an access fault", "AccessFault")

    def check(self) -> None:
        super().check()
        config = self.config
        bios = config.bios
        if bios is not None and str(bios.path) not in boot.FIRMWARE_NAMES:
            raise InvalidInput(f"{config.prefix('[kernel] bios_path')}-bios {bios.path}: "
                               "pyaxvisor is the SBI firmware of riscv64 guests (they run in "
                               "S-mode: the software CPU has no H extension), so an M-mode "
                               "firmware cannot run; give an S-mode payload (Linux Image, "
                               "U-Boot S-mode) with -kernel, or -bios default")

    # -- building ------------------------------------------------------------------------
    def create(self, vm: Vm) -> None:
        self.vm = vm
        harts = self.config.cpu_num
        self.plic = Plic(num_sources=L.PLIC_SOURCES, num_contexts=2 * harts,
                         priorities=L.PLIC_PRIORITIES, on_context_irq=self._context_irq)
        self.uart = Uart16550(tx=vm.console_write, irq=IrqLine(self.plic, L.UART_IRQ),
                              out2_gates_irq=False, mirrored=True)
        # The windows take whole 4 KiB pages (the software CPU serves pages): the UART's
        # 0x100 bytes of registers get the rest of its page, where nothing else lives.
        for base, size, device in ((L.PLIC_BASE, L.plic_size(harts), self.plic),
                                   (L.UART_BASE, L.UART_PAGE, self.uart)):
            self.attach_fast(vm, base, size, device)
        plic = self.plic
        self.virtio.create(vm, lambda source: IrqLine(plic, source))
        self.sbi = SbiBoard(vm, self.uart)

    def load(self, vm: Vm) -> BootState:
        assert vm.space is not None
        start = boot.load(vm.space, self.config)
        start.setup = RISCVVCpuSetupConfig()
        return start

    def boot_state(self, entry: int, *, dtb_addr: int = 0, **start: Any) -> BootState:
        """``vm.run(entry, dtb_addr=...)``: a1 = the device tree's address."""
        super().boot_state(entry, **start)
        return BootState(entry, {A1: dtb_addr}, RISCVVCpuSetupConfig())

    def cpu_up_state(self, cpu: int, entry: int, arg: int) -> BootState:
        """SBI HSM ``hart_start``: a0 = the hart id, a1 = the caller's opaque value."""
        return BootState(entry, {A1: arg}, RISCVVCpuSetupConfig())

    def vcpu_create_config(self, vm: Vm, cpu: int, start: BootState | None
                           ) -> RISCVVCpuCreateConfig:
        assert vm.space is not None
        return RISCVVCpuCreateConfig(
            hart_id=self.config.cpu_ids[cpu],
            dtb_addr=start.gprs.get(A1, 0) if start is not None else 0, space=vm.space,
            hal=vm.hal, platform=self.sbi, exec_lock=self.exec_lock, xsync=self.xsync,
            parallel=self.parallel,
            timebase_freq=L.TIMEBASE_FREQ, time_base_ns=self.time_base_ns)

    def prepare_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], start: BootState) -> None:
        if start.setup is None:
            start.setup = RISCVVCpuSetupConfig()
        arch = vcpu.arch
        arch.unclaimed = self.no_device_at
        arch.on_access_fault = self._report_access_fault

    def restart_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], start: BootState) -> None:
        vcpu.arch.restart(start.entry, start.gprs.get(A1, 0))

    # -- SBI ----------------------------------------------------------------------------------
    def cpu_up_status(self, outcome: CpuStart) -> int:
        return _START_STATUS[outcome] & _U64

    def on_exit(self, vm: Vm, cpu: int, vcpu: VCpu[Any], exit_reason: ExitReason) -> bool:
        """SBI ``send_ipi``: raise the supervisor software interrupt of every hart the
        mask names; an invalid mask base gets SBI_ERR_INVALID_PARAM."""
        if not isinstance(exit_reason, SendIPI):
            return False
        ids = self.config.cpu_ids
        mask, base = exit_reason.target_cpu_aux, exit_reason.target_cpu
        if exit_reason.send_to_all:
            base = _U64
        elif any(base + bit not in ids for bit in range(64) if mask >> bit & 1):
            vcpu.set_return_value(SBI_ERR_INVALID_PARAM & _U64)
            return True
        for hart in harts_in_mask(ids, mask, base):
            target = vm.vcpu(ids.index(hart))
            if target is not None:
                target.arch.set_software_line(True)
                target.wake()
        vcpu.set_return_value(SBI_SUCCESS)
        return True

    # -- what the guest does where nothing is ------------------------------------------------
    def _report_access_fault(self, fault: AccessFault) -> None:
        """A vCPU made its guest take an access fault: say so, once per address."""
        self._wild.report(fault.vcpu_id, fault.gpa, fault.pc, fetch=fault.fetch,
                          write=fault.write)

    # -- interrupts --------------------------------------------------------------------------
    def _context_irq(self, context: int, level: bool) -> None:
        """A PLIC context's output: the S-mode contexts (odd) are the harts' SEIP."""
        if context % 2 == 0 or self.vm is None:
            return
        v = self.vm.vcpu(context // 2)
        if v is not None:
            v.arch.set_external_line(level)
            if level:
                v.wake()

    # -- reports -------------------------------------------------------------------------------
    def describe_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], state: str) -> str:
        a = vcpu.arch
        csr = {name: a.csr(name) for name in ("sstatus", "sie", "sip", "satp", "stvec")}
        deadline = a.timer_deadline()
        due = "" if deadline is None else \
            f", timer due in {(deadline - monotonic_ns()) / 1e6:.1f} ms"
        return (f"vCPU {cpu}: {state}, hart {self.config.cpu_ids[cpu]}, PC {a.pc:#x}, "
                + ", ".join(f"{k} {v:#x}" for k, v in csr.items()) + due)

    @property
    def console(self) -> Uart16550:
        assert self.uart is not None
        return self.uart


BOARD = RiscvVirtBoard

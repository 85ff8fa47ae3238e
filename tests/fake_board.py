"""A third architecture for the generic VM, written as a user would add one: a
:class:`~pyaxvisor.vm.board.Board` and nothing else (the vCPU is the recording mock
of ``tests/mock_arch.py``, which returns the exits a test scripts for it).

The "fake64" machine has RAM at 0x8000_0000, a 16550 on MMIO at 0x1000_0000 with
its registers one byte apart (QEMU's RISC-V ``virt`` layout), a port device and a
system-register device. vCPU 0 starts at boot, the others with ``CpuUp``; the
board's firmware interface returns 0 for a started CPU and -(outcome index + 1)
for the rest, and serves hypercall 0x77 by returning 42.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from mock_arch import MockArchVCpu, MockCreateConfig, MockPerCpu, MockSetupConfig

from pyaxvisor.devices.bus import Device
from pyaxvisor.devices.irq import IrqLine, NullIrqSink
from pyaxvisor.devices.uart16550 import Uart16550
from pyaxvisor.vcpu import ExitReason, Hypercall, VCpu
from pyaxvisor.vcpu.width import AccessWidth
from pyaxvisor.vm.board import Board, BootState
from pyaxvisor.vm.config import MemoryRegion
from pyaxvisor.vm.power import CpuStart

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

RAM_BASE = 0x8000_0000
UART_BASE = 0x1000_0000
PORT = 0x60
SYSREG = 0x3A
STATUS = {CpuStart.STARTED: 0, CpuStart.ALREADY_ON: -1, CpuStart.PENDING: -2,
          CpuStart.INVALID: -3}


class Recorder(Device):
    name = "recorder"

    def __init__(self) -> None:
        self.log: list[tuple] = []

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self.log.append(("r", offset, width.size, vcpu_id))
        return 0x1234_5678_9ABC_DEF0

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self.log.append(("w", offset, width.size, value, vcpu_id))


class FakeBoard(Board):
    arch = "fake64"
    machines = ("fakeboard",)
    cpu_models = ("fake",)
    machine_hint = "machine {machine!r} is not supported: only 'fakeboard'"
    cpu_hint = "CPU model {cpu!r} is not supported: only fake"
    default_memory = 32 << 20
    max_cpus = 4
    page_table = "riscv64"
    vcpu_class = MockArchVCpu
    percpu_class = MockPerCpu
    starts_all_cpus = False

    #: Exits each vCPU returns, in order, before it returns only Nothing.
    scripts: ClassVar[dict[int, list[ExitReason]]] = {}

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.uart: Uart16550 | None = None
        self.ports = Recorder()
        self.sysreg = Recorder()
        self.other_exits: list[ExitReason] = []
        self.restarts: list[tuple[int, int]] = []

    @classmethod
    def default_memory_regions(cls, size: int) -> tuple[MemoryRegion, ...]:
        return (MemoryRegion(RAM_BASE, size),)

    def create(self, vm: Vm) -> None:
        self.uart = Uart16550(tx=vm.console_write, irq=IrqLine(NullIrqSink(), 10))
        vm.devices.mmio.attach(UART_BASE, 8, self.uart)
        vm.devices.ports.attach(PORT, 4, self.ports)
        vm.devices.attach_sysreg(SYSREG, self.sysreg)

    def load(self, vm: Vm) -> BootState:
        vm.write_guest(RAM_BASE, b"\x13\x00\x00\x00")  # what a loader would put there
        return BootState(RAM_BASE, {0: 0xDEAD}, MockSetupConfig())

    def vcpu_create_config(self, vm: Vm, cpu: int, start: BootState | None) -> MockCreateConfig:
        return MockCreateConfig()

    def prepare_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], start: BootState) -> None:
        vcpu.arch.exits.extend(self.scripts.get(cpu, []))
        if start.setup is None:
            start.setup = MockSetupConfig()

    def restart_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], start: BootState) -> None:
        self.restarts.append((cpu, start.entry))
        vcpu.set_gpr(0, start.gprs[0])

    def cpu_up_status(self, outcome: CpuStart) -> int:
        return STATUS[outcome] & ((1 << 64) - 1)

    def on_hypercall(self, vm: Vm, cpu: int, vcpu: VCpu[Any], exit_reason: Hypercall) -> bool:
        if exit_reason.nr == 0x77:
            vcpu.set_return_value(42)
            return True
        return False

    def on_exit(self, vm: Vm, cpu: int, vcpu: VCpu[Any], exit_reason: ExitReason) -> bool:
        self.other_exits.append(exit_reason)
        return False

    def describe_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], state: str) -> str:
        return f"vCPU {cpu}: {state}, {len(vcpu.arch.calls)} calls"

    @property
    def console(self) -> Uart16550:
        assert self.uart is not None
        return self.uart


BOARD = FakeBoard

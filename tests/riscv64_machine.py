"""A bare RISC-V 64 test machine: guest RAM at 0x8000_0000, one vCPU bound to the
calling thread, no devices, the lone-hart SBI platform unless a test gives one.
Tests drive ``vcpu.run()`` themselves; guests keep results at RESULTS (see
``guests/riscv64/sbi.inc``)."""

from __future__ import annotations

import threading

from guest_build import build, symbols

from pyaxvisor.arch.riscv64.pcpu import RISCVPerCpu
from pyaxvisor.arch.riscv64.sbi import SbiPlatform
from pyaxvisor.arch.riscv64.vcpu import (
    RISCVVCpu,
    RISCVVCpuCreateConfig,
    RISCVVCpuSetupConfig,
)
from pyaxvisor.hal import HostHal
from pyaxvisor.mm import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table
from pyaxvisor.vcpu import ExitReason, PerCpu, VCpu, VCpuState

RAM = 0x8000_0000
RAM_SIZE = 16 << 20
RESULTS = 0x8001_0000
BUF = 0x8002_0000
DEV = 0x1000_0000
DTB = 0x8800_0000
#: A run that takes longer is kicked (it then returns Nothing and the test fails
#: instead of hanging).
WATCHDOG_S = 20.0


class Machine:
    def __init__(self, guest: str, *, hart_id: int = 0, platform: SbiPlatform | None = None,
                 gstage_mode: str = "sv39x4", enable_percpu: bool = True,
                 time_base_ns: int | None = None) -> None:
        self.hal = HostHal(64 << 20)
        self.space = AddrSpace(self.hal, nested_page_table(self.hal, "riscv64",
                                                           riscv_mode=gstage_mode))
        self.space.map_ram(GuestPhysAddr(RAM), RAM_SIZE)
        self.image = build("riscv64", guest, RAM)
        self.symbols = symbols("riscv64", guest, RAM)
        self.space.write(GuestPhysAddr(RAM), self.image)
        self.percpu = PerCpu(RISCVPerCpu)
        if enable_percpu:
            self.percpu.init(hart_id)
            self.percpu.hardware_enable()
        extra = {} if time_base_ns is None else {"time_base_ns": time_base_ns}
        self.vcpu = VCpu(1, hart_id, RISCVVCpu, RISCVVCpuCreateConfig(
            hart_id=hart_id, dtb_addr=DTB, space=self.space, hal=self.hal, platform=platform,
            **extra))
        self.vcpu.setup(GuestPhysAddr(RAM), self.space.root_paddr,
                        RISCVVCpuSetupConfig(gstage_mode=gstage_mode))  # type: ignore[arg-type]
        if enable_percpu:
            self.vcpu.bind()

    @property
    def arch(self) -> RISCVVCpu:
        return self.vcpu.arch

    def run(self) -> ExitReason:
        """``vcpu.run()``, kicked after :data:`WATCHDOG_S` seconds."""
        watchdog = threading.Timer(WATCHDOG_S, self.vcpu.arch.kick)
        watchdog.start()
        try:
            return self.vcpu.run()
        finally:
            watchdog.cancel()

    def result(self, offset: int) -> int:
        return self.space.read_u64(GuestPhysAddr(RESULTS + offset))

    def close(self) -> None:
        if self.vcpu.state is VCpuState.Ready:
            self.vcpu.unbind()
        self.vcpu.arch.close()
        self.percpu.close()
        self.space.destroy()
        self.hal.close()


class FakePlatform:
    """An SBI platform that records what the hart asks of it: console output, remote
    fences, timer writes; ``harts`` maps hart IDs to HSM states, ``console_input`` is
    what console reads return."""

    def __init__(self, harts: dict[int, int] | None = None, console_input: bytes = b"") -> None:
        self.harts = {0: 0, 1: 1} if harts is None else harts  # 0 STARTED, 1 STOPPED
        self.out = bytearray()
        self.input = list(console_input)
        self.fences: list[tuple[int, int]] = []
        self.timer_writes: list[int] = []

    def console_write(self, data: bytes) -> None:
        self.out += data

    def console_read(self) -> int | None:
        return self.input.pop(0) if self.input else None

    def hart_status(self, hart_id: int) -> int | None:
        return self.harts.get(hart_id)

    def timer_written(self, hart_id: int) -> None:
        self.timer_writes.append(hart_id)

    def remote_fence(self, hart_mask: int, hart_mask_base: int) -> None:
        self.fences.append((hart_mask, hart_mask_base))

"""A bare AArch64 test machine: guest RAM at 0x4000_0000, one vCPU bound to the
calling thread, no devices. Tests drive ``vcpu.run()`` themselves."""

from __future__ import annotations

from guest_build import build, symbols

from pyaxvisor.arch.aarch64.pcpu import Aarch64PerCpu
from pyaxvisor.arch.aarch64.vcpu import (
    Aarch64VCpu,
    Aarch64VCpuCreateConfig,
    Aarch64VCpuSetupConfig,
)
from pyaxvisor.hal import HostHal
from pyaxvisor.mm import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table
from pyaxvisor.vcpu import PerCpu, VCpu

RAM = 0x4000_0000
RESULTS = 0x4001_0000
DTB = 0x4800_0000


class Machine:
    def __init__(self, guest: str, *, extra_hcr: int = 0, vcpu_id: int = 0,
                 enable_percpu: bool = True) -> None:
        self.hal = HostHal(64 << 20)
        self.space = AddrSpace(self.hal, nested_page_table(self.hal, "aarch64"))
        self.space.map_ram(GuestPhysAddr(RAM), 16 << 20)
        self.image = build("aarch64", guest, RAM)
        self.symbols = symbols("aarch64", guest, RAM)
        self.space.write(GuestPhysAddr(RAM), self.image)
        self.percpu = PerCpu(Aarch64PerCpu)
        if enable_percpu:
            self.percpu.init(vcpu_id)
            self.percpu.hardware_enable()
        self.vcpu = VCpu(1, vcpu_id, Aarch64VCpu, Aarch64VCpuCreateConfig(
            mpidr_el1=0x8000_0000 | vcpu_id, dtb_addr=DTB, memory=self.hal.memory,
            hal=self.hal))
        self.vcpu.setup(GuestPhysAddr(RAM), self.space.root_paddr,
                        Aarch64VCpuSetupConfig(extra_hcr=extra_hcr))
        if enable_percpu:
            self.vcpu.bind()

    def result(self, offset: int) -> int:
        return self.space.read_u64(GuestPhysAddr(RESULTS + offset))

    def close(self) -> None:
        from pyaxvisor.vcpu import VCpuState

        if self.vcpu.state is VCpuState.Ready:
            self.vcpu.unbind()
        self.percpu.close()
        self.space.destroy()
        self.hal.close()

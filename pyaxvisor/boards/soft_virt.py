"""What QEMU-``virt``-style boards on the software CPU share (AArch64 and RISC-V 64).

Their RAM may sit anywhere their devices leave free (one region at the board's RAM
base by default); guest code of a VM executes on one vCPU thread at a time (an
:class:`~pyaxvisor.engine.tcg.exec_lock.ExecLock`: the software CPU's exclusive
accesses are not atomic between host threads); and their fast devices (interrupt
controller, UART) are served inside the CPU unless the configuration asks every
access to exit (``--trap-mmio``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pyaxvisor.devices.bus import Device
from pyaxvisor.engine.tcg.exec_lock import ExecLock
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.arch_vcpu import InCpuWindow
from pyaxvisor.vm.board import Board
from pyaxvisor.vm.config import MemoryRegion

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["SoftVirtBoard"]


class SoftVirtBoard(Board):
    #: The default RAM base, and what the board accepts: at least ``min_ram`` bytes in
    #: ``ram_align`` multiples, at most ``max_ram``, below ``address_bits`` of guest
    #: physical address.
    ram_base: ClassVar[int]
    min_ram: ClassVar[int]
    ram_align: ClassVar[int]
    max_ram: ClassVar[int]
    address_bits: ClassVar[int]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.exec_lock = ExecLock()
        self.vm: Vm | None = None
        self._in_cpu: list[InCpuWindow] = []

    @classmethod
    def default_memory_regions(cls, size: int) -> tuple[MemoryRegion, ...]:
        return (MemoryRegion(cls.ram_base, size),)

    def check(self) -> None:
        """The base rules, then the RAM's: its size, and no region over a device
        window or past the guest physical address size; raises :class:`InvalidInput`
        naming the memory regions key."""
        super().check()
        config = self.config
        ram = config.ram_size
        key = config.prefix("[kernel] memory_regions")
        if ram < self.min_ram or ram % self.ram_align:
            raise InvalidInput(f"{key}RAM size {ram:#x} must be a multiple of "
                               f"{self.ram_align >> 20} MiB, >= {self.min_ram >> 20} MiB")
        if ram > self.max_ram:
            raise InvalidInput(f"{key}RAM size {ram >> 20} MiB is more than this VM supports "
                               f"({self.max_ram >> 30} GiB)")
        for region in config.ram_regions:
            for name, (base, size) in self.device_windows.items():
                if region.gpa < base + size and base < region.end:
                    raise InvalidInput(f"{key}RAM [{region.gpa:#x}, {region.end:#x}) overlaps "
                                       f"the {name} window at {base:#x} of the "
                                       f"{self.machines[0]} board")
            if region.end > 1 << self.address_bits:
                raise InvalidInput(f"{key}RAM ending at {region.end:#x} is beyond the "
                                   f"{self.address_bits}-bit guest physical addresses of this "
                                   "board")

    def attach_fast(self, vm: Vm, base: int, size: int, device: Device) -> bool:
        """Put ``device`` on the MMIO bus at ``[base, base + size)`` and, unless every
        access must exit, offer it to the vCPUs to serve inside the CPU; returns whether
        it was offered."""
        vm.devices.mmio.attach(base, size, device)
        if not self.config.in_cpu_devices:
            return False
        self._in_cpu.append(InCpuWindow("mmio", base, size, device.read, device.write))
        return True

    def in_cpu_windows(self, vm: Vm) -> list[InCpuWindow]:
        return list(self._in_cpu)

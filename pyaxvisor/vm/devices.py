"""The devices of one VM (axdevice ``AxVmDevices``): an MMIO bus, a port bus and
system-register devices.

The VM serves ``MmioRead``/``MmioWrite`` exits through :attr:`VmDevices.mmio`,
``IoRead``/``IoWrite`` through :attr:`VmDevices.ports` and
``SysRegRead``/``SysRegWrite`` through the device registered for that register
address (:meth:`VmDevices.attach_sysreg`; it is called with offset 0 and a
64-bit width). A board fills them when it builds its machine and chooses which
windows its vCPUs may serve without an exit (:meth:`VmDevices.windows`).
"""

from __future__ import annotations

import threading

from pyaxvisor.devices.bus import Bus, Device, mmio_bus, port_bus
from pyaxvisor.errors import AlreadyExists
from pyaxvisor.vcpu.arch_vcpu import InCpuWindow
from pyaxvisor.vcpu.width import AccessWidth, SysRegAddr

__all__ = ["VmDevices"]


class VmDevices:
    def __init__(self) -> None:
        self.mmio: Bus = mmio_bus()
        self.ports: Bus = port_bus()
        self.sysregs: dict[int, Device] = {}
        self._lock = threading.Lock()

    def attach_sysreg(self, addr: int, device: Device) -> None:
        addr = int(SysRegAddr(addr))
        with self._lock:
            if addr in self.sysregs:
                raise AlreadyExists(f"{device.name}: system register {addr:#x} already belongs "
                                    f"to {self.sysregs[addr].name}")
            self.sysregs[addr] = device

    def read_sysreg(self, addr: int, vcpu_id: int) -> int | None:
        """The register's value, or ``None`` when no device has it."""
        device = self.sysregs.get(int(addr))
        return None if device is None else device.read(0, AccessWidth.Qword, vcpu_id)

    def write_sysreg(self, addr: int, value: int, vcpu_id: int) -> bool:
        """Write the register; ``False`` when no device has it."""
        device = self.sysregs.get(int(addr))
        if device is None:
            return False
        device.write(0, AccessWidth.Qword, value, vcpu_id)
        return True

    def windows(self, space: str) -> list[InCpuWindow]:
        """Every device window on the ``"mmio"`` or ``"port"`` bus as it is now, in the
        form a vCPU serves inside its run (``ArchVCpu.serve_in_cpu``)."""
        bus = self.mmio if space == "mmio" else self.ports
        return [InCpuWindow(space, base, size, dev.read, dev.write,  # type: ignore[arg-type]
                            dev.mirror)
                for base, size, dev in bus.devices]

"""What QEMU-``virt``-style boards on the software CPU share (AArch64 and RISC-V 64).

Their RAM may sit anywhere their devices leave free (one region at the board's RAM
base by default); they have a row of virtio-mmio transports where QEMU's board has
them, all always present, the configured virtio devices plugged in in QEMU's order
(:class:`pyaxvisor.boards.virtio_slots.VirtioBoard`: exit devices on the MMIO bus,
whose disk images :meth:`SoftVirtBoard.close` releases); and their fast devices (interrupt
controller, UART) are served inside the CPU unless the configuration asks every
access to exit (``--trap-mmio``).

The vCPUs of a VM with several run guest code at the same time, each on its own
thread, as QEMU's multi-threaded TCG does: the patched libunicorn translates the
guest's exclusive accesses and atomics into host atomics on the shared guest RAM
(:func:`~pyaxvisor.engine.tcg.native.set_tcg_parallel`), and the CPUs' broadcast
TLB and cache maintenance reaches the others through a
:class:`~pyaxvisor.engine.tcg.xsync.SyncGroup`. On the stock library, whose
exclusives are not atomic between threads, guest code of a VM executes on one vCPU
thread at a time instead (an :class:`~pyaxvisor.engine.tcg.exec_lock.ExecLock`).

A load, store or instruction fetch where there is no RAM and no device is the
guest's to handle, as on QEMU's ``virt`` boards: the vCPUs make it take the
architecture's fault (asking :meth:`SoftVirtBoard.no_device_at`) and count it in the
VM's exits; the board says so on standard error once per address
(:class:`WildAccessReports`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, ClassVar

from pyaxvisor.boards.virtio_slots import VirtioBoard
from pyaxvisor.devices.bus import Device
from pyaxvisor.engine.tcg.common import unicorn_build
from pyaxvisor.engine.tcg.exec_lock import ExecLock
from pyaxvisor.engine.tcg.xsync import SyncGroup
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.arch_vcpu import InCpuWindow
from pyaxvisor.vm.config import MemoryRegion

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["WILD_ACCESS_REPORTS", "SoftVirtBoard", "WildAccessReports"]

#: Distinct addresses where nothing is that a VM reports (later ones are counted only).
WILD_ACCESS_REPORTS = 8
log = logging.getLogger("pyaxvisor")


class WildAccessReports:
    """Reports of one VM's accesses where there is no RAM and no device, each address
    once (the first ``limit`` addresses; then one line saying the rest are counted
    only): a warning of the ``pyaxvisor`` logger, which Python prints on standard error
    when the program configured no logging. ``outcome``: what the guest takes for such
    an access; ``counted_as``: the exit name its vCPUs count them under (``--stats``).
    :meth:`report` may be called from any vCPU thread."""

    def __init__(self, outcome: str, counted_as: str, limit: int = WILD_ACCESS_REPORTS) -> None:
        self.outcome = outcome
        self.counted_as = counted_as
        self.limit = limit
        self._seen: set[int] = set()
        self._lock = threading.Lock()

    def report(self, vcpu_id: int, address: int, pc: int, *, fetch: bool, write: bool) -> None:
        """vCPU ``vcpu_id``'s instruction at ``pc`` fetched from (``fetch``), wrote to
        (``write``) or read from guest-physical ``address``, where nothing is."""
        with self._lock:
            seen = len(self._seen)
            if address in self._seen or seen > self.limit:
                return
            self._seen.add(address)
        if seen == self.limit:
            log.warning("pyaxvisor: more accesses where nothing is: counted only "
                        "(%s in --stats)", self.counted_as)
            return
        what = "instruction fetch" if fetch else "write" if write else "read"
        log.warning("pyaxvisor: vCPU %d: %s at %#x (PC %#x): no RAM and no device there; "
                    "the guest takes %s", vcpu_id, what, address, pc, self.outcome)


class SoftVirtBoard(VirtioBoard):
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
        cpus = config.cpu_num
        #: The vCPUs run guest code at the same time (the library translates for it);
        #: else one at a time, under :attr:`exec_lock`.
        self.parallel = cpus > 1 and unicorn_build().parallel
        self.exec_lock = ExecLock() if cpus > 1 and not self.parallel else None
        #: The CPUs that broadcast TLB and cache maintenance reaches.
        self.xsync = SyncGroup() if cpus > 1 else None
        self.vm: Vm | None = None
        self._in_cpu: list[InCpuWindow] = []

    @classmethod
    def default_memory_regions(cls, size: int) -> tuple[MemoryRegion, ...]:
        return (MemoryRegion(cls.ram_base, size),)

    def check(self) -> None:
        """The base rules (no more virtio devices than slots), then the RAM's: its
        size, and no region over a device window or past the guest physical address
        size; raises :class:`InvalidInput` naming the memory regions key."""
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
        # the virtio row is not a device window a configuration's passthrough or
        # emulated devices may stand for (nothing here describes them), but RAM may
        # not cover it either
        windows = {**self.device_windows, "virtio-mmio": self.virtio_slots.window}
        for region in config.ram_regions:
            for name, (base, size) in windows.items():
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
        return self.offer_in_cpu(base, size, device)

    def offer_in_cpu(self, base: int, size: int, device: Device) -> bool:
        """Offer ``device`` (already on the VM's bus, as one or several devices) to the
        vCPUs to serve inside the CPU at ``[base, base + size)``, unless every access
        must exit; returns whether it was offered."""
        if not self.config.in_cpu_devices:
            return False
        self._in_cpu.append(InCpuWindow("mmio", base, size, device.read, device.write,
                                        device.mirror))
        return True

    def in_cpu_windows(self, vm: Vm) -> list[InCpuWindow]:
        return list(self._in_cpu)

    def no_device_at(self, gpa: int) -> bool:
        """Whether no device of the VM (created) covers guest-physical ``gpa``: the
        vCPUs' predicate for an access that missed their RAM."""
        assert self.vm is not None
        return self.vm.devices.mmio.find(gpa) is None

"""The ``VCpuHal`` interface (axvcpu's ``AxVCpuHal``) and the host implementation.

What the vCPU layer, the architecture vCPUs and the nested page tables need from
the host: frames, address conversion, access to frame contents, and host IRQ
dispatch. The seeds spell the last method ``irq_hanlder``; here it is
``irq_handler``.

``alloc_frame`` returns ``None`` on exhaustion (as the seeds' ``Option``);
callers turn that into :class:`~pyaxvisor.errors.NoMemory`. ``alloc_frames``
extends it with contiguous, aligned runs (root tables of 16 KiB, guest RAM,
2 MiB and 1 GiB blocks).
"""

from __future__ import annotations

import abc

from pyaxvisor.errors import NoMemory
from pyaxvisor.hal.frame import FRAME_SIZE, FrameAllocator
from pyaxvisor.hal.irq import HostIrqs
from pyaxvisor.hal.memory import HostMemory
from pyaxvisor.mm.addr import HostPhysAddr, HostVirtAddr


class VCpuHal(abc.ABC):
    """Host services for vCPUs. Implementations must be thread-safe."""

    @abc.abstractmethod
    def alloc_frames(self, count: int, align: int = FRAME_SIZE) -> HostPhysAddr | None:
        """``count`` contiguous zeroed frames aligned to ``align`` bytes, or ``None``."""

    @abc.abstractmethod
    def dealloc_frames(self, paddr: HostPhysAddr) -> None:
        """Free the allocation that starts at ``paddr``."""

    @abc.abstractmethod
    def phys_to_virt(self, paddr: HostPhysAddr) -> HostVirtAddr: ...

    @abc.abstractmethod
    def virt_to_phys(self, vaddr: HostVirtAddr) -> HostPhysAddr: ...

    @abc.abstractmethod
    def view(self, paddr: HostPhysAddr, length: int) -> memoryview:
        """Zero-copy access to host physical memory (Rust would dereference
        ``phys_to_virt(paddr)``; Python needs a bounds-checked view instead)."""

    @abc.abstractmethod
    def read_u64(self, paddr: HostPhysAddr | int) -> int: ...

    @abc.abstractmethod
    def write_u64(self, paddr: HostPhysAddr | int, value: int) -> None: ...

    def irq_fetch(self) -> int | None:
        """The host IRQ that caused the last external-interrupt exit (``None``: none)."""
        return None

    def irq_handler(self) -> int | None:
        """Dispatch the pending host IRQ to the host; returns its number."""
        return None

    # -- conveniences built on the primitives ---------------------------------------
    def alloc_frame(self) -> HostPhysAddr | None:
        return self.alloc_frames(1)

    def dealloc_frame(self, paddr: HostPhysAddr) -> None:
        self.dealloc_frames(paddr)

    def alloc_frames_or_raise(self, count: int, align: int = FRAME_SIZE,
                              what: str = "frames") -> HostPhysAddr:
        paddr = self.alloc_frames(count, align)
        if paddr is None:
            raise NoMemory(
                f"out of host memory: cannot allocate {count * FRAME_SIZE:#x} bytes for {what} "
                f"(alignment {align:#x})"
            )
        return paddr


class HostHal(VCpuHal):
    """The real host: an mmap arena, a frame allocator over it, and host IRQ lines."""

    def __init__(self, memory_size: int = 4 << 30) -> None:
        self.memory = HostMemory(memory_size)
        self.frames = FrameAllocator(self.memory)
        self.irqs = HostIrqs()

    def alloc_frames(self, count: int, align: int = FRAME_SIZE) -> HostPhysAddr | None:
        return self.frames.alloc(count, align)

    def dealloc_frames(self, paddr: HostPhysAddr) -> None:
        self.frames.dealloc(paddr)

    def phys_to_virt(self, paddr: HostPhysAddr) -> HostVirtAddr:
        return self.memory.phys_to_virt(paddr)

    def virt_to_phys(self, vaddr: HostVirtAddr) -> HostPhysAddr:
        return self.memory.virt_to_phys(vaddr)

    def view(self, paddr: HostPhysAddr, length: int) -> memoryview:
        return self.memory.view(paddr, length)

    def read_u64(self, paddr: HostPhysAddr | int) -> int:
        return self.memory.read_u64(paddr)

    def write_u64(self, paddr: HostPhysAddr | int, value: int) -> None:
        self.memory.write_u64(paddr, value)

    def irq_fetch(self) -> int | None:
        return self.irqs.fetch()

    def irq_handler(self) -> int | None:
        return self.irqs.dispatch()

    def close(self) -> None:
        self.memory.close()

    def __enter__(self) -> HostHal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

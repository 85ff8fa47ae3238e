"""Host services (axhal / AxVCpuHal): memory arena, frames, host IRQs, timers."""

from pyaxvisor.hal.frame import FRAME_SIZE, DoubleFree, FrameAllocator, NotAllocationStart
from pyaxvisor.hal.irq import HostIrqs
from pyaxvisor.hal.memory import ForeignAddress, HostMemory
from pyaxvisor.hal.timer import TimerEvent, TimerList, monotonic_ns
from pyaxvisor.hal.vcpu_hal import HostHal, VCpuHal

__all__ = [
    "FRAME_SIZE", "DoubleFree", "ForeignAddress", "FrameAllocator", "HostHal", "HostIrqs",
    "HostMemory", "NotAllocationStart", "TimerEvent", "TimerList", "VCpuHal", "monotonic_ns",
]

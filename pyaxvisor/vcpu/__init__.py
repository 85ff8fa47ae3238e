"""The generic vCPU layer (axvcpu): interface, state machine, exits, per-CPU state."""

from pyaxvisor.vcpu.arch_vcpu import ArchVCpu, InCpuWindow, Served
from pyaxvisor.vcpu.current import get_bound_vcpu, get_current_vcpu
from pyaxvisor.vcpu.exit import (
    READ_EXITS,
    CpuDown,
    CpuUp,
    DebugStop,
    ExitReason,
    ExternalInterrupt,
    FailEntry,
    Halt,
    Hypercall,
    IoRead,
    IoWrite,
    MmioRead,
    MmioWrite,
    NestedPageFault,
    Nothing,
    ReadExit,
    SendIPI,
    SysRegRead,
    SysRegWrite,
    SystemDown,
    read_register_value,
)
from pyaxvisor.vcpu.percpu import ArchPerCpu, PerCpu
from pyaxvisor.vcpu.state import (
    ArchOperationFailed,
    NestedVCpuOperation,
    PendingRead,
    VCpuState,
    VCpuStateError,
    WrongHostCpu,
)
from pyaxvisor.vcpu.vcpu import VCpu
from pyaxvisor.vcpu.width import AccessWidth, Port, SysRegAddr

__all__ = [
    "READ_EXITS", "AccessWidth", "ArchOperationFailed", "ArchPerCpu", "ArchVCpu", "CpuDown",
    "CpuUp", "DebugStop", "ExitReason", "ExternalInterrupt", "FailEntry", "Halt", "Hypercall",
    "IoRead",
    "InCpuWindow", "IoWrite", "MmioRead", "MmioWrite", "NestedPageFault",
    "NestedVCpuOperation", "Nothing", "PendingRead", "PerCpu", "Port", "ReadExit",
    "SendIPI", "Served", "SysRegAddr", "SysRegRead", "SysRegWrite", "SystemDown", "VCpu",
    "VCpuState", "VCpuStateError", "WrongHostCpu", "get_bound_vcpu", "get_current_vcpu",
    "read_register_value",
]

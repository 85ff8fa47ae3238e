"""VM exit reasons (axvcpu ``AxVCpuExitReason``): the complete set.

Every ``ArchVCpu.run()`` returns exactly one of these immutable records. They are
architecture neutral: the AArch64 vCPU builds ``MmioRead`` from an ESR_EL2 data
abort syndrome, the x86 vCPU from a KVM_EXIT_MMIO, and the VM run loop handles
both the same way. Values are validated on construction so a decoder bug shows
up where it happens, not in a device model.

Reads (:data:`READ_EXITS`) must be completed with ``VCpu.complete_read(value)``
before the vCPU runs again.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.flags import AccessFlags
from pyaxvisor.vcpu.width import AccessWidth, Port, SysRegAddr

U64 = (1 << 64) - 1


def _check_u64(name: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= U64:
        raise InvalidInput(f"{name} must be an unsigned 64-bit integer, got {value!r}")


def _check_width_value(name: str, value: int, width: AccessWidth) -> None:
    if not isinstance(width, AccessWidth):
        raise InvalidInput(f"width must be an AccessWidth, got {width!r}")
    if not isinstance(value, int) or not 0 <= value <= width.mask:
        raise InvalidInput(f"{name} {value!r} does not fit a {width.size}-byte access")


def _check_gpa(addr: object) -> None:
    if not isinstance(addr, GuestPhysAddr):
        raise InvalidInput(f"exit address must be a GuestPhysAddr, got {addr!r}")


class ExitReason:
    """Base of every exit reason."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Hypercall(ExitReason):
    """A hypercall: ``nr`` and six argument registers (x0, x1..x6 / a7, a0..a5 /
    rax, rdi, rsi, rdx, rcx, r8, r9)."""

    nr: int
    args: tuple[int, int, int, int, int, int]

    def __post_init__(self) -> None:
        _check_u64("hypercall number", self.nr)
        if len(self.args) != 6:
            raise InvalidInput(f"a hypercall carries exactly 6 arguments, got {len(self.args)}")
        object.__setattr__(self, "args", tuple(self.args))
        for i, a in enumerate(self.args):
            _check_u64(f"hypercall argument {i}", a)


@dataclass(frozen=True, slots=True)
class MmioRead(ExitReason):
    """A guest load from an unmapped (device) address. The value goes into
    general-purpose register ``reg``, which is ``reg_width`` wide (W vs X registers
    on AArch64), sign-extended from ``width`` when ``signed_ext``."""

    addr: GuestPhysAddr
    width: AccessWidth
    reg: int
    reg_width: AccessWidth
    signed_ext: bool

    def __post_init__(self) -> None:
        _check_gpa(self.addr)
        _check_width_value("width", 0, self.width)
        _check_width_value("register width", 0, self.reg_width)
        if self.reg_width < self.width:
            raise InvalidInput(f"register width {self.reg_width.size} is narrower than the "
                               f"access width {self.width.size}")
        if self.reg < 0:
            raise InvalidInput(f"register index must be non-negative, got {self.reg}")


@dataclass(frozen=True, slots=True)
class MmioWrite(ExitReason):
    addr: GuestPhysAddr
    width: AccessWidth
    data: int

    def __post_init__(self) -> None:
        _check_gpa(self.addr)
        _check_width_value("MMIO write data", self.data, self.width)


@dataclass(frozen=True, slots=True)
class SysRegRead(ExitReason):
    """A trapped system-register read (MRS, CSR read, RDMSR) into register ``reg``."""

    addr: SysRegAddr
    reg: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "addr", SysRegAddr(self.addr))
        if self.reg < 0:
            raise InvalidInput(f"register index must be non-negative, got {self.reg}")


@dataclass(frozen=True, slots=True)
class SysRegWrite(ExitReason):
    addr: SysRegAddr
    value: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "addr", SysRegAddr(self.addr))
        _check_u64("system register value", self.value)


@dataclass(frozen=True, slots=True)
class IoRead(ExitReason):
    port: Port
    width: AccessWidth

    def __post_init__(self) -> None:
        object.__setattr__(self, "port", Port(self.port))
        _check_width_value("width", 0, self.width)
        if self.width > AccessWidth.Dword:
            raise InvalidInput("port I/O is at most 4 bytes wide")


@dataclass(frozen=True, slots=True)
class IoWrite(ExitReason):
    port: Port
    width: AccessWidth
    data: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "port", Port(self.port))
        _check_width_value("port write data", self.data, self.width)
        if self.width > AccessWidth.Dword:
            raise InvalidInput("port I/O is at most 4 bytes wide")


@dataclass(frozen=True, slots=True)
class ExternalInterrupt(ExitReason):
    """A host interrupt arrived while the guest ran (fetch it with the HAL's irq_fetch)."""

    vector: int


@dataclass(frozen=True, slots=True)
class NestedPageFault(ExitReason):
    """A guest access hit no valid nested mapping and is not emulated MMIO."""

    addr: GuestPhysAddr
    access_flags: AccessFlags

    def __post_init__(self) -> None:
        _check_gpa(self.addr)


@dataclass(frozen=True, slots=True)
class Halt(ExitReason):
    """The vCPU waits for an interrupt (HLT, WFI)."""


@dataclass(frozen=True, slots=True)
class CpuUp(ExitReason):
    """Start another vCPU (PSCI CPU_ON, SBI HSM hart_start, INIT/SIPI)."""

    target_cpu: int
    entry_point: GuestPhysAddr
    arg: int

    def __post_init__(self) -> None:
        _check_gpa(self.entry_point)
        _check_u64("target cpu", self.target_cpu)
        _check_u64("CpuUp argument", self.arg)


@dataclass(frozen=True, slots=True)
class CpuDown(ExitReason):
    """This vCPU powers itself off (PSCI CPU_OFF, SBI HSM hart_stop)."""

    state: int = 0


@dataclass(frozen=True, slots=True)
class SystemDown(ExitReason):
    """The whole VM powers off or resets; ``reset`` tells which was asked for."""

    reset: bool = False


@dataclass(frozen=True, slots=True)
class Nothing(ExitReason):
    """The exit was handled inside the vCPU; just run again."""


@dataclass(frozen=True, slots=True)
class FailEntry(ExitReason):
    """The hardware refused to enter the guest."""

    hardware_entry_failure_reason: int


@dataclass(frozen=True, slots=True)
class SendIPI(ExitReason):
    """The guest sends an inter-processor interrupt (ICC_SGI1R_EL1, SBI IPI, ICR)."""

    target_cpu: int
    target_cpu_aux: int
    send_to_all: bool
    send_to_self: bool
    vector: int


@dataclass(frozen=True, slots=True)
class DebugStop(ExitReason):
    """The vCPU stopped for its debugger (see :mod:`pyaxvisor.vcpu.debug`): ``kind`` is
    "step", "breakpoint" or, for a watchpoint, "write", "read" or "access"; ``addr`` is
    the PC, or the data address a watchpoint saw."""

    kind: str
    addr: int

    def __post_init__(self) -> None:
        if self.kind not in ("step", "breakpoint", "write", "read", "access"):
            raise InvalidInput(f"unknown debug stop {self.kind!r}")
        _check_u64("debug stop address", self.addr)


READ_EXITS = (MmioRead, IoRead, SysRegRead)
ReadExit = MmioRead | IoRead | SysRegRead


def read_register_value(exit_reason: ReadExit, value: int) -> int:
    """The value an emulated read leaves in the destination register.

    ``value`` is what the device returned; only its low ``width`` bytes count. An
    MMIO read is zero- or sign-extended to the register width; a port read keeps
    the access width (x86 leaves the rest of RAX to the arch vCPU); a system
    register read is 64 bits.
    """
    if not isinstance(value, int):
        raise InvalidInput(f"read value must be an int, got {value!r}")
    match exit_reason:
        case MmioRead(width=width, reg_width=reg_width, signed_ext=signed):
            if signed:
                return width.sign_extend(value, reg_width)
            return value & width.mask
        case IoRead(width=width):
            return value & width.mask
        case SysRegRead():
            return value & U64
    raise InvalidInput(f"{exit_reason!r} is not a read exit")

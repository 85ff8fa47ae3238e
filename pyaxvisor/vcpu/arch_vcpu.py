"""The ``ArchVCpu`` interface (axvcpu ``AxArchVCpu``) every architecture implements.

Call order, enforced by the :class:`~pyaxvisor.vcpu.vcpu.VCpu` wrapper and
assumed by implementations:

1. ``new(vm_id, vcpu_id, create_config)`` — first and once.
2. ``set_entry(gpa)`` — exactly once, before ``setup``.
3. ``set_ept_root(hpa)`` — exactly once, before ``setup``.
4. ``setup(setup_config)`` — once, after 2 and 3.
5. ``bind()`` — load the vCPU onto the calling host thread (the "physical CPU").
6. ``run()`` any number of times — runs the guest until an exit it cannot handle
   itself and returns that :class:`~pyaxvisor.vcpu.exit.ExitReason`. A read exit
   must be completed with :meth:`complete_read` before the next ``run``.
7. ``unbind()`` — the vCPU may then be bound again, on this or another thread.

``set_gpr``/``set_return_value`` work between runs. ``inject_interrupt`` may be
called from any thread at any time after ``setup``: implementations queue the
vector and deliver it at the next guest entry (they must be thread-safe there).

What a VM needs from every vCPU beyond the axvcpu calls, with defaults for an
architecture that has nothing to do there:

* ``kick()`` (any thread): make a running or about-to-run ``run()`` return soon
  (with ``Nothing``), so the VM can stop or re-examine the vCPU;
* ``serve_in_cpu(windows, timing=)`` (after ``bind``, before the first ``run``,
  from the bound thread): device windows the engine may serve without returning
  an exit to the VM, as KVM serves its in-kernel devices and x86_vcpu handles some
  exits itself; ``served_counts()`` reports what was served that way;
* ``interrupt_pending()``: whether an interrupt is waiting for this vCPU (a Halt
  exit blocks the vCPU only while it is False);
* ``close()``: release what the vCPU holds outside Python (file descriptors);
* for the gdb stub, ``gdb`` (the registers' layout) and the ``debug_*`` calls and
  ``set_guest_debug`` of :mod:`pyaxvisor.vcpu.debug` (the defaults: Unsupported).

Each subclass names its configuration types in ``CreateConfig`` and
``SetupConfig``; the wrapper checks the configs passed against them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Literal, NamedTuple, Self

from pyaxvisor.errors import Unsupported
from pyaxvisor.mm.addr import GuestPhysAddr, HostPhysAddr
from pyaxvisor.vcpu.debug import GdbLayout, GuestDebug
from pyaxvisor.vcpu.exit import (
    ExitReason,
    IoRead,
    MmioRead,
    ReadExit,
    SysRegRead,
    read_register_value,
)
from pyaxvisor.vcpu.register_mirror import RegisterMirror
from pyaxvisor.vcpu.width import AccessWidth


class InCpuWindow(NamedTuple):
    """A device window a vCPU may serve inside its run: ``space`` is "mmio" (guest
    physical addresses) or "port" (x86 I/O ports); ``read(offset, width, vcpu_id)``
    and ``write(offset, width, value, vcpu_id)`` are the device's calls, the offset
    counted from ``base``; ``mirror``, when the device has one, holds the registers a
    software CPU may read without calling it."""

    space: Literal["mmio", "port"]
    base: int
    size: int
    read: Callable[[int, AccessWidth, int], int]
    write: Callable[[int, AccessWidth, int, int], None]
    mirror: RegisterMirror | None = None


class Served(NamedTuple):
    """What a vCPU served inside its runs: ``exits`` are full exits handled without
    returning them (counted, and timed in ``exit_time`` when asked), ``accesses``
    device reads and writes that needed no exit at all, ``guest_exceptions`` the
    exceptions a software CPU's guest took at its own vectors (SVC, its page faults...:
    no exit; a hardware CPU's are not seen), ``engine`` whatever else the engine
    counts, by the engine's names (numbers; reported as they are by ``--stats-json``)."""

    exits: Mapping[str, int] = MappingProxyType({})
    exit_time: Mapping[str, float] = MappingProxyType({})
    accesses: tuple[int, int] = (0, 0)
    guest_exceptions: int = 0
    engine: Mapping[str, float] = MappingProxyType({})


class ArchVCpu(abc.ABC):
    CreateConfig: ClassVar[type]
    SetupConfig: ClassVar[type]
    #: The registers as gdb sees them; None: no gdb stub for this architecture.
    gdb: ClassVar[GdbLayout | None] = None

    @classmethod
    @abc.abstractmethod
    def new(cls, vm_id: int, vcpu_id: int, config: Any) -> Self:
        """Create the architecture state (may allocate HAL frames)."""

    @abc.abstractmethod
    def set_entry(self, entry: GuestPhysAddr) -> None:
        """Guest entry point, i.e. the first PC / RIP."""

    @abc.abstractmethod
    def set_ept_root(self, ept_root: HostPhysAddr) -> None:
        """Root of the nested page table (EPT / VTTBR_EL2 / hgatp)."""

    @abc.abstractmethod
    def setup(self, config: Any) -> None:
        """Finish initialisation once entry and nested page table are known."""

    @abc.abstractmethod
    def run(self) -> ExitReason:
        """Run the guest until an exit the hypervisor must handle."""

    @abc.abstractmethod
    def bind(self) -> None:
        """Make this vCPU current on the calling host thread."""

    @abc.abstractmethod
    def unbind(self) -> None:
        """Release the calling host thread."""

    @abc.abstractmethod
    def set_gpr(self, index: int, value: int) -> None:
        """Set general-purpose register ``index`` (architecture numbering)."""

    @abc.abstractmethod
    def inject_interrupt(self, vector: int) -> None:
        """Queue an interrupt for the guest. Thread-safe."""

    @abc.abstractmethod
    def set_return_value(self, value: int) -> None:
        """Set the register a hypercall returns in (x0 / a0 / rax)."""

    def complete_read(self, exit_reason: ReadExit, value: int) -> None:
        """Finish an emulated read: put the device's ``value`` where the guest expects it.

        The default writes the extended value into the destination GPR, which is
        right for MMIO and system-register reads on architectures whose decoders
        name a register. Engines whose exits carry a data buffer (KVM) override it.
        """
        match exit_reason:
            case MmioRead(reg=reg) | SysRegRead(reg=reg):
                self.set_gpr(reg, read_register_value(exit_reason, value))
            case IoRead():
                raise Unsupported(f"{type(self).__name__} has no port I/O")

    # -- what a VM needs from every vCPU (defaults: nothing to do) ----------------------
    def kick(self) -> None:
        """Make ``run()`` return soon (any thread). The default does nothing: such a
        vCPU returns from ``run()`` by itself."""
        return

    def serve_in_cpu(self, windows: Sequence[InCpuWindow], *, timing: bool = False) -> bool:
        """Serve ``windows`` inside ``run()``; returns whether the vCPU does (the
        default does not: every access then comes back as an exit)."""
        return False

    def guest_ram_written(self, ranges: Sequence[tuple[int, int, int]]) -> None:
        """Guest RAM was written other than by the guest's CPUs (a device's DMA), at
        the ``(gpa, hpa, length)`` ranges (guest and host physical): a vCPU whose engine
        keeps translated code drops what it had of those pages before the guest runs
        them. Any thread; must not wait. The default does nothing (hardware CPUs see
        such writes)."""
        return

    def served_counts(self) -> Served:
        """What :meth:`serve_in_cpu` windows saw so far."""
        return Served()

    def exit_pc(self) -> int | None:
        """The guest's PC at the last exit ``run()`` returned (the instruction that
        exited, where the engine knows it), for exit traces; ``None`` when the vCPU
        cannot tell. The bound thread, between runs."""
        return None

    def interrupt_pending(self) -> bool:
        """Whether an interrupt waits for this vCPU (a Halt then does not block)."""
        return False

    def close(self) -> None:
        """Release what the vCPU holds outside Python. The default has nothing."""
        return

    # -- the debugger's calls (pyaxvisor.vcpu.debug; on the vCPU's thread, between runs) --
    def debug_registers(self) -> list[int]:
        raise Unsupported(f"{type(self).__name__} has no debugger interface")

    def debug_set_register(self, number: int, value: int) -> None:
        raise Unsupported(f"{type(self).__name__} has no debugger interface")

    def debug_translate(self, va: int, read_u64: Callable[[int], int]) -> int:
        raise Unsupported(f"{type(self).__name__} has no debugger interface")

    def set_guest_debug(self, config: GuestDebug) -> None:
        raise Unsupported(f"{type(self).__name__} has no debugger interface")

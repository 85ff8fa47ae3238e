"""What a debugger asks of a vCPU (the generic debug interface of ``ArchVCpu``).

An architecture that supports the gdb stub describes its registers for gdb with a
:class:`GdbLayout` (``ArchVCpu.gdb``) and implements, on the vCPU's own thread and
between runs (the VM calls them while the vCPU is parked):

* ``debug_registers()``: every register in gdb's numbering (the layout's order);
* ``debug_set_register(number, value)``;
* ``debug_translate(va, read_u64)``: the guest-physical address of virtual ``va``
  through the guest's current translation (``read_u64(gpa)`` reads its tables);
  raises :class:`~pyaxvisor.errors.NotFound` when ``va`` has no translation;
* ``set_guest_debug(config)``: what the next runs stop for (:class:`GuestDebug`); a
  stop is a :class:`~pyaxvisor.vcpu.exit.DebugStop` exit.

Software breakpoints are the VM's: it writes the layout's breakpoint instruction into
guest memory and names the addresses in :attr:`GuestDebug.sw_breakpoints`; the vCPU
reports a breakpoint instruction at one of them as a stop and gives any other to the
guest, which may use such instructions itself (as KVM and QEMU do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

WatchKind = Literal["write", "read", "access"]


@dataclass(frozen=True, slots=True)
class Watchpoint:
    """Stop on a guest access of ``kind`` to virtual ``[addr, addr + length)``."""

    addr: int
    length: int
    kind: WatchKind


@dataclass(frozen=True, slots=True)
class GuestDebug:
    """What the vCPU stops for: one instruction (``step``), the debugger's breakpoint
    instructions at ``sw_breakpoints``, the virtual addresses ``hw_breakpoints``,
    ``watchpoints``. The empty config is "no debugging"."""

    step: bool = False
    sw_breakpoints: frozenset[int] = frozenset()
    hw_breakpoints: tuple[int, ...] = ()
    watchpoints: tuple[Watchpoint, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.step or self.sw_breakpoints or self.hw_breakpoints
                    or self.watchpoints)


@dataclass(frozen=True)
class GdbLayout:
    """An architecture's registers for gdb: the target description (``xml``, gdb's
    ``target.xml``), each register's size in bits in gdb's numbering, the number of
    the PC, the breakpoint instruction for each Z0 ``kind`` (gdb's length of the
    instruction it replaces), and how many hardware breakpoints and watchpoints the
    vCPU provides."""

    xml: bytes
    sizes: tuple[int, ...]
    pc: int
    sw_breakpoints: dict[int, bytes] = field(default_factory=dict)
    hw_breakpoints: int = 0
    watchpoints: int = 0

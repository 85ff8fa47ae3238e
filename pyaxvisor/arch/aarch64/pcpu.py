"""Per-CPU virtualization state for AArch64 (arm_vcpu ``Aarch64PerCpu``).

A host thread plays one physical CPU, and its silicon is one software CPU
(:class:`~pyaxvisor.engine.tcg.aarch64.Aarch64Tcg`). As on hardware:

* ``hardware_enable`` saves the current VBAR_EL2 and installs the hypervisor's
  vector base, then sets HCR_EL2 (VM | RW | IMO | FMO | TSC) and makes this
  per-CPU state the current one of the calling thread, so vCPUs can bind here;
* ``hardware_disable`` restores VBAR_EL2, clears HCR_EL2 and unregisters.

In the software engine an exception to EL2 is taken by pyaxvisor's interrupt
hook before the CPU would fetch from VBAR_EL2, so :data:`HYP_VECTOR_BASE` is
never executed; it is installed so EL2 state is as on hardware and restored.

:func:`has_hardware_support` reads ID_AA64PFR0_EL1.EL2 (bits 11:8: 0 = no EL2)
and ID_AA64MMFR1_EL1.VH (bits 11:8: VHE) of the engine's CPU model.
"""

from __future__ import annotations

import threading
from typing import Self

from pyaxvisor.engine.tcg.aarch64 import Aarch64Tcg
from pyaxvisor.errors import BadState
from pyaxvisor.vcpu.percpu import ArchPerCpu

HCR_VM = 1 << 0
HCR_FMO = 1 << 3
HCR_IMO = 1 << 4
HCR_TWI = 1 << 13
HCR_TSC = 1 << 19
HCR_RW = 1 << 31
HCR_HOST = HCR_VM | HCR_RW | HCR_IMO | HCR_FMO | HCR_TSC

#: The hypervisor's EL2 vector base (never executed by the software engine).
HYP_VECTOR_BASE = 0xFFFF_0000_0000_0000

_thread = threading.local()
_support: tuple[bool, bool] | None = None
_support_lock = threading.Lock()


def hardware_features() -> tuple[bool, bool]:
    """(EL2 implemented, VHE implemented) from the CPU model's ID registers (cached)."""
    global _support
    with _support_lock:
        if _support is None:
            probe = Aarch64Tcg()
            pfr0 = probe.read_sysreg("ID_AA64PFR0_EL1")
            mmfr1 = probe.read_sysreg("ID_AA64MMFR1_EL1")
            probe.close()
            _support = ((pfr0 >> 8) & 0xF != 0, (mmfr1 >> 8) & 0xF != 0)
        return _support


def has_hardware_support() -> bool:
    return hardware_features()[0]


class Aarch64PerCpu(ArchPerCpu):
    def __init__(self, cpu_id: int, engine: Aarch64Tcg) -> None:
        self.cpu_id = cpu_id
        self.engine = engine
        self._enabled = False
        self._saved_vbar = 0
        self._thread: int | None = None

    @classmethod
    def new(cls, cpu_id: int) -> Self:
        return cls(cpu_id, Aarch64Tcg())

    def is_enabled(self) -> bool:
        return self._enabled

    def hardware_enable(self) -> None:
        current = getattr(_thread, "percpu", None)
        if current is not None and current is not self:
            raise BadState(f"host thread already runs as CPU {current.cpu_id}")
        self._saved_vbar = self.engine.read_sysreg("VBAR_EL2")
        self.engine.write_sysreg("VBAR_EL2", HYP_VECTOR_BASE)
        self.engine.write_sysreg("HCR_EL2", HCR_HOST)
        self._enabled = True
        self._thread = threading.get_ident()
        _thread.percpu = self

    def hardware_disable(self) -> None:
        self.engine.write_sysreg("VBAR_EL2", self._saved_vbar)
        self.engine.write_sysreg("HCR_EL2", 0)
        self._enabled = False
        if getattr(_thread, "percpu", None) is self:
            _thread.percpu = None

    @classmethod
    def has_hardware_support(cls) -> bool:
        return has_hardware_support()

    def max_guest_page_table_levels(self) -> int:
        return 4


def current_percpu() -> Aarch64PerCpu:
    """The enabled AArch64 per-CPU state of the calling host thread."""
    pc = getattr(_thread, "percpu", None)
    if pc is None or not pc.is_enabled():
        raise BadState("virtualization is not enabled on this host CPU: initialise a "
                       "PerCpu(Aarch64PerCpu) and call hardware_enable() on this thread first")
    return pc

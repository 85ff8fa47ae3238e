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

from pyaxvisor.arch.soft_cpu import SoftPerCpu
from pyaxvisor.engine.tcg.aarch64 import Aarch64Tcg

HCR_VM = 1 << 0
HCR_FMO = 1 << 3
HCR_IMO = 1 << 4
HCR_TWI = 1 << 13
HCR_TSC = 1 << 19
HCR_RW = 1 << 31
HCR_HOST = HCR_VM | HCR_RW | HCR_IMO | HCR_FMO | HCR_TSC

#: The hypervisor's EL2 vector base (never executed by the software engine).
HYP_VECTOR_BASE = 0xFFFF_0000_0000_0000

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


class Aarch64PerCpu(SoftPerCpu):
    engine_class = Aarch64Tcg
    engine: Aarch64Tcg

    def __init__(self, cpu_id: int, engine: Aarch64Tcg) -> None:
        super().__init__(cpu_id, engine)
        self._saved_vbar = 0

    def hardware_enable(self) -> None:
        self._claim_thread()
        self._saved_vbar = self.engine.read_sysreg("VBAR_EL2")
        self.engine.write_sysreg("VBAR_EL2", HYP_VECTOR_BASE)
        self.engine.write_sysreg("HCR_EL2", HCR_HOST)
        self._enabled_here()

    def hardware_disable(self) -> None:
        self.engine.write_sysreg("VBAR_EL2", self._saved_vbar)
        self.engine.write_sysreg("HCR_EL2", 0)
        self._release_thread()

    @classmethod
    def has_hardware_support(cls) -> bool:
        return has_hardware_support()

    def max_guest_page_table_levels(self) -> int:
        return 4


def current_percpu() -> Aarch64PerCpu:
    """The enabled AArch64 per-CPU state of the calling host thread."""
    return Aarch64PerCpu.current()

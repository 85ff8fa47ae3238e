"""Per-CPU virtualization state for RISC-V 64 (riscv_vcpu ``RISCVPerCpu``).

A host thread plays one physical hart, and its silicon is one software CPU
(:class:`~pyaxvisor.engine.tcg.riscv64.Riscv64Tcg`), owned here as
``Aarch64PerCpu`` owns its engine.

With the H extension, riscv_vcpu's ``hardware_enable`` sets ``hedeleg``/``hideleg``
so a guest's own traps go to VS-mode. The CPU here has no H extension (misa
``RV64ACDFIMSU``), so pyaxvisor takes the **software path**: the guest runs in
S-mode and pyaxvisor is M-mode, and the same split is made with ``medeleg`` and
``mideleg``:

* delegated to S (the guest handles them itself, delivered without leaving the
  CPU): misaligned instruction, load and store addresses, breakpoints, ``ecall``
  from U-mode, instruction/load/store page faults (:data:`GUEST_CAUSES`), and the
  supervisor software, timer and external interrupts;
* kept in M (pyaxvisor): ``ecall`` from S-mode (SBI calls), access faults (accesses
  outside guest RAM: MMIO or nested page faults), illegal instructions (a ``wfi``
  trapped by ``mstatus.TW``, which is set here, becomes a ``Halt``; any other one is
  handed to the guest).

``mcounteren`` lets S-mode read ``cycle``, ``time`` and ``instret``.
``hardware_disable`` restores what ``hardware_enable`` changed.

:func:`hardware_features` reads misa of the CPU model: the H bit (hardware
virtualization) and S/U (the software path's needs). :meth:`RISCVPerCpu.has_hardware_support`
is true when either path exists; here the H bit is absent and the software path is
used.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

from pyaxvisor.arch.soft_cpu import SoftPerCpu
from pyaxvisor.engine.tcg.riscv64 import Riscv64Tcg
from pyaxvisor.engine.tcg.riscv64_isa import (
    GUEST_CAUSES,
    MISA_H,
    MISA_S,
    MISA_U,
    MSTATUS_TW,
    S_INTERRUPTS,
    Csr,
)

#: medeleg while virtualization is on: the exceptions guests handle themselves.
MEDELEG_GUEST = sum(1 << int(c) for c in GUEST_CAUSES)
#: mideleg: supervisor software, timer and external interrupts.
MIDELEG_GUEST = S_INTERRUPTS
MCOUNTEREN_GUEST = 0b111  # CY, TM, IR

_features: RiscvFeatures | None = None
_features_lock = threading.Lock()


class RiscvFeatures(NamedTuple):
    """What misa says: ``h_extension`` (hardware virtualization), ``supervisor`` and
    ``user`` (the modes the software path runs guests and their programs in)."""

    misa: int
    h_extension: bool
    supervisor: bool
    user: bool

    @property
    def software_path(self) -> bool:
        return self.supervisor and self.user

    @classmethod
    def from_misa(cls, misa: int) -> RiscvFeatures:
        return cls(misa, bool(misa & MISA_H), bool(misa & MISA_S), bool(misa & MISA_U))


def hardware_features() -> RiscvFeatures:
    """misa of the engine's CPU model, read once."""
    global _features
    with _features_lock:
        if _features is None:
            probe = Riscv64Tcg()
            _features = RiscvFeatures.from_misa(probe.csr(Csr.MISA))
            probe.close()
        return _features


class RISCVPerCpu(SoftPerCpu):
    engine_class = Riscv64Tcg
    engine: Riscv64Tcg

    def __init__(self, cpu_id: int, engine: Riscv64Tcg) -> None:
        super().__init__(cpu_id, engine)
        self._saved: dict[Csr, int] = {}

    def hardware_enable(self) -> None:
        self._claim_thread()
        engine = self.engine
        self._saved = {csr: engine.csr(csr) for csr in
                       (Csr.MEDELEG, Csr.MIDELEG, Csr.MSTATUS, Csr.MCOUNTEREN)}
        engine.set_csr(Csr.MEDELEG, MEDELEG_GUEST)
        engine.set_csr(Csr.MIDELEG, MIDELEG_GUEST)
        engine.csr_rmw(Csr.MSTATUS, MSTATUS_TW, MSTATUS_TW)
        engine.set_csr(Csr.MCOUNTEREN, MCOUNTEREN_GUEST)
        engine.guest_causes = set(GUEST_CAUSES)
        self._enabled_here()

    def hardware_disable(self) -> None:
        engine = self.engine
        for csr, value in self._saved.items():
            mask = MSTATUS_TW if csr == Csr.MSTATUS else (1 << 64) - 1
            engine.csr_rmw(csr, value, mask)
        engine.guest_causes = set()
        self._release_thread()

    @classmethod
    def has_hardware_support(cls) -> bool:
        features = hardware_features()
        return features.h_extension or features.software_path

    def max_guest_page_table_levels(self) -> int:
        return 4  # Sv48x4 is the deepest G-stage format pyaxvisor builds


def current_percpu() -> RISCVPerCpu:
    """The enabled RISC-V per-CPU state of the calling host thread."""
    return RISCVPerCpu.current()

"""The architectural state a RISC-V vCPU carries between host CPUs.

While a vCPU is bound, its state lives in the engine's CPU and is read and written
there (registers through the located CPU state, CSRs through QEMU's debugger path).
:class:`HartContext` holds it while the vCPU is not bound: ``save`` takes it out of
an engine at ``unbind``, ``load`` puts it into the engine of the thread that binds
the vCPU next.

What is carried: x0..x31, the PC, the privilege level (S or U: a vCPU stops between
instructions, in the mode it ran in), f0..f31 and fcsr, the S-mode CSRs
(:data:`S_CSRS`: sstatus, sie, stvec, sscratch, sepc, scause, stval, satp,
scounteren, and senvcfg on CPUs that have it, which this one does not), and the
supervisor interrupt-pending bits of mip (SSIP as the guest left it, STIP and
SEIP as the hypervisor drove them). The SBI timer compare value is the vCPU's
own. M-mode configuration (delegation, mstatus.TW, PMP, the memory map) belongs
to the host CPU (``RISCVPerCpu``) and the VM's memory, not to the vCPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyaxvisor.engine.tcg.riscv64 import Riscv64Tcg
from pyaxvisor.engine.tcg.riscv64_isa import (
    MSTATUS_FS,
    MSTATUS_SIE,
    S_INTERRUPTS,
    Csr,
    Priv,
)

S_CSRS = (Csr.SSTATUS, Csr.SIE, Csr.STVEC, Csr.SSCRATCH, Csr.SEPC, Csr.SCAUSE, Csr.STVAL,
          Csr.SATP, Csr.SCOUNTEREN)
OPTIONAL_CSRS = (Csr.SENVCFG,)
#: sstatus at entry: interrupts off, the FPU on (FS = Initial), as firmware hands
#: S-mode over.
SSTATUS_ENTRY = 1 << 13


@dataclass
class HartContext:
    gprs: list[int] = field(default_factory=lambda: [0] * 32)
    pc: int = 0
    priv: int = Priv.S
    fprs: list[int] = field(default_factory=lambda: [0] * 32)
    fcsr: int = 0
    csrs: dict[int, int] = field(default_factory=lambda: {Csr.SSTATUS: SSTATUS_ENTRY})
    mip: int = 0

    def load(self, engine: Riscv64Tcg) -> None:
        """Put this state into ``engine`` (the calling thread drives it; stopped)."""
        engine.priv = Priv.S  # S-CSR side effects (satp's TLB flush) as in S-mode
        for csr in S_CSRS:
            engine.set_csr(csr, self.csrs.get(csr, 0))
        for csr in OPTIONAL_CSRS:
            if csr in self.csrs and engine.has_csr(csr):
                engine.set_csr(csr, self.csrs[csr])
        engine.set_fprs(self.fprs)
        engine.csr_rmw(Csr.FCSR, self.fcsr, 0xFF)
        engine.csr_rmw(Csr.MIP, self.mip, S_INTERRUPTS)
        engine.set_gprs(self.gprs)
        engine.pc = self.pc
        engine.priv = self.priv

    def save(self, engine: Riscv64Tcg) -> None:
        """Take the state out of ``engine`` (the calling thread drives it; stopped)."""
        self.gprs = engine.gprs()
        self.pc = engine.pc
        self.priv = engine.priv
        self.fprs = engine.fprs()
        self.fcsr = engine.csr(Csr.FCSR)
        self.csrs = {csr: engine.csr(csr) for csr in S_CSRS}
        for csr in OPTIONAL_CSRS:
            value = engine.csr_rmw(csr, 0, 0)
            if value is not None:
                self.csrs[csr] = value
        self.mip = engine.csr(Csr.MIP) & S_INTERRUPTS

    def restart(self, entry: int, hart_id: int, opaque: int) -> None:
        """A hart (re)started by SBI HSM: S-mode at ``entry``, satp = 0, interrupts off
        (sstatus.SIE = 0), a0 = ``hart_id``, a1 = ``opaque``."""
        self.pc = entry
        self.priv = Priv.S
        self.csrs[Csr.SATP] = 0
        sstatus = self.csrs.get(Csr.SSTATUS, SSTATUS_ENTRY) & ~MSTATUS_SIE
        self.csrs[Csr.SSTATUS] = sstatus | (SSTATUS_ENTRY if not sstatus & MSTATUS_FS else 0)
        self.gprs[10] = hart_id
        self.gprs[11] = opaque

"""The RISC-V 64 vCPU's registers as gdb sees them (the target description).

gdb's numbering: 0-31 x0-x31 (``zero``, ``ra``, ``sp``... feature
``org.gnu.gdb.riscv.cpu``), 32 pc, then the supervisor CSRs of :data:`CSRS` (feature
``org.gnu.gdb.riscv.csr``: ``p $satp``, ``info registers csr``). The floating-point
registers are not described.
"""

from __future__ import annotations

from pyaxvisor.engine.tcg.riscv64_isa import Csr
from pyaxvisor.vcpu.debug import GdbLayout

GPR_NAMES = ("zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "fp", "s1", "a0", "a1", "a2",
             "a3", "a4", "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9",
             "s10", "s11", "t3", "t4", "t5", "t6")
PC = 32
CSRS: tuple[tuple[str, int], ...] = (
    ("sstatus", Csr.SSTATUS), ("sie", Csr.SIE), ("stvec", Csr.STVEC),
    ("scounteren", Csr.SCOUNTEREN), ("sscratch", Csr.SSCRATCH), ("sepc", Csr.SEPC),
    ("scause", Csr.SCAUSE), ("stval", Csr.STVAL), ("sip", Csr.SIP), ("satp", Csr.SATP),
)

#: EBREAK (4 bytes) and C.EBREAK (2 bytes), by gdb's Z0 kind.
BREAKPOINTS = {4: (0x00100073).to_bytes(4, "little"), 2: (0x9002).to_bytes(2, "little")}


def _xml() -> bytes:
    lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
             '<target version="1.0">', "<architecture>riscv:rv64</architecture>",
             '<feature name="org.gnu.gdb.riscv.cpu">']
    for n, name in enumerate(GPR_NAMES):
        kind = "code_ptr" if name == "ra" else "data_ptr" if name in ("sp", "gp", "tp",
                                                                      "fp") else "int"
        lines.append(f'<reg name="{name}" bitsize="64" type="{kind}" regnum="{n}"/>')
    lines.append(f'<reg name="pc" bitsize="64" type="code_ptr" regnum="{PC}"/>')
    lines += ["</feature>", '<feature name="org.gnu.gdb.riscv.csr">']
    for k, (name, _csr) in enumerate(CSRS):
        lines.append(f'<reg name="{name}" bitsize="64" type="int" group="system" '
                     f'regnum="{PC + 1 + k}"/>')
    lines += ["</feature>", "</target>"]
    return ("\n".join(lines) + "\n").encode()


LAYOUT = GdbLayout(xml=_xml(), sizes=(64,) * (PC + 1 + len(CSRS)), pc=PC,
                   sw_breakpoints=BREAKPOINTS, hw_breakpoints=16,
                   watchpoints=4)

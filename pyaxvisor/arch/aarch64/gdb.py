"""The AArch64 vCPU's registers as gdb sees them (the target description).

gdb's numbering: 0-30 x0-x30, 31 sp (the SP of the current mode), 32 pc, 33 cpsr
(PSTATE as SPSR lays it out, 32 bits; feature ``org.gnu.gdb.aarch64.core``), then the
EL1 system registers of :data:`SYSREGS` (feature ``org.pyaxvisor.aarch64.sysregs``,
gdb group "system": ``info registers system``, ``p $sctlr_el1``). The floating-point
and SIMD registers are not described (gdb does without ``org.gnu.gdb.aarch64.fpu``).
"""

from __future__ import annotations

from pyaxvisor.vcpu.debug import GdbLayout

CORE = (*(f"x{i}" for i in range(31)), "sp", "pc", "cpsr")
SP, PC, CPSR = 31, 32, 33

#: The system registers after the core ones: (gdb name, (op0, op1, CRn, CRm, op2)), or
#: a name alone for the stack pointers (banked with SP).
SYSREGS: tuple[tuple[str, tuple[int, int, int, int, int] | None], ...] = (
    ("sp_el0", None), ("sp_el1", None),
    ("elr_el1", (3, 0, 4, 0, 1)), ("spsr_el1", (3, 0, 4, 0, 0)),
    ("sctlr_el1", (3, 0, 1, 0, 0)), ("cpacr_el1", (3, 0, 1, 0, 2)),
    ("ttbr0_el1", (3, 0, 2, 0, 0)), ("ttbr1_el1", (3, 0, 2, 0, 1)),
    ("tcr_el1", (3, 0, 2, 0, 2)), ("mair_el1", (3, 0, 10, 2, 0)),
    ("vbar_el1", (3, 0, 12, 0, 0)), ("esr_el1", (3, 0, 5, 2, 0)),
    ("far_el1", (3, 0, 6, 0, 0)), ("par_el1", (3, 0, 7, 4, 0)),
    ("contextidr_el1", (3, 0, 13, 0, 1)), ("tpidr_el1", (3, 0, 13, 0, 4)),
    ("tpidr_el0", (3, 3, 13, 0, 2)), ("tpidrro_el0", (3, 3, 13, 0, 3)),
    ("mdscr_el1", (2, 0, 0, 2, 2)), ("cntkctl_el1", (3, 0, 14, 1, 0)),
)

#: BRK #0 (gdb's own choice for AArch64 is BRK #0 as well).
BRK0 = (0xD4200000).to_bytes(4, "little")


def _xml() -> bytes:
    lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
             '<target version="1.0">', "<architecture>aarch64</architecture>",
             '<feature name="org.gnu.gdb.aarch64.core">']
    for n, name in enumerate(CORE):
        kind = {SP: "data_ptr", PC: "code_ptr"}.get(n, "int")
        bits = 32 if n == CPSR else 64
        lines.append(f'<reg name="{name}" bitsize="{bits}" type="{kind}" regnum="{n}"/>')
    lines.append("</feature>")
    lines.append('<feature name="org.pyaxvisor.aarch64.sysregs">')
    for k, (name, _enc) in enumerate(SYSREGS):
        lines.append(f'<reg name="{name}" bitsize="64" type="int" group="system" '
                     f'regnum="{len(CORE) + k}"/>')
    lines += ["</feature>", "</target>"]
    return ("\n".join(lines) + "\n").encode()


LAYOUT = GdbLayout(xml=_xml(), sizes=(64,) * 33 + (32,) + (64,) * len(SYSREGS), pc=PC,
                   sw_breakpoints={4: BRK0}, hw_breakpoints=16,
                   watchpoints=4)

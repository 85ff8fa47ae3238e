"""The x86_64 vCPU for gdb: its registers (the target description) and KVM's guest
debugging (``KVM_SET_GUEST_DEBUG``, ``KVM_EXIT_DEBUG``).

gdb's numbering (``org.gnu.gdb.i386.core`` and ``.sse``, as gdb's amd64 description
has them): 0-15 rax rbx rcx rdx rsi rdi rbp rsp r8-r15, 16 rip, 17 eflags, 18-23 cs ss
ds es fs gs (selectors), 24-31 st0-st7 (80 bits), 32-39 fctrl fstat ftag fiseg fioff
foseg fooff fop, 40-55 xmm0-xmm15, 56 mxcsr. The x87 and SSE state is KVM_GET_FPU's;
its tag word is the abridged one (a register is valid or empty), which ``ftag`` shows
as 00 or 11 per register. Writable: the general registers, rip, eflags, the x87 and
SSE registers (not the selectors, fiseg/foseg or ftag).

Debugging through KVM_SET_GUEST_DEBUG: a step is KVM_GUESTDBG_SINGLESTEP (the trap
flag), hardware breakpoints are DR0-DR3 (KVM_GUESTDBG_USE_HW_BP; four at most), and
KVM_EXIT_DEBUG reports them. Software breakpoints (INT3 with KVM_GUESTDBG_USE_SW_BP)
and watchpoints (data breakpoints in DR0-DR3) are not offered: on the nested AMD host
this was written on, KVM failed to intercept the INT3 (an emulation failure) and never
reported a data breakpoint, so gdb is told they do not exist (use ``hbreak``).
"""

from __future__ import annotations

from pyaxvisor.engine.kvm import structs as st
from pyaxvisor.engine.kvm.system import KvmVCpu
from pyaxvisor.errors import InvalidInput, Unsupported
from pyaxvisor.vcpu.debug import GdbLayout, GuestDebug
from pyaxvisor.vcpu.exit import DebugStop

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16)))
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
RIP, EFLAGS, ST0, FCTRL, XMM0, MXCSR = 16, 17, 24, 32, 40, 56

KVM_GUESTDBG_ENABLE = 0x1
KVM_GUESTDBG_SINGLESTEP = 0x2
KVM_GUESTDBG_USE_HW_BP = 0x20000
DR7_BASE = 0x600                       # GE, and bit 10 (reads as one)


def _xml() -> bytes:
    regs: list[tuple[str, int, str]] = [(n, 64, "int64") for n in GPRS]
    regs += [("rip", 64, "code_ptr"), ("eflags", 32, "int32")]
    regs += [(n, 32, "int32") for n in SEGMENTS]
    regs += [(f"st{i}", 80, "i387_ext") for i in range(8)]
    regs += [(n, 32, "int") for n in X87_CONTROL]
    lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
             '<target version="1.0">', "<architecture>i386:x86-64</architecture>",
             '<feature name="org.gnu.gdb.i386.core">']
    for n, (name, bits, kind) in enumerate(regs):
        lines.append(f'<reg name="{name}" bitsize="{bits}" type="{kind}" regnum="{n}"/>')
    lines += ["</feature>", '<feature name="org.gnu.gdb.i386.sse">']
    for i in range(16):
        lines.append(f'<reg name="xmm{i}" bitsize="128" type="uint128" regnum="{XMM0 + i}"/>')
    lines.append(f'<reg name="mxcsr" bitsize="32" type="int" group="vector" regnum="{MXCSR}"/>')
    lines += ["</feature>", "</target>"]
    return ("\n".join(lines) + "\n").encode()


LAYOUT = GdbLayout(xml=_xml(),
                   sizes=(64,) * 17 + (32,) * 7 + (80,) * 8 + (32,) * 8 + (128,) * 16 + (32,),
                   pc=RIP, hw_breakpoints=4)


def read_registers(kvm: KvmVCpu) -> list[int]:
    regs, sregs, fpu = kvm.regs, kvm.sregs, kvm.fpu
    values = [getattr(regs, n) for n in GPRS] + [regs.rip, regs.rflags & 0xFFFF_FFFF]
    values += [getattr(sregs, n).selector for n in SEGMENTS]
    values += [int.from_bytes(bytes(fpu.fpr[i])[:10], "little") for i in range(8)]
    ftag = 0
    for i in range(8):
        ftag |= (0b00 if fpu.ftwx >> i & 1 else 0b11) << (2 * i)
    values += [fpu.fcw, fpu.fsw, ftag, 0, fpu.last_ip & 0xFFFF_FFFF, 0,
               fpu.last_dp & 0xFFFF_FFFF, fpu.last_opcode]
    values += [int.from_bytes(bytes(fpu.xmm[i]), "little") for i in range(16)]
    values.append(fpu.mxcsr)
    return values


def write_register(kvm: KvmVCpu, number: int, value: int) -> None:
    if not 0 <= number < len(LAYOUT.sizes):
        raise InvalidInput(f"x86_64 has no gdb register {number}")
    if number <= EFLAGS:
        regs = kvm.regs
        name = GPRS[number] if number < 16 else "rip" if number == RIP else "rflags"
        setattr(regs, name, value)
        kvm.set_regs(regs)
        return
    fpu: st.KvmFpu = kvm.fpu
    if ST0 <= number < FCTRL:
        data = value.to_bytes(10, "little") + bytes(6)
        for k, b in enumerate(data):
            fpu.fpr[number - ST0][k] = b
    elif number == FCTRL:
        fpu.fcw = value
    elif number == FCTRL + 1:
        fpu.fsw = value
    elif number == FCTRL + 4:
        fpu.last_ip = value
    elif number == FCTRL + 6:
        fpu.last_dp = value
    elif number == FCTRL + 7:
        fpu.last_opcode = value
    elif XMM0 <= number < MXCSR:
        for k, b in enumerate(value.to_bytes(16, "little")):
            fpu.xmm[number - XMM0][k] = b
    elif number == MXCSR:
        fpu.mxcsr = value
    else:
        raise Unsupported(f"gdb register {number} of x86_64 cannot be written")
    kvm.set_fpu(fpu)


def debug_control(config: GuestDebug) -> tuple[int, tuple[int, ...]]:
    """KVM_SET_GUEST_DEBUG's control word and DR0-DR7 for ``config``."""
    if config.sw_breakpoints or config.watchpoints:
        raise Unsupported("x86_64 offers hardware breakpoints and steps only (see "
                          "pyaxvisor.arch.x86_64.gdb)")
    if len(config.hw_breakpoints) > 4:
        raise Unsupported("x86 has four debug address registers: at most four hardware "
                          "breakpoints")
    if not config.active:
        return 0, ()
    dr = [0] * 8
    dr7 = DR7_BASE
    for i, addr in enumerate(config.hw_breakpoints):
        dr[i] = addr
        dr7 |= 1 << (2 * i)  # L_i; RW_i = 00 (execution), LEN_i = 00
    dr[7] = dr7
    control = KVM_GUESTDBG_ENABLE
    if config.step:
        control |= KVM_GUESTDBG_SINGLESTEP
    if config.hw_breakpoints:
        control |= KVM_GUESTDBG_USE_HW_BP
    return control, tuple(dr)


def debug_stop(pc: int, dr6: int, config: GuestDebug) -> DebugStop:
    """The debugger's stop a KVM_EXIT_DEBUG (#DB) means: B0-B3 of DR6 name the
    hardware breakpoint hit; otherwise the step ended."""
    if dr6 & 0xF and dr6 & ((1 << len(config.hw_breakpoints)) - 1):
        return DebugStop("breakpoint", pc)
    return DebugStop("step", pc)

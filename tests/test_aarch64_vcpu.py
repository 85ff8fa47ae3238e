"""The AArch64 vCPU on the software EL2, driven by small guests assembled here.

Each test checks what real hardware bits produce: exit reasons decoded from
ESR_EL2/FAR_EL2/HPFAR_EL2, register values both ways, guest memory contents.
"""

from __future__ import annotations

import threading
import time

import pytest
from aarch64_machine import DTB, RAM, Machine
from machines import machine_fixture, on_another_host_cpu

from pyaxvisor.arch.aarch64.exception import UnhandledTrap
from pyaxvisor.arch.aarch64.pcpu import Aarch64PerCpu, hardware_features
from pyaxvisor.errors import BadState
from pyaxvisor.mm import GuestPhysAddr, MappingFlags
from pyaxvisor.vcpu import (
    AccessWidth,
    CpuUp,
    Halt,
    Hypercall,
    MmioRead,
    MmioWrite,
    Nothing,
    PerCpu,
    SysRegRead,
    SystemDown,
    VCpuState,
)

W = AccessWidth
G = GuestPhysAddr
DEV = 0x0900_0000


machine = machine_fixture(Machine)


def test_hardware_support_is_read_from_id_registers():
    el2, vhe = hardware_features()
    assert el2 is True          # Cortex-A72: ID_AA64PFR0_EL1.EL2 = 1
    assert vhe is False         # ARMv8.0: ID_AA64MMFR1_EL1.VH = 0
    assert Aarch64PerCpu.has_hardware_support()


def test_percpu_enable_installs_and_restores_vbar_el2_and_hcr():
    pc = PerCpu(Aarch64PerCpu)
    pc.init(0)
    engine = pc.arch.engine
    engine.write_sysreg("VBAR_EL2", 0x1234_0000)
    pc.hardware_enable()
    assert engine.read_sysreg("VBAR_EL2") == 0xFFFF_0000_0000_0000
    # VM | IMO | FMO | TSC | RW
    assert engine.read_sysreg("HCR_EL2") == 0x8008_0019
    pc.hardware_disable()
    assert engine.read_sysreg("VBAR_EL2") == 0x1234_0000
    assert engine.read_sysreg("HCR_EL2") == 0


def test_bind_needs_virtualization_enabled_on_the_thread(machine):
    m = machine("spin", enable_percpu=False)
    with pytest.raises(BadState, match="hardware_enable"):
        m.vcpu.bind()
    assert m.vcpu.state is VCpuState.Invalid


def test_hypercalls_and_psci(machine):
    m = machine("hypercall")
    exit1 = m.vcpu.run()
    assert exit1 == Hypercall(0x12345, (1, 2, 3, 4, 5, 6))
    m.vcpu.set_return_value(0xABCDEF)
    # PSCI_VERSION and PSCI_FEATURES are answered in the vCPU; CPU_ON leaves it.
    exit2 = m.vcpu.run()
    assert exit2 == CpuUp(target_cpu=1, entry_point=G(m.symbols["secondary"]), arg=0xC0FFEE)
    exit3 = m.vcpu.run()
    assert exit3 == SystemDown(reset=False)
    assert m.result(0x00) == DTB                 # x0 = DTB address at entry
    assert m.result(0x08) == 0xABCDEF            # the hypercall's return value
    assert m.result(0x10) == 0x10001             # PSCI 1.1
    assert m.result(0x18) == 0                   # CPU_ON (64-bit) is implemented
    assert m.result(0x20) == 0                   # CPU_ON result: SUCCESS
    assert m.result(0x28) == (1 << 64) - 1       # unknown call: NOT_SUPPORTED (-1)


def test_smc_advances_pc_but_hvc_does_not(machine):
    m = machine("hypercall")
    m.vcpu.run()                          # the plain HVC
    pc_after_hvc = m.vcpu.arch.ctx.elr
    hvc_at = m.image.index((0xD4000002).to_bytes(4, "little"))
    assert pc_after_hvc == RAM + hvc_at + 4
    m.vcpu.run()                          # CPU_ON
    m.vcpu.run()                          # SYSTEM_OFF by SMC: PC stepped past the SMC
    smc = (0xD4000003).to_bytes(4, "little")
    last_smc = m.image.rindex(smc)
    assert m.vcpu.arch.ctx.elr == RAM + last_smc + 4


def test_mmio_reads_and_writes(machine):
    m = machine("mmio")
    v = m.vcpu
    assert v.run() == MmioWrite(G(DEV), W.Byte, 0x41)
    assert v.run() == MmioWrite(G(DEV + 8), W.Qword, 0x1122334455667788)
    assert v.run() == MmioWrite(G(DEV + 2), W.Word, 0)          # from XZR
    e = v.run()
    assert e == MmioRead(G(DEV + 4), W.Byte, 3, W.Qword, True)  # LDRSB X3
    v.complete_read(0x80)
    e = v.run()
    assert e == MmioRead(G(DEV + 6), W.Word, 4, W.Dword, True)  # LDRSH W4
    v.complete_read(0x8001)
    e = v.run()
    assert e == MmioRead(G(DEV + 0x10), W.Dword, 5, W.Dword, False)
    v.complete_read(0xFFFF_FFFF_8765_4321)                      # only 32 bits count
    assert v.run() == MmioRead(G(DEV + 0x18), W.Qword, 6, W.Qword, False)
    v.complete_read(0xDEAD_BEEF_CAFE_F00D)
    assert v.run() == MmioRead(G(DEV + 0x20), W.Byte, 7, W.Dword, False)
    v.complete_read(0x1FF)
    # an IPA equal to a host physical address is not host memory: it is MMIO
    assert v.run() == MmioRead(G(0x40_0000_0000), W.Qword, 9, W.Qword, False)
    v.complete_read(0x5151)
    with pytest.raises(UnhandledTrap, match="ISV") as info:
        v.run()                                                  # LDP from MMIO
    assert "x21" in str(info.value).lower()                      # register dump
    assert v.state is VCpuState.Invalid
    assert m.result(0x00) == 0xFFFF_FFFF_FFFF_FF80
    assert m.result(0x08) == 0x0000_0000_FFFF_8001              # W register: upper half 0
    assert m.result(0x10) == 0x8765_4321
    assert m.result(0x18) == 0xDEAD_BEEF_CAFE_F00D
    assert m.result(0x20) == 0xFF
    assert m.result(0x28) == 0x5151


@pytest.mark.parametrize("in_cpu", [True, False], ids=["in-cpu", "via-python"])
def test_guest_exceptions_go_to_its_own_vectors_and_irq_injection(machine, in_cpu):
    """The guest's SVC and undefined instruction reach its EL1 vectors with the same
    syndromes, return addresses and stack whether the CPU takes them itself (QEMU's
    exception entry) or hands them to Python (deliver_to_el1)."""
    m = machine("exceptions")
    v = m.vcpu
    engine = v.arch._require_engine()
    engine.deliver_in_cpu = in_cpu
    before = engine.exceptions_delivered
    done = threading.Event()

    def inject_later():
        time.sleep(0.05)
        v.inject_interrupt(27)
        done.set()

    t = threading.Thread(target=inject_later)
    t.start()
    exits = []
    while True:
        e = v.run()
        exits.append(e)
        if isinstance(e, Hypercall):
            break
        assert isinstance(e, Nothing)  # the kick from the injecting thread
    t.join()
    assert isinstance(exits[-1], Hypercall)
    assert v.arch.ctx.elr == m.symbols["irq_done"]              # the IRQ handler's HVC
    svc_at = m.symbols["user"]                                  # svc #0x42 is user's first
    assert m.result(0x30) == 2                                  # two synchronous exceptions
    assert m.result(0x00) == 0x5600_0042                        # ESR: EC SVC64, IL, imm 0x42
    assert m.result(0x08) == svc_at + 4                         # ELR: after the SVC
    assert m.result(0x10) == 0x0200_0000                        # ESR: EC 0 (unknown), IL
    assert m.result(0x18) == svc_at + 4                         # ELR: the undefined HVC
    assert m.result(0x38) == 0x4010_0000                        # handler ran on SP_EL1
    assert svc_at + 8 <= m.result(0x40) <= svc_at + 16          # IRQ taken in the spin loop
    assert m.result(0x48) == 0x5EED
    assert v.arch.pending_vectors == [27]
    assert v.arch.guest_exceptions == 2
    assert v.arch.served_counts().guest_exceptions == 2
    assert engine.exceptions_delivered - before == (2 if in_cpu else 0)


def test_timer_wfi_and_trapped_id_register(machine):
    tid3 = 1 << 18
    m = machine("wfi_timer", extra_hcr=tid3)
    v = m.vcpu
    writes = []
    v.arch.on_timer_write = lambda cpu, timer: writes.append((cpu, timer))
    assert v.run() == Halt()
    assert m.result(0x00) == 62_500_000
    start, cval, now = m.result(0x08), m.result(0x18), m.result(0x20)
    assert m.result(0x10) == 0b101                               # ENABLE | ISTATUS
    assert cval - start >= 6250 and now >= cval
    assert writes == [(0, 0), (0, 0)]                            # TVAL then CTL, virtual
    ctl, vcval, _pctl, _pcval = v.arch.timer_state()
    assert (ctl, vcval) == (1, cval)
    e = v.run()
    # MRS X8, ID_AA64MMFR0_EL1: op0 3 op1 0 CRn 0 CRm 7 op2 0 -> ISS address 0x300E
    assert e == SysRegRead(0x30_000E, 8)
    v.complete_read(0x1122)
    assert isinstance(v.run(), Hypercall)
    assert m.result(0x28) == 0x1122


def test_kick_preempts_a_spinning_guest(machine):
    m = machine("spin")
    v = m.vcpu
    threading.Timer(0.05, v.arch.kick).start()
    assert v.run() == Nothing()
    first = m.result(0)
    assert first > 1000
    assert v.arch.ctx.x[0] in (first, first + 1)
    threading.Timer(0.02, v.arch.kick).start()
    assert v.run() == Nothing()
    assert m.result(0) > first                                   # it carried on


def test_unbind_and_bind_on_another_host_cpu_keeps_state(machine):
    m = machine("spin")
    v = m.vcpu
    threading.Timer(0.03, v.arch.kick).start()
    v.run()
    count = m.result(0)
    engine0 = v.arch._engine
    engine0.write_cp(3, 0, 12, 0, 0, 0x4000_0800)               # VBAR_EL1
    engine0.write_cp(3, 0, 13, 0, 4, 0x7777)                    # TPIDR_EL1
    v.unbind()

    def other_cpu() -> dict[str, object]:
        v.bind()
        eng = v.arch._engine
        result = {"vbar": eng.read_cp(3, 0, 12, 0, 0), "tpidr": eng.read_cp(3, 0, 13, 0, 4),
                  "x0": v.arch.ctx.x[0]}
        threading.Timer(0.03, v.arch.kick).start()
        result["exit"] = v.run()
        v.unbind()
        return result

    result = on_another_host_cpu(Aarch64PerCpu, 1, other_cpu)
    assert result["vbar"] == 0x4000_0800
    assert result["tpidr"] == 0x7777
    assert result["exit"] == Nothing()
    assert m.result(0) > count
    v.bind()  # back on this thread for the fixture's teardown


@pytest.mark.parametrize("how", ["write", "columns", "unreported"])
def test_code_a_device_rewrote_is_run_anew_once_the_write_is_reported(machine, how):
    """A DMA write into a page the CPU translated code from: once the address space
    reports it (``AddrSpace.written``, which ``write`` calls, reaching the vCPU's
    ``guest_ram_written``), the engine drops its code and the guest runs the new
    instructions; a write nobody reports is not seen (the old translation runs)."""
    m = machine("dma_code")
    v = m.vcpu
    if how != "unreported":
        m.space.add_write_listener(v.arch.guest_ram_written)
    assert v.run() == Hypercall(1, (0, 0, 0, 0, 0, 0))
    f = m.symbols["f"]
    new_f = (0xD2800040).to_bytes(4, "little")      # mov x0, #2 (then the same ret)
    if how == "write":
        m.space.write(G(f), new_f)
    else:
        m.space.view(G(f), 4)[:] = new_f
        if how == "columns":  # a device's pieces as two tuples (virtio-blk's data path)
            m.space.written_columns((f,), (4,))
    assert v.run() == Hypercall(2, (0, 0, 0, 0, 0, 0))
    assert m.result(0x00) == 1
    assert m.result(0x08) == (1 if how == "unreported" else 2)
    dropped = v.arch._require_engine().xsync.stats["xsync_dma_code_pages"]
    assert dropped == (0 if how == "unreported" else 1)


def test_a_walk_after_the_table_page_moved_and_the_tlb_was_flushed_reads_the_new_table(
        machine):
    """The engine keeps the stage-2 translations of stage-1 table addresses
    (patch ptw-s2-cache); the hypervisor's TLB flush must drop them."""
    m = machine("s2_table_swap")
    table, mark = 0x5000_0000, RAM + 0x20000
    rw = MappingFlags.READ | MappingFlags.WRITE
    block = 0x701                                   # 1 GiB block: AF, inner shareable
    first = m.hal.alloc_frames_or_raise(1, what="first table")
    second = m.hal.alloc_frames_or_raise(1, what="second table")
    m.space.map_linear(G(table), first, 0x1000, rw)
    m.space.write(G(table), (0).to_bytes(8, "little") + (RAM | block).to_bytes(8, "little")
                  + (RAM | block).to_bytes(8, "little"))  # entry 2: the alias
    m.space.write_u64(G(mark), 0x1122_3344_5566_7788)
    stop = m.vcpu.run()
    assert isinstance(stop, Hypercall) and stop.nr == 0x5A5A
    assert m.result(0x00) == 0x1122_3344_5566_7788
    m.space.remove_region(G(table))
    m.space.map_linear(G(table), second, 0x1000, rw)
    m.space.write(G(table), (0).to_bytes(8, "little") + (RAM | block).to_bytes(8, "little")
                  + (0).to_bytes(8, "little"))     # the alias is gone
    m.vcpu.arch.request_tlb_flush()
    assert m.vcpu.run() == SystemDown(reset=False)
    assert m.result(0x18) == 1
    assert m.result(0x08) == 0                      # the second read did not complete
    esr = m.result(0x10)
    assert esr >> 26 == 0x25                        # data abort from the current EL
    assert esr & 0x3F == 0x05                       # translation fault, level 1
    m.hal.dealloc_frames(first)
    m.hal.dealloc_frames(second)

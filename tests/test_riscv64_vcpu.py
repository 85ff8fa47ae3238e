"""The RISC-V vCPU on the software M-mode, driven by small S-mode guests.

What is checked is what the guest and the VM observe: exit reasons decoded from the
guest's instructions, registers and memory after the exits are completed, what the
guest's own trap handler recorded, and the engine's memory map against the G-stage
table.
"""

from __future__ import annotations

import threading
import time

import pytest
from machines import machine_fixture, on_another_host_cpu
from riscv64_machine import BUF, DEV, DTB, RAM, RESULTS, FakePlatform, Machine

from pyaxvisor.arch.riscv64.memory import ram_mappings
from pyaxvisor.arch.riscv64.pcpu import (
    MEDELEG_GUEST,
    RiscvFeatures,
    RISCVPerCpu,
    hardware_features,
)
from pyaxvisor.arch.riscv64.vcpu import (
    RISCVVCpu,
    RISCVVCpuCreateConfig,
    RISCVVCpuSetupConfig,
)
from pyaxvisor.engine.tcg.exec_lock import ExecLock
from pyaxvisor.engine.tcg.riscv64_isa import INTERRUPT, MIP_SSIP, MIP_STIP, MSTATUS_TW, Csr
from pyaxvisor.errors import BadState, InvalidInput
from pyaxvisor.hal.memory import DEFAULT_PHYS_BASE
from pyaxvisor.mm import AccessFlags, GuestPhysAddr, MappingFlags
from pyaxvisor.mm.page_table.gstage import HGATP_MODE_SV39X4, HGATP_MODE_SV48X4
from pyaxvisor.vcpu import (
    AccessWidth,
    CpuDown,
    Halt,
    Hypercall,
    InCpuWindow,
    MmioRead,
    MmioWrite,
    NestedPageFault,
    Nothing,
    PerCpu,
    SystemDown,
    VCpu,
    VCpuState,
)

W = AccessWidth
G = GuestPhysAddr
U64 = (1 << 64) - 1


machine = machine_fixture(Machine)


# -- the host CPU -------------------------------------------------------------------------
def test_no_h_extension_so_the_software_path_is_used(monkeypatch):
    features = hardware_features()
    assert features.misa == 0x8000_0000_0014_112D            # RV64ACDFIMSU
    assert not features.h_extension
    assert features.supervisor and features.user
    assert RISCVPerCpu.has_hardware_support()                # through the software path
    import pyaxvisor.arch.riscv64.pcpu as pcpu
    monkeypatch.setattr(pcpu, "_features", RiscvFeatures.from_misa(features.misa & ~(1 << 18)))
    assert not RISCVPerCpu.has_hardware_support()            # no S-mode, no H: nothing
    monkeypatch.setattr(pcpu, "_features", RiscvFeatures.from_misa(1 << 7))
    assert RISCVPerCpu.has_hardware_support()                # H alone would do


def test_percpu_enable_delegates_and_traps_wfi_and_disable_restores():
    pc = PerCpu(RISCVPerCpu)
    pc.init(0)
    engine = pc.arch.engine
    engine.set_csr(Csr.MEDELEG, 0x100)
    pc.hardware_enable()
    assert engine.csr(Csr.MEDELEG) == MEDELEG_GUEST == 0xB159  # 0,3,4,6,8,12,13,15
    assert engine.csr(Csr.MIDELEG) == 0x222                     # SSIP, STIP, SEIP
    assert engine.csr(Csr.MSTATUS) & MSTATUS_TW
    assert engine.csr(Csr.MCOUNTEREN) == 0b111
    pc.hardware_disable()
    assert engine.csr(Csr.MEDELEG) == 0x100
    assert engine.csr(Csr.MIDELEG) == 0
    assert not engine.csr(Csr.MSTATUS) & MSTATUS_TW
    pc.close()


def test_bind_needs_virtualization_enabled_on_the_thread(machine):
    m = machine("spin", enable_percpu=False)
    with pytest.raises(BadState, match="hardware_enable"):
        m.vcpu.bind()
    assert m.vcpu.state is VCpuState.Invalid


# -- entry, configuration ------------------------------------------------------------------
@pytest.mark.parametrize("mode,hgatp_mode", [("sv39x4", HGATP_MODE_SV39X4),
                                             ("sv48x4", HGATP_MODE_SV48X4)])
def test_entry_state_and_hgatp(machine, mode, hgatp_mode):
    m = machine("spin", hart_id=2, gstage_mode=mode, platform=FakePlatform(harts={2: 0}))
    engine = m.arch.engine
    assert engine.gpr(10) == 2 and engine.gpr(11) == DTB
    assert engine.pc == RAM and engine.priv == 1             # S-mode
    assert engine.csr(Csr.SATP) == 0
    assert engine.csr(Csr.SSTATUS) & 0b10 == 0               # interrupts off
    root = int(m.space.root_paddr)
    assert m.arch.hgatp == hgatp_mode << 60 | 1 << 44 | root >> 12   # VMID = vm_id 1


def test_setup_refuses_a_mode_other_than_the_space_table(machine):
    m = machine("spin", enable_percpu=False)
    v = VCpu(1, 1, RISCVVCpu, RISCVVCpuCreateConfig(hart_id=1, dtb_addr=0, space=m.space))
    with pytest.raises(InvalidInput, match=r"sv48x4.*Sv39x4"):
        v.setup(G(RAM), m.space.root_paddr, RISCVVCpuSetupConfig(gstage_mode="sv48x4"))
    v2 = VCpu(1, 2, RISCVVCpu, RISCVVCpuCreateConfig(hart_id=2, dtb_addr=0, space=m.space))
    with pytest.raises(InvalidInput, match="not the root"):
        v2.setup(G(RAM), m.space.root_paddr + 0x4000, RISCVVCpuSetupConfig())


# -- MMIO decode --------------------------------------------------------------------------
def test_mmio_every_width_sign_extension_x0_unaligned_and_compressed(machine):
    m = machine("mmio")
    v, s = m.vcpu, m.symbols
    assert m.run() == MmioWrite(G(DEV), W.Byte, 0x41)
    assert v.arch.pc == s["after_sb"]                        # 4-byte instruction
    assert m.run() == MmioWrite(G(DEV + 8), W.Qword, 0x1122334455667788)
    assert m.run() == MmioWrite(G(DEV + 2), W.Word, 0)      # from x0
    assert m.run() == MmioWrite(G(DEV + 4), W.Dword, 0x55667788)
    reads = [(MmioRead(G(DEV + 1), W.Byte, 10, W.Qword, True), 0x80),
             (MmioRead(G(DEV + 1), W.Byte, 11, W.Qword, False), 0x80),
             (MmioRead(G(DEV + 2), W.Word, 12, W.Qword, True), 0x8001),
             (MmioRead(G(DEV + 2), W.Word, 13, W.Qword, False), 0x8001),
             (MmioRead(G(DEV + 4), W.Dword, 14, W.Qword, True), 0xFFFF_FFFF_8765_4321),
             (MmioRead(G(DEV + 4), W.Dword, 15, W.Qword, False), 0x8765_4321),
             (MmioRead(G(DEV + 8), W.Qword, 16, W.Qword, False), 0xDEAD_BEEF_CAFE_F00D),
             (MmioRead(G(DEV + 12), W.Dword, 0, W.Qword, True), 0x1234),    # x0
             (MmioRead(G(DEV + 3), W.Dword, 17, W.Qword, True), 0x8000_0001)]  # unaligned
    for expected, value in reads:
        assert m.run() == expected
        v.complete_read(value)
    assert v.arch.get_gpr(0) == 0
    assert m.run() == MmioRead(G(DEV + 16), W.Dword, 11, W.Qword, True)    # c.lw
    assert v.arch.pc == s["after_clw"]                       # 2-byte instruction
    v.complete_read(0xF000_0000)
    assert m.run() == MmioRead(G(DEV + 24), W.Qword, 12, W.Qword, False)   # c.ld
    v.complete_read(0x0102_0304_0506_0708)
    assert m.run() == MmioWrite(G(DEV + 32), W.Dword, 0xA5A5_A5A5)         # c.sw
    assert m.run() == MmioWrite(G(DEV + 40), W.Qword, 0x0123_4567_89AB_CDEF)  # c.sd
    assert m.run() == MmioRead(G(DEV + 0x104), W.Dword, 15, W.Qword, True)  # c.lwsp
    assert v.arch.pc == s["after_clwsp"]
    v.complete_read(0x7FFF_FFFF)
    assert m.run() == MmioRead(G(DEV + 0x108), W.Qword, 9, W.Qword, False)  # c.ldsp
    v.complete_read(0x55)
    assert m.run() == MmioWrite(G(DEV + 0x10C), W.Dword, 0xA5A5_A5A5)      # c.swsp
    assert m.run() == MmioWrite(G(DEV + 0x110), W.Qword, 0x0123_4567_89AB_CDEF)  # c.sdsp
    assert isinstance(m.run(), Hypercall)
    assert [m.result(8 * i) for i in range(12)] == [
        U64 - 0x7F, 0x80, U64 - 0x7FFE, 0x8001, 0xFFFF_FFFF_8765_4321, 0x8765_4321,
        0xDEAD_BEEF_CAFE_F00D, 0xFFFF_FFFF_8000_0001, 0xFFFF_FFFF_F000_0000,
        0x0102_0304_0506_0708, 0x7FFF_FFFF, 0x55]


def test_mmio_through_the_guests_own_sv39_page_tables(machine):
    m = machine("mmio_paged")
    v = m.vcpu
    assert m.run() == MmioRead(G(DEV + 8), W.Dword, 10, W.Qword, True)      # 1 GiB page
    assert m.arch.engine.csr(Csr.SATP) >> 60 == 8                           # paging on
    v.complete_read(0x8765_4321)
    assert m.run() == MmioWrite(G(DEV + 0x2010), W.Dword, 0x8765_4321)      # 4 KiB page
    assert m.run() == MmioRead(G(DEV + 16), W.Qword, 11, W.Qword, False)    # c.ld
    v.complete_read(0x1122)
    assert isinstance(m.run(), Hypercall)
    assert (m.result(0), m.result(8)) == (0xFFFF_FFFF_8765_4321, 0x1122)


def test_unmapped_accesses_fault_into_the_hypervisor_never_host_memory(machine):
    m = machine("faults")
    v, s = m.vcpu, m.symbols
    # The host arena's first bytes: what the guest would read if the engine had mapped
    # the arena at its physical address.
    m.hal.memory.write(DEFAULT_PHYS_BASE, b"HOSTHOST")
    e = m.run()
    assert e == MmioRead(G(DEFAULT_PHYS_BASE), W.Qword, 10, W.Qword, False)
    v.complete_read(0x5151)
    assert isinstance(m.run(), Hypercall)
    assert m.result(0) == 0x5151
    cases = {"fetch": NestedPageFault(G(DEV), AccessFlags.EXECUTE),
             "amo": NestedPageFault(G(DEV), AccessFlags.READ | AccessFlags.WRITE),
             "lr": NestedPageFault(G(DEV + 8), AccessFlags.READ | AccessFlags.WRITE),
             "fp_load": NestedPageFault(G(DEV + 16), AccessFlags.READ),
             "fp_store": NestedPageFault(G(DEV + 24), AccessFlags.WRITE)}
    for label, expected in cases.items():
        m.arch.engine.pc = s[label]
        assert m.run() == expected, label
    assert m.arch.pc == s["fsd_insn"]                        # not stepped: it would fault again


# -- traps the guest handles, wfi, the timer, IPIs ---------------------------------------
def test_guest_exceptions_go_to_its_stvec_without_exits(machine):
    m = machine("guest_traps")
    e = m.run()
    assert e == Hypercall(nr=7, args=(5, e.args[1], 0, 0, 0, 0))  # the handler ran 5 times
    s = m.symbols
    log = [tuple(m.result(0x100 + 0x18 * i + k) for k in (0, 8, 16)) for i in range(5)]
    assert log == [(2, s["illegal"], 0),                     # csrr mscratch in S-mode
                   (3, s["bkpt"], 0),                        # ebreak
                   (8, s["user"], 0),                        # ecall from U-mode
                   (13, s["pagefault"], 0x4000_1234),        # load page fault
                   # QEMU 5.0 reports a misaligned AMO as a misaligned load (4), not 6
                   (4, s["misaligned"], RESULTS + 1)]
    stats = m.arch.engine.stats
    assert stats["delivered"] == 5 and stats["breakpoints"] == 1
    assert m.arch.served_counts().guest_exceptions == 5


def test_wfi_is_a_halt_past_the_instruction(machine):
    m = machine("wfi")
    assert m.run() == Halt()
    assert m.arch.pc == m.symbols["after_wfi"]
    assert not m.arch.interrupt_pending()
    assert isinstance(m.run(), Hypercall)


def test_sbi_timer_interrupt_after_a_halt(machine):
    platform = FakePlatform()
    m = machine("timer", platform=platform)
    m.space.write_u64(G(RESULTS + 0x48), 20_000)             # 2 ms at 10 MHz
    v = m.vcpu
    assert m.run() == Halt()                                 # wfi
    assert v.arch.pc == m.symbols["after_wfi"]
    cmp = m.result(0)
    assert v.arch.timer_compare == cmp and platform.timer_writes == [0]
    deadline = v.arch.timer_deadline()
    assert deadline == v.arch.config.time_base_ns + cmp * 100
    if time.monotonic_ns() < deadline - 200_000:
        assert not v.arch.timer_due(time.monotonic_ns())
        assert not v.arch.interrupt_pending()
    time.sleep(max(0, deadline - time.monotonic_ns()) / 1e9)
    assert v.arch.timer_due(time.monotonic_ns())
    assert v.arch.interrupt_pending()                        # STIE set, compare reached
    assert m.run() == SystemDown(reset=False)
    assert m.result(0x10) == 0                               # set_timer: SUCCESS
    assert m.result(0x20) == INTERRUPT | 5                   # supervisor timer interrupt
    assert m.result(0x28) == m.symbols["after_wfi"]          # taken right after the wfi
    assert m.result(0x30) >= cmp                             # time CSR past the compare
    assert m.result(0x38) & MIP_STIP                         # sip.STIP in the handler
    assert not m.result(0x50) & MIP_STIP                     # cleared by set_timer(-1)
    assert v.arch.timer_deadline() is None


class TimerPlatform(FakePlatform):
    """Raises the timer line from a host timer thread when the compare is reached."""

    vcpu: RISCVVCpu

    def timer_written(self, hart_id: int) -> None:
        super().timer_written(hart_id)
        deadline = self.vcpu.timer_deadline()
        if deadline is None:
            return

        def fire() -> None:
            if self.vcpu.timer_due(time.monotonic_ns()):
                self.vcpu.set_timer_line(True)

        threading.Timer(max(0, deadline - time.monotonic_ns()) / 1e9, fire).start()


def test_timer_interrupt_reaches_a_running_hart(machine):
    platform = TimerPlatform()
    m = machine("timer", platform=platform)
    platform.vcpu = m.arch
    m.space.write_u64(G(RESULTS + 0x40), 1)                  # spin instead of wfi
    m.space.write_u64(G(RESULTS + 0x48), 50_000)             # 5 ms
    assert m.run() == SystemDown(reset=False)           # no exit in between
    assert m.result(0x20) == INTERRUPT | 5
    assert m.result(0x30) >= m.result(0)
    assert platform.timer_writes == [0, 0]                   # set, then cancelled


def test_software_interrupt_from_another_thread(machine):
    m = machine("ipi")
    threading.Timer(0.03, m.arch.set_software_line, args=(True,)).start()
    assert m.run() == SystemDown(reset=False)
    assert m.result(0x00) == INTERRUPT | 1                   # supervisor software interrupt
    assert m.result(0x08) & MIP_SSIP
    assert not m.result(0x10) & MIP_SSIP                     # the guest acknowledged it
    assert not m.arch.interrupt_pending()
    m.arch.inject_interrupt(1)                               # again, between runs
    assert m.arch.pending_vectors == [1]
    assert m.arch.interrupt_pending()                        # SSIE is on: a wfi would wake
    assert m.arch.engine.csr(Csr.MIP) & MIP_SSIP             # the line reached mip
    with pytest.raises(InvalidInput):
        m.arch.inject_interrupt(3)


# -- running, binding --------------------------------------------------------------------
def test_kick_ends_a_run_soon_or_at_once(machine):
    m = machine("spin")
    v = m.vcpu
    v.arch.kick()                                            # before run(): at once
    assert m.run() == Nothing() and m.result(0) == 0
    threading.Timer(0.05, v.arch.kick).start()               # while the guest counts
    assert m.run() == Nothing()
    counted = m.result(0)
    assert counted > 1000 and v.arch.get_gpr(10) - counted in (0, 1)
    threading.Timer(0.02, v.arch.kick).start()
    assert m.run() == Nothing() and m.result(0) > counted    # it carried on


def test_unbind_and_bind_on_another_host_cpu_keeps_state(machine):
    m = machine("spin")
    v = m.vcpu
    threading.Timer(0.03, v.arch.kick).start()
    m.run()
    count = m.result(0)
    engine0 = v.arch.engine
    engine0.set_csr(Csr.SSCRATCH, 0x5C5C)
    engine0.set_csr(Csr.STVEC, RAM + 0x800)
    engine0.set_fprs([0x4000 + i for i in range(32)])
    engine0.set_gpr(20, 0xABCDEF)
    v.arch.set_software_line(True)
    v.unbind()

    def other_cpu() -> dict[str, object]:
        v.bind()
        eng = v.arch.engine
        seen = {"engine": eng, "csrs": (eng.csr(Csr.SSCRATCH), eng.csr(Csr.STVEC)),
                "fprs": eng.fprs(), "x20": eng.gpr(20), "ssip": eng.csr(Csr.MIP) & MIP_SSIP,
                "mappings": eng.mappings() == ram_mappings(m.space)}
        threading.Timer(0.03, v.arch.kick).start()
        seen["exit"] = m.run()
        v.unbind()
        return seen

    seen = on_another_host_cpu(RISCVPerCpu, 1, other_cpu)
    assert seen["engine"] is not engine0
    assert seen["csrs"] == (0x5C5C, RAM + 0x800)
    assert seen["fprs"] == [0x4000 + i for i in range(32)]
    assert seen["x20"] == 0xABCDEF
    assert seen["ssip"] and seen["mappings"]
    assert seen["exit"] == Nothing()
    assert m.result(0) > count
    v.bind()  # back on this thread for the fixture's teardown


def test_two_harts_share_an_exec_lock_and_both_make_progress(machine):
    m = machine("spin")
    lock = ExecLock(slice_s=0.002)
    m.arch.config.exec_lock = lock
    # hart 1 counts in its a0 only: li a0, 0; 1: addi a0, a0, 1; j 1b
    m.space.write(G(RAM + 0x400), bytes.fromhex("01451305" "1505" "f5bf"))

    def hart1() -> tuple[object, int]:
        v = VCpu(1, 1, RISCVVCpu, RISCVVCpuCreateConfig(hart_id=1, dtb_addr=0, space=m.space,
                                                         exec_lock=lock))
        v.setup(G(RAM + 0x400), m.space.root_paddr, RISCVVCpuSetupConfig())
        v.bind()
        threading.Timer(0.1, v.arch.kick).start()
        exit_reason = v.run()
        count = v.arch.get_gpr(10)
        v.unbind()
        return exit_reason, count

    threading.Timer(0.1, m.arch.kick).start()
    other = threading.Thread(target=lambda: result.append(on_another_host_cpu(RISCVPerCpu, 1,
                                                                             hart1)))
    result: list[tuple[object, int]] = []
    other.start()
    assert m.run() == Nothing()
    other.join()
    assert result[0][0] == Nothing()
    assert m.result(0) > 1000 and result[0][1] > 1000


def test_restart_after_hart_stop(machine):
    m = machine("restart", hart_id=0)
    v = m.vcpu
    assert m.run() == CpuDown()
    assert (m.result(0), m.result(8)) == (0, DTB)
    assert m.arch.engine.csr(Csr.SSTATUS) & 0b10                 # SIE was turned on
    v.arch.restart(RAM, 0xABC)
    assert m.run() == CpuDown()
    assert (m.result(0), m.result(8)) == (0, 0xABC)              # a0 = hart ID, a1 = opaque
    assert m.result(0x10) & 0b10 == 0 and m.result(0x18) == 0   # SIE off, satp 0


def test_registers_x0_and_bounds(machine):
    m = machine("spin")
    a = m.arch
    a.set_gpr(0, 5)
    a.set_gpr(31, 7)
    assert a.get_gpr(0) == 0 and a.get_gpr(31) == 7
    with pytest.raises(InvalidInput):
        a.set_gpr(32, 1)
    assert a.csr("sepc") == a.engine.csr(Csr.SEPC)
    with pytest.raises(InvalidInput, match="unknown CSR"):
        a.csr("nonsense")


# -- memory ------------------------------------------------------------------------------
def _engine_view(m: Machine) -> list[tuple[int, int, int]]:
    return [(x.gpa, x.size, x.perms) for x in m.arch.engine.mappings()]


def _gstage_view(m: Machine) -> list[tuple[int, int, int]]:
    """The G-stage leaves, merged where contiguous with equal rights (as UC_PROT)."""
    out: list[tuple[int, int, int]] = []
    for gpa, _hpa, size, flags in m.space.page_table.mappings():
        perms = (1 if flags & MappingFlags.READ else 0) | (2 if flags & MappingFlags.WRITE
                                                           else 0) \
            | (4 if flags & MappingFlags.EXECUTE else 0)
        if out and out[-1][0] + out[-1][1] == int(gpa) and out[-1][2] == perms:
            out[-1] = (out[-1][0], out[-1][1] + size, perms)
        else:
            out.append((int(gpa), size, perms))
    return out


def test_gstage_table_and_engine_mappings_agree_after_map_unmap_protect(machine):
    m = machine("memory")
    v, space = m.vcpu, m.space
    rwx = MappingFlags.READ | MappingFlags.WRITE | MappingFlags.EXECUTE
    assert _engine_view(m) == _gstage_view(m) == [(RAM, 16 << 20, 7)]
    space.map_ram(G(0x9000_0000), 2 << 20, rwx)
    space.write_u64(G(0x9000_0000), 0xE1E1)
    v.arch.sync_memory()
    assert _engine_view(m) == _gstage_view(m)
    assert (0x9000_0000, 2 << 20, 7) in _engine_view(m)
    space.write_u64(G(0x8004_0000), 0x600D)
    space.protect(G(0x8004_0000), 0x1000, MappingFlags.READ | MappingFlags.EXECUTE)
    v.arch.sync_memory()
    assert _engine_view(m) == _gstage_view(m) == [
        (RAM, 0x40000, 7), (0x8004_0000, 0x1000, 5), (0x8004_1000, (16 << 20) - 0x41000, 7),
        (0x9000_0000, 2 << 20, 7)]
    # a store to the read-only page: a write the VM sees, memory unchanged
    assert m.run() == MmioWrite(G(0x8004_0008), W.Qword, 0x600D)
    assert v.arch.pc == m.symbols["after_store"]
    assert space.read_u64(G(0x8004_0008)) == 0
    assert isinstance(m.run(), Hypercall)
    assert m.result(8) == 0xE1E1                             # the new region's RAM
    # remove the region while the guest runs: the next load is MMIO (run() resyncs)
    space.remove_region(G(0x9000_0000))
    assert _gstage_view(m) == _engine_view(m)[:3]            # the engine follows at run()
    assert m.run() == MmioWrite(G(0x8004_0008), W.Qword, 0x600D)
    assert m.run() == MmioRead(G(0x9000_0000), W.Qword, 11, W.Qword, False)
    assert _engine_view(m) == _gstage_view(m)
    v.complete_read(0x77)
    space.protect(G(0x8004_0000), 0x1000, rwx)
    space.set_region_mapped(G(RAM), False)                   # the whole RAM region out ...
    space.set_region_mapped(G(RAM), True)                    # ... and back
    assert isinstance(m.run(), Hypercall)
    assert _engine_view(m) == _gstage_view(m)
    assert m.result(8) == 0x77


# -- devices served inside the CPU --------------------------------------------------------
class _Device:
    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.fail = False

    def read(self, offset: int, width: AccessWidth, cpu: int) -> int:
        if self.fail:
            raise InvalidInput("device broke")
        self.log.append(("r", offset, width, cpu))
        return 0x1122_3344_5566_7788

    def write(self, offset: int, width: AccessWidth, value: int, cpu: int) -> None:
        self.log.append(("w", offset, width, value, cpu))


def test_devices_served_inside_the_cpu_count_accesses_and_keep_errors(machine):
    m = machine("in_cpu", hart_id=0)
    dev = _Device()
    assert m.arch.serve_in_cpu([InCpuWindow("mmio", DEV, 0x1000, dev.read, dev.write),
                                InCpuWindow("port", 0x60, 4, dev.read, dev.write)])
    assert isinstance(m.run(), Hypercall)               # no MMIO exits at all
    # Unicorn hands in-CPU windows 64-bit accesses as two 32-bit ones, low half first.
    assert dev.log == [("w", 0, W.Dword, 0x1234_5678, 0), ("r", 4, W.Dword, 0),
                       ("w", 8, W.Byte, 0x78, 0), ("r", 16, W.Dword, 0),
                       ("r", 20, W.Dword, 0)]
    assert m.arch.served_counts().accesses == (3, 2)
    assert (m.result(0), m.result(8)) == (0x5566_7788, 0x5566_7788_5566_7788)
    dev.fail = True
    m.arch.engine.pc = RAM
    with pytest.raises(InvalidInput, match="device broke"):
        m.run()


def test_sbi_calls_served_in_cpu_are_timed_when_asked(machine):
    m = machine("sbi_base")
    m.arch.serve_in_cpu([], timing=True)
    assert isinstance(m.run(), Hypercall)
    served = m.arch.served_counts()
    assert served.exits["SbiCall"] == 13 and served.exit_time["SbiCall"] > 0


def test_dbcn_buffer_in_rom_is_readable_not_writable(machine):
    m = machine("sbi_dbcn", platform=FakePlatform(console_input=b"zz"))
    m.space.protect(G(BUF), 0x1000, MappingFlags.READ)
    m.arch.sync_memory()
    assert m.run() == SystemDown(reset=False)
    assert m.result(0x40) == (-3) & U64                      # read into read-only RAM


def test_registers_set_before_setup_win_and_lines_raised_unbound_are_kept(machine):
    m = machine("restart")
    m.vcpu.unbind()
    v = VCpu(1, 1, RISCVVCpu, RISCVVCpuCreateConfig(hart_id=1, dtb_addr=DTB, space=m.space,
                                                     platform=FakePlatform(harts={1: 0})))
    v.set_gpr(11, 0xABC)                                     # a CpuUp's opaque, say
    v.setup(G(RAM), m.space.root_paddr, RISCVVCpuSetupConfig())
    v.arch.set_software_line(True)                           # an IPI before it runs
    v.bind()
    try:
        assert v.arch.engine.csr(Csr.MIP) & MIP_SSIP
        assert v.run() == CpuDown()
        assert (m.result(0), m.result(8)) == (1, 0xABC)      # a0 = hart ID by default
    finally:
        v.unbind()
        v.arch.close()
    m.vcpu.bind()


@pytest.mark.parametrize("how", ["write", "columns", "unreported"])
def test_code_a_device_rewrote_is_run_anew_once_the_write_is_reported(machine, how):
    """A DMA write into a page the hart translated code from, then the guest's FENCE.I:
    reported (``AddrSpace.written`` reaching ``guest_ram_written``), the new code
    runs; unreported, the hart's FENCE.I alone (no other hart ran) keeps the old
    translation."""
    m = machine("dma_code")
    if how != "unreported":
        m.space.add_write_listener(m.arch.guest_ram_written)
    assert m.run().nr == 1
    f = m.symbols["f"]
    new_f = (0x00200513).to_bytes(4, "little")      # li a0, 2 (addi a0, zero, 2)
    if how == "write":
        m.space.write(GuestPhysAddr(f), new_f)
    else:
        m.space.view(GuestPhysAddr(f), 4)[:] = new_f
        if how == "columns":  # a device's pieces as two tuples (virtio-blk's data path)
            m.space.written_columns((f,), (4,))
    assert m.run().nr == 2
    assert m.result(0x00) == 1
    assert m.result(0x08) == (1 if how == "unreported" else 2)

"""SBI v2.0 as pyaxvisor's M-mode offers it, called by small S-mode guests.

Each guest stores a0/a1 after every call at RESULTS (``SAVE off`` in
``guests/riscv64/sbi.inc``); the tests check those, the exits the calls produce and
what reached the platform.
"""

from __future__ import annotations

from machines import machine_fixture
from riscv64_machine import BUF, DTB, RAM, FakePlatform, Machine

from pyaxvisor import __version__
from pyaxvisor.arch.riscv64.sbi import (
    HYPERCALL_EID,
    IMPL_ID,
    LoneHart,
    Sbi,
    SbiError,
)
from pyaxvisor.mm import GuestPhysAddr
from pyaxvisor.vcpu import (
    CpuDown,
    CpuUp,
    Halt,
    Hypercall,
    SendIPI,
    SystemDown,
)

U64 = (1 << 64) - 1
G = GuestPhysAddr


def err(code: int) -> int:
    return code & U64


machine = machine_fixture(Machine)


def pair(m: Machine, off: int) -> tuple[int, int]:
    return m.result(off), m.result(off + 8)


def test_base_extension_probe_pmu_unknown_and_hypercall(machine):
    m = machine("sbi_base", hart_id=3, platform=FakePlatform(harts={3: 0}))
    e = m.run()
    assert e == Hypercall(nr=0x42, args=(11, 12, 13, 14, 15, 16))
    m.vcpu.set_return_value(0x77)
    assert m.run() == SystemDown(reset=False)
    assert pair(m, 0x100) == (3, DTB)                        # a0 = hart ID, a1 = DTB
    assert pair(m, 0x00) == (0, 0x0200_0000)                 # spec version 2.0
    assert pair(m, 0x10) == (0, IMPL_ID) == (0, 0x5059_4158)
    major, minor = (int(x) for x in __version__.split(".")[:2])
    assert pair(m, 0x20) == (0, major << 16 | minor)
    assert pair(m, 0x30) == (0, 1)                           # TIME available
    assert pair(m, 0x40) == (0, 0)                           # PMU not available
    assert pair(m, 0x50) == (0, 0)                           # unknown extension
    assert pair(m, 0x60) == (0, 1)                           # legacy shutdown
    engine = m.arch.engine
    from pyaxvisor.engine.tcg.riscv64_isa import Csr
    assert pair(m, 0x70) == (0, engine.csr(Csr.MVENDORID)) == (0, 0)
    assert pair(m, 0x80) == (0, engine.csr(Csr.MARCHID))
    assert pair(m, 0x90) == (0, engine.csr(Csr.MIMPID))
    assert m.result(0xA0) == err(SbiError.NOT_SUPPORTED)     # BASE FID 7
    assert m.result(0xB0) == err(SbiError.NOT_SUPPORTED)     # PMU
    assert m.result(0xC0) == err(SbiError.NOT_SUPPORTED)     # unknown EID
    assert pair(m, 0xD0) == (0x77, 0)                        # the hypercall's result
    assert m.result(0xE0) == err(SbiError.NOT_SUPPORTED)
    assert m.arch.sbi.unknown == {(0x10, 7): 1, (0x0BADBEEF, 3): 1, (0x0A00_0000, 0): 1}
    served = m.arch.served_counts()
    assert served.exits["SbiCall"] == 14                     # completed without an exit
    assert 0x0A00_0000 <= HYPERCALL_EID <= 0x0AFF_FFFF


def test_legacy_extensions(machine):
    platform = FakePlatform(console_input=b"k")
    m = machine("sbi_legacy", platform=platform)
    e = m.run()
    assert e == SendIPI(target_cpu=0, target_cpu_aux=0b11, send_to_all=False,
                        send_to_self=False, vector=0)
    assert m.run() == SystemDown(reset=False)
    assert platform.out == b"Hi"
    assert pair(m, 0x00) == (0, 0x1111)                      # a1 preserved
    assert m.result(0x10) == ord("k")
    assert m.result(0x20) == U64                             # no input: -1
    assert m.result(0x30) == 0                               # set_timer
    assert m.arch.timer_compare == 0x1_2345_6789
    assert platform.timer_writes == [0]
    assert m.result(0x40) == 1 and m.result(0x50) == 0       # clear_ipi: pending, then not
    assert m.result(0x60) == 0
    assert platform.fences == [(0, U64), (0b10, 0)]          # fence.i to all; sfence hart 1
    assert m.result(0x70) == 0 and m.result(0x80) == 0
    assert m.result(0x90) == err(SbiError.INVALID_PARAM)     # no hart 2
    assert m.result(0xA0) == err(SbiError.INVALID_PARAM)     # mask pointer not RAM
    assert m.result(0xB0) == err(SbiError.NOT_SUPPORTED)     # legacy EID 9
    assert m.result(0x98) == m.result(0x88) == 0x1000        # a1 kept across legacy calls


def test_hsm_start_status_suspend_stop(machine):
    platform = FakePlatform()
    m = machine("sbi_hsm", platform=platform)
    v = m.vcpu
    e = m.run()
    assert e == CpuUp(target_cpu=1, entry_point=G(m.symbols["secondary"]), arg=0xC0FFEE)
    v.set_return_value(err(SbiError.ALREADY_AVAILABLE))     # as the VM would for a busy hart
    e = m.run()
    assert e == Halt()                                       # retentive suspend
    assert v.arch.pc == m.symbols["after_suspend"]
    e = m.run()
    assert e == Halt()                                       # non-retentive suspend
    assert v.arch.pc == m.symbols["resume"]                  # wakes up at resume_addr
    assert m.run() == CpuDown()
    assert pair(m, 0x00) == (0, 0)                           # hart 0: STARTED
    assert pair(m, 0x10) == (0, 1)                           # hart 1: STOPPED
    assert m.result(0x20) == err(SbiError.INVALID_PARAM)     # no hart 7
    assert pair(m, 0x30) == (err(SbiError.ALREADY_AVAILABLE), 0)
    assert m.result(0x40) == err(SbiError.INVALID_ADDRESS)   # start address not RAM
    assert m.result(0x50) == err(SbiError.INVALID_PARAM)     # no hart 9
    assert pair(m, 0x60) == (0, 0)                           # retentive: SUCCESS
    assert m.result(0x70) == err(SbiError.INVALID_PARAM)     # platform-specific type
    assert m.result(0xA0) == err(SbiError.INVALID_ADDRESS)   # resume address not RAM
    assert pair(m, 0x80) == (0, 0xFEED)                      # a0 = hart ID, a1 = opaque
    assert m.result(0x90) & 0b10 == 0                        # sstatus.SIE off


def test_dbcn_write_read_write_byte_and_out_of_ram_buffers(machine):
    platform = FakePlatform(console_input=b"abc")
    m = machine("sbi_dbcn", platform=platform)
    m.space.write(G(BUF + 0x100), b"\x5a" * 4)
    assert m.run() == SystemDown(reset=False)
    assert bytes(platform.out) == b"hello!"
    assert pair(m, 0x00) == (0, 5)
    assert m.result(0x10) == err(SbiError.INVALID_PARAM)     # host memory's address
    assert m.result(0x20) == err(SbiError.INVALID_PARAM)     # base_addr_hi != 0
    assert m.result(0x30) == err(SbiError.INVALID_PARAM)     # buffer leaves RAM
    assert pair(m, 0x40) == (0, 3)
    assert m.space.read(G(BUF), 3) == b"abc"
    assert m.result(0x50) == err(SbiError.INVALID_PARAM)     # a device address
    assert pair(m, 0x60) == (0, 0)
    assert m.space.read(G(BUF + 0x100), 4) == b"\x5a" * 4    # nothing written
    assert pair(m, 0x70) == (0, 0)
    assert m.result(0x80) == err(SbiError.NOT_SUPPORTED)


def test_ipi_rfence_and_system_reset(machine):
    platform = FakePlatform()
    m = machine("sbi_misc", platform=platform)
    assert m.run() == SendIPI(target_cpu=0, target_cpu_aux=0b11, send_to_all=False,
                              send_to_self=False, vector=0)
    assert m.run() == SendIPI(target_cpu=U64, target_cpu_aux=0, send_to_all=True,
                              send_to_self=False, vector=0)
    assert m.run() == SystemDown(reset=False)
    assert m.run() == SystemDown(reset=True)                 # cold reboot
    assert m.run() == SystemDown(reset=True)                 # warm reboot
    assert isinstance(m.run(), Hypercall)
    assert pair(m, 0x00) == (0, 0) and pair(m, 0x10) == (0, 0)
    assert m.result(0x20) == err(SbiError.INVALID_PARAM)     # IPI to hart 5
    assert m.result(0x30) == m.result(0x40) == m.result(0x50) == 0
    assert platform.fences == [(1, 0), (1, 1), (0, U64)]
    assert m.result(0x60) == err(SbiError.INVALID_PARAM)     # fence to hart 4
    assert m.result(0x70) == err(SbiError.NOT_SUPPORTED)     # hfence: no H extension
    assert m.result(0x80) == err(SbiError.INVALID_PARAM)     # reserved reset type
    assert m.result(0x90) == err(SbiError.INVALID_PARAM)     # reserved reason
    assert m.result(0xA0) == err(SbiError.NOT_SUPPORTED)
    assert m.arch.sbi.unknown == {(0x53525354, 1): 1, (0x52464E43, 3): 1}


class _Hart:
    """An SbiHart without a CPU, for calls the guests above do not make."""

    hart_id = 0

    def __init__(self) -> None:
        self.timer: int | None = None

    def set_timer(self, stime: int) -> None:
        self.timer = stime

    def clear_software_pending(self) -> bool:
        return False

    def flush_local(self) -> None:
        return

    def fence_all(self, code: bool) -> bool:
        return False

    def check_guest(self, gpa: int, size: int, write: bool) -> None:
        return

    def read_guest(self, gpa: int, size: int) -> bytes:
        return bytes(size)

    def write_guest(self, gpa: int, data: bytes) -> None:
        return

    def read_virtual_ulong(self, va: int) -> int | None:
        return None

    def is_entry(self, gpa: int) -> bool:
        return gpa == RAM

    def machine_ids(self) -> tuple[int, int, int]:
        return (1, 2, 3)


def test_lone_hart_platform_and_unknown_counts():
    hart = _Hart()
    sbi = Sbi(hart, LoneHart(0))
    regs = [0] * 8
    regs[7], regs[6], regs[0] = 0x5449_4D45, 0, 0x1234           # TIME set_timer
    assert sbi.call(regs) == (0, 0, None, None)
    assert hart.timer == 0x1234
    regs[7], regs[6], regs[0] = 0x48534D, 2, 0                   # hart_get_status(0)
    assert sbi.call(regs).value == 0
    regs[0] = 1
    assert sbi.call(regs).error == SbiError.INVALID_PARAM       # a lone hart
    regs[7], regs[6], regs[0], regs[1] = 0x735049, 0, 0b10, 0    # IPI to hart 1: none
    assert sbi.call(regs).error == SbiError.INVALID_PARAM
    regs[7], regs[6] = 0x5449_4D45, 1                            # TIME FID 1
    assert sbi.call(regs).error == SbiError.NOT_SUPPORTED
    assert sbi.unknown == {(0x5449_4D45, 1): 1}

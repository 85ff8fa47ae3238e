"""The AArch64 synchronous-exception handler and the trap frame.

ESR values are hand-encoded; see tests/test_aarch64_esr.py for the field layout.
Shifted constants used below: EC<<26 (0x24 → 0x9000_0000, 0x16 → 0x5800_0000,
0x17 → 0x5C00_0000, 0x18 → 0x6000_0000, 0x01 → 0x0400_0000, 0x20 → 0x8000_0000),
IL → 0x0200_0000, ISV → 0x0100_0000.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyaxvisor.arch.aarch64.context_frame import Aarch64ContextFrame, TrapFrame
from pyaxvisor.arch.aarch64.esr import Esr, ExceptionClass
from pyaxvisor.arch.aarch64.exception import (
    UnhandledTrap,
    decode_sgi1r,
    fault_ipa,
    handle_sync_exception,
)
from pyaxvisor.errors import InvalidInput, Unsupported
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.flags import AccessFlags
from pyaxvisor.vcpu.exit import (
    CpuUp,
    Halt,
    Hypercall,
    MmioRead,
    MmioWrite,
    NestedPageFault,
    Nothing,
    SendIPI,
    SysRegRead,
    SysRegWrite,
    read_register_value,
)
from pyaxvisor.vcpu.width import AccessWidth

W = AccessWidth
PC = 0x4008_0000

# The guest touches the PL011 at IPA 0x0900_0018 through VA 0xFFFF_0000_0800_0018.
# HPFAR_EL2.FIPA (bits 43:4) holds IPA[51:12] = 0x0_9000 → HPFAR = 0x0_9000 << 4 = 0x9_0000.
FAR = 0xFFFF_0000_0800_0018
HPFAR = 0x0009_0000
GPA = GuestPhysAddr(0x0900_0018)


class Platform:
    def affinity_info(self, target_mpidr, lowest_level):
        return 1


def frame_with(**regs):
    frame = Aarch64ContextFrame(elr=PC, spsr=0x3C5)
    for name, value in regs.items():
        frame.set_gpr(int(name[1:]), value)
    return frame


def run(frame, esr, far=FAR, hpfar=HPFAR):
    return handle_sync_exception(frame, esr, far, hpfar, Platform())


# ---- trap frame ------------------------------------------------------------------------


def test_frame_xzr_and_masking():
    frame = TrapFrame()
    assert TrapFrame is Aarch64ContextFrame
    frame.set_gpr(0, -1)
    assert frame.gpr(0) == 0xFFFF_FFFF_FFFF_FFFF
    frame.set_gpr(30, 1 << 64 | 5)
    assert frame.gpr(30) == 5
    frame.set_gpr(31, 123)  # XZR: dropped
    assert frame.gpr(31) == 0
    assert len(frame.x) == 31
    for bad in (-1, 32, "x1", True):
        with pytest.raises(InvalidInput):
            frame.gpr(bad)
        with pytest.raises(InvalidInput):
            frame.set_gpr(bad, 0)
    with pytest.raises(InvalidInput):
        frame.set_gpr(1, "1")


def test_frame_construction_and_special_registers():
    frame = Aarch64ContextFrame(list(range(31)), sp_el0=0x8000, elr=-4, spsr=0x3C5)
    assert frame.gpr(17) == 17
    assert frame.elr == 0xFFFF_FFFF_FFFF_FFFC
    frame.advance_pc(4)
    assert frame.elr == 0  # wraps like the hardware register
    with pytest.raises(InvalidInput):
        Aarch64ContextFrame([0] * 30)
    copy = frame.copy()
    assert copy == frame and copy is not frame
    copy.set_gpr(3, 99)
    assert copy != frame


def test_frame_dump_and_repr():
    frame = frame_with(x3=0xDEAD_BEEF, x30=0x1234)
    dump = frame.dump()
    assert "x3  = 0x00000000deadbeef" in dump
    assert "x30 = 0x0000000000001234" in dump
    assert "elr = 0x0000000040080000" in dump
    assert "EL1h" in dump and "DAIF=DAIF" in dump
    text = repr(frame)
    assert text.startswith("Aarch64ContextFrame(elr=0x40080000")
    assert "x3=0xdeadbeef" in text


# ---- data aborts → MMIO --------------------------------------------------------------------


def test_fault_ipa():
    assert fault_ipa(FAR, HPFAR) == GPA
    # NS bit 63 of HPFAR is not part of the address
    assert fault_ipa(FAR, (1 << 63) | HPFAR) == GPA
    # a 48-bit IPA: 0x8_0000_1234 → FIPA = 0x80_0001 → HPFAR = 0x800_0010
    assert fault_ipa(0x234, 0x0800_0010) == GuestPhysAddr(0x8_0000_1234)


def test_str_w3_is_mmio_write():
    # STR W3: EC=0x24, IL=1, ISV=1, SAS=2, SRT=3, WnR=1, DFSC=0x07 (translation L3)
    frame = frame_with(x3=0x1122_3344_5566_7788)
    exit_reason = run(frame, 0x9383_0047)
    assert exit_reason == MmioWrite(addr=GPA, width=W.Dword, data=0x5566_7788)
    assert frame.elr == PC + 4


def test_strb_masks_data_to_the_access_width():
    # STRB W1: 0x9300_0000 | SAS=0 | SRT=1 0x1_0000 | WnR 0x40 | DFSC 0x07
    frame = frame_with(x1=0x1234_5678_9ABC_DEF0)
    assert run(frame, 0x9301_0047) == MmioWrite(addr=GPA, width=W.Byte, data=0xF0)


def test_str_xzr_writes_zero():
    # STR XZR: 0x9300_0000 | SAS=3 0xC0_0000 | SRT=31 0x1F_0000 | SF 0x8000 | WnR 0x40 | 0x07
    frame = frame_with(x30=0xFFFF)  # x30 must not leak in for register 31
    assert run(frame, 0x93DF_8047) == MmioWrite(addr=GPA, width=W.Qword, data=0)
    assert frame.elr == PC + 4


def test_ldr_x0_is_mmio_read():
    # LDR X0: 0x9300_0000 | SAS=3 0xC0_0000 | SRT=0 | SF 0x8000 | WnR=0 | DFSC 0x07
    frame = frame_with()
    exit_reason = run(frame, 0x93C0_8007)
    assert exit_reason == MmioRead(addr=GPA, width=W.Qword, reg=0, reg_width=W.Qword,
                                   signed_ext=False)
    assert frame.elr == PC + 4


def test_ldrsb_x5_sign_extends_into_x():
    # LDRSB X5: 0x9300_0000 | SAS=0 | SSE 0x20_0000 | SRT=5 0x5_0000 | SF 0x8000 | DFSC 0x06
    frame = frame_with()
    exit_reason = run(frame, 0x9325_8006)
    assert exit_reason == MmioRead(addr=GPA, width=W.Byte, reg=5, reg_width=W.Qword,
                                   signed_ext=True)
    # the device returns 0x80: X5 must read -128 as a 64-bit value
    assert read_register_value(exit_reason, 0x80) == 0xFFFF_FFFF_FFFF_FF80


def test_ldrsh_w7_sign_extends_into_w():
    # LDRSH W7: 0x9300_0000 | SAS=1 0x40_0000 | SSE 0x20_0000 | SRT=7 0x7_0000 | SF=0 | 0x07
    frame = frame_with()
    exit_reason = run(frame, 0x9367_0007)
    assert exit_reason == MmioRead(addr=GPA, width=W.Word, reg=7, reg_width=W.Dword,
                                   signed_ext=True)
    # the device returns 0x8001: W7 = 0xFFFF_8001, upper half of X7 zero
    assert read_register_value(exit_reason, 0x8001) == 0xFFFF_8001


def test_ldrh_w2_zero_extends():
    # LDRH W2: 0x9300_0000 | SAS=1 0x40_0000 | SSE=0 | SRT=2 0x2_0000 | SF=0 | 0x07
    exit_reason = run(frame_with(), 0x9342_0007)
    assert exit_reason == MmioRead(addr=GPA, width=W.Word, reg=2, reg_width=W.Dword,
                                   signed_ext=False)


def test_16_bit_instruction_steps_by_two():
    # STR W3 syndrome with IL=0: 0x9383_0047 - 0x0200_0000
    frame = frame_with(x3=1)
    run(frame, 0x9183_0047)
    assert frame.elr == PC + 2


def test_isv_zero_is_an_unhandled_trap():
    # STP: EC=0x24, IL=1, ISV=0, WnR=1, DFSC=0x07 → 0x9200_0047
    frame = frame_with(x3=0xABCD)
    with pytest.raises(UnhandledTrap) as info:
        run(frame, 0x9200_0047)
    err = info.value
    assert isinstance(err, Unsupported)
    assert err.ec is ExceptionClass.DABT_LOW
    text = str(err)
    assert "ISV=0" in text
    assert "DABT_LOW" in text
    assert "ESR_EL2=0x92000047" in text
    assert f"FAR_EL2={FAR:#x}" in text and f"HPFAR_EL2={HPFAR:#x}" in text
    assert "GPA=0x9000018" in text
    assert "x3  = 0x000000000000abcd" in text  # register dump
    assert frame.elr == PC  # not stepped


def test_fnv_is_an_unhandled_trap():
    # STR W3 with FnV (bit 10, 0x400): 0x9383_0047 | 0x400
    frame = frame_with()
    with pytest.raises(UnhandledTrap, match="FnV"):
        run(frame, 0x9383_0447)
    assert frame.elr == PC


def test_inconsistent_width_is_an_unhandled_trap():
    # SAS=3 (8 bytes) but SF=0 (W register): 0x9300_0000 | 0xC0_0000 | DFSC 0x07
    with pytest.raises(UnhandledTrap, match="inconsistent"):
        run(frame_with(), 0x93C0_0007)


def test_s1ptw_is_an_unhandled_trap():
    # EC=0x24, IL=1, ISV=0, S1PTW 0x80, DFSC=0x07 → 0x9200_0087
    with pytest.raises(UnhandledTrap, match="page-table walk"):
        run(frame_with(), 0x9200_0087)


def test_cache_maintenance_on_unmapped_ipa_is_skipped():
    # DC CIVAC: EC=0x24, IL=1, ISV=0, CM 0x100, WnR 0x40, DFSC=0x06 → 0x9200_0146
    frame = frame_with()
    assert run(frame, 0x9200_0146) == Nothing()
    assert frame.elr == PC + 4


def test_store_to_read_only_memory_is_an_mmio_write():
    # STR W2 to read-only memory: 0x9300_0000 | SAS=2 0x80_0000 | SRT=2 0x2_0000 | WnR 0x40
    #                             | DFSC=0x0F (permission fault, level 3)
    frame = frame_with()
    frame.set_gpr(2, 0xFFFF_FFFF_1234_5678)
    exit_reason = run(frame, 0x9382_004F)
    assert exit_reason == MmioWrite(addr=GPA, width=AccessWidth.Dword, data=0x1234_5678)
    assert frame.elr == PC + 4


def test_permission_fault_without_syndrome_is_a_nested_page_fault():
    # STP to read-only memory: 0x9200_0000 (ISV=0) | WnR 0x40 | DFSC=0x0F
    frame = frame_with()
    exit_reason = run(frame, 0x9200_004F)
    assert exit_reason == NestedPageFault(addr=GPA, access_flags=AccessFlags.WRITE)
    assert frame.elr == PC  # re-execute after the fix


def test_access_flag_fault_read_is_a_nested_page_fault():
    # LDR W2: 0x9300_0000 | SAS=2 0x80_0000 | SRT=2 0x2_0000 | DFSC=0x0B (access flag, L3)
    frame = frame_with()
    assert run(frame, 0x9382_000B) == NestedPageFault(addr=GPA, access_flags=AccessFlags.READ)
    assert frame.elr == PC


def test_external_abort_is_an_unhandled_trap():
    # LDR W2, EA 0x200, DFSC=0x10: 0x9382_0000 | 0x200 | 0x10
    with pytest.raises(UnhandledTrap, match="synchronous external abort"):
        run(frame_with(), 0x9382_0210)


def test_data_abort_from_el2_is_unhandled():
    # EC=0x25 (DABT_CUR) 0x9400_0000 | IL | ISV | SAS=2 | SRT=3 | WnR | DFSC=0x07
    with pytest.raises(UnhandledTrap, match="DABT_CUR"):
        run(frame_with(), 0x9783_0047)


# ---- HVC / SMC --------------------------------------------------------------------------


HVC0 = 0x5A00_0000  # EC=0x16 0x5800_0000 | IL 0x0200_0000 | imm16=0
SMC0 = 0x5E00_0000  # EC=0x17 0x5C00_0000 | IL 0x0200_0000 | imm16=0


def test_hvc_hypercall_does_not_step_elr():
    frame = frame_with(x0=3, x1=11, x2=12, x3=13, x4=14, x5=15, x6=16, x7=17)
    assert run(frame, HVC0) == Hypercall(nr=3, args=(11, 12, 13, 14, 15, 16))
    assert frame.elr == PC  # already after the HVC
    assert frame.gpr(0) == 3


@pytest.mark.parametrize(("fid", "target"), [
    (0xC400_0003, 0x1_0000_0102),  # SMC64 CPU_ON: X1 kept whole (Aff3=1)
    (0x8400_0003, 0x0000_0102),    # SMC32 CPU_ON: W1 only, Aff3 dropped
])
def test_hvc_psci_cpu_on(fid, target):
    frame = frame_with(x0=fid, x1=0x1_0000_0102, x2=0x4020_0000, x3=0x77)
    exit_reason = run(frame, HVC0)
    assert exit_reason == CpuUp(target_cpu=target, entry_point=GuestPhysAddr(0x4020_0000),
                                arg=0x77)
    assert frame.gpr(0) == 0  # SUCCESS
    assert frame.elr == PC  # HVC: not stepped


def test_smc_psci_cpu_on_steps_elr():
    frame = frame_with(x0=0xC400_0003, x1=1, x2=0x4020_0000, x3=0)
    exit_reason = run(frame, SMC0)
    assert exit_reason == CpuUp(target_cpu=1, entry_point=GuestPhysAddr(0x4020_0000), arg=0)
    assert frame.elr == PC + 4  # ELR pointed at the SMC


def test_smc_hypercall_steps_elr():
    frame = frame_with(x0=0x10, x1=1)
    assert run(frame, SMC0) == Hypercall(nr=0x10, args=(1, 0, 0, 0, 0, 0))
    assert frame.elr == PC + 4


def test_smc_failing_platform_leaves_elr_alone():
    class Broken:
        def affinity_info(self, target_mpidr, lowest_level):
            return 7  # not a valid AFFINITY_INFO answer

    frame = frame_with(x0=0xC400_0004)
    with pytest.raises(InvalidInput):
        handle_sync_exception(frame, SMC0, 0, 0, Broken())
    assert frame.elr == PC


def test_hvc_psci_version_and_unknown_standard_call():
    frame = frame_with(x0=0x8400_0000)
    assert run(frame, HVC0) == Nothing()
    assert frame.gpr(0) == 0x0001_0001
    frame = frame_with(x0=0x8400_0050)  # TRNG_VERSION: not offered
    assert run(frame, HVC0) == Nothing()
    assert frame.gpr(0) == 0xFFFF_FFFF_FFFF_FFFF


def test_hvc_affinity_info_goes_to_the_platform():
    frame = frame_with(x0=0xC400_0004, x1=2)
    assert run(frame, HVC0) == Nothing()
    assert frame.gpr(0) == 1  # Platform answers OFF


# ---- MSR / MRS ----------------------------------------------------------------------------


def test_mrs_cntv_ctl():
    # MRS X2, CNTV_CTL_EL0: ISS = Op0=3 0x30_0000 | Op2=1 0x2_0000 | Op1=3 0xC000
    #   | CRn=14 0x3800 | Rt=2 0x40 | CRm=3 0x6 | Dir=1 → 0x32_F847; ESR = 0x6200_0000 | ISS
    frame = frame_with()
    assert run(frame, 0x6232_F847) == SysRegRead(addr=0x32_F806, reg=2)
    assert frame.elr == PC + 4


def test_msr_cntv_ctl():
    # MSR CNTV_CTL_EL0, X9: Rt=9 → 0x120, Dir=0 → ISS = 0x32_F806 | 0x120 = 0x32_F926
    frame = frame_with(x9=0b101)
    assert run(frame, 0x6232_F926) == SysRegWrite(addr=0x32_F806, value=0b101)
    assert frame.elr == PC + 4


def test_msr_from_xzr():
    # MSR CNTV_CTL_EL0, XZR: Rt=31 → 0x3E0 → ISS 0x32_FBE6
    frame = frame_with(x30=0xFFFF)
    assert run(frame, 0x6232_FBE6) == SysRegWrite(addr=0x32_F806, value=0)


# ICC_SGI1R_EL1 = S3_0_C12_C11_5: Op0=3 0x30_0000 | Op2=5 0xA_0000 | Op1=0 | CRn=12 0x3000
#   | CRm=11 0x16 → address 0x3A_3016. MSR ICC_SGI1R_EL1, X4: Rt=4 0x80, Dir=0
#   → ISS 0x3A_3096, ESR 0x6200_0000 | ISS = 0x623A_3096
MSR_SGI1R_X4 = 0x623A_3096


def test_icc_sgi1r_write_is_send_ipi():
    # X4: Aff3=0x04 (55:48), Aff2=0x03 (39:32), INTID=1 (27:24), Aff1=0x02 (23:16),
    #     TargetList=0b1010 (CPUs with Aff0 = 1 and 3)
    frame = frame_with(x4=0x0004_0003_0102_000A)
    exit_reason = run(frame, MSR_SGI1R_X4)
    assert exit_reason == SendIPI(target_cpu=0b1010,
                                  target_cpu_aux=0x4_0003_0200,  # Aff3<<32|Aff2<<16|Aff1<<8
                                  send_to_all=False, send_to_self=False, vector=1)
    assert frame.elr == PC + 4


def test_icc_sgi1r_irm_broadcast():
    # IRM (bit 40) = 1, INTID = 3: 0x100_0000_0000 | 0x300_0000
    exit_reason = run(frame_with(x4=0x0000_0100_0300_0000), MSR_SGI1R_X4)
    assert exit_reason == SendIPI(target_cpu=0, target_cpu_aux=0, send_to_all=True,
                                  send_to_self=False, vector=3)


def test_icc_sgi1r_range_selector():
    # RS=1 (47:44) → Aff0 16..31; TargetList bit 0 → Aff0 = 16; INTID=5
    #   0x1000_0000_0000 | 0x500_0000 | 0x1
    assert decode_sgi1r(0x0000_1000_0500_0001) == SendIPI(
        target_cpu=1 << 16, target_cpu_aux=0, send_to_all=False, send_to_self=False, vector=5)


def test_icc_sgi1r_read_is_a_plain_sysreg_read():
    # MRS X4, ICC_SGI1R_EL1: ISS 0x3A_3096 | Dir=1 = 0x3A_3097
    assert run(frame_with(), 0x623A_3097) == SysRegRead(addr=0x3A_3016, reg=4)


# ---- WFx and the rest ----------------------------------------------------------------------


@pytest.mark.parametrize("esr", [0x0600_0000, 0x0600_0001])  # WFI (TI=0), WFE (TI=1)
def test_wfi_wfe_halt(esr):
    frame = frame_with()
    assert run(frame, esr) == Halt()
    assert frame.elr == PC + 4


def test_unknown_ec_is_an_unhandled_trap():
    # EC=0x00 (UNKNOWN, e.g. an UNDEFINED instruction), IL=1 → 0x0200_0000
    frame = frame_with()
    with pytest.raises(UnhandledTrap) as info:
        run(frame, 0x0200_0000)
    text = str(info.value)
    assert "no handler for exception class UNKNOWN" in text
    assert "ESR_EL2=0x2000000" in text
    assert "elr = 0x0000000040080000" in text
    assert frame.elr == PC


def test_unallocated_ec_is_an_unhandled_trap():
    with pytest.raises(UnhandledTrap, match="EC_0x2e"):
        run(frame_with(), 0xBA00_0000)  # EC=0x2E | IL


def test_aarch32_trap_is_unsupported():
    # EC=0x03 (MCR/MRC CP15) 0x0C00_0000 | IL
    with pytest.raises(UnhandledTrap, match="AArch32"):
        run(frame_with(), 0x0E00_0000)


def test_instruction_abort_is_unhandled_with_decoded_ifsc():
    # EC=0x20 0x8000_0000 | IL | IFSC=0x07
    with pytest.raises(UnhandledTrap, match="translation fault, level 3"):
        run(frame_with(), 0x8200_0007)


def test_brk_is_unhandled():
    # EC=0x3C 0xF000_0000 | IL | imm16 = 0x3E8
    with pytest.raises(UnhandledTrap, match="BRK64"):
        run(frame_with(), 0xF200_03E8)


def test_accepts_esr_objects_and_validates_registers():
    assert run(frame_with(), Esr(0x0600_0000)) == Halt()
    with pytest.raises(InvalidInput):
        run(frame_with(), 0x0600_0000, far=-1)
    with pytest.raises(InvalidInput):
        handle_sync_exception(object(), 0x0600_0000, 0, 0, Platform())


@given(sas=st.integers(0, 3), srt=st.integers(0, 30), value=st.integers(0, (1 << 64) - 1),
       page=st.integers(0, (1 << 40) - 1), offset=st.integers(0, 0xFFF))
def test_any_single_register_store_is_emulated(sas, srt, value, page, offset):
    # EC=0x24 | IL | ISV | SAS | SRT | SF (for the 8-byte case) | WnR | DFSC=0x07
    esr = (0x93 << 24) | (sas << 22) | (srt << 16) | ((sas == 3) << 15) | 0x40 | 0x07
    frame = frame_with(**{f"x{srt}": value})
    exit_reason = handle_sync_exception(frame, esr, offset, page << 4, Platform())
    assert exit_reason == MmioWrite(addr=GuestPhysAddr(page << 12 | offset),
                                    width=W(1 << sas), data=value & ((1 << (8 << sas)) - 1))
    assert frame.elr == PC + 4

"""ESR_EL2 decoding. Every ESR value is written by hand with its fields spelled out.

Field positions (Arm ARM DDI 0487, ESR_EL2):
  EC 31:26, IL 25, ISS 24:0, ISS2 55:32.
  Data abort ISS: ISV 24, SAS 23:22, SSE 21, SRT 20:16, SF 15, AR 14, VNCR 13,
                  SET 12:11, FnV 10, EA 9, CM 8, S1PTW 7, WnR 6, DFSC 5:0.
  MSR/MRS ISS:    Op0 21:20, Op2 19:17, Op1 16:14, CRn 13:10, Rt 9:5, CRm 4:1, Dir 0.
Handy shifted values: EC<<26: 0x01→0x0400_0000, 0x16→0x5800_0000, 0x17→0x5C00_0000,
0x18→0x6000_0000, 0x24→0x9000_0000; IL→0x0200_0000; ISV→0x0100_0000.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyaxvisor.arch.aarch64.esr import (
    SYSREGS,
    DataAbortIss,
    Esr,
    ExceptionClass,
    FaultKind,
    SysRegIss,
    decode_fsc,
    describe_fsc,
    sysreg_addr,
    sysreg_by_name,
    sysreg_fields,
    sysreg_name,
)
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth, SysRegAddr

W = AccessWidth

# STR W3, [Xn] to an unmapped IPA:
#   EC=0x24 (DABT_LOW)  0x9000_0000
#   IL=1                0x0200_0000
#   ISV=1               0x0100_0000
#   SAS=2 (4 bytes)     0x0080_0000
#   SSE=0, SRT=3        0x0003_0000
#   SF=0 (W register), AR=0, VNCR=0, SET=0, FnV=0, EA=0, CM=0, S1PTW=0
#   WnR=1               0x0000_0040
#   DFSC=0b000111       0x0000_0007  translation fault, level 3
ESR_STR_W3 = 0x9383_0047


def test_top_level_fields():
    esr = Esr(ESR_STR_W3)
    assert esr.ec_value == 0x24
    assert esr.ec is ExceptionClass.DABT_LOW
    assert esr.ec_name == "DABT_LOW"
    assert esr.il is True
    assert esr.instruction_length == 4
    assert esr.iss == 0x0183_0047  # bits 24:0
    assert esr.iss2 == 0
    assert int(esr) == ESR_STR_W3
    assert "DABT_LOW" in repr(esr)
    assert esr.describe_ec() == "EC=0x24 DABT_LOW (data abort from a lower exception level)"


def test_il_zero_means_two_byte_instruction():
    # same abort with IL=0: 0x9383_0047 - 0x0200_0000
    assert Esr(0x9183_0047).instruction_length == 2


def test_iss2_is_bits_55_to_32():
    # ISS2 = 0x00_0001 above the same 32-bit syndrome
    assert Esr(0x0000_0001_9383_0047).iss2 == 1
    assert Esr(0x00FF_FFFF_0000_0000).iss2 == 0xFF_FFFF


def test_unallocated_ec():
    esr = Esr(0xB800_0000)  # EC=0x2E (unallocated): 0x2E << 26
    assert esr.ec is None
    assert esr.ec_name == "EC_0x2e"
    assert "unallocated" in esr.describe_ec()


@pytest.mark.parametrize("value", [-1, 1 << 64, "0x24", True])
def test_esr_rejects_non_u64(value):
    with pytest.raises(InvalidInput):
        Esr(value)


def test_exception_class_values():
    expected = {
        "UNKNOWN": 0x00, "WFX": 0x01, "CP15_32": 0x03, "CP15_64": 0x04, "CP14_MR": 0x05,
        "CP14_LS": 0x06, "FP_ASIMD": 0x07, "ILL": 0x0E, "SVC64": 0x15, "HVC64": 0x16,
        "SMC64": 0x17, "SYS64": 0x18, "IABT_LOW": 0x20, "IABT_CUR": 0x21, "PC_ALIGN": 0x22,
        "DABT_LOW": 0x24, "DABT_CUR": 0x25, "SP_ALIGN": 0x26, "SERROR": 0x2F, "BRK64": 0x3C,
        "HVC32": 0x12, "SMC32": 0x13,
    }
    for name, value in expected.items():
        assert ExceptionClass[name] == value
    assert ExceptionClass.CP15_32.is_aarch32
    assert ExceptionClass.SMC32.is_aarch32
    assert not ExceptionClass.SMC64.is_aarch32


# ---- data aborts -------------------------------------------------------------------------


def test_str_w3_data_abort():
    da = Esr(ESR_STR_W3).data_abort()
    assert da.isv and da.is_write and da.wnr
    assert da.sas == 2 and da.access_width is W.Dword
    assert not da.sse
    assert da.srt == 3
    assert not da.sf and da.reg_width is W.Dword
    assert not (da.ar or da.vncr or da.fnv or da.ea or da.cm or da.s1ptw)
    assert da.sync_err_type == 0
    assert da.dfsc == 0x07
    assert da.fault_kind is FaultKind.TRANSLATION and da.fault_level == 3
    assert da.is_translation_fault
    assert not da.is_permission_fault and not da.is_access_flag_fault
    assert da.describe() == ("ISV=1 SAS=2 (4 bytes) SSE=0 SRT=3 SF=0 AR=0 WnR=1 "
                             "DFSC=0x07 (translation fault, level 3)")


def test_ldrsb_x5_sign_extending_byte_load():
    # LDRSB X5, [Xn]:
    #   EC=0x24 0x9000_0000 | IL 0x0200_0000 | ISV 0x0100_0000
    #   SAS=0 (1 byte)     0x0000_0000
    #   SSE=1              0x0020_0000
    #   SRT=5              0x0005_0000
    #   SF=1 (X register)  0x0000_8000
    #   WnR=0, DFSC=0b000110 (translation fault, level 2) 0x06
    da = Esr(0x9325_8006).data_abort()
    assert da.isv and not da.is_write
    assert da.access_width is W.Byte
    assert da.sse and da.srt == 5
    assert da.reg_width is W.Qword
    assert da.fault_kind is FaultKind.TRANSLATION and da.fault_level == 2


def test_ldrsh_w7_sign_extending_halfword_load():
    # LDRSH W7, [Xn]:
    #   0x9300_0000 (EC, IL, ISV) | SAS=1 0x0040_0000 | SSE 0x0020_0000 | SRT=7 0x0007_0000
    #   SF=0 | WnR=0 | DFSC=0x07
    da = Esr(0x9367_0007).data_abort()
    assert da.access_width is W.Word
    assert da.sse and da.srt == 7
    assert da.reg_width is W.Dword
    assert not da.is_write


def test_str_xzr():
    # STR XZR, [Xn]: 0x9300_0000 | SAS=3 0x00C0_0000 | SRT=31 0x001F_0000 | SF 0x8000
    #                | WnR 0x40 | DFSC 0x07
    da = Esr(0x93DF_8047).data_abort()
    assert da.access_width is W.Qword
    assert da.srt == 31 and da.sf and da.is_write


def test_every_single_bit_flag():
    # ISS = AR 0x4000 | VNCR 0x2000 | SET=0b11 0x1800 | FnV 0x400 | EA 0x200 | CM 0x100
    #       | S1PTW 0x80 | DFSC=0x10 (synchronous external abort)
    da = DataAbortIss(0x7F90)
    assert da.ar and da.vncr and da.fnv and da.ea and da.cm and da.s1ptw
    assert da.sync_err_type == 0b11
    assert not da.isv and not da.wnr
    assert da.fault_kind is FaultKind.SYNC_EXTERNAL and da.fault_level is None
    text = da.describe()
    assert text.startswith("ISV=0")
    for flag in ("VNCR", "FnV", "EA", "CM", "S1PTW", "synchronous external abort"):
        assert flag in text


def test_data_abort_iss_range():
    with pytest.raises(InvalidInput):
        DataAbortIss(1 << 25)


@pytest.mark.parametrize(
    ("fsc", "kind", "level"),
    [
        (0x00, FaultKind.ADDRESS_SIZE, 0),
        (0x03, FaultKind.ADDRESS_SIZE, 3),
        (0x04, FaultKind.TRANSLATION, 0),
        (0x07, FaultKind.TRANSLATION, 3),
        (0x2B, FaultKind.TRANSLATION, -1),  # 0b101011, FEAT_LPA2
        (0x08, FaultKind.ACCESS_FLAG, 0),
        (0x0B, FaultKind.ACCESS_FLAG, 3),
        (0x0C, FaultKind.PERMISSION, 0),
        (0x0F, FaultKind.PERMISSION, 3),
        (0x10, FaultKind.SYNC_EXTERNAL, None),
        (0x11, FaultKind.TAG_CHECK, None),
        (0x13, FaultKind.SYNC_EXTERNAL_WALK, -1),
        (0x15, FaultKind.SYNC_EXTERNAL_WALK, 1),
        (0x18, FaultKind.PARITY_ECC, None),
        (0x1F, FaultKind.PARITY_ECC_WALK, 3),
        (0x21, FaultKind.ALIGNMENT, None),
        (0x30, FaultKind.TLB_CONFLICT, None),
        (0x31, FaultKind.ATOMIC_HW_UPDATE, None),
        (0x34, FaultKind.IMPDEF_LOCKDOWN, None),
        (0x35, FaultKind.IMPDEF_EXCLUSIVE, None),
        (0x3F, FaultKind.OTHER, None),
    ],
)
def test_fault_status_codes(fsc, kind, level):
    assert decode_fsc(fsc) == (kind, level)


def test_describe_fsc():
    assert describe_fsc(0x0D) == "0x0d (permission fault, level 1)"
    assert describe_fsc(0x21) == "0x21 (alignment fault)"


def test_abort_views_need_the_right_ec():
    with pytest.raises(InvalidInput, match="SYS64"):
        Esr(0x6232_F847).data_abort()
    with pytest.raises(InvalidInput):
        Esr(ESR_STR_W3).sysreg()
    with pytest.raises(InvalidInput):
        Esr(ESR_STR_W3).wfx()
    with pytest.raises(InvalidInput):
        _ = Esr(ESR_STR_W3).imm16


def test_instruction_abort():
    # EC=0x20 (IABT_LOW) 0x8000_0000 | IL 0x0200_0000 | S1PTW 0x80 | IFSC=0x06
    ia = Esr(0x8200_0086).instruction_abort()
    assert ia.s1ptw and not ia.fnv and not ia.ea
    assert ia.ifsc == 0x06 and ia.fault_kind is FaultKind.TRANSLATION
    assert ia.describe() == "S1PTW IFSC=0x06 (translation fault, level 2)"


# ---- system registers ----------------------------------------------------------------------

# MRS X2, CNTV_CTL_EL0 (S3_3_C14_C3_1):
#   EC=0x18 0x6000_0000 | IL 0x0200_0000
#   Op0=3  3<<20  = 0x30_0000
#   Op2=1  1<<17  = 0x02_0000
#   Op1=3  3<<14  = 0x00_C000
#   CRn=14 14<<10 = 0x00_3800
#   Rt=2   2<<5   = 0x00_0040
#   CRm=3  3<<1   = 0x00_0006
#   Dir=1 (read)  = 0x00_0001
#   ISS = 0x32_F847; ISS address (Rt, Dir cleared) = 0x32_F806
ESR_MRS_X2_CNTV_CTL = 0x6232_F847
CNTV_CTL_ADDR = 0x32_F806


def test_mrs_cntv_ctl():
    iss = Esr(ESR_MRS_X2_CNTV_CTL).sysreg()
    assert (iss.op0, iss.op1, iss.crn, iss.crm, iss.op2) == (3, 3, 14, 3, 1)
    assert iss.rt == 2
    assert iss.is_read and not iss.is_write
    assert iss.addr == CNTV_CTL_ADDR and isinstance(iss.addr, SysRegAddr)
    assert iss.name == "CNTV_CTL_EL0"
    assert iss.describe() == "MRS X2, CNTV_CTL_EL0"


def test_msr_cntv_ctl_from_xzr():
    # MSR CNTV_CTL_EL0, XZR: same address, Rt=31 → 31<<5 = 0x3E0, Dir=0
    #   ISS = 0x32_F806 | 0x3E0 = 0x32_FBE6
    iss = Esr(0x6232_FBE6).sysreg()
    assert iss.is_write and iss.rt == 31
    assert iss.addr == CNTV_CTL_ADDR
    assert iss.describe() == "MSR CNTV_CTL_EL0, XZR"


@pytest.mark.parametrize(
    ("name", "addr"),
    [
        # (op0, op1, CRn, CRm, op2) → op0<<20 | op2<<17 | op1<<14 | CRn<<10 | CRm<<1
        ("CNTV_CTL_EL0", 0x32_F806),    # 3,3,14,3,1
        ("CNTV_CVAL_EL0", 0x34_F806),   # 3,3,14,3,2: 0x30_0000|0x4_0000|0xC000|0x3800|0x6
        ("CNTV_TVAL_EL0", 0x30_F806),   # 3,3,14,3,0
        ("CNTP_CTL_EL0", 0x32_F804),    # 3,3,14,2,1
        ("CNTP_CVAL_EL0", 0x34_F804),   # 3,3,14,2,2
        ("CNTP_TVAL_EL0", 0x30_F804),   # 3,3,14,2,0
        ("CNTFRQ_EL0", 0x30_F800),      # 3,3,14,0,0
        ("CNTPCT_EL0", 0x32_F800),      # 3,3,14,0,1
        ("CNTVCT_EL0", 0x34_F800),      # 3,3,14,0,2
        ("ICC_SGI1R_EL1", 0x3A_3016),   # 3,0,12,11,5: 0x30_0000|0xA_0000|0x3000|0x16
        ("SCTLR_EL1", 0x30_0400),       # 3,0,1,0,0
        ("TTBR0_EL1", 0x30_0800),       # 3,0,2,0,0
        ("TTBR1_EL1", 0x32_0800),       # 3,0,2,0,1
        ("TCR_EL1", 0x34_0800),         # 3,0,2,0,2
        ("MAIR_EL1", 0x30_2804),        # 3,0,10,2,0: 0x2800 | 2<<1
        ("ID_AA64PFR0_EL1", 0x30_0008),   # 3,0,0,4,0
        ("ID_AA64MMFR1_EL1", 0x32_000E),  # 3,0,0,7,1
        ("OSLAR_EL1", 0x28_0400),       # 2,0,1,0,4: 0x20_0000|4<<17=0x8_0000|1<<10
    ],
)
def test_well_known_sysreg_addresses(name, addr):
    assert SYSREGS[name] == addr
    assert sysreg_by_name(name.lower()) == addr
    assert sysreg_name(addr) == name


def test_sysreg_addr_builder():
    assert sysreg_addr(3, 3, 14, 3, 1) == CNTV_CTL_ADDR
    assert isinstance(sysreg_addr(3, 3, 14, 3, 1), SysRegAddr)
    assert sysreg_fields(CNTV_CTL_ADDR) == (3, 3, 14, 3, 1)
    for bad in ((4, 0, 0, 0, 0), (0, 8, 0, 0, 0), (0, 0, 16, 0, 0), (0, 0, 0, 16, 0),
                (0, 0, 0, 0, 8), (-1, 0, 0, 0, 0)):
        with pytest.raises(InvalidInput):
            sysreg_addr(*bad)


def test_unknown_sysreg_name_is_generic():
    # S3_4_C15_C15_7: 3<<20 | 7<<17 | 4<<14 | 15<<10 | 15<<1
    #               = 0x30_0000 + 0xE_0000 + 0x1_0000 + 0x3C00 + 0x1E = 0x3F_3C1E
    assert sysreg_name(0x3F_3C1E) == "S3_4_C15_C15_7"
    with pytest.raises(InvalidInput):
        sysreg_by_name("NOT_A_REG_EL1")


@given(op0=st.integers(0, 3), op1=st.integers(0, 7), crn=st.integers(0, 15),
       crm=st.integers(0, 15), op2=st.integers(0, 7), rt=st.integers(0, 31),
       read=st.booleans())
def test_sysreg_iss_roundtrip(op0, op1, crn, crm, op2, rt, read):
    iss_value = ((op0 << 20) | (op2 << 17) | (op1 << 14) | (crn << 10) | (rt << 5)
                 | (crm << 1) | int(read))
    iss = SysRegIss(iss_value)
    assert (iss.op0, iss.op1, iss.crn, iss.crm, iss.op2) == (op0, op1, crn, crm, op2)
    assert iss.rt == rt and iss.is_read == read
    assert iss.addr == iss_value & ~((0x1F << 5) | 1)
    assert iss.addr == sysreg_addr(op0, op1, crn, crm, op2)
    assert sysreg_fields(iss.addr) == (op0, op1, crn, crm, op2)


@given(isv=st.booleans(), sas=st.integers(0, 3), sse=st.booleans(), srt=st.integers(0, 31),
       sf=st.booleans(), wnr=st.booleans(), dfsc=st.integers(0, 63))
def test_data_abort_fields_roundtrip(isv, sas, sse, srt, sf, wnr, dfsc):
    iss = DataAbortIss((int(isv) << 24) | (sas << 22) | (int(sse) << 21) | (srt << 16)
                       | (int(sf) << 15) | (int(wnr) << 6) | dfsc)
    assert (iss.isv, iss.sas, iss.sse, iss.srt, iss.sf, iss.wnr, iss.dfsc) == (
        isv, sas, sse, srt, sf, wnr, dfsc)
    assert iss.access_width.size == 1 << sas


# ---- WFx and immediates ----------------------------------------------------------------------


def test_wfi_and_wfe():
    # EC=0x01 0x0400_0000 | IL 0x0200_0000 | TI in bits 1:0
    wfi = Esr(0x0600_0000).wfx()
    assert wfi.is_wfi and not wfi.is_wfe and wfi.instruction == "WFI"
    wfe = Esr(0x0600_0001).wfx()
    assert wfe.is_wfe and wfe.instruction == "WFE"
    assert Esr(0x0600_0002).wfx().instruction == "WFIT"


def test_hvc_smc_imm16():
    # HVC #0x4A48: EC=0x16 0x5800_0000 | IL 0x0200_0000 | imm16 0x4A48
    assert Esr(0x5A00_4A48).imm16 == 0x4A48
    # SMC #0: EC=0x17 0x5C00_0000 | IL
    assert Esr(0x5E00_0000).imm16 == 0

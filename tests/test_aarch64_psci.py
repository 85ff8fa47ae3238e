"""PSCI 1.1 / SMCCC emulation: every function's X0 result and exit, written out by hand.

X0 results are 64-bit two's complement for every function ID (SMCCC: -1 is
sign-extended), so NOT_SUPPORTED (-1) reads back as 0xFFFF_FFFF_FFFF_FFFF and
INVALID_PARAMETERS (-2) as 0xFFFF_FFFF_FFFF_FFFE.
"""

import pytest

from pyaxvisor.arch.aarch64.context_frame import Aarch64ContextFrame
from pyaxvisor.arch.aarch64.psci import (
    PsciPlatform,
    encode_return,
    handle_psci,
    is_psci_or_smccc_arch,
    is_smccc_fast_call,
)
from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.vcpu.exit import CpuDown, CpuUp, Halt, Nothing, SystemDown

NOT_SUPPORTED = 0xFFFF_FFFF_FFFF_FFFF  # -1
INVALID_PARAMETERS = 0xFFFF_FFFF_FFFF_FFFE  # -2
SENTINEL = 0x5A5A_5A5A_5A5A_5A5A


class FakePlatform:
    def __init__(self, answer=1):
        self.answer = answer
        self.calls = []

    def affinity_info(self, target_mpidr, lowest_level):
        self.calls.append((target_mpidr, lowest_level))
        return self.answer


def call(fid, x1=0, x2=0, x3=0, platform=None):
    """Run handle_psci as the exception handler would: X0 = fid, args = X1..X6."""
    frame = Aarch64ContextFrame(elr=0x4008_0000)
    for i, v in enumerate((fid, x1, x2, x3, SENTINEL, SENTINEL, SENTINEL)):
        frame.set_gpr(i, v)
    platform = platform or FakePlatform()
    exit_reason = handle_psci(fid, tuple(frame.gpr(i) for i in range(1, 7)), frame, platform)
    assert frame.elr == 0x4008_0000, "handle_psci never steps ELR"
    return exit_reason, frame


def test_fake_platform_satisfies_protocol():
    assert isinstance(FakePlatform(), PsciPlatform)


def test_psci_version_is_1_1():
    exit_reason, frame = call(0x8400_0000)
    assert exit_reason == Nothing()
    assert frame.gpr(0) == 0x0001_0001  # major 1 (bits 31:16), minor 1


@pytest.mark.parametrize("fid", [0x8400_0001, 0xC400_0001])
def test_cpu_suspend_is_standby(fid):
    exit_reason, frame = call(fid, 0x0001_0000, 0x4008_1000, 7)  # even a power-down state
    assert exit_reason == Halt()
    assert frame.gpr(0) == 0  # SUCCESS
    assert frame.gpr(4) == SENTINEL  # nothing else touched


def test_cpu_off():
    exit_reason, frame = call(0x8400_0002)
    assert exit_reason == CpuDown(0)
    assert frame.gpr(0) == 0x8400_0002  # CPU_OFF does not return on success: X0 untouched


def test_cpu_on_64():
    # X1 = target MPIDR with Aff3=0xFF, bit 31 (RES1 in MPIDR_EL1) set, Aff1=1, Aff0=2
    exit_reason, frame = call(0xC400_0003, 0x0000_00FF_8000_0102, 0x4008_0000,
                              0xDEAD_BEEF_0000_0001)
    # Aff mask 0xFF_00FF_FFFF drops bit 31: 0xFF_0000_0102
    assert exit_reason == CpuUp(target_cpu=0xFF_0000_0102,
                                entry_point=GuestPhysAddr(0x4008_0000),
                                arg=0xDEAD_BEEF_0000_0001)
    assert frame.gpr(0) == 0  # SUCCESS pre-set


def test_cpu_on_32_uses_w_registers():
    exit_reason, frame = call(0x8400_0003, 0xFFFF_FFFF_0000_0101, 0xAAAA_AAAA_4008_0000,
                              0x1_0000_0002)
    # W1 = 0x101, W2 = 0x4008_0000, W3 = 2
    assert exit_reason == CpuUp(target_cpu=0x101, entry_point=GuestPhysAddr(0x4008_0000), arg=2)
    assert frame.gpr(0) == 0


@pytest.mark.parametrize(("answer", "x0"), [
    (0, 0),                       # ON
    (1, 1),                       # OFF
    (2, 2),                       # ON_PENDING
    (-2, INVALID_PARAMETERS),     # unknown MPIDR
])
def test_affinity_info(answer, x0):
    platform = FakePlatform(answer)
    exit_reason, frame = call(0xC400_0004, 0x0000_0001_0000_0003, 0, platform=platform)
    assert exit_reason == Nothing()
    assert frame.gpr(0) == x0
    assert platform.calls == [(0x1_0000_0003, 0)]


def test_affinity_info_32_masks_arguments():
    platform = FakePlatform(0)
    call(0x8400_0004, 0xFFFF_FFFF_0000_0003, 0xFFFF_FFFF_0000_0000, platform=platform)
    assert platform.calls == [(0x3, 0)]


@pytest.mark.parametrize("bad", [3, -10, None, True])
def test_affinity_info_rejects_bad_platform_answers(bad):
    with pytest.raises(InvalidInput, match="affinity_info"):
        call(0x8400_0004, 0, platform=FakePlatform(bad))


def test_migrate_info_type():
    exit_reason, frame = call(0x8400_0006)
    assert exit_reason == Nothing()
    assert frame.gpr(0) == 2  # Trusted OS not present / no migration needed


@pytest.mark.parametrize("fid", [0x8400_0005, 0xC400_0005, 0x8400_0007, 0xC400_0007])
def test_migrate_and_migrate_info_up_cpu_not_supported(fid):
    exit_reason, frame = call(fid)
    assert exit_reason == Nothing()
    assert frame.gpr(0) == NOT_SUPPORTED


def test_system_off():
    exit_reason, _ = call(0x8400_0008)
    assert exit_reason == SystemDown(reset=False)


def test_system_reset():
    exit_reason, _ = call(0x8400_0009)
    assert exit_reason == SystemDown(reset=True)


@pytest.mark.parametrize("fid", [0x8400_0012, 0xC400_0012])
def test_system_reset2(fid):
    assert call(fid, 0)[0] == SystemDown(reset=True)             # SYSTEM_WARM_RESET
    assert call(fid, 0x8000_0001)[0] == SystemDown(reset=True)   # vendor-specific type
    exit_reason, frame = call(fid, 1)                            # reserved architectural type
    assert exit_reason == Nothing()
    assert frame.gpr(0) == INVALID_PARAMETERS


@pytest.mark.parametrize(("queried", "x0"), [
    (0x8400_0000, 0),              # PSCI_VERSION
    (0x8400_0001, 0),              # CPU_SUSPEND (original format, platform-coordinated)
    (0xC400_0001, 0),
    (0x8400_0002, 0),              # CPU_OFF
    (0x8400_0003, 0),              # CPU_ON
    (0xC400_0003, 0),
    (0xC400_0004, 0),              # AFFINITY_INFO
    (0x8400_0006, 0),              # MIGRATE_INFO_TYPE
    (0x8400_0008, 0),              # SYSTEM_OFF
    (0x8400_0009, 0),              # SYSTEM_RESET
    (0x8400_000A, 0),              # PSCI_FEATURES
    (0xC400_0012, 0),              # SYSTEM_RESET2
    (0x8000_0000, 0),              # SMCCC_VERSION (Linux asks before calling it)
    (0x8400_0005, NOT_SUPPORTED),  # MIGRATE
    (0xC400_000E, NOT_SUPPORTED),  # SYSTEM_SUSPEND
    (0x8400_000B, NOT_SUPPORTED),  # CPU_FREEZE
    (0xC400_0002, NOT_SUPPORTED),  # no 64-bit CPU_OFF exists
    (0x8000_8000, NOT_SUPPORTED),  # SMCCC_ARCH_WORKAROUND_1
    (0x0000_0000, NOT_SUPPORTED),
])
def test_psci_features(queried, x0):
    exit_reason, frame = call(0x8400_000A, queried)
    assert exit_reason == Nothing()
    assert frame.gpr(0) == x0


def test_psci_features_uses_w1():
    _, frame = call(0x8400_000A, 0xFFFF_FFFF_8400_0003)  # W1 = CPU_ON
    assert frame.gpr(0) == 0


def test_smccc_version_is_1_1():
    exit_reason, frame = call(0x8000_0000)
    assert exit_reason == Nothing()
    assert frame.gpr(0) == 0x0001_0001


@pytest.mark.parametrize("feature", [0x8000_8000, 0x8000_7FFF, 0x8000_3FFF, 0x8000_0002,
                                     0x8000_0000])
def test_smccc_arch_features_not_supported(feature):
    exit_reason, frame = call(0x8000_0001, feature)
    assert exit_reason == Nothing()
    assert frame.gpr(0) == NOT_SUPPORTED


@pytest.mark.parametrize("fid", [
    0x8400_0050,  # TRNG_VERSION
    0xC400_0020,  # SDEI_VERSION
    0x8400_0063,  # FF-A
    0x8000_8000,  # SMCCC_ARCH_WORKAROUND_1 called directly
    0xC000_0001,  # arch service, 64-bit
    0x8400_001F,  # last PSCI number, unallocated
    0xC400_0002,  # CPU_OFF does not exist in SMC64 form
])
def test_other_ids_in_owned_ranges_answer_not_supported(fid):
    exit_reason, frame = call(fid, 1, 2, 3)
    assert exit_reason == Nothing()
    assert frame.gpr(0) == NOT_SUPPORTED
    assert (frame.gpr(1), frame.gpr(2), frame.gpr(3)) == (1, 2, 3)


@pytest.mark.parametrize("fid", [
    0x0,            # plain hypercall numbers
    0x11,
    0x8600_FF01,    # vendor hypervisor service UID (OEN 6) - the VM's business
    0x8200_0000,    # SiP service
    0xC500_0000,    # standard hypervisor service (OEN 5)
    0x0400_0000,    # standard service, yielding (bit 31 clear)
    0x8480_0000,    # bits 23:17 non-zero: not a valid fast call
])
def test_ids_outside_the_owned_ranges_are_not_psci(fid):
    exit_reason, frame = call(fid)
    assert exit_reason is None
    assert frame.gpr(0) == fid


def test_function_id_is_w0_and_sve_hint_ignored():
    # Upper half of X0 ignored: X0 = 0xFFFF_FFFF_8400_0000 is PSCI_VERSION
    assert call(0xFFFF_FFFF_8400_0000)[1].gpr(0) == 0x0001_0001
    # SMCCC 1.3 SVE hint bit 16 ignored: 0x8401_0000 is PSCI_VERSION
    assert call(0x8401_0000)[1].gpr(0) == 0x0001_0001


def test_range_helpers():
    assert is_smccc_fast_call(0x8600_FF01)
    assert not is_smccc_fast_call(0x0000_0001)
    assert is_psci_or_smccc_arch(0xC400_0003)
    assert is_psci_or_smccc_arch(0x8000_0000)
    assert not is_psci_or_smccc_arch(0x8600_FF01)


def test_encode_return():
    assert encode_return(0) == 0
    assert encode_return(-1) == 0xFFFF_FFFF_FFFF_FFFF
    assert encode_return(-4) == 0xFFFF_FFFF_FFFF_FFFC  # ALREADY_ON
    assert encode_return(-9) == 0xFFFF_FFFF_FFFF_FFF7  # INVALID_ADDRESS
    with pytest.raises(InvalidInput):
        encode_return(1 << 64)


def test_too_few_arguments():
    with pytest.raises(InvalidInput):
        handle_psci(0x8400_0000, (0, 0), Aarch64ContextFrame(), FakePlatform())

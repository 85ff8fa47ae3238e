"""GICv2 model: distributor and CPU interface behaviour.

Expected values are worked out by hand from the GICv2 architecture
specification (ARM IHI 0048B); each literal carries its derivation.
Register offsets: GICD_* from section 4.1.2, GICC_* from section 4.1.3.
"""

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyaxvisor.devices.bus import BadAccess as BadMmioAccess
from pyaxvisor.devices.bus import mmio_bus as MmioBus
from pyaxvisor.devices.gicv2 import GicV2
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.pl011 import Pl011
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth

B, W, D, Q = AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword, AccessWidth.Qword

# Distributor.
CTLR, TYPER, IIDR = 0x000, 0x004, 0x008
IGROUPR, ISENABLER, ICENABLER = 0x080, 0x100, 0x180
ISPENDR, ICPENDR, ISACTIVER, ICACTIVER = 0x200, 0x280, 0x300, 0x380
IPRIORITYR, ITARGETSR, ICFGR, SGIR = 0x400, 0x800, 0xC00, 0xF00
CPENDSGIR, SPENDSGIR, PIDR2 = 0xF10, 0xF20, 0xFE8
# CPU interface.
C_CTLR, PMR, BPR, IAR, EOIR, RPR, HPPIR = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18
ABPR, AIAR, AEOIR, AHPPIR, APR0, C_IIDR, DIR = 0x1C, 0x20, 0x24, 0x28, 0xD0, 0xFC, 0x1000


class Gic:
    def __init__(self, cpus: int = 2, irqs: int = 288) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.fiqs: list[tuple[int, bool]] = []
        self.g = GicV2(cpus, irqs, on_cpu_irq=lambda c, a: self.calls.append((c, a)),
                       on_cpu_fiq=lambda c, a: self.fiqs.append((c, a)))

    def dr(self, off, cpu=0, width=D):
        return self.g.distributor.mmio_read(off, width, cpu)

    def dw(self, off, value, cpu=0, width=D):
        self.g.distributor.mmio_write(off, width, value, cpu)

    def cr(self, off, cpu=0):
        return self.g.cpu_interface.mmio_read(off, D, cpu)

    def cw(self, off, value, cpu=0):
        self.g.cpu_interface.mmio_write(off, D, value, cpu)

    def enable(self, pmr=0xF0):
        """What Linux's GIC driver does: distributor on, each CPU interface on."""
        self.dw(CTLR, 0x1)  # EnableGrp0
        for cpu in range(self.g.num_cpus):
            self.cw(PMR, pmr, cpu)
            self.cw(C_CTLR, 0x1, cpu)  # EnableGrp0

    def spi(self, intid, prio, targets=0x1, enable=True):
        self.dw(IPRIORITYR + intid, prio, width=B)
        self.dw(ITARGETSR + intid, targets, width=B)
        if enable:
            self.dw(ISENABLER + 4 * (intid // 32), 1 << (intid % 32))


@pytest.fixture
def gic() -> Gic:
    return Gic()


def test_typer_iidr_and_id(gic):
    # ITLinesNumber = 288/32 - 1 = 8 (bits 4:0); CPUNumber = 2 - 1 = 1 (bits 7:5) -> 0x20.
    assert gic.dr(TYPER) == 0x28
    assert gic.dr(PIDR2) & 0xF0 == 0x20  # ArchRev = 2 in bits 7:4
    assert gic.dr(PIDR2) == 0x2B  # GIC-400 value
    assert gic.dr(IIDR) == 0x0200143B
    assert gic.cr(C_IIDR) == 0x0202143B  # ProductID 0x020, ArchVersion 2, ARM (0x43B)
    # 1 CPU, 64 interrupts: ITLinesNumber 1, CPUNumber 0.
    assert Gic(1, 64).dr(TYPER) == 0x01
    # 8 CPUs, 1024 (1020 usable) interrupts: 31 | (7 << 5) = 0xFF.
    assert Gic(8, 1024).dr(TYPER) == 0xFF


def test_reset_values(gic):
    assert gic.dr(CTLR) == 0
    assert gic.dr(ISENABLER) == 0x0000FFFF  # SGIs 0-15 permanently enabled
    assert gic.dr(ICFGR) == 0xAAAAAAAA  # SGIs edge-triggered: Int_config[1] = 1 for 16 fields
    assert gic.dr(ICFGR + 4) == 0  # PPIs level
    assert gic.cr(C_CTLR) == 0
    assert gic.cr(PMR) == 0
    assert gic.cr(BPR) == 2  # minimum with 5 priority bits
    assert gic.cr(ABPR) == 3
    assert gic.cr(RPR) == 0xFF  # idle priority
    assert gic.cr(IAR) == 1023


def test_constructor_validation():
    with pytest.raises(InvalidInput):
        GicV2(0)
    with pytest.raises(InvalidInput):
        GicV2(9)
    with pytest.raises(InvalidInput):
        GicV2(1, 100)
    with pytest.raises(InvalidInput):
        GicV2(1, 1056)


def test_spi_routed_to_cpu1_signals_only_cpu1(gic):
    gic.enable()
    gic.spi(40, 0xA0, targets=0x2)  # ITARGETSR = CPU 1 only
    assert gic.dr(ISENABLER + 4) == 0x100  # INTID 40 = bit 8 of ISENABLER1
    gic.g.set_irq_level(40, True)
    assert gic.calls == [(1, True)]
    assert gic.cr(IAR, cpu=0) == 1023
    assert gic.cr(IAR, cpu=1) == 40
    assert gic.calls == [(1, True), (1, False)]


def test_level_interrupt_lifecycle(gic):
    gic.enable()
    gic.spi(40, 0xA0)
    gic.g.set_irq_level(40, True)
    assert gic.calls == [(0, True)]
    assert gic.dr(ISPENDR + 4) == 0x100  # pending: bit 8 of ISPENDR1
    assert gic.cr(HPPIR) == 40
    assert gic.cr(IAR) == 40
    assert gic.calls[-1] == (0, False)
    # Line still high: active *and* pending.
    assert gic.dr(ISPENDR + 4) == 0x100
    assert gic.dr(ISACTIVER + 4) == 0x100
    assert gic.cr(RPR) == 0xA0
    assert gic.cr(APR0) == 1 << 20  # group priority 0xA0 >> 3 = 20
    assert gic.cr(IAR) == 1023  # active interrupts are not acknowledged again
    gic.cw(EOIR, 40)
    assert gic.dr(ISACTIVER + 4) == 0
    assert gic.cr(RPR) == 0xFF
    assert gic.calls[-1] == (0, True)  # still high: pending again, signalled
    gic.g.set_irq_level(40, False)
    assert gic.calls[-1] == (0, False)
    assert gic.dr(ISPENDR + 4) == 0
    assert gic.cr(IAR) == 1023


def test_edge_interrupt_lifecycle(gic):
    gic.enable()
    gic.spi(40, 0xA0)
    # ICFGR2 covers INTIDs 32-47; INTID 40 is field 8 -> edge bit 2*8+1 = 17.
    gic.dw(ICFGR + 8, 1 << 17)
    assert gic.dr(ICFGR + 8) == 0x20000
    gic.g.set_irq_level(40, True)
    gic.g.set_irq_level(40, False)
    assert gic.dr(ISPENDR + 4) == 0x100  # latched by the rising edge
    assert gic.cr(IAR) == 40
    assert gic.dr(ISPENDR + 4) == 0  # acknowledge clears an edge interrupt's pending state
    assert gic.dr(ISACTIVER + 4) == 0x100
    gic.g.set_irq_level(40, True)  # a second edge while active
    assert gic.dr(ISPENDR + 4) == 0x100  # active and pending
    assert gic.cr(IAR) == 1023
    gic.cw(EOIR, 40)
    assert gic.cr(IAR) == 40
    gic.cw(EOIR, 40)
    assert gic.dr(ISPENDR + 4) == 0
    assert gic.dr(ISACTIVER + 4) == 0


def test_pmr_masks_by_priority(gic):
    gic.enable(pmr=0xA0)
    gic.spi(40, 0xA0)
    gic.g.set_irq_level(40, True)
    assert gic.calls == []  # priority must be strictly below PMR
    assert gic.cr(IAR) == 1023
    assert gic.cr(HPPIR) == 1023
    gic.cw(PMR, 0xA8)
    assert gic.calls == [(0, True)]
    gic.cw(PMR, 0x00)
    assert gic.calls == [(0, True), (0, False)]
    gic.cw(PMR, 0xFF)
    assert gic.cr(PMR) == 0xF8  # 5 implemented priority bits
    assert gic.cr(IAR) == 40


def test_priority_then_lowest_intid_order(gic):
    gic.enable()
    gic.spi(50, 0x80)
    gic.spi(45, 0x80)
    gic.spi(60, 0x40)
    # Software-set pending (ISPENDR1 bits 50-32=18, 45-32=13, 60-32=28): cleared on ack.
    gic.dw(ISPENDR + 4, (1 << 18) | (1 << 13) | (1 << 28))
    assert gic.dr(ISPENDR + 4) == 0x10042000
    assert gic.cr(HPPIR) == 60  # 0x40 is the highest priority
    assert gic.cr(IAR) == 60
    assert gic.cr(IAR) == 1023  # 0x80 cannot preempt running priority 0x40
    gic.cw(EOIR, 60)
    assert gic.cr(IAR) == 45  # equal priority 0x80: lower INTID wins
    assert gic.cr(IAR) == 1023  # 50 has the same group priority: no preemption
    gic.cw(EOIR, 45)
    assert gic.cr(IAR) == 50


def test_preemption_and_running_priority(gic):
    gic.enable()
    gic.spi(50, 0x80)
    gic.spi(60, 0x40)
    gic.g.set_irq_level(50, True)
    assert gic.cr(IAR) == 50
    assert gic.cr(RPR) == 0x80
    gic.g.set_irq_level(60, True)
    assert gic.calls[-1] == (0, True)  # 0x40 < 0x80: preempts
    assert gic.cr(IAR) == 60
    assert gic.cr(RPR) == 0x40
    assert gic.cr(APR0) == (1 << 8) | (1 << 16)  # levels 0x40>>3 = 8 and 0x80>>3 = 16
    gic.cw(EOIR, 60)
    assert gic.cr(RPR) == 0x80
    gic.cw(EOIR, 50)
    assert gic.cr(RPR) == 0xFF


def test_binary_point_limits_preemption(gic):
    gic.enable()
    gic.cw(BPR, 4)  # group priority = bits 7:5
    gic.spi(50, 0x88)
    gic.spi(60, 0x80)
    gic.g.set_irq_level(50, True)
    assert gic.cr(IAR) == 50
    assert gic.cr(RPR) == 0x80  # group priority of 0x88 with BPR 4: 0x88 & 0xE0
    gic.g.set_irq_level(60, True)
    assert gic.cr(IAR) == 1023  # same group priority 0x80: no preemption
    gic.cw(BPR, 0)
    assert gic.cr(BPR) == 2  # raised to the minimum


def test_eoimode_split_priority_drop_and_deactivate(gic):
    gic.enable()
    gic.cw(C_CTLR, 0x201)  # EnableGrp0 | EOImodeS (bit 9)
    gic.spi(40, 0xA0)
    gic.dw(ISPENDR + 4, 0x100)  # software-set pending: cleared by the acknowledge
    gic.cw(DIR, 40)  # nothing active yet: no effect
    assert gic.cr(IAR) == 40
    gic.cw(EOIR, 40)
    assert gic.cr(RPR) == 0xFF  # priority dropped
    assert gic.dr(ISACTIVER + 4) == 0x100  # but still active
    gic.cw(DIR, 40)
    assert gic.dr(ISACTIVER + 4) == 0


def test_dir_ignored_without_eoimode(gic):
    gic.enable()
    gic.spi(40, 0xA0)
    gic.g.set_irq_level(40, True)
    assert gic.cr(IAR) == 40
    gic.cw(DIR, 40)
    assert gic.dr(ISACTIVER + 4) == 0x100


def test_eoi_of_spurious_or_unknown_intid_is_ignored(gic):
    gic.enable()
    gic.spi(40, 0xA0)
    gic.g.set_irq_level(40, True)
    assert gic.cr(IAR) == 40
    gic.cw(EOIR, 1023)
    gic.cw(EOIR, 500)  # beyond 288 interrupts
    assert gic.cr(RPR) == 0xA0
    assert gic.dr(ISACTIVER + 4) == 0x100


def test_sgi_from_cpu0_to_cpu1_reports_source(gic):
    gic.enable()
    # TargetListFilter 0 (bits 25:24), CPUTargetList 0b10 (bits 23:16), SGIINTID 5.
    gic.dw(SGIR, 0x00020005, cpu=0)
    assert gic.calls == [(1, True)]
    assert gic.cr(IAR, cpu=0) == 1023
    assert gic.cr(IAR, cpu=1) == 5  # source CPU 0 in bits 12:10
    gic.cw(EOIR, 5, cpu=1)
    # From CPU 1 to CPU 0, SGI 3: IAR = 3 | (1 << 10) = 0x403.
    gic.dw(SGIR, 0x00010003, cpu=1)
    assert gic.cr(HPPIR, cpu=0) == 0x403
    assert gic.cr(IAR, cpu=0) == 0x403


def test_sgi_target_filters():
    gic = Gic(cpus=3)
    gic.enable()
    gic.dw(SGIR, 0x01000007, cpu=1)  # filter 0b01: all but self, SGI 7
    assert gic.cr(IAR, cpu=1) == 1023
    assert gic.cr(IAR, cpu=0) == 0x407  # 7 | (source 1 << 10)
    assert gic.cr(IAR, cpu=2) == 0x407
    gic.dw(SGIR, 0x02000009, cpu=2)  # filter 0b10: self only, SGI 9
    gic.cw(EOIR, 0x407, cpu=0)
    assert gic.cr(IAR, cpu=0) == 1023  # SGI 9 went to CPU 2 only
    gic.cw(EOIR, 0x407, cpu=2)
    assert gic.cr(IAR, cpu=2) == 0x809  # 9 | (source 2 << 10)
    gic.dw(SGIR, 0x0000000B | (0x80 << 16), cpu=0)  # only nonexistent CPU 7 listed
    gic.dw(SGIR, 0x0300000C, cpu=0)  # filter 0b11 is reserved
    for cpu in range(3):
        assert gic.dr(SPENDSGIR + 8, cpu=cpu) == 0  # SGIs 8-11
        assert gic.dr(SPENDSGIR + 12, cpu=cpu) == 0  # SGIs 12-15


def test_sgi_from_two_sources_are_taken_separately():
    gic = Gic(cpus=3)
    gic.enable()
    gic.dw(SGIR, 0x00040004, cpu=0)  # SGI 4 to CPU 2
    gic.dw(SGIR, 0x00040004, cpu=1)
    assert gic.dr(SPENDSGIR + 4, cpu=2, width=B) == 0x03  # sources 0 and 1
    assert gic.cr(IAR, cpu=2) == 0x004  # lowest source first
    assert gic.dr(SPENDSGIR + 4, cpu=2, width=B) == 0x02
    gic.cw(EOIR, 0x004, cpu=2)
    assert gic.cr(IAR, cpu=2) == 0x404  # 4 | (1 << 10)


def test_spendsgir_cpendsgir_byte_access(gic):
    gic.enable()
    gic.dw(SPENDSGIR + 6, 0xFF, cpu=1, width=B)  # SGI 6 pending from sources 0 and 1 (2 CPUs)
    assert gic.dr(SPENDSGIR + 6, cpu=1, width=B) == 0x03
    assert gic.dr(SPENDSGIR + 4, cpu=1) == 0x00030000  # SGIs 4-7, byte 2 = SGI 6
    assert gic.dr(ISPENDR, cpu=1) == 0x40  # SGI 6 pending on CPU 1
    assert gic.dr(ISPENDR, cpu=0) == 0
    gic.dw(CPENDSGIR + 6, 0x01, cpu=1, width=B)
    assert gic.dr(CPENDSGIR + 6, cpu=1, width=B) == 0x02
    gic.dw(ISPENDR, 0x40, cpu=1)  # ISPENDR0 cannot change SGI state
    gic.dw(ICPENDR, 0x40, cpu=1)
    assert gic.dr(SPENDSGIR + 6, cpu=1, width=B) == 0x02
    assert gic.cr(IAR, cpu=1) == 0x406  # 6 | (1 << 10)


def test_ppis_are_banked_per_cpu(gic):
    gic.enable()
    gic.dw(ISENABLER, 1 << 27, cpu=0)  # virtual timer PPI 27 on CPU 0
    gic.dw(ISENABLER, 1 << 27, cpu=1)
    gic.dw(IPRIORITYR + 27, 0x80, cpu=0, width=B)
    assert gic.dr(IPRIORITYR + 27, cpu=1, width=B) == 0x00  # banked priority
    assert gic.dr(ISENABLER, cpu=0) == 0x0800FFFF  # PPI 27 + SGIs
    gic.dw(ICENABLER, 1 << 27, cpu=1)
    assert gic.dr(ISENABLER, cpu=1) == 0x0000FFFF
    assert gic.dr(ISENABLER, cpu=0) == 0x0800FFFF
    gic.dw(ISENABLER, 1 << 27, cpu=1)
    gic.g.set_ppi_level(1, 27, True)
    assert gic.calls == [(1, True)]
    assert gic.dr(ISPENDR, cpu=1) == 1 << 27
    assert gic.dr(ISPENDR, cpu=0) == 0
    assert gic.cr(IAR, cpu=0) == 1023
    assert gic.cr(IAR, cpu=1) == 27
    gic.g.set_ppi_level(0, 27, True)
    assert gic.cr(IAR, cpu=0) == 27
    assert gic.dr(ISACTIVER, cpu=0) == 1 << 27
    gic.cw(EOIR, 27, cpu=1)
    assert gic.dr(ISACTIVER, cpu=1) == 0
    assert gic.dr(ISACTIVER, cpu=0) == 1 << 27


def test_ppi_config_is_banked(gic):
    gic.dw(ICFGR + 4, 1 << 21, cpu=0)  # PPI 26 = field 10 of ICFGR1 -> bit 21: edge
    assert gic.dr(ICFGR + 4, cpu=0) == 0x200000
    assert gic.dr(ICFGR + 4, cpu=1) == 0
    gic.dw(ICFGR, 0, cpu=0)  # SGI configuration is read-only
    assert gic.dr(ICFGR) == 0xAAAAAAAA


def test_distributor_disabled_blocks_delivery(gic):
    gic.enable()
    gic.dw(CTLR, 0)
    gic.spi(40, 0xA0)
    gic.g.set_irq_level(40, True)
    assert gic.calls == []
    assert gic.cr(IAR) == 1023
    gic.dw(CTLR, 1)
    assert gic.calls == [(0, True)]
    gic.dw(CTLR, 0)
    assert gic.calls == [(0, True), (0, False)]
    assert gic.dr(ISPENDR + 4) == 0x100  # still pending in the distributor


def test_cpu_interface_disabled_blocks_delivery(gic):
    gic.enable()
    gic.cw(C_CTLR, 0, cpu=0)
    gic.spi(40, 0xA0, targets=0x3)
    gic.g.set_irq_level(40, True)
    assert gic.calls == [(1, True)]
    assert gic.cr(IAR, cpu=0) == 1023
    assert gic.cr(IAR, cpu=1) == 40


def test_disabled_interrupt_is_not_delivered_until_enabled(gic):
    gic.enable()
    gic.spi(40, 0xA0, enable=False)
    gic.g.set_irq_level(40, True)
    assert gic.calls == []
    assert gic.dr(ISPENDR + 4) == 0x100  # pending regardless of the enable
    gic.dw(ISENABLER + 4, 0x100)
    assert gic.calls == [(0, True)]
    gic.dw(ICENABLER + 4, 0x100)
    assert gic.calls == [(0, True), (0, False)]
    assert gic.dr(ICENABLER + 4) == 0


def test_nothing_pending_reads_1023(gic):
    gic.enable()
    for cpu in (0, 1):
        assert gic.cr(IAR, cpu) == 1023
        assert gic.cr(HPPIR, cpu) == 1023
        assert gic.cr(AIAR, cpu) == 1023
    assert gic.calls == []


def test_software_pending_and_active_registers(gic):
    gic.enable()
    gic.spi(40, 0xA0)
    gic.dw(ISPENDR + 4, 0x100)
    assert gic.calls == [(0, True)]
    gic.dw(ICPENDR + 4, 0x100)
    assert gic.calls == [(0, True), (0, False)]
    assert gic.dr(ICPENDR + 4) == 0
    gic.g.set_irq_level(40, True)
    gic.dw(ICPENDR + 4, 0x100)  # level line still high: remains pending
    assert gic.dr(ISPENDR + 4) == 0x100
    gic.dw(ISACTIVER + 4, 0x100)
    assert gic.calls[-1] == (0, False)  # active: no longer a candidate
    assert gic.dr(ICACTIVER + 4) == 0x100
    gic.dw(ICACTIVER + 4, 0x100)
    assert gic.calls[-1] == (0, True)


def test_priority_and_target_byte_access(gic):
    gic.dw(IPRIORITYR + 41, 0xA5, width=B)
    assert gic.dr(IPRIORITYR + 41, width=B) == 0xA0  # bits 2:0 not implemented
    gic.dw(IPRIORITYR + 40, 0x10, width=B)
    # IPRIORITYR10 (0x428) holds INTIDs 40..43 in bytes 0..3.
    assert gic.dr(IPRIORITYR + 40) == 0x0000A010
    gic.dw(IPRIORITYR + 44, 0x44332211)  # word write: INTIDs 44..47
    assert gic.dr(IPRIORITYR + 46, width=B) == 0x30
    assert gic.dr(IPRIORITYR + 44) == 0x40302010
    gic.dw(ITARGETSR + 33, 0xFF, width=B)
    assert gic.dr(ITARGETSR + 33, width=B) == 0x03  # only CPUs 0 and 1 exist
    assert gic.dr(ITARGETSR + 32) == 0x00000300
    # ITARGETSR0-7 (INTIDs 0-31) read as the reading CPU's own bit.
    assert gic.dr(ITARGETSR, cpu=1) == 0x02020202
    assert gic.dr(ITARGETSR + 28, cpu=0) == 0x01010101
    gic.dw(ITARGETSR, 0x03030303, cpu=0)  # read-only
    assert gic.dr(ITARGETSR, cpu=0) == 0x01010101


def test_uniprocessor_targets_raz_and_spis_reach_cpu0():
    gic = Gic(cpus=1)
    gic.enable()
    gic.spi(40, 0xA0, targets=0x1)
    assert gic.dr(ITARGETSR + 40, width=B) == 0
    assert gic.dr(ITARGETSR) == 0
    gic.g.set_irq_level(40, True)
    assert gic.calls == [(0, True)]
    assert gic.cr(IAR) == 40


def test_nonexistent_interrupts_are_raz_wi():
    gic = Gic(cpus=1, irqs=64)
    gic.dw(ISENABLER + 8, 0xFFFFFFFF)  # INTIDs 64-95 do not exist
    assert gic.dr(ISENABLER + 8) == 0
    gic.dw(IPRIORITYR + 64, 0x80, width=B)
    assert gic.dr(IPRIORITYR + 64, width=B) == 0
    with pytest.raises(InvalidInput):
        gic.g.set_irq_level(64, True)


def test_groups_and_ackctl(gic):
    gic.spi(40, 0xA0)
    gic.dw(IGROUPR + 4, 0x100)  # INTID 40 -> group 1
    gic.dw(CTLR, 0x3)  # EnableGrp0 | EnableGrp1
    gic.cw(PMR, 0xF0)
    gic.cw(C_CTLR, 0x1)  # group 0 only
    gic.g.set_irq_level(40, True)
    assert gic.calls == []
    gic.cw(C_CTLR, 0x3)  # both groups
    assert gic.calls == [(0, True)]
    assert gic.cr(HPPIR) == 1022  # group 1 and AckCtl = 0
    assert gic.cr(IAR) == 1022
    assert gic.cr(AHPPIR) == 40
    assert gic.cr(AIAR) == 40
    assert gic.cr(RPR) == 0xA0
    gic.cw(EOIR, 40)  # group 1 through EOIR without AckCtl: ignored
    assert gic.cr(RPR) == 0xA0
    gic.cw(AEOIR, 40)
    assert gic.cr(RPR) == 0xFF
    assert gic.dr(ISACTIVER + 4) == 0
    gic.cw(C_CTLR, 0x7)  # AckCtl: GICC_IAR takes group 1 too
    assert gic.cr(IAR) == 40
    gic.cw(EOIR, 40)
    assert gic.cr(RPR) == 0xFF


def test_aiar_ignores_group0(gic):
    gic.enable()
    gic.spi(40, 0xA0)
    gic.g.set_irq_level(40, True)
    assert gic.cr(AHPPIR) == 1023
    assert gic.cr(AIAR) == 1023
    assert gic.cr(IAR) == 40


def test_fiqen_routes_group0_to_fiq(gic):
    gic.enable()
    gic.cw(C_CTLR, 0x9)  # EnableGrp0 | FIQEn
    gic.spi(40, 0xA0)
    gic.g.set_irq_level(40, True)
    assert gic.calls == []
    assert gic.fiqs == [(0, True)]
    assert gic.g.fiq_asserted(0)
    assert not gic.g.irq_asserted(0)
    assert gic.cr(IAR) == 40
    assert gic.fiqs == [(0, True), (0, False)]


def test_bad_accesses(gic):
    with pytest.raises(BadMmioAccess):
        gic.dr(IPRIORITYR, width=W)  # halfword: not allowed anywhere
    with pytest.raises(BadMmioAccess):
        gic.dr(CTLR, width=B)  # GICD_CTLR is word-accessible only
    with pytest.raises(BadMmioAccess):
        gic.dw(ISENABLER + 1, 1, width=B)
    with pytest.raises(BadMmioAccess):
        gic.dr(TYPER, width=Q)
    with pytest.raises(BadMmioAccess):
        gic.dr(IPRIORITYR + 2)  # unaligned word
    with pytest.raises(BadMmioAccess):
        gic.dr(0x1000)
    with pytest.raises(BadMmioAccess):
        gic.g.cpu_interface.mmio_read(IAR, B, 0)
    with pytest.raises(BadMmioAccess):
        gic.g.cpu_interface.mmio_read(IAR, Q, 0)
    with pytest.raises(BadMmioAccess):
        gic.cr(0x2000)
    with pytest.raises(BadMmioAccess):
        gic.cr(IAR, cpu=2)  # no such CPU interface
    assert gic.dr(0xD00) == 0  # reserved / IMPLEMENTATION DEFINED: RAZ
    assert gic.cr(0x40) == 0
    assert gic.cr(DIR) == 0  # write-only


def test_input_validation(gic):
    with pytest.raises(InvalidInput):
        gic.g.set_irq_level(27, True)  # a PPI: use set_ppi_level
    with pytest.raises(InvalidInput):
        gic.g.set_irq_level(288, True)
    with pytest.raises(InvalidInput):
        gic.g.set_ppi_level(2, 27, True)
    with pytest.raises(InvalidInput):
        gic.g.set_ppi_level(0, 15, True)


def test_abpr_minimum_and_reset(gic):
    gic.cw(ABPR, 0)
    assert gic.cr(ABPR) == 3
    gic.enable()
    gic.spi(40, 0xA0)
    gic.g.set_irq_level(40, True)
    assert gic.cr(IAR) == 40
    gic.g.reset()
    assert gic.calls[-1] == (0, False)
    assert gic.cr(RPR) == 0xFF
    assert gic.dr(ISACTIVER + 4) == 0
    assert gic.dr(CTLR) == 0


def test_pl011_through_bus_reaches_cpu0():
    calls = []
    gic = GicV2(1, 288, on_cpu_irq=lambda c, a: calls.append((c, a)))
    uart = Pl011(irq=IrqLine(gic, 33))
    bus = MmioBus()
    bus.attach(0x0800_0000, 0x1000, gic.distributor)
    bus.attach(0x0801_0000, 0x2000, gic.cpu_interface)
    bus.attach(0x0900_0000, 0x1000, uart)
    bus.write(0x0800_0000, D, 1)  # GICD_CTLR
    bus.write(0x0800_0104, D, 0x2)  # ISENABLER1 bit 1 = INTID 33
    bus.write(0x0801_0004, D, 0xF0)  # GICC_PMR
    bus.write(0x0801_0000, D, 1)  # GICC_CTLR
    bus.write(0x0900_0038, D, 0x10)  # UARTIMSC = RXIM
    uart.receive(b"k")
    assert calls == [(0, True)]
    assert bus.read(0x0801_000C, D) == 33  # GICC_IAR
    assert bus.read(0x0900_0000, D) == ord("k")  # reading the char lowers the UART line
    bus.write(0x0801_0010, D, 33)  # GICC_EOIR
    assert calls == [(0, True), (0, False)]
    assert bus.read(0x0801_000C, D) == 1023


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(32, 287), st.integers(0, 0xFF), min_size=1, max_size=12))
def test_acknowledge_order_is_priority_then_intid(prios):
    gic = Gic(cpus=1)
    gic.enable(pmr=0xF8)
    for intid, prio in prios.items():
        gic.spi(intid, prio)
        gic.dw(ISPENDR + 4 * (intid // 32), 1 << (intid % 32))
    # Only priorities below PMR 0xF8 can be taken; 5 implemented bits (& 0xF8).
    takeable = {i: p & 0xF8 for i, p in prios.items() if p & 0xF8 < 0xF8}
    expected = sorted(takeable, key=lambda i: (takeable[i], i))
    got = []
    while (intid := gic.cr(IAR)) != 1023:
        got.append(intid)
        gic.cw(EOIR, intid)
    assert got == expected


_OPS = st.one_of(
    st.tuples(st.just("line"), st.integers(32, 39), st.booleans()),
    st.tuples(st.just("ppi"), st.integers(0, 1), st.integers(16, 31), st.booleans()),
    st.tuples(st.just("prio"), st.integers(16, 39), st.integers(0, 0xFF)),
    st.tuples(st.just("target"), st.integers(32, 39), st.integers(0, 3)),
    st.tuples(st.just("enable"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("pend"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("pmr"), st.integers(0, 1), st.integers(0, 0xFF)),
    st.tuples(st.just("cctlr"), st.integers(0, 1), st.integers(0, 1)),
    st.tuples(st.just("dctlr"), st.integers(0, 1)),
    st.tuples(st.just("sgi"), st.integers(0, 1), st.integers(0, 15), st.integers(0, 3)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_OPS, max_size=25))
def test_iar_takes_what_hppir_names_whatever_changed_before(ops):
    # With nothing active the running priority is idle, so GICC_IAR must acknowledge
    # the interrupt GICC_HPPIR names (IHI 0048B 3.2.2, 4.4.8), whichever register or
    # input changed last: IAR's answer is kept from the last change, HPPIR's is not.
    gic = Gic(cpus=2)
    gic.enable(pmr=0xF8)
    for intid in range(32, 40):
        gic.spi(intid, 0x80, enable=False)
    for op, *args in ops:
        if op == "line":
            gic.g.set_irq_level(args[0], args[1])
        elif op == "ppi":
            gic.g.set_ppi_level(*args)
        elif op == "prio":
            gic.dw(IPRIORITYR + args[0], args[1], width=B)
        elif op == "target":
            gic.dw(ITARGETSR + args[0], args[1], width=B)
        elif op == "enable":
            gic.dw((ISENABLER if args[1] else ICENABLER) + 4, 0xFF, cpu=args[0])
            gic.dw((ISENABLER if args[1] else ICENABLER), 0xFFFF0000, cpu=args[0])
        elif op == "pend":
            gic.dw((ISPENDR if args[1] else ICPENDR) + 4, 0x0F, cpu=args[0])
        elif op == "pmr":
            gic.cw(PMR, args[1], cpu=args[0])
        elif op == "cctlr":
            gic.cw(C_CTLR, args[1], cpu=args[0])
        elif op == "dctlr":
            gic.dw(CTLR, args[0])
        else:
            cpu, sgi, targets = args
            gic.dw(SGIR, (targets << 16) | sgi, cpu=cpu)
    for cpu in (0, 1):
        named = gic.cr(HPPIR, cpu)
        taken = gic.cr(IAR, cpu)
        assert taken == named, f"CPU {cpu}: IAR {taken:#x}, HPPIR named {named:#x}"


def test_concurrent_edge_inputs_are_all_delivered():
    gic = Gic(cpus=1)
    gic.enable()
    for word in (8, 12, 16, 20):  # ICFGR2..5 cover INTIDs 32..95: all edge (0b10 per field)
        gic.dw(ICFGR + word, 0xAAAAAAAA)
    for intid in range(32, 96):
        gic.spi(intid, 0x80)

    def pulse(first):
        for intid in range(first, 96, 4):
            line = IrqLine(gic.g, intid)
            line.pulse()

    threads = [threading.Thread(target=pulse, args=(32 + k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = []
    while (intid := gic.cr(IAR)) != 1023:
        got.append(intid)
        gic.cw(EOIR, intid)
    assert got == list(range(32, 96))  # equal priorities: ascending INTID
    assert not gic.g.irq_asserted(0)


def test_callback_may_acknowledge_from_inside():
    acked = []
    gic = GicV2(1, 64)

    def on_irq(cpu, asserted):
        if asserted:
            acked.append(gic.cpu_interface.mmio_read(IAR, D, cpu))

    gic.on_cpu_irq = on_irq
    gic.distributor.mmio_write(CTLR, D, 1, 0)
    gic.cpu_interface.mmio_write(PMR, D, 0xF0, 0)
    gic.cpu_interface.mmio_write(C_CTLR, D, 1, 0)
    gic.distributor.mmio_write(ISENABLER + 4, D, 1 << 8, 0)  # INTID 40
    gic.set_irq_level(40, True)
    assert acked == [40]
    assert not gic.irq_asserted(0)  # acknowledged inside the callback: line dropped

"""ARM Generic Interrupt Controller, architecture version 2 (GIC-400-like).

One :class:`GicV2` holds the state of a distributor and of ``num_cpus`` CPU
interfaces. It exposes two MMIO devices that share it:

* :attr:`GicV2.distributor` -- the 4 KiB GICD window (QEMU ``virt``: 0x0800_0000);
* :attr:`GicV2.cpu_interface` -- the 8 KiB GICC window (QEMU ``virt``: 0x0801_0000),
  banked by the accessing CPU (the bus's ``vcpu_id``).

It is the :class:`~pyaxvisor.devices.irq.IrqSink` of the shared peripheral
interrupts (``set_irq_level(intid, level)``, 32 <= intid < num_irqs) and takes
per-CPU PPIs through :meth:`GicV2.set_ppi_level`. Its outputs are the
``on_cpu_irq(cpu, asserted)`` callback, called whenever a CPU interface's IRQ
request changes, and the optional ``on_cpu_fiq`` for group 0 interrupts when
GICC_CTLR.FIQEn is set.

Behaviour follows the GICv2 architecture specification (ARM IHI 0048B) for an
implementation *without* the Security Extensions (all accesses are treated as
Secure, so both interrupt groups are visible), with QEMU's ``hw/intc/arm_gic.c``
as the reference where the specification leaves a choice:

* **Priorities** have 5 implemented bits, as on the GIC-400: IPRIORITYR fields
  and GICC_PMR keep bits 7:3 (writes are ANDed with 0xF8). The minimum binary
  point is 2 for GICC_BPR and 3 for GICC_ABPR (smaller writes are raised to
  the minimum); those are also the reset values. The running priority is
  derived from GICC_APR0 (group 0) and GICC_NSAPR0 (group 1), one bit per
  group-priority value ``gp >> 3``; it reads 0xFF when nothing is active.
* **Groups**: every interrupt is group 0 until GICD_IGROUPR makes it group 1.
  GICD_CTLR bit 0/1 and GICC_CTLR bit 0/1 enable group 0/1. An interrupt is
  considered for a CPU only when its group is enabled in both. GICC_IAR/HPPIR
  return 1022 when the best interrupt is group 1 and GICC_CTLR.AckCtl is 0;
  GICC_AIAR/AEOIR/AHPPIR are the group-1 views (1023 when the best is group
  0). GICC_CTLR.CBPR makes group 1 use GICC_BPR. Group 0 interrupts are
  signalled on FIQ instead of IRQ when GICC_CTLR.FIQEn is set. The bypass
  bits are stored and have no effect.
* **Selection**: the highest-priority (numerically lowest) interrupt that is
  pending, not active, enabled, of an enabled group and (for SPIs) targeted at
  the CPU wins; ties go to the lowest INTID. It is signalled when its priority
  is below GICC_PMR and its group priority below the running priority.
  GICC_HPPIR applies the PMR but not the running priority (as QEMU does).
* **Acknowledge** (GICC_IAR) makes the interrupt active and records its group
  priority in the active-priority register. Edge interrupts and software-set
  pending state are cleared; a level interrupt whose line is still high
  remains pending (active and pending). An SGI reports and clears the lowest
  pending source CPU (bits 12:10); other sources stay pending.
* **End of interrupt**: GICC_EOIR drops the running priority and, when
  GICC_CTLR.EOImodeS (bit 9) is 0, deactivates the interrupt. With EOImodeS=1
  GICC_DIR deactivates; GICC_DIR writes are ignored while EOImodeS is 0.
  Writes naming a spurious or nonexistent INTID, or arriving with nothing
  active, are ignored. Bit 10 (EOImodeNS) is stored only.
* **SGIs** are permanently enabled (ISENABLER0 bits 15:0 read as one, writes
  ignored) and edge-triggered; their pending state is kept per source CPU
  (GICD_SGIR, GICD_SPENDSGIRn, GICD_CPENDSGIRn) and cannot be changed through
  ISPENDR0/ICPENDR0. Their active state is one bit per SGI per CPU.
* **Trigger mode**: GICD_ICFGR0 (SGIs) reads 0xAAAAAAAA and ignores writes;
  PPI configuration (ICFGR1) is programmable and banked per CPU; bit 0 of
  each field reads as zero. PPIs and SPIs reset to level-sensitive.
* **Targets**: GICD_ITARGETSR fields for SPIs keep bits of existing CPUs; the
  fields of INTIDs 0-31 read as the accessing CPU's own bit. With a single
  CPU all GICD_ITARGETSR read as zero and every SPI goes to CPU 0 (IHI 0048B
  4.3.12).
* **Access sizes**: all registers take aligned 32-bit accesses; byte accesses
  are accepted only for GICD_IPRIORITYR, GICD_ITARGETSR and
  GICD_CPENDSGIR/SPENDSGIR. Any other access size or alignment, and offsets
  past a window, raise :class:`BadAccess`. Reserved offsets inside a
  window read as zero and ignore writes.
* GICD_IIDR/GICC_IIDR and the ID registers carry GIC-400 values
  (GICD_PIDR2 = 0x2B: ArchRev 2).

Callbacks run with the GIC's (re-entrant) lock held, after the state change
is complete; they must not wait for another thread that may access the GIC.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth

#: Window sizes.
DIST_SIZE = 0x1000
CPU_IF_SIZE = 0x2000

MAX_CPUS = 8
#: Implemented priority bits and the mask that keeps them.
PRIORITY_BITS = 5
PRIORITY_MASK = (0xFF << (8 - PRIORITY_BITS)) & 0xFF  # 0xF8
IDLE_PRIORITY = 0xFF
#: INTIDs GICC_IAR returns when nothing can be acknowledged.
SPURIOUS = 1023
SPURIOUS_GROUP1 = 1022

# Distributor register offsets.
GICD_CTLR = 0x000
GICD_TYPER = 0x004
GICD_IIDR = 0x008
GICD_IGROUPR = 0x080
GICD_ISENABLER = 0x100
GICD_ICENABLER = 0x180
GICD_ISPENDR = 0x200
GICD_ICPENDR = 0x280
GICD_ISACTIVER = 0x300
GICD_ICACTIVER = 0x380
GICD_IPRIORITYR = 0x400
GICD_ITARGETSR = 0x800
GICD_ICFGR = 0xC00
GICD_SGIR = 0xF00
GICD_CPENDSGIR = 0xF10
GICD_SPENDSGIR = 0xF20
GICD_PIDR2 = 0xFE8

# CPU interface register offsets.
GICC_CTLR = 0x00
GICC_PMR = 0x04
GICC_BPR = 0x08
GICC_IAR = 0x0C
GICC_EOIR = 0x10
GICC_RPR = 0x14
GICC_HPPIR = 0x18
GICC_ABPR = 0x1C
GICC_AIAR = 0x20
GICC_AEOIR = 0x24
GICC_AHPPIR = 0x28
GICC_APR0 = 0xD0
GICC_NSAPR0 = 0xE0
GICC_IIDR = 0xFC
GICC_DIR = 0x1000

# GICC_CTLR bits (no Security Extensions / Secure view).
CTLR_ENABLE_GRP0 = 1 << 0
CTLR_ENABLE_GRP1 = 1 << 1
CTLR_ACKCTL = 1 << 2
CTLR_FIQEN = 1 << 3
CTLR_CBPR = 1 << 4
CTLR_EOIMODE_S = 1 << 9
_CCTLR_MASK = 0x7FF

_GICD_IIDR_VALUE = 0x0200143B  # GIC-400 r0p0, implementer ARM
_GICC_IIDR_VALUE = 0x0202143B  # GIC-400, architecture version 2
_DIST_ID = {  # GIC-400 peripheral / component ID registers
    0xFD0: 0x04, 0xFE0: 0x90, 0xFE4: 0xB4, 0xFE8: 0x2B, 0xFEC: 0x00,
    0xFF0: 0x0D, 0xFF4: 0xF0, 0xFF8: 0x05, 0xFFC: 0xB1,
}

_M32 = 0xFFFF_FFFF
_SGI_BITS = 0x0000_FFFF
_MIN_BPR = 7 - PRIORITY_BITS  # 2: group priority covers all implemented bits
_MIN_ABPR = _MIN_BPR + 1


def _lowest_bit(value: int) -> int:
    return (value & -value).bit_length() - 1


class _Bits:
    """One bit per interrupt: INTIDs 0-31 banked per CPU, 32 and up shared."""

    __slots__ = ("priv", "spi")

    def __init__(self, num_cpus: int, priv_reset: int = 0) -> None:
        self.priv = [priv_reset] * num_cpus
        self.spi = 0

    def word(self, cpu: int, n: int) -> int:
        return self.priv[cpu] if n == 0 else (self.spi >> (32 * n)) & _M32

    def set_word(self, cpu: int, n: int, value: int) -> None:
        if n == 0:
            self.priv[cpu] = value & _M32
        else:
            shift = 32 * n
            self.spi = (self.spi & ~(_M32 << shift)) | ((value & _M32) << shift)

    def test(self, cpu: int, intid: int) -> bool:
        bits = self.priv[cpu] if intid < 32 else self.spi
        return bool((bits >> intid) & 1)

    def assign(self, cpu: int, intid: int, on: bool) -> None:
        if intid < 32:
            if on:
                self.priv[cpu] |= 1 << intid
            else:
                self.priv[cpu] &= ~(1 << intid)
        elif on:
            self.spi |= 1 << intid
        else:
            self.spi &= ~(1 << intid)


class GicDistributor(Device):
    """The GICD window of a :class:`GicV2`."""

    name = "gicv2-distributor"

    def __init__(self, gic: GicV2) -> None:
        self.gic = gic

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        return self.gic._dist_read(offset, width, vcpu_id)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self.gic._dist_write(offset, width, value, vcpu_id)


class GicCpuInterface(Device):
    """The GICC window of a :class:`GicV2`, banked by the accessing CPU."""

    name = "gicv2-cpu-interface"

    def __init__(self, gic: GicV2) -> None:
        self.gic = gic

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        return self.gic._cpu_read(offset, width, vcpu_id)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self.gic._cpu_write(offset, width, value, vcpu_id)


class GicV2:
    """A GICv2 distributor plus ``num_cpus`` CPU interfaces."""

    def __init__(
        self,
        num_cpus: int = 1,
        num_irqs: int = 288,
        on_cpu_irq: Callable[[int, bool], None] | None = None,
        on_cpu_fiq: Callable[[int, bool], None] | None = None,
    ) -> None:
        if not 1 <= num_cpus <= MAX_CPUS:
            raise InvalidInput(f"GICv2 supports 1..{MAX_CPUS} CPUs, not {num_cpus}")
        if num_irqs % 32 or not 32 <= num_irqs <= 1024:
            raise InvalidInput(
                f"GICv2 interrupt count must be a multiple of 32 in 32..1024, not {num_irqs}")
        self.num_cpus = num_cpus
        self.num_irqs = num_irqs
        #: INTIDs 0..lines-1 exist (1020-1023 are reserved even with ITLinesNumber 31).
        self._lines = min(num_irqs, 1020)
        self._cpu_mask = (1 << num_cpus) - 1
        self._spi_all = ((1 << self._lines) - 1) & ~_M32
        self.on_cpu_irq = on_cpu_irq
        self.on_cpu_fiq = on_cpu_fiq
        self._lock = threading.RLock()
        self._irq_out = [False] * num_cpus
        self._fiq_out = [False] * num_cpus
        # Inputs survive reset.
        self._line = _Bits(num_cpus)
        self._reset_state()
        self.distributor = GicDistributor(self)
        self.cpu_interface = GicCpuInterface(self)

    # ------------------------------------------------------------------ inputs

    def set_irq_level(self, irq: int, level: bool) -> None:
        """Drive the input line of SPI ``irq`` (32 <= irq < num_irqs)."""
        if not 32 <= irq < self._lines:
            raise InvalidInput(
                f"GICv2 SPI inputs are INTIDs 32..{self._lines - 1}, not {irq}"
                + (" (use set_ppi_level for PPIs)" if 16 <= irq < 32 else ""))
        with self._lock:
            self._drive(0, irq, bool(level))

    def set_ppi_level(self, cpu: int, intid: int, level: bool) -> None:
        """Drive PPI ``intid`` (16..31) of CPU ``cpu``."""
        self._check_cpu(cpu)
        if not 16 <= intid < 32:
            raise InvalidInput(f"GICv2 PPIs are INTIDs 16..31, not {intid}")
        with self._lock:
            self._drive(cpu, intid, bool(level))

    # ------------------------------------------------------------------ outputs

    def irq_asserted(self, cpu: int) -> bool:
        """The IRQ request CPU interface ``cpu`` currently drives."""
        self._check_cpu(cpu)
        with self._lock:
            return self._irq_out[cpu]

    def fiq_asserted(self, cpu: int) -> bool:
        """The FIQ request CPU interface ``cpu`` currently drives."""
        self._check_cpu(cpu)
        with self._lock:
            return self._fiq_out[cpu]

    def reset(self) -> None:
        """Return every register to its reset value (input line levels are kept)."""
        with self._lock:
            self._reset_state()
            self._update()

    # ------------------------------------------------------------------ state

    def _reset_state(self) -> None:
        n = self.num_cpus
        self._dctlr = 0
        self._group = _Bits(n)
        self._enabled = _Bits(n, priv_reset=_SGI_BITS)  # SGIs are always enabled
        self._latch = _Bits(n)  # edge-latched or software-set pending state (not SGIs)
        self._active = _Bits(n)
        self._edge = _Bits(n, priv_reset=_SGI_BITS)  # SGIs are edge-triggered
        self._prio_priv = [bytearray(32) for _ in range(n)]
        self._prio_spi = bytearray(self._lines)
        self._targets = bytearray(self._lines)
        # Per CPU: bitmap of the SPIs whose ITARGETSR names it.
        self._target_map = [self._spi_all if n == 1 else 0] + [0] * (n - 1)
        # Per target CPU and SGI: bitmap of source CPUs with the SGI pending.
        self._sgi_src = [[0] * 16 for _ in range(n)]
        self._cctlr = [0] * n
        self._pmr = [0] * n
        self._bpr = [_MIN_BPR] * n
        self._abpr = [_MIN_ABPR] * n
        self._apr = [0] * n
        self._nsapr = [0] * n
        # Per CPU: what _signalled gave at the last _update. Every change of the state
        # above ends with _update (under the lock), so it is what GICC_IAR acknowledges.
        self._best: list[tuple[int, int, int] | None] = [None] * n

    def _check_cpu(self, cpu: int) -> None:
        if not 0 <= cpu < self.num_cpus:
            raise InvalidInput(f"GICv2 has CPUs 0..{self.num_cpus - 1}, not {cpu}")

    def _drive(self, cpu: int, intid: int, level: bool) -> None:
        if self._line.test(cpu, intid) == level:
            return
        self._line.assign(cpu, intid, level)
        if level and self._edge.test(cpu, intid):
            self._latch.assign(cpu, intid, True)
        self._update()

    def _priority(self, cpu: int, intid: int) -> int:
        return self._prio_priv[cpu][intid] if intid < 32 else self._prio_spi[intid]

    def _sgi_pending_bits(self, cpu: int) -> int:
        sgis = self._sgi_src[cpu]
        if not any(sgis):  # the common case, checked without a Python loop
            return 0
        bits = 0
        for sgi, sources in enumerate(sgis):
            if sources:
                bits |= 1 << sgi
        return bits

    def _pending_priv(self, cpu: int) -> int:
        level = self._line.priv[cpu] & ~self._edge.priv[cpu]
        return ((self._latch.priv[cpu] | level) & ~_SGI_BITS) | self._sgi_pending_bits(cpu)

    def _pending_spi(self) -> int:
        return self._latch.spi | (self._line.spi & ~self._edge.spi)

    def _pending_word(self, cpu: int, n: int) -> int:
        if n == 0:
            return self._pending_priv(cpu)
        return (self._pending_spi() >> (32 * n)) & _M32

    def _hppi(self, cpu: int) -> tuple[int, int, int] | None:
        """(INTID, priority, group) of the best candidate for ``cpu``, or None."""
        cctlr = self._cctlr[cpu]
        g0 = bool(self._dctlr & 1 and cctlr & CTLR_ENABLE_GRP0)
        g1 = bool(self._dctlr & 2 and cctlr & CTLR_ENABLE_GRP1)
        if not (g0 or g1):
            return None
        grp_priv, grp_spi = self._group.priv[cpu], self._group.spi
        gmask_priv = (grp_priv if g1 else 0) | (~grp_priv & _M32 if g0 else 0)
        gmask_spi = (grp_spi if g1 else 0) | (~grp_spi & self._spi_all if g0 else 0)
        cands = (self._pending_priv(cpu) & self._enabled.priv[cpu]
                 & ~self._active.priv[cpu] & gmask_priv)
        cands |= (self._pending_spi() & self._enabled.spi & ~self._active.spi
                  & self._target_map[cpu] & gmask_spi)
        if not cands:
            return None
        if not cands & (cands - 1):  # one candidate, the common case: no search
            intid = cands.bit_length() - 1
            return intid, self._priority(cpu, intid), int(self._group.test(cpu, intid))
        best: tuple[int, int] | None = None
        while cands:
            low = cands & -cands
            cands ^= low
            intid = low.bit_length() - 1
            prio = self._priority(cpu, intid)
            if best is None or prio < best[1]:  # ascending INTIDs: ties keep the lowest
                best = (intid, prio)
        if best is None:
            return None
        return best[0], best[1], int(self._group.test(cpu, best[0]))

    def _group_priority(self, cpu: int, prio: int, group: int) -> int:
        # Group 1 uses GICC_ABPR, whose values are one above GICC_BPR's, unless CBPR is set.
        split = group and not self._cctlr[cpu] & CTLR_CBPR
        bpr = self._abpr[cpu] - 1 if split else self._bpr[cpu]
        return prio & (0xFF << (bpr + 1)) & 0xFF

    def _running_priority(self, cpu: int) -> int:
        active = self._apr[cpu] | self._nsapr[cpu]
        if not active:
            return IDLE_PRIORITY
        return _lowest_bit(active) << (8 - PRIORITY_BITS)

    def _signalled(self, cpu: int) -> tuple[int, int, int] | None:
        """The HPPI if it has enough priority to be signalled / acknowledged."""
        best = self._hppi(cpu)
        if best is None:
            return None
        _, prio, group = best
        if prio >= self._pmr[cpu]:
            return None
        if self._group_priority(cpu, prio, group) >= self._running_priority(cpu):
            return None
        return best

    def _update(self) -> None:
        """Recompute each CPU's IRQ/FIQ request and report changes."""
        for cpu in range(self.num_cpus):
            best = self._best[cpu] = self._signalled(cpu)
            irq = fiq = False
            if best is not None:
                if best[2] == 0 and self._cctlr[cpu] & CTLR_FIQEN:
                    fiq = True
                else:
                    irq = True
            if irq != self._irq_out[cpu]:
                self._irq_out[cpu] = irq
                if self.on_cpu_irq is not None:
                    self.on_cpu_irq(cpu, irq)
            if fiq != self._fiq_out[cpu]:
                self._fiq_out[cpu] = fiq
                if self.on_cpu_fiq is not None:
                    self.on_cpu_fiq(cpu, fiq)

    def _with_source(self, cpu: int, intid: int) -> int:
        if intid < 16:
            return intid | (_lowest_bit(self._sgi_src[cpu][intid]) << 10)
        return intid

    # ------------------------------------------------------------------ CPU interface ops

    def _acknowledge(self, cpu: int, alias: bool) -> int:
        best = self._best[cpu]
        if best is None:
            return SPURIOUS
        intid, prio, group = best
        if alias and group == 0:
            return SPURIOUS
        if not alias and group == 1 and not self._cctlr[cpu] & CTLR_ACKCTL:
            return SPURIOUS_GROUP1
        value = self._with_source(cpu, intid)
        if intid < 16:
            self._sgi_src[cpu][intid] &= ~(1 << (value >> 10))
        else:
            self._latch.assign(cpu, intid, False)
        self._active.assign(cpu, intid, True)
        level = 1 << (self._group_priority(cpu, prio, group) >> (8 - PRIORITY_BITS))
        if group:
            self._nsapr[cpu] |= level
        else:
            self._apr[cpu] |= level
        self._update()
        return value

    def _highest_pending(self, cpu: int, alias: bool) -> int:
        best = self._hppi(cpu)
        if best is None or best[1] >= self._pmr[cpu]:
            return SPURIOUS
        intid, _, group = best
        if alias and group == 0:
            return SPURIOUS
        if not alias and group == 1 and not self._cctlr[cpu] & CTLR_ACKCTL:
            return SPURIOUS_GROUP1
        return self._with_source(cpu, intid)

    def _end_of_interrupt(self, cpu: int, value: int, alias: bool) -> None:
        intid = value & 0x3FF
        if intid >= self._lines:
            return
        group = int(self._group.test(cpu, intid))
        if alias and group == 0:
            return
        if not alias and group == 1 and not self._cctlr[cpu] & CTLR_ACKCTL:
            return
        own, other = (self._nsapr, self._apr) if group else (self._apr, self._nsapr)
        if own[cpu]:
            own[cpu] &= own[cpu] - 1  # drop the highest active priority
        elif other[cpu]:
            other[cpu] &= other[cpu] - 1
        else:
            return  # nothing is active: ignore
        if not self._cctlr[cpu] & CTLR_EOIMODE_S:
            self._active.assign(cpu, intid, False)
        self._update()

    def _deactivate(self, cpu: int, value: int) -> None:
        intid = value & 0x3FF
        if intid >= self._lines or not self._cctlr[cpu] & CTLR_EOIMODE_S:
            return
        self._active.assign(cpu, intid, False)
        self._update()

    def _send_sgi(self, cpu: int, value: int) -> None:
        sgi = value & 0xF
        target_filter = (value >> 24) & 3
        if target_filter == 0:
            targets = (value >> 16) & self._cpu_mask
        elif target_filter == 1:
            targets = self._cpu_mask & ~(1 << cpu)
        elif target_filter == 2:
            targets = 1 << cpu
        else:
            return  # reserved
        for target in range(self.num_cpus):
            if targets >> target & 1:
                self._sgi_src[target][sgi] |= 1 << cpu

    # ------------------------------------------------------------------ access checks

    def _check_access(self, window: str, size: int, offset: int, width: AccessWidth,
                      vcpu_id: int, byte_ok: bool, write: bool) -> None:
        # every guest access comes through here: the message is only built for a refusal
        problem = None
        if not 0 <= vcpu_id < self.num_cpus:
            problem = f"CPU {vcpu_id} has no CPU interface"
        elif offset < 0 or offset + width > size:
            problem = f"outside the {size:#x}-byte window"
        elif width == AccessWidth.Dword:
            if offset & 3:
                problem = "not 4-byte aligned"
        elif width != AccessWidth.Byte or not byte_ok:
            problem = "this register takes 32-bit accesses only"
        if problem is not None:
            what = "write" if write else "read"
            raise BadAccess(f"GICv2 {window} {width.size}-byte {what} at {offset:#x}: {problem}")

    @staticmethod
    def _dist_byte_ok(offset: int) -> bool:
        return (GICD_IPRIORITYR <= offset < GICD_ICFGR
                or GICD_CPENDSGIR <= offset < GICD_SPENDSGIR + 0x10)

    # ------------------------------------------------------------------ distributor

    def _dist_read(self, offset: int, width: AccessWidth, cpu: int) -> int:
        byte_ok = self._dist_byte_ok(offset)
        self._check_access("distributor", DIST_SIZE, offset, width, cpu, byte_ok, False)
        with self._lock:
            if byte_ok:
                return sum(self._dist_read_byte(offset + i, cpu) << (8 * i)
                           for i in range(width.size))
            return self._dist_read_word(offset, cpu)

    def _dist_write(self, offset: int, width: AccessWidth, value: int, cpu: int) -> None:
        byte_ok = self._dist_byte_ok(offset)
        self._check_access("distributor", DIST_SIZE, offset, width, cpu, byte_ok, True)
        value &= width.mask
        with self._lock:
            if byte_ok:
                for i in range(width.size):
                    self._dist_write_byte(offset + i, (value >> (8 * i)) & 0xFF, cpu)
            else:
                self._dist_write_word(offset, value, cpu)
            self._update()

    def _valid_bits(self, n: int) -> int:
        """Bits of 1-bit-per-interrupt register ``n`` that name existing INTIDs."""
        first = 32 * n
        if first >= self._lines:
            return 0
        return _M32 if first + 32 <= self._lines else (1 << (self._lines - first)) - 1

    def _dist_read_byte(self, offset: int, cpu: int) -> int:
        if offset < GICD_ITARGETSR:
            intid = offset - GICD_IPRIORITYR
            return self._priority(cpu, intid) if intid < self._lines else 0
        if offset < GICD_ICFGR:
            intid = offset - GICD_ITARGETSR
            if intid >= self._lines or self.num_cpus == 1:
                return 0
            return 1 << cpu if intid < 32 else self._targets[intid]
        return self._sgi_src[cpu][(offset - GICD_CPENDSGIR) & 0xF]

    def _dist_write_byte(self, offset: int, value: int, cpu: int) -> None:
        if offset < GICD_ITARGETSR:
            intid = offset - GICD_IPRIORITYR
            if intid < 32:
                self._prio_priv[cpu][intid] = value & PRIORITY_MASK
            elif intid < self._lines:
                self._prio_spi[intid] = value & PRIORITY_MASK
        elif offset < GICD_ICFGR:
            intid = offset - GICD_ITARGETSR
            if 32 <= intid < self._lines and self.num_cpus > 1:
                value &= self._cpu_mask
                self._targets[intid] = value
                for c in range(self.num_cpus):
                    if value >> c & 1:
                        self._target_map[c] |= 1 << intid
                    else:
                        self._target_map[c] &= ~(1 << intid)
        elif offset < GICD_SPENDSGIR:
            self._sgi_src[cpu][offset - GICD_CPENDSGIR] &= ~value
        else:
            self._sgi_src[cpu][offset - GICD_SPENDSGIR] |= value & self._cpu_mask

    def _dist_read_word(self, offset: int, cpu: int) -> int:
        if offset == GICD_CTLR:
            return self._dctlr
        if offset == GICD_TYPER:
            return (self.num_irqs // 32 - 1) | ((self.num_cpus - 1) << 5)
        if offset == GICD_IIDR:
            return _GICD_IIDR_VALUE
        if GICD_IGROUPR <= offset < GICD_IPRIORITYR:
            n = (offset & 0x7F) >> 2
            if not self._valid_bits(n):
                return 0
            if offset < GICD_ISENABLER:
                return self._group.word(cpu, n)
            if offset < GICD_ISPENDR:
                return self._enabled.word(cpu, n)
            if offset < GICD_ISACTIVER:
                return self._pending_word(cpu, n)
            return self._active.word(cpu, n)
        if GICD_ICFGR <= offset < GICD_ICFGR + 0x100:
            n = (offset - GICD_ICFGR) >> 2
            value = 0
            for k in range(16):
                intid = 16 * n + k
                if intid < self._lines and self._edge.test(cpu, intid):
                    value |= 2 << (2 * k)
            return value
        return _DIST_ID.get(offset, 0)

    def _dist_write_word(self, offset: int, value: int, cpu: int) -> None:
        if offset == GICD_CTLR:
            self._dctlr = value & 3
        elif GICD_IGROUPR <= offset < GICD_IPRIORITYR:
            n = (offset & 0x7F) >> 2
            value &= self._valid_bits(n)
            if offset < GICD_ISENABLER:
                self._group.set_word(cpu, n, value)
                return
            if n == 0 and offset < GICD_ISACTIVER:
                value &= ~_SGI_BITS  # SGI enable and pending bits are not writable here
            bits = (self._group, self._enabled, self._enabled, self._latch, self._latch,
                    self._active, self._active)[(offset >> 7) - 1]
            old = bits.word(cpu, n)
            if offset & 0x80:  # the ICxxxR half of each pair clears
                bits.set_word(cpu, n, old & ~value)
            else:
                bits.set_word(cpu, n, old | value)
        elif GICD_ICFGR + 4 <= offset < GICD_ICFGR + 0x100:
            n = (offset - GICD_ICFGR) >> 2
            for k in range(16):
                intid = 16 * n + k
                if intid < self._lines:
                    self._edge.assign(cpu, intid, bool(value >> (2 * k + 1) & 1))
        elif offset == GICD_SGIR:
            self._send_sgi(cpu, value)
        # Everything else is read-only or reserved.

    # ------------------------------------------------------------------ CPU interface

    def _cpu_read(self, offset: int, width: AccessWidth, cpu: int) -> int:
        self._check_access("CPU interface", CPU_IF_SIZE, offset, width, cpu, False, False)
        with self._lock:
            if offset == GICC_IAR:  # first: read once or twice per interrupt
                return self._acknowledge(cpu, alias=False)
            if offset == GICC_CTLR:
                return self._cctlr[cpu]
            if offset == GICC_PMR:
                return self._pmr[cpu]
            if offset == GICC_BPR:
                return self._bpr[cpu]
            if offset == GICC_RPR:
                return self._running_priority(cpu)
            if offset == GICC_HPPIR:
                return self._highest_pending(cpu, alias=False)
            if offset == GICC_ABPR:
                return self._abpr[cpu]
            if offset == GICC_AIAR:
                return self._acknowledge(cpu, alias=True)
            if offset == GICC_AHPPIR:
                return self._highest_pending(cpu, alias=True)
            if offset == GICC_APR0:
                return self._apr[cpu]
            if offset == GICC_NSAPR0:
                return self._nsapr[cpu]
            if offset == GICC_IIDR:
                return _GICC_IIDR_VALUE
            return 0  # EOIR, AEOIR and DIR are write-only; the rest is reserved

    def _cpu_write(self, offset: int, width: AccessWidth, value: int, cpu: int) -> None:
        self._check_access("CPU interface", CPU_IF_SIZE, offset, width, cpu, False, True)
        value &= width.mask
        with self._lock:
            if offset == GICC_EOIR:  # first: once per interrupt; it updates the outputs
                self._end_of_interrupt(cpu, value, alias=False)
                return
            if offset == GICC_CTLR:
                self._cctlr[cpu] = value & _CCTLR_MASK
            elif offset == GICC_PMR:
                self._pmr[cpu] = value & PRIORITY_MASK
            elif offset == GICC_BPR:
                self._bpr[cpu] = max(value & 7, _MIN_BPR)
            elif offset == GICC_ABPR:
                self._abpr[cpu] = max(value & 7, _MIN_ABPR)
            elif offset == GICC_AEOIR:
                self._end_of_interrupt(cpu, value, alias=True)
            elif offset == GICC_APR0:
                self._apr[cpu] = value
            elif offset == GICC_NSAPR0:
                self._nsapr[cpu] = value
            elif offset == GICC_DIR:
                self._deactivate(cpu, value)
            self._update()

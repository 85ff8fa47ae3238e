"""The Intel MultiProcessor Specification 1.4 tables that tell a kernel without ACPI
which CPUs, buses and interrupt routes the board has.

Written at :data:`~pyaxvisor.boards.x86_pc.layout.MPTABLE_ADDR` (0x9FC00, the start of the
EBDA and the last KiB of base memory, where Linux scans for the ``_MP_`` signature), or,
when the boot image needs that memory, in the BIOS ROM area ``[0xF0000, 0x100000)``,
Linux's other place (:data:`~pyaxvisor.boards.x86_pc.layout.MPTABLE_PLACES`):

* the 16-byte **floating pointer structure**: ``_MP_``, the physical address of the
  configuration table (right after it), length 1 (paragraphs), spec revision 4,
  checksum, feature bytes 0 (a configuration table is present; no IMCR, virtual
  wire mode);
* the **configuration table**: the 44-byte ``PCMP`` header (spec revision 4, OEM
  ``PYAXVISR``, product ``PYAXVISOR PC``, local APIC at 0xFEE00000, no extended
  entries), then its entries in the order the spec asks:

  - one processor entry per vCPU: local APIC ID = vCPU index, local APIC version
    0x14, enabled, CPU 0 the bootstrap processor; CPU signature family 6 model 1
    stepping 3 and feature flags FPU | APIC (what Firecracker reports: the kernel
    reads the real values with CPUID);
  - one bus entry: bus 0, ``"ISA   "``;
  - one I/O APIC entry: ID = number of CPUs (the first ID no CPU uses), version
    0x11, enabled, at 0xFEC00000;
  - I/O interrupt entries for ISA IRQs 0..15 except 2 (the cascade): type INT,
    polarity and trigger "conforming to the bus" (edge, active high for ISA), except
    the virtio-mmio transports' lines (IRQs 5..8 and 10..13:
    :data:`~pyaxvisor.boards.x86_pc.layout.VIRTIO_IRQS`), level triggered and active
    high (flags 0x0D); source bus 0 IRQ *i* → I/O APIC pin *i*. IRQ 0 goes to pin 0,
    not to pin 2 as on a PC's chipset: KVM's in-kernel IOAPIC with its default GSI
    routing delivers the PIT on GSI 0 = pin 0, and QEMU's microvm and Firecracker's
    tables map IRQ *i* to pin *i* the same way;
  - local interrupt entries: ExtINT on LINT0 and NMI on LINT1 of every local APIC
    (destination ID 0xFF), the virtual-wire set-up.

Both structures carry checksums making their bytes sum to 0 mod 256. The floating
pointer lies in the EBDA's first KiB (or the BIOS ROM area), where Linux looks for
it; the configuration table follows it and, beyond 40 CPUs, runs past the 1 KiB EBDA
into the BIOS area below 1 MiB. The whole window ``[0x9FC00, 1 MiB)`` is reserved in
the e820 map (and is RAM on this board), so the kernel never allocates over it; up
to 254 CPUs the table takes at most 5292 bytes of it.
"""

from __future__ import annotations

import struct

from pyaxvisor.boards.x86_pc.layout import (
    BIOS_ROM_START,
    BIOS_START,
    EBDA_START,
    HIGH_MEMORY,
    IOAPIC_ADDR,
    LAPIC_ADDR,
    MPTABLE_ADDR,
    VIRTIO_IRQS,
)
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.image import covered
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = [
    "APIC_VERSION", "CPU_FEATURES", "CPU_SIGNATURE", "IOAPIC_VERSION", "MAX_CPUS",
    "build_mptable", "mptable_size", "write_mptable",
]

#: The I/O APIC takes the ID after the last CPU's; IDs are 8 bits and 0xFF is broadcast.
MAX_CPUS = 254
APIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
SPEC_REVISION = 4  # MP spec 1.4
OEM_ID = b"PYAXVISR"
PRODUCT_ID = b"PYAXVISOR PC"
#: CPU signature (stepping 3:0, model 7:4, family 11:8) and feature flags (CPUID.1 EDX)
CPU_SIGNATURE = (6 << 8) | (1 << 4) | 3
CPU_FEATURES = (1 << 0) | (1 << 9)  # FPU, APIC
ISA_IRQS = 16
ISA_CASCADE_IRQ = 2
ALL_LOCAL_APICS = 0xFF

FLOATING_SIZE = 16
HEADER_SIZE = 44
PROCESSOR_ENTRY_SIZE = 20
ENTRY_SIZE = 8  # every other base entry type

ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IOINT, ENTRY_LINT = 0, 1, 2, 3, 4
INT_TYPE_INT, INT_TYPE_NMI, INT_TYPE_EXTINT = 0, 1, 3
IRQ_FLAGS_CONFORMING = 0  # polarity bits 1:0 and trigger bits 3:2 "conforms to the bus"
IRQ_FLAGS_LEVEL_HIGH = 0x1 | 0x3 << 2  # active high (01), level triggered (11)
CPU_ENABLED, CPU_BSP = 1 << 0, 1 << 1
IOAPIC_ENABLED = 1 << 0
#: Offsets of the checksums in the two structures.
FLOATING_CHECKSUM = 10
HEADER_CHECKSUM = 7

_FLOATING = struct.Struct("<4sIBBB5s")  # signature, physptr, length, rev, checksum, features
_HEADER = struct.Struct("<4sHBB8s12sIHHIHBx")  # ... ext table length, checksum, reserved
_PROCESSOR = struct.Struct("<BBBBII8x")
_BUS = struct.Struct("<BB6s")
_IOAPIC = struct.Struct("<BBBBI")
_INTERRUPT = struct.Struct("<BBHBBBB")  # type, int type, flags, src bus, src irq, dst, pin


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def _irqs() -> list[int]:
    return [irq for irq in range(ISA_IRQS) if irq != ISA_CASCADE_IRQ]


def mptable_size(num_cpus: int) -> int:
    """Bytes :func:`build_mptable` produces for ``num_cpus`` CPUs."""
    return (FLOATING_SIZE + HEADER_SIZE + PROCESSOR_ENTRY_SIZE * num_cpus
            + ENTRY_SIZE * (1 + 1 + len(_irqs()) + 2))


def _scanned(addr: int) -> bool:
    """Whether Linux finds a floating pointer at ``addr``: 16-byte aligned in the last
    KiB of base memory (the EBDA here) or in the BIOS ROM area."""
    return addr % 16 == 0 and ((addr >= EBDA_START and addr + FLOATING_SIZE <= BIOS_START)
                               or (addr >= BIOS_ROM_START and addr + FLOATING_SIZE <= HIGH_MEMORY))


def build_mptable(num_cpus: int, addr: int = MPTABLE_ADDR) -> bytes:
    """The floating pointer and configuration table for ``num_cpus`` (1..254) CPUs,
    addressed for ``addr`` (see the module doc), which must be a place Linux scans:
    16-byte aligned in ``[0x9FC00, 0xA0000)`` or ``[0xF0000, 0x100000)``, with the
    whole table below 1 MiB."""
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) \
            or not 1 <= num_cpus <= MAX_CPUS:
        raise InvalidInput(f"an MP table describes 1..{MAX_CPUS} CPUs, not {num_cpus!r}")
    size = mptable_size(num_cpus)
    if not _scanned(addr) or addr + size > HIGH_MEMORY:
        raise InvalidInput(f"the MP table for {num_cpus} CPUs ({size} bytes) at {addr:#x}: "
                           f"Linux finds it 16-byte aligned in [{EBDA_START:#x}, "
                           f"{BIOS_START:#x}) or [{BIOS_ROM_START:#x}, {HIGH_MEMORY:#x}), "
                           "below 1 MiB")
    entries = [_PROCESSOR.pack(ENTRY_PROCESSOR, cpu, APIC_VERSION,
                               CPU_ENABLED | (CPU_BSP if cpu == 0 else 0), CPU_SIGNATURE,
                               CPU_FEATURES)
               for cpu in range(num_cpus)]
    entries.append(_BUS.pack(ENTRY_BUS, 0, b"ISA   "))
    ioapic_id = num_cpus
    entries.append(_IOAPIC.pack(ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED,
                                IOAPIC_ADDR))
    entries += [_INTERRUPT.pack(ENTRY_IOINT, INT_TYPE_INT,
                                IRQ_FLAGS_LEVEL_HIGH if irq in VIRTIO_IRQS
                                else IRQ_FLAGS_CONFORMING, 0, irq, ioapic_id, irq)
                for irq in _irqs()]
    entries += [_INTERRUPT.pack(ENTRY_LINT, int_type, IRQ_FLAGS_CONFORMING, 0, 0,
                                ALL_LOCAL_APICS, lint)
                for int_type, lint in ((INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1))]
    body = b"".join(entries)
    table = bytearray(_HEADER.pack(b"PCMP", HEADER_SIZE + len(body), SPEC_REVISION, 0,
                                   OEM_ID, PRODUCT_ID, 0, 0, len(entries), LAPIC_ADDR, 0, 0)
                      + body)
    table[HEADER_CHECKSUM] = _checksum(table)
    floating = bytearray(_FLOATING.pack(b"_MP_", addr + FLOATING_SIZE, 1,
                                        SPEC_REVISION, 0, bytes(5)))
    floating[FLOATING_CHECKSUM] = _checksum(floating)
    data = bytes(floating + table)
    assert len(data) == size
    return data


def write_mptable(space: AddrSpace, num_cpus: int, addr: int = MPTABLE_ADDR) -> int:
    """Write the MP table for ``num_cpus`` CPUs at ``addr`` (:func:`build_mptable`'s
    rule); returns that address. Raises :class:`InvalidInput` when the area is not
    guest RAM."""
    data = build_mptable(num_cpus, addr)
    end = addr + len(data)
    if not covered(space, addr, end):
        raise InvalidInput(f"the MP table area [{addr:#x}, {end:#x}) is not guest RAM")
    space.write(GuestPhysAddr(addr), data)
    return addr

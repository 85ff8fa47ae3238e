"""The Intel MultiProcessor Specification 1.4 tables that tell a kernel without ACPI
which CPUs, buses and interrupt routes the board has.

Layout written at :data:`~pyaxvisor.vm.x86_layout.MPTABLE_ADDR` (the EBDA, which
Linux scans for the ``_MP_`` signature):

* the 16-byte floating pointer structure (in the EBDA's first KiB, where Linux
  looks) (``_MP_``, spec revision 4, physical
  pointer to the configuration table right after it, no default configuration);
* the configuration table (``PCMP``, OEM ``PYAXVISR``, product ``PC``, local APIC
  at 0xFEE00000) with, in this order: one processor entry per vCPU (APIC ID =
  vCPU index, local APIC version 0x14, enabled, CPU 0 the bootstrap processor),
  one ISA bus (ID 0), one IOAPIC (ID = number of CPUs, version 0x11, at
  0xFEC00000), I/O interrupt entries routing ISA IRQ *i* to IOAPIC pin *i* for
  i = 0..15 except 2 (KVM's default GSI routing puts the PIT on pin 0, as QEMU's
  and Firecracker's tables do), and the local interrupt entries ExtINT → LINT0
  and NMI → LINT1 of every local APIC.

Both structures carry checksums that make their bytes sum to 0 mod 256.
"""

from __future__ import annotations

import struct

from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.x86_layout import HIGH_MEMORY, IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR

MAX_CPUS = 254
APIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
#: CPU signature (family 6) and feature flags (FPU, APIC) in processor entries.
CPU_SIGNATURE = 0x600
CPU_FEATURES = 0x201

ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IOINT, ENTRY_LINT = 0, 1, 2, 3, 4
INT_TYPE_INT, INT_TYPE_NMI, INT_TYPE_EXTINT = 0, 1, 3
CPU_ENABLED, CPU_BSP = 1, 2


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def build_mptable(num_cpus: int, addr: int = MPTABLE_ADDR) -> bytes:
    """The floating pointer and configuration table for ``num_cpus`` CPUs, to be
    placed at guest physical ``addr``."""
    if not isinstance(num_cpus, int) or not 1 <= num_cpus <= MAX_CPUS:
        raise InvalidInput(f"an MP table describes 1..{MAX_CPUS} CPUs, not {num_cpus}")
    entries = []
    for cpu in range(num_cpus):
        flags = CPU_ENABLED | (CPU_BSP if cpu == 0 else 0)
        entries.append(struct.pack("<BBBBII8x", ENTRY_PROCESSOR, cpu, APIC_VERSION, flags,
                                   CPU_SIGNATURE, CPU_FEATURES))
    entries.append(struct.pack("<BB6s", ENTRY_BUS, 0, b"ISA   "))
    ioapic_id = num_cpus
    entries.append(struct.pack("<BBBBI", ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1,
                               IOAPIC_ADDR))
    for irq in range(16):
        if irq == 2:
            continue
        entries.append(struct.pack("<BBHBBBB", ENTRY_IOINT, INT_TYPE_INT, 0, 0, irq,
                                   ioapic_id, irq))
    entries.append(struct.pack("<BBHBBBB", ENTRY_LINT, INT_TYPE_EXTINT, 0, 0, 0, 0xFF, 0))
    entries.append(struct.pack("<BBHBBBB", ENTRY_LINT, INT_TYPE_NMI, 0, 0, 0, 0xFF, 1))
    body = b"".join(entries)
    length = 44 + len(body)
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBx", b"PCMP", length, 4, 0,
                                   b"PYAXVISR", b"PC".ljust(12), 0, 0, len(entries),
                                   LAPIC_ADDR, 0, 0))
    assert len(header) == 44
    table = bytearray(header + body)
    table[7] = _checksum(table)
    floating = bytearray(struct.pack("<4sIBBB5x", b"_MP_", addr + 16, 1, 4, 0))
    floating[10] = _checksum(floating)
    data = bytes(floating + table)
    if addr + len(data) > HIGH_MEMORY:
        raise InvalidInput(f"the MP table for {num_cpus} CPUs ({len(data)} bytes) does not "
                           f"fit between {addr:#x} and 1 MiB")
    return data


def write_mptable(space: AddrSpace, num_cpus: int) -> int:
    """Write the MP table for ``num_cpus`` CPUs at :data:`MPTABLE_ADDR`; returns it."""
    space.write(GuestPhysAddr(MPTABLE_ADDR), build_mptable(num_cpus))
    return MPTABLE_ADDR

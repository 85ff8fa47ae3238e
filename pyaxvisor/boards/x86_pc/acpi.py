"""The ACPI tables of pyaxvisor's PC: what an OS reads to find the CPUs, the interrupt
controllers, the fixed PM hardware, COM1 and how to power off (ACPI 6.5).

One block, written at :data:`~pyaxvisor.boards.x86_pc.layout.ACPI_ADDR` (0xE0000, or
the lowest free 64-byte boundary of ``[0xE0000, 0x100000)`` when the boot image needs
that memory): the area the spec (5.2.5.1, "Finding the RSDP on IA-PC Systems") has
an OS search for the RSDP on 16-byte boundaries. The window is reserved in the e820
map, so the OS keeps the tables. In the block, in this order (each table 16-byte
aligned, the FACS 64-byte aligned as the spec requires):

* **RSDP** (36 bytes): "RSD PTR ", OEM ID, revision 2, the RSDT and XSDT addresses,
  length 36; the checksum makes the first 20 bytes sum to 0 and the extended
  checksum the whole 36.
* **FACS** (64 bytes, version 2): signature and length, everything else 0 (no
  waking vector, no global lock: there is no firmware and no S4BIOS).
* **RSDT** (revision 1) and **XSDT** (revision 1): the FADT and the MADT, as 32- and
  64-bit addresses (the RSDT for ACPI 1.0 OSes; ACPI 2.0+ OSes use the XSDT).
* **FADT** (revision 6, minor 5: 276 bytes): a legacy PC FADT, not hardware-reduced:
  FIRMWARE_CTRL = the FACS (X_FIRMWARE_CTRL 0, as the spec asks when FIRMWARE_CTRL
  is set), DSDT and X_DSDT = the DSDT, SCI_INT 9, SMI_CMD 0 (no SMM: the machine is
  always in ACPI mode, SCI_EN reads 1), PM1a_EVT_BLK 0x600 (PM1_EVT_LEN 4),
  PM1a_CNT_BLK 0x604 (PM1_CNT_LEN 2), PM_TMR_BLK 0x608 (PM_TMR_LEN 4), no PM1b,
  PM2 or GPE blocks; P_LVL2_LAT and P_LVL3_LAT 0xFFF (no C2/C3); no RTC alarm or
  century fields; IAPC_BOOT_ARCH = LEGACY_DEVICES | VGA Not Present | MSI Not
  Supported | CMOS RTC Not Present (0x2D; the 8042 bit is clear: the i8042 has no
  keyboard and no IRQ, so an OS should not wait for one); flags WBINVD | PROC_C1 |
  SLP_BUTTON (no sleep button; PWR_BUTTON clear: the power button is the fixed-feature
  one, PM1_STS.PWRBTN_STS, as QEMU's) | FIX_RTC | TMR_VAL_EXT (the
  PM timer counts 32 bits) | RESET_REG_SUP; RESET_REG = port 0x64 (8 bits, byte
  access) with RESET_VALUE 0xFE, the i8042's pulse of the reset line; the X_ blocks
  as Generic Address Structures in system I/O space (PM1a event 32 bits, word
  access; PM1a control 16 bits, word access; PM timer 32 bits, dword access); the
  hypervisor vendor identity "PYAXVISR".
* **MADT** (revision 6): local APIC address 0xFEE00000, flags PCAT_COMPAT (the
  8259s exist: KVM's in-kernel PIC); a Processor Local APIC entry per vCPU
  (processor UID = APIC ID = the vCPU number, enabled); the I/O APIC (ID = the
  number of CPUs, as in the MP table, at 0xFEC00000, GSI base 0); Interrupt Source
  Overrides, ISA IRQ *n* → GSI *n* active high, level triggered (flags 0x000D), for
  the SCI (IRQ 9) and then for the virtio-mmio transports' lines in slot order (IRQs
  5, 6, 7, 8, 13, 10, 11, 12: :data:`~pyaxvisor.boards.x86_pc.layout.VIRTIO_IRQS`;
  without them an OS takes ISA IRQs for edge triggered); and a Local APIC NMI entry
  for all processors (UID 0xFF) on LINT1.
  Unlike QEMU's PC there is no IRQ 0 → GSI 2 override: KVM's default GSI routing,
  which this board keeps, wires the PIT (GSI 0) to I/O APIC pin 0, and the MP table
  says the same (:mod:`.mptable`).
* **DSDT** (revision 2, 64-bit integers), in AML (:mod:`.aml`), the bytes ``iasl``
  compiles this source to (the root-level names without the redundant ``\\``)::

      Scope (\\_SB) {
          Device (COM1) {
              Name (_HID, EisaId ("PNP0501"))
              Name (_UID, One)
              Name (_CRS, ResourceTemplate () {
                  IO (Decode16, 0x03F8, 0x03F8, 0x01, 0x08)
                  IRQNoFlags () {4}
              })
          }
          Device (VR07) {             // one per virtio-mmio transport in use
              Name (_HID, "LNRO0005")
              Name (_UID, 0x07)
              Name (_CCA, One)
              Name (_CRS, ResourceTemplate () {
                  Memory32Fixed (ReadWrite, 0xFEB00E00, 0x00000200)
                  Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) {12}
              })
          }
      }
      Name (\\_S5, Package (0x04) { Zero, Zero, Zero, Zero })

  ``\\_S5``'s SLP_TYPa 0 is what the PM1a control register powers off with
  (:mod:`pyaxvisor.devices.acpi_pm`), QEMU's S5 value. The virtio-mmio transports
  with a device plugged in are there as QEMU's ``microvm`` describes them: a
  ``VRnn`` device (nn = the slot), ``_HID "LNRO0005"`` (what Linux's virtio_mmio
  driver matches), the slot as ``_UID``, ``_CCA`` 1 (DMA coherent), the 0x200-byte
  window and the slot's GSI, level triggered, active high; in the devices' order
  (the first device, in the last slot, first), the order an OS enumerates them in.
  Empty slots are left out, as microvm does. This is how a kernel without
  ``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`` (Debian's) finds them.

Every table's header: OEM ID "PYAXVI", OEM table ID "PYAXVISR", OEM revision 1,
creator ID "PYAX", creator revision 1; its checksum makes the table's bytes sum to 0.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyaxvisor.boards.x86_pc import aml
from pyaxvisor.boards.x86_pc import layout as L
from pyaxvisor.boards.x86_pc.mptable import MAX_CPUS
from pyaxvisor.devices.virtio import MMIO_SIZE
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.image import covered
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace

if TYPE_CHECKING:
    from pyaxvisor.boards.virtio_slots import PluggedSlot

__all__ = [
    "FADT_FLAGS", "IAPC_BOOT_ARCH", "LEVEL_IRQS", "S5_SLP_TYP", "VIRTIO_MMIO_HID",
    "AcpiTables", "acpi_size", "build_acpi", "build_dsdt", "build_fadt", "build_madt",
    "checksum", "sdt_header", "virtio_device", "write_acpi",
]

OEM_ID = b"PYAXVI"
OEM_TABLE_ID = b"PYAXVISR"
OEM_REVISION = 1
CREATOR_ID = b"PYAX"
CREATOR_REVISION = 1
HYPERVISOR_VENDOR = b"PYAXVISR"
HEADER_SIZE = 36
RSDP_SIZE = 36
FACS_SIZE = 64
FADT_SIZE = 276
FADT_REVISION, FADT_MINOR = 6, 5
MADT_REVISION = 6
DSDT_REVISION = 2
FACS_VERSION = 2
RSDP_REVISION = 2

#: The sleep type the DSDT's \_S5 names and the PM1a control register powers off with.
S5_SLP_TYP = 0
#: SCI_INT: ISA IRQ 9.
SCI_INT = L.ACPI_SCI_IRQ
#: P_LVL2_LAT / P_LVL3_LAT above 100 / 1000 µs: C2 and C3 are not supported.
NO_C_STATE_LATENCY = 0x0FFF

# IAPC_BOOT_ARCH bits (ACPI 6.5 Table 5.11)
LEGACY_DEVICES, I8042, VGA_NOT_PRESENT, MSI_NOT_SUPPORTED, CMOS_RTC_NOT_PRESENT = (
    1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 5)
IAPC_BOOT_ARCH = LEGACY_DEVICES | VGA_NOT_PRESENT | MSI_NOT_SUPPORTED | CMOS_RTC_NOT_PRESENT
# FADT flags (ACPI 6.5 Table 5.10)
WBINVD, PROC_C1, PWR_BUTTON, SLP_BUTTON, FIX_RTC, TMR_VAL_EXT, RESET_REG_SUP = (
    1 << 0, 1 << 2, 1 << 4, 1 << 5, 1 << 6, 1 << 8, 1 << 10)
FADT_FLAGS = (WBINVD | PROC_C1 | SLP_BUTTON | FIX_RTC | TMR_VAL_EXT
              | RESET_REG_SUP)
#: The PM timer's width, as TMR_VAL_EXT says.
PM_TIMER_BITS = 32
RESET_PORT = L.I8042_CMD_PORT
RESET_VALUE = 0xFE

# Generic Address Structure: address space IDs and access sizes
GAS_SYSTEM_IO = 1
ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD = 1, 2, 3
_GAS = struct.Struct("<BBBBQ")

# MADT interrupt controller structures (ACPI 6.5 5.2.12)
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_INT_OVERRIDE, MADT_LOCAL_APIC_NMI = 0, 1, 2, 4
PCAT_COMPAT = 1 << 0
LOCAL_APIC_ENABLED = 1 << 0
ALL_PROCESSORS = 0xFF
#: MPS INTI flags: polarity active high (01), trigger mode level (11 << 2).
LEVEL_HIGH_INTI_FLAGS = 0x1 | 0x3 << 2
SCI_INTI_FLAGS = LEVEL_HIGH_INTI_FLAGS
#: The ISA IRQs the MADT overrides to level triggered, active high (same GSI): the
#: SCI's, then the virtio-mmio transports'.
LEVEL_IRQS = (SCI_INT, *L.VIRTIO_IRQS)
NMI_LINT = 1

#: Table alignment in the block (the FACS: 64 bytes).
TABLE_ALIGN = 16


def checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` (with that byte 0) sum to 0 mod 256."""
    return -sum(data) & 0xFF


def _gas(space_id: int, bit_width: int, access: int, address: int) -> bytes:
    return _GAS.pack(space_id, bit_width, 0, access, address)


def sdt_header(signature: bytes, length: int, revision: int) -> bytearray:
    """A System Description Table header (checksum 0 until :func:`_finish`)."""
    return bytearray(struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID,
                                 OEM_TABLE_ID, OEM_REVISION, CREATOR_ID, CREATOR_REVISION))


def _finish(table: bytearray) -> bytes:
    table[9] = checksum(table)
    return bytes(table)


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    return _finish(sdt_header(signature, HEADER_SIZE + len(body), revision) + body)


#: What the virtio-mmio transports are to an OS (Linux's virtio_mmio ACPI match).
VIRTIO_MMIO_HID = "LNRO0005"


def virtio_device(plugged: PluggedSlot) -> bytes:
    """The DSDT device of a virtio-mmio transport with a device plugged in (see the
    module doc)."""
    return aml.device(
        f"VR{plugged.slot:02d}",
        aml.name("_HID", aml.string(VIRTIO_MMIO_HID)),
        aml.name("_UID", aml.integer(plugged.slot)),
        aml.name("_CCA", aml.integer(1)),
        aml.name("_CRS", aml.resource_template(
            aml.memory32_fixed(plugged.base, MMIO_SIZE),
            aml.interrupt(plugged.irq))))


def build_dsdt(virtio: Sequence[PluggedSlot] = ()) -> bytes:
    """The DSDT: COM1, the virtio-mmio transports in ``virtio`` (in that order) and
    ``\\_S5`` (see the module doc)."""
    com1 = aml.device(
        "COM1",
        aml.name("_HID", aml.eisa_id("PNP0501")),
        aml.name("_UID", aml.integer(1)),
        aml.name("_CRS", aml.resource_template(
            aml.io_port(L.COM1_PORT, L.COM1_PORT, 1, 8),
            aml.irq_no_flags(L.COM1_IRQ))))
    s5 = aml.name("_S5", aml.package(*(aml.integer(v) for v in (S5_SLP_TYP, S5_SLP_TYP,
                                                                   0, 0))))
    devices = b"".join(virtio_device(plugged) for plugged in virtio)
    return _table(b"DSDT", DSDT_REVISION, aml.scope("_SB", com1, devices) + s5)


def build_facs() -> bytes:
    """The FACS: signature, length, version; no checksum (it has none)."""
    facs = bytearray(FACS_SIZE)
    struct.pack_into("<4sI", facs, 0, b"FACS", FACS_SIZE)
    facs[32] = FACS_VERSION
    return bytes(facs)


def build_fadt(facs: int, dsdt: int) -> bytes:
    """The FADT for a FACS and a DSDT at those addresses (see the module doc)."""
    t = sdt_header(b"FACP", FADT_SIZE, FADT_REVISION) + bytearray(FADT_SIZE - HEADER_SIZE)
    struct.pack_into("<II", t, 36, facs, dsdt)  # FIRMWARE_CTRL, DSDT
    struct.pack_into("<H", t, 46, SCI_INT)
    struct.pack_into("<I", t, 56, L.ACPI_PM1A_EVT_PORT)
    struct.pack_into("<I", t, 64, L.ACPI_PM1A_CNT_PORT)
    struct.pack_into("<I", t, 76, L.ACPI_PM_TMR_PORT)
    t[88], t[89], t[91] = L.ACPI_PM1A_EVT_LEN, L.ACPI_PM1A_CNT_LEN, L.ACPI_PM_TMR_LEN
    struct.pack_into("<HH", t, 96, NO_C_STATE_LATENCY, NO_C_STATE_LATENCY)
    struct.pack_into("<H", t, 109, IAPC_BOOT_ARCH)
    struct.pack_into("<I", t, 112, FADT_FLAGS)
    t[116:128] = _gas(GAS_SYSTEM_IO, 8, ACCESS_BYTE, RESET_PORT)
    t[128] = RESET_VALUE
    t[131] = FADT_MINOR
    struct.pack_into("<Q", t, 140, dsdt)  # X_DSDT (X_FIRMWARE_CTRL at 132 stays 0)
    t[148:160] = _gas(GAS_SYSTEM_IO, 8 * L.ACPI_PM1A_EVT_LEN, ACCESS_WORD,
                      L.ACPI_PM1A_EVT_PORT)
    t[172:184] = _gas(GAS_SYSTEM_IO, 8 * L.ACPI_PM1A_CNT_LEN, ACCESS_WORD,
                      L.ACPI_PM1A_CNT_PORT)
    t[208:220] = _gas(GAS_SYSTEM_IO, PM_TIMER_BITS, ACCESS_DWORD, L.ACPI_PM_TMR_PORT)
    t[268:276] = HYPERVISOR_VENDOR
    return _finish(t)


def build_madt(num_cpus: int) -> bytes:
    """The MADT for ``num_cpus`` (1..254) CPUs (see the module doc)."""
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) \
            or not 1 <= num_cpus <= MAX_CPUS:
        raise InvalidInput(f"the MADT describes 1..{MAX_CPUS} CPUs, not {num_cpus!r}")
    body = struct.pack("<II", L.LAPIC_ADDR, PCAT_COMPAT)
    body += b"".join(struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, cpu, cpu, LOCAL_APIC_ENABLED)
                     for cpu in range(num_cpus))
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, num_cpus, 0, L.IOAPIC_ADDR, 0)
    body += b"".join(struct.pack("<BBBBIH", MADT_INT_OVERRIDE, 10, 0, irq, irq,
                                 LEVEL_HIGH_INTI_FLAGS) for irq in LEVEL_IRQS)
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS, 0, NMI_LINT)
    return _table(b"APIC", MADT_REVISION, body)


def _align(value: int, align: int) -> int:
    return -(-value // align) * align


@dataclass(frozen=True)
class AcpiTables:
    """The block at ``base`` (its bytes, ``data``) and where each table is in it."""

    base: int
    data: bytes
    rsdp: int
    facs: int
    rsdt: int
    xsdt: int
    fadt: int
    madt: int
    dsdt: int


def build_acpi(num_cpus: int, base: int = L.ACPI_ADDR,
               virtio: Sequence[PluggedSlot] = ()) -> AcpiTables:
    """Every table for ``num_cpus`` CPUs and the virtio-mmio transports in use
    ``virtio``, addressed for a block at ``base``, which must be 64-byte aligned and
    lie, with the whole block, in ``[0xE0000, 0x100000)``."""
    dsdt_data, madt_data = build_dsdt(virtio), build_madt(num_cpus)
    rsdp = base
    facs = _align(rsdp + RSDP_SIZE, 64)
    rsdt = _align(facs + FACS_SIZE, TABLE_ALIGN)
    xsdt = _align(rsdt + HEADER_SIZE + 4 * 2, TABLE_ALIGN)
    fadt = _align(xsdt + HEADER_SIZE + 8 * 2, TABLE_ALIGN)
    madt = _align(fadt + FADT_SIZE, TABLE_ALIGN)
    dsdt = _align(madt + len(madt_data), TABLE_ALIGN)
    end = dsdt + len(dsdt_data)
    if base % L.ACPI_ALIGN or base < L.ACPI_ADDR or end > L.HIGH_MEMORY:
        raise InvalidInput(f"the ACPI tables for {num_cpus} CPUs ({end - base} bytes) at "
                           f"{base:#x}: they go 64-byte aligned in [{L.ACPI_ADDR:#x}, "
                           f"{L.HIGH_MEMORY:#x}), where an OS looks for the RSDP")
    rsdp_data = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, RSDP_REVISION,
                                      rsdt, RSDP_SIZE, xsdt, 0))
    rsdp_data[8] = checksum(rsdp_data[:20])
    rsdp_data[32] = checksum(rsdp_data)
    pieces = {
        rsdp: bytes(rsdp_data),
        facs: build_facs(),
        rsdt: _table(b"RSDT", 1, struct.pack("<II", fadt, madt)),
        xsdt: _table(b"XSDT", 1, struct.pack("<QQ", fadt, madt)),
        fadt: build_fadt(facs, dsdt),
        madt: madt_data,
        dsdt: dsdt_data,
    }
    block = bytearray(end - base)
    for addr, data in pieces.items():
        block[addr - base:addr - base + len(data)] = data
    return AcpiTables(base, bytes(block), rsdp, facs, rsdt, xsdt, fadt, madt, dsdt)


def acpi_size(num_cpus: int, virtio: Sequence[PluggedSlot] = ()) -> int:
    """Bytes of the block :func:`build_acpi` builds for ``num_cpus`` CPUs and
    ``virtio``."""
    return len(build_acpi(num_cpus, virtio=virtio).data)


def write_acpi(space: AddrSpace, num_cpus: int, base: int = L.ACPI_ADDR,
               virtio: Sequence[PluggedSlot] = ()) -> AcpiTables:
    """Write the tables for ``num_cpus`` CPUs and ``virtio`` at ``base``
    (:func:`build_acpi`'s rule). Raises :class:`InvalidInput` when the area is not
    guest RAM."""
    tables = build_acpi(num_cpus, base, virtio)
    end = base + len(tables.data)
    if not covered(space, base, end):
        raise InvalidInput(f"the ACPI tables' area [{base:#x}, {end:#x}) is not guest RAM")
    space.write(GuestPhysAddr(base), tables.data)
    return tables

"""The guest physical and port layout of pyaxvisor's x86_64 PC (a QEMU ``microvm``-like
board with the legacy PC devices Linux and Multiboot kernels expect).

Memory (guest physical):

====================== ==========================================================
``[0, low_top)``        RAM; ``low_top = min(ram, 3 GiB)``. The BIOS-era holes are
                        RAM too, but the e820 map marks ``[0x9FC00, 0x100000)``
                        reserved (EBDA, VGA, option ROMs, BIOS)
``0x500``               GDT written for 32/64-bit entry (:data:`GDT_ADDR`)
``0x7000``              Linux ``boot_params`` (the zero page, :data:`BOOT_PARAMS_ADDR`)
``0x9000..0xC000``      identity page tables for a 64-bit entry (:data:`PAGE_TABLE_ADDR`)
``0x20000``             Linux kernel command line (:data:`CMDLINE_ADDR`)
``0x9FC00``             the MP table (EBDA, :data:`MPTABLE_ADDR`)
``0x100000``            the kernel (bzImage protected-mode part, Multiboot default)
``[3 GiB, 4 GiB)``      no RAM: the IOAPIC (0xFEC00000) and local APICs
                        (0xFEE00000) live there, in KVM's in-kernel irqchip
``[4 GiB, ...)``        the rest of RAM when there is more than 3 GiB
====================== ==========================================================

Ports: COM1 16550A at 0x3F8 (IRQ 4), fw_cfg selector 0x510 / data 0x511, the
i8042 at 0x60/0x64, ACPI-style power-off at 0x604; the PIC (0x20/0xA0, ELCR
0x4D0) and PIT (0x40..0x43, 0x61) are KVM's in-kernel devices.
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

GDT_ADDR = 0x500
BOOT_PARAMS_ADDR = 0x7000
PAGE_TABLE_ADDR = 0x9000
CMDLINE_ADDR = 0x2_0000
CMDLINE_MAX = 0x1_0000  # bytes reserved for the command line, NUL included
EBDA_START = 0x9_FC00
MPTABLE_ADDR = EBDA_START
BIOS_START = 0xA_0000  # VGA, option ROMs and BIOS up to 1 MiB: reserved
HIGH_MEMORY = 0x10_0000
KERNEL_LOAD = HIGH_MEMORY

LOW_RAM_LIMIT = 3 * GiB
HIGH_RAM_BASE = 4 * GiB
IOAPIC_ADDR = 0xFEC0_0000
LAPIC_ADDR = 0xFEE0_0000

#: RAM the x86 VM accepts: at least 16 MiB (room for the boot structures), at most 1 TiB.
MIN_RAM = 16 * MiB
MAX_RAM = 1 << 40

COM1_PORT = 0x3F8
COM1_IRQ = 4
FW_CFG_PORT = 0x510  # selector (16-bit); data at +1
I8042_DATA_PORT = 0x60
I8042_CMD_PORT = 0x64
POWER_OFF_PORT = 0x604

# e820 entry types
E820_RAM = 1
E820_RESERVED = 2


def ram_regions(ram_size: int) -> list[tuple[int, int]]:
    """The guest RAM banks ``(gpa, size)`` for ``ram_size`` bytes of RAM."""
    low = min(ram_size, LOW_RAM_LIMIT)
    banks = [(0, low)]
    if ram_size > low:
        banks.append((HIGH_RAM_BASE, ram_size - low))
    return banks


def e820_map(ram_size: int) -> list[tuple[int, int, int]]:
    """The BIOS memory map ``(addr, size, type)`` a PC with ``ram_size`` bytes reports:
    base memory below the EBDA, the EBDA/VGA/BIOS area reserved, then RAM from 1 MiB."""
    low = min(ram_size, LOW_RAM_LIMIT)
    entries = [(0, EBDA_START, E820_RAM),
               (EBDA_START, HIGH_MEMORY - EBDA_START, E820_RESERVED),
               (HIGH_MEMORY, low - HIGH_MEMORY, E820_RAM)]
    if ram_size > low:
        entries.append((HIGH_RAM_BASE, ram_size - low, E820_RAM))
    return entries

"""The guest physical and port layout of pyaxvisor's x86_64 PC (a QEMU ``microvm``-like
board with the legacy PC devices Linux and Multiboot kernels expect).

Memory (guest physical):

====================== ==========================================================
``[0, low_top)``        RAM; ``low_top = min(ram, 3 GiB)``. The BIOS-era holes are
                        RAM too, but the e820 map marks ``[0x9FC00, 0x100000)``
                        reserved (EBDA, VGA, option ROMs, BIOS)
``0x500``               GDT written for 32/64-bit entry (:data:`GDT_ADDR`)
``0x5F00..0x6F00``      the boot stack (:data:`BOOT_STACK` is its top)
``0x7000``              Linux ``boot_params`` (the zero page, :data:`BOOT_PARAMS_ADDR`)
``0x9000..0xC000``      identity page tables for a 64-bit entry (:data:`PAGE_TABLE_ADDR`)
``0x20000``             Linux kernel command line (:data:`CMDLINE_ADDR`)
``0x9FC00``             the MP table (EBDA, :data:`MPTABLE_ADDR`)
``0xE0000``             the ACPI tables, RSDP first (:data:`ACPI_ADDR`)
``0x100000``            the kernel (bzImage protected-mode part, Multiboot default)
``[3 GiB, 4 GiB)``      no RAM: the virtio-mmio transports (below), the IOAPIC
                        (0xFEC00000) and local APICs (0xFEE00000) live there, the
                        latter two in KVM's in-kernel irqchip
``0xFEB00000``          8 virtio-mmio transports, 0x200 bytes apart (:data:`VIRTIO_BASE`)
``[4 GiB, ...)``        the rest of RAM when there is more than 3 GiB
====================== ==========================================================

The addresses above are the boot structures' *fixed slots*. A Multiboot, ELF or raw
image may itself need memory below 1 MiB; then each structure the image covers
moves (:class:`pyaxvisor.loaders.x86_entry.BootMemory`): to the lowest free place of
its *windows*, in order (:func:`low_windows`, :func:`high_windows`,
:data:`MPTABLE_PLACES`, :data:`ACPI_PLACES`):

==================== ============ =========================================================
structure            fixed slot   windows when the slot is taken
==================== ============ =========================================================
GDT (32 B)           0x500        base memory ``[0x500, 0x9FC00)``, then RAM above 1 MiB
boot stack (4 KiB)   0x5F00       the same
boot_params (4 KiB)  0x7000       the same, below 1 GiB (the 64-bit identity map)
page tables (12 KiB) 0x9000       the same
command line         0x20000      the same, below 1 GiB
Multiboot info and   after the    RAM above 1 MiB, then base memory (32-bit pointers)
modules              kernel
MP table             0x9FC00      ``[0xF0000, 0x100000)``: Linux looks for the floating
                                  pointer in the last KiB of base memory (0x9FC00, the
                                  EBDA here) and in the BIOS ROM area 0xF0000..0xFFFFF
ACPI (RSDP first)    0xE0000      ``[0xE0000, 0x100000)``: where the ACPI spec has the
                                  OS look for the RSDP outside the EBDA
==================== ============ =========================================================

Base memory starts at 0x500, above the real-mode interrupt vector table and the BIOS
data area. An image is refused only when it covers every place one structure it needs
can go.

Ports: COM1 16550A at 0x3F8 (IRQ 4), fw_cfg selector 0x510 / data 0x511, the
i8042 at 0x60/0x64, the ACPI PM registers at 0x600 (PM1a_EVT_BLK, 4 ports),
0x604 (PM1a_CNT_BLK, 2 ports: power-off) and 0x608 (PM_TMR_BLK, 4 ports), as on
QEMU's q35; the PIC (0x20/0xA0, ELCR 0x4D0) and PIT (0x40..0x43, 0x61) are KVM's
in-kernel devices. The ACPI SCI is ISA IRQ 9 (level triggered, active high).

The virtio-mmio transports are QEMU ``microvm``'s row: 8 of them at 0xFEB00000 +
0x200·i, each on one I/O APIC input (a GSI, also the 8259's IRQ of that number),
level triggered and active high. microvm without ACPI wires slot *i* to GSI 5 + *i*
and says so on the kernel command line; this board does the same, with one change:
GSI 9 is the ACPI SCI here, so slot 4 takes GSI 13 (the 387's error line on old PCs,
unused by x86_64 kernels): :data:`VIRTIO_IRQS`. Those ISA IRQs are otherwise free on
this board (no RTC, no PS/2 or floppy IRQ, no parallel port or COM2). They stay below
16 because Linux only sets up, at boot, the I/O APIC pins an interrupt source entry
names (the ISA IRQs, or an ACPI device's), and a device from its command line names
nothing; the MADT's interrupt source overrides and the MP table's entries make them
level triggered, active high (:mod:`.acpi`, :mod:`.mptable`).
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

GDT_ADDR = 0x500
GDT_SIZE = 32
#: The top of the boot stack (vCPU 0's initial RSP); the stack is the 4 KiB below it.
BOOT_STACK = 0x6F00
BOOT_STACK_SIZE = 0x1000
BOOT_PARAMS_ADDR = 0x7000
BOOT_PARAMS_SIZE = 0x1000
PAGE_TABLE_ADDR = 0x9000
PAGE_TABLE_SIZE = 0x3000  # PML4, PDPT, one page directory
CMDLINE_ADDR = 0x2_0000
CMDLINE_MAX = 0x1_0000  # bytes reserved for the command line, NUL included
EBDA_START = 0x9_FC00
MPTABLE_ADDR = EBDA_START
BIOS_START = 0xA_0000  # VGA, option ROMs and BIOS up to 1 MiB: reserved
#: Where Linux scans for the MP floating pointer besides the EBDA: the BIOS ROM area.
BIOS_ROM_START = 0xF_0000
#: The ACPI tables (the RSDP first): the area the ACPI spec has OSes scan for the RSDP.
ACPI_ADDR = 0xE_0000
HIGH_MEMORY = 0x10_0000
KERNEL_LOAD = HIGH_MEMORY

LOW_RAM_LIMIT = 3 * GiB
HIGH_RAM_BASE = 4 * GiB
IOAPIC_ADDR = 0xFEC0_0000
LAPIC_ADDR = 0xFEE0_0000
#: The virtio-mmio transports: ``VIRTIO_COUNT`` slots at ``VIRTIO_BASE + i *
#: VIRTIO_STRIDE``, slot ``i`` on GSI ``VIRTIO_IRQS[i]`` (see the module doc).
VIRTIO_BASE = 0xFEB0_0000
VIRTIO_STRIDE = 0x200
VIRTIO_COUNT = 8
VIRTIO_IRQS = (5, 6, 7, 8, 13, 10, 11, 12)

#: RAM the x86 VM accepts: at least 16 MiB (room for the boot structures), at most 1 TiB.
MIN_RAM = 16 * MiB
MAX_RAM = 1 << 40

COM1_PORT = 0x3F8
COM1_IRQ = 4
FW_CFG_PORT = 0x510  # selector (16-bit); data at +1
I8042_DATA_PORT = 0x60
I8042_CMD_PORT = 0x64
#: The ACPI PM1a event block (PM1_STS, PM1_EN), control block and PM timer.
ACPI_PM1A_EVT_PORT = 0x600
ACPI_PM1A_EVT_LEN = 4
ACPI_PM1A_CNT_PORT = 0x604
ACPI_PM1A_CNT_LEN = 2
ACPI_PM_TMR_PORT = 0x608
ACPI_PM_TMR_LEN = 4
POWER_OFF_PORT = ACPI_PM1A_CNT_PORT
#: The ACPI System Control Interrupt: ISA IRQ 9, as on QEMU's PC boards.
ACPI_SCI_IRQ = 9

#: Base memory for boot structures: above the real-mode IVT and BIOS data area,
#: below the EBDA.
BASE_MEMORY = (0x500, EBDA_START)


def low_windows(low_top: int, limit: int = LOW_RAM_LIMIT) -> tuple[tuple[int, int], ...]:
    """The windows of the low structures (GDT, stack, page tables, boot_params, command
    line): base memory, then RAM from 1 MiB to ``min(low_top, limit)``."""
    return (BASE_MEMORY, (HIGH_MEMORY, min(low_top, limit)))


def high_windows(low_top: int) -> tuple[tuple[int, int], ...]:
    """The windows of the Multiboot information and modules: RAM from 1 MiB, then
    base memory."""
    return ((HIGH_MEMORY, low_top), BASE_MEMORY)


#: structure → (fixed slots, windows) of the structures in the reserved area; see the
#: module doc for the others.
MPTABLE_PLACES = ((MPTABLE_ADDR,), ((BIOS_ROM_START, HIGH_MEMORY),))
ACPI_PLACES = ((ACPI_ADDR,), ((ACPI_ADDR, HIGH_MEMORY),))
#: The alignment of the MP table (the floating pointer: 16 bytes) and of the ACPI
#: tables (the RSDP: 16 bytes; the FACS: 64 bytes, so the block starts 64-aligned).
MPTABLE_ALIGN = 16
ACPI_ALIGN = 64

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

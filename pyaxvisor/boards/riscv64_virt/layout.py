"""The guest physical layout of pyaxvisor's RISC-V 64 machine, QEMU's ``virt`` board
(``hw/riscv/virt.c``), limited to the devices that exist here. The single source of
these constants: the board, its device tree and its loaders read them from here.

====================== ===========================================================
``0x0c00_0000``         PLIC (SiFive-compatible): sources 1..95, two contexts per
                        hart (M-mode, then S-mode); pyaxvisor's guests use the S ones
``0x1000_0000``         ns16550a UART, registers one byte apart, PLIC source 10
``0x1000_1000``         8 virtio-mmio transports, 0x1000 apart (0x200 bytes of registers
                        each), PLIC sources 1..8 (all always present; unused ones
                        DeviceID 0)
``0x8000_0000``         RAM (the default base; a config file may put RAM elsewhere)
====================== ===========================================================

pyaxvisor plays the M-mode firmware (OpenSBI's role): the guest starts in S-mode at
its kernel, with a0 = the hart id and a1 = the device tree, and reaches the machine
through SBI (timer, IPIs, remote fences, hart state management, console, reset). The
time CSR counts at 10 MHz (QEMU's ``timebase-frequency``).
"""

from __future__ import annotations

MiB = 1 << 20

PLIC_BASE = 0x0C00_0000
#: Interrupt sources (source 0 does not exist) and priority levels, as QEMU's virt.
PLIC_SOURCES = 96
PLIC_PRIORITIES = 7
UART_BASE = 0x1000_0000
UART_SIZE = 0x100
#: The page the UART's window occupies (devices are served in whole pages).
UART_PAGE = 0x1000
UART_IRQ = 10
#: The UART's input clock in the device tree (QEMU's ``clock-frequency``, 0x384000).
UART_CLOCK_HZ = 3_686_400
VIRTIO_BASE = 0x1000_1000
VIRTIO_STRIDE = 0x1000
VIRTIO_COUNT = 8
#: The first transport's PLIC source; slot i has source 1 + i.
VIRTIO_IRQ = 1
RAM_BASE = 0x8000_0000

TIMEBASE_FREQ = 10_000_000

#: RAM a riscv64 virt VM accepts: at least 16 MiB in 2 MiB multiples, at most 64 GiB.
MIN_RAM = 16 * MiB
RAM_ALIGN = 2 * MiB
MAX_RAM = 64 << 30
#: Guest physical address bits of the G-stage table (Sv39x4: 41).
GPA_BITS = 41
#: Where raw ``-kernel`` payloads go (U-Boot S-mode is linked there): 2 MiB into RAM,
#: after the 2 MiB an SBI firmware occupies on real machines.
RAW_LOAD_OFFSET = 0x20_0000


def plic_size(harts: int) -> int:
    """The PLIC window for ``harts`` harts: the context registers start at 2 MiB,
    0x1000 per context, two contexts per hart."""
    return 0x20_0000 + 0x1000 * 2 * harts


def plic_s_context(hart_index: int) -> int:
    """The PLIC context of hart ``hart_index``'s S-mode (``hart_index`` counts harts)."""
    return 2 * hart_index + 1

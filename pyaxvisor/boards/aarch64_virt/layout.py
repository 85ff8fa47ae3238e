"""The guest physical layout of pyaxvisor's AArch64 machine, QEMU's ``virt`` board
(``hw/arm/virt.c``), limited to the devices that exist here. The single source of
these constants: the board, its device tree and its loaders read them from here.

====================== ===========================================================
``0x0000_0000``         flash bank 0, 64 MiB: ``-bios`` firmware, run in place
``0x0400_0000``         flash bank 1, 64 MiB: a CFI flash (the firmware's
                        environment), a ROM device
``0x0800_0000``         GICv2 distributor (4 KiB emulated)
``0x0801_0000``         GICv2 CPU interface (8 KiB)
``0x0900_0000``         PL011 UART, SPI 1 = INTID 33
``0x0903_0000``         PL061 GPIO, SPI 7 = INTID 39; pin 3 is the power key
                        (``gpio-keys``, KEY_POWER), as QEMU's
``0x0a00_0000``         32 virtio-mmio transports, 0x200 bytes apart, SPIs 16..47 =
                        INTIDs 48..79 (all always present; unused ones DeviceID 0)
``0x4000_0000``         RAM (the default base; a config file may put RAM at any
                        address the devices leave free)
====================== ===========================================================

Generic timer PPIs: virtual INTID 27, physical (EL1) INTID 30, counting at
62.5 MHz (the frequency QEMU 7.2 uses). The PMU's overflow interrupt: PPI 7 =
INTID 23, as QEMU's ``VIRTUAL_PMU_IRQ``.
"""

from __future__ import annotations

MiB = 1 << 20

FLASH_BASE = 0x0000_0000
FLASH_SIZE = 64 * MiB
GIC_DIST_BASE = 0x0800_0000
GIC_CPU_BASE = 0x0801_0000
UART_BASE = 0x0900_0000
UART_SPI = 1
UART_INTID = 32 + UART_SPI
GPIO_BASE = 0x0903_0000
GPIO_SPI = 7
GPIO_INTID = 32 + GPIO_SPI
#: The PL061 pin the power key drives (QEMU's ``gpio-key`` on pin 3), and for how long
#: a press holds it high (QEMU's 100 ms).
POWER_KEY_PIN = 3
POWER_KEY_PRESS_NS = 100_000_000
#: Linux's KEY_POWER (input-event-codes.h).
KEY_POWER = 116
VIRTIO_BASE = 0x0A00_0000
VIRTIO_STRIDE = 0x200
VIRTIO_COUNT = 32
#: The first transport's SPI (QEMU's ``VIRT_MMIO`` interrupt base); slot i has SPI 16 + i.
VIRTIO_SPI = 16
RAM_BASE = 0x4000_0000

PPI_VTIMER = 27
PPI_PTIMER = 30
PPI_PMU = 23
TIMER_FREQ = 62_500_000

#: RAM a virt VM accepts: at least 16 MiB in 2 MiB multiples, at most 64 GiB.
MIN_RAM = 16 * MiB
RAM_ALIGN = 2 * MiB
MAX_RAM = 64 << 30
#: The IPA size of the stage-2 tables (1 TiB of guest physical addresses).
IPA_BITS = 40
#: Where the bundled guest and raw ``-kernel`` binaries go: 512 KiB into RAM.
RAW_LOAD_OFFSET = 0x8_0000

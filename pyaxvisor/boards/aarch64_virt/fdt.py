"""The flattened device tree an AArch64 guest boots with (QEMU ``virt`` layout).

:func:`build_aarch64_dtb` describes the machine pyaxvisor emulates in the shape
QEMU's ``-M virt,gic-version=2 -cpu cortex-a72`` gives a Linux guest
(``hw/arm/virt.c`` builds the board nodes, ``hw/arm/boot.c`` adds ``/memory``,
``/chosen`` and ``/psci``), limited to the devices that exist here: RAM, the
CPUs, PSCI, a GICv2, the generic timer, the PMU (PMUv3, overflow interrupt on PPI
7 = INTID 23, as QEMU's ``fdt_add_pmu_nodes``), one PL011 with its APB clock, the
PL061 GPIO with the power key on its pin 3 (``gpio-keys``, as QEMU's ``create_gpio_keys``), and
the 32 virtio-mmio transports (``virtio_mmio@a000000`` ... ``@a003e00``, lowest
address first as in QEMU's tree; each ``compatible = "virtio,mmio"``, 0x200 bytes
of ``reg``, SPI 16 + slot with QEMU's edge-rising flags, ``dma-coherent``): all of
them, whatever devices are plugged in, as QEMU describes them.
The tree is built and serialised (DTB format version 17) with the ``fdt`` package.

Where the result deliberately differs from QEMU's:

* The GIC ``reg`` sizes are the windows :mod:`pyaxvisor.devices.gicv2`
  emulates (4 KiB distributor, 8 KiB CPU interface); QEMU reserves 64 KiB for
  each. There is no GICv2m frame (QEMU's ``v2m`` child node), but the GIC node
  keeps QEMU's ``#address-cells``/``#size-cells``/``ranges``: ``dtc`` warns
  about an interrupt provider without ``#address-cells``.
* Every CPU node has ``enable-method = "psci"``; QEMU leaves it out when the
  VM has a single CPU (harmless either way).
* CPU nodes are named ``cpu@<MPIDR affinity in hex>`` so the unit address
  equals ``reg`` (QEMU numbers them by CPU index; the two agree for the usual
  flat affinities 0, 1, 2, ...). Only Aff0-Aff2 are accepted, which is what
  ``#address-cells = <1>`` in ``/cpus`` can hold.
* ``bootargs`` is omitted when empty, as in QEMU. It must be printable ASCII:
  the ``fdt`` package writes strings as ASCII, and its parser does not
  recognise strings holding control characters.
* No ``kaslr-seed``/``rng-seed`` in ``/chosen``.

Property encodings follow QEMU: the interrupt specifiers are three cells
(type 0 = SPI / 1 = PPI, number, flags), flags 4 = level-high, and for the
timer PPIs on a GICv2 the flags also carry the CPU mask ``(1 << ncpus) - 1``
in bits 15:8 (so does the PMU's PPI). 64-bit values (``reg`` with two address and two size cells,
``linux,initrd-start``/``-end``) are two big-endian cells, high word first.
"""

from __future__ import annotations

from collections.abc import Sequence

import fdt

from pyaxvisor.boards.aarch64_virt import layout as L
from pyaxvisor.boards.fdt_common import (
    DTB_VERSION,
    U32,
    build_dtb,
    cells64,
    check_initrd,
    check_memory,
    check_printable,
    check_windows,
    chosen_node,
    memory_nodes,
    node,
    strings,
    update_chosen,
    words,
)
from pyaxvisor.devices.gicv2 import CPU_IF_SIZE, DIST_SIZE, MAX_CPUS
from pyaxvisor.devices.pl011 import MMIO_SIZE as PL011_SIZE
from pyaxvisor.devices.pl061 import MMIO_SIZE as PL061_SIZE
from pyaxvisor.errors import InvalidInput

__all__ = [
    "APB_PCLK_HZ", "CLOCK_PHANDLE", "DTB_VERSION", "GIC_PHANDLE", "PSCI_0_2_FN_CPU_OFF",
    "PSCI_0_2_FN64_CPU_ON", "PSCI_0_2_FN64_CPU_SUSPEND", "PSCI_0_2_FN64_MIGRATE",
    "build_aarch64_dtb", "update_chosen", "virtio_node",
]

#: phandles of the nodes others refer to.
CLOCK_PHANDLE = 1
GIC_PHANDLE = 2
GPIO_PHANDLE = 3

#: Frequency of the fixed ``/apb-pclk`` clock feeding the PL011 (as QEMU).
APB_PCLK_HZ = 24_000_000

# Interrupt specifier cells (Linux dt-bindings/interrupt-controller/arm-gic.h).
GIC_SPI = 0
GIC_PPI = 1
IRQ_TYPE_EDGE_RISING = 1
IRQ_TYPE_LEVEL_HIGH = 4
GIC_PPI_CPU_MASK_SHIFT = 8

# Generic timer PPIs (PPI numbers, INTID - 16) as QEMU's virt board wires them.
ARCH_TIMER_S_EL1_PPI = 13
ARCH_TIMER_NS_EL1_PPI = 14
ARCH_TIMER_VIRT_PPI = 11
ARCH_TIMER_NS_EL2_PPI = 10
#: The PMU's overflow interrupt (QEMU's VIRTUAL_PMU_IRQ), as a PPI number.
PMU_PPI = L.PPI_PMU - 16

# PSCI 0.2+ function IDs for an AArch64 caller (SMC64 where the call has a 64-bit
# argument, SMC32 for CPU_OFF), the values QEMU puts in /psci.
PSCI_0_2_FN64_CPU_SUSPEND = 0xC400_0001
PSCI_0_2_FN_CPU_OFF = 0x8400_0002
PSCI_0_2_FN64_CPU_ON = 0xC400_0003
PSCI_0_2_FN64_MIGRATE = 0xC400_0005

#: MPIDR_EL1 affinity bits that fit one ``reg`` cell (Aff2.Aff1.Aff0).
_MPIDR_AFF012 = 0x00FF_FFFF
#: SPIs are INTIDs 32..1019, i.e. SPI numbers 0..987.
_MAX_SPI = 1019 - 32


def _validate(memory: Sequence[tuple[int, int]], cpus: Sequence[int],
              initrd: tuple[int, int] | None, uart_base: int, uart_spi: int, gic_dist: int,
              gic_cpu: int, timer_freq_hz: int | None, psci_method: str,
              bootargs: str) -> None:
    if not cpus:
        raise InvalidInput("the VM needs at least one CPU, cpus=[] was given")
    if len(cpus) > MAX_CPUS:
        raise InvalidInput(
            f"{len(cpus)} CPUs given, but a GICv2 can serve at most {MAX_CPUS} "
            "(its CPU target masks are 8 bits wide)")
    for mpidr in cpus:
        if not isinstance(mpidr, int) or mpidr < 0 or mpidr & ~_MPIDR_AFF012:
            raise InvalidInput(
                f"CPU MPIDR affinity {mpidr!r} is not a value of Aff2.Aff1.Aff0 "
                "(0..0xffffff): /cpus uses one address cell")
    if len(set(cpus)) != len(cpus):
        raise InvalidInput(f"CPU MPIDR affinities must be distinct, got {list(cpus)}")
    if psci_method not in ("hvc", "smc"):
        raise InvalidInput(f"psci_method must be 'hvc' or 'smc', got {psci_method!r}")
    if not isinstance(uart_spi, int) or not 0 <= uart_spi <= _MAX_SPI:
        raise InvalidInput(f"uart_spi {uart_spi!r} is not an SPI number (0..{_MAX_SPI})")
    if timer_freq_hz is not None and (
            not isinstance(timer_freq_hz, int) or not 0 < timer_freq_hz <= U32):
        raise InvalidInput(
            f"timer_freq_hz {timer_freq_hz!r} must be a positive 32-bit number of Hz")
    check_printable("bootargs", bootargs)

    devices = {
        "GIC distributor": (gic_dist, DIST_SIZE),
        "GIC CPU interface": (gic_cpu, CPU_IF_SIZE),
        "PL011 UART": (uart_base, PL011_SIZE),
        "PL061 GPIO": (L.GPIO_BASE, PL061_SIZE),
        "virtio-mmio transports": (L.VIRTIO_BASE, L.VIRTIO_COUNT * L.VIRTIO_STRIDE),
    }
    check_windows(devices)
    check_memory(memory, devices)
    check_initrd(initrd, memory)


def virtio_node(slot: int) -> fdt.Node:
    """The node of virtio-mmio transport ``slot`` (0..31)."""
    base = L.VIRTIO_BASE + slot * L.VIRTIO_STRIDE
    return node(
        f"virtio_mmio@{base:x}",
        strings("compatible", "virtio,mmio"),
        words("reg", *cells64(base, L.VIRTIO_STRIDE)),
        words("interrupts", GIC_SPI, L.VIRTIO_SPI + slot, IRQ_TYPE_EDGE_RISING),
        fdt.Property("dma-coherent"),
    )


def build_aarch64_dtb(*, memory: list[tuple[int, int]], cpus: list[int], bootargs: str = "",
                      initrd: tuple[int, int] | None = None, uart_base: int = L.UART_BASE,
                      uart_spi: int = L.UART_SPI, gic_dist: int = L.GIC_DIST_BASE,
                      gic_cpu: int = L.GIC_CPU_BASE, timer_freq_hz: int | None = None,
                      psci_method: str = "hvc", exclude: Sequence[str] = (),
                      rng_seed: bytes | None = None, kaslr_seed: int | None = None) -> bytes:
    """Build the DTB of an AArch64 VM.

    ``memory`` lists RAM banks as ``(base, size)``; ``cpus`` the MPIDR affinity
    of each vCPU (the first one boots and goes into the header's
    ``boot_cpuid_phys``); ``initrd`` is ``(start, end)`` in guest physical
    addresses; ``uart_spi`` the PL011's SPI number (INTID - 32); ``exclude`` node
    paths to leave out (``"/pl011@9000000"``, ``"/timer"``, ``"/pmu"``; a path the
    board does not have is already left out: AxVisor's files exclude host devices such as
    ``/pcie@10000000``); ``rng_seed`` and ``kaslr_seed`` go into ``/chosen`` (QEMU's
    ``virt`` passes random ones unless ``dtb-randomness=off``). Raises
    :class:`~pyaxvisor.errors.InvalidInput` for a configuration that cannot be
    described.
    """
    _validate(memory, cpus, initrd, uart_base, uart_spi, gic_dist, gic_cpu, timer_freq_hz,
              psci_method, bootargs)

    uart_node = f"pl011@{uart_base:x}"
    ppi_flags = IRQ_TYPE_LEVEL_HIGH | (((1 << len(cpus)) - 1) << GIC_PPI_CPU_MASK_SHIFT)

    root = fdt.Node("/")
    root.append(strings("compatible", "linux,dummy-virt"))
    root.append(strings("model", "linux,dummy-virt"))
    root.append(words("#address-cells", 2))
    root.append(words("#size-cells", 2))
    root.append(words("interrupt-parent", GIC_PHANDLE))

    root.append(node(
        "psci",
        strings("compatible", "arm,psci-1.0", "arm,psci-0.2", "arm,psci"),
        strings("method", psci_method),
        words("cpu_suspend", PSCI_0_2_FN64_CPU_SUSPEND),
        words("cpu_off", PSCI_0_2_FN_CPU_OFF),
        words("cpu_on", PSCI_0_2_FN64_CPU_ON),
        words("migrate", PSCI_0_2_FN64_MIGRATE),
    ))

    for bank in memory_nodes(memory):
        root.append(bank)

    root.append(node(
        uart_node,
        strings("compatible", "arm,pl011", "arm,primecell"),
        words("reg", *cells64(uart_base, PL011_SIZE)),
        words("interrupts", GIC_SPI, uart_spi, IRQ_TYPE_LEVEL_HIGH),
        words("clocks", CLOCK_PHANDLE, CLOCK_PHANDLE),
        strings("clock-names", "uartclk", "apb_pclk"),
    ))

    gpio_node = f"pl061@{L.GPIO_BASE:x}"
    root.append(node(
        gpio_node,
        strings("compatible", "arm,pl061", "arm,primecell"),
        words("reg", *cells64(L.GPIO_BASE, PL061_SIZE)),
        words("interrupts", GIC_SPI, L.GPIO_SPI, IRQ_TYPE_LEVEL_HIGH),
        fdt.Property("gpio-controller"),
        words("#gpio-cells", 2),
        words("clocks", CLOCK_PHANDLE),
        strings("clock-names", "apb_pclk"),
        words("phandle", GPIO_PHANDLE),
    ))
    root.append(node(
        "gpio-keys",
        strings("compatible", "gpio-keys"),
        node("poweroff",
             strings("label", "GPIO Key Poweroff"),
             words("linux,code", L.KEY_POWER),
             words("gpios", GPIO_PHANDLE, L.POWER_KEY_PIN, 0)),
    ))

    for slot in range(L.VIRTIO_COUNT):
        root.append(virtio_node(slot))

    root.append(node(
        f"intc@{gic_dist:x}",
        strings("compatible", "arm,cortex-a15-gic"),
        words("#interrupt-cells", 3),
        fdt.Property("interrupt-controller"),
        words("#address-cells", 2),
        words("#size-cells", 2),
        fdt.Property("ranges"),
        words("reg", *cells64(gic_dist, DIST_SIZE, gic_cpu, CPU_IF_SIZE)),
        words("phandle", GIC_PHANDLE),
    ))

    cpus_node = node("cpus", words("#address-cells", 1), words("#size-cells", 0))
    for mpidr in cpus:
        cpus_node.append(node(
            f"cpu@{mpidr:x}",
            strings("device_type", "cpu"),
            strings("compatible", "arm,cortex-a72"),
            words("reg", mpidr),
            strings("enable-method", "psci"),
        ))
    root.append(cpus_node)

    timer = node(
        "timer",
        strings("compatible", "arm,armv8-timer", "arm,armv7-timer"),
        fdt.Property("always-on"),
        words("interrupts",
              GIC_PPI, ARCH_TIMER_S_EL1_PPI, ppi_flags,
              GIC_PPI, ARCH_TIMER_NS_EL1_PPI, ppi_flags,
              GIC_PPI, ARCH_TIMER_VIRT_PPI, ppi_flags,
              GIC_PPI, ARCH_TIMER_NS_EL2_PPI, ppi_flags),
    )
    if timer_freq_hz is not None:
        timer.append(words("clock-frequency", timer_freq_hz))
    root.append(timer)

    root.append(node(
        "pmu",
        strings("compatible", "arm,armv8-pmuv3"),
        words("interrupts", GIC_PPI, PMU_PPI, ppi_flags),
    ))

    root.append(node(
        "apb-pclk",
        strings("compatible", "fixed-clock"),
        words("#clock-cells", 0),
        words("clock-frequency", APB_PCLK_HZ),
        strings("clock-output-names", "clk24mhz"),
        words("phandle", CLOCK_PHANDLE),
    ))

    root.append(chosen_node(bootargs=bootargs, stdout_path=f"/{uart_node}", initrd=initrd,
                            rng_seed=rng_seed, kaslr_seed=kaslr_seed))
    return build_dtb(root, exclude=exclude, boot_cpuid_phys=cpus[0])

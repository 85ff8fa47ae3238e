"""The flattened device tree an AArch64 guest boots with (QEMU ``virt`` layout).

:func:`build_aarch64_dtb` describes the machine pyaxvisor emulates in the shape
QEMU's ``-M virt,gic-version=2 -cpu cortex-a72`` gives a Linux guest
(``hw/arm/virt.c`` builds the board nodes, ``hw/arm/boot.c`` adds ``/memory``,
``/chosen`` and ``/psci``), limited to the devices that exist here: RAM, the
CPUs, PSCI, a GICv2, the generic timer and one PL011 with its APB clock. The
tree is built and serialised (DTB format version 17) with the ``fdt`` package.

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
* No ``kaslr-seed``/``rng-seed`` in ``/chosen`` and no PMU node.

Property encodings follow QEMU: the interrupt specifiers are three cells
(type 0 = SPI / 1 = PPI, number, flags), flags 4 = level-high, and for the
timer PPIs on a GICv2 the flags also carry the CPU mask ``(1 << ncpus) - 1``
in bits 15:8. 64-bit values (``reg`` with two address and two size cells,
``linux,initrd-start``/``-end``) are two big-endian cells, high word first.
"""

from __future__ import annotations

from collections.abc import Sequence

import fdt

from pyaxvisor.boards.aarch64_virt import layout as L
from pyaxvisor.devices.gicv2 import CPU_IF_SIZE, DIST_SIZE, MAX_CPUS
from pyaxvisor.devices.pl011 import MMIO_SIZE as PL011_SIZE
from pyaxvisor.errors import InvalidInput

__all__ = [
    "APB_PCLK_HZ", "CLOCK_PHANDLE", "DTB_VERSION", "GIC_PHANDLE", "PSCI_0_2_FN_CPU_OFF",
    "PSCI_0_2_FN64_CPU_ON", "PSCI_0_2_FN64_CPU_SUSPEND", "PSCI_0_2_FN64_MIGRATE",
    "build_aarch64_dtb", "update_chosen",
]

#: DTB format version written (the current one; last compatible version 16).
DTB_VERSION = 17

#: phandles of the two nodes others refer to.
CLOCK_PHANDLE = 1
GIC_PHANDLE = 2

#: Frequency of the fixed ``/apb-pclk`` clock feeding the PL011 (as QEMU).
APB_PCLK_HZ = 24_000_000

# Interrupt specifier cells (Linux dt-bindings/interrupt-controller/arm-gic.h).
GIC_SPI = 0
GIC_PPI = 1
IRQ_TYPE_LEVEL_HIGH = 4
GIC_PPI_CPU_MASK_SHIFT = 8

# Generic timer PPIs (PPI numbers, INTID - 16) as QEMU's virt board wires them.
ARCH_TIMER_S_EL1_PPI = 13
ARCH_TIMER_NS_EL1_PPI = 14
ARCH_TIMER_VIRT_PPI = 11
ARCH_TIMER_NS_EL2_PPI = 10

# PSCI 0.2+ function IDs for an AArch64 caller (SMC64 where the call has a 64-bit
# argument, SMC32 for CPU_OFF), the values QEMU puts in /psci.
PSCI_0_2_FN64_CPU_SUSPEND = 0xC400_0001
PSCI_0_2_FN_CPU_OFF = 0x8400_0002
PSCI_0_2_FN64_CPU_ON = 0xC400_0003
PSCI_0_2_FN64_MIGRATE = 0xC400_0005

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
#: MPIDR_EL1 affinity bits that fit one ``reg`` cell (Aff2.Aff1.Aff0).
_MPIDR_AFF012 = 0x00FF_FFFF
#: SPIs are INTIDs 32..1019, i.e. SPI numbers 0..987.
_MAX_SPI = 1019 - 32


def _cells64(*values: int) -> list[int]:
    """Each 64-bit value as two 32-bit cells, high word first."""
    out: list[int] = []
    for v in values:
        out += [(v >> 32) & _U32, v & _U32]
    return out


def _words(name: str, *cells: int) -> fdt.PropWords:
    return fdt.PropWords(name, *cells)


def _strings(name: str, *values: str) -> fdt.PropStrings:
    return fdt.PropStrings(name, *values)


def _node(name: str, *items: fdt.Node | fdt.Property) -> fdt.Node:
    return fdt.Node(name, *items)


def _check_printable(what: str, text: str) -> None:
    bad = next((c for c in text if not " " <= c <= "~"), None)
    if bad is not None:
        raise InvalidInput(
            f"{what} must be printable ASCII, but contains {bad!r} "
            "(the device tree writer only handles ASCII strings)")


def _check_range(what: str, base: int, size: int) -> None:
    if not isinstance(base, int) or not isinstance(size, int):
        raise InvalidInput(f"{what} needs integer base and size, got ({base!r}, {size!r})")
    if base < 0 or size <= 0 or base + size - 1 > _U64:
        raise InvalidInput(f"{what} [{base:#x}, +{size:#x}) is empty or outside 64 bits")


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def _validate(memory: Sequence[tuple[int, int]], cpus: Sequence[int],
              initrd: tuple[int, int] | None, uart_base: int, uart_spi: int, gic_dist: int,
              gic_cpu: int, timer_freq_hz: int | None, psci_method: str,
              bootargs: str) -> None:
    if not memory:
        raise InvalidInput("the VM needs at least one memory bank, memory=[] was given")
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
            not isinstance(timer_freq_hz, int) or not 0 < timer_freq_hz <= _U32):
        raise InvalidInput(
            f"timer_freq_hz {timer_freq_hz!r} must be a positive 32-bit number of Hz")
    _check_printable("bootargs", bootargs)

    devices = {
        "GIC distributor": (gic_dist, DIST_SIZE),
        "GIC CPU interface": (gic_cpu, CPU_IF_SIZE),
        "PL011 UART": (uart_base, PL011_SIZE),
    }
    for name, (base, size) in devices.items():
        _check_range(name, base, size)
    names = list(devices)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _overlaps(devices[a], devices[b]):
                raise InvalidInput(f"the {a} window at {devices[a][0]:#x} overlaps the "
                                   f"{b} window at {devices[b][0]:#x}")

    for i, (base, size) in enumerate(memory):
        _check_range(f"memory bank {i}", base, size)
        for j in range(i):
            if _overlaps((base, size), memory[j]):
                raise InvalidInput(
                    f"memory bank {i} [{base:#x}, {base + size:#x}) overlaps bank {j} "
                    f"[{memory[j][0]:#x}, {memory[j][0] + memory[j][1]:#x})")
        for name, window in devices.items():
            if _overlaps((base, size), window):
                raise InvalidInput(
                    f"memory bank {i} [{base:#x}, {base + size:#x}) overlaps the {name} "
                    f"at {window[0]:#x}")

    if initrd is not None:
        start, end = initrd
        if not isinstance(start, int) or not isinstance(end, int) or start < 0:
            raise InvalidInput(f"initrd must be (start, end) integers, got {initrd!r}")
        if end <= start:
            raise InvalidInput(
                f"initrd end {end:#x} is not above its start {start:#x}")
        if not any(b <= start and end <= b + s for b, s in memory):
            raise InvalidInput(
                f"initrd [{start:#x}, {end:#x}) does not lie inside one memory bank")


def build_aarch64_dtb(*, memory: list[tuple[int, int]], cpus: list[int], bootargs: str = "",
                      initrd: tuple[int, int] | None = None, uart_base: int = L.UART_BASE,
                      uart_spi: int = L.UART_SPI, gic_dist: int = L.GIC_DIST_BASE,
                      gic_cpu: int = L.GIC_CPU_BASE, timer_freq_hz: int | None = None,
                      psci_method: str = "hvc", exclude: Sequence[str] = ()) -> bytes:
    """Build the DTB of an AArch64 VM.

    ``memory`` lists RAM banks as ``(base, size)``; ``cpus`` the MPIDR affinity
    of each vCPU (the first one boots and goes into the header's
    ``boot_cpuid_phys``); ``initrd`` is ``(start, end)`` in guest physical
    addresses; ``uart_spi`` the PL011's SPI number (INTID - 32); ``exclude`` node
    paths to leave out (``"/pl011@9000000"``, ``"/timer"``; a path the board does not
    have is already left out: AxVisor's files exclude host devices such as
    ``/pcie@10000000``). Raises
    :class:`~pyaxvisor.errors.InvalidInput` for a configuration that cannot be
    described.
    """
    _validate(memory, cpus, initrd, uart_base, uart_spi, gic_dist, gic_cpu, timer_freq_hz,
              psci_method, bootargs)

    uart_node = f"pl011@{uart_base:x}"
    ppi_flags = IRQ_TYPE_LEVEL_HIGH | (((1 << len(cpus)) - 1) << GIC_PPI_CPU_MASK_SHIFT)

    root = fdt.Node("/")
    root.append(_strings("compatible", "linux,dummy-virt"))
    root.append(_strings("model", "linux,dummy-virt"))
    root.append(_words("#address-cells", 2))
    root.append(_words("#size-cells", 2))
    root.append(_words("interrupt-parent", GIC_PHANDLE))

    root.append(_node(
        "psci",
        _strings("compatible", "arm,psci-1.0", "arm,psci-0.2", "arm,psci"),
        _strings("method", psci_method),
        _words("cpu_suspend", PSCI_0_2_FN64_CPU_SUSPEND),
        _words("cpu_off", PSCI_0_2_FN_CPU_OFF),
        _words("cpu_on", PSCI_0_2_FN64_CPU_ON),
        _words("migrate", PSCI_0_2_FN64_MIGRATE),
    ))

    for base, size in memory:
        root.append(_node(
            f"memory@{base:x}",
            _strings("device_type", "memory"),
            _words("reg", *_cells64(base, size)),
        ))

    root.append(_node(
        uart_node,
        _strings("compatible", "arm,pl011", "arm,primecell"),
        _words("reg", *_cells64(uart_base, PL011_SIZE)),
        _words("interrupts", GIC_SPI, uart_spi, IRQ_TYPE_LEVEL_HIGH),
        _words("clocks", CLOCK_PHANDLE, CLOCK_PHANDLE),
        _strings("clock-names", "uartclk", "apb_pclk"),
    ))

    root.append(_node(
        f"intc@{gic_dist:x}",
        _strings("compatible", "arm,cortex-a15-gic"),
        _words("#interrupt-cells", 3),
        fdt.Property("interrupt-controller"),
        _words("#address-cells", 2),
        _words("#size-cells", 2),
        fdt.Property("ranges"),
        _words("reg", *_cells64(gic_dist, DIST_SIZE, gic_cpu, CPU_IF_SIZE)),
        _words("phandle", GIC_PHANDLE),
    ))

    cpus_node = _node("cpus", _words("#address-cells", 1), _words("#size-cells", 0))
    for mpidr in cpus:
        cpus_node.append(_node(
            f"cpu@{mpidr:x}",
            _strings("device_type", "cpu"),
            _strings("compatible", "arm,cortex-a72"),
            _words("reg", mpidr),
            _strings("enable-method", "psci"),
        ))
    root.append(cpus_node)

    timer = _node(
        "timer",
        _strings("compatible", "arm,armv8-timer", "arm,armv7-timer"),
        fdt.Property("always-on"),
        _words("interrupts",
               GIC_PPI, ARCH_TIMER_S_EL1_PPI, ppi_flags,
               GIC_PPI, ARCH_TIMER_NS_EL1_PPI, ppi_flags,
               GIC_PPI, ARCH_TIMER_VIRT_PPI, ppi_flags,
               GIC_PPI, ARCH_TIMER_NS_EL2_PPI, ppi_flags),
    )
    if timer_freq_hz is not None:
        timer.append(_words("clock-frequency", timer_freq_hz))
    root.append(timer)

    root.append(_node(
        "apb-pclk",
        _strings("compatible", "fixed-clock"),
        _words("#clock-cells", 0),
        _words("clock-frequency", APB_PCLK_HZ),
        _strings("clock-output-names", "clk24mhz"),
        _words("phandle", CLOCK_PHANDLE),
    ))

    chosen = _node("chosen")
    if bootargs:
        chosen.append(_strings("bootargs", bootargs))
    chosen.append(_strings("stdout-path", f"/{uart_node}"))
    if initrd is not None:
        chosen.append(_words("linux,initrd-start", *_cells64(initrd[0])))
        chosen.append(_words("linux,initrd-end", *_cells64(initrd[1])))
    root.append(chosen)

    # Pass a fresh list: FDT's default ``entries`` is a shared mutable default that
    # fdt.parse_dtb() appends /memreserve/ entries to.
    tree = fdt.FDT(entries=[])
    tree.root = root
    for path in exclude:
        _remove(tree, path)
    return tree.to_dtb(version=DTB_VERSION, boot_cpuid_phys=cpus[0])


def _remove(tree: fdt.FDT, path: str) -> None:
    """Drop the node at ``path`` (``/name`` or ``/parent/name``) from ``tree`` if it is
    there."""
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name.strip() or not path.startswith("/"):
        raise InvalidInput(f"excluded device {path!r} is not a device tree path (/name)")
    if tree.exist_node(path.rstrip("/")):  # absent on this board: nothing to leave out
        tree.remove_node(name, parent or "/")


def update_chosen(dtb: bytes, *, bootargs: str, initrd: tuple[int, int] | None,
                  path: str) -> bytes:
    """A device tree file given by the user with ``/chosen`` set as QEMU sets it for
    ``-dtb``: ``bootargs`` (when not empty) and ``linux,initrd-start``/``-end`` (when
    there is an initrd); everything else as the file has it. A blob the parser cannot
    read is an :class:`InvalidInput` naming ``path``."""
    if not bootargs and initrd is None:
        return dtb
    _check_printable("bootargs", bootargs)
    try:
        tree = fdt.parse_dtb(bytes(dtb))
    except Exception as exc:  # the fdt package raises plain exceptions for bad blobs
        raise InvalidInput(f"{path}: not a readable device tree blob ({exc})") from None
    if not tree.exist_node("/chosen"):
        tree.add_item(fdt.Node("chosen"))
    if bootargs:
        tree.set_property("bootargs", bootargs, path="/chosen")
    if initrd is not None:
        tree.set_property("linux,initrd-start", _cells64(initrd[0]), path="/chosen")
        tree.set_property("linux,initrd-end", _cells64(initrd[1]), path="/chosen")
    return tree.to_dtb(version=DTB_VERSION)

"""The flattened device tree a RISC-V 64 guest boots with (QEMU ``virt`` layout).

:func:`build_riscv64_dtb` describes the machine pyaxvisor emulates in the shape
QEMU 7.2's ``-M virt -cpu rv64`` gives a guest (``hw/riscv/virt.c``; compare
``qemu-system-riscv64 -M virt,dumpdtb=virt.dtb`` and ``dtc -I dtb virt.dtb``),
limited to what exists here: RAM, the harts with their local interrupt controllers,
the PLIC, one ns16550a UART and the 8 virtio-mmio transports (all of them, whatever
devices are plugged in, as QEMU describes them: ``virtio_mmio@10001000`` ...
``@10008000``, highest address first as in QEMU's tree, each ``compatible =
"virtio,mmio"``, 0x1000 bytes of ``reg``, the PLIC's source 1 + slot), under
``/soc``; ``/chosen`` as for the arm64 VM.

The hart description is the software CPU's (Unicorn 2's RV64 hart, QEMU 5.0's
``target/riscv``), not QEMU 7.2's ``rv64``:

* ``riscv,isa`` defaults to ``rv64imafdc_zicsr_zifencei``: misa reads
  ``acdfimsu`` (RV64GC with S and U modes) and the CSR and ``fence.i`` instructions
  exist. QEMU 7.2 says ``rv64imafdch_zicsr_zifencei_zihintpause_zba_zbb_zbc_zbs_sstc``;
  the hypervisor extension, the bit-manipulation extensions and Sstc (the
  ``stimecmp`` CSR) are not in the software CPU, so they are left out: a guest that
  believed in them would execute illegal instructions or wait for a timer that never
  fires.
* ``mmu-type`` defaults to ``riscv,sv48``, as QEMU 7.2: the software CPU walks both
  Sv39 and Sv48 page tables (an S-mode load through a four-level Sv48 table at a
  virtual address with bit 39 set works). Sv57 is not offered: the ``mmu-type`` is
  also what stops Linux from probing a five-level mode.
* ``/cpus/cpu-map`` is written, as QEMU does: one ``cluster0`` with a ``core<i>`` per
  hart (QEMU's single socket); cpu nodes carry phandles for it.

Where the result deliberately differs from QEMU's tree:

* No CLINT/ACLINT node (pyaxvisor plays the SBI firmware: the timer and IPIs are SBI
  calls), no PCIe, flash, fw-cfg, RTC, ``sifive,test`` syscon (reset
  and power-off are SBI calls), platform bus or PMU node; no ``rng-seed``.
* The PLIC ``reg`` is sized for the harts that exist (``layout.plic_size``), where
  QEMU reserves the window of its maximum of 512 harts (0x60_0000).
* ``riscv,ndev`` is the number of real sources (95, sources 1..95), as newer QEMU
  writes it; QEMU 7.2 writes 96.
* phandles are numbered in hart order (see :func:`cpu_phandle`), where QEMU counts
  harts downwards; nothing but the references depends on the values.
* ``dtc`` warns, as for QEMU's tree, that the per-hart ``interrupt-controller``
  nodes have no ``#address-cells`` (the RISC-V bindings and QEMU do not give them
  one).

The cell encodings are QEMU's: the root has two address and two size cells; the
PLIC and the harts' controllers take one interrupt cell; ``interrupts-extended``
lists, for each hart in order, its M-mode (11) and its S-mode (9) external
interrupt: PLIC contexts ``2*i`` and ``2*i + 1`` of hart index ``i``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import fdt

from pyaxvisor.boards import fdt_common as dt
from pyaxvisor.boards.riscv64_virt import layout as L
from pyaxvisor.devices.plic import MAX_CONTEXTS
from pyaxvisor.errors import InvalidInput

__all__ = [
    "DEFAULT_ISA", "IRQ_M_EXT", "IRQ_S_EXT", "MAX_HARTS", "MMU_TYPES", "PLIC_PHANDLE",
    "build_riscv64_dtb", "cpu_phandle", "intc_phandle", "virtio_node",
]

#: What the software CPU implements (misa ``acdfimsu``, plus Zicsr and Zifencei).
DEFAULT_ISA = "rv64imafdc_zicsr_zifencei"
#: Paging modes the software CPU walks.
MMU_TYPES = ("riscv,sv39", "riscv,sv48")

#: Interrupt numbers of the harts' local controllers (mip/mie bits): the external
#: interrupts of M-mode (MEIP) and S-mode (SEIP).
IRQ_M_EXT = 11
IRQ_S_EXT = 9

#: phandle of the PLIC; the harts' phandles follow it (see :func:`cpu_phandle`).
PLIC_PHANDLE = 1
#: Harts the PLIC has contexts for (two per hart).
MAX_HARTS = MAX_CONTEXTS // 2

#: An ISA string as the RISC-V bindings have it: rv64, the base I, single-letter
#: extensions, then multi-letter ones each after an underscore.
_ISA_RE = re.compile(r"rv64i[a-z]*(?:_[a-z][a-z0-9]*)*")


def cpu_phandle(index: int) -> int:
    """The phandle of the ``index``-th hart's cpu node (``cpu-map`` refers to it)."""
    return PLIC_PHANDLE + 1 + 2 * index


def intc_phandle(index: int) -> int:
    """The phandle of the ``index``-th hart's ``riscv,cpu-intc`` node."""
    return PLIC_PHANDLE + 2 + 2 * index


def _validate(memory: Sequence[tuple[int, int]], harts: Sequence[int], bootargs: str,
              initrd: tuple[int, int] | None, isa: str, mmu_type: str,
              timebase_freq: int) -> None:
    if not harts:
        raise InvalidInput("the VM needs at least one hart, harts=[] was given")
    if len(harts) > MAX_HARTS:
        raise InvalidInput(f"{len(harts)} harts given, but the PLIC has contexts for at most "
                           f"{MAX_HARTS} (two per hart)")
    for hart in harts:
        if not isinstance(hart, int) or not 0 <= hart <= dt.U32:
            raise InvalidInput(f"hart id {hart!r} is not a number in 0..0xffffffff "
                               "(/cpus uses one address cell)")
    if len(set(harts)) != len(harts):
        raise InvalidInput(f"hart ids must be distinct, got {list(harts)}")
    dt.check_printable("isa", isa)
    if not _ISA_RE.fullmatch(isa):
        raise InvalidInput(
            f"isa {isa!r} is not a RISC-V 64 ISA string: 'rv64i', single-letter extensions, "
            f"then '_'-separated multi-letter ones, in lower case (e.g. {DEFAULT_ISA!r})")
    if mmu_type not in MMU_TYPES:
        raise InvalidInput(f"mmu_type must be one of {', '.join(map(repr, MMU_TYPES))} "
                           f"(the paging modes the software CPU implements), got {mmu_type!r}")
    if not isinstance(timebase_freq, int) or not 0 < timebase_freq <= dt.U32:
        raise InvalidInput(
            f"timebase_freq {timebase_freq!r} must be a positive 32-bit number of Hz")
    dt.check_printable("bootargs", bootargs)
    dt.check_memory(memory, {"PLIC": (L.PLIC_BASE, L.plic_size(len(harts))),
                             "UART": (L.UART_BASE, L.UART_SIZE),
                             "virtio-mmio transports": (L.VIRTIO_BASE,
                                                        L.VIRTIO_COUNT * L.VIRTIO_STRIDE)})
    dt.check_initrd(initrd, memory)


def virtio_node(slot: int) -> fdt.Node:
    """The node of virtio-mmio transport ``slot`` (0..7)."""
    base = L.VIRTIO_BASE + slot * L.VIRTIO_STRIDE
    return dt.node(
        f"virtio_mmio@{base:x}",
        dt.words("interrupts", L.VIRTIO_IRQ + slot),
        dt.words("interrupt-parent", PLIC_PHANDLE),
        dt.words("reg", *dt.cells64(base, L.VIRTIO_STRIDE)),
        dt.strings("compatible", "virtio,mmio"),
    )


def build_riscv64_dtb(*, memory: list[tuple[int, int]], harts: list[int], bootargs: str = "",
                      initrd: tuple[int, int] | None = None, isa: str = DEFAULT_ISA,
                      mmu_type: str = "riscv,sv48", timebase_freq: int = L.TIMEBASE_FREQ,
                      exclude: Sequence[str] = (), rng_seed: bytes | None = None) -> bytes:
    """Build the DTB of a RISC-V 64 VM.

    ``memory`` lists RAM banks as ``(base, size)``; ``harts`` the hart id of each vCPU
    in vCPU order (the first one boots and goes into the header's
    ``boot_cpuid_phys``; the ``i``-th owns PLIC contexts ``2*i`` and ``2*i + 1``);
    ``initrd`` is ``(start, end)`` in guest physical addresses; ``isa`` and
    ``mmu_type`` go into every cpu node; ``timebase_freq`` is the rate of the ``time``
    CSR; ``exclude`` node paths to leave out (``"/soc/serial@10000000"``; a path this
    tree does not have is already left out); ``rng_seed`` goes into ``/chosen`` (QEMU's
    ``virt`` always passes 32 random bytes). The PLIC and the UART are where
    :mod:`~pyaxvisor.boards.riscv64_virt.layout` puts them. Raises
    :class:`~pyaxvisor.errors.InvalidInput` for a configuration that cannot be
    described.
    """
    _validate(memory, harts, bootargs, initrd, isa, mmu_type, timebase_freq)

    root = fdt.Node("/")
    root.append(dt.words("#address-cells", 2))
    root.append(dt.words("#size-cells", 2))
    root.append(dt.strings("compatible", "riscv-virtio"))
    root.append(dt.strings("model", "riscv-virtio,qemu"))

    for bank in dt.memory_nodes(memory):
        root.append(bank)

    cpus = dt.node("cpus", dt.words("#address-cells", 1), dt.words("#size-cells", 0),
                   dt.words("timebase-frequency", timebase_freq))
    for i, hart in enumerate(harts):
        cpus.append(dt.node(
            f"cpu@{hart:x}",
            dt.words("phandle", cpu_phandle(i)),
            dt.strings("device_type", "cpu"),
            dt.words("reg", hart),
            dt.strings("status", "okay"),
            dt.strings("compatible", "riscv"),
            dt.strings("riscv,isa", isa),
            dt.strings("mmu-type", mmu_type),
            dt.node(
                "interrupt-controller",
                dt.words("#interrupt-cells", 1),
                fdt.Property("interrupt-controller"),
                dt.strings("compatible", "riscv,cpu-intc"),
                dt.words("phandle", intc_phandle(i)),
            ),
        ))
    cluster = dt.node("cluster0")
    for i in range(len(harts)):
        cluster.append(dt.node(f"core{i}", dt.words("cpu", cpu_phandle(i))))
    cpus.append(dt.node("cpu-map", cluster))
    root.append(cpus)

    uart_path = f"/soc/serial@{L.UART_BASE:x}"
    contexts: list[int] = []
    for i in range(len(harts)):
        contexts += [intc_phandle(i), IRQ_M_EXT, intc_phandle(i), IRQ_S_EXT]
    root.append(dt.node(
        "soc",
        dt.words("#address-cells", 2),
        dt.words("#size-cells", 2),
        dt.strings("compatible", "simple-bus"),
        fdt.Property("ranges"),
        dt.node(
            f"plic@{L.PLIC_BASE:x}",
            dt.words("phandle", PLIC_PHANDLE),
            dt.words("riscv,ndev", L.PLIC_SOURCES - 1),
            dt.words("reg", *dt.cells64(L.PLIC_BASE, L.plic_size(len(harts)))),
            dt.words("interrupts-extended", *contexts),
            fdt.Property("interrupt-controller"),
            dt.strings("compatible", "sifive,plic-1.0.0", "riscv,plic0"),
            dt.words("#address-cells", 0),
            dt.words("#interrupt-cells", 1),
        ),
        dt.node(
            uart_path.rpartition("/")[2],
            dt.words("interrupts", L.UART_IRQ),
            dt.words("interrupt-parent", PLIC_PHANDLE),
            dt.words("clock-frequency", L.UART_CLOCK_HZ),
            dt.words("reg", *dt.cells64(L.UART_BASE, L.UART_SIZE)),
            dt.strings("compatible", "ns16550a"),
        ),
        *(virtio_node(slot) for slot in reversed(range(L.VIRTIO_COUNT))),
    ))

    root.append(dt.chosen_node(bootargs=bootargs, stdout_path=uart_path, initrd=initrd,
                               rng_seed=rng_seed))
    return dt.build_dtb(root, exclude=exclude, boot_cpuid_phys=harts[0])

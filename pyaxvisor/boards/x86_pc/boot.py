"""Booting an x86_64 guest as QEMU's ``-kernel`` does on a PC: a Linux ``bzImage``
(64-bit boot protocol, with ``boot_params``, e820 map, command line and initrd), a
Multiboot v1 kernel (ELF or flat with the a.out kludge; the initrd, if any, becomes
its first module), a plain ELF, or a flat binary (loaded at 1 MiB, or the configured
load address, and entered in 32-bit protected mode at its first byte or the
configured entry point). An MP table and the ACPI tables (:mod:`.acpi`) describe
the vCPUs and the machine, so SMP kernels find the CPUs with ACPI (the MADT) and
without it (the MP table). Without a kernel the bundled test kernel runs
(:func:`bundled_guest`).

The loaders (:mod:`pyaxvisor.loaders`) place everything by the formats' rules and
the PC layout (:mod:`.layout`); a configuration's load address and entry point
are held against them (:mod:`pyaxvisor.boards.images`). One
:class:`~pyaxvisor.loaders.x86_entry.BootMemory` records the memory of the whole
boot: the image first, then the loader's structures, then here the GDT (protected
and long mode), the boot stack, the page tables (long mode), the MP table and the
ACPI tables, each at its fixed slot unless the image needs that memory (the
layout's placement rule). The Multiboot command line starts with the kernel's name,
as QEMU's does: the path given, or the bundled kernel's file.

The virtio-mmio transports with a device plugged in (``virtio``, in the devices'
order) are in the DSDT (:mod:`.acpi`) whatever the image; a Linux bzImage also
finds one ``virtio_mmio.device=<size>@<base>:<irq>`` parameter per transport added
to its command line (:func:`~pyaxvisor.boards.virtio_slots.add_kernel_parameters`:
at the end, or before a ``--``), as Firecracker passes them, for kernels built with
``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES``. A kernel with both ACPI and that option
registers each transport twice; the second probe of a window fails (``-EBUSY``) and
the device works through the first. A Multiboot kernel's command line is left as
given.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyaxvisor.arch.x86_64.vcpu import X86VCpuSetupConfig
from pyaxvisor.boards.images import check_address, read_spec
from pyaxvisor.boards.virtio_slots import PluggedSlot, add_kernel_parameters
from pyaxvisor.boards.x86_pc import layout as L
from pyaxvisor.boards.x86_pc.acpi import acpi_size, write_acpi
from pyaxvisor.boards.x86_pc.mptable import mptable_size, write_mptable
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.bzimage import load_bzimage
from pyaxvisor.loaders.detect import detect_x86_format
from pyaxvisor.loaders.elf import load_x86_elf
from pyaxvisor.loaders.image import ImageError
from pyaxvisor.loaders.multiboot import load_multiboot
from pyaxvisor.loaders.raw import load_x86_raw
from pyaxvisor.loaders.x86_entry import BootMemory, X86Boot
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.board import BootState
from pyaxvisor.vm.config import VmConfig

__all__ = ["BOOT_STACK", "BUNDLED_DEBUG_EXIT", "bundled_guest", "bundled_guest_path",
           "linux_cmdline", "load", "start_state", "write_tables"]

#: Stack pointer vCPU 0 starts with (below the boot_params page; kernels set their own).
BOOT_STACK = L.BOOT_STACK
#: The debug-exit device the bundled guest reports through (QEMU's usual test spelling).
BUNDLED_DEBUG_EXIT = (0xF4, 4)


def bundled_guest_path() -> str:
    """The file of the bundled Multiboot test kernel (``pyaxvisor/guests/x86_64/smp.elf``)."""
    from importlib import resources  # costs start-up time when a kernel is given

    return str(resources.files("pyaxvisor.guests").joinpath("x86_64/smp.elf"))


def bundled_guest() -> bytes:
    """The bundled Multiboot test kernel (``pyaxvisor/guests/x86_64/smp.elf``)."""
    from importlib import resources  # costs start-up time when a kernel is given

    return resources.files("pyaxvisor.guests").joinpath("x86_64/smp.elf").read_bytes()


def start_state(boot: X86Boot, memory: BootMemory | None = None) -> BootState:
    """vCPU 0's start for an image the loaders placed: with ``memory``, the GDT (not
    in real mode), the boot stack and the page tables (long mode only) are placed
    there (the layout's rule); without, they take their fixed slots."""
    gdt, stack, tables = L.GDT_ADDR, L.BOOT_STACK, L.PAGE_TABLE_ADDR
    if memory is not None:
        low = L.low_windows(memory.low_top)
        if boot.mode != "real":
            gdt = memory.place("GDT", L.GDT_SIZE, align=8, slots=[L.GDT_ADDR], windows=low)
        stack = L.BOOT_STACK_SIZE + memory.place(
            "boot stack", L.BOOT_STACK_SIZE, align=16,
            slots=[L.BOOT_STACK - L.BOOT_STACK_SIZE], windows=low)
        if boot.mode == "long":
            tables = memory.place("page tables", L.PAGE_TABLE_SIZE, align=0x1000,
                                  slots=[L.PAGE_TABLE_ADDR], windows=low)
    return BootState(boot.entry, dict(boot.gprs),
                     X86VCpuSetupConfig(mode=boot.mode, stack_pointer=stack,
                                        page_table_gpa=tables, gdt_gpa=gdt),
                     boot.description)


def write_tables(space: AddrSpace, memory: BootMemory, num_cpus: int,
                 virtio: Sequence[PluggedSlot] = ()) -> tuple[int, int]:
    """Place and write the MP table and the ACPI tables for ``num_cpus`` CPUs and the
    virtio-mmio transports in use ``virtio``; returns their addresses."""
    slots, windows = L.MPTABLE_PLACES
    mp = memory.place("MP table", mptable_size(num_cpus), align=L.MPTABLE_ALIGN,
                      slots=slots, windows=windows)
    slots, windows = L.ACPI_PLACES
    acpi = memory.place("ACPI tables", acpi_size(num_cpus, virtio), align=L.ACPI_ALIGN,
                        slots=slots, windows=windows)
    write_mptable(space, num_cpus, mp)
    write_acpi(space, num_cpus, acpi, virtio)
    return mp, acpi


def linux_cmdline(cmdline: str, virtio: Sequence[PluggedSlot]) -> str:
    """The command line a bzImage gets: ``cmdline`` with a ``virtio_mmio.device=``
    parameter per transport of ``virtio`` (see the module doc)."""
    return add_kernel_parameters(cmdline, [plugged.kernel_parameter for plugged in virtio])


def load(space: AddrSpace, config: VmConfig, virtio: Sequence[PluggedSlot] = ()) -> BootState:
    """Load the boot images into ``space`` and write the MP and ACPI tables;
    ``virtio``: the virtio-mmio transports with a device plugged in, in the devices'
    order (see the module doc)."""
    ram_size = config.ram_size
    if config.kernel is None:
        if config.initrd is not None:
            raise InvalidInput("-initrd needs -kernel")
        data, path, name = bundled_guest(), "<bundled smp.elf>", bundled_guest_path()
    else:
        data = read_spec(config.kernel, "kernel", limit=ram_size)
        path = name = str(config.kernel.path)
    fmt = detect_x86_format(data, path=path)
    initrd = read_spec(config.initrd, "initrd", limit=ram_size) \
        if config.initrd is not None else None
    initrd_path = str(config.initrd.path) if config.initrd is not None else "<initrd>"
    load_addr = config.kernel.load_addr if config.kernel is not None else None
    memory = BootMemory(space, ram_size, path)
    if fmt == "bzimage":
        cmdline = linux_cmdline(config.cmdline, virtio)
        try:
            boot = load_bzimage(space, data, ram_size=ram_size, cmdline=cmdline,
                                initrd=initrd, path=path, initrd_path=initrd_path,
                                memory=memory)
        except ImageError as exc:
            if cmdline == config.cmdline or not exc.problem.startswith("the command line"):
                raise
            raise ImageError(path, f"{exc.problem} (with the {len(virtio)} "
                                   "virtio_mmio.device= parameters pyaxvisor adds for the "
                                   "virtio devices)") from None
    elif fmt == "multiboot":
        modules = [(initrd, initrd_path)] if initrd is not None else []
        boot = load_multiboot(space, data, ram_size=ram_size, cmdline=config.cmdline,
                              modules=modules, path=path, name=name, memory=memory)
    else:
        if initrd is not None:
            raise InvalidInput(f"kernel {path}: an initrd can only be given to a Linux "
                               "bzImage or a Multiboot kernel")
        if fmt == "elf":
            boot = load_x86_elf(space, data, path=path, memory=memory)
        else:
            boot = load_x86_raw(space, data, path=path, memory=memory,
                                **({} if load_addr is None else {"addr": load_addr}))
            if config.entry is not None:
                boot = boot._replace(entry=config.entry)
    if fmt != "raw":
        check_address(config, "[kernel] kernel_load_addr", load_addr, boot.kernel_start,
                      f"the {boot.format} kernel is loaded")
        check_address(config, "[kernel] entry_point", config.entry, boot.entry,
                      f"the {boot.format} kernel is entered")
    start = start_state(boot, memory)
    write_tables(space, memory, config.cpu_num, virtio)
    return start

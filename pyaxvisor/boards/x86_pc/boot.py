"""Booting an x86_64 guest as QEMU's ``-kernel`` does on a PC: a Linux ``bzImage``
(64-bit boot protocol, with ``boot_params``, e820 map, command line and initrd), a
Multiboot v1 kernel (ELF or flat with the a.out kludge; the initrd, if any, becomes
its first module), a plain ELF, or a flat binary (loaded at 1 MiB, or the configured
load address, and entered in 32-bit protected mode at its first byte or the
configured entry point). An MP table describes the vCPUs, so SMP kernels find
them. Without a kernel the bundled test kernel runs (:func:`bundled_guest`).

The loaders (:mod:`pyaxvisor.loaders`) place everything by the formats' rules and
the PC layout (:mod:`.layout`); a configuration's load address and entry point
are held against them (:mod:`pyaxvisor.boards.images`).
"""

from __future__ import annotations

from pyaxvisor.arch.x86_64.vcpu import X86VCpuSetupConfig
from pyaxvisor.boards.images import check_address, read_spec
from pyaxvisor.boards.x86_pc import layout as L
from pyaxvisor.boards.x86_pc.mptable import write_mptable
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.bzimage import load_bzimage
from pyaxvisor.loaders.detect import detect_x86_format
from pyaxvisor.loaders.elf import load_x86_elf
from pyaxvisor.loaders.multiboot import load_multiboot
from pyaxvisor.loaders.raw import load_x86_raw
from pyaxvisor.loaders.x86_entry import X86Boot
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.board import BootState
from pyaxvisor.vm.config import VmConfig

__all__ = ["BOOT_STACK", "BUNDLED_DEBUG_EXIT", "bundled_guest", "load", "start_state"]

#: Stack pointer vCPU 0 starts with (below the boot_params page; kernels set their own).
BOOT_STACK = 0x6F00
#: The debug-exit device the bundled guest reports through (QEMU's usual test spelling).
BUNDLED_DEBUG_EXIT = (0xF4, 4)


def bundled_guest() -> bytes:
    """The bundled Multiboot test kernel (``pyaxvisor/guests/x86_64/smp.elf``)."""
    from importlib import resources  # costs start-up time when a kernel is given

    return resources.files("pyaxvisor.guests").joinpath("x86_64/smp.elf").read_bytes()


def start_state(boot: X86Boot) -> BootState:
    """vCPU 0's start for an image the loaders placed."""
    return BootState(boot.entry, dict(boot.gprs),
                     X86VCpuSetupConfig(mode=boot.mode, stack_pointer=BOOT_STACK,
                                        page_table_gpa=L.PAGE_TABLE_ADDR, gdt_gpa=L.GDT_ADDR),
                     boot.description)


def load(space: AddrSpace, config: VmConfig) -> BootState:
    """Load the boot images into ``space`` and write the MP table."""
    ram_size = config.ram_size
    if config.kernel is None:
        if config.initrd is not None:
            raise InvalidInput("-initrd needs -kernel")
        data, path = bundled_guest(), "<bundled smp.elf>"
    else:
        data, path = read_spec(config.kernel, "kernel", limit=ram_size), str(config.kernel.path)
    fmt = detect_x86_format(data, path=path)
    initrd = read_spec(config.initrd, "initrd", limit=ram_size) \
        if config.initrd is not None else None
    initrd_path = str(config.initrd.path) if config.initrd is not None else "<initrd>"
    load_addr = config.kernel.load_addr if config.kernel is not None else None
    if fmt == "bzimage":
        boot = load_bzimage(space, data, ram_size=ram_size, cmdline=config.cmdline,
                            initrd=initrd, path=path, initrd_path=initrd_path)
    elif fmt == "multiboot":
        modules = [(initrd, initrd_path)] if initrd is not None else []
        boot = load_multiboot(space, data, ram_size=ram_size, cmdline=config.cmdline,
                              modules=modules, path=path)
    else:
        if initrd is not None:
            raise InvalidInput(f"kernel {path}: an initrd can only be given to a Linux "
                               "bzImage or a Multiboot kernel")
        if fmt == "elf":
            boot = load_x86_elf(space, data, path=path)
        else:
            boot = load_x86_raw(space, data, path=path,
                                **({} if load_addr is None else {"addr": load_addr}))
            if config.entry is not None:
                boot = boot._replace(entry=config.entry)
    if fmt != "raw":
        check_address(config, "[kernel] kernel_load_addr", load_addr, boot.kernel_start,
                      f"the {boot.format} kernel is loaded")
        check_address(config, "[kernel] entry_point", config.entry, boot.entry,
                      f"the {boot.format} kernel is entered")
    write_mptable(space, config.cpu_num)
    return start_state(boot)

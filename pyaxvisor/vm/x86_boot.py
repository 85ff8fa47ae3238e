"""Boot an x86_64 guest on KVM as QEMU's ``-kernel`` does on a PC: a Linux
``bzImage`` (64-bit boot protocol, with ``boot_params``, e820 map, command line
and initrd), a Multiboot v1 kernel (ELF or flat with the a.out kludge; the
initrd, if any, becomes its first module), a plain ELF, or a raw flat binary
(loaded at 1 MiB and entered in 32-bit protected mode). An MP table describes the
vCPUs, so SMP kernels find them. Without a kernel the bundled test kernel runs
(:func:`bundled_guest`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyaxvisor.errors import InvalidInput
from pyaxvisor.vm.loader import read_image
from pyaxvisor.vm.mptable import write_mptable
from pyaxvisor.vm.result import VmResult
from pyaxvisor.vm.x86_loader import (
    X86Boot,
    detect_x86_format,
    load_bzimage,
    load_multiboot,
    load_x86_elf,
    load_x86_raw,
)
from pyaxvisor.vm.x86_vm import X86Vm

#: The debug-exit device the bundled guest reports through (QEMU's usual test spelling).
BUNDLED_DEBUG_EXIT = (0xF4, 4)


@dataclass
class X86BootSpec:
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    memory: int = 256 << 20
    smp: int = 1
    timeout: float | None = None
    debug_exits: Sequence[tuple[int, int]] = field(default_factory=tuple)
    #: Time each exit's handling (``--stats``); counting is always on.
    exit_times: bool = False


def bundled_guest() -> bytes:
    """The bundled Multiboot test kernel (``pyaxvisor/guests/x86_64/smp.elf``)."""
    from importlib import resources  # costs start-up time when a kernel is given

    return resources.files("pyaxvisor.guests").joinpath("x86_64/smp.elf").read_bytes()


def prepare(vm: X86Vm, spec: X86BootSpec) -> X86Boot:
    """Load the boot images into ``vm`` and write its MP table."""
    if spec.kernel is None:
        if spec.initrd is not None:
            raise InvalidInput("-initrd needs -kernel")
        data, path = bundled_guest(), "<bundled smp.elf>"
    else:
        data, path = read_image(spec.kernel, "kernel"), str(spec.kernel)
    fmt = detect_x86_format(data, path=path)
    initrd = read_image(spec.initrd, "initrd") if spec.initrd is not None else None
    if fmt == "bzimage":
        boot = load_bzimage(vm.space, data, ram_size=vm.ram_size, cmdline=spec.append,
                            initrd=initrd, path=path, initrd_path=str(spec.initrd))
    elif fmt == "multiboot":
        modules = [(initrd, str(spec.initrd))] if initrd is not None else []
        boot = load_multiboot(vm.space, data, ram_size=vm.ram_size, cmdline=spec.append,
                              modules=modules, path=path)
    else:
        if initrd is not None:
            raise InvalidInput(f"kernel {path}: an initrd can only be given to a Linux "
                               "bzImage or a Multiboot kernel")
        if fmt == "elf":
            boot = load_x86_elf(vm.space, data, path=path)
        else:
            boot = load_x86_raw(vm.space, data, path=path)
    write_mptable(vm.space, vm.smp)
    return boot


def boot(spec: X86BootSpec, console_write: Callable[[bytes], None],
         on_vm: Callable[[X86Vm], None] | None = None) -> VmResult:
    """Create the VM, load the guest, run it to the end, tear it down."""
    debug_exits = spec.debug_exits
    if spec.kernel is None and not debug_exits:
        debug_exits = (BUNDLED_DEBUG_EXIT,)
    vm = X86Vm(ram_size=spec.memory, smp=spec.smp, console_write=console_write,
               cmdline=spec.append, debug_exits=debug_exits, exit_times=spec.exit_times)
    try:
        loaded = prepare(vm, spec)
        if on_vm is not None:
            on_vm(vm)
        return vm.run(loaded.entry, mode=loaded.mode, gprs=loaded.gprs, timeout=spec.timeout)
    finally:
        vm.close()

"""VMs from a handful of QEMU-style arguments, for the command line, scripts and tests.

:func:`config_for` turns ``-m``/``-smp``/``-kernel``-like arguments into a
:class:`~pyaxvisor.vm.config.VmConfig` with the board's default memory map and
CPU ids; :func:`new_vm` builds a :class:`~pyaxvisor.vm.vm.Vm` from them for a
script that puts its guest in memory itself; :func:`boot` runs a configuration on
its board to the end; :func:`accelerator` names what runs a board's vCPUs, in QEMU's
words (``-accel``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from pyaxvisor.boards import board_class
from pyaxvisor.vm.board import Board
from pyaxvisor.vm.boot import boot as boot_on
from pyaxvisor.vm.config import DeviceSpec, ImageSpec, VirtioDeviceSpec, VmConfig
from pyaxvisor.vm.result import VmResult
from pyaxvisor.vm.vm import Vm

__all__ = ["aarch64_config", "aarch64_vm", "accelerator", "boot", "config_for", "new_vm",
           "x86_config", "x86_vm"]


def config_for(arch: str, *, machine: str | None = None, cpu_model: str | None = None,
               memory: int | None = None, smp: int = 1, kernel: Path | None = None,
               initrd: Path | None = None, append: str = "", bios: Path | None = None,
               devices: Sequence[DeviceSpec] = (), timeout: float | None = None,
               stats: bool = False, in_cpu_devices: bool = True, vm_id: int = 1,
               name: str = "vm", virtio: Sequence[VirtioDeviceSpec] = ()) -> VmConfig:
    """A configuration for ``arch``'s board ``machine`` (its default without one)."""
    board = board_class(arch, machine)
    board.check_machine(machine, cpu_model)
    size = board.default_memory if memory is None else memory
    return VmConfig(
        arch=arch, machine=(machine or "").split(",")[0] or board.machines[0],
        id=vm_id, name=name, cpu_model=cpu_model,
        cpu_ids=board.default_cpu_ids(smp) if smp > 0 else (),
        memory=board.default_memory_regions(size),
        kernel=ImageSpec(Path(kernel)) if kernel is not None else None,
        initrd=ImageSpec(Path(initrd)) if initrd is not None else None,
        bios=ImageSpec(Path(bios)) if bios is not None else None,
        cmdline=append, devices=tuple(devices), virtio=tuple(virtio), timeout=timeout,
        stats=stats,
        in_cpu_devices=in_cpu_devices)


def new_vm(arch: str, *, ram_size: int | None = None, smp: int = 1, vm_id: int = 1,
           console_write: Callable[[bytes], None] | None = None, cmdline: str = "",
           debug_exits: Sequence[tuple[int, int]] = (), exit_times: bool = False,
           in_cpu_mmio: bool = True, virtio: Sequence[VirtioDeviceSpec] = ()) -> Vm:
    """A VM on ``arch``'s default board with nothing loaded: the caller writes its
    guest with ``write_guest`` and starts it with ``run(entry, ...)``; ``virtio`` its
    virtio devices (the boards that have virtio-mmio transports)."""
    config = config_for(arch, memory=ram_size, smp=smp, append=cmdline, vm_id=vm_id,
                        devices=[DeviceSpec("isa-debug-exit", base, size)
                                 for base, size in debug_exits],
                        stats=exit_times, in_cpu_devices=in_cpu_mmio, virtio=virtio)
    return Vm(config, board_class(config.arch, config.machine)(config),
              console_write=console_write)


def boot(config: VmConfig, console_write: Callable[[bytes], None],
         on_vm: Callable[[Vm], None] | None = None) -> VmResult:
    """Run ``config`` on its board to the end (see :func:`pyaxvisor.vm.boot.boot`)."""
    return boot_on(config, board_class(config.arch, config.machine), console_write, on_vm)


def accelerator(board: type[Board]) -> str:
    """QEMU's name for what runs ``board``'s vCPUs (``-accel``): ``"tcg"`` for the boards
    on the software CPU (the QEMU-``virt``-style boards, :class:`SoftVirtBoard`),
    ``"kvm"`` for the others (the x86 PC, on Linux KVM)."""
    from pyaxvisor.boards.soft_virt import SoftVirtBoard

    return "tcg" if issubclass(board, SoftVirtBoard) else "kvm"


aarch64_config = partial(config_for, "aarch64")
x86_config = partial(config_for, "x86_64")
aarch64_vm = partial(new_vm, "aarch64")
x86_vm = partial(new_vm, "x86_64")

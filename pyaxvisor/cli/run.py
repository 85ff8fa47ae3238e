"""``pyaxvisor run``: boot a guest with its serial console on this terminal.

The VM is described by a :class:`~pyaxvisor.vm.config.VmConfig` built from QEMU's
spellings (``-kernel -initrd -append -m -smp -M -cpu -bios -device``), or read from
an AxVisor VM config file (``pyaxvisor run vm.toml``) with those flags overriding
the file. Which board runs it comes from ``--arch``, else ``-M``, else the kernel
image's format, else aarch64 (:func:`infer_arch`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pyaxvisor.boards import arches, arches_of_machine, board_class
from pyaxvisor.cli.qemu_args import parse_device, parse_memory_size, parse_smp
from pyaxvisor.errors import AxError, InvalidInput
from pyaxvisor.vm.config import ImageSpec, MemoryRegion, VmConfig

if TYPE_CHECKING:
    from pyaxvisor.vm.result import VmResult
    from pyaxvisor.vm.vm import Vm

__all__ = ["infer_arch", "run"]

#: The architecture a command line means when nothing names one.
DEFAULT_ARCH = "aarch64"


def infer_arch(machine: str | None, kernel: Path | None) -> str:
    """The guest architecture a QEMU-style command line means without ``--arch``:
    the board ``-M`` names; when several architectures have that machine (``virt``),
    or none is named, the one the kernel image is built for; else aarch64."""
    candidates = arches_of_machine(machine)
    if len(candidates) == 1:
        return candidates[0]
    if machine and not candidates:
        return DEFAULT_ARCH  # an unknown machine: the default board refuses it by name
    guessed = _guess_from_image(kernel)
    if guessed is not None and (not candidates or guessed in candidates):
        return guessed
    return candidates[0] if candidates else DEFAULT_ARCH


def _guess_from_image(kernel: Path | None) -> str | None:
    """The architecture the kernel file says it is for, if it says."""
    if kernel is None:
        return None
    from pyaxvisor.loaders.detect import GUESS_BYTES, guess_arch

    try:
        with open(kernel, "rb") as f:
            head = f.read(GUESS_BYTES)
    except OSError:
        return None  # the loader reports the unreadable file
    return guess_arch(head)


def _print_stats(result: VmResult) -> None:
    total = sum(result.exits.values())
    click.echo(f"{'exit reason':<20}{'count':>10}{'handling time':>16}", err=True)
    for name, count in result.exits.most_common():
        click.echo(f"{name:<20}{count:>10}{result.exit_time[name] * 1e3:>13.1f} ms", err=True)
    click.echo(f"{'total':<20}{total:>10}", err=True)
    reads, writes = result.in_cpu_accesses
    if reads or writes:
        click.echo(f"device accesses served in-CPU (no exit): {reads} reads, {writes} writes",
                   err=True)


def _from_file(path: Path, arch: str | None, machine: str | None, kernel: Path | None,
               initrd: Path | None, append: str | None, memory: str | None,
               smp: str | None) -> VmConfig:
    """The configuration of ``path`` with the command line's overrides."""
    from pyaxvisor.axvmconfig.reader import read_config

    config = read_config(path, arch=arch, machine=machine)
    changes: dict[str, object] = {}
    if kernel is not None:
        load = config.kernel.load_addr if config.kernel is not None else None
        changes["kernel"] = ImageSpec(kernel, load)
    if initrd is not None:
        load = config.initrd.load_addr if config.initrd is not None else None
        changes["initrd"] = ImageSpec(initrd, load)
    if append is not None:
        changes["cmdline"] = append
    if memory is not None:
        ram = config.ram_regions
        if len(ram) != 1:
            raise InvalidInput(f"-m cannot resize the {len(ram)} RAM regions of {path}: "
                               "change them in the file")
        size = parse_memory_size(memory)
        changes["memory"] = tuple(MemoryRegion(r.gpa, size, r.flags, r.map_type)
                                  if r is ram[0] else r for r in config.memory)
    if smp is not None:
        count = parse_smp(smp)
        cls = board_class(config.arch, config.machine)
        changes["cpu_ids"] = cls.default_cpu_ids(count)
        if config.cpu_sets is not None and len(config.cpu_sets) != count:
            changes["cpu_sets"] = None
    return config.with_(**changes)


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("config_file", required=False, type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(arches()), default=None,
              help="Guest architecture. Default: from -M (pc, q35, microvm: x86_64), else "
                   "from the kernel image (bzImage, Multiboot, x86 ELF: x86_64), else aarch64.")
@click.option("--kernel", "-kernel", type=click.Path(path_type=Path), help="Kernel image.")
@click.option("--initrd", "-initrd", type=click.Path(path_type=Path), help="Initial ramdisk.")
@click.option("--append", "-append", default=None, help="Kernel command line.")
@click.option("--bios", "-bios", type=click.Path(path_type=Path),
              help="AArch64: firmware loaded into flash at address 0 (e.g. U-Boot).")
@click.option("-m", "--memory", "memory", default=None,
              help="Guest RAM (512M, 1G; a bare number is MiB). Default 512M on aarch64, "
                   "256M on x86_64.")
@click.option("--smp", "-smp", default=None, help="Number of vCPUs (N or cpus=N).")
@click.option("--machine", "-M", "-machine", default=None,
              help="Board: virt (aarch64); pc, q35, microvm (x86_64, all the same board).")
@click.option("--cpu", "-cpu", default=None, help="CPU model (cortex-a72; host on x86_64).")
@click.option("--device", "-device", "devices", multiple=True,
              help="x86_64: isa-debug-exit[,iobase=0xf4][,iosize=0x4] (repeatable).")
@click.option("--nographic", "-nographic", is_flag=True, help="Accepted for QEMU scripts.")
@click.option("--enable-kvm", "-enable-kvm", "enable_kvm", is_flag=True,
              help="Accepted for QEMU scripts (x86_64 always runs on KVM).")
@click.option("--no-reboot", "-no-reboot", "no_reboot", is_flag=True,
              help="Accepted for QEMU scripts (a guest reset always ends the run).")
@click.option("--serial", "-serial", default="stdio", help="Only stdio.")
@click.option("--timeout", type=float, default=None, help="Stop the guest after SECONDS.")
@click.option("--stats", is_flag=True, help="Print exits by reason at the end.")
@click.option("--trap-mmio", is_flag=True,
              help="AArch64: route every device access through MMIO exits instead of "
                   "serving the UART and GIC inside the CPU (slower; for debugging).")
def run(config_file: Path | None, arch: str | None, kernel: Path | None, initrd: Path | None,
        append: str | None, bios: Path | None, memory: str | None, smp: str | None,
        machine: str | None, cpu: str | None, devices: tuple[str, ...], nographic: bool,
        enable_kvm: bool, no_reboot: bool, serial: str, timeout: float | None, stats: bool,
        trap_mmio: bool) -> None:
    """Boot a guest with its serial console on this terminal (Ctrl-A X quits).

    CONFIG_FILE is an AxVisor VM config (TOML); the options given with it override
    the file. With no kernel or firmware, boots the bundled guest on 2 vCPUs. The
    exit status is the guest's: 0 after a power-off or reset, (v << 1) | 1 after it
    wrote v to an isa-debug-exit port, 124 on --timeout, 1 when the VM was stopped by
    an error.
    """
    from pyaxvisor.boards.quick import boot, config_for
    from pyaxvisor.cli.console import Console

    try:
        if serial != "stdio":
            raise InvalidInput(f"-serial {serial!r} is not supported: only stdio")
        if initrd is not None and kernel is None and config_file is None:
            raise InvalidInput("-initrd needs -kernel")
        if config_file is None:
            arch = arch or infer_arch(machine, kernel)
            cls = board_class(arch, machine)
            cls.check_machine(machine, cpu)
            _refuse_options(cls.refused_options, bios=bios is not None, device=bool(devices),
                            trap_mmio=trap_mmio)
            ncpus = parse_smp(smp) if smp is not None else \
                2 if kernel is None and bios is None else 1
            config = config_for(arch, machine=machine, cpu_model=cpu,
                                memory=parse_memory_size(memory) if memory else None,
                                smp=ncpus, kernel=kernel, initrd=initrd, append=append or "",
                                bios=bios, devices=[parse_device(d) for d in devices])
    except AxError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        if config_file is not None:
            config = _from_file(config_file, arch, machine, kernel, initrd, append, memory,
                                smp)
            cls = board_class(config.arch, config.machine)
            cls.check_machine(machine, cpu)
            if bios is not None:
                config = config.with_(bios=ImageSpec(bios))
            config = config.with_(devices=config.devices + tuple(parse_device(d)
                                                                 for d in devices))
        config = config.with_(timeout=timeout if timeout is not None else config.timeout,
                              stats=stats, in_cpu_devices=not trap_mmio)
    except AxError as exc:
        click.echo(f"pyaxvisor: {exc}", err=True)
        _exit(1)
    console = Console()

    def attach(vm: Vm) -> None:
        console.start_input(vm.uart.receive, vm.quit)

    try:
        result = boot(config, console.write, on_vm=attach)
    except AxError as exc:
        console.restore()
        click.echo(f"pyaxvisor: {exc}", err=True)
        _exit(1)
    finally:
        console.restore()
    if result.reason == "timeout":
        click.echo(f"\npyaxvisor: timeout: the guest was still running after "
                   f"{config.timeout:g} s and was stopped", err=True)
        click.echo(result.state, err=True)
    elif result.reason == "error":
        click.echo(f"\npyaxvisor: the guest was stopped: {result.error}", err=True)
    elif result.reason == "reset":
        click.echo("\npyaxvisor: the guest asked for a reset; exiting", err=True)
    if stats:
        _print_stats(result)
    _exit(result.status)


def _refuse_options(refused: dict[str, str], **given: bool) -> None:
    """A usage error for the first option given that the board does not take."""
    for option, present in given.items():
        if present and option in refused:
            raise InvalidInput(refused[option])


def _exit(status: int) -> None:
    """End the process with ``status`` once the VM and the console are torn down:
    flush the output and skip the interpreter's finalization (module teardown and
    garbage collection cost ~20 ms of a short run's wall time and have nothing
    left to release)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

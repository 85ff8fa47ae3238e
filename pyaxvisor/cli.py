"""The ``pyaxvisor`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pyaxvisor import __version__
from pyaxvisor.devices.debug_exit import DEFAULT_IOBASE as DEBUG_EXIT_IOBASE
from pyaxvisor.devices.debug_exit import DEFAULT_IOSIZE as DEBUG_EXIT_IOSIZE
from pyaxvisor.errors import AxError, InvalidInput
from pyaxvisor.vm.size import parse_memory_size, parse_smp
from pyaxvisor.vm.x86_loader import EM_386, EM_X86_64, MB_SEARCH, detect_x86_format

if TYPE_CHECKING:
    from pyaxvisor.hal.vcpu_hal import HostHal
    from pyaxvisor.vm.aarch64_vm import Aarch64Vm
    from pyaxvisor.vm.boot import BootSpec
    from pyaxvisor.vm.result import VmResult
    from pyaxvisor.vm.x86_boot import X86BootSpec
    from pyaxvisor.vm.x86_vm import X86Vm

# The commands import what they run when they run: one architecture's VM, the image
# fetcher or the page-table self-check each cost start-up time the others do not need.

# Where each architecture's usual board puts RAM (QEMU pc / virt layouts).
RAM_BASE = {"x86_64": 0x0010_0000, "aarch64": 0x4000_0000, "riscv64": 0x8000_0000}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyaxvisor")
def main() -> None:
    """pyaxvisor: a hypervisor in Python after the ArceOS hypervisor (AxVisor)."""


def _root_registers(pt: object) -> str:
    from pyaxvisor.mm.page_table import EptPageTable, GStagePageTable, Stage2PageTable

    if isinstance(pt, EptPageTable):
        return f"EPTP={pt.eptp():#x}"
    if isinstance(pt, Stage2PageTable):
        return f"VTTBR_EL2={pt.vttbr_el2(1):#x} VTCR_EL2={pt.vtcr_el2(pa_bits=40):#x}"
    if isinstance(pt, GStagePageTable):
        return f"hgatp={pt.hgatp(1):#x}"
    return ""


def _self_check(hal: HostHal, arch: str) -> list[str]:
    """Build guest RAM behind a nested table, write through it, walk one address."""
    from pyaxvisor.mm.addr import GuestPhysAddr
    from pyaxvisor.mm.addrspace import AddrSpace
    from pyaxvisor.mm.nested import nested_page_table

    space = AddrSpace(hal, nested_page_table(hal, arch))
    try:
        base = GuestPhysAddr(RAM_BASE[arch])
        space.map_ram(base, 4 << 20)
        probe = base + 0x20_1008
        pattern = b"pyaxvisor " + arch.encode()
        space.write(probe, pattern)
        if space.read(probe, len(pattern)) != pattern:
            raise AxError(f"{arch}: guest memory did not read back what was written")
        pt = space.page_table
        assert pt is not None
        fmt = pt.fmt
        lines = [f"  {arch:8} {fmt.name}: {fmt.levels} levels, {fmt.input_bits}-bit guest "
                 f"physical addresses; {_root_registers(pt)}"]
        for step in pt.walk(probe):
            lines.append(f"    level {step.depth} table {int(step.table):#x} "
                         f"[{step.index:4}] = {step.raw:#018x}")
        hpa, _flags, size = pt.translate(probe)
        lines.append(f"    {int(probe):#x} -> {int(hpa):#x} ({size >> 10} KiB mapping)")
        return lines
    finally:
        space.destroy()


@main.command()
def info() -> None:
    """Report what this host can run and self-check the nested page tables."""
    import platform

    from pyaxvisor.engine.kvm.probe import kvm_usable
    from pyaxvisor.hal.vcpu_hal import HostHal
    from pyaxvisor.mm.nested import ARCHES

    click.echo(f"pyaxvisor {__version__} on {platform.machine()} "
               f"(Python {platform.python_version()}, {platform.system()})")
    ok, why = kvm_usable()
    click.echo(f"KVM: {'usable, ' + why if ok else 'not usable: ' + why}")
    click.echo("Nested page tables (built in host frames, written and walked):")
    try:
        with HostHal(64 << 20) as hal:
            for arch in ARCHES:
                for line in _self_check(hal, arch):
                    click.echo(line)
    except AxError as exc:
        click.echo(f"self-check failed: {exc}", err=True)
        sys.exit(1)


@main.group(name="images")
def images_group() -> None:
    """Real guest images from Debian packages, cached under ~/.cache/pyaxvisor/images."""


@images_group.command(name="list")
def images_list() -> None:
    """List the images that can be fetched and whether they are cached."""
    from pyaxvisor import images

    for name, image in images.IMAGES.items():
        path = images.image_path(name)
        state = f"cached at {path}" if path.exists() else "not fetched"
        click.echo(f"{name:18} {image.description}; {state}")


@images_group.command(name="fetch")
@click.argument("names", nargs=-1)
@click.option("--refresh", is_flag=True, help="Download again even if cached.")
def images_fetch(names: tuple[str, ...], refresh: bool) -> None:
    """Fetch NAMES (default: the AArch64 set: u-boot-arm64 linux-arm64 initramfs-arm64).

    x86_64: linux-x86_64 (Debian's linux-image-amd64 bzImage) and initramfs-x86_64.
    """
    from pyaxvisor import images

    wanted = names or ("u-boot-arm64", "linux-arm64", "initramfs-arm64")
    try:
        for name in wanted:
            click.echo(f"{name}: {images.fetch(name, refresh=refresh, log=click.echo)}")
    except AxError as exc:
        click.echo(f"pyaxvisor: {exc}", err=True)
        sys.exit(1)


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


X86_MACHINES = ("pc", "q35", "microvm", "isapc")
X86_CPUS = ("host", "max", "qemu64", "kvm64")
DEFAULT_MEMORY = {"aarch64": "512M", "x86_64": "256M"}


def parse_device(spec: str) -> tuple[int, int]:
    """``isa-debug-exit[,iobase=N][,iosize=N]`` (QEMU's -device spelling) →
    ``(iobase, iosize)``; any other device is refused."""
    name, *props = spec.split(",")
    if name != "isa-debug-exit":
        raise InvalidInput(f"-device {name!r} is not supported: only isa-debug-exit")
    values = {"iobase": DEBUG_EXIT_IOBASE, "iosize": DEBUG_EXIT_IOSIZE}
    for prop in props:
        key, sep, value = prop.partition("=")
        if not sep or key not in values:
            raise InvalidInput(f"-device isa-debug-exit: unknown property {prop!r} "
                               "(iobase=, iosize=)")
        try:
            values[key] = int(value, 0)
        except ValueError:
            raise InvalidInput(f"-device isa-debug-exit: {key}={value!r} is not a "
                               "number") from None
    return values["iobase"], values["iosize"]


def _check_board(arch: str, machine: str | None, cpu: str | None) -> None:
    board = (machine or "").split(",")[0]
    if arch == "aarch64":
        if board not in ("", "virt"):
            raise InvalidInput(f"machine {machine!r} is not supported: only 'virt'")
        if cpu not in (None, "cortex-a72", "max", "host"):
            raise InvalidInput(f"CPU model {cpu!r} is not supported: only cortex-a72")
    else:
        if board not in ("", *X86_MACHINES):
            raise InvalidInput(f"machine {machine!r} is not supported for x86_64: "
                               f"{', '.join(X86_MACHINES)} (all run pyaxvisor's PC board)")
        if cpu not in (None, *X86_CPUS):
            raise InvalidInput(f"CPU model {cpu!r} is not supported for x86_64: the vCPUs "
                               "get the host CPU's features KVM supports (-cpu host)")


def infer_arch(machine: str | None, kernel: Path | None) -> str:
    """The guest architecture a QEMU-style command line means without ``--arch``."""
    board = (machine or "").split(",")[0]
    if board in X86_MACHINES:
        return "x86_64"
    if board:
        return "aarch64"
    if kernel is not None:
        try:
            with open(kernel, "rb") as f:
                head = f.read(MB_SEARCH)
        except OSError:
            return "aarch64"  # the loader reports the unreadable file
        if len(head) > 0x206 and head[0x202:0x206] == b"HdrS":
            return "x86_64"
        if head[:4] == b"\x7fELF" and len(head) > 20 and \
                int.from_bytes(head[18:20], "little") in (EM_386, EM_X86_64):
            return "x86_64"
        try:
            if detect_x86_format(head, path=str(kernel)) == "multiboot":
                return "x86_64"
        except AxError:
            pass
    return "aarch64"


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--arch", type=click.Choice(["aarch64", "x86_64"]), default=None,
              help="Guest architecture. Default: from -M (pc, q35, microvm: x86_64), else "
                   "from the kernel image (bzImage, Multiboot, x86 ELF: x86_64), else aarch64.")
@click.option("--kernel", "-kernel", type=click.Path(path_type=Path), help="Kernel image.")
@click.option("--initrd", "-initrd", type=click.Path(path_type=Path), help="Initial ramdisk.")
@click.option("--append", "-append", default="", help="Kernel command line.")
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
def run(arch: str | None, kernel: Path | None, initrd: Path | None, append: str, bios: Path | None,
        memory: str | None, smp: str | None, machine: str | None, cpu: str | None,
        devices: tuple[str, ...], nographic: bool, enable_kvm: bool, no_reboot: bool,
        serial: str, timeout: float | None, stats: bool, trap_mmio: bool) -> None:
    """Boot a guest with its serial console on this terminal (Ctrl-A X quits).

    With no kernel or firmware, boots the bundled guest on 2 vCPUs. The exit status
    is the guest's: 0 after a power-off or reset, (v << 1) | 1 after it wrote v to an
    isa-debug-exit port, 124 on --timeout, 1 when the VM was stopped by an error.
    """
    from pyaxvisor.vm.console import Console

    try:
        arch = arch or infer_arch(machine, kernel)
        _check_board(arch, machine, cpu)
        if serial != "stdio":
            raise InvalidInput(f"-serial {serial!r} is not supported: only stdio")
        if initrd is not None and kernel is None:
            raise InvalidInput("-initrd needs -kernel")
        ram = parse_memory_size(memory or DEFAULT_MEMORY[arch])
        default_smp = 2 if kernel is None and bios is None else 1
        ncpus = parse_smp(smp) if smp is not None else default_smp
        if arch == "x86_64":
            from pyaxvisor.vm.x86_boot import X86BootSpec
            from pyaxvisor.vm.x86_boot import boot as x86_boot

            if bios is not None:
                raise InvalidInput("-bios is not supported on x86_64: give the kernel with "
                                   "-kernel (bzImage, Multiboot, ELF or raw)")
            if trap_mmio:
                raise InvalidInput("--trap-mmio is for aarch64: on x86_64 KVM's in-kernel "
                                   "irqchip serves the APICs")
            spec: BootSpec | X86BootSpec = X86BootSpec(
                kernel=kernel, initrd=initrd, append=append, memory=ram, smp=ncpus,
                timeout=timeout, debug_exits=tuple(parse_device(d) for d in devices),
                exit_times=stats)
        else:
            from pyaxvisor.vm.boot import BootSpec, boot

            if devices:
                raise InvalidInput("-device is not supported on aarch64")
            spec = BootSpec(kernel=kernel, initrd=initrd, append=append, bios=bios,
                            memory=ram, smp=ncpus, timeout=timeout,
                            in_cpu_mmio=not trap_mmio)
    except AxError as exc:
        raise click.UsageError(str(exc)) from None
    console = Console()

    def attach(vm: Aarch64Vm | X86Vm) -> None:
        console.start_input(vm.uart.receive, vm.quit)

    try:
        if arch == "x86_64":
            result = x86_boot(spec, console.write, on_vm=attach)
        else:
            result = boot(spec, console.write, on_vm=attach)
    except AxError as exc:
        console.restore()
        click.echo(f"pyaxvisor: {exc}", err=True)
        sys.exit(1)
    finally:
        console.restore()
    if result.reason == "timeout":
        click.echo(f"\npyaxvisor: timeout: the guest was still running after {timeout:g} s "
                   "and was stopped", err=True)
        click.echo(result.state, err=True)
    elif result.reason == "error":
        click.echo(f"\npyaxvisor: the guest was stopped: {result.error}", err=True)
    elif result.reason == "reset":
        click.echo("\npyaxvisor: the guest asked for a reset; exiting", err=True)
    if stats:
        _print_stats(result)
    _exit(result.status)


def _exit(status: int) -> None:
    """End the process with ``status`` once the VM and the console are torn down:
    flush the output and skip the interpreter's finalization (module teardown and
    garbage collection cost ~20 ms of a short run's wall time and have nothing
    left to release)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()

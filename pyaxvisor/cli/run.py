"""``pyaxvisor run``: boot a guest with its serial console on this terminal.

The VM is described by a :class:`~pyaxvisor.vm.config.VmConfig` built from QEMU's
spellings (``-kernel -initrd -append -m -smp -M -cpu -bios -device -global -drive``), or
read from an AxVisor VM config file (``pyaxvisor run vm.toml``) with those flags
overriding the file. Which board runs it comes from ``--arch`` (fixed by the
``pyaxvisor-system-ARCH`` commands, :mod:`.system`), else ``-M``, else the kernel
image's format, else aarch64 (:func:`infer_arch`). The options QEMU-driven test
runners pass are accepted with QEMU's meaning where pyaxvisor has it, and refused
with one line saying why where it has not (:mod:`.qemu_args`).

Exit statuses (:data:`pyaxvisor.vm.result.STATUS`): the guest's — 0 after a
power-off or reset, ``(v << 1) | 1`` after it wrote ``v`` to an isa-debug-exit port
— else 124 on ``--timeout``, 4 when the VM could not be built or was stopped by an
error, 2 for a usage error, 130 when interrupted (SIGINT). A guest cannot make the
process exit with 2, 4 or 124: every debug-exit status is odd.

Several VMs in one process (``pyaxvisor run a.toml b.toml``, ``--vm`` groups) are
:mod:`.multi`'s: each VM's flags are still parsed and checked here.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from pyaxvisor import __version__
from pyaxvisor.boards import arches, arches_of_machine, board_class
from pyaxvisor.cli.drives import VIRTIO_DEVICES, DriveSpec, parse_drive, virtio_devices
from pyaxvisor.cli.netdev import NetdevSpec, parse_netdev
from pyaxvisor.cli.observe import Observation
from pyaxvisor.cli.qemu_args import (
    MAX_TIMEOUT,
    check_machine_props,
    check_none,
    check_serial,
    choose_accel,
    device_help,
    dtb_randomness,
    parse_accel,
    parse_device,
    parse_global,
    parse_machine,
    parse_memory_size,
    parse_name,
    parse_smp,
    parse_smp_topology,
    parse_timeout,
)
from pyaxvisor.cli.virtconsole import parse_chardev
from pyaxvisor.control.address import QmpAddress, parse_qmp_address
from pyaxvisor.errors import AxError, InvalidInput
from pyaxvisor.vm.config import (
    DeviceSpec,
    ImageSpec,
    MemoryRegion,
    VirtioDeviceSpec,
    VmConfig,
)
from pyaxvisor.vm.result import STATUS

if TYPE_CHECKING:
    from pyaxvisor.gdb.server import GdbAddress, GdbServer
    from pyaxvisor.vm.board import Board
    from pyaxvisor.vm.vm import Vm

__all__ = ["ERROR_STATUS", "INTERRUPTED_STATUS", "FixedArch", "infer_arch", "run"]

#: The architecture a command line means when nothing names one.
DEFAULT_ARCH = "aarch64"
#: The exit status of a VM that could not be built or was stopped by an error.
ERROR_STATUS = STATUS["error"]
#: The exit status after SIGINT (the shell's 128 + 2).
INTERRUPTED_STATUS = 130
#: The click context's ``meta`` key under which ``pyaxvisor profile`` passes its PNG.
PROFILE_PNG = "pyaxvisor.profile_png"


@dataclass(frozen=True)
class FixedArch:
    """The click context object of a ``pyaxvisor-system-ARCH`` command: its
    architecture, which ``--arch`` may only repeat."""

    arch: str
    prog: str


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
    """The architecture the kernel file says it is for, if it says. Only a regular
    file is looked at: reading a pipe would take the bytes the loader needs, and
    opening a FIFO with no writer would wait forever (the loader reports both)."""
    if kernel is None:
        return None
    from pyaxvisor.loaders.detect import GUESS_BYTES, guess_arch

    try:
        if not stat.S_ISREG(os.stat(kernel).st_mode):
            return None
        with open(kernel, "rb") as f:
            head = f.read(GUESS_BYTES)
    except OSError:
        return None  # the loader reports the unreadable file
    return guess_arch(head)


def _from_file(config: VmConfig, path: Path, kernel: Path | None, initrd: Path | None,
               append: str | None, memory: str | None, smp: str | None) -> VmConfig:
    """The configuration read from ``path`` with the command line's overrides."""
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


def _board_devices(cls: type[Board]) -> tuple[str, ...]:
    """The devices ``-device`` can add to the board (none if it refuses ``-device``)."""
    return () if "device" in cls.refused_options else cls.device_types


def _devices(cls: type[Board], board: str, devices: tuple[str, ...],
             drives: tuple[DriveSpec, ...], defaults: dict[tuple[str, str], int],
             chardevs: tuple[str, ...] = (), netdevs: tuple[NetdevSpec, ...] = ()
             ) -> tuple[tuple[DeviceSpec, ...], tuple[VirtioDeviceSpec, ...]]:
    """The ``-device`` and ``-drive`` options as the board's emulated devices and its
    virtio devices; a device the board does not have is refused by name."""
    offered = _board_devices(cls)
    for spec in devices:
        name = spec.split(",")[0]
        if name not in offered:
            has = f"its devices are {', '.join(offered)}" if offered else "it takes no -device"
            raise InvalidInput(f"-device {name!r} is not supported on the {board} ({has}; "
                               "-device help lists them)")
    added = tuple(parse_device(d, defaults) for d in devices
                  if d.split(",")[0] not in VIRTIO_DEVICES)
    return added, virtio_devices(devices, drives, chardevs, netdevs)


def _help_probe(cls: type[Board], board: str, machine: str | None, cpu: str | None,
                accels: list[str], devices: tuple[str, ...]) -> str | None:
    """What ``-machine help``, ``-cpu help``, ``-accel help``, ``-device help`` or
    ``-device NAME,help`` print (QEMU's probes; ``?`` for ``help`` too), if one of them
    is asked; the first one asked wins."""
    from pyaxvisor.boards.quick import accelerator

    if machine in ("help", "?"):
        names = "\n".join(f"{name:<12}{cls.arch} board{' (default)' if i == 0 else ''}"
                          for i, name in enumerate(cls.machines))
        return f"Supported machines are:\n{names}\n"
    if cpu in ("help", "?"):
        return "Available CPUs:\n" + "".join(f"  {model}\n" for model in cls.cpu_models)
    if "help" in accels:
        return f"Accelerators supported by the {board}:\n{accelerator(cls)}\n"
    for spec in devices:
        text = device_help(spec, _board_devices(cls), board)
        if text is not None:
            return text
    return None


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    fixed = ctx.obj if isinstance(ctx.obj, FixedArch) else None
    prog = f"{fixed.prog} (pyaxvisor {__version__})" if fixed else f"pyaxvisor {__version__}"
    click.echo(f"{prog}: QEMU's command line for {fixed.arch if fixed else ', '.join(arches())}"
               " guests")
    ctx.exit(0)


_NO_DISPLAY = "pyaxvisor has no display: the console is the serial port on this terminal"


class _RunCommand(click.Command):
    """``run``: QEMU's single-dash options named whole in errors, and SIGINT anywhere in
    it ends the process with :data:`INTERRUPTED_STATUS` (click's own handling exits 1,
    a guest's pass for a runner)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from pyaxvisor.cli.multi import takes_over

        if takes_over(self, ctx, args):  # several VMs: each parsed on its own (.multi)
            return []
        try:
            return super().parse_args(ctx, list(args))
        except click.NoSuchOption as exc:
            # click reads an unknown "-no-such-option" as the short option "-n": name
            # the word the user wrote, as QEMU does
            known = {opt for param in self.params for opt in getattr(param, "opts", ())}
            word = next((a for a in args if a.startswith(exc.option_name) and a not in known
                         and a.split("=")[0] not in known), None)
            if word is None or word == exc.option_name:
                raise
            raise click.NoSuchOption(word, ctx=ctx) from None

    def invoke(self, ctx: click.Context) -> object:
        from pyaxvisor.cli.multi import MANY, run_many

        try:
            if MANY in ctx.meta:
                run_many(self, ctx)
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _interrupted()


def _interrupted() -> NoReturn:
    click.echo("\npyaxvisor: interrupted (SIGINT); the guest was stopped", err=True)
    _exit(INTERRUPTED_STATUS)


@click.command(cls=_RunCommand, context_settings={"ignore_unknown_options": False,
                                 "help_option_names": ["-h", "--help", "-help"]})
@click.argument("config_file", required=False, type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(arches()), default=None,
              help="Guest architecture (fixed by pyaxvisor-system-ARCH). Default: from -M "
                   "(pc, q35, microvm: x86_64), else from the kernel image (bzImage, "
                   "Multiboot, x86 ELF: x86_64; RISC-V Image or ELF: riscv64), else aarch64.")
@click.option("--kernel", "-kernel", type=click.Path(path_type=Path), help="Kernel image.")
@click.option("--initrd", "-initrd", type=click.Path(path_type=Path), help="Initial ramdisk.")
@click.option("--append", "-append", default=None, help="Kernel command line.")
@click.option("--bios", "-bios", type=click.Path(path_type=Path),
              help="AArch64: firmware loaded into flash at address 0 (e.g. U-Boot).")
@click.option("-m", "--memory", "memory", default=None,
              help="Guest RAM (512M, 1G; a bare number is MiB). Default 512M on aarch64 and "
                   "riscv64, 256M on x86_64. More than the host's RAM and swap together is "
                   "refused.")
@click.option("--smp", "-smp", default=None,
              help="vCPUs: N[,maxcpus=M][,sockets=S][,cores=C][,threads=T]..., the values "
                   "left out computed by QEMU's rules; the guest gets N (default 1 with a "
                   "kernel).")
@click.option("--machine", "-M", "-machine", "machines", multiple=True,
              help="[type=]NAME[,accel=kvm|tcg[:...]]: virt (aarch64, riscv64); pc, q35, "
                   "microvm, isapc (x86_64, all the same board). 'help' lists them.")
@click.option("--accel", "-accel", "accels", multiple=True,
              help="kvm (x86_64) or tcg (aarch64, riscv64): each board runs on one; several "
                   "are tried in order; the impossible one is an error.")
@click.option("--cpu", "-cpu", default=None,
              help="CPU model (cortex-a72; rv64; host on x86_64). 'help' lists them.")
@click.option("--device", "-device", "devices", multiple=True,
              help="x86_64: isa-debug-exit[,iobase=N][,iosize=N] (repeatable); without them "
                   "it sits at QEMU's default ports 0x501-0x502 (test kernels usually want "
                   "iobase=0xf4,iosize=4). All boards: virtio-blk-device,drive=ID, "
                   "virtio-rng-device, virtio-net-device,netdev=ID, virtio-serial-device with "
                   "virtconsole[,chardev=ID] (a virtio console, hvc0; it then takes the "
                   "terminal's input) (virtio-mmio). 'help' lists the board's devices, "
                   "'NAME,help' their properties.")
@click.option("--drive", "-drive", "drives", multiple=True,
              help="file=IMAGE[,format=raw][,if=virtio|none][,readonly=on]"
                   "[,id=ID]: a raw disk image as a virtio-blk device (if=none: for -device "
                   "virtio-blk-device,drive=ID). Repeatable.")
@click.option("--chardev", "-chardev", "chardevs", multiple=True,
              help="stdio,id=ID: this terminal, for -device virtconsole,chardev=ID (the only "
                   "character device).")
@click.option("--netdev", "-netdev", "netdevs", multiple=True,
              help="tap,id=ID,ifname=TAP[,script=no,downscript=no]: the host "
                   "TAP interface TAP (attached to, or created: needs CAP_NET_ADMIN; bring it "
                   "up on the host) for -device virtio-net-device,netdev=ID[,mac=MAC].")
@click.option("--global", "-global", "globals_", multiple=True,
              help="DRIVER.PROP=VALUE: the default of a -device property, e.g. "
                   "isa-debug-exit.iobase=0xf4.")
@click.option("--name", "-name", default=None,
              help="The VM's name (NAME[,process=P][,debug-threads=on|off]; the rest is "
                   "ignored).")
@click.option("--nographic", "-nographic", is_flag=True,
              help="Accepted: there is no display; the serial console is on stdio.")
@click.option("--display", "-display", default=None, help=f"Only 'none' ({_NO_DISPLAY}).")
@click.option("--vnc", "-vnc", default=None, help="Only 'none' (there is no display).")
@click.option("--monitor", "-monitor", default=None,
              help="Only 'none' (there is no monitor; Ctrl-A X quits).")
@click.option("--qmp", "-qmp", "qmps", multiple=True,
              help="unix:PATH,server[,nowait] or tcp:127.0.0.1:PORT,server[,nowait]: a QMP "
                   "control socket (loopback only; repeatable; without nowait the guest "
                   "starts once a client connected, as QEMU; see the README's 'Controlling "
                   "a running VM').")
@click.option("--nodefaults", "-nodefaults", is_flag=True,
              help="Accepted: the boards add no default devices (no VGA, network, parallel "
                   "port or monitor); the serial console stays.")
@click.option("--enable-kvm", "-enable-kvm", "enable_kvm", is_flag=True,
              help="The same as -accel kvm (x86_64 only).")
@click.option("--no-reboot", "-no-reboot", "no_reboot", is_flag=True,
              help="Accepted: a guest reset always ends the run (status 0); nothing reboots.")
@click.option("--no-shutdown", "-no-shutdown", "no_shutdown", is_flag=True,
              help="Accepted: with no monitor to resume or inspect a stopped guest, a guest "
                   "power-off ends the run all the same (status 0).")
@click.option("--serial", "-serial", default="stdio", help="Only stdio (or mon:stdio).")
@click.option("--timeout", default=None,
              help=f"Stop the guest after SECONDS (a positive number, at most {MAX_TIMEOUT}: "
                   "30 days); status 124.")
@click.option("--stats", is_flag=True,
              help="Print exits by reason (count, p50/p99/max latency, time), by device and "
                   "by vCPU at the end.")
@click.option("--stats-json", "stats_json", type=click.Path(path_type=Path), default=None,
              help="Write the exit metrics as JSON to PATH at the end (by reason, device and "
                   "vCPU, latency histograms, guest/VMM time, engine counters).")
@click.option("--trace", "trace", default=None, metavar="KINDS",
              help="Log each exit of these kinds (exit reasons such as MmioWrite,Halt, any "
                   "case; or mmio, pio, sysreg, all): vCPU, PC, reason, device, value, one "
                   "line each, to --trace-file.")
@click.option("--trace-file", "trace_file", type=click.Path(path_type=Path), default=None,
              help="Where --trace writes (default ./pyaxvisor-trace.txt).")
@click.option("--gdb", "-gdb", "gdb", default=None,
              help="Wait for gdb's remote protocol at tcp::PORT (127.0.0.1 only) or "
                   "unix:PATH[,server] (a Unix socket, created). A client that connects "
                   "stops the guest; one that leaves lets it run on.")
@click.option("-s", "gdb_default", is_flag=True, help="Shorthand for -gdb tcp::1234.")
@click.option("-S", "gdb_wait", is_flag=True,
              help="Do not start the CPUs until gdb connects and continues (with -s/-gdb).")
@click.option("--trap-mmio", is_flag=True,
              help="aarch64, riscv64: route every device access through MMIO exits instead of "
                   "serving the UART and interrupt controller inside the CPU (slower; for "
                   "debugging).")
@click.option("--version", "-version", is_flag=True, expose_value=False, is_eager=True,
              callback=_version, help="Print the version and exit.")
@click.pass_context
def run(ctx: click.Context, config_file: Path | None, arch: str | None, kernel: Path | None,
        initrd: Path | None, append: str | None, bios: Path | None, memory: str | None,
        smp: str | None, machines: tuple[str, ...], accels: tuple[str, ...], cpu: str | None,
        devices: tuple[str, ...], drives: tuple[str, ...], chardevs: tuple[str, ...],
        netdevs: tuple[str, ...], globals_: tuple[str, ...],
        name: str | None,
        nographic: bool, display: str | None, vnc: str | None, monitor: str | None,
        qmps: tuple[str, ...], nodefaults: bool, enable_kvm: bool, no_reboot: bool,
        no_shutdown: bool, serial: str,
        timeout: str | None, stats: bool, stats_json: Path | None, trace: str | None,
        trace_file: Path | None, gdb: str | None, gdb_default: bool, gdb_wait: bool,
        trap_mmio: bool) -> None:
    """Boot a guest with its serial console on this terminal (Ctrl-A X quits).

    CONFIG_FILE is an AxVisor VM config (TOML); the options given with it override
    the file. With no kernel or firmware, boots the bundled guest on 2 vCPUs. The
    exit status is the guest's: 0 after a power-off or reset, (v << 1) | 1 after it
    wrote v to an isa-debug-exit port; else 124 on --timeout, 4 when the VM could not
    be built or was stopped by an error, 2 for a usage error, 130 after SIGINT.

    Several VMs: several CONFIG_FILEs (the options are each one's), or `--vm` before
    each VM's options (the options before the first `--vm` are every VM's); their
    consoles share the terminal, Ctrl-A N / Ctrl-A 0..9 move the input, Ctrl-A H
    lists the keys.
    """
    from pyaxvisor.boards.quick import accelerator, config_for

    fixed = ctx.obj if isinstance(ctx.obj, FixedArch) else None
    try:
        if fixed is not None and arch is not None and arch != fixed.arch:
            raise InvalidInput(f"{fixed.prog} runs {fixed.arch} guests: --arch {arch} is "
                               f"pyaxvisor-system-{arch}'s (or pyaxvisor run --arch {arch})")
        arch = fixed.arch if fixed is not None else arch
        check_serial(serial)
        check_none("-display", display, _NO_DISPLAY)
        check_none("-vnc", vnc, "there is no display")
        check_none("-monitor", monitor, "there is no monitor; Ctrl-A X quits")
        seconds = parse_timeout(timeout) if timeout is not None else None
        vm_name = parse_name(name) if name is not None else None
        machine = parse_machine(machines)
        asked = [*machine.accel, *(parse_accel(a) for a in accels),
                 *(["kvm"] if enable_kvm else [])]
        if initrd is not None and kernel is None and config_file is None:
            raise InvalidInput("-initrd needs -kernel")
        drive_specs = tuple(parse_drive(d) for d in drives)
        chardev_ids = tuple(parse_chardev(c) for c in chardevs)
        if len(set(chardev_ids)) != len(chardev_ids):
            raise InvalidInput(f"-chardev: an id is used twice ({', '.join(chardev_ids)})")
        netdev_specs = tuple(parse_netdev(n) for n in netdevs)
        observe = Observation.from_options(stats=stats, stats_json=stats_json, trace=trace,
                                           trace_file=trace_file,
                                           profile_png=ctx.meta.get(PROFILE_PNG))
        qmp_addresses = tuple(parse_qmp_address(q) for q in qmps)
        gdb_address = _gdb_address(gdb, gdb_default, gdb_wait)
    except AxError as exc:
        raise click.UsageError(str(exc)) from None

    file_config = None
    if config_file is not None:
        try:
            from pyaxvisor.axvmconfig.reader import read_config

            file_config = read_config(config_file, arch=arch, machine=machine.type)
        except AxError as exc:
            _fail(str(exc))

    try:
        if file_config is None:
            arch, machine_name = arch or infer_arch(machine.type, kernel), machine.type
        else:
            arch, machine_name = file_config.arch, file_config.machine
        cls = board_class(arch, machine_name)
        board = f"{arch} {cls.machines[0]} board"
        text = _help_probe(cls, board, machine.type, cpu, asked, devices)
        if text is not None:
            click.echo(text, nl=False)
            _exit(0)
        cls.check_machine(machine.type, cpu)
        check_machine_props(machine.props, arch)
        choose_accel(asked, accelerator(cls), board)
        _refuse_options(cls.refused_options, bios=bios is not None, device=bool(devices),
                        trap_mmio=trap_mmio, drive=bool(drives),
                        netdev=bool(netdevs))
        defaults: dict[tuple[str, str], int] = {}
        for spec in globals_:
            driver, prop, value = parse_global(spec, _board_devices(cls), board)
            defaults[(driver, prop)] = value
        added, virtio = _devices(cls, board, devices, drive_specs, defaults, chardev_ids,
                                 netdev_specs)
        if file_config is None:
            ncpus = parse_smp(smp) if smp is not None else \
                2 if kernel is None and bios is None else 1
            config = config_for(arch, machine=machine.type, cpu_model=cpu,
                                memory=parse_memory_size(memory) if memory else None,
                                smp=ncpus, kernel=kernel, initrd=initrd, append=append or "",
                                bios=bios, devices=added, virtio=virtio)
    except AxError as exc:
        raise click.UsageError(str(exc)) from None

    try:
        if file_config is not None:
            assert config_file is not None
            config = _from_file(file_config, config_file, kernel, initrd, append, memory, smp)
            if bios is not None:
                config = config.with_(bios=ImageSpec(bios))
            config = config.with_(devices=config.devices + added,
                                  virtio=config.virtio + virtio)
        config = config.with_(timeout=seconds if seconds is not None else config.timeout,
                              stats=observe.metrics or bool(qmp_addresses),
                              in_cpu_devices=not trap_mmio,
                              dtb_randomness=dtb_randomness(machine.props),
                              name=vm_name if vm_name is not None else config.name)
        _check_before_building(cls, config, smp)
    except AxError as exc:
        _fail(str(exc))
    from pyaxvisor.cli.multi import collect

    if collect(ctx, config, observe):  # one VM of several: .multi boots them all
        if qmp_addresses or gdb_address is not None:
            raise click.UsageError("-qmp, -gdb and -s serve one VM: give them to a run of "
                                   "one VM")
        return
    _boot(config, observe, qmp_addresses, gdb_address, gdb_wait)


def _gdb_address(gdb: str | None, default: bool, wait: bool) -> GdbAddress | None:
    """Where the gdb stub listens (``-gdb``, ``-s``), if it does."""
    from pyaxvisor.gdb.server import DEFAULT_PORT, GdbAddress, parse_address

    if gdb is not None and default:
        raise InvalidInput("-s is -gdb tcp::1234: give one of them")
    if gdb is not None:
        return parse_address(gdb)
    if default:
        return GdbAddress(port=DEFAULT_PORT)
    if wait:
        raise InvalidInput("-S waits for gdb: it needs -s or -gdb")
    return None


def _check_before_building(cls: type[Board], config: VmConfig, smp: str | None) -> None:
    """The board's rules (with QEMU's: ``-smp``'s maxcpus within the board's CPUs),
    then the host's memory, before anything is reserved."""
    from pyaxvisor.cli.host import check_guest_memory

    cls(config).check()
    if smp is not None:
        maxcpus = parse_smp_topology(smp).maxcpus
        if maxcpus > cls.max_cpus:
            raise InvalidInput(f"-smp {smp}: maxcpus {maxcpus} is more than the "
                               f"{cls.max_cpus} CPUs a {cls.machines[0]} VM can have")
    check_guest_memory(config.ram_size)


def _boot(config: VmConfig, observe: Observation, qmp: tuple[QmpAddress, ...] = (),
          gdb: GdbAddress | None = None, gdb_wait: bool = False) -> NoReturn:
    """Run ``config`` with the console on this terminal (and a QMP server on the
    ``qmp`` addresses, a gdb stub at ``gdb``); exit with its status."""
    from pyaxvisor.boards.quick import boot
    from pyaxvisor.cli.console import Console
    from pyaxvisor.cli.gdb import start_gdb
    from pyaxvisor.control.qmp import QmpServer

    console = Console()
    servers: list[QmpServer] = []
    gdb_servers: list[GdbServer] = []

    def attach(vm: Vm) -> None:
        observe.attach(vm)
        if gdb is not None:
            gdb_servers.append(start_gdb(vm, gdb, gdb_wait))
        if qmp:
            servers.append(QmpServer(vm, qmp))
            servers[0].start()
            waits = [str(a) for a in servers[0].addresses if a.wait]
            if waits:  # QEMU's server,wait: the guest starts once a client is there
                click.echo(f"pyaxvisor: QMP: waiting for a client on {', '.join(waits)} "
                           "before the guest starts", err=True)
                servers[0].wait_for_client()
        console.start_input(vm.board.console_input(), vm.quit)

    def release() -> None:  # before any exit: the terminal, the observers, the QMP sockets
        console.restore()
        observe.stop()
        for server in servers:
            server.close()
        for gdb_server in gdb_servers:
            gdb_server.close()

    try:
        write = observe.start(console.write)
        result = boot(config, write, on_vm=attach)
    except AxError as exc:
        release()
        _fail(str(exc))
    except KeyboardInterrupt:
        release()
        _interrupted()
    except Exception as exc:  # a bug: one line and the error status all the same
        release()
        _fail(f"internal error: {type(exc).__name__}: {exc}")
    finally:
        release()
    if result.reason == "timeout":
        click.echo(f"\npyaxvisor: timeout: the guest was still running after "
                   f"{config.timeout:g} s and was stopped", err=True)
        click.echo(result.state, err=True)
    elif result.reason == "error":
        click.echo(f"\npyaxvisor: the guest was stopped: {result.error}", err=True)
    elif result.reason == "reset" and result.detail:
        click.echo(f"\npyaxvisor: the guest was reset: {result.detail}; exiting (as QEMU "
                   "with -no-reboot: nothing reboots)", err=True)
    elif result.reason == "reset":
        click.echo("\npyaxvisor: the guest asked for a reset; exiting", err=True)
    observe.finish(result)
    _exit(result.status)


def _refuse_options(refused: dict[str, str], **given: bool) -> None:
    """A usage error for the first option given that the board does not take."""
    for option, present in given.items():
        if present and option in refused:
            raise InvalidInput(refused[option])


def _fail(message: str) -> NoReturn:
    """``pyaxvisor: MESSAGE`` on standard error; exit with the error status (while
    several VMs are being built, :mod:`.multi` names the VM and does it)."""
    from pyaxvisor.cli.multi import fail_in_group

    fail_in_group(message)
    click.echo(f"pyaxvisor: {message}", err=True)
    _exit(ERROR_STATUS)


def _exit(status: int) -> NoReturn:
    """End the process with ``status`` once the VM and the console are torn down:
    flush the output and skip the interpreter's finalization (module teardown and
    garbage collection cost ~20 ms of a short run's wall time and have nothing
    left to release)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

"""The ``pyaxvisor`` command line: ``run`` (:mod:`.run`), ``profile`` (:mod:`.profile`),
``config`` (:mod:`.config_cmd`),
``images`` and ``info`` (here).

The commands import what they run when they run: one board, the image fetcher or
the page-table self-check each cost start-up time the others do not need.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING

import click

from pyaxvisor import __version__
from pyaxvisor.errors import AxError

if TYPE_CHECKING:
    from pyaxvisor.hal.vcpu_hal import HostHal

#: The guest physical address the page-table self-check maps RAM at: one every
#: nested format can address (EPT 48 bits, stage-2 40, Sv39x4 41).
PROBE_BASE = 0x8000_0000


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
        base = GuestPhysAddr(PROBE_BASE)
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
    """List the images that can be fetched (by Debian's architecture names, also
    accepted by pyaxvisor's: linux-amd64 or linux-x86_64) and whether they are cached."""
    from pyaxvisor import images

    for name, image in images.IMAGES.items():
        info = images.metadata(name)
        state = (f"cached at {images.image_path(name)} ({info['package']} {info['version']})"
                 if info is not None else "not fetched")
        also = images.aliases_of(name)
        aka = f" (also {', '.join(also)})" if also else ""
        click.echo(f"{name:18} {image.description}{aka}; {state}")


@images_group.command(name="fetch")
@click.argument("names", nargs=-1)
@click.option("--refresh", is_flag=True, help="Download again even if cached.")
def images_fetch(names: tuple[str, ...], refresh: bool) -> None:
    """Fetch NAMES (default: the AArch64 set: u-boot-arm64 linux-arm64 initramfs-arm64),
    with a progress bar per package download when the output is a terminal.

    x86_64: linux-amd64 (Debian's linux-image-amd64 bzImage) and initramfs-amd64.
    Names go by Debian's architectures (arm64, amd64, riscv64); pyaxvisor's spellings
    are accepted too (linux-x86_64, initramfs-aarch64...).
    riscv64: u-boot-riscv64 (S-mode U-Boot), linux-riscv64 and initramfs-riscv64, from
    Debian stable through a private apt configuration (mirror: $PYAXVISOR_DEBIAN_MIRROR,
    else the host's Debian mirror).
    """
    from pyaxvisor import images
    from pyaxvisor.cli.progress import download_bars

    wanted = names or ("u-boot-arm64", "linux-arm64", "initramfs-arm64")
    bars = download_bars()
    try:
        with images.download_progress(bars) if bars else contextlib.nullcontext():
            for name in wanted:
                click.echo(f"{name}: {images.fetch(name, refresh=refresh, log=click.echo)}")
    except AxError as exc:
        click.echo(f"pyaxvisor: {exc}", err=True)
        sys.exit(1)


from pyaxvisor.cli.config_cmd import config_group  # noqa: E402  (the commands register)
from pyaxvisor.cli.profile import profile  # noqa: E402
from pyaxvisor.cli.run import run  # noqa: E402

main.add_command(run)
main.add_command(profile)
main.add_command(config_group)

if __name__ == "__main__":
    main()

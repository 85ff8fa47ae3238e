"""The ``pyaxvisor`` command line."""

from __future__ import annotations

import platform
import sys

import click

from pyaxvisor import __version__
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.errors import AxError
from pyaxvisor.hal.vcpu_hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import ARCHES, nested_page_table
from pyaxvisor.mm.page_table import EptPageTable, GStagePageTable, Stage2PageTable

# Where each architecture's usual board puts RAM (QEMU pc / virt layouts).
RAM_BASE = {"x86_64": 0x0010_0000, "aarch64": 0x4000_0000, "riscv64": 0x8000_0000}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyaxvisor")
def main() -> None:
    """pyaxvisor: a hypervisor in Python after the ArceOS hypervisor (AxVisor)."""


def _root_registers(pt: object) -> str:
    if isinstance(pt, EptPageTable):
        return f"EPTP={pt.eptp():#x}"
    if isinstance(pt, Stage2PageTable):
        return f"VTTBR_EL2={pt.vttbr_el2(1):#x} VTCR_EL2={pt.vtcr_el2(pa_bits=40):#x}"
    if isinstance(pt, GStagePageTable):
        return f"hgatp={pt.hgatp(1):#x}"
    return ""


def _self_check(hal: HostHal, arch: str) -> list[str]:
    """Build guest RAM behind a nested table, write through it, walk one address."""
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


if __name__ == "__main__":
    main()

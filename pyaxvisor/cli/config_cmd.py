"""``pyaxvisor config``: AxVisor VM config files.

* ``config check FILE [--arch A] [-M M]`` reads FILE as ``pyaxvisor run FILE``
  would (:func:`pyaxvisor.axvmconfig.reader.read_config`) and prints what it
  describes (:func:`pyaxvisor.axvmconfig.describe.describe`); exit status 0.
* ``config generate --arch A --kernel K [--initrd I] [--dtb D] [-M M] [-m SIZE]
  [--smp N] [--append CMDLINE] [-o FILE [--force]]`` writes the config of a VM
  booting K (:func:`pyaxvisor.axvmconfig.writer.generate`, then ``render``) to
  standard output or FILE; an existing FILE is kept unless ``--force``.

Any problem is one line ``pyaxvisor: MESSAGE`` on standard error and exit status
1, never a traceback. The commands import what they use when they run: this
module is imported whenever ``pyaxvisor`` starts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from pyaxvisor.boards import arches

__all__ = ["config_group"]


def _fail(message: str) -> None:
    click.echo(f"pyaxvisor: {message}", err=True)
    sys.exit(1)


def _guarded(action: Callable[[], None]) -> None:
    """Run ``action``; any error becomes one line on standard error and status 1."""
    from pyaxvisor.errors import AxError

    try:
        action()
    except AxError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}")
    except Exception as exc:  # a bug: reported without a traceback all the same
        _fail(f"internal error: {type(exc).__name__}: {exc}")


@click.group(name="config")
def config_group() -> None:
    """AxVisor VM config files (TOML): check one, or generate one for a kernel."""


@config_group.command(name="check")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(arches()), default=None,
              help="Guest architecture, overriding the file's [pyaxvisor] arch.")
@click.option("--machine", "-M", "machine", default=None,
              help="Board, overriding the file's [pyaxvisor] machine.")
def check(file: Path, arch: str | None, machine: str | None) -> None:
    """Check FILE as `pyaxvisor run FILE` would read it, and print the VM it describes."""

    def action() -> None:
        from pyaxvisor.axvmconfig.describe import describe
        from pyaxvisor.axvmconfig.reader import read_config

        click.echo(describe(read_config(file, arch=arch, machine=machine)), nl=False)

    _guarded(action)


@config_group.command(name="generate")
@click.option("--arch", type=click.Choice(arches()), required=True, help="Guest architecture.")
@click.option("--kernel", "-kernel", type=click.Path(path_type=Path), required=True,
              help="Kernel image (its format sets kernel_load_addr and entry_point).")
@click.option("--initrd", "-initrd", type=click.Path(path_type=Path), default=None,
              help="Initial ramdisk.")
@click.option("--dtb", type=click.Path(path_type=Path), default=None,
              help="AArch64: a device tree file instead of the generated one.")
@click.option("--machine", "-M", "machine", default=None, help="Board (default: the arch's).")
@click.option("-m", "--memory", "memory", default=None,
              help="Guest RAM (512M, 1G; a bare number is MiB). Default: the board's.")
@click.option("--smp", "-smp", default="1", show_default=True, help="Number of vCPUs.")
@click.option("--append", "-append", default="", help="Kernel command line.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write the file here instead of standard output.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def generate(arch: str, kernel: Path, initrd: Path | None, dtb: Path | None,
             machine: str | None, memory: str | None, smp: str, append: str,
             output: Path | None, force: bool) -> None:
    """Write an AxVisor VM config booting KERNEL, with the addresses its format needs."""

    def action() -> None:
        from pyaxvisor.axvmconfig.writer import generate as make
        from pyaxvisor.axvmconfig.writer import render
        from pyaxvisor.cli.qemu_args import parse_memory_size, parse_smp

        if output is not None and output.exists() and not force:
            _fail(f"{output} exists; pass --force to overwrite it")
        config = make(arch, kernel=kernel, initrd=initrd, dtb=dtb,
                      memory=parse_memory_size(memory) if memory is not None else None,
                      smp=parse_smp(smp), cmdline=append, machine=machine)
        text = render(config)
        if output is None:
            click.echo(text, nl=False)
        else:
            output.write_text(text, encoding="utf-8")
            click.echo(f"wrote {output}", err=True)

    _guarded(action)

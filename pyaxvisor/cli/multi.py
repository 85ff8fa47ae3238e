"""``pyaxvisor run`` with several VMs: ``pyaxvisor run a.toml b.toml`` or ``--vm`` groups
(:mod:`.vm_groups` says how the command line splits).

Each VM's flags are parsed and checked by ``run`` itself, one VM at a time, in a
context of its own (:func:`collect` takes the VM ``run`` would have booted); an error
in one is the whole command's, naming the VM (its config file or ``--vm group N``).
Then, before anything is built, what the VMs cannot share is refused: one disk image
used by two VMs when either may write it, one TAP interface, one
``--stats-json``/``--trace-file`` path, and more RAM together than the host can ever
back.

Names: a VM's ``-name``, else its config file's ``[base] name``, else ``vmN`` with
``N`` its index on the command line (from 0); a name already taken gets ``-2``,
``-3``... Each VM then runs on its own thread with its own vCPU threads, memory and
devices (:func:`pyaxvisor.boards.quick.boot`), its console multiplexed on the
terminal (:class:`.console_mux.ConsoleMux`: ``[NAME] `` before each line, input to
one VM at a time) and its own ``--timeout``. A VM that ends, whatever the reason,
leaves the others running; the end is said on standard error at once. Ctrl-A X and
SIGINT stop every VM.

At the end one line per VM on standard error, in command-line order: ``pyaxvisor:
[NAME] END (status N)``, END one of ``powered off``, ``reset``, ``debug-exit value
V``, ``timeout after S s``, ``stopped by Ctrl-A X``, ``stopped by SIGINT``,
``error: MESSAGE``. The exit status is 0 when every VM's is 0, else the status of
the first VM (command-line order) whose status is not 0; 130 after SIGINT.

Call order: :func:`takes_over` from the command's ``parse_args``, :func:`run_many`
from its ``invoke`` (it never returns: it exits the process), :func:`collect` at the
end of ``run`` and :func:`fail_in_group` in its ``_fail``; all on the main thread.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from pyaxvisor.cli.vm_groups import VmArgs, split, value_options
from pyaxvisor.errors import AxError, InvalidInput
from pyaxvisor.vm.result import VmResult

if TYPE_CHECKING:
    from pyaxvisor.cli.console_mux import ConsoleMux
    from pyaxvisor.cli.observe import Observation
    from pyaxvisor.vm.config import VmConfig
    from pyaxvisor.vm.vm import Vm

__all__ = ["MANY", "Guest", "collect", "end_phrase", "fail_in_group",
           "run_many", "takes_over", "unique_names"]

#: ``ctx.meta`` key: the VMs' command lines, while ``run`` hands over to :func:`run_many`.
MANY = "pyaxvisor.multi.vms"
#: Where :func:`collect` puts the VM ``run`` built from one group, while one is built
#: (None otherwise; the main thread's).
_building: list[tuple[VmConfig, Observation, bool]] | None = None
#: How often the main thread wakes while VMs run (for SIGINT).
POLL = 0.2


class _GroupFailed(AxError):
    """``run`` failed to build one VM of several (its ``_fail``)."""


@dataclass
class Guest:
    """One VM of the command line: ``label`` names it before it has a ``name``."""

    label: str
    config: VmConfig
    observe: Observation
    named: bool  # -name was given
    name: str = ""
    vm: Vm | None = None
    result: VmResult | None = None


def takes_over(command: click.Command, ctx: click.Context, args: list[str]) -> bool:
    """Whether ``args`` ask for several VMs (then kept for :func:`run_many`)."""
    if _building is not None or command.name != "run":
        return False  # one group of several being parsed; pyaxvisor profile runs one VM
    try:
        vms = split(args, value_options(command))
    except InvalidInput as exc:
        raise click.UsageError(str(exc), ctx=ctx) from None
    if vms is None:
        return False
    ctx.meta[MANY] = vms
    return True


def collect(ctx: click.Context, config: VmConfig, observe: Observation) -> bool:
    """Take the VM ``run`` built when it builds one of several (True), else False."""
    if _building is None:
        return False
    _building.append((config, observe, ctx.params.get("name") is not None))
    return True


def fail_in_group(message: str) -> None:
    """Raise the error ``run`` would exit with when it is building one VM of several."""
    if _building is not None:
        raise _GroupFailed(message)


def unique_names(guests: list[Guest]) -> None:
    """Give each guest its name (see the module docstring)."""
    taken: set[str] = set()
    for index, guest in enumerate(guests):
        config = guest.config
        base = config.name if guest.named or config.source is not None else f"vm{index}"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        guest.name = name
        guest.config = config.with_(name=name)


def run_many(command: click.Command, ctx: click.Context) -> NoReturn:
    """Build, check and run the VMs ``ctx.meta[MANY]`` holds; exit with their status."""
    from pyaxvisor.cli.run import _exit

    vms: list[VmArgs] = ctx.meta.pop(MANY)
    guests = [_build(command, ctx, vm) for vm in vms]
    unique_names(guests)
    try:
        _check_together(guests)
    except InvalidInput as exc:
        raise click.UsageError(str(exc), ctx=ctx) from None
    try:
        _check_memory(guests)
    except InvalidInput as exc:
        _fail(str(exc))
    _exit(_Runner(guests).run())


def _build(command: click.Command, ctx: click.Context, vm: VmArgs) -> Guest:
    """``run``'s VM for ``vm``'s command line; its errors name ``vm``."""
    global _building
    built: list[tuple[VmConfig, Observation, bool]] = []
    _building = built
    try:
        with command.make_context(ctx.info_name, list(vm.args), parent=ctx.parent,
                                  obj=ctx.obj) as sub:
            command.invoke(sub)
    except click.UsageError as exc:
        raise click.UsageError(_named(vm, exc.format_message()), ctx=ctx) from None
    except _GroupFailed as exc:
        _fail(_named(vm, str(exc)))
    finally:
        _building = None
    if not built:  # run printed something (a help probe) without a VM: nothing to boot
        _fail(f"{vm.label}: no VM to boot")
    config, observe, named = built[0]
    observe.status = False  # no boot status line: it would cut into the other consoles
    return Guest(vm.label, config, observe, named)


def _named(vm: VmArgs, message: str) -> str:
    """``message`` about ``vm``, naming it (once: a file's errors may name it already)."""
    return message if message.startswith(f"{vm.label}:") else f"{vm.label}: {message}"


def _check_together(guests: list[Guest]) -> None:
    """:class:`InvalidInput` for what two VMs cannot share: a disk image either may
    write, a TAP interface, an output file."""
    disks: dict[object, tuple[Guest, Path, bool]] = {}
    for guest in guests:
        for spec in guest.config.virtio:
            if spec.kind != "blk" or spec.image is None:
                continue
            key = _file_key(spec.image)
            other = disks.get(key)
            if other is not None and other[0] is not guest and \
                    not (other[2] and spec.read_only):
                raise InvalidInput(
                    f"[{other[0].name}] and [{guest.name}] both use the disk image "
                    f"{spec.image} and {'one' if other[2] or spec.read_only else 'each'} may "
                    "write it: an image has one writer or any number of readers (readonly=on "
                    "on every VM shares it)")
            disks[key] = (guest, spec.image, spec.read_only)
    taps: dict[str, Guest] = {}
    for guest in guests:
        for spec in guest.config.virtio:
            if spec.kind != "net":
                continue
            first = taps.setdefault(spec.ifname, guest)
            if first is not guest:
                raise InvalidInput(f"[{first.name}] and [{guest.name}] both use the TAP "
                                   f"interface {spec.ifname}: a TAP interface is one VM's "
                                   "network card (give each VM its own ifname=)")
    outputs: dict[object, tuple[Guest, str]] = {}
    for guest in guests:
        observe = guest.observe
        files = [("--stats-json", observe.stats_json)]
        if observe.trace_kinds is not None:
            files.append(("--trace-file", observe.trace_file))
        for option, path in files:
            if path is None:
                continue
            key = os.path.realpath(path)
            if key in outputs:
                first, first_option = outputs[key]
                raise InvalidInput(f"[{first.name}] ({first_option}) and [{guest.name}] "
                                   f"({option}) would both write {path}: give each VM its "
                                   "own file")
            outputs[key] = (guest, option)


def _file_key(path: Path) -> object:
    """What tells two names of one file apart from two files."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino)


def _check_memory(guests: list[Guest]) -> None:
    from pyaxvisor.cli.host import check_guests_memory

    check_guests_memory({guest.name: guest.config.ram_size for guest in guests})


def _fail(message: str) -> NoReturn:
    from pyaxvisor.cli.run import ERROR_STATUS, _exit

    click.echo(f"pyaxvisor: {message}", err=True)
    _exit(ERROR_STATUS)


def end_phrase(result: VmResult, timeout: float | None, stopped_by: str) -> str:
    """How a VM ended, for its summary line (see the module docstring)."""
    if result.reason == "poweroff":
        return "powered off"
    if result.reason == "reset":
        return f"reset ({result.detail})" if result.detail else "reset"
    if result.reason == "debug-exit" and result.exit_status is not None:
        return f"debug-exit value {result.exit_status >> 1}"
    if result.reason == "timeout":
        return f"timeout after {timeout:g} s" if timeout is not None else "timeout"
    if result.reason == "quit":
        return f"stopped by {stopped_by}"
    if result.reason == "error":
        return f"error: {result.error}" if result.error is not None else "error"
    return result.reason


class _Runner:
    """The VMs running, each on its own thread, their consoles on one terminal."""

    def __init__(self, guests: list[Guest]) -> None:
        from pyaxvisor.cli.console_mux import ConsoleMux

        self.guests = guests
        self.mux: ConsoleMux = ConsoleMux([guest.name for guest in guests])
        self._lock = threading.Lock()
        self._stopped_by = ""  # "Ctrl-A X" or "SIGINT" once every VM is told to stop

    def run(self) -> int:
        """Run every VM to its end; the process's exit status."""
        from pyaxvisor.cli.run import ERROR_STATUS, INTERRUPTED_STATUS

        threads = [threading.Thread(target=self._run_one, args=(index,),
                                    name=f"vm-{guest.name}", daemon=True)
                   for index, guest in enumerate(self.guests)]
        previous = signal.signal(signal.SIGINT, self._sigint)
        try:
            self.mux.start_input(lambda: self.stop("Ctrl-A X"))
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(POLL)
        finally:
            signal.signal(signal.SIGINT, previous)
            self.mux.flush()
            self.mux.restore()
        self._report()
        if self._stopped_by == "SIGINT":
            click.echo("pyaxvisor: interrupted (SIGINT); every VM was stopped", err=True)
            return INTERRUPTED_STATUS
        statuses = [guest.result.status if guest.result else ERROR_STATUS
                    for guest in self.guests]
        return next((status for status in statuses if status != 0), 0)

    def _sigint(self, _signum: int, _frame: object) -> None:
        """SIGINT (main thread, between two waits): stop every VM; a second SIGINT is
        Python's KeyboardInterrupt again (``run`` then exits at once)."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.stop("SIGINT")

    def stop(self, why: str) -> None:
        """Tell every VM to stop (any thread); a VM still being built stops when ready."""
        with self._lock:
            if not self._stopped_by:
                self._stopped_by = why
            vms = [guest.vm for guest in self.guests if guest.vm is not None]
        for vm in vms:
            vm.quit()

    def _run_one(self, index: int) -> None:
        from pyaxvisor.boards.quick import boot

        guest = self.guests[index]

        def attach(vm: Vm) -> None:
            guest.observe.attach(vm)
            with self._lock:
                guest.vm = vm
                stopping = bool(self._stopped_by)
            if stopping:
                vm.quit()
            self.mux.attach(index, vm.board.console_input())

        try:
            write = guest.observe.start(self.mux.writer(index))
            result = boot(guest.config, write, on_vm=attach)
        except AxError as exc:
            result = VmResult("error", error=exc)
        except Exception as exc:  # a bug: this VM's error, the others run on
            result = VmResult("error", error=AxError(f"internal error: "
                                                     f"{type(exc).__name__}: {exc}"))
        guest.result = result
        how = end_phrase(result, guest.config.timeout, self._stopped_by)
        self.mux.ended(index, how)
        running = sum(1 for g in self.guests if g.result is None)
        if running and not self._stopped_by:
            self.mux.notice(f"pyaxvisor: [{guest.name}] {how} (status {result.status}); "
                            f"{running} VM{'s' if running > 1 else ''} still running")

    def _report(self) -> None:
        """Each VM's figures (``--stats``, the trace's summary...), then the
        one-line-per-VM summary (main thread, once every VM has ended)."""
        for guest in self.guests:
            observe, result = guest.observe, guest.result
            has_metrics = result is not None and result.metrics is not None
            if has_metrics or observe.trace_kinds is not None:
                click.echo(f"pyaxvisor: [{guest.name}] figures:", err=True)
            if result is not None and result.metrics is not None:
                observe.finish(result)
            else:
                observe.stop()
        for guest in self.guests:
            result = guest.result or VmResult("error", error=AxError("it did not end"))
            how = end_phrase(result, guest.config.timeout, self._stopped_by)
            click.echo(f"pyaxvisor: [{guest.name}] {how} (status {result.status})", err=True)

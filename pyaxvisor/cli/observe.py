"""What ``pyaxvisor run`` (and ``profile``) observe of a run besides the console:
``--stats``, ``--stats-json PATH``, ``--trace KINDS --trace-file PATH``, the profile's
PNG, and the boot status line.

:class:`Observation` is built from the options (checked before the VM is built: a
file that cannot be written is refused then, not after a long run), starts what
must run alongside the VM (:meth:`Observation.start`), hooks the VM
(:meth:`Observation.attach`, before it runs) and reports at the end
(:meth:`Observation.finish`). Reports go to standard error (standard output is the
guest's console) and to the files named.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pyaxvisor.errors import InvalidInput

if TYPE_CHECKING:
    from pyaxvisor.cli.boot_status import BootStatus
    from pyaxvisor.vcpu.exit import ExitReason
    from pyaxvisor.vm.exit_trace import ExitTrace
    from pyaxvisor.vm.result import VmResult
    from pyaxvisor.vm.vm import Vm

__all__ = ["DEFAULT_TRACE_FILE", "Observation", "check_output_file"]

DEFAULT_TRACE_FILE = Path("pyaxvisor-trace.txt")
#: Longest output path accepted.
MAX_PATH = 4096


def check_output_file(option: str, path: Path) -> Path:
    """``path`` if a file can be written there: its directory exists and is writable,
    and it is not a directory; else an :class:`InvalidInput` naming ``option``."""
    text = str(path)
    if not text or len(text) > MAX_PATH or "\0" in text:
        raise InvalidInput(f"{option}: not a usable file name ({len(text)} characters)")
    if path.is_dir():
        raise InvalidInput(f"{option} {path}: is a directory, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidInput(f"{option} {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists()
                                                    and not os.access(path, os.W_OK)):
        raise InvalidInput(f"{option} {path}: not writable")
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its directory (readers
    never see half a file). Call from one thread at a time (it reads the umask)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Observation:
    """The observers one run asked for. ``trace_kinds``: the exit types to trace
    (None: no trace); ``profile_png``: ``pyaxvisor profile``'s picture."""

    stats: bool = False
    stats_json: Path | None = None
    trace_kinds: frozenset[type[ExitReason]] | None = None
    trace_file: Path = DEFAULT_TRACE_FILE
    profile_png: Path | None = None
    status: bool = True
    _trace: ExitTrace | None = field(default=None, repr=False)
    _status: BootStatus | None = field(default=None, repr=False)

    @classmethod
    def from_options(cls, *, stats: bool, stats_json: Path | None, trace: str | None,
                     trace_file: Path | None, profile_png: Path | None = None
                     ) -> Observation:
        """Check the options (an :class:`InvalidInput` names the bad one)."""
        from pyaxvisor.vm.exit_trace import parse_trace_kinds

        if trace_file is not None and trace is None:
            raise InvalidInput("--trace-file needs --trace KINDS (the exits to trace)")
        kinds = parse_trace_kinds(trace) if trace is not None else None
        if stats_json is not None:
            check_output_file("--stats-json", stats_json)
        target = trace_file if trace_file is not None else DEFAULT_TRACE_FILE
        if kinds is not None:
            check_output_file("--trace-file", target)
        if profile_png is not None:
            check_output_file("--png", profile_png)
        return cls(stats=stats, stats_json=stats_json, trace_kinds=kinds, trace_file=target,
                   profile_png=profile_png)

    @property
    def metrics(self) -> bool:
        """Whether the VM must keep exit metrics."""
        return self.stats or self.stats_json is not None or self.profile_png is not None

    def start(self, console_write: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """Start the trace writer and the boot status line; returns the console's write
        as the VM must call it (the status line is erased when the guest writes)."""
        if self.trace_kinds is not None:
            from pyaxvisor.vm.exit_trace import ExitTrace

            self._trace = ExitTrace(self.trace_file, self.trace_kinds)
            self._trace.start()
        if self.status:
            from pyaxvisor.cli.boot_status import BootStatus

            status = BootStatus.for_terminal()
            if status is not None:
                self._status = status
                return status.wrap(console_write)
        return console_write

    def attach(self, vm: Vm) -> None:
        """Hook the VM before it runs."""
        vm.exit_trace = self._trace
        if self._status is not None:
            self._status.watch(vm)

    def stop(self) -> None:
        """Stop what runs alongside the VM (idempotent): the status line goes, the trace
        is written out and its summary reported."""
        if self._status is not None:
            self._status.close()
            self._status = None
        if self._trace is not None:
            summary = self._trace.close()
            click.echo(f"pyaxvisor: trace: {summary}; written to {self._trace.path}", err=True)
            self._trace = None

    def finish(self, result: VmResult) -> None:
        """Report the run's figures: the ``--stats`` table, the JSON file, the profile.
        A file that cannot be written is reported on standard error (the run's status
        stays the guest's)."""
        self.stop()
        snapshot = result.metrics
        if snapshot is None:
            return
        if self.stats:
            from pyaxvisor.cli.stats_report import stats_lines

            for line in stats_lines(snapshot):
                click.echo(line, err=True)
        if self.stats_json is not None:
            data = {"result": {"reason": result.reason, "status": result.status}, **snapshot}
            try:
                write_atomically(self.stats_json,
                                 (json.dumps(data, indent=1) + "\n").encode())
            except OSError as exc:
                click.echo(f"pyaxvisor: --stats-json {self.stats_json}: cannot write: "
                           f"{exc.strerror or exc}", err=True)
        if self.profile_png is not None:
            from pyaxvisor.cli.profile_plot import draw_profile
            from pyaxvisor.cli.stats_report import summary_lines

            for line in summary_lines(snapshot):
                click.echo(line, err=True)
            try:
                size = draw_profile(snapshot, self.profile_png)
            except OSError as exc:
                click.echo(f"pyaxvisor: --png {self.profile_png}: cannot write: "
                           f"{exc.strerror or exc}", err=True)
            else:
                click.echo(f"profile: {self.profile_png} ({size} bytes)", err=True)

"""``pyaxvisor profile``: run a guest as ``pyaxvisor run`` does (the same options) with
exit metrics on, then draw the exit profile as a PNG (``--png``, default
``pyaxvisor-profile.png``; :mod:`.profile_plot`) and print a one-screen summary on
standard error (:func:`~pyaxvisor.cli.stats_report.summary_lines`).

The PNG needs matplotlib, the optional extra ``[profile]``: without it the command
stops before booting with one line naming the extra. The exit status is the guest's,
as for ``run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pyaxvisor.cli.run import ERROR_STATUS, PROFILE_PNG, _exit, _RunCommand, run
from pyaxvisor.errors import AxError

__all__ = ["profile"]

DEFAULT_PNG = Path("pyaxvisor-profile.png")


@click.pass_context
def _profile(ctx: click.Context, png: Path, **options: Any) -> None:
    from pyaxvisor.cli.profile_plot import require_matplotlib

    try:
        require_matplotlib()
    except AxError as exc:
        click.echo(f"pyaxvisor: {exc}", err=True)
        _exit(ERROR_STATUS)
    ctx.meta[PROFILE_PNG] = png
    ctx.invoke(run.callback, **options)  # type: ignore[arg-type]


profile = _RunCommand(
    "profile", callback=_profile,
    params=[*(p for p in run.params if p.name != "version"),
            click.Option(["--png"], type=click.Path(path_type=Path), default=DEFAULT_PNG,
                         show_default=True, help="Where to write the profile picture.")],
    context_settings=run.context_settings,
    help="Run a guest (the options of `pyaxvisor run`) and draw its exit profile: exits "
         "over time per reason and the latency distribution, as a PNG (--png; needs the "
         "optional extra pyaxvisor[profile], i.e. matplotlib), with a one-screen summary "
         "on standard error.",
    short_help="Run a guest and draw its exit profile (PNG + summary).")

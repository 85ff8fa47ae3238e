"""Progress bars for ``pyaxvisor images fetch``: one per package download, on a
terminal only (:func:`download_bars` returns None when standard output is not one:
logs and CI output get the plain lines)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

import click

from pyaxvisor.images import DownloadProgress

__all__ = ["download_bars"]


def download_bars(stream: TextIO | None = None) -> DownloadProgress | None:
    """A progress factory drawing a click progress bar per download on ``stream``
    (standard output by default), or None when ``stream`` is not a terminal."""
    out = stream if stream is not None else sys.stdout
    try:
        if not os.isatty(out.fileno()):
            return None
    except (OSError, ValueError, AttributeError):
        if not (hasattr(out, "isatty") and out.isatty()):
            return None

    @contextlib.contextmanager
    def bar(package: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if total is None:  # apt did not say the size: the log line is all there is
            yield lambda _done: None
            return
        with click.progressbar(length=total, label=f"  {package}", file=out,
                               show_eta=True, show_percent=True, width=30) as shown:
            def report(done: int) -> None:
                step = min(done, total) - shown.pos
                if step > 0:
                    shown.update(step)
            yield report
    return bar

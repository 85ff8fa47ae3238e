"""Download progress for ``pyaxvisor images fetch``: the watcher that sees a download
grow, the package download reporting through it (with stand-ins for ``apt-cache`` and
``apt-get`` on PATH), and the progress bars, drawn on a terminal only."""

from __future__ import annotations

import io
import os
import pty
import select
import sys
import threading
import time
from contextlib import contextmanager

from pyaxvisor import images
from pyaxvisor.cli.progress import download_bars
from pyaxvisor.image_apt import watch_growth

CHUNK = 100_000

FAKE_APT_CACHE = f"""#!{sys.executable}
import sys
assert sys.argv[1:] == ["show", "--no-all-versions", "fakepkg"], sys.argv
print("Package: fakepkg\\nVersion: 1.0\\nArchitecture: all\\nSize: {3 * CHUNK}\\n")
"""
FAKE_APT_GET = f"""#!{sys.executable}
import sys, time
assert sys.argv[1:] == ["download", "fakepkg"], sys.argv
with open("fakepkg_1.0_all.deb", "wb") as f:
    for _ in range(3):
        f.write(b"x" * {CHUNK})
        f.flush()
        time.sleep(0.5)
"""


def test_the_watcher_reports_what_appeared_while_the_block_ran(tmp_path):
    (tmp_path / "old").write_bytes(b"y" * 1000)  # there before: not counted
    reports: list[int] = []

    def grow() -> None:
        with open(tmp_path / "sub" / "new.part", "wb") as f:
            for _ in range(4):
                f.write(b"z" * 5000)
                f.flush()
                time.sleep(0.3)

    (tmp_path / "sub").mkdir()
    with watch_growth(tmp_path, reports.append, interval=0.05):
        writer = threading.Thread(target=grow)
        writer.start()
        writer.join()
    assert reports[-1] == 20_000
    assert reports == sorted(reports)
    assert any(0 < r < 20_000 for r in reports), reports


def test_a_package_download_reports_its_progress(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("apt-cache", FAKE_APT_CACHE), ("apt-get", FAKE_APT_GET)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    dest = tmp_path / "work"
    dest.mkdir()
    shown: list[tuple[str, int | None]] = []
    reports: list[int] = []

    @contextmanager
    def progress(package, total):
        shown.append((package, total))
        yield reports.append

    with images.download_progress(progress):
        deb = images._download("fakepkg", dest, log=lambda _m: None)
    assert deb == dest / "fakepkg_1.0_all.deb"
    assert shown == [("fakepkg", 3 * CHUNK)]  # the size apt gave
    assert reports[-1] == 3 * CHUNK and reports == sorted(reports)
    assert any(0 < r < 3 * CHUNK for r in reports), reports
    # without a progress display nothing is asked of apt-cache: apt-get alone runs
    (bin_dir / "apt-cache").write_text("#!/bin/sh\nexit 3\n")
    again = tmp_path / "again"
    again.mkdir()
    assert images._download("fakepkg", again, log=lambda _m: None).name == deb.name


def test_bars_are_drawn_on_a_terminal_only():
    assert download_bars(io.StringIO()) is None
    master, slave = pty.openpty()
    out = os.fdopen(slave, "w")
    try:
        factory = download_bars(out)
        assert factory is not None
        with factory("linux-image-arm64", 4000) as report:
            report(1000)
            report(4000)
        out.flush()
        seen = b""
        while select.select([master], [], [], 0.5)[0]:
            chunk = os.read(master, 4096)
            if not chunk:
                break
            seen += chunk
        assert b"linux-image-arm64" in seen and b"100%" in seen, seen
    finally:
        out.close()
        os.close(master)

"""Test-session set-up at the repository root.

``python -m pytest`` puts the repository on ``sys.path``, so the tests import the
``pyaxvisor`` sources here rather than the installed copy; the native extensions
(built by ``pip install``) then have to exist in the source tree too. Build them in
place when they are missing (a fresh clone) or older than their C source: the same
sources, the same compiler. ``build_ext`` also puts the patched libunicorn in the
tree (from its cache when ``pip install`` built it); the engine's choice of library is
then made again, before anything imports unicorn.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from pyaxvisor.engine.tcg import unicorn_select

ROOT = Path(__file__).parent
EXTENSIONS = ("pyaxvisor.engine.tcg._hooks", "pyaxvisor.engine.kvm._native")


def _missing() -> list[str]:
    """Extensions not built in the tree, or built before their C source last changed."""
    out = []
    for name in EXTENSIONS:
        spec = importlib.util.find_spec(name)
        source = ROOT / (name.replace(".", "/") + ".c")
        if spec is None or spec.origin is None or (
                source.exists() and Path(spec.origin).stat().st_mtime < source.stat().st_mtime):
            out.append(name)
    if not unicorn_select.patched_library() and not os.environ.get("PYAXVISOR_STOCK_UNICORN"):
        out.append("libunicorn (patched)")
    return out


if _missing():
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT,
                   check=True, capture_output=True)
    importlib.invalidate_caches()
    if _missing():
        raise RuntimeError(f"could not build the native extensions {_missing()} in place")
    unicorn_select.select()

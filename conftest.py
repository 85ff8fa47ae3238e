"""Test-session set-up at the repository root.

``python -m pytest`` puts the repository on ``sys.path``, so the tests import the
``pyaxvisor`` sources here rather than the installed copy; the native extensions
(built by ``pip install``) then have to exist in the source tree too. Build them in
place when they are missing (a fresh clone): the same sources, the same compiler.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent
EXTENSIONS = ("pyaxvisor.engine.tcg._hooks", "pyaxvisor.engine.kvm._native")


def _missing() -> list[str]:
    return [name for name in EXTENSIONS if importlib.util.find_spec(name) is None]


if _missing():
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT,
                   check=True, capture_output=True)
    importlib.invalidate_caches()
    if _missing():
        raise RuntimeError(f"could not build the native extensions {_missing()} in place")

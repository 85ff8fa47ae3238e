"""What the software-CPU engines share beyond libunicorn access: their errors, the
process-wide time base, and the wording of a failed self-test.

Each engine (:mod:`~pyaxvisor.engine.tcg.aarch64`, :mod:`~pyaxvisor.engine.tcg.riscv64`)
locates the CPU-state offsets it depends on once per process and refuses to run
when they do not check out; :func:`self_test_failure` gives every such refusal the
same form: what did not check out, the Unicorn version found, the one validated.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import unicorn
from unicorn.unicorn_py3 import unicorn as _ucm

from pyaxvisor.engine.tcg import unicorn_select
from pyaxvisor.errors import AxError, Unsupported

UNICORN_VERSION = unicorn.__version__
#: The Unicorn release the engines' self-tests were validated with (pinned in
#: pyproject.toml).
VALIDATED_UNICORN = "2.1.4"
#: The host time at which every engine's counters (CNTPCT_EL0, the RISC-V time CSR)
#: read 0 unless a VM gives its own base.
BOOT_NS = time.monotonic_ns()


class EngineError(AxError):
    """The software CPU failed (Unicorn error, self-test failure)."""


class SelfTestFailed(EngineError, Unsupported):
    """This Unicorn build does not behave as the engine was validated against."""


@dataclass(frozen=True)
class UnicornBuild:
    """The libunicorn this process runs on."""

    path: str
    #: The patches the library says it carries (its ``uc_patches()`` marker); empty
    #: for a stock build.
    patches: tuple[str, ...]
    #: Whether it is pyaxvisor's patched build (installed by build_unicorn).
    patched: bool

    @property
    def parallel(self) -> bool:
        """Whether CPUs may run guest code at the same time: the library translates for
        parallel execution (``tcg-parallel``) and stops a CPU from another thread at a
        block start without losing the request (``stop-requests``)."""
        return "tcg-parallel" in self.patches and "stop-requests" in self.patches

    def describe(self) -> str:
        if self.patched:
            names = ", ".join(self.patches) or "no patches"
            return f"patched libunicorn {UNICORN_VERSION} ({names}) from {self.path}"
        if self.patches:
            return (f"libunicorn {UNICORN_VERSION} with patches {', '.join(self.patches)} "
                    f"from {self.path}")
        return f"stock libunicorn {UNICORN_VERSION} from {self.path}"


_build: UnicornBuild | None = None
_build_lock = threading.Lock()
log = logging.getLogger("pyaxvisor")


def unicorn_build() -> UnicornBuild:
    """Which library the binding loaded and the patches its marker names."""
    global _build
    if _build is None:
        lib = _ucm.uclib
        try:
            marker = lib.uc_patches
        except AttributeError:
            patches: tuple[str, ...] = ()
        else:
            marker.restype = ctypes.c_char_p
            marker.argtypes = ()
            patches = tuple(marker().decode().split())
        path = str(Path(lib._name).resolve())
        ours = unicorn_select.patched_library()
        patched = ours is not None and Path(path) == ours.resolve()
        _build = UnicornBuild(path, patches, patched)
    return _build


def check_build() -> UnicornBuild:
    """The engines' self-test of the library itself, run once per process: the patched
    build must carry every patch of the series (else the engine refuses to run); on
    stock library, one notice line says so (unless ``PYAXVISOR_STOCK_UNICORN`` chose it)."""
    global _checked
    with _build_lock:
        build = unicorn_build()
        if _checked:
            return build
        if build.patched:
            missing = [p for p in unicorn_select.expected_patches() if p not in build.patches]
            if missing:
                raise self_test_failure(
                    f"the patched library {build.path} lacks the patches {', '.join(missing)} "
                    "(rebuild it: python -m pyaxvisor.engine.tcg.build_unicorn)")
        elif not build.patches and not os.environ.get("PYAXVISOR_STOCK_UNICORN"):
            log.warning("pyaxvisor: software CPU on stock libunicorn %s (%s), not the "
                        "patched build (python -m pyaxvisor.engine.tcg.build_unicorn makes it)",
                        UNICORN_VERSION, build.path)
        _checked = True
        return build


_checked = False


def self_test_failure(what: str) -> SelfTestFailed:
    """The error an engine raises when its start-up self-test finds ``what``."""
    return SelfTestFailed(
        f"software CPU self-test failed with unicorn {UNICORN_VERSION}: {what}. pyaxvisor "
        f"was validated with unicorn {VALIDATED_UNICORN}; refusing to guess CPU-state offsets")

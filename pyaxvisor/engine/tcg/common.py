"""What the software-CPU engines share beyond libunicorn access: their errors, the
process-wide time base, and the wording of a failed self-test.

Each engine (:mod:`~pyaxvisor.engine.tcg.aarch64`, :mod:`~pyaxvisor.engine.tcg.riscv64`)
locates the CPU-state offsets it depends on once per process and refuses to run
when they do not check out; :func:`self_test_failure` gives every such refusal the
same form: what did not check out, the Unicorn version found, the one validated.
"""

from __future__ import annotations

import time

import unicorn

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


def self_test_failure(what: str) -> SelfTestFailed:
    """The error an engine raises when its start-up self-test finds ``what``."""
    return SelfTestFailed(
        f"software CPU self-test failed with unicorn {UNICORN_VERSION}: {what}. pyaxvisor "
        f"was validated with unicorn {VALIDATED_UNICORN}; refusing to guess CPU-state offsets")

"""pyaxvisor: the ArceOS hypervisor's vCPU and HAL design, in Python."""

__version__ = "0.1.0"

# The software engine's libunicorn: the patched build when installed (before anything
# imports unicorn; see pyaxvisor.engine.tcg.unicorn_select).
from pyaxvisor.engine.tcg.unicorn_select import select as _select_unicorn

_select_unicorn()


def __getattr__(name: str) -> object:
    # pyaxvisor.Machine (the harness API) is imported on first use: a plain
    # ``import pyaxvisor`` stays light.
    if name == "Machine":
        from pyaxvisor.harness.machine import Machine

        return Machine
    raise AttributeError(f"module 'pyaxvisor' has no attribute {name!r}")

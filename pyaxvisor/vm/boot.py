"""Boot a VM end to end: build it, load its guest, run it to the end, tear it down."""

from __future__ import annotations

from collections.abc import Callable

from pyaxvisor.vm.board import Board
from pyaxvisor.vm.config import VmConfig
from pyaxvisor.vm.result import VmResult
from pyaxvisor.vm.vm import Vm

__all__ = ["boot"]


def boot(config: VmConfig, board_class: type[Board], console_write: Callable[[bytes], None],
         on_vm: Callable[[Vm], None] | None = None) -> VmResult:
    """Run the VM ``config`` describes on ``board_class``; ``on_vm`` sees the VM once
    its guest is loaded and before it runs (to attach a console, to script it)."""
    vm = Vm(config, board_class(config), console_write=console_write)
    try:
        vm.load()
        if on_vm is not None:
            on_vm(vm)
        return vm.run()
    finally:
        vm.close()

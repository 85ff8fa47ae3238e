"""``-s``, ``-S`` and ``-gdb``: the gdb stub attached to the VM the command line runs."""

from __future__ import annotations

import sys

from pyaxvisor.gdb.server import GdbAddress, GdbServer
from pyaxvisor.vm.debug import VmDebugger
from pyaxvisor.vm.vm import Vm


def _log(message: str) -> None:
    # the console is in raw mode while the guest runs: end lines with CR LF
    sys.stderr.write(f"pyaxvisor: {message}\r\n")
    sys.stderr.flush()


def start_gdb(vm: Vm, address: GdbAddress, wait: bool) -> GdbServer:
    """Attach a debugger to ``vm`` (halted before its first instruction when ``wait``)
    and listen for gdb at ``address``; the caller closes the server after the run."""
    debugger = VmDebugger(vm, wait=wait)
    server = GdbServer(address, debugger, log=_log)
    vm.debugger = debugger
    server.start()
    where = f"tcp::{server.port}" if address.path is None else f"unix:{address.path}"
    _log(f"gdb stub listening on {where}" + (" (the guest waits for gdb)" if wait else ""))
    return server

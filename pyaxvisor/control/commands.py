"""The QMP commands pyaxvisor serves, over one :class:`~pyaxvisor.vm.vm.Vm`.

QEMU's subset that existing tools use, with QEMU's results (its QAPI schema):

* ``query-status`` → ``{"running": bool, "status": "running" | "paused" | "shutdown"}``;
* ``query-cpus-fast`` → ``[{"cpu-index", "qom-path", "thread-id", "target"}]`` for each
  vCPU that has a host thread (a CPU the guest never started has none yet);
* ``stop`` / ``cont``: :meth:`Vm.pause` / :meth:`Vm.resume` (events ``STOP``/``RESUME``);
* ``system_powerdown``: the board's power button (:meth:`Board.press_power_button`: the
  AArch64 virt board's GPIO power key, the x86 PC's ACPI power button); a board
  without one (RISC-V virt) answers a ``GenericError`` saying so;
* ``system_reset``: what QEMU does under ``-no-reboot``, pyaxvisor's behaviour for a
  guest's own reset too (no board reboots a guest): the VM ends as after a reset
  (exit status 0), event ``SHUTDOWN`` ``host-qmp-system-reset``;
* ``quit``: the VM ends (``SHUTDOWN`` ``host-qmp-quit``);
* ``query-version``, ``query-commands``: what ``qmp-shell`` and friends ask first;

and pyaxvisor's own: ``query-exits`` (:func:`pyaxvisor.vm.counters.exit_counters`)
and ``query-vms`` (one entry per VM this process runs: its id, name, architecture,
machine, vCPUs, RAM bytes and status).

Commands take no arguments (an argument is a ``GenericError`` naming it), are run
on the QMP server's thread one at a time, and raise :class:`QmpError` to answer an
error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyaxvisor import __version__
from pyaxvisor.errors import AxError
from pyaxvisor.vm.counters import exit_counters
from pyaxvisor.vm.result import VmResult

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["QEMU_VERSION", "QmpCommands", "QmpError"]

#: The QEMU version whose QMP the commands follow (the greeting's ``version.qemu``).
QEMU_VERSION = {"major": 8, "minor": 0, "micro": 0}


class QmpError(Exception):
    """An error answer: ``cls`` is QMP's error class ("GenericError", "CommandNotFound")."""

    def __init__(self, cls: str, desc: str) -> None:
        super().__init__(desc)
        self.cls = cls
        self.desc = desc


def vm_status(vm: Vm) -> str:
    if vm.done:
        return "shutdown"
    return "paused" if vm.paused else "running"


class QmpCommands:
    """The commands over ``vm``; :meth:`run` executes one."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self._table: dict[str, Callable[[], Any]] = {
            "query-status": self.query_status, "query-cpus-fast": self.query_cpus_fast,
            "stop": self.stop, "cont": self.cont, "system_powerdown": self.system_powerdown,
            "system_reset": self.system_reset, "quit": self.quit,
            "query-version": self.query_version, "query-commands": self.query_commands,
            "query-exits": self.query_exits, "query-vms": self.query_vms,
        }

    @property
    def names(self) -> list[str]:
        return ["qmp_capabilities", *self._table]

    def run(self, name: str, arguments: dict[str, Any]) -> Any:
        command = self._table.get(name)
        if command is None:
            raise QmpError("CommandNotFound", f"The command {name} has not been found")
        for key in arguments:
            raise QmpError("GenericError", f"Parameter '{key}' is unexpected")
        try:
            return command()
        except AxError as exc:
            raise QmpError("GenericError", str(exc)) from exc

    # -- QEMU's ----------------------------------------------------------------------------
    def query_status(self) -> dict[str, Any]:
        status = vm_status(self.vm)
        return {"running": status == "running", "status": status}

    def query_cpus_fast(self) -> list[dict[str, Any]]:
        return [{"cpu-index": cpu, "qom-path": f"/machine/unattached/device[{cpu}]",
                 "thread-id": tid, "target": self.vm.config.arch}
                for cpu, tid in self.vm.vcpu_threads().items()]

    def stop(self) -> dict[str, Any]:
        self.vm.pause()
        return {}

    def cont(self) -> dict[str, Any]:
        self.vm.resume()
        return {}

    def system_powerdown(self) -> dict[str, Any]:
        if self.vm.done:
            raise QmpError("GenericError", "the VM has ended")
        if not self.vm.board.press_power_button(self.vm):
            raise QmpError("GenericError", f"the {self._board()} has no power button: the "
                           "guest cannot be asked to power down (quit stops it)")
        return {}

    def system_reset(self) -> dict[str, Any]:
        if self.vm.done:
            raise QmpError("GenericError", "the VM has ended")
        self.vm.finish(VmResult("reset", detail="the QMP client asked for it (system_reset)"),
                       "host-qmp-system-reset")
        return {}

    def quit(self) -> dict[str, Any]:
        self.vm.quit("host-qmp-quit")
        return {}

    def query_version(self) -> dict[str, Any]:
        return {"qemu": dict(QEMU_VERSION), "package": f"pyaxvisor {__version__}"}

    def query_commands(self) -> list[dict[str, str]]:
        return [{"name": name} for name in self.names]

    # -- pyaxvisor's -----------------------------------------------------------------------
    def query_exits(self) -> dict[str, Any]:
        return exit_counters(self.vm)

    def query_vms(self) -> list[dict[str, Any]]:
        config = self.vm.config
        return [{"id": config.id, "name": config.name, "arch": config.arch,
                 "machine": config.machine, "cpus": config.cpu_num,
                 "memory": config.ram_size, "status": vm_status(self.vm)}]

    def _board(self) -> str:
        return f"{self.vm.config.arch} {self.vm.config.machine} board"

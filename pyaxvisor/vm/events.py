"""What happens to a VM as a whole, told to whoever listens (a QMP server, a harness).

Events carry QEMU's names and data (its QAPI ``run-state`` events), so a QMP
server forwards them unchanged:

* ``STOP`` ``{}``: every vCPU was paused (:meth:`Vm.pause`);
* ``RESUME`` ``{}``: they run again (:meth:`Vm.resume`);
* ``SHUTDOWN`` ``{"guest": bool, "reason": CAUSE}``: the VM ended. ``CAUSE`` is one of
  QEMU's ``ShutdownCause`` values: ``guest-shutdown`` (a power-off, or the guest's
  isa-debug-exit), ``guest-reset`` (nothing reboots here: QEMU's ``-no-reboot``),
  ``host-qmp-quit`` (QMP ``quit``), ``host-ui`` (the console's Ctrl-A X, a harness's
  quit), ``host-signal`` (``--timeout``; the stop a runner's timeout would send) or
  ``host-error`` (an error stopped the VM).

Threads: listeners are called on the thread that caused the event (a vCPU thread
for a guest power-off, the host thread that paused); they must return quickly and
never call back into the VM's pause/resume. A listener that raises is dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from pyaxvisor.vm.result import VmResult

__all__ = ["SHUTDOWN_CAUSES", "Listener", "VmEvents", "shutdown_cause"]

Listener = Callable[[str, dict[str, Any]], None]

#: The ``SHUTDOWN`` cause of each way a VM ends (``VmResult.reason``) unless the
#: caller of ``Vm.finish`` names another; ``guest`` is whether the guest asked.
SHUTDOWN_CAUSES = {
    "poweroff": "guest-shutdown", "debug-exit": "guest-shutdown", "reset": "guest-reset",
    "quit": "host-ui", "timeout": "host-signal", "error": "host-error",
}
_GUEST_CAUSES = {"guest-shutdown", "guest-reset", "guest-panic"}


def shutdown_cause(result: VmResult, cause: str | None = None) -> dict[str, Any]:
    """The data of the ``SHUTDOWN`` event for ``result``."""
    reason = cause or SHUTDOWN_CAUSES.get(result.reason, "host-error")
    return {"guest": reason in _GUEST_CAUSES, "reason": reason}


class VmEvents:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(name, dict(data or {}))
            except Exception:  # a broken listener must not stop the VM
                self.unsubscribe(listener)

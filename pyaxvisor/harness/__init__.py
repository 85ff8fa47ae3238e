"""Driving a VM from Python, for test harnesses: :class:`~.machine.Machine` (a VM
booted on a background thread) and its console (:class:`~.console.ConsoleBuffer`)."""

from pyaxvisor.harness.console import ConsoleBuffer, ConsoleTimeout
from pyaxvisor.harness.machine import Machine, MachineTimeout

__all__ = ["ConsoleBuffer", "ConsoleTimeout", "Machine", "MachineTimeout"]

"""What the RISC-V ``virt`` board gives the harts' SBI implementation: the console,
hart states, the supervisor timers and remote fences (the vCPU's ``SbiPlatform``).

pyaxvisor plays OpenSBI: a hart's SBI calls that need the machine come here.

* **Console** (legacy putchar/getchar, DBCN): output goes to the VM's console, as
  OpenSBI's goes to the board's UART; input is taken from the UART's receive
  buffer (LSR.DR, then RBR), as OpenSBI's ``getc`` reads it.
* **Hart states** (HSM ``hart_get_status``): the VM's CPU power state, ON → STARTED,
  OFF → STOPPED, PENDING → START_PENDING.
* **Timers** (TIME ``set_timer``): the hart keeps its compare value and says it
  changed; the board raises the hart's supervisor timer interrupt line when the
  host clock reaches it (at once when it already has), with an event on the VM's
  timer thread otherwise.
* **Remote fences** (RFENCE): every named hart drops its cached translations.

Threads: ``timer_written`` runs on the hart's vCPU thread (inside an SBI call) and
:meth:`SbiBoard.update_timer` also on the timer thread; they are serialised.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from pyaxvisor.devices.uart16550 import Uart16550
from pyaxvisor.errors import AxError
from pyaxvisor.hal.timer import TimerEvent, monotonic_ns
from pyaxvisor.vcpu.width import AccessWidth
from pyaxvisor.vm.power import CpuPower
from pyaxvisor.vm.result import VmResult

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["HSM_STATE", "SbiBoard", "harts_in_mask"]

#: SBI HSM hart states (SBI v2.0, chapter 9) for the VM's CPU power states.
HSM_STARTED, HSM_STOPPED, HSM_START_PENDING = 0, 1, 2
HSM_STATE = {CpuPower.ON: HSM_STARTED, CpuPower.OFF: HSM_STOPPED,
             CpuPower.PENDING: HSM_START_PENDING}
#: A hart_mask_base of all ones means "every hart" (SBI v2.0, section 3.1).
ALL_HARTS = (1 << 64) - 1
_LSR, _RBR, _LSR_DR = 5, 0, 0x01


def harts_in_mask(hart_ids: tuple[int, ...], hart_mask: int, hart_mask_base: int) -> list[int]:
    """The hart ids an SBI hart mask names, of ``hart_ids`` (those that exist)."""
    if hart_mask_base == ALL_HARTS:
        return list(hart_ids)
    return [h for h in hart_ids if h >= hart_mask_base and h - hart_mask_base < 64
            and hart_mask >> (h - hart_mask_base) & 1]


class SbiBoard:
    """The ``SbiPlatform`` of one VM's harts."""

    def __init__(self, vm: Vm, uart: Uart16550) -> None:
        self.vm = vm
        self.uart = uart
        self._hart_ids = vm.config.cpu_ids
        self._events: dict[int, TimerEvent] = {}
        self._lock = threading.Lock()

    # -- console ------------------------------------------------------------------------
    def console_write(self, data: bytes) -> None:
        self.vm.console_write(bytes(data))

    def console_read(self) -> int | None:
        uart = self.uart
        if uart.read(_LSR, AccessWidth.Byte, 0) & _LSR_DR:
            return uart.read(_RBR, AccessWidth.Byte, 0)
        return None

    # -- harts ----------------------------------------------------------------------------
    def hart_status(self, hart_id: int) -> int | None:
        cpu = self.vm.cpu_index(hart_id)
        return None if cpu is None else HSM_STATE[self.vm.cpu_power(cpu)]

    def remote_fence(self, hart_mask: int, hart_mask_base: int) -> None:
        for hart in harts_in_mask(self._hart_ids, hart_mask, hart_mask_base):
            v = self.vm.vcpu(self._hart_ids.index(hart))
            if v is not None:
                v.arch.request_tlb_flush()

    # -- timers ---------------------------------------------------------------------------
    def timer_written(self, hart_id: int) -> None:
        """The hart set its timer (on its vCPU thread, inside the SBI call): never
        raises; a failure ends the VM."""
        try:
            self.update_timer(hart_id)
        except Exception as exc:
            self.vm.finish(VmResult("error", AxError(f"timer of hart {hart_id}: {exc!r}")))

    def update_timer(self, hart_id: int) -> None:
        """Raise the hart's timer line if its compare value is reached, else (re)arm
        the host event for it."""
        cpu = self.vm.cpu_index(hart_id)
        v = self.vm.vcpu(cpu) if cpu is not None else None
        if v is None:
            return
        with self._lock:
            old = self._events.pop(hart_id, None)
            if old is not None:
                self.vm.timers.cancel(old)
            if v.arch.timer_due(monotonic_ns()):
                v.arch.set_timer_line(True)
                v.wake()
                return
            deadline = v.arch.timer_deadline()
            if deadline is not None:
                self._events[hart_id] = self.vm.timers.schedule(
                    deadline, lambda _now, h=hart_id: self.update_timer(h))

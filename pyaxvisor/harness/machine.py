"""``pyaxvisor.Machine``: a VM booted in this process on a background thread, for test
harnesses (in the manner of QEMU's ``qemu.machine.QEMUMachine``)::

    with pyaxvisor.Machine(arch="aarch64", kernel="Image", initrd="initrd.gz",
                           append="console=ttyAMA0", memory="512M", timeout=300) as m:
        m.console.expect(r"~ # ", timeout=120)
        m.console.send("poweroff -f\\n")
        m.wait(60)
    assert m.exit_status == 0

The arguments are ``pyaxvisor run``'s, by their long names (``arch``, ``machine``,
``cpu``, ``memory`` as bytes or QEMU's ``512M``, ``smp``, ``kernel``, ``initrd``,
``append``, ``bios``, ``trap_mmio``, ``devices``/``virtio`` as
:class:`~pyaxvisor.vm.config.DeviceSpec`/:class:`~pyaxvisor.vm.config.VirtioDeviceSpec`,
``timeout``, ``stats``); ``qmp`` names
addresses (``"unix:PATH"``, ``"tcp:127.0.0.1:PORT"``) a QMP server listens on while the
VM runs (:attr:`Machine.qmp_addresses` has them, with the port a ``tcp`` port 0 got).
``config=`` takes a whole :class:`~pyaxvisor.vm.config.VmConfig` instead.

Life cycle: :meth:`Machine.launch` (``__enter__``) builds the VM, loads its guest,
starts the QMP servers and the run, and returns once the guest runs; an error building
it is raised there. The run ends as ``pyaxvisor run``'s does (the guest powers off or
resets, ``timeout``, an error, :meth:`Machine.quit`); :meth:`Machine.wait` waits for
that and returns the :class:`~pyaxvisor.vm.result.VmResult`; :attr:`Machine.exit_status`
is then the status ``pyaxvisor run`` would exit with (:data:`~pyaxvisor.vm.result.STATUS`).
:meth:`Machine.shutdown` (``__exit__``) quits a VM still running, waits for its end and
releases it; guest memory can be read and written only until then.

Threads: the methods may be called from any thread but the VM's own; ``pause`` waits
until every vCPU stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pyaxvisor.errors import AxError, BadState, InvalidInput
from pyaxvisor.harness.console import ConsoleBuffer
from pyaxvisor.vm.result import STATUS, VmResult

if TYPE_CHECKING:
    from pyaxvisor.control.address import QmpAddress
    from pyaxvisor.control.qmp import QmpServer
    from pyaxvisor.vm.config import DeviceSpec, VirtioDeviceSpec, VmConfig
    from pyaxvisor.vm.vm import Vm

__all__ = ["Machine", "MachineTimeout"]

#: How long :meth:`Machine.launch` waits for the VM to be built and loaded.
LAUNCH_TIMEOUT = 120.0
#: How long :meth:`Machine.shutdown` waits for a quit VM to end.
SHUTDOWN_TIMEOUT = 60.0


class MachineTimeout(AxError, TimeoutError):
    """:meth:`Machine.wait` ran out of time with the VM still running."""


class Machine:
    def __init__(self, arch: str = "aarch64", *, kernel: str | Path | None = None,
                 initrd: str | Path | None = None, append: str = "",
                 bios: str | Path | None = None, memory: int | str | None = None,
                 smp: int = 1, machine: str | None = None, cpu: str | None = None,
                 timeout: float | None = None, stats: bool = False, trap_mmio: bool = False,
                 devices: Sequence[DeviceSpec] = (), virtio: Sequence[VirtioDeviceSpec] = (),
                 qmp: str | Sequence[str] = (), config: VmConfig | None = None) -> None:
        from pyaxvisor.boards.quick import config_for
        from pyaxvisor.control.address import parse_qmp_address

        if config is None:
            if isinstance(memory, str):
                from pyaxvisor.cli.qemu_args import parse_memory_size

                memory = parse_memory_size(memory)
            config = config_for(arch, machine=machine, cpu_model=cpu, memory=memory, smp=smp,
                                kernel=_path(kernel), initrd=_path(initrd), append=append,
                                bios=_path(bios), devices=devices, virtio=virtio,
                                timeout=timeout, stats=stats, in_cpu_devices=not trap_mmio)
        self.config = config
        self._qmp_wanted: list[QmpAddress] = [
            parse_qmp_address(spec, harness=True)
            for spec in ([qmp] if isinstance(qmp, str) else qmp)]
        self.console = ConsoleBuffer()
        self.qmp_addresses: list[QmpAddress] = []
        self._vm: Vm | None = None
        self._servers: list[QmpServer] = []
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._ended = threading.Event()
        self._result: VmResult | None = None
        self._error: BaseException | None = None

    # -- life cycle ---------------------------------------------------------------------
    def __enter__(self) -> Machine:
        self.launch()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def launch(self) -> None:
        """Build the VM, load its guest and start it (once)."""
        if self._thread is not None:
            raise BadState("the machine was already launched")
        self._thread = threading.Thread(target=self._main, name="machine", daemon=True)
        self._thread.start()
        self._started.wait(LAUNCH_TIMEOUT)
        if self._error is not None and self._vm is None:
            self._thread.join()
            raise self._error
        if not self._started.is_set():
            raise MachineTimeout(f"the VM was not built within {LAUNCH_TIMEOUT:g} s")

    def _main(self) -> None:
        from pyaxvisor.boards import board_class
        from pyaxvisor.vm.boot import boot

        try:
            self._result = boot(self.config, board_class(self.config.arch, self.config.machine),
                                self.console.write, on_vm=self._attach)
        except BaseException as exc:
            self._error = exc
        finally:
            for server in self._servers:
                server.close()
            why = (self._result.reason if self._result is not None
                   else f"error: {self._error}")
            self.console.end(why)
            self._ended.set()
            self._started.set()

    def _attach(self, vm: Vm) -> None:
        from pyaxvisor.control.qmp import QmpServer

        self._vm = vm
        self.console.attach_input(vm.board.console_input())
        if self._qmp_wanted:
            server = QmpServer(vm, self._qmp_wanted)
            self._servers.append(server)
            self.qmp_addresses = list(server.addresses)
            server.start()
        self._started.set()

    def wait(self, timeout: float | None = None) -> VmResult:
        """Wait until the VM ends (at most ``timeout`` seconds) and return how it
        ended; an error that kept it from being built is raised."""
        self._require_launched()
        if not self._ended.wait(timeout):
            raise MachineTimeout(f"the VM was still running after {timeout:g} s")
        if self._result is None:
            assert self._error is not None
            raise self._error
        return self._result

    def quit(self) -> None:
        """Stop the VM as the console's Ctrl-A X does (any time; nothing if it ended)."""
        if self._vm is not None and not self._ended.is_set():
            self._vm.quit()

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Quit the VM if it runs, wait for its end and release it (idempotent)."""
        if self._thread is None:
            return
        self.quit()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise MachineTimeout(f"the VM did not end within {timeout:g} s of quit")

    # -- state --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and not self._ended.is_set()

    @property
    def result(self) -> VmResult | None:
        """How the VM ended; ``None`` while it runs."""
        return self._result if self._ended.is_set() else None

    @property
    def exit_status(self) -> int | None:
        """The status ``pyaxvisor run`` would exit with; ``None`` while the VM runs."""
        if not self._ended.is_set():
            return None
        return self._result.status if self._result is not None else STATUS["error"]

    @property
    def vm(self) -> Vm:
        """The VM (for what this class does not wrap; its board, its devices)."""
        self._require_launched()
        assert self._vm is not None
        return self._vm

    def stats(self) -> dict[str, Any]:
        """The VM's exit counters now (QMP ``query-exits``;
        :func:`pyaxvisor.vm.counters.exit_counters`)."""
        from pyaxvisor.vm.counters import exit_counters

        return exit_counters(self.vm)

    # -- control ------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self.vm.paused

    def pause(self) -> None:
        """Stop every vCPU; returns once none runs (:meth:`Vm.pause`)."""
        self.vm.pause()

    def resume(self) -> None:
        self.vm.resume()

    def read_phys(self, addr: int, size: int) -> bytes:
        """``size`` bytes of guest physical memory at ``addr`` (RAM only)."""
        return self._live_vm().read_guest(addr, size)

    def write_phys(self, addr: int, data: bytes) -> None:
        """Write ``data`` into guest physical memory at ``addr`` (RAM only; a software
        CPU drops what it translated of the pages written)."""
        vm = self._live_vm()
        vm.write_guest(addr, bytes(data))
        if vm.space is not None:  # as a device's DMA write: the vCPUs drop stale code
            vm.space.written([(addr, len(data))])

    def _live_vm(self) -> Vm:
        vm = self.vm
        if self._ended.is_set():
            raise BadState("the VM has ended: its memory is released")
        return vm

    def _require_launched(self) -> None:
        if self._thread is None:
            raise BadState("the machine is not launched (use 'with Machine(...)' or "
                           "launch())")
        if self._vm is None and self._error is None:
            raise BadState("the machine is still being built")


def _path(value: str | Path | None) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | Path):
        raise InvalidInput(f"a file name is a str or a Path, not {type(value).__name__}")
    return Path(value)

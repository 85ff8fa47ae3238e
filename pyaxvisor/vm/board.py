"""The one architecture seam of a VM: a :class:`Board` per machine.

The generic :class:`~pyaxvisor.vm.vm.Vm` owns memory, vCPU threads, devices,
timers and statistics; everything that depends on the architecture or the
machine is asked of its board. A board package (``pyaxvisor/boards/<name>/``)
holds a ``layout`` module (its memory map, the single source of those
constants) and a ``board`` module whose :class:`Board` subclass says:

* what it is: ``arch``, ``machines`` (canonical name first, then aliases),
  ``cpu_models``, the ``device_types`` ``-device`` may add, ``default_memory``,
  ``max_cpus``, the ``vcpu_class`` and ``percpu_class`` it runs, how secondary
  CPUs start (``starts_all_cpus``: every vCPU is created at boot and the others
  wait, as x86 APs wait for SIPI; or only vCPU 0, the others started by a
  ``CpuUp`` exit, as PSCI CPU_ON does), and the default memory map
  (:meth:`Board.default_memory_regions`) and CPU ids;
* how to build and boot it, in this order, each once: :meth:`check` (the
  board's rules for a :class:`~pyaxvisor.vm.config.VmConfig`),
  :meth:`host_memory` (the host arena to reserve), :meth:`create` (its devices
  and engine-level state, after the VM mapped the configured RAM), :meth:`load`
  (boot images and firmware tables → a :class:`BootState`), then per vCPU thread
  :meth:`vcpu_create_config`, :meth:`prepare_vcpu` and :meth:`in_cpu_windows`, and
  :meth:`start` once before vCPU 0 runs;
* what to do with the exits only it understands (:meth:`on_hypercall`,
  :meth:`on_exit`, :meth:`on_unclaimed_mmio`), how a ``CpuUp`` outcome becomes its
  firmware interface's return value (:meth:`cpu_up_status`), how a vCPU that was
  turned off starts again (:meth:`restart_vcpu`), and how to describe a vCPU for
  a timeout or error report (:meth:`describe_vcpu`).

A board may keep a reference to the VM it was given in :meth:`create`; it reaches
the VM's vCPUs only through :meth:`Vm.vcpu <pyaxvisor.vm.vm.Vm.vcpu>` and the
other public methods. Board-specific parts (a GIC, a KVM VM) are attributes of
the board, which the VM also exposes as its own (``vm.gic``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pyaxvisor.errors import InvalidInput, Unsupported
from pyaxvisor.vcpu.arch_vcpu import ArchVCpu, InCpuWindow
from pyaxvisor.vcpu.exit import ExitReason, Hypercall, MmioRead, MmioWrite
from pyaxvisor.vcpu.percpu import ArchPerCpu
from pyaxvisor.vcpu.vcpu import VCpu
from pyaxvisor.vm.config import MemoryRegion, VmConfig
from pyaxvisor.vm.power import CpuStart

if TYPE_CHECKING:
    from pyaxvisor.devices.bus import UnhandledMmio
    from pyaxvisor.vm.vm import Vm

__all__ = ["Board", "BootState"]


@dataclass
class BootState:
    """How a vCPU starts: its first instruction, the registers it starts with
    (architecture numbering, set before the vCPU's ``setup``), and the arch vCPU's
    setup configuration (``None``: the board's default)."""

    entry: int
    gprs: dict[int, int] = field(default_factory=dict)
    setup: Any = None
    description: str = ""


class Board(abc.ABC):
    arch: ClassVar[str]
    machines: ClassVar[tuple[str, ...]]
    cpu_models: ClassVar[tuple[str, ...]]
    #: Messages for a machine or CPU model the board does not have.
    machine_hint: ClassVar[str]
    cpu_hint: ClassVar[str]
    default_memory: ClassVar[int]
    max_cpus: ClassVar[int]
    vcpu_class: ClassVar[type[ArchVCpu]]
    percpu_class: ClassVar[type[ArchPerCpu]]
    starts_all_cpus: ClassVar[bool] = False
    #: The bits of a CpuUp target that name a CPU (matched against the cpu ids).
    cpu_id_mask: ClassVar[int] = (1 << 64) - 1
    #: The nested page-table format (a name of :data:`pyaxvisor.mm.nested.ARCHES`) and
    #: keyword arguments for :func:`pyaxvisor.mm.nested.nested_page_table`.
    page_table: ClassVar[str]
    page_table_args: ClassVar[dict[str, int]] = {}
    #: Command-line options (``bios``, ``device``, ``trap_mmio``) the board does not
    #: take, each with the message that says why.
    refused_options: ClassVar[dict[str, str]] = {}
    #: The device types ``-device`` may add to the board (QEMU's names).
    device_types: ClassVar[tuple[str, ...]] = ()
    #: The board's device windows by name (``(base, size)``): what a configuration's
    #: passthrough devices and device regions may stand for.
    device_windows: ClassVar[dict[str, tuple[int, int]]] = {}

    def __init__(self, config: VmConfig) -> None:
        self.config = config

    # -- what the board is ------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def default_memory_regions(cls, size: int) -> tuple[MemoryRegion, ...]:
        """The RAM regions of a machine with ``size`` bytes of RAM (``-m``)."""

    @classmethod
    def default_cpu_ids(cls, count: int) -> tuple[int, ...]:
        """The hardware ids of ``count`` vCPUs (``-smp``)."""
        return tuple(range(count))

    @classmethod
    def check_machine(cls, machine: str | None, cpu_model: str | None) -> None:
        """Refuse a machine name or CPU model this board does not have."""
        name = (machine or "").split(",")[0]
        if name and name not in cls.machines:
            raise InvalidInput(cls.machine_hint.format(machine=machine))
        if cpu_model is not None and cpu_model not in cls.cpu_models:
            raise InvalidInput(cls.cpu_hint.format(cpu=cpu_model))

    def check(self) -> None:
        """The board's rules for its configuration (CPU count, RAM, images, devices),
        and :meth:`VmConfig.check`'s; raises :class:`InvalidInput` naming the key. Runs
        before anything is built; subclasses call it first."""
        config = self.config
        if not 1 <= config.cpu_num <= self.max_cpus:
            raise InvalidInput(f"{config.prefix('[base] cpu_num')}a {self.machines[0]} VM has "
                               f"1..{self.max_cpus} CPUs, not {config.cpu_num}")
        config.check()

    def host_memory(self) -> int:
        """Bytes of host memory to reserve for the VM (its RAM, page tables, and what
        else the board maps)."""
        return self.config.ram_size + (16 << 20)

    # -- building and booting ----------------------------------------------------------
    @abc.abstractmethod
    def create(self, vm: Vm) -> None:
        """Build the machine: devices on ``vm.devices``, interrupt wiring, memory the
        board maps itself, engine-level state."""

    @abc.abstractmethod
    def load(self, vm: Vm) -> BootState:
        """Load the configured images and write the firmware tables; vCPU 0's start."""

    def boot_state(self, entry: int, **start: Any) -> BootState:
        """vCPU 0's start for a guest a script loaded itself (``vm.run(entry, ...)``):
        the board's keyword arguments name registers and modes."""
        if start:
            raise InvalidInput(f"{type(self).__name__}: unknown start arguments "
                               f"{sorted(start)}")
        return BootState(entry)

    @abc.abstractmethod
    def vcpu_create_config(self, vm: Vm, cpu: int, start: BootState | None) -> Any:
        """The arch vCPU's create configuration for vCPU ``cpu``."""

    def secondary_start(self, vm: Vm, cpu: int) -> BootState:
        """How a vCPU created at boot but not started by :meth:`load` begins (boards
        with ``starts_all_cpus``)."""
        raise Unsupported(f"the {self.machines[0]} board starts secondary CPUs with CpuUp")

    def cpu_up_state(self, cpu: int, entry: int, arg: int) -> BootState:
        """The start of vCPU ``cpu`` turned on by a ``CpuUp`` exit at ``entry`` with
        the caller's ``arg``. The default: ``arg`` in GPR 0 (PSCI CPU_ON's context ID
        in x0)."""
        return BootState(entry, {0: arg})

    def prepare_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], start: BootState) -> None:
        """Last board step before the vCPU's ``setup`` (wiring callbacks)."""
        return

    def in_cpu_windows(self, vm: Vm) -> list[InCpuWindow]:
        """Device windows the vCPUs may serve inside their runs (asked as each vCPU
        starts). The default: none."""
        return []

    def start(self, vm: Vm) -> None:
        """Once, just before vCPU 0 first runs (start clocks)."""
        return

    def restart_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], start: BootState) -> None:
        """Start a vCPU again that turned itself off (``CpuDown``) and was turned on
        (``CpuUp``): reset what the architecture resets."""
        raise Unsupported(f"the {self.machines[0]} board cannot start vCPU {cpu} again after "
                          "it turned itself off")

    # -- exits only the board understands ------------------------------------------------
    def on_hypercall(self, vm: Vm, cpu: int, vcpu: VCpu[Any], exit_reason: Hypercall) -> bool:
        """Serve a hypercall the architecture defines (e.g. an SMCCC call nobody
        implements); ``False`` makes it an ``UnknownHypercall``."""
        return False

    def on_exit(self, vm: Vm, cpu: int, vcpu: VCpu[Any], exit_reason: ExitReason) -> bool:
        """Serve an exit the generic VM does not; ``False`` makes it ``Unsupported``."""
        return False

    def on_unclaimed_mmio(self, vm: Vm, cpu: int, vcpu: VCpu[Any],
                          exit_reason: MmioRead | MmioWrite, miss: UnhandledMmio) -> int:
        """An MMIO access where no device lives: what the machine does there. Returns
        the value a read gets; the default stops the VM with ``miss``."""
        raise miss

    @abc.abstractmethod
    def cpu_up_status(self, outcome: CpuStart) -> int:
        """The value the guest's CPU-start call returns for ``outcome``."""

    @abc.abstractmethod
    def describe_vcpu(self, vm: Vm, cpu: int, vcpu: VCpu[Any], state: str) -> str:
        """One line about vCPU ``cpu`` for a timeout or error report."""

    # -- host side ---------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def console(self) -> Any:
        """The serial device that takes host input (``receive(bytes)``)."""

    def console_input(self) -> Callable[[bytes], None]:
        """Where host terminal input goes (any thread; never drops): the serial
        console's ``receive`` unless a board routes it elsewhere."""
        return self.console.receive

    def press_power_button(self, vm: Vm) -> bool:
        """Press the machine's power button (QMP ``system_powerdown``: the guest is
        asked to power down); ``False`` when the board has none (the default)."""
        return False

    def close(self) -> None:
        """Release the board's engine-level state (after the vCPUs are closed)."""
        return

"""The virtio-mmio transports of the QEMU-``virt``-style boards and the x86 PC.

A board has a fixed row of transport slots (:class:`VirtioSlots`: ``count`` slots,
``stride`` bytes apart from ``base``, each with its own interrupt) and, like QEMU's
``virt`` and ``microvm`` boards, creates *every* slot whatever the configuration asks
for: a slot no device is plugged into is an
:class:`~pyaxvisor.devices.virtio.empty.EmptyTransport` (DeviceID 0). The ``virt``
boards' device trees describe all of them, so a guest sees the same tree as under
QEMU; the PC's ACPI tables, as microvm's, only the ones in use.

Which slot a device gets is QEMU's order too (:meth:`VirtioSlots.slot_for`): the
first device asked for goes to the *last* slot (highest address), the next one to
the slot below, and so on. (QEMU creates the transports in increasing address order,
its bus list ends up in decreasing order, and each ``-device`` takes the first free
bus of that list.) So the disk a guest calls ``/dev/vda`` under QEMU is the same one
here.

:class:`VirtioTransports` builds one VM's transports onto its MMIO bus as exit
(trapping) devices, each transport's window :data:`~pyaxvisor.devices.virtio.MMIO_SIZE`
(0x200) bytes, and releases their disk images and TAP interfaces (a virtio-net's
reader thread stops) on :meth:`~VirtioTransports.close`.
A virtio console writes to the VM's console output (``vm.console_write``, where the
UART writes); :attr:`VirtioTransports.console` is the one a VM may have, which the
board hands the terminal's input to.

:class:`VirtioBoard` is what a board with such a row adds to
:class:`~pyaxvisor.vm.board.Board`: the ``-device`` types (:data:`VIRTIO_DEVICE_TYPES`),
the transports, the count check, the terminal's input routed to a virtio console, and
closing. The QEMU-``virt``-style boards (:mod:`pyaxvisor.boards.soft_virt`) and the
x86 PC (:mod:`pyaxvisor.boards.x86_pc.board`) are such boards.

A guest without a device tree or ACPI description of the row (an x86 Linux booted
with a command line) learns of each populated slot from a kernel parameter,
``virtio_mmio.device=<size>@<base>:<irq>`` (Linux's ``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES``,
as Firecracker and QEMU's ``microvm`` without ACPI pass them):
:meth:`VirtioSlots.kernel_parameters` and :func:`add_kernel_parameters`;
:meth:`VirtioSlots.plugged` says which slots those are (for an ACPI description).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from pyaxvisor.devices.bus import Device
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.virtio import (
    MMIO_SIZE,
    AddressedMemory,
    VirtioBackend,
    VirtioBlk,
    VirtioConsole,
    VirtioMmio,
    VirtioNet,
    VirtioRng,
)
from pyaxvisor.devices.virtio.empty import EmptyTransport
from pyaxvisor.devices.virtio.tap import TapBackend
from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.vcpu.register_mirror import RegisterMirror
from pyaxvisor.vcpu.width import AccessWidth
from pyaxvisor.vm.board import Board
from pyaxvisor.vm.config import VirtioDeviceSpec, VmConfig, parse_mac

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["VIRTIO_DEVICE_TYPES", "PluggedSlot", "VirtioBoard", "VirtioSlots",
           "VirtioTransports", "add_kernel_parameters"]

#: The ``-device`` types of a board with virtio-mmio transports (QEMU's names).
VIRTIO_DEVICE_TYPES: tuple[str, ...] = ("virtio-blk-device", "virtio-rng-device",
                                        "virtio-serial-device", "virtconsole",
                                        "virtio-net-device")


@dataclass(frozen=True)
class VirtioSlots:
    """A board's row of virtio-mmio transports: slot ``i`` at ``base + i * stride``
    (its registers the first :data:`MMIO_SIZE` bytes), interrupt ``first_irq + i`` of
    the board's interrupt controller (its own numbering: a GIC INTID, a PLIC source, an
    I/O APIC input), or ``irqs[i]`` when the board gives the slots their lines one by
    one (``irqs`` then has ``count`` distinct entries, ``irqs[0] == first_irq``)."""

    base: int
    stride: int
    count: int
    first_irq: int
    irqs: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.irqs is not None and (len(self.irqs) != self.count
                                      or len(set(self.irqs)) != self.count
                                      or self.irqs[0] != self.first_irq):
            raise ValueError(f"virtio slots: {self.count} distinct interrupts starting with "
                             f"{self.first_irq} expected, not {self.irqs}")

    def slot_base(self, slot: int) -> int:
        return self.base + slot * self.stride

    def slot_irq(self, slot: int) -> int:
        return self.irqs[slot] if self.irqs is not None else self.first_irq + slot

    @property
    def window(self) -> tuple[int, int]:
        """``(base, size)`` of the whole row (a board's device window)."""
        return self.base, self.count * self.stride

    def slot_for(self, index: int) -> int:
        """The slot of the ``index``-th device asked for (QEMU's order: the last slot
        first)."""
        if not 0 <= index < self.count:
            raise InvalidInput(f"virtio device {index + 1}: the board has {self.count} "
                               "virtio-mmio transports")
        return self.count - 1 - index

    def check(self, config: VmConfig, board: str) -> None:
        """Refuse more virtio devices than slots (:class:`InvalidInput`)."""
        if len(config.virtio) > self.count:
            raise InvalidInput(f"{len(config.virtio)} virtio devices asked for: the {board} "
                               f"has {self.count} virtio-mmio transports")

    def plugged(self, devices: int) -> tuple[PluggedSlot, ...]:
        """The slots the first ``devices`` devices take, in the devices' order (QEMU's:
        the last slot first), which is the order a guest should find them in so that it
        numbers them (``virtio0``, ``/dev/vda``) as it would the same devices under
        QEMU."""
        return tuple(PluggedSlot(slot, self.slot_base(slot), self.slot_irq(slot))
                     for slot in (self.slot_for(i) for i in range(devices)))

    def kernel_parameters(self, devices: int) -> tuple[str, ...]:
        """:attr:`PluggedSlot.kernel_parameter` of each of :meth:`plugged`, in order.
        Empty slots are left out: Linux would probe them only to find DeviceID 0."""
        return tuple(plugged.kernel_parameter for plugged in self.plugged(devices))


class PluggedSlot(NamedTuple):
    """A slot a device is plugged into, as a guest is told of it."""

    slot: int
    base: int
    irq: int

    @property
    def kernel_parameter(self) -> str:
        """``virtio_mmio.device=<size>@<base>:<irq>``: the window's :data:`MMIO_SIZE`
        in bytes, its base in hex, the interrupt in decimal (Linux's
        ``virtio_mmio.device=512@0xfeb00e00:12``; QEMU's ``microvm`` spelling)."""
        return f"virtio_mmio.device={MMIO_SIZE}@{self.base:#x}:{self.irq}"


def add_kernel_parameters(cmdline: str, parameters: Sequence[str]) -> str:
    """``cmdline`` with ``parameters`` added for the kernel: at the end, or just before
    a ``--`` word (outside double quotes) when there is one, since Linux hands
    everything after ``--`` to init."""
    if not parameters:
        return cmdline
    quoted, at = False, -1
    for i, char in enumerate(cmdline):
        if char == '"':
            quoted = not quoted
        elif (not quoted and cmdline.startswith("--", i) and (i == 0 or cmdline[i - 1] == " ")
              and cmdline[i + 2:i + 3] in ("", " ")):
            at = i
            break
    added = " ".join(parameters)
    if at < 0:
        return f"{cmdline} {added}" if cmdline.strip() else added
    return f"{cmdline[:at]}{added} {cmdline[at:]}"


def _backend(spec: VirtioDeviceSpec, vm: Vm) -> VirtioBackend:
    if spec.kind == "blk":
        assert spec.image is not None
        return VirtioBlk(spec.image, read_only=spec.read_only)
    if spec.kind == "rng":
        return VirtioRng()
    if spec.kind == "console":
        return VirtioConsole(vm.console_write)
    if spec.kind == "net":
        mac = parse_mac(spec.mac)
        return VirtioNet(TapBackend(spec.ifname), mac)
    raise InvalidInput(f"unknown virtio device kind {spec.kind!r}")


class VirtioTransports:
    """One VM's virtio-mmio transports (all of a board's slots)."""

    def __init__(self, slots: VirtioSlots) -> None:
        self.slots = slots
        #: The device in each slot (an EmptyTransport where nothing is plugged in).
        self.devices: list[Device] = []
        self._backends: list[VirtioBackend] = []
        #: The row's register table, each transport's part at its slot (rows without
        #: gaps only: see :meth:`row`).
        self.mirror = (RegisterMirror(slots.count * MMIO_SIZE) if slots.stride == MMIO_SIZE
                       else None)

    def create(self, vm: Vm, sink_line: Callable[[int], IrqLine]) -> None:
        """Open the configured devices (their images: a missing or locked one raises
        its :class:`~pyaxvisor.errors.AxError` naming the file) and put every slot on
        the VM's MMIO bus; ``sink_line(irq)`` is the interrupt line of input ``irq``.
        What was opened before an error is released by :meth:`close`."""
        assert vm.space is not None
        memory = AddressedMemory(vm.space, GuestPhysAddr)
        ram = [(r.gpa, r.size) for r in vm.config.ram_regions]
        plugged: dict[int, VirtioDeviceSpec] = {
            self.slots.slot_for(i): spec for i, spec in enumerate(vm.config.virtio)}
        devices: list[Device] = []
        for slot in range(self.slots.count):
            spec = plugged.get(slot)
            table = None if self.mirror is None else self.mirror.part(slot * MMIO_SIZE,
                                                                      MMIO_SIZE)
            if spec is None:
                devices.append(EmptyTransport(mirror=table))
                continue
            backend = _backend(spec, vm)
            self._backends.append(backend)
            devices.append(VirtioMmio(backend, memory, ram, sink_line(self.slots.slot_irq(slot)),
                                      name=f"virtio-mmio@{self.slots.slot_base(slot):#x} "
                                           f"({spec.describe()})", mirror=table))
        for slot, device in enumerate(devices):
            vm.devices.mmio.attach(self.slots.slot_base(slot), MMIO_SIZE, device)
        self.devices = devices

    @property
    def console(self) -> VirtioConsole | None:
        """The VM's virtio console, if it has one (at most one: ``VmConfig`` checks)."""
        for backend in self._backends:
            if isinstance(backend, VirtioConsole):
                return backend
        return None

    def device_at(self, slot: int) -> Device:
        return self.devices[slot]

    def row(self) -> Device:
        """The whole row as one device over :attr:`VirtioSlots.window` (for a CPU that
        serves whole pages of device registers in-CPU), routing each access to its
        slot. Only for rows without gaps (stride = the transport's window)."""
        if self.slots.stride != MMIO_SIZE:
            raise InvalidInput(f"virtio row: slots {self.slots.stride:#x} apart leave gaps "
                               f"between {MMIO_SIZE:#x}-byte transports")
        return _Row(self.devices, self.mirror)

    def close(self) -> None:
        """Release the devices' images and TAP interfaces (idempotent)."""
        backends, self._backends = self._backends, []
        for backend in backends:
            close = getattr(backend, "close", None)
            if close is not None:
                close()


class _Row(Device):
    """Slot ``offset // MMIO_SIZE`` answers an access at ``offset`` of the row (the
    transport checks the access itself: one that crosses into the next slot is a bad
    access of the first). ``mirror`` is the row's register table, in which each
    transport publishes its part."""

    def __init__(self, devices: list[Device], mirror: RegisterMirror | None) -> None:
        self.devices = devices
        self.mirror = mirror

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        slot, at = divmod(offset, MMIO_SIZE)
        return self.devices[slot].read(at, width, vcpu_id)

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        slot, at = divmod(offset, MMIO_SIZE)
        self.devices[slot].write(at, width, value, vcpu_id)


class VirtioBoard(Board):
    """A board with a row of virtio-mmio transports (:attr:`virtio_slots`): its
    ``-device`` types, :attr:`virtio` (the VM's transports, which the subclass's
    ``create`` builds with :meth:`VirtioTransports.create` on its interrupt
    controller), the refusal of more devices than slots, the terminal's input, and
    :meth:`close` (subclasses that close more call it)."""

    #: The board's virtio-mmio transports.
    virtio_slots: ClassVar[VirtioSlots]
    device_types: ClassVar[tuple[str, ...]] = VIRTIO_DEVICE_TYPES

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        #: The VM's virtio-mmio transports (built by the board's ``create``).
        self.virtio = VirtioTransports(self.virtio_slots)

    def check(self) -> None:
        """The base rules, then no more virtio devices than slots."""
        super().check()
        self.virtio_slots.check(self.config, f"{self.arch} {self.machines[0]} board")

    def console_input(self) -> Callable[[bytes], None]:
        """Host terminal input goes to the virtio console (the guest's ``hvc0``) when
        the VM has one: asking for a ``virtconsole`` is asking for the shell there, as
        QEMU gives stdin to the chardev the virtconsole names. Otherwise it goes to the
        UART. Output of both always reaches the terminal."""
        virtio = self.virtio.console
        return virtio.receive if virtio is not None else super().console_input()

    def close(self) -> None:
        """Release the virtio devices' disk images and TAP interfaces."""
        self.virtio.close()

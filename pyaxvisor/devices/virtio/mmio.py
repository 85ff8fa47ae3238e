"""The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2), for any back-end.

Register window (:data:`MMIO_SIZE` = 0x200 bytes, as on QEMU's ``virt`` boards):

======  =====================  ===  ==================================================
offset  register               dir  behaviour here
======  =====================  ===  ==================================================
0x000   MagicValue             R    0x74726976 ("virt")
0x004   Version                R    2 (no legacy interface)
0x008   DeviceID               R    the back-end's device ID
0x00c   VendorID               R    0x554D4551 ("QEMU")
0x010   DeviceFeatures         R    32 bits of the offered features, word DeviceFeaturesSel
0x014   DeviceFeaturesSel      W
0x020   DriverFeatures         W    word DriverFeaturesSel (0..3) of the driver's features;
                                    ignored once FEATURES_OK is set
0x024   DriverFeaturesSel      W
0x030   QueueSel               W
0x034   QueueNumMax            R    the selected queue's largest size, 0 if no such queue
0x038   QueueNum               W    the size the driver chose
0x044   QueueReady             RW   1 validates and starts the queue, 0 stops it
0x050   QueueNotify            W    the queue index to process
0x060   InterruptStatus        R    bit 0 used buffer, bit 1 configuration change
0x064   InterruptACK           W    clears the bits written
0x070   Status                 RW   device status; 0 resets the device
0x080   QueueDescLow/High      W    descriptor table address (0x080, 0x084)
0x090   QueueDriverLow/High    W    available ring address (0x090, 0x094)
0x0a0   QueueDeviceLow/High    W    used ring address (0x0a0, 0x0a4)
0x0ac   SHMSel                 W
0x0b0   SHMLenLow/High         R    0xffffffff each: no shared memory region (length -1)
0x0b8   SHMBaseLow/High        R    0xffffffff each (no region)
0x0fc   ConfigGeneration       R    changes whenever the configuration space does
0x100+  Config                 RW   the back-end's configuration space
======  =====================  ===  ==================================================

Accesses: registers below 0x100 take aligned 32-bit accesses only; the
configuration space takes 1, 2, 4 and 8-byte accesses anywhere inside the window
(bytes past the back-end's space read as zero, writes there are ignored). Other
accesses raise :class:`~pyaxvisor.devices.bus.BadAccess`. Write-only registers
read back what was last written (the specification leaves such reads undefined);
QueueNotify and InterruptACK read as 0; reserved offsets read as 0 and ignore
writes; writes to read-only registers are ignored.

Features: the device offers the back-end's device-type bits plus
VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC and VIRTIO_F_EVENT_IDX. Setting
FEATURES_OK succeeds only if the driver's features are a subset of the offered
ones and include VIRTIO_F_VERSION_1; otherwise FEATURES_OK stays clear when the
driver reads Status back (§3.1.1).

Status: the driver may set bits but not clear them (only a write of 0, a reset,
clears them); DEVICE_NEEDS_RESET is the device's alone. The device processes
notifications only between DRIVER_OK and a reset, and not while it needs a reset.

Guest errors: a queue made ready with a bad size, alignment or address (or before
FEATURES_OK), DRIVER_OK before FEATURES_OK, a descriptor chain that breaks the
rules, or a malformed request: the device sets DEVICE_NEEDS_RESET, raises the
configuration-change interrupt and records the reason in :attr:`VirtioMmio.last_error`;
nothing outside guest RAM is touched and nothing is raised into the vCPU.

Interrupt: one level-triggered line, high while InterruptStatus != 0.

Register mirror (:attr:`VirtioMmio.mirror`): MagicValue, Version, DeviceID, VendorID
and InterruptStatus are published for 32-bit reads (a software CPU answers the
driver's interrupt handler's InterruptStatus read without calling the device);
InterruptStatus is published under the lock whenever it changes, before the line
follows it. A transport in a row of transports served as one window gets its part
of the row's table (``mirror=``).

Threads: one lock guards the registers; each queue has its own lock
(:class:`~pyaxvisor.devices.virtio.queue.SplitQueue`). The back-end runs without the
register lock held, so a slow request does not stall register accesses by other
vCPUs. Completions (:meth:`VirtioMmio.push_many`) may come from any thread. Lock order:
register lock, then a queue's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.devices.virtio.backend import DEVICE_TYPE_FEATURES, VirtioBackend
from pyaxvisor.devices.virtio.chain import DescriptorChain
from pyaxvisor.devices.virtio.errors import QueueConfigError, VirtioGuestError
from pyaxvisor.devices.virtio.memory import GuestMemory, GuestRam
from pyaxvisor.devices.virtio.queue import NativeOutcome, NativeServe, QueueLayout, SplitQueue
from pyaxvisor.devices.virtio.spec import (
    F_EVENT_IDX,
    F_INDIRECT_DESC,
    F_VERSION_1,
    INT_CONFIG_CHANGE,
    INT_USED_BUFFER,
    MAX_QUEUE_SIZE,
    MMIO_MAGIC,
    MMIO_VERSION,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK,
    STATUS_FEATURES_OK,
    VENDOR_ID_QEMU,
)
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.register_mirror import RegisterMirror
from pyaxvisor.vcpu.width import AccessWidth

#: Size of the register window.
MMIO_SIZE = 0x200
#: Where the device configuration space starts.
CONFIG_OFFSET = 0x100
#: Feature words the driver may write (DriverFeaturesSel 0..3: 128 feature bits).
FEATURE_WORDS = 4

MAGIC_VALUE = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR_ID = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_LEN_HIGH = 0x0B4
SHM_BASE_LOW = 0x0B8
SHM_BASE_HIGH = 0x0BC
CONFIG_GENERATION = 0x0FC

#: The features the transport and the split queue implement themselves.
TRANSPORT_FEATURES = (1 << F_VERSION_1) | (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX)

_MASK32 = 0xFFFF_FFFF
#: Queue address registers: offset -> (field, high half?).
_QUEUE_ADDR_REGS = {
    QUEUE_DESC_LOW: ("desc", False), QUEUE_DESC_HIGH: ("desc", True),
    QUEUE_DRIVER_LOW: ("avail", False), QUEUE_DRIVER_HIGH: ("avail", True),
    QUEUE_DEVICE_LOW: ("used", False), QUEUE_DEVICE_HIGH: ("used", True),
}



def identity_registers(device_id: int) -> dict[int, int]:
    """MagicValue, Version, DeviceID and VendorID of a transport for ``device_id``
    (0: nothing plugged in), by offset."""
    return {MAGIC_VALUE: MMIO_MAGIC, VERSION: MMIO_VERSION, DEVICE_ID: device_id,
            VENDOR_ID: VENDOR_ID_QEMU}


def check_access(name: str, offset: int, width: AccessWidth, what: str) -> None:
    """The transport's access rules (any transport, empty ones too): inside the
    :data:`MMIO_SIZE` window, aligned 32-bit below :data:`CONFIG_OFFSET`; else
    :class:`BadAccess` naming device ``name`` and the ``what`` ("read"/"write")."""
    if offset < 0 or offset + width.size > MMIO_SIZE:
        raise BadAccess(f"{name}: {width.size}-byte {what} at {offset:#x} is "
                        f"outside the {MMIO_SIZE:#x}-byte window")
    if offset < CONFIG_OFFSET and (width is not AccessWidth.Dword or offset % 4):
        raise BadAccess(f"{name}: {width.size}-byte {what} at {offset:#x}: registers "
                        "below 0x100 take aligned 32-bit accesses only")

class InterruptLine(Protocol):
    """What the transport drives: a level-triggered line
    (:class:`pyaxvisor.devices.irq.IrqLine` is one)."""

    def set_level(self, level: bool) -> None: ...


@dataclass(eq=False)
class _QueueRegs:
    """The registers of one queue and, while it is ready, the live queue."""

    index: int
    max_size: int
    num: int = 0
    desc: int = 0
    avail: int = 0
    used: int = 0
    live: SplitQueue | None = None


class TransportQueue:
    """The :class:`~pyaxvisor.devices.virtio.backend.QueueHandle` of queue ``index``."""

    __slots__ = ("_transport", "index", "ram")

    def __init__(self, transport: VirtioMmio, index: int) -> None:
        self._transport = transport
        self.index = index
        self.ram = transport.ram

    def pop(self) -> DescriptorChain | None:
        return self._transport.pop(self.index)

    def push(self, chain: DescriptorChain, written: int) -> None:
        self._transport.push_many(self.index, ((chain, written),))

    def push_many(self, completions: Sequence[tuple[DescriptorChain, int]]) -> None:
        self._transport.push_many(self.index, completions)

    def serve_native(self, serve: NativeServe) -> NativeOutcome | None:
        return self._transport.serve_native(self.index, serve)

    def fail(self, error: VirtioGuestError) -> None:
        self._transport.guest_error(error)


class VirtioMmio(Device):
    """A virtio-mmio (version 2) device: ``backend`` behind the register window.

    ``memory`` and ``ram_ranges`` give guest RAM (every guest address is checked
    against the ranges); ``irq`` is the interrupt line (``None``: not wired);
    ``mirror``: the :data:`MMIO_SIZE`-byte table to publish registers in (default: a
    table of its own).
    """

    def __init__(self, backend: VirtioBackend, memory: GuestMemory,
                 ram_ranges: Iterable[tuple[int, int]], irq: InterruptLine | None = None, *,
                 name: str | None = None, mirror: RegisterMirror | None = None) -> None:
        self.name = name or f"virtio-mmio ({backend.name})"
        if mirror is not None and mirror.size != MMIO_SIZE:
            raise InvalidInput(f"{self.name}: a register table of {mirror.size} bytes, "
                               f"not the window's {MMIO_SIZE}")
        extra = backend.device_features() & ~DEVICE_TYPE_FEATURES
        if extra:
            raise InvalidInput(f"{self.name}: the back-end offers feature bits {extra:#x} "
                               "reserved for the transport (device types use 0..23, 50..127)")
        sizes = tuple(backend.queue_max_sizes)
        for i, size in enumerate(sizes):
            if not 1 <= size <= MAX_QUEUE_SIZE or size & (size - 1):
                raise InvalidInput(f"{self.name}: queue {i} maximum size {size} is not a power "
                                   f"of two in 1..{MAX_QUEUE_SIZE}")
        if len(backend.config_space()) > MMIO_SIZE - CONFIG_OFFSET:
            raise InvalidInput(f"{self.name}: configuration space larger than "
                               f"{MMIO_SIZE - CONFIG_OFFSET} bytes")
        self.backend = backend
        self.ram = GuestRam(memory, ram_ranges)
        self.irq = irq
        #: Every feature offered: the back-end's and the transport's.
        self.device_features = backend.device_features() | TRANSPORT_FEATURES
        self._queues = [_QueueRegs(i, size) for i, size in enumerate(sizes)]
        self._handles = [TransportQueue(self, i) for i in range(len(sizes))]
        self._lock = threading.Lock()
        self._config_generation = 0
        self._identity = identity_registers(backend.device_id)
        self.mirror = mirror if mirror is not None else RegisterMirror(MMIO_SIZE)
        self.mirror.publish_words(self._identity, whole=True)
        self._reset_state()

    # -- state ------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._status = 0
        self._device_features_sel = 0
        self._driver_features = 0
        self._driver_features_sel = 0
        #: The features in force once FEATURES_OK was accepted (0 before).
        self.negotiated_features = 0
        self._queue_sel = 0
        self._interrupt_status = 0
        self._shm_sel = 0
        #: Why the device last set DEVICE_NEEDS_RESET (``None`` since the reset).
        self.last_error: str | None = None
        for regs in self._queues:
            regs.num = regs.desc = regs.avail = regs.used = 0
            regs.live = None
        self._update_irq()

    @property
    def status(self) -> int:
        with self._lock:
            return self._status

    @property
    def interrupt_status(self) -> int:
        with self._lock:
            return self._interrupt_status

    @property
    def config_generation(self) -> int:
        with self._lock:
            return self._config_generation

    def _update_irq(self) -> None:
        """InterruptStatus changed (under the lock): publish it, then drive the line."""
        self.mirror.publish_words({INTERRUPT_STATUS: self._interrupt_status}, whole=True)
        if self.irq is not None:
            self.irq.set_level(self._interrupt_status != 0)

    def _selected(self) -> _QueueRegs | None:
        sel = self._queue_sel
        return self._queues[sel] if sel < len(self._queues) else None

    # -- MMIO -------------------------------------------------------------------------------
    def _check(self, offset: int, width: AccessWidth, what: str) -> None:
        check_access(self.name, offset, width, what)

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self._check(offset, width, "read")
        if offset >= CONFIG_OFFSET:
            start = offset - CONFIG_OFFSET
            data = self.backend.config_space()[start:start + width.size]
            return int.from_bytes(data.ljust(width.size, b"\0"), "little")
        with self._lock:
            return self._read_reg(offset) & _MASK32

    def _read_reg(self, offset: int) -> int:
        if offset == INTERRUPT_STATUS:  # first: read once per interrupt
            return self._interrupt_status
        regs = self._selected()
        if offset in _QUEUE_ADDR_REGS:
            field, high = _QUEUE_ADDR_REGS[offset]
            value = getattr(regs, field) if regs is not None else 0
            return value >> 32 if high else value
        fixed = {
            **self._identity,
            DEVICE_FEATURES_SEL: self._device_features_sel,
            DRIVER_FEATURES_SEL: self._driver_features_sel,
            QUEUE_SEL: self._queue_sel,
            STATUS: self._status,
            SHM_SEL: self._shm_sel,
            SHM_LEN_LOW: _MASK32, SHM_LEN_HIGH: _MASK32,
            SHM_BASE_LOW: _MASK32, SHM_BASE_HIGH: _MASK32,
            CONFIG_GENERATION: self._config_generation,
        }
        if offset in fixed:
            return fixed[offset]
        if offset == DEVICE_FEATURES:
            sel = self._device_features_sel
            return self.device_features >> (32 * sel) if sel < FEATURE_WORDS else 0
        if offset == DRIVER_FEATURES:
            sel = self._driver_features_sel
            return self._driver_features >> (32 * sel) if sel < FEATURE_WORDS else 0
        if offset in (QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY):
            if regs is None:
                return 0
            return {QUEUE_NUM_MAX: regs.max_size, QUEUE_NUM: regs.num,
                    QUEUE_READY: int(regs.live is not None)}[offset]
        return 0  # QueueNotify, InterruptACK, reserved

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self._check(offset, width, "write")
        value &= width.mask
        if offset >= CONFIG_OFFSET:
            start = offset - CONFIG_OFFSET
            size = len(self.backend.config_space())
            if start < size:
                data = value.to_bytes(width.size, "little")[:size - start]
                self.backend.config_write(start, data)
            return
        if offset == QUEUE_NOTIFY:
            self._notify(value)
            return
        if offset == STATUS and value == 0:
            with self._lock:
                self._reset_state()
            self.backend.reset()
            return
        with self._lock:
            activated = self._write_reg(offset, value)
        if activated:
            self.backend.activate(self.negotiated_features)
            for index in range(len(self._queues)):
                self._notify(index)

    def _write_reg(self, offset: int, value: int) -> bool:
        """One register write under the lock; whether it set DRIVER_OK."""
        if offset == INTERRUPT_ACK:  # first: written once per interrupt
            self._interrupt_status &= ~value
            self._update_irq()
            return False
        regs = self._selected()
        if offset in _QUEUE_ADDR_REGS:
            if regs is not None and regs.live is None:
                field, high = _QUEUE_ADDR_REGS[offset]
                old = getattr(regs, field)
                new = (old & _MASK32) | (value << 32) if high else (old & ~_MASK32) | value
                setattr(regs, field, new)
        elif offset == DEVICE_FEATURES_SEL:
            self._device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self._driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            sel = self._driver_features_sel
            if sel < FEATURE_WORDS and not self._status & STATUS_FEATURES_OK:
                word = _MASK32 << (32 * sel)
                self._driver_features = (self._driver_features & ~word) | (value << (32 * sel))
        elif offset == QUEUE_SEL:
            self._queue_sel = value
        elif offset == QUEUE_NUM:
            if regs is not None and regs.live is None:
                regs.num = value
        elif offset == QUEUE_READY:
            if regs is not None:
                self._set_queue_ready(regs, bool(value & 1))
        elif offset == STATUS:
            return self._write_status(value)
        elif offset == SHM_SEL:
            self._shm_sel = value
        return False

    # -- status and features ----------------------------------------------------------------
    def _write_status(self, value: int) -> bool:
        old = self._status
        new = old | (value & 0xFF & ~STATUS_DEVICE_NEEDS_RESET)
        if new & STATUS_FEATURES_OK and not old & STATUS_FEATURES_OK:
            if self._features_acceptable():
                self.negotiated_features = self._driver_features
            else:
                new &= ~STATUS_FEATURES_OK
        activated = False
        if new & STATUS_DRIVER_OK and not old & STATUS_DRIVER_OK:
            if new & STATUS_FEATURES_OK:
                activated = True
            else:
                new &= ~STATUS_DRIVER_OK
                self._status = new
                self._fail_locked("the driver set DRIVER_OK before FEATURES_OK")
                return False
        self._status = new
        return activated

    def _features_acceptable(self) -> bool:
        driver = self._driver_features
        return not driver & ~self.device_features and bool(driver >> F_VERSION_1 & 1)

    # -- queues -----------------------------------------------------------------------------
    def _set_queue_ready(self, regs: _QueueRegs, ready: bool) -> None:
        if not ready:
            regs.live = None  # chains still in flight are dropped when completed
            return
        if regs.live is not None:
            return
        name = f"{self.name} queue {regs.index}"
        try:
            if not self._status & STATUS_FEATURES_OK:
                raise QueueConfigError(f"{name}: QueueReady set before FEATURES_OK")
            features = self.negotiated_features
            regs.live = SplitQueue(
                self.ram, QueueLayout(regs.num, regs.desc, regs.avail, regs.used),
                max_size=regs.max_size, event_idx=bool(features >> F_EVENT_IDX & 1),
                indirect=bool(features >> F_INDIRECT_DESC & 1), name=name)
        except VirtioGuestError as exc:
            self._fail_locked(str(exc))

    def _live(self, index: int) -> SplitQueue | None:
        """Queue ``index`` if the device may process it now (under the lock)."""
        if not 0 <= index < len(self._queues):
            return None
        if self._status & STATUS_DEVICE_NEEDS_RESET or not self._status & STATUS_DRIVER_OK:
            return None
        return self._queues[index].live

    def _notify(self, index: int) -> None:
        with self._lock:
            live = self._live(index)
        if live is None:
            return
        try:
            self.backend.queue_notify(self._handles[index])
        except VirtioGuestError as exc:
            self.guest_error(exc)

    def pop(self, index: int) -> DescriptorChain | None:
        """The next available chain of queue ``index`` (see ``QueueHandle.pop``)."""
        with self._lock:
            live = self._live(index)
        if live is None:
            return None
        try:
            return live.pop()
        except VirtioGuestError as exc:
            self.guest_error(exc)
            return None

    def push_many(self, index: int,
                  completions: Sequence[tuple[DescriptorChain, int]]) -> None:
        """Complete several chains of queue ``index`` in order with one used-index
        update, and raise the used-buffer interrupt once if the driver wants it for any
        of them. Thread-safe. Chains from a queue that was stopped, reset or re-created
        since they were popped are dropped."""
        with self._lock:
            if not 0 <= index < len(self._queues):
                return
            live = self._queues[index].live
            if live is None:
                return
            current = [c for c in completions if c[0].owner is live]
            try:
                wants = live.push_many(current)
            except VirtioGuestError as exc:
                self._fail_locked(str(exc))
                return
            if wants:
                self._interrupt_status |= INT_USED_BUFFER
                self._update_irq()

    def serve_native(self, index: int, serve: NativeServe) -> NativeOutcome | None:
        """Let a back-end's native code serve chains of queue ``index`` in the ring
        (:meth:`SplitQueue.serve_native`), then raise the used-buffer interrupt if it
        says the driver wants one and the queue is still the live one. ``None`` when the
        queue may not be processed now. Thread-safe; the transport's lock is not held
        while ``serve`` runs (it may do I/O)."""
        with self._lock:
            live = self._live(index)
        if live is None:
            return None
        outcome = live.serve_native(serve)
        if outcome.interrupt:
            with self._lock:
                if self._queues[index].live is live:
                    self._interrupt_status |= INT_USED_BUFFER
                    self._update_irq()
        return outcome

    # -- errors and configuration changes ---------------------------------------------------
    def guest_error(self, error: VirtioGuestError) -> None:
        """The driver broke a rule: set DEVICE_NEEDS_RESET and raise the configuration
        change interrupt (the first error since the reset is kept in :attr:`last_error`)."""
        with self._lock:
            self._fail_locked(str(error))

    def _fail_locked(self, reason: str) -> None:
        if self._status & STATUS_DEVICE_NEEDS_RESET:
            return
        self._status |= STATUS_DEVICE_NEEDS_RESET
        self.last_error = reason
        self._interrupt_status |= INT_CONFIG_CHANGE
        self._update_irq()

    def config_changed(self) -> None:
        """The back-end changed its configuration space: bump ConfigGeneration and, if
        the driver is live, raise the configuration change interrupt. Thread-safe."""
        with self._lock:
            self._config_generation = (self._config_generation + 1) & _MASK32
            if self._status & STATUS_DRIVER_OK:
                self._interrupt_status |= INT_CONFIG_CHANGE
                self._update_irq()

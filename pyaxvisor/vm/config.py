"""One description of a VM (axvm ``AxVMConfig``), whatever it was built from.

A :class:`VmConfig` says everything a board needs to build and boot a VM: the
architecture and machine, the vCPUs (with their hardware ids: MPIDR affinity,
hart id or APIC id), guest memory regions at any guest-physical address, the
boot images with optional load addresses, the command line, emulated devices,
and how the run is observed (timeout, statistics). The command line
(:mod:`pyaxvisor.cli`) and AxVisor's TOML files (:mod:`pyaxvisor.axvmconfig`)
both produce one; :meth:`VmConfig.check` holds the rules that do not depend on
the board, the board's ``check`` the ones that do.

Memory regions follow axvmconfig: ``flags`` are ``MappingFlags`` bits (read 1,
write 2, execute 4, user 8, device 16, uncached 32) and ``map_type`` is
:class:`MapType`. pyaxvisor has no host physical memory to hand out, so
``IDENTICAL`` and ``RESERVED`` regions are guest RAM like ``ALLOC`` ones (the
guest sees the same thing: RAM at that address); a region with the ``DEVICE``
flag is not RAM but a request for a device window, which the board must have.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.flags import MappingFlags

__all__ = [
    "DEFAULT_FLAGS", "VIRTIO_KINDS", "DeviceSpec", "ImageSpec", "MapType", "MemoryRegion",
    "PassthroughSpec", "VirtioDeviceSpec", "VmConfig", "parse_mac",
]

PAGE = 0x1000
#: Read, write, execute: what a RAM region gets when nothing else is said.
DEFAULT_FLAGS = MappingFlags.READ | MappingFlags.WRITE | MappingFlags.EXECUTE
#: Most vCPUs any VM description may list (a board has its own, lower, limit).
MAX_CPUS = 4096


class MapType(enum.IntEnum):
    """axvmconfig ``VmMemMappingType``."""

    ALLOC = 0
    IDENTICAL = 1
    RESERVED = 2


class MemoryRegion(NamedTuple):
    gpa: int
    size: int
    flags: MappingFlags = DEFAULT_FLAGS
    map_type: MapType = MapType.ALLOC

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def is_ram(self) -> bool:
        return not self.flags & MappingFlags.DEVICE

    def __str__(self) -> str:
        kind = "device" if not self.is_ram else f"RAM ({self.map_type.name.lower()})"
        return (f"[{self.gpa:#x}, {self.end:#x}) {self.size >> 20 if self.size >= 1 << 20 else 0}"
                f" MiB {kind} flags {int(self.flags):#x}")


class ImageSpec(NamedTuple):
    """A boot image: a file, and where it goes (``None``: where its format and the
    board put it)."""

    path: Path
    load_addr: int | None = None


class DeviceSpec(NamedTuple):
    """An emulated device asked for by name (axvmconfig ``emu_devices``; QEMU's
    ``-device``): ``base``/``length`` its window (guest physical or ports), ``irq``
    its interrupt, ``emu_type`` axvmconfig's ``EmulatedDeviceType`` value (0 when
    unknown), ``cfg`` its configuration words."""

    name: str
    base: int
    length: int
    irq: int = 0
    emu_type: int = 0
    cfg: tuple[int, ...] = ()


#: The virtio device types a VM may ask for: a block device over a raw image, an
#: entropy source, a console (at most one: its input and output are the VM's console),
#: a network card on a host TAP interface.
VIRTIO_KINDS = ("blk", "rng", "console", "net")


#: QEMU's first default MAC address.
DEFAULT_MAC = bytes.fromhex("525400123456")


def default_mac(index: int) -> str:
    """QEMU's default address of the network card at ``index`` among a VM's cards:
    52:54:00:12:34:56 with the last byte increased by ``index``."""
    return format_mac(DEFAULT_MAC[:5] + bytes([(DEFAULT_MAC[5] + index) & 0xFF]))


def format_mac(mac: bytes) -> str:
    """6 bytes as ``52:54:00:12:34:56``."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    """``52:54:00:12:34:56`` (or with ``-``) → its 6 bytes; a malformed address or a
    multicast one (a NIC's own address is unicast) is :class:`InvalidInput`."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise InvalidInput(f"MAC address {text!r}: six hex byte pairs expected "
                           "(52:54:00:12:34:56)")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise InvalidInput(f"MAC address {text!r}: not hexadecimal") from None
    if mac[0] & 1:
        raise InvalidInput(f"MAC address {text!r} is a multicast address: a NIC's must be "
                           "unicast (even first byte)")
    return mac


class VirtioDeviceSpec(NamedTuple):
    """A virtio device of the VM (QEMU's ``-device virtio-blk-device``/``-drive
    if=virtio``, ``-device virtio-rng-device``, ``-device virtio-serial-device`` with
    ``-device virtconsole``), on one of the board's virtio-mmio
    transports: ``kind`` one of :data:`VIRTIO_KINDS`; for ``"blk"``, ``image`` the raw
    disk image and ``read_only`` whether the guest may only read it (both ``None``/
    ``False`` for other kinds); ``id`` a name for messages (``""``: none; distinct
    when given); for ``"net"``, ``ifname`` the host TAP interface and ``mac`` the
    card's address (``52:54:00:12:34:56``), both ``""`` for other kinds. The order of
    a VM's specs is the order they were asked for; the
    board decides which transport each gets."""

    kind: str
    image: Path | None = None
    read_only: bool = False
    id: str = ""
    ifname: str = ""
    mac: str = ""

    def describe(self) -> str:
        """``virtio-blk (disk.img, read-only)``, ``virtio-rng``, ``virtio-console``,
        ``virtio-net (tap tap0, 52:54:00:12:34:56)``: for messages."""
        if self.kind == "net":
            return f"virtio-net (tap {self.ifname}, {self.mac})"
        if self.kind != "blk":
            return f"virtio-{self.kind}"
        return f"virtio-blk ({self.image}{', read-only' if self.read_only else ''})"


class PassthroughSpec(NamedTuple):
    """A host device asked to be passed through (axvmconfig ``passthrough_devices``).
    ``name`` ``"/"`` means the whole host device tree."""

    name: str
    base_gpa: int = 0
    base_hpa: int = 0
    length: int = 0
    irq: int = 0


@dataclass(frozen=True)
class VmConfig:
    arch: str
    machine: str
    id: int = 1
    name: str = "vm"
    vm_type: int = 1
    cpu_model: str | None = None
    #: Hardware id of each vCPU (MPIDR affinity / hart id / APIC id), in vCPU order.
    cpu_ids: tuple[int, ...] = (0,)
    #: Host CPUs each vCPU's thread may run on, as a bit mask per vCPU (None: any).
    cpu_sets: tuple[int, ...] | None = None
    memory: tuple[MemoryRegion, ...] = ()
    kernel: ImageSpec | None = None
    bios: ImageSpec | None = None
    initrd: ImageSpec | None = None
    #: A device tree file (``dtb_path``), with where it goes.
    dtb: ImageSpec | None = None
    #: Where a device tree the board generates goes (``dtb_load_addr`` without a
    #: file; None: the board's choice).
    dtb_addr: int | None = None
    #: The first instruction of vCPU 0 (None: what the image's format says).
    entry: int | None = None
    cmdline: str = ""
    devices: tuple[DeviceSpec, ...] = ()
    #: The virtio devices, in the order asked for (the board places them).
    virtio: tuple[VirtioDeviceSpec, ...] = ()
    passthrough: tuple[PassthroughSpec, ...] = ()
    passthrough_addresses: tuple[tuple[int, int], ...] = ()
    passthrough_ports: tuple[tuple[int, int], ...] = ()
    excluded_devices: tuple[tuple[str, ...], ...] = ()
    interrupt_mode: str = "emu"
    timeout: float | None = None
    #: Count and time exits for a report (``--stats``).
    stats: bool = False
    #: Let the engine serve the board's fast devices inside the CPU (no exit).
    in_cpu_devices: bool = True
    #: Random ``kaslr-seed`` and ``rng-seed`` in the device tree the board generates, as
    #: QEMU's AArch64 ``virt`` (``-machine dtb-randomness=off`` turns them off). The
    #: RISC-V board always passes ``rng-seed``, as QEMU's does.
    dtb_randomness: bool = True
    #: The file this description came from (for messages), if any.
    source: Path | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def cpu_num(self) -> int:
        return len(self.cpu_ids)

    @property
    def ram_regions(self) -> tuple[MemoryRegion, ...]:
        return tuple(r for r in self.memory if r.is_ram)

    @property
    def ram_size(self) -> int:
        return sum(r.size for r in self.ram_regions)

    def prefix(self, key: str) -> str:
        """``"FILE: KEY: "`` for a message about ``key`` of a configuration read from a
        file (``key`` as the file spells it, e.g. ``"[base] cpu_num"``); ``""`` for one
        built from the command line, whose messages speak of the values."""
        return f"{self.source}: {key}: " if self.source is not None else ""

    def with_(self, **changes: object) -> VmConfig:
        """A copy with ``changes`` (command-line overrides of a file)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def check(self) -> None:
        """The rules every board shares: at least one vCPU with distinct ids, RAM, and
        4 KiB-aligned regions that do not overlap. Raises :class:`InvalidInput`
        naming the key."""
        if not 1 <= len(self.cpu_ids) <= MAX_CPUS:
            raise InvalidInput(f"{self.prefix('[base] cpu_num')}a VM has 1..{MAX_CPUS} vCPUs, "
                               f"not {len(self.cpu_ids)}")
        if len(set(self.cpu_ids)) != len(self.cpu_ids):
            raise InvalidInput(f"{self.prefix('[base] phys_cpu_ids')}the vCPU ids "
                               f"{[hex(i) for i in self.cpu_ids]} are not distinct")
        if self.cpu_sets is not None and len(self.cpu_sets) != len(self.cpu_ids):
            raise InvalidInput(f"{self.prefix('[base] phys_cpu_sets')}{len(self.cpu_sets)} "
                               f"masks for {len(self.cpu_ids)} vCPUs")
        if not self.ram_regions:
            raise InvalidInput(f"{self.prefix('[kernel] memory_regions')}the VM has no RAM")
        if self.interrupt_mode not in ("emu", "no_irq", "passthrough"):
            raise InvalidInput(f"{self.prefix('[devices] interrupt_mode')}unknown interrupt "
                               f"mode {self.interrupt_mode!r} (no_irq, emu, passthrough)")
        spans = sorted(self.memory, key=lambda r: r.gpa)
        key = self.prefix("[kernel] memory_regions")
        for r in spans:
            if r.size <= 0:
                raise InvalidInput(f"{key}region at {r.gpa:#x} has size {r.size:#x}")
            if r.gpa < 0 or r.gpa % PAGE:
                raise InvalidInput(f"{key}region base {r.gpa:#x} is not 4 KiB aligned")
            if r.size % PAGE:
                raise InvalidInput(f"{key}RAM size {r.size:#x} is not a multiple of 4 KiB")
            if r.end > 1 << 52:
                raise InvalidInput(f"{key}region ending at {r.end:#x} is beyond 52-bit guest "
                                   "physical addresses")
        for a, b in itertools.pairwise(spans):
            if b.gpa < a.end:
                raise InvalidInput(f"{key}regions "
                                   f"[{a.gpa:#x}, {a.end:#x}) and [{b.gpa:#x}, {b.end:#x}) "
                                   "overlap")
        self._check_virtio()
        if self.timeout is not None and not self.timeout > 0:
            raise InvalidInput(f"timeout must be a positive number of seconds, not "
                               f"{self.timeout!r}")

    def _check_virtio(self) -> None:
        """Each virtio spec is a known kind with what it needs (a blk its image; no
        image for others), there is at most one console, and the ids given are distinct."""
        seen: set[str] = set()
        if sum(spec.kind == "console" for spec in self.virtio) > 1:
            raise InvalidInput("more than one virtio console asked for: a VM has one (its "
                               "input and output are the VM's console)")
        for spec in self.virtio:
            what = f"virtio device {spec.id!r}" if spec.id else "a virtio device"
            if spec.kind not in VIRTIO_KINDS:
                raise InvalidInput(f"{what}: unknown kind {spec.kind!r} (one of "
                                   f"{', '.join(VIRTIO_KINDS)})")
            if spec.kind == "blk" and (spec.image is None or not str(spec.image)):
                raise InvalidInput(f"{what}: a virtio-blk device needs a disk image")
            if spec.kind != "blk" and (spec.image is not None or spec.read_only):
                raise InvalidInput(f"{what}: a virtio-{spec.kind} device has no disk image")
            if spec.kind == "net":
                if not spec.ifname:
                    raise InvalidInput(f"{what}: a virtio-net device needs a tap interface")
                parse_mac(spec.mac)
            elif spec.ifname or spec.mac:
                raise InvalidInput(f"{what}: a virtio-{spec.kind} device has no network "
                                   "interface or MAC address")
            if spec.id:
                if spec.id in seen:
                    raise InvalidInput(f"virtio device id {spec.id!r} is used twice")
                seen.add(spec.id)

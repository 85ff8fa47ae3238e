"""QEMU's ``-drive`` and the virtio ``-device`` types, turned into the VM's
:class:`~pyaxvisor.vm.config.VirtioDeviceSpec` list.

Accepted spellings (QEMU's):

* ``-drive file=F[,format=raw][,if=virtio][,readonly=on|off][,id=ID][,media=disk]``:
  a virtio-blk device over the raw image ``F``. ``if=`` left out means ``virtio``
  (QEMU's arm ``virt`` default). QEMU puts an ``if=virtio`` disk on PCI; the boards
  here have no PCI, so it is a virtio-mmio device (the guest's driver is the same
  virtio-blk one). ``format=`` left out means raw (QEMU probes and warns).
* ``-drive file=F,if=none,id=ID`` with ``-device virtio-blk-device,drive=ID``.
* ``-device virtio-rng-device``.
* ``-device virtio-serial-device`` with ``-device virtconsole[,chardev=ID]`` (and
  ``-chardev stdio,id=ID``): one virtio console, see :mod:`pyaxvisor.cli.virtconsole`.
* ``-device virtio-net-device,netdev=ID[,mac=MAC]`` with ``-netdev tap,id=ID,ifname=TAP``:
  a network card on a host TAP interface, see :mod:`pyaxvisor.cli.netdev`.

Both devices also take ``id=``. A property value with a comma writes it twice
(``file=a,,b.img`` is the file ``a,b.img``), as in QEMU.

Order: the ``-device`` devices in command-line order, then the ``if=virtio`` drives in
theirs (QEMU creates the drives' devices after the command line's); the board turns
that order into transport slots. Every problem is an
:class:`~pyaxvisor.errors.InvalidInput` naming the option and what is wrong.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyaxvisor.cli.netdev import DEVICE as NET_DEVICE
from pyaxvisor.cli.netdev import NetdevSpec, NetPairing
from pyaxvisor.cli.props import split_props
from pyaxvisor.cli.virtconsole import BUS, PORT, ConsolePairing
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vm.config import VirtioDeviceSpec

__all__ = ["VIRTIO_DEVICES", "DriveSpec", "parse_drive", "split_props", "virtio_devices"]

#: ``-device`` names of the virtio devices → the kind in :class:`VirtioDeviceSpec`.
VIRTIO_DEVICES = {"virtio-blk-device": "blk", "virtio-rng-device": "rng", BUS: "console",
                  PORT: "console", NET_DEVICE: "net"}
_DRIVE_PROPS = ("file", "format", "if", "readonly", "id", "media")
_BOOL = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


@dataclass(frozen=True)
class DriveSpec:
    """One ``-drive``: its image, interface (``virtio`` or ``none``), read-only flag
    and id (``""``: none), and the option's text for messages."""

    file: Path
    interface: str
    read_only: bool
    id: str
    text: str


def parse_drive(value: str) -> DriveSpec:
    """One ``-drive`` option (see the module's docstring)."""
    where = f"-drive {value}"
    props: dict[str, str] = {}
    for item in split_props(value):
        key, sep, raw = item.partition("=")
        if not sep:
            raise InvalidInput(f"{where}: {item!r} is not PROP=VALUE")
        if key not in _DRIVE_PROPS:
            raise InvalidInput(f"{where}: unknown property {key!r} (accepted: "
                               f"{', '.join(p + '=' for p in _DRIVE_PROPS)})")
        if key in props:
            raise InvalidInput(f"{where}: {key}= given twice")
        props[key] = raw
    file = props.get("file", "")
    if not file:
        raise InvalidInput(f"{where}: no file= (the disk image)")
    fmt = props.get("format", "raw")
    if fmt != "raw":
        raise InvalidInput(f"{where}: format={fmt} is not supported: only raw images")
    interface = props.get("if", "virtio")
    if interface not in ("virtio", "none"):
        raise InvalidInput(f"{where}: if={interface} is not supported: only if=virtio "
                           "(a virtio-blk disk) or if=none (with -device virtio-blk-device,"
                           "drive=ID)")
    media = props.get("media", "disk")
    if media != "disk":
        raise InvalidInput(f"{where}: media={media} is not supported: only disk")
    readonly = props.get("readonly", "off")
    if readonly not in _BOOL:
        raise InvalidInput(f"{where}: readonly={readonly}: use on or off")
    drive_id = props.get("id", "")
    if interface == "none" and not drive_id:
        raise InvalidInput(f"{where}: an if=none drive needs id= (what -device ...,drive= "
                           "names)")
    return DriveSpec(Path(file), interface, _BOOL[readonly], drive_id, value)


def _device_props(spec: str, allowed: Sequence[str]) -> tuple[str, dict[str, str]]:
    name, *items = split_props(spec)
    props: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in allowed:
            raise InvalidInput(f"-device {name}: unknown property {item!r} (accepted: "
                               f"{', '.join(a + '=' for a in allowed)})")
        props[key] = raw
    return name, props


def virtio_devices(devices: Sequence[str], drives: Sequence[DriveSpec],
                   chardevs: Collection[str] = (), netdevs: Sequence[NetdevSpec] = ()
                   ) -> tuple[VirtioDeviceSpec, ...]:
    """The virtio devices of ``-device`` options naming one of :data:`VIRTIO_DEVICES`
    (others are skipped: another parser takes them) and of the ``drives``, in the
    order the module's docstring says. A drive id given twice, a ``drive=`` naming no
    drive, an ``if=virtio`` drive (or one used already) named by a device, an
    ``if=none`` drive nothing uses is fine (QEMU too). ``chardevs``: the ids of the
    ``-chardev`` options (what ``virtconsole,chardev=`` may name); ``netdevs`` the
    ``-netdev`` options (what ``virtio-net-device,netdev=`` may name)."""
    by_id: dict[str, DriveSpec] = {}
    for drive in drives:
        if drive.id:
            if drive.id in by_id:
                raise InvalidInput(f"-drive {drive.text}: duplicate id {drive.id!r}")
            by_id[drive.id] = drive
    used: set[str] = set()
    out: list[VirtioDeviceSpec] = []
    consoles = ConsolePairing(chardevs)
    nics = NetPairing(netdevs)
    for spec in devices:
        name = split_props(spec)[0]
        kind = VIRTIO_DEVICES.get(name)
        if kind is None:
            continue
        if name == BUS:
            out.append(VirtioDeviceSpec("console", id=consoles.bus(spec)))
            continue
        if name == PORT:
            consoles.port(spec)
            continue
        if kind == "net":
            out.append(nics.device(spec))
            continue
        if kind == "rng":
            _name, props = _device_props(spec, ("id",))
            out.append(VirtioDeviceSpec("rng", id=props.get("id", "")))
            continue
        _name, props = _device_props(spec, ("drive", "id"))
        drive_id = props.get("drive", "")
        if not drive_id:
            raise InvalidInput(f"-device {spec}: drive= is required (the id of an if=none "
                               "-drive)")
        drive = by_id.get(drive_id)
        if drive is None:
            known = ", ".join(repr(i) for i in by_id) or "none"
            raise InvalidInput(f"-device {spec}: no -drive with id {drive_id!r} (ids: {known})")
        if drive.interface != "none" or drive_id in used:
            raise InvalidInput(f"-device {spec}: drive {drive_id!r} is in use already (by "
                               f"{'its if=virtio' if drive.interface != 'none' else 'another'}"
                               " device; give the drive if=none)")
        used.add(drive_id)
        out.append(VirtioDeviceSpec("blk", drive.file, drive.read_only,
                                    props.get("id", "")))
    consoles.finish()
    for drive in drives:
        if drive.interface == "virtio":
            out.append(VirtioDeviceSpec("blk", drive.file, drive.read_only))
    return tuple(out)

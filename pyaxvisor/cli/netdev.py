"""QEMU's spelling of a network card: ``-netdev tap,id=ID,ifname=TAP`` (the host end)
with ``-device virtio-net-device,netdev=ID[,mac=MAC][,id=ID]`` (the card, a
virtio-mmio device), turned into :class:`~pyaxvisor.vm.config.VirtioDeviceSpec` kind
``"net"``.

* The only back-end is ``tap``: the host TAP interface ``ifname=`` (required: there is
  no ``tap%d`` naming), which pyaxvisor attaches to or creates (needs CAP_NET_ADMIN).
  ``script=``/``downscript=`` may only be ``no``: pyaxvisor runs no scripts, so the
  host brings the interface up itself. ``user`` (QEMU's slirp) is not supported.
* A card's ``netdev=`` must name a ``-netdev`` (each used by one card); ``mac=``
  left out is QEMU's default, 52:54:00:12:34:56 with the last byte increased by the
  card's position among the cards (0 for the first).

Every problem is an :class:`~pyaxvisor.errors.InvalidInput` naming the option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyaxvisor.cli.props import parse_props, split_props
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vm.config import (
    DEFAULT_MAC,
    VirtioDeviceSpec,
    default_mac,
    format_mac,
    parse_mac,
)

__all__ = ["DEVICE", "DEFAULT_MAC", "NetdevSpec", "NetPairing", "parse_netdev"]

#: The ``-device`` name of the card.
DEVICE = "virtio-net-device"
_NETDEV_PROPS = ("id", "ifname", "script", "downscript")
_DEVICE_PROPS = ("netdev", "mac", "id")


@dataclass(frozen=True)
class NetdevSpec:
    """One ``-netdev tap``: its id, the TAP interface and the option's text."""

    id: str
    ifname: str
    text: str


def parse_netdev(value: str) -> NetdevSpec:
    """One ``-netdev`` option (see the module's docstring)."""
    from pyaxvisor.devices.virtio.tap import check_ifname

    option = f"-netdev {value}"
    kind, *items = split_props(value)
    if kind == "user":
        raise InvalidInput(f"{option}: the user (slirp) back-end is not supported: only tap "
                           "(-netdev tap,id=ID,ifname=TAP)")
    if kind != "tap":
        raise InvalidInput(f"{option}: the {kind!r} back-end is not supported: only tap "
                           "(-netdev tap,id=ID,ifname=TAP)")
    props = parse_props(option, items, _NETDEV_PROPS)
    for key in ("script", "downscript"):
        if props.get(key, "no") != "no":
            raise InvalidInput(f"{option}: {key}={props[key]}: pyaxvisor runs no scripts "
                               f"(use {key}=no and set the tap up on the host)")
    netdev_id = props.get("id", "")
    if not netdev_id:
        raise InvalidInput(f"{option}: id= is required (what -device {DEVICE},netdev= names)")
    ifname = props.get("ifname", "")
    if not ifname:
        raise InvalidInput(f"{option}: ifname= is required (the host TAP interface)")
    try:
        check_ifname(ifname)
    except InvalidInput as exc:
        raise InvalidInput(f"{option}: {exc}") from None
    return NetdevSpec(netdev_id, ifname, value)


class NetPairing:
    """Pairs ``-device virtio-net-device`` options with the ``netdevs``, in
    command-line order (:meth:`device`)."""

    def __init__(self, netdevs: Sequence[NetdevSpec]) -> None:
        self._by_id: dict[str, NetdevSpec] = {}
        for netdev in netdevs:
            if netdev.id in self._by_id:
                raise InvalidInput(f"-netdev {netdev.text}: duplicate id {netdev.id!r}")
            self._by_id[netdev.id] = netdev
        self._used: set[str] = set()
        self._cards = 0

    def device(self, spec: str) -> VirtioDeviceSpec:
        """One ``-device virtio-net-device,...`` option as its spec."""
        name, *items = split_props(spec)
        option = f"-device {spec}"
        props = parse_props(f"-device {name}", items, _DEVICE_PROPS)
        netdev_id = props.get("netdev", "")
        if not netdev_id:
            raise InvalidInput(f"{option}: netdev= is required (the id of a -netdev tap)")
        netdev = self._by_id.get(netdev_id)
        if netdev is None:
            known = ", ".join(repr(i) for i in self._by_id) or "none"
            raise InvalidInput(f"{option}: no -netdev with id {netdev_id!r} (ids: {known})")
        if netdev_id in self._used:
            raise InvalidInput(f"{option}: netdev {netdev_id!r} is used by another card")
        self._used.add(netdev_id)
        if "mac" in props:
            try:
                mac = format_mac(parse_mac(props["mac"]))
            except InvalidInput as exc:
                raise InvalidInput(f"{option}: {exc}") from None
        else:
            mac = default_mac(self._cards)
        self._cards += 1
        return VirtioDeviceSpec("net", id=props.get("id", ""), ifname=netdev.ifname,
                                mac=mac)

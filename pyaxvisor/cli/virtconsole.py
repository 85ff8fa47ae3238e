"""QEMU's spelling of a virtio console: ``-device virtio-serial-device`` (the bus: a
virtio-mmio transport) with ``-device virtconsole`` (its console port), and the
``-chardev stdio,id=ID`` a port may name with ``chardev=ID``.

pyaxvisor's virtio console has one port and no multiport, so the pair is one device
(:class:`~pyaxvisor.vm.config.VirtioDeviceSpec` kind ``"console"``, placed where the
``virtio-serial-device`` is in the ``-device`` order), and a VM has at most one:

* ``virtio-serial-device[,id=ID]`` and then exactly one ``virtconsole[,chardev=C][,id=ID]``;
* a ``virtconsole`` with no ``virtio-serial-device`` before it (QEMU: no bus to plug
  into), a second ``virtconsole`` (no second port), a second ``virtio-serial-device``
  or one without a ``virtconsole`` are errors;
* the only character device is this terminal: ``-chardev stdio,id=ID``. ``chardev=``
  must name one; leaving it out means the terminal all the same (where QEMU would
  leave the port unconnected, which is of no use here).

The console's output and input are the terminal's, as for the serial port (see
``SoftVirtBoard.console_input``: input goes to the virtio console when there is one).
Every problem is an :class:`~pyaxvisor.errors.InvalidInput` naming the option.
"""

from __future__ import annotations

from collections.abc import Collection

from pyaxvisor.cli.props import parse_props, split_props
from pyaxvisor.errors import InvalidInput

__all__ = ["BUS", "PORT", "ConsolePairing", "parse_chardev"]

#: The ``-device`` names: the virtio-serial bus and its console port.
BUS = "virtio-serial-device"
PORT = "virtconsole"


def parse_chardev(value: str) -> str:
    """The id of ``-chardev stdio,id=ID`` (the only back-end: this terminal)."""
    option = f"-chardev {value}"
    backend, *items = split_props(value)
    if backend != "stdio":
        raise InvalidInput(f"{option}: the {backend!r} back-end is not supported: only stdio "
                           "(this terminal)")
    chardev_id = parse_props(option, items, ("id",)).get("id", "")
    if not chardev_id:
        raise InvalidInput(f"{option}: id= is required (what virtconsole,chardev= names)")
    return chardev_id


class ConsolePairing:
    """Checks the ``virtio-serial-device``/``virtconsole`` options in command-line
    order (:meth:`bus` and :meth:`port`), then that they paired up (:meth:`finish`).
    ``chardevs`` are the ids of the ``-chardev`` options."""

    def __init__(self, chardevs: Collection[str] = ()) -> None:
        self._chardevs = chardevs
        self._bus: str | None = None
        self._ports = 0

    def bus(self, spec: str) -> str:
        """A ``virtio-serial-device`` option; returns its ``id`` (``""``: none)."""
        name, *items = split_props(spec)
        props = parse_props(f"-device {name}", items, ("id",))
        if self._bus is not None:
            raise InvalidInput(f"-device {spec}: a second {BUS}: a VM has one virtio console "
                               "(its input and output are this terminal)")
        self._bus = spec
        return props.get("id", "")

    def port(self, spec: str) -> None:
        """A ``virtconsole`` option."""
        name, *items = split_props(spec)
        props = parse_props(f"-device {name}", items, ("chardev", "id"))
        if self._bus is None:
            raise InvalidInput(f"-device {spec}: no -device {BUS} before it (the virtio-serial "
                               f"bus a {PORT} plugs into)")
        if self._ports:
            raise InvalidInput(f"-device {spec}: a second {PORT}: the virtio-serial bus has one "
                               "port here (no multiport)")
        chardev = props.get("chardev")
        if chardev is not None and chardev not in self._chardevs:
            known = ", ".join(repr(c) for c in self._chardevs) or "none"
            raise InvalidInput(f"-device {spec}: chardev={chardev!r} names no -chardev "
                               f"stdio,id=... (ids: {known})")
        self._ports += 1

    def finish(self) -> None:
        """Every bus got its console port."""
        if self._bus is not None and not self._ports:
            raise InvalidInput(f"-device {self._bus}: no -device {PORT} for it (the virtio "
                               "console port; a virtio-serial bus without one is not supported)")

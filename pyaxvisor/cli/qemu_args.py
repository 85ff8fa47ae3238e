"""QEMU-style arguments: sizes and SMP (``-m 512M``, ``-m 1.5G``, ``-m 256`` (MiB),
``-m size=1G``, ``-smp 2``, ``-smp cpus=2``, ``-smp sockets=1,cores=2,threads=2``)
and devices (``-device isa-debug-exit,iobase=0xf4,iosize=0x4``)."""

from __future__ import annotations

import re
from fractions import Fraction

from pyaxvisor.devices.debug_exit import DEFAULT_IOBASE as DEBUG_EXIT_IOBASE
from pyaxvisor.devices.debug_exit import DEFAULT_IOSIZE as DEBUG_EXIT_IOSIZE
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vm.config import DeviceSpec

_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: The -smp topology properties whose product is the CPU count when cpus= is absent.
_TOPOLOGY = ("drawers", "books", "sockets", "dies", "clusters", "cores", "threads")
_SMP_KEYS = ("cpus", "maxcpus", *_TOPOLOGY)


def parse_memory_size(text: str) -> int:
    """Bytes from a QEMU ``-m`` value; a bare number means MiB, as in QEMU, and a
    fraction is allowed when it comes to whole bytes (``1.5G``)."""
    m = re.fullmatch(r"\s*(?:size=)?(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise InvalidInput(f"cannot parse memory size {text!r}: use e.g. 512M, 1G or 256")
    value = Fraction(m.group(1)) * _UNITS[m.group(2).lower()]
    if value.denominator != 1:
        raise InvalidInput(f"memory size {text!r} is not a whole number of bytes")
    if value <= 0:
        raise InvalidInput(f"memory size {text!r} must be positive")
    return int(value)


def parse_smp(text: str) -> int:
    """The number of CPUs present at start from a QEMU ``-smp`` value: ``N`` or
    ``cpus=N``, else maxcpus; maxcpus is given or the product of the topology
    (``sockets=2,cores=2,threads=1``: 4), which must then agree, and is at least N."""
    values: dict[str, int] = {}
    for i, item in enumerate(text.split(",")):
        item = item.strip()
        key, sep, raw = item.partition("=")
        if not sep:
            if i != 0:
                raise InvalidInput(f"cannot parse -smp {text!r}: {item!r} is not key=value")
            key, raw = "cpus", item
        if key not in _SMP_KEYS:
            raise InvalidInput(f"cannot parse -smp {text!r}: unknown property {key!r} "
                               f"(known: {', '.join(_SMP_KEYS)})")
        if not raw.isdigit() or int(raw) < 1:
            raise InvalidInput(f"cannot parse -smp {text!r}: {key} must be a count such as 2")
        values[key] = int(raw)
    # QEMU's rule: the topology's product is maxcpus (the possible CPUs); cpus (the
    # ones present at start) defaults to maxcpus and may not exceed it.
    given = [key for key in _TOPOLOGY if key in values]
    product = 1
    for key in given:
        product *= values[key]
    if given:
        maxcpus = values.get("maxcpus", product)
        if product != maxcpus:
            raise InvalidInput(f"-smp {text!r}: the topology gives {product} CPUs, but "
                               f"maxcpus is {maxcpus}")
    else:
        maxcpus = values.get("maxcpus", values.get("cpus", 1))
    cpus = values.get("cpus", maxcpus)
    if cpus > maxcpus:
        raise InvalidInput(f"-smp {text!r}: {cpus} CPUs is more than maxcpus {maxcpus}")
    return cpus


def parse_device(spec: str) -> DeviceSpec:
    """``isa-debug-exit[,iobase=N][,iosize=N]`` (QEMU's ``-device`` spelling) → the
    device; any other device is refused."""
    name, *props = spec.split(",")
    if name != "isa-debug-exit":
        raise InvalidInput(f"-device {name!r} is not supported: only isa-debug-exit")
    values = {"iobase": DEBUG_EXIT_IOBASE, "iosize": DEBUG_EXIT_IOSIZE}
    for prop in props:
        key, sep, value = prop.partition("=")
        if not sep or key not in values:
            raise InvalidInput(f"-device isa-debug-exit: unknown property {prop!r} "
                               "(iobase=, iosize=)")
        try:
            values[key] = int(value, 0)
        except ValueError:
            raise InvalidInput(f"-device isa-debug-exit: {key}={value!r} is not a "
                               "number") from None
    return DeviceSpec(name, values["iobase"], values["iosize"])

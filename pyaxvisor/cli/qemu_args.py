"""QEMU's command-line values, parsed as QEMU reads them.

* sizes (``-m 512M``, ``-m 1.5G``, ``-m 256`` (MiB), ``-m size=1G``):
  :func:`parse_memory_size`;
* ``-smp`` by QEMU's rules (``hw/core/machine-smp.c``): :func:`parse_smp_topology`
  computes the topology values left out from the ones given, :func:`parse_smp`
  returns the CPUs present at start;
* ``-machine [type=]NAME[,accel=A[:B...]][,PROP=VALUE...]`` (repeatable, merged):
  :func:`parse_machine`; ``-accel NAME[,PROP=VALUE...]``: :func:`parse_accel`, and
  the accelerator a board runs on out of those asked for: :func:`choose_accel`;
* ``-device NAME[,PROP=VALUE...]`` and ``-global DRIVER.PROP=VALUE``:
  :data:`DEVICE_TYPES`, :func:`parse_global`, :func:`parse_device`, and the lists
  ``-device help`` and ``-device NAME,help`` print (:func:`device_help`);
* ``-name``, ``-display``, ``-vnc``, ``-monitor``, ``-serial``: :func:`parse_name`,
  :func:`check_none`, :func:`check_serial`;
* pyaxvisor's ``--timeout``: :func:`parse_timeout`.

Every problem is an :class:`~pyaxvisor.errors.InvalidInput` whose message names the
option and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from pyaxvisor.errors import InvalidInput
from pyaxvisor.vm.config import DeviceSpec

__all__ = [
    "ACCELERATORS", "DEVICE_TYPES", "MAX_TIMEOUT", "DeviceType", "MachineOptions",
    "SmpTopology", "check_machine_props", "check_none", "check_serial", "choose_accel",
    "device_help", "dtb_randomness",
    "parse_accel", "parse_device", "parse_global", "parse_machine", "parse_memory_size",
    "parse_name", "parse_smp", "parse_smp_topology", "parse_timeout",
]

_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


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


# -- -smp ---------------------------------------------------------------------------------

#: The topology levels, from the largest to the smallest (QEMU's order).
_LEVELS = ("drawers", "books", "sockets", "dies", "clusters", "modules", "cores", "threads")
_SMP_KEYS = ("cpus", "maxcpus", *_LEVELS)


@dataclass(frozen=True)
class SmpTopology:
    """A complete ``-smp`` configuration: ``cpus`` present at start, ``maxcpus``
    possible, and the topology whose product is ``maxcpus``."""

    cpus: int
    maxcpus: int
    drawers: int = 1
    books: int = 1
    sockets: int = 1
    dies: int = 1
    clusters: int = 1
    modules: int = 1
    cores: int = 1
    threads: int = 1

    def hierarchy(self) -> str:
        """``sockets (2) * cores (2) * threads (1)``, with the levels above 1 or always
        shown (sockets, cores, threads)."""
        shown = [level for level in _LEVELS
                 if level in ("sockets", "cores", "threads") or getattr(self, level) != 1]
        return " * ".join(f"{level} ({getattr(self, level)})" for level in shown)


def _smp_values(text: str) -> dict[str, int]:
    """The ``key=value`` items of an ``-smp`` value (a bare first item is ``cpus``)."""
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
    return values


def parse_smp_topology(text: str) -> SmpTopology:
    """The whole topology of a QEMU ``-smp`` value, the values left out computed from
    the ones given as QEMU (since 6.2) computes them:

    * levels other than sockets, cores and threads default to 1;
    * with neither ``cpus`` nor ``maxcpus``, sockets, cores and threads left out are 1
      and ``maxcpus`` is the product;
    * else ``maxcpus`` defaults to ``cpus``, and the first of cores (then sockets, then
      threads) left out takes what ``maxcpus`` leaves: ``maxcpus`` divided (rounding
      down) by the product of the others, the others left out being 1;
    * ``cpus`` defaults to ``maxcpus``;
    * the product of the levels must be ``maxcpus``, and ``cpus`` at most ``maxcpus``.

    ``2,sockets=1`` is 1 socket of 2 cores; ``4,sockets=2`` 2 sockets of 2 cores;
    ``2,sockets=4`` is refused (4 sockets of 0 cores do not make 2 CPUs). pyaxvisor's
    vCPUs are flat: every level QEMU knows is accepted, whatever the machine.
    """
    given = _smp_values(text)
    levels = {level: given.get(level, 0) for level in _LEVELS}
    for level in ("drawers", "books", "dies", "clusters", "modules"):
        levels[level] = levels[level] or 1
    cpus, maxcpus = given.get("cpus", 0), given.get("maxcpus", 0)

    def product(*skip: str) -> int:
        return math.prod(v for k, v in levels.items() if k not in skip)

    if cpus == 0 and maxcpus == 0:
        for level in ("sockets", "cores", "threads"):
            levels[level] = levels[level] or 1
    else:
        maxcpus = maxcpus or cpus
        if levels["cores"] == 0:
            levels["sockets"] = levels["sockets"] or 1
            levels["threads"] = levels["threads"] or 1
            levels["cores"] = maxcpus // product("cores")
        elif levels["sockets"] == 0:
            levels["threads"] = levels["threads"] or 1
            levels["sockets"] = maxcpus // product("sockets")
        if levels["threads"] == 0:
            levels["threads"] = maxcpus // product("threads")
    total = product()
    maxcpus = maxcpus or total
    cpus = cpus or maxcpus
    topology = SmpTopology(cpus, maxcpus, **levels)
    if total != maxcpus:
        raise InvalidInput(f"-smp {text!r}: the topology gives {total} CPUs, but maxcpus is "
                           f"{maxcpus} ({topology.hierarchy()} != maxcpus {maxcpus})")
    if cpus > maxcpus:
        raise InvalidInput(f"-smp {text!r}: {cpus} CPUs is more than maxcpus {maxcpus} "
                           f"({topology.hierarchy()})")
    return topology


def parse_smp(text: str) -> int:
    """The number of CPUs present at start from a QEMU ``-smp`` value (see
    :func:`parse_smp_topology`)."""
    return parse_smp_topology(text).cpus


# -- -machine and -accel ------------------------------------------------------------------

#: The accelerators pyaxvisor has: its boards run on exactly one each (the x86 PC on
#: Linux KVM, the others on the software CPU, QEMU's TCG).
ACCELERATORS = ("kvm", "tcg")
#: Accelerators QEMU knows that no pyaxvisor board runs on.
_FOREIGN_ACCELERATORS = ("hvf", "whpx", "nvmm", "xen", "qtest", "mshv")
#: ``-accel`` properties accepted, with the values allowed (None: any), per accelerator:
#: they tune how QEMU runs the accelerator, not what the guest sees.
_ACCEL_PROPS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "tcg": {"thread": ("single", "multi"), "tb-size": None, "split-wx": ("on", "off")},
    "kvm": {"kernel-irqchip": ("on",)},
}


@dataclass(frozen=True)
class MachineOptions:
    """The merged ``-machine`` options: the machine's name (None: the board's
    default), the accelerators asked for, in order, and the other properties."""

    type: str | None = None
    accel: tuple[str, ...] = ()
    props: Mapping[str, str] = field(default_factory=dict)


#: ``-machine`` properties accepted besides ``type`` and ``accel``: each with the
#: architectures it belongs to (None: all) and the values that describe what the
#: board is (None: any value; it only concerns the host process).
_MACHINE_PROPS: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...] | None]] = {
    "dump-guest-core": (None, None), "mem-merge": (None, None),
    "usb": (None, ("off",)), "graphics": (None, ("off",)),
    "gic-version": (("aarch64",), ("2",)),
    "kernel-irqchip": (("x86_64",), ("on",)),
    "vmport": (("x86_64",), ("off",)), "smm": (("x86_64",), ("off",)),
    "hpet": (("x86_64",), ("off",)),
    # QEMU's AArch64 virt: random kaslr-seed and rng-seed in /chosen (VmConfig.dtb_randomness)
    "dtb-randomness": (("aarch64",), ("on", "off")),
    "dtb-kaslr-seed": (("aarch64",), ("on", "off")),  # QEMU's deprecated synonym
}


def parse_machine(values: Iterable[str]) -> MachineOptions:
    """The ``-machine``/``-M`` options merged in order, as QEMU merges repeated ones
    (a later value of a property wins): ``[type=]NAME`` first, ``accel=A[:B...]``
    (a list to try in order), other ``PROP=VALUE`` properties (checked against the
    board by :func:`check_machine_props`)."""
    machine: str | None = None
    accel: tuple[str, ...] = ()
    props: dict[str, str] = {}
    for value in values:
        for i, item in enumerate(value.split(",")):
            key, sep, raw = item.partition("=")
            if not sep:
                if i != 0 or not item:
                    raise InvalidInput(f"-machine {value!r}: {item!r} is not PROP=VALUE")
                key, raw = "type", item
            if key == "type":
                machine = raw
            elif key == "accel":
                accel = tuple(a.strip() for a in raw.split(":"))
                if not all(accel):
                    raise InvalidInput(f"-machine {value!r}: accel= lists accelerators "
                                       "separated by ':', e.g. accel=kvm:tcg")
            else:
                props[key] = raw
    return MachineOptions(machine or None, accel, props)


def check_machine_props(props: Mapping[str, str], arch: str) -> None:
    """Refuse ``-machine`` properties the ``arch`` board does not have or has otherwise."""
    for key, value in props.items():
        known = _MACHINE_PROPS.get(key)
        if known is None or (known[0] is not None and arch not in known[0]):
            names = sorted(k for k, (a, _v) in _MACHINE_PROPS.items() if a is None or arch in a)
            raise InvalidInput(f"-machine {key}={value}: the {arch} board has no property "
                               f"{key!r} (it takes type=, accel= and {', '.join(names)})")
        allowed = known[1]
        if allowed is not None and value not in allowed:
            raise InvalidInput(f"-machine {key}={value}: the {arch} board is {key}="
                               f"{'|'.join(allowed)}")


def dtb_randomness(props: Mapping[str, str]) -> bool:
    """Whether the ``-machine`` properties leave the device tree's random seeds on:
    ``dtb-randomness``, else QEMU's older name ``dtb-kaslr-seed``, else on."""
    return props.get("dtb-randomness", props.get("dtb-kaslr-seed", "on")) == "on"


def parse_accel(value: str) -> str:
    """The accelerator an ``-accel NAME[,PROP=VALUE...]`` option names, after checking
    its properties."""
    name, *items = value.split(",")
    if name in ("help", "?"):
        return "help"
    _check_accel_name(name, f"-accel {value}")
    props = _ACCEL_PROPS[name]
    for item in items:
        key, _sep, raw = item.partition("=")
        if key not in props:
            raise InvalidInput(f"-accel {value}: {name} has no property {key!r} here "
                               f"(accepted: {', '.join(props) or 'none'})")
        allowed = props[key]
        if allowed is not None and raw not in allowed:
            raise InvalidInput(f"-accel {value}: {key} must be {'|'.join(allowed)}")
    return name


def _check_accel_name(name: str, where: str) -> None:
    if name in _FOREIGN_ACCELERATORS:
        raise InvalidInput(f"{where}: pyaxvisor has no {name} accelerator (kvm: the x86_64 "
                           "board; tcg: the aarch64 and riscv64 boards)")
    if name not in ACCELERATORS:
        raise InvalidInput(f"{where}: unknown accelerator {name!r} (kvm, tcg)")


def choose_accel(asked: Sequence[str], board_accel: str, board: str) -> str:
    """The accelerator that runs ``board`` (which runs on ``board_accel`` only), given
    the accelerators ``asked`` for in order (QEMU tries them in order and uses the
    first that works; none asked: the board's). :class:`InvalidInput` when none of
    them can run it."""
    if not asked:
        return board_accel
    for name in asked:
        _check_accel_name(name, f"accelerator {name!r}")
    if board_accel in asked:
        return board_accel
    what = " or ".join(dict.fromkeys(asked))
    hint = ("use --arch x86_64 (or pyaxvisor-system-x86_64) for KVM" if board_accel == "tcg"
            else "pyaxvisor has no software x86 CPU")
    raise InvalidInput(f"-accel {what}: the {board} runs on {board_accel} only ({hint})")


# -- -device and -global ------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceType:
    """A device ``-device`` can add: its bus (as ``-device help`` says it), a
    description, its numeric properties with their defaults (QEMU's; what ``-global``
    may set), the heading ``-device help`` lists it under, and its other properties
    with what they take (``-device NAME,help``)."""

    name: str
    bus: str
    description: str
    props: Mapping[str, int]
    category: str = "Misc devices"
    text_props: Mapping[str, str] = field(default_factory=dict)


def _debug_exit_type() -> DeviceType:
    # Imported here: the device module pulls in the device bus (start-up time).
    from pyaxvisor.devices.debug_exit import DEFAULT_IOBASE, DEFAULT_IOSIZE

    return DeviceType("isa-debug-exit", "ISA",
                      "a guest write of V ends the run with status (V << 1) | 1",
                      {"iobase": DEFAULT_IOBASE, "iosize": DEFAULT_IOSIZE})


def _virtio_blk_type() -> DeviceType:
    return DeviceType("virtio-blk-device", "virtio-bus",
                      "virtio block device (virtio-mmio) over a -drive", {},
                      "Storage devices", {"drive": "<str>  (the id of an if=none -drive)",
                                          "id": "<str>"})


def _virtio_rng_type() -> DeviceType:
    return DeviceType("virtio-rng-device", "virtio-bus",
                      "virtio entropy device (virtio-mmio), fed from the host", {},
                      "Misc devices", {"id": "<str>"})


def _virtio_serial_type() -> DeviceType:
    return DeviceType("virtio-serial-device", "virtio-bus",
                      "virtio console (virtio-mmio) with one port: add a virtconsole", {},
                      "Input devices", {"id": "<str>"})


def _virtconsole_type() -> DeviceType:
    return DeviceType("virtconsole", "virtio-serial-bus",
                      "the console port (hvc0) of a virtio-serial-device, on this terminal",
                      {}, "Input devices",
                      {"chardev": "<str>  (the id of a -chardev stdio)", "id": "<str>"})


def _virtio_net_type() -> DeviceType:
    return DeviceType("virtio-net-device", "virtio-bus",
                      "virtio network card (virtio-mmio) on a -netdev tap", {},
                      "Network devices", {"netdev": "<str>  (the id of a -netdev tap)",
                                          "mac": "<macaddr>", "id": "<str>"})


#: The devices ``-device`` adds on boards that take them (each board says which of
#: them: ``Board.device_types``): name → its description.
DEVICE_TYPES: dict[str, Callable[[], DeviceType]] = {
    "isa-debug-exit": _debug_exit_type, "virtio-blk-device": _virtio_blk_type,
    "virtio-rng-device": _virtio_rng_type, "virtio-serial-device": _virtio_serial_type,
    "virtio-net-device": _virtio_net_type,
    "virtconsole": _virtconsole_type}


def _device_type(name: str) -> DeviceType:
    return DEVICE_TYPES[name]()


def _number(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise InvalidInput(f"{what}={text!r} is not a number") from None


def parse_global(spec: str, devices: Iterable[str], board: str = "board"
                 ) -> tuple[str, str, int]:
    """``(driver, property, value)`` of ``-global DRIVER.PROP=VALUE`` (or QEMU's
    ``driver=D,property=P,value=V``) for a property of one of ``devices`` (the names
    the ``board``'s ``-device`` takes)."""
    if spec.startswith("driver="):
        parts = dict(item.partition("=")[::2] for item in spec.split(","))
        if set(parts) != {"driver", "property", "value"}:
            raise InvalidInput(f"-global {spec!r}: use DRIVER.PROP=VALUE or "
                               "driver=D,property=P,value=V")
        driver, prop, raw = parts["driver"], parts["property"], parts["value"]
    else:
        target, sep, raw = spec.partition("=")
        driver, dot, prop = target.rpartition(".")
        if not sep or not dot or not driver or not prop:
            raise InvalidInput(f"-global {spec!r}: use DRIVER.PROP=VALUE, e.g. "
                               "isa-debug-exit.iobase=0xf4")
    offered = list(devices)
    if driver not in offered:
        has = f"its devices are {', '.join(offered)}" if offered else "it takes no -device"
        raise InvalidInput(f"-global {spec}: the {board} has no device {driver!r} with "
                           f"properties to set ({has})")
    kind = _device_type(driver)
    if prop not in kind.props:
        raise InvalidInput(f"-global {spec}: {driver} has no property {prop!r} "
                           f"({', '.join(kind.props)})")
    return driver, prop, _number(raw, f"-global {driver}.{prop}")


def parse_device(spec: str, defaults: Mapping[tuple[str, str], int] | None = None
                 ) -> DeviceSpec:
    """``isa-debug-exit[,iobase=N][,iosize=N]`` (QEMU's ``-device`` spelling) → the
    device; a property left out takes its ``-global`` value from ``defaults``
    (``(driver, prop)`` → value), else QEMU's default (iobase 0x501, iosize 2). Any
    other device is refused."""
    name, *props = spec.split(",")
    if name != "isa-debug-exit":
        raise InvalidInput(f"-device {name!r} is not supported: only isa-debug-exit "
                           "(-device help lists the board's devices)")
    kind = _device_type(name)
    values = {key: (defaults or {}).get((name, key), default)
              for key, default in kind.props.items()}
    for prop in props:
        key, sep, value = prop.partition("=")
        if not sep or key not in values:
            raise InvalidInput(f"-device {name}: unknown property {prop!r} "
                               f"({', '.join(f'{k}=' for k in values)})")
        values[key] = _number(value, f"-device {name}: {key}")
    base, size = values["iobase"], values["iosize"]
    if size not in (1, 2, 4):
        raise InvalidInput(f"-device {name}: iosize={size:#x}: the device takes 1, 2 or 4 "
                           "ports")
    if not 0 <= base <= 0x1_0000 - size:
        raise InvalidInput(f"-device {name}: iobase={base:#x}: ports are 0..0xffff and "
                           f"the device needs {size}")
    return DeviceSpec(name, base, size)


def device_help(spec: str, offered: Sequence[str], board: str) -> str | None:
    """What ``-device help`` (or ``?``) and ``-device NAME,help`` print for a board
    offering the devices ``offered``; None when ``spec`` asks for no help."""
    name, *rest = spec.split(",")
    if name in ("help", "?"):
        if not offered:
            return (f"The {board} takes no -device: its devices are built in.\n")
        groups: dict[str, list[str]] = {}
        for device in offered:
            kind = _device_type(device)
            groups.setdefault(kind.category, []).append(
                f'name "{kind.name}", bus {kind.bus}, desc "{kind.description}"')
        blocks = [f"{category}:\n" + "\n".join(lines) + "\n"
                  for category, lines in sorted(groups.items())]
        return "\n".join(blocks)
    if not any(item in ("help", "?") for item in rest):
        return None
    if name not in offered:
        raise InvalidInput(f"-device {name!r} is not a device of the {board} (-device help "
                           "lists them)")
    kind = _device_type(name)
    lines = [f"{name} options:"]
    lines += [f"  {key}=<uint32>  (default: {value:#x})" for key, value in kind.props.items()]
    lines += [f"  {key}={what}" for key, what in kind.text_props.items()]
    return "\n".join(lines) + "\n"


# -- the rest -------------------------------------------------------------------------------

def parse_name(value: str) -> str:
    """The VM's name from ``-name NAME[,process=P][,debug-threads=on|off]`` (or
    ``guest=NAME``); ``process`` and ``debug-threads`` are accepted and ignored."""
    name = ""
    for i, item in enumerate(value.split(",")):
        key, sep, raw = item.partition("=")
        if not sep and i == 0:
            name = item
        elif key == "guest":
            name = raw
        elif key not in ("process", "debug-threads") or not sep:
            raise InvalidInput(f"-name {value!r}: unknown property {item!r} (guest=, "
                               "process=, debug-threads=)")
    if not name:
        raise InvalidInput(f"-name {value!r}: no name")
    return name


def check_none(option: str, value: str | None, why: str) -> None:
    """``-display``/``-vnc``/``-monitor``: only ``none`` is accepted (``why`` says why)."""
    if value is not None and value != "none":
        raise InvalidInput(f"{option} {value!r} is not supported: only {option} none ({why})")


def check_serial(value: str) -> None:
    """``-serial``: the console is on this terminal (``stdio``; ``mon:stdio`` is the
    same here: there is no monitor, Ctrl-A X quits)."""
    if value not in ("stdio", "mon:stdio"):
        raise InvalidInput(f"-serial {value!r} is not supported: only stdio (or mon:stdio)")


#: The longest ``--timeout`` accepted, in seconds (30 days).
MAX_TIMEOUT = 30 * 24 * 3600


def parse_timeout(text: str) -> float:
    """Seconds from ``--timeout``: a positive finite number, at most :data:`MAX_TIMEOUT`."""
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"--timeout {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"--timeout {text!r}: give a positive number of seconds")
    if value > MAX_TIMEOUT:
        raise InvalidInput(f"--timeout {text!r}: at most {MAX_TIMEOUT} s (30 days)")
    return value

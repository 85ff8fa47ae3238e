"""The layout of an AxVisor VM config file, and the checkers that read its values.

Tables and keys (:data:`TABLES`): ``[base]``, ``[kernel]`` and ``[devices]`` are
AxVisor's (all three required); ``[pyaxvisor]`` is pyaxvisor's own (optional). A
key outside them, an unknown table or key, and a missing required one are errors.

Values: TOML gives integers, strings, booleans, arrays, tables, floats and dates;
each key takes exactly one kind (a boolean is not an integer). AxVisor's numbers
are 64-bit unsigned, so an integer must lie in ``0 .. 2**64 - 1`` unless a key
bounds it further. Strings may not hold NUL characters. Lists are bounded
(:data:`MAX_ROWS`), the vCPU count by :data:`MAX_CPUS`.

Rows (``memory_regions``, ``emu_devices``, ...) are arrays in a fixed field order
(:data:`MEMORY_ROW` and friends); the last fields of some may be left out. A row
may also be written as an inline table naming its fields (AxVisor's parser takes
both), e.g. ``{gpa = 0x4000_0000, size = 0x2000_0000, flags = 7}``.

Every problem is an :class:`~pyaxvisor.errors.InvalidInput` whose message is
``"FILE: KEY: PROBLEM"``, ``KEY`` spelled as in the file (``[kernel]
memory_regions[1]``), made by :meth:`Key.error`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.flags import MappingFlags
from pyaxvisor.vm.config import DeviceSpec, MapType, MemoryRegion, PassthroughSpec

__all__ = [
    "ADDRESS_ROW", "ADDRESS_SPACE_POLICIES", "BOOT_PROTOCOLS", "EMU_ROW", "EMU_TYPES",
    "EXTRA_KEYS", "FLAG_BITS", "IMAGE_LOCATIONS", "INTERRUPT_MODES", "MAP_TYPE_NAMES",
    "MAX_CPUS", "MAX_FILE_SIZE", "MAX_ROWS", "MEMORY_ROW", "PASSTHROUGH_ROW", "PORT_ROW",
    "REQUIRED_TABLES", "TABLES", "U64_MAX", "VM_TYPES", "Key", "TableSpec", "address_range",
    "array", "boolean", "choice", "emu_device", "integer", "memory_regions",
    "passthrough_device", "per_cpu", "row", "show", "span", "string", "toml_string",
]

#: The largest config file read (checked before reading it).
MAX_FILE_SIZE = 1 << 20
U64_MAX = (1 << 64) - 1
#: Most vCPUs a file may ask for (a board has its own, lower, limit).
MAX_CPUS = 4096
#: Most entries of any list: memory regions, devices, address ranges, cfg words.
MAX_ROWS = 1024
PAGE = 0x1000
#: Guest physical addresses end here (the widest nested page tables).
GPA_LIMIT = 1 << 52


@dataclass(frozen=True)
class TableSpec:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return self.required + self.optional


TABLES: dict[str, TableSpec] = {
    "base": TableSpec(("id", "name", "vm_type", "cpu_num"), ("phys_cpu_ids", "phys_cpu_sets")),
    "kernel": TableSpec(
        ("kernel_path", "memory_regions"),
        ("entry_point", "kernel_load_addr", "bios_path", "bios_load_addr", "dtb_path",
         "dtb_load_addr", "ramdisk_path", "ramdisk_load_addr", "image_location", "cmdline",
         "disk_path", "enable_bios", "boot_protocol", "uefi_firmware_path")),
    "devices": TableSpec(
        ("emu_devices", "passthrough_devices"),
        ("passthrough_addresses", "passthrough_ports", "excluded_devices", "interrupt_mode",
         "address_space_policy")),
    "pyaxvisor": TableSpec((), ("arch", "machine")),
}
#: The tables AxVisor's parser requires (``[pyaxvisor]`` is optional).
REQUIRED_TABLES = ("base", "kernel", "devices")

#: Values kept in ``VmConfig.extra`` (recorded, shown by ``config check``, written back,
#: not used to build the VM), by the table they belong to.
EXTRA_KEYS: dict[str, str] = {
    "image_location": "kernel", "boot_protocol": "kernel", "enable_bios": "kernel",
    "uefi_firmware_path": "kernel", "bios_load_addr": "kernel", "dtb_load_addr": "kernel",
    "address_space_policy": "devices",
}

VM_TYPES = {0: "host VM", 1: "RTOS", 2: "Linux"}
MAP_TYPE_NAMES = {0: "alloc", 1: "identical", 2: "reserved"}
#: MappingFlags bits: (bit, name, letter).
FLAG_BITS = ((1, "read", "r"), (2, "write", "w"), (4, "execute", "x"), (8, "user", "u"),
             (16, "device", "d"), (32, "uncached", "c"))
#: axvmconfig's EmulatedDeviceType values and what they are.
EMU_TYPES = {
    0x0: "meta device", 0x1: "interrupt controller", 0x2: "console", 0x3: "fw_cfg",
    0xA: "IVC channel", 0x20: "GIC partial-passthrough redistributor",
    0x21: "GIC partial-passthrough distributor", 0x22: "GIC partial-passthrough ITS",
    0x30: "PPPT global", 0xE1: "virtio block", 0xE2: "virtio net", 0xE3: "virtio console",
}
#: The virtio EmulatedDeviceType values → pyaxvisor's ``VirtioDeviceSpec`` kinds.
VIRTIO_TYPES = {0xE1: "blk", 0xE2: "net", 0xE3: "console"}
#: Accepted spellings → the canonical one.
INTERRUPT_MODES = {"no_irq": "no_irq", "no": "no_irq", "none": "no_irq", "emu": "emu",
                   "emulated": "emu", "passthrough": "passthrough", "pt": "passthrough"}
BOOT_PROTOCOLS = {"direct": "direct", "kernel": "direct", "multiboot": "multiboot",
                  "bios": "multiboot", "axvm-bios": "multiboot", "uefi": "uefi", "efi": "uefi"}
ADDRESS_SPACE_POLICIES = {"virtualized": "virtualized", "passthrough": "passthrough"}
IMAGE_LOCATIONS = {"memory": "memory", "fs": "fs"}

#: Row layouts, in the file's field order.
MEMORY_ROW = ("gpa", "size", "flags", "map_type")
EMU_ROW = ("name", "base_gpa", "length", "irq_id", "emu_type", "cfg_list")
PASSTHROUGH_ROW = ("name", "base_gpa", "base_hpa", "length", "irq_id")
ADDRESS_ROW = ("base_gpa", "length")
PORT_ROW = ("base", "length")


@dataclass(frozen=True)
class Key:
    """A place in a config file: the file and the key as the file spells it."""

    source: Path
    name: str

    def __getitem__(self, index: int) -> Key:
        return Key(self.source, f"{self.name}[{index}]")

    def error(self, problem: str) -> InvalidInput:
        return InvalidInput(f"{self.source}: {self.name}: {problem}")


_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
    (list, "an array"), (dict, "a table"), ((datetime, date, time), "a date or time"),
)


def _kind(value: object) -> str:
    return next((name for t, name in _KINDS if isinstance(value, t)), type(value).__name__)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (quotes, backslashes and control characters
    escaped); :class:`InvalidInput` for a lone surrogate, which UTF-8 cannot hold."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) < 0xE000:
            raise InvalidInput(f"{text!r} cannot be written as UTF-8 text")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def show(value: object, limit: int = 40) -> str:
    """``value`` as TOML spells it, cut to about ``limit`` characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = toml_string(value)
    elif isinstance(value, list):
        text = "[" + ", ".join(show(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k} = {show(v, limit)}" for k, v in value.items()) + "}"
    elif isinstance(value, int) and abs(value) >= 10:
        text = f"{value:#x}" if value >= 0 else f"-{-value:#x}"
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _expected(value: object, key: Key, want: str, field: str) -> InvalidInput:
    what = f"{field}: " if field else ""
    return key.error(f"{what}expected {want}, found {_kind(value)} ({show(value)})")


def integer(value: object, key: Key, *, field: str = "", low: int = 0,
            high: int = U64_MAX) -> int:
    """An integer in ``[low, high]`` (a boolean is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expected(value, key, "an integer", field)
    what = f"{field} " if field else ""
    if value < 0 and low >= 0:
        raise key.error(f"{what}{show(value)} is negative")
    if value > U64_MAX:
        raise key.error(f"{what}{show(value)} does not fit in 64 bits")
    if not low <= value <= high:
        raise key.error(f"{what}{show(value)} is out of range {low}..{high}")
    return value


def string(value: object, key: Key, *, field: str = "") -> str:
    if not isinstance(value, str):
        raise _expected(value, key, "a string", field)
    if "\0" in value:
        raise key.error(f"{field + ' ' if field else ''}{show(value)} contains a NUL character")
    return value


def boolean(value: object, key: Key) -> bool:
    if not isinstance(value, bool):
        raise _expected(value, key, "a boolean (true or false)", "")
    return value


def array(value: object, key: Key, *, field: str = "", most: int = MAX_ROWS) -> list[object]:
    if not isinstance(value, list):
        raise _expected(value, key, "an array", field)
    if len(value) > most:
        raise key.error(f"{field + ': ' if field else ''}{len(value)} entries; at most {most}")
    return value


def choice(value: object, key: Key, choices: Mapping[str, str]) -> str:
    """One of ``choices``' spellings, as its canonical name."""
    text = string(value, key)
    if text not in choices:
        canon = list(dict.fromkeys(choices.values()))
        aliases = [k for k in choices if k not in canon]
        also = f"; also {', '.join(aliases)}" if aliases else ""
        raise key.error(f"unknown value {show(text)} (one of {', '.join(canon)}{also})")
    return choices[text]


def row(value: object, key: Key, fields: tuple[str, ...], *, least: int) -> list[object]:
    """A row's values in ``fields`` order: an array of ``least..len(fields)`` values, or
    an inline table naming them (fields left out at the end are simply absent)."""
    layout = f"[{', '.join(fields)}]"
    if isinstance(value, dict):
        unknown = [k for k in value if k not in fields]
        if unknown:
            raise key.error(f"unknown field {show(unknown[0])} (fields: {', '.join(fields)})")
        given = [f in value for f in fields]
        count = given.index(False) if False in given else len(fields)
        if count < least or any(given[count:]):
            missing = next(f for f, g in zip(fields, given, strict=True) if not g)
            raise key.error(f"field {missing} is missing (a row is {layout})")
        return [value[f] for f in fields[:count]]
    if not isinstance(value, list):
        raise _expected(value, key, f"a row {layout}", "")
    if not least <= len(value) <= len(fields):
        short = f"; the last {len(fields) - least} may be left out" if least < len(fields) else ""
        raise key.error(f"{len(value)} values; a row is {layout}{short}")
    return value


# -- rows ---------------------------------------------------------------------------------

def span(start: int, end: int) -> str:
    return f"[{start:#x}, {end:#x})"


def per_cpu(value: object, key: Key, cpu_num: int) -> tuple[int, ...] | None:
    """``phys_cpu_ids`` (distinct) or ``phys_cpu_sets`` (non-zero masks): one integer
    per vCPU; ``None`` when ``value`` is (the key is absent)."""
    if value is None:
        return None
    values = tuple(integer(v, key[i]) for i, v in enumerate(array(value, key, most=MAX_CPUS)))
    ids = key.name.endswith("phys_cpu_ids")
    if len(values) != cpu_num:
        raise key.error(f"{len(values)} given for cpu_num = {cpu_num} (one per vCPU)")
    for i, v in enumerate(values):
        if ids and v in values[:i]:
            raise key[i].error(f"{show(v)} is also vCPU {values.index(v)}'s id")
        if not ids and v == 0:
            raise key[i].error(f"mask 0 names no host CPU for vCPU {i}")
    return values


def memory_regions(value: object, key: Key) -> tuple[MemoryRegion, ...]:
    """``[[gpa, size, flags, map_type], ...]`` (``map_type`` may be left out: 0): at least
    one, each 4 KiB aligned below 2**52 with known flag bits and map type, none
    overlapping another."""
    items = array(value, key)
    if not items:
        raise key.error("no regions: the VM needs RAM")
    regions = []
    for i, item in enumerate(items):
        k = key[i]
        values = row(item, k, MEMORY_ROW, least=3)
        gpa, size, flags = (integer(v, k, field=n) for v, n in zip(values[:3], MEMORY_ROW,
                                                                     strict=False))
        map_type = integer(values[3], k, field="map_type") if len(values) > 3 else 0
        if size == 0:
            raise k.error("size is 0")
        if gpa % PAGE:
            raise k.error(f"gpa {gpa:#x} is not 4 KiB aligned")
        if size % PAGE:
            raise k.error(f"size {size:#x} is not a multiple of 4 KiB")
        if gpa + size > GPA_LIMIT:
            raise k.error(f"{span(gpa, gpa + size)} ends beyond 52-bit guest physical "
                          "addresses")
        if flags & ~0x3F:
            names = ", ".join(f"{name} {bit}" for bit, name, _ in FLAG_BITS)
            raise k.error(f"flags {flags:#x} has unknown bits {flags & ~0x3F:#x} ({names})")
        if map_type not in MAP_TYPE_NAMES:
            names = ", ".join(f"{n} {v}" for n, v in MAP_TYPE_NAMES.items())
            raise k.error(f"unknown map_type {map_type} ({names})")
        regions.append(MemoryRegion(gpa, size, MappingFlags(flags), MapType(map_type)))
    order = sorted(range(len(regions)), key=lambda i: regions[i].gpa)
    for a, b in itertools.pairwise(order):
        if regions[b].gpa < regions[a].end:
            first, later = sorted((a, b))
            raise key[later].error(f"{span(regions[later].gpa, regions[later].end)} overlaps "
                                   f"memory_regions[{first}] "
                                   f"{span(regions[first].gpa, regions[first].end)}")
    return tuple(regions)


def emu_device(value: object, key: Key) -> DeviceSpec:
    """``[name, base_gpa, length, irq_id, emu_type, [cfg words]]``, a known emu_type."""
    name, *numbers, cfg = row(value, key, EMU_ROW, least=len(EMU_ROW))
    base, length, irq, emu_type = (integer(v, key, field=n)
                                   for v, n in zip(numbers, EMU_ROW[1:5], strict=True))
    if emu_type not in EMU_TYPES:
        known = ", ".join(f"{v:#x} {n}" for v, n in EMU_TYPES.items())
        raise key.error(f"unknown emu_type {emu_type:#x} ({known})")
    words = tuple(integer(v, key, field="cfg_list") for v in array(cfg, key, field="cfg_list"))
    return DeviceSpec(string(name, key, field="name"), base, length, irq, emu_type, words)


def passthrough_device(value: object, key: Key) -> PassthroughSpec:
    """``[name]`` (``"/"``: the whole host device tree, or a device-tree path) or all of
    ``[name, base_gpa, base_hpa, length, irq_id]``, with a non-zero length."""
    values = row(value, key, PASSTHROUGH_ROW, least=1)
    if len(values) not in (1, len(PASSTHROUGH_ROW)):
        raise key.error(f"{len(values)} values; write just the name ([\"/\"] or a device-tree "
                        "path) or all five: [name, base_gpa, base_hpa, length, irq_id]")
    numbers = [integer(v, key, field=n) for v, n in zip(values[1:], PASSTHROUGH_ROW[1:],
                                                        strict=False)]
    if numbers and numbers[2] == 0:
        raise key.error("length is 0")
    return PassthroughSpec(string(values[0], key, field="name"), *numbers)


def address_range(value: object, key: Key, layout: tuple[str, str]) -> tuple[int, int]:
    """``[base, length]`` (``passthrough_addresses``, ``passthrough_ports``)."""
    base, length = row(value, key, layout, least=2)
    return integer(base, key, field=layout[0]), integer(length, key, field=layout[1])

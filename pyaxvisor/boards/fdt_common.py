"""What the boards' device-tree builders share: property helpers, input checks,
``/chosen`` editing and the final serialisation (``fdt`` package, DTB version 17).

Used by :mod:`pyaxvisor.boards.aarch64_virt.fdt` and
:mod:`pyaxvisor.boards.riscv64_virt.fdt`. Conventions common to both trees (QEMU's):
the root has two address and two size cells, so ``reg`` entries and
``linux,initrd-start``/``-end`` are 64-bit values written as two big-endian cells,
high word first; strings are printable ASCII (the ``fdt`` package writes strings as
ASCII, and its parser does not recognise strings holding control characters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import fdt

from pyaxvisor.errors import InvalidInput

__all__ = [
    "DTB_VERSION", "RNG_SEED_BYTES", "U32", "U64", "build_dtb", "cells64", "check_initrd",
    "check_memory", "check_printable", "check_range", "check_windows", "chosen_node",
    "memory_nodes", "node", "overlaps", "remove_node", "strings", "update_chosen", "words",
]

#: DTB format version written (the current one; last compatible version 16).
DTB_VERSION = 17

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
#: The size of the ``rng-seed`` QEMU's boards put in ``/chosen``.
RNG_SEED_BYTES = 32


# -- properties and nodes ----------------------------------------------------------------------

def cells64(*values: int) -> list[int]:
    """Each 64-bit value as two 32-bit cells, high word first."""
    out: list[int] = []
    for v in values:
        out += [(v >> 32) & U32, v & U32]
    return out


def words(name: str, *cells: int) -> fdt.PropWords:
    """A property of 32-bit cells."""
    return fdt.PropWords(name, *cells)


def strings(name: str, *values: str) -> fdt.PropStrings:
    """A property of one or more strings."""
    return fdt.PropStrings(name, *values)


def node(name: str, *items: fdt.Node | fdt.Property) -> fdt.Node:
    """A node holding ``items`` (properties and subnodes) in order."""
    return fdt.Node(name, *items)


def memory_nodes(memory: Sequence[tuple[int, int]]) -> list[fdt.Node]:
    """One ``/memory@<base>`` node per RAM bank ``(base, size)``."""
    return [node(f"memory@{base:x}", strings("device_type", "memory"),
                 words("reg", *cells64(base, size))) for base, size in memory]


def chosen_node(*, bootargs: str, stdout_path: str, initrd: tuple[int, int] | None,
                rng_seed: bytes | None = None, kaslr_seed: int | None = None) -> fdt.Node:
    """``/chosen`` as QEMU writes it: ``bootargs`` (left out when empty), ``stdout-path``,
    with an initrd ``linux,initrd-start``/``-end`` as 64-bit values, and the random seeds
    QEMU's boards give the guest: ``rng-seed`` (bytes for the kernel's random pool before
    it has entropy of its own) and ``kaslr-seed`` (a 64-bit value: with it, a kernel built
    with KASLR places itself at a random address)."""
    if kaslr_seed is not None and not 0 <= kaslr_seed <= U64:
        raise InvalidInput(f"kaslr-seed {kaslr_seed:#x} is not a 64-bit value")
    chosen = node("chosen")
    if bootargs:
        chosen.append(strings("bootargs", bootargs))
    chosen.append(strings("stdout-path", stdout_path))
    if rng_seed is not None:
        chosen.append(fdt.PropBytes("rng-seed", data=rng_seed))
    if kaslr_seed is not None:
        chosen.append(words("kaslr-seed", *cells64(kaslr_seed)))
    if initrd is not None:
        chosen.append(words("linux,initrd-start", *cells64(initrd[0])))
        chosen.append(words("linux,initrd-end", *cells64(initrd[1])))
    return chosen


# -- checks ------------------------------------------------------------------------------------

def check_printable(what: str, text: str) -> None:
    """``text`` must be printable ASCII (what the ``fdt`` package can write)."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a string, got {text!r}")
    bad = next((c for c in text if not " " <= c <= "~"), None)
    if bad is not None:
        raise InvalidInput(
            f"{what} must be printable ASCII, but contains {bad!r} "
            "(the device tree writer only handles ASCII strings)")


def check_range(what: str, base: int, size: int) -> None:
    """``[base, base + size)`` must be a non-empty range of 64-bit addresses."""
    if not isinstance(base, int) or not isinstance(size, int):
        raise InvalidInput(f"{what} needs integer base and size, got ({base!r}, {size!r})")
    if base < 0 or size <= 0 or base + size - 1 > U64:
        raise InvalidInput(f"{what} [{base:#x}, +{size:#x}) is empty or outside 64 bits")


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether the ``(base, size)`` ranges ``a`` and ``b`` share an address."""
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def check_windows(devices: Mapping[str, tuple[int, int]]) -> None:
    """Every device window (name -> ``(base, size)``) is a valid range and no two
    overlap."""
    for name, (base, size) in devices.items():
        check_range(name, base, size)
    names = list(devices)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if overlaps(devices[a], devices[b]):
                raise InvalidInput(f"the {a} window at {devices[a][0]:#x} overlaps the "
                                   f"{b} window at {devices[b][0]:#x}")


def check_memory(memory: Sequence[tuple[int, int]],
                 devices: Mapping[str, tuple[int, int]]) -> None:
    """RAM banks (``(base, size)``): at least one, each a valid range, overlapping
    neither each other nor a device window."""
    if not memory:
        raise InvalidInput("the VM needs at least one memory bank, memory=[] was given")
    for i, (base, size) in enumerate(memory):
        check_range(f"memory bank {i}", base, size)
        for j in range(i):
            if overlaps((base, size), memory[j]):
                raise InvalidInput(
                    f"memory bank {i} [{base:#x}, {base + size:#x}) overlaps bank {j} "
                    f"[{memory[j][0]:#x}, {memory[j][0] + memory[j][1]:#x})")
        for name, window in devices.items():
            if overlaps((base, size), window):
                raise InvalidInput(
                    f"memory bank {i} [{base:#x}, {base + size:#x}) overlaps the {name} "
                    f"at {window[0]:#x}")


def check_initrd(initrd: tuple[int, int] | None, memory: Sequence[tuple[int, int]]) -> None:
    """An initrd ``(start, end)``, when given, lies inside one RAM bank."""
    if initrd is None:
        return
    start, end = initrd
    if not isinstance(start, int) or not isinstance(end, int) or start < 0:
        raise InvalidInput(f"initrd must be (start, end) integers, got {initrd!r}")
    if end <= start:
        raise InvalidInput(f"initrd end {end:#x} is not above its start {start:#x}")
    if not any(b <= start and end <= b + s for b, s in memory):
        raise InvalidInput(
            f"initrd [{start:#x}, {end:#x}) does not lie inside one memory bank")


# -- trees -------------------------------------------------------------------------------------

def remove_node(tree: fdt.FDT, path: str) -> None:
    """Drop the node at ``path`` (``/name`` or ``/parent/name``) from ``tree`` if it is
    there."""
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name.strip() or not path.startswith("/"):
        raise InvalidInput(f"excluded device {path!r} is not a device tree path (/name)")
    if tree.exist_node(path.rstrip("/")):  # absent on this board: nothing to leave out
        tree.remove_node(name, parent or "/")


def build_dtb(root: fdt.Node, *, exclude: Sequence[str], boot_cpuid_phys: int) -> bytes:
    """Serialise the tree under ``root`` without the nodes at the ``exclude`` paths."""
    # Pass a fresh list: FDT's default ``entries`` is a shared mutable default that
    # fdt.parse_dtb() appends /memreserve/ entries to.
    tree = fdt.FDT(entries=[])
    tree.root = root
    for path in exclude:
        remove_node(tree, path)
    return tree.to_dtb(version=DTB_VERSION, boot_cpuid_phys=boot_cpuid_phys)


def update_chosen(dtb: bytes, *, bootargs: str, initrd: tuple[int, int] | None,
                  path: str) -> bytes:
    """A device tree file given by the user with ``/chosen`` set as QEMU sets it for
    ``-dtb``: ``bootargs`` (when not empty) and ``linux,initrd-start``/``-end`` (when
    there is an initrd); everything else as the file has it. A blob the parser cannot
    read is an :class:`InvalidInput` naming ``path``."""
    if not bootargs and initrd is None:
        return dtb
    check_printable("bootargs", bootargs)
    try:
        tree = fdt.parse_dtb(bytes(dtb))
    except Exception as exc:  # the fdt package raises plain exceptions for bad blobs
        raise InvalidInput(f"{path}: not a readable device tree blob ({exc})") from None
    if not tree.exist_node("/chosen"):
        tree.add_item(fdt.Node("chosen"))
    if bootargs:
        tree.set_property("bootargs", bootargs, path="/chosen")
    if initrd is not None:
        tree.set_property("linux,initrd-start", cells64(initrd[0]), path="/chosen")
        tree.set_property("linux,initrd-end", cells64(initrd[1]), path="/chosen")
    return tree.to_dtb(version=DTB_VERSION)


def read_dtb_file(path: Path, *, bootargs: str, initrd: tuple[int, int] | None) -> bytes:
    """A user's device tree file (``-dtb``, ``dtb_path``), bounded to the 2 MiB a
    device tree may have, with ``/chosen`` set by :func:`update_chosen`."""
    from pyaxvisor.loaders.image import FDT_MAGIC, ImageError, read_image
    from pyaxvisor.loaders.placement import DTB_MAX_SIZE

    dtb = read_image(path, "device tree", limit=DTB_MAX_SIZE)
    if dtb[:4] != FDT_MAGIC:
        raise ImageError(str(path), "not a device tree blob (no 0xd00dfeed magic)")
    return update_chosen(dtb, bootargs=bootargs, initrd=initrd, path=str(path))

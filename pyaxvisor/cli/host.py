"""What this host can give a VM: memory.

Guest RAM is one anonymous mapping reserved with ``MAP_NORESERVE``: only the pages
the guest touches cost host memory, so a VM larger than the memory free today may
well run. What the host can *never* back is more than its RAM and swap together
(``MemTotal + SwapTotal`` in ``/proc/meminfo``): such a size — for several VMs in one
process, their sum — is refused before anything is reserved (reserving and mapping
999 GiB alone takes tens of seconds).
"""

from __future__ import annotations

from pathlib import Path

from pyaxvisor.errors import InvalidInput

__all__ = ["MEMINFO", "check_guest_memory", "check_guests_memory", "describe_size",
           "host_memory"]

MEMINFO = Path("/proc/meminfo")


def host_memory(meminfo: Path = MEMINFO) -> tuple[int, int] | None:
    """``(MemTotal, SwapTotal)`` in bytes, or None when ``meminfo`` cannot be read or
    lacks them (not Linux)."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _sep, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    if "MemTotal" not in fields:
        return None
    return fields["MemTotal"], fields.get("SwapTotal", 0)


def describe_size(size: int) -> str:
    """``size`` bytes for a message: GiB from 1 GiB up, else MiB (one decimal unless
    whole)."""
    unit, name = (1 << 30, "GiB") if size >= 1 << 30 else (1 << 20, "MiB")
    value = size / unit
    return f"{value:.0f} {name}" if value == int(value) else f"{value:.1f} {name}"


def check_guest_memory(size: int, meminfo: Path = MEMINFO) -> None:
    """:class:`InvalidInput` when ``size`` bytes of guest RAM are more than the host's
    RAM and swap together (nothing is checked when the host does not say)."""
    host = host_memory(meminfo)
    if host is None:
        return
    ram, swap = host
    if size > ram + swap:
        swapped = f"{describe_size(swap)} of swap" if swap else "no swap"
        raise InvalidInput(f"the guest's {describe_size(size)} of RAM (-m) is more than this "
                           f"host can ever back: {describe_size(ram)} of RAM and {swapped}")


def check_guests_memory(sizes: dict[str, int], meminfo: Path = MEMINFO) -> None:
    """:class:`InvalidInput` when the RAM of the VMs ``sizes`` (name -> bytes) together
    is more than the host's RAM and swap (nothing is checked when the host does not
    say). Each VM alone is :func:`check_guest_memory`'s."""
    host = host_memory(meminfo)
    total = sum(sizes.values())
    if host is None or total <= host[0] + host[1]:
        return
    ram, swap = host
    each = ", ".join(f"{name} {describe_size(size)}" for name, size in sizes.items())
    swapped = f"{describe_size(swap)} of swap" if swap else "no swap"
    raise InvalidInput(f"the {len(sizes)} VMs' {describe_size(total)} of RAM together ({each}) "
                       f"is more than this host can ever back: {describe_size(ram)} of RAM "
                       f"and {swapped}")

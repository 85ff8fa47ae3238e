"""QEMU-style size and SMP arguments: ``-m 512M``, ``-m 1G``, ``-m 256`` (MiB),
``-smp 2``, ``-smp cpus=2``."""

from __future__ import annotations

import re

from pyaxvisor.errors import InvalidInput

_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory_size(text: str) -> int:
    """Bytes from a QEMU ``-m`` value; a bare number means MiB, as in QEMU."""
    m = re.fullmatch(r"\s*(?:size=)?(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise InvalidInput(f"cannot parse memory size {text!r}: use e.g. 512M, 1G or 256")
    value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise InvalidInput(f"memory size {text!r} must be positive")
    return value


def parse_smp(text: str) -> int:
    """The CPU count from a QEMU ``-smp`` value (``N`` or ``cpus=N[,...]``)."""
    first = text.split(",")[0].strip()
    if first.startswith("cpus="):
        first = first[5:]
    if not first.isdigit() or int(first) < 1:
        raise InvalidInput(f"cannot parse -smp {text!r}: use a CPU count such as 2")
    return int(first)

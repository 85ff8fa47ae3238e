"""QEMU's option syntax: ``NAME,PROP=VALUE,...`` with a doubled comma a literal one."""

from __future__ import annotations

__all__ = ["split_props"]


def split_props(value: str) -> list[str]:
    """``a=1,b=x,,y`` → ``["a=1", "b=x,y"]``: items split at single commas, a doubled
    comma being a literal one (QEMU's option syntax)."""
    items, current, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == ",":
            if value[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current))
    return items

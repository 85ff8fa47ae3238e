"""QEMU's option syntax: ``NAME,PROP=VALUE,...`` with a doubled comma a literal one."""

from __future__ import annotations

from collections.abc import Sequence

from pyaxvisor.errors import InvalidInput

__all__ = ["parse_props", "split_props"]


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


def parse_props(option: str, items: Sequence[str], allowed: tuple[str, ...]
                ) -> dict[str, str]:
    """``PROP=VALUE`` items (from :func:`split_props`) → a dict; an item that is not
    ``PROP=VALUE`` with ``PROP`` in ``allowed``, or a property given twice, is an
    :class:`InvalidInput` naming ``option`` (the option as typed)."""
    props: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in allowed:
            raise InvalidInput(f"{option}: unknown property {item!r} (accepted: "
                               f"{', '.join(a + '=' for a in allowed)})")
        if key in props:
            raise InvalidInput(f"{option}: {key}= given twice")
        props[key] = raw
    return props

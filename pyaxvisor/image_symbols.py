"""A fetched kernel image's symbol table: the ``System.map`` of its Debian package.

:func:`system_map` gives the path of ``<image>.System.map`` in the image cache (next
to the image), taking ``boot/System.map-<release>`` out of the very package and
version the image came from (its ``.json`` names them; the image must have been
fetched). :func:`symbols` reads such a file into a name → address table.
Written atomically (a temporary file, then :func:`os.replace`) under the image's
cache lock, as the images are.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pyaxvisor.errors import ImageFetchError, InvalidInput
from pyaxvisor.images import (
    Log,
    _apt_name,
    _deb_fields,
    _download,
    _extract,
    cache_lock,
    cache_root,
    metadata,
    spec,
)

#: The largest System.map read (Debian's arm64 one is about 8 MB).
MAX_MAP = 64 << 20


def system_map(name: str, *, log: Log = print) -> Path:
    """The ``System.map`` of fetched kernel image ``name`` (fetched once)."""
    image = spec(name)
    info = metadata(image.name)
    if info is None or "kernel_release" not in info:
        raise ImageFetchError(f"{image.name} is not a fetched kernel image: fetch it first "
                              f"(pyaxvisor images fetch {image.name})")
    root = cache_root()
    final = root / f"{image.name}.System.map"
    if final.is_file():
        return final
    with cache_lock(root, image.name):
        if final.is_file():
            return final
        with tempfile.TemporaryDirectory(prefix=f".tmp-{image.name}-map-", dir=root) as tmp:
            work = Path(tmp)
            deb = _download(_apt_name(str(info["package"]), str(info["architecture"])),
                            work, log)
            fields = _deb_fields(deb)
            if fields.get("Version") != info["version"]:
                raise ImageFetchError(f"{image.name} came from {info['package']} "
                                      f"{info['version']}, but apt now has version "
                                      f"{fields.get('Version')}: fetch the image again "
                                      f"(pyaxvisor images fetch --refresh {image.name})")
            _member, data = _extract(deb, f"boot/System.map-{info['kernel_release']}",
                                     fields)
            (work / "map").write_bytes(data)
            os.replace(work / "map", final)
    return final


def symbols(path: Path) -> dict[str, int]:
    """``name -> address`` of a ``System.map`` (``ADDRESS TYPE NAME`` lines)."""
    if path.stat().st_size > MAX_MAP:
        raise InvalidInput(f"{path}: more than {MAX_MAP} bytes: not a System.map")
    table: dict[str, int] = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        fields = line.split()
        if len(fields) != 3:
            raise InvalidInput(f"{path}:{n}: not an 'ADDRESS TYPE NAME' line: {line[:60]!r}")
        try:
            table.setdefault(fields[2], int(fields[0], 16))
        except ValueError:
            raise InvalidInput(f"{path}:{n}: address {fields[0][:20]!r} is not hex") from None
    return table

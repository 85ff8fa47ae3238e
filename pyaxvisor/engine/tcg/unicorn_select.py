"""Which libunicorn the software engine runs on: pyaxvisor's patched build when it is
installed (``python -m pyaxvisor.engine.tcg.build_unicorn``), else the stock wheel's.

The Unicorn binding picks its library once, when ``unicorn`` is first imported: the
directory in ``LIBUNICORN_PATH`` first, then the wheel's own ``unicorn/lib``. So
:func:`select` runs from ``pyaxvisor/__init__.py``, before any module imports
``unicorn``, and only sets that variable (child processes make the same choice). An
explicit ``LIBUNICORN_PATH`` wins; ``PYAXVISOR_STOCK_UNICORN=1`` keeps the wheel's
library. Which library was loaded, and which patches it carries, is
:func:`pyaxvisor.engine.tcg.common.unicorn_build`'s to say (the binding falls back to
the wheel silently when a library does not load).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where build_unicorn installs the patched library and the list of its patches.
LIB_DIR = Path(__file__).resolve().parent / "libunicorn"
LIB_NAME = "libunicorn.so.2"
PATCH_DIR = Path(__file__).resolve().parent / "unicorn_patches"


def patched_library() -> Path | None:
    """The installed patched library, if any."""
    lib = LIB_DIR / LIB_NAME
    return lib if lib.is_file() else None


def select() -> None:
    """Make the binding load the patched library when it is installed."""
    if os.environ.get("PYAXVISOR_STOCK_UNICORN") or "LIBUNICORN_PATH" in os.environ:
        return
    if patched_library() is not None:
        os.environ["LIBUNICORN_PATH"] = str(LIB_DIR)


def expected_patches() -> tuple[str, ...]:
    """The names of the patches in ``unicorn_patches/series`` (``0001-name.patch`` is
    ``name``), as the library's marker lists them; empty if the series is not shipped."""
    try:
        lines = (PATCH_DIR / "series").read_text().splitlines()
    except OSError:
        return ()
    names = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            stem = line.removesuffix(".patch")
            names.append(stem.split("-", 1)[1] if stem[:4].isdigit() else stem)
    return tuple(names)

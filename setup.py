"""Build the native pieces (C; need a compiler): the software CPU's hooks, the
KVM_RUN fast path with the signal handler that kicks vCPU threads, and the patched
libunicorn the software CPU runs on (``pyaxvisor/engine/tcg/build_unicorn.py``: the
unicorn sdist from PyPI plus ``unicorn_patches/``, built with CMake once and cached in
``~/.cache/pyaxvisor/unicorn``; ~1.5 min on 2 cores the first time, under a second
after). ``PYAXVISOR_STOCK_UNICORN=1`` skips that build (the engine then runs on the
unicorn wheel's library and says so).

Everything else is declared in pyproject.toml.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
TCG = Path("pyaxvisor", "engine", "tcg")


class BuildExt(build_ext):
    """The C extensions, then the patched libunicorn into ``<package>/libunicorn``."""

    def run(self) -> None:
        super().run()
        if os.environ.get("PYAXVISOR_STOCK_UNICORN"):
            print("PYAXVISOR_STOCK_UNICORN is set: the patched libunicorn is not built")
            return
        spec = importlib.util.spec_from_file_location("pyaxvisor_build_unicorn",
                                                      HERE / TCG / "build_unicorn.py")
        assert spec is not None and spec.loader is not None
        builder = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(builder)
        lib = builder.build()
        if self.inplace or getattr(self, "editable_mode", False):
            builder.install(lib, HERE / TCG / "libunicorn")  # loaded from the source tree
        else:
            builder.install(lib, Path(self.build_lib) / TCG / "libunicorn")


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension("pyaxvisor.engine.tcg._hooks",
                  ["pyaxvisor/engine/tcg/_hooks.c", "pyaxvisor/engine/tcg/xsync.c",
                   "pyaxvisor/engine/tcg/mmio_mirror.c"],
                  depends=["pyaxvisor/engine/tcg/xsync.h",
                           "pyaxvisor/engine/tcg/mmio_mirror.h"]),
        Extension("pyaxvisor.engine.kvm._native", ["pyaxvisor/engine/kvm/_native.c"]),
        Extension("pyaxvisor.devices.virtio._sgio", ["pyaxvisor/devices/virtio/_sgio.c"]),
    ],
)

"""Build the one native piece: the software CPU's hooks (C; needs a compiler).

Everything else is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("pyaxvisor.engine.tcg._hooks", ["pyaxvisor/engine/tcg/_hooks.c"]),
    ],
)

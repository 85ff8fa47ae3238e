"""Build the native pieces (C; need a compiler): the software CPU's hooks and the
KVM_RUN fast path with the signal handler that kicks vCPU threads.

Everything else is declared in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("pyaxvisor.engine.tcg._hooks", ["pyaxvisor/engine/tcg/_hooks.c"]),
        Extension("pyaxvisor.engine.kvm._native", ["pyaxvisor/engine/kvm/_native.c"]),
    ],
)

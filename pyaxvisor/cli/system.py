"""``pyaxvisor-system-ARCH``: QEMU's command line with the architecture fixed, as
``qemu-system-ARCH`` has it, so that a test runner's ``QEMU=`` variable can point at
one. ``pyaxvisor-system-aarch64 -M virt -kernel K ...`` is ``pyaxvisor run --arch
aarch64 -M virt -kernel K ...`` (:mod:`.run`); ``--arch`` may only repeat the
command's own.
"""

from __future__ import annotations

import sys

__all__ = ["aarch64", "main", "riscv64", "x86_64"]


def main(arch: str, argv: list[str] | None = None) -> None:
    """Run ``pyaxvisor run --arch arch`` with ``argv`` (default: this process's
    arguments) under the name ``pyaxvisor-system-ARCH``."""
    from pyaxvisor.cli.run import FixedArch, run

    prog = f"pyaxvisor-system-{arch}"
    run.main(args=sys.argv[1:] if argv is None else argv, prog_name=prog,
             obj=FixedArch(arch, prog))


def x86_64() -> None:
    """``pyaxvisor-system-x86_64``: the x86_64 PC board on KVM."""
    main("x86_64")


def aarch64() -> None:
    """``pyaxvisor-system-aarch64``: the AArch64 ``virt`` board on the software CPU."""
    main("aarch64")


def riscv64() -> None:
    """``pyaxvisor-system-riscv64``: the RISC-V 64 ``virt`` board on the software CPU."""
    main("riscv64")

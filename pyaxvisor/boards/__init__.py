"""The machines pyaxvisor emulates, one package per board, found by name.

The registry below holds module names, not modules: a board (and the engine,
vCPU and devices it pulls in) is imported the first time a VM uses it, so the
command line starts as fast with two boards as with one. Each entry names the
board's architecture, its machine names (QEMU's ``-M`` spellings; the first is
canonical) and the module whose ``BOARD`` is its :class:`~pyaxvisor.vm.board.Board`
class; a test checks that each board class declares the same names.

Adding a board: write ``pyaxvisor/boards/<name>/`` with a ``layout`` module and a
``board`` module defining ``BOARD``, and add one :class:`BoardEntry` here (or call
:func:`register`, e.g. from a test or a plug-in).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

from pyaxvisor.errors import InvalidInput

if TYPE_CHECKING:
    from pyaxvisor.vm.board import Board

__all__ = ["BoardEntry", "arch_of_machine", "arches", "arches_of_machine", "board_class",
           "entry_for", "register"]


class BoardEntry(NamedTuple):
    arch: str
    machines: tuple[str, ...]
    module: str


_REGISTRY: list[BoardEntry] = [
    BoardEntry("aarch64", ("virt",), "pyaxvisor.boards.aarch64_virt.board"),
    BoardEntry("x86_64", ("pc", "q35", "microvm", "isapc"), "pyaxvisor.boards.x86_pc.board"),
    BoardEntry("riscv64", ("virt",), "pyaxvisor.boards.riscv64_virt.board"),
]


def register(entry: BoardEntry) -> None:
    """Add a board (before the existing ones of its architecture: it becomes the
    architecture's default). Its machine names must be new for its architecture
    (QEMU's ``virt`` names a machine of several)."""
    taken = {m for e in _REGISTRY if e.arch == entry.arch for m in e.machines}
    clash = taken.intersection(entry.machines)
    if clash:
        raise InvalidInput(f"{entry.arch} machine names {sorted(clash)} belong to another "
                           "board")
    _REGISTRY.insert(0, entry)


def arches() -> list[str]:
    """The architectures some board emulates."""
    return sorted({e.arch for e in _REGISTRY})


def arches_of_machine(machine: str | None) -> list[str]:
    """The architectures that have a machine called ``-M machine`` (options after a
    comma ignored), the default first: ``virt`` is both aarch64's and riscv64's."""
    name = (machine or "").split(",")[0]
    found = [e.arch for e in _REGISTRY if name in e.machines]
    return sorted(set(found), key=found.index)


def arch_of_machine(machine: str | None) -> str | None:
    """The (first) architecture of ``-M machine``, if some board has it."""
    found = arches_of_machine(machine)
    return found[0] if found else None


def entry_for(arch: str, machine: str | None = None) -> BoardEntry:
    """The board for ``arch`` named ``machine`` (its default board without one)."""
    name = (machine or "").split(",")[0]
    entries = [e for e in _REGISTRY if e.arch == arch]
    if not entries:
        raise InvalidInput(f"no board emulates {arch!r}: choose one of {', '.join(arches())}")
    for e in entries:
        if not name or name in e.machines:
            return e
    return entries[0]  # its board refuses the machine with its own message


def board_class(arch: str, machine: str | None = None) -> type[Board]:
    """Import and return the board class for ``arch``/``machine`` (see
    :func:`entry_for`), after it checked the machine name."""
    cls: type[Board] = importlib.import_module(entry_for(arch, machine).module).BOARD
    return cls

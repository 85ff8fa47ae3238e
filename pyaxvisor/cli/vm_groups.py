"""How one ``pyaxvisor run`` command line names several VMs.

Two spellings, never mixed with one another in a way that leaves a doubt:

* ``pyaxvisor run a.toml b.toml [FLAGS]``: every AxVisor VM config file is one VM
  and every flag applies to each of them (``--timeout 30`` is each VM's).
* ``pyaxvisor run [COMMON] --vm [FLAGS] [CONFIG] --vm [FLAGS] [CONFIG] ...``: each
  ``--vm`` starts one VM, made of the flags up to the next ``--vm`` and at most one
  config file. The flags before the first ``--vm`` (``COMMON``) are every VM's: they
  are put in front of each VM's own, so a VM's single-valued flag wins over a common
  one (``--timeout 10 --vm --timeout 60 --vm`` gives 60 s and 10 s) and repeatable
  ones add up (``-device``, ``-drive``). A config file among the common flags is
  refused (it would be every VM's: one disk, one name); a ``--vm`` with nothing after
  it is a VM of the common flags alone (the bundled guest without any).

Finding the config files needs to know which flags take a value: :func:`split` is
given that (:func:`value_options` reads it from the click command); a flag it does
not know is taken to take no value, and the command's own parser then refuses it
within its VM. One VM without ``--vm`` is not this module's: ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import click

from pyaxvisor.errors import InvalidInput

__all__ = ["VM_FLAG", "VmArgs", "split", "value_options"]

#: The word that starts a VM's group of flags.
VM_FLAG = "--vm"


@dataclass(frozen=True)
class VmArgs:
    """One VM's command line: ``label`` names it in messages before the VM has a name
    (``--vm group 2``, or its config file), ``args`` are the flags and the config file
    as the single-VM command takes them (the common flags first)."""

    label: str
    args: tuple[str, ...]


def value_options(command: click.Command) -> frozenset[str]:
    """The option spellings of ``command`` that take a value (``-kernel``, ``-m``...)."""
    names: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option) and not param.is_flag and not param.count:
            names.update(param.opts)
            names.update(param.secondary_opts)
    return frozenset(names)


def split(args: Sequence[str], takes_value: frozenset[str]) -> list[VmArgs] | None:
    """The VMs ``args`` ask for, in command-line order, or None when they ask for one
    VM in the single-VM spelling (no ``--vm``, at most one config file). Raises
    :class:`InvalidInput` for a config file before the first ``--vm`` or two in one
    group."""
    common: list[str] = []
    groups: list[list[str]] = []
    files: list[list[str]] = [[]]  # config files of the common part, then of each group
    current = common
    expect_value = only_positional = False
    for word in args:
        if expect_value:
            current.append(word)
            expect_value = False
        elif not only_positional and word == VM_FLAG:
            current = []
            groups.append(current)
            files.append([])
        elif not only_positional and word == "--":
            only_positional = True
        elif not only_positional and word.startswith("-") and word != "-":
            current.append(word)
            expect_value = word in takes_value  # not "--timeout=5" nor "-m512M"
        else:
            files[-1].append(word)
    if not groups:
        if len(files[0]) < 2:
            return None
        return [VmArgs(path, (*common, *_as_file(path))) for path in files[0]]
    if files[0]:
        raise InvalidInput(f"the config file {files[0][0]} comes before the first {VM_FLAG}: "
                           f"it would be every VM's; put it after the {VM_FLAG} of its VM")
    vms = []
    for number, (group, own) in enumerate(zip(groups, files[1:], strict=True), 1):
        if len(own) > 1:
            raise InvalidInput(f"{VM_FLAG} group {number} has {len(own)} config files "
                               f"({', '.join(own)}): one VM takes at most one")
        vms.append(VmArgs(own[0] if own else f"{VM_FLAG} group {number}",
                          (*common, *group, *(_as_file(own[0]) if own else ()))))
    return vms


def _as_file(path: str) -> tuple[str, ...]:
    """The words that give ``path`` as the config file (after ``--`` when it looks like
    an option)."""
    return ("--", path) if path.startswith("-") and path != "-" else (path,)

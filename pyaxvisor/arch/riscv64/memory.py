"""Guest-physical memory as the RISC-V software CPU sees it.

Without the H extension no hardware walks the G-stage table that
:mod:`pyaxvisor.mm` builds (Sv39x4/Sv48x4, the VM's record of guest physical
memory); the engine maps the same memory itself, guest physical = engine physical.
:func:`ram_mappings` derives the engine's RAM from the table: every leaf whose
output lies in the host arena becomes RAM at its guest-physical address, backed
zero-copy by the arena at ``hal.phys_to_virt(hpa)``, with the leaf's permissions;
neighbouring leaves that continue each other in guest and host memory with the
same permissions are one mapping. Leaves that point outside the arena (an
``AddrSpace.map_mmio_window``) are not RAM: accesses there fault to the hypervisor
unless the vCPU serves that window in-CPU.

The vCPU keeps the engine equal to this after every change of the address space
(``AddrSpace.add_listener``): :func:`ram_mappings` is what
``Riscv64Tcg.mappings()`` must return.
"""

from __future__ import annotations

from unicorn import UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE

from pyaxvisor.engine.tcg.riscv64 import RamMapping
from pyaxvisor.errors import NotFound
from pyaxvisor.mm.addr import HostPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.flags import MappingFlags

_UC_PROT = ((MappingFlags.READ, UC_PROT_READ), (MappingFlags.WRITE, UC_PROT_WRITE),
            (MappingFlags.EXECUTE, UC_PROT_EXEC))


def uc_perms(flags: MappingFlags) -> int:
    """Unicorn permissions of a G-stage leaf's flags."""
    return sum(prot for flag, prot in _UC_PROT if flags & flag)


def ram_mappings(space: AddrSpace) -> list[RamMapping]:
    """The RAM the engine must map for ``space`` (see the module docstring)."""
    table = space.page_table
    if table is None:
        return []
    hal = space.hal
    runs: list[RamMapping] = []
    for leaf_gpa, hpa, size, flags in table.mappings():
        gpa = int(leaf_gpa)
        try:
            hva = int(hal.phys_to_virt(hpa))
            hal.phys_to_virt(HostPhysAddr(int(hpa) + size - 1))
        except NotFound:
            continue  # not host memory: a device window's target
        perms = uc_perms(flags)
        last = runs[-1] if runs else None
        if last is not None and last.end == gpa and last.hva + last.size == hva \
                and last.perms == perms:
            runs[-1] = last._replace(size=last.size + size)
        else:
            runs.append(RamMapping(gpa, size, hva, perms))
    return runs


def find_mapping(mappings: list[RamMapping], gpa: int) -> RamMapping | None:
    """The mapping holding guest-physical ``gpa``, if any."""
    for m in mappings:
        if m.gpa <= gpa < m.end:
            return m
    return None

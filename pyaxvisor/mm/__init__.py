"""Guest memory (axaddrspace): typed addresses, nested page tables, address spaces.

The package root only re-exports the leaf types (addresses, flags), because the
HAL itself uses them; ``pyaxvisor.mm.addrspace``, ``pyaxvisor.mm.page_table`` and
``pyaxvisor.mm.nested`` build on the HAL and are imported from their modules.
"""

from pyaxvisor.mm.addr import GuestPhysAddr, GuestVirtAddr, HostPhysAddr, HostVirtAddr
from pyaxvisor.mm.flags import AccessFlags, MappingFlags

__all__ = [
    "AccessFlags", "GuestPhysAddr", "GuestVirtAddr", "HostPhysAddr", "HostVirtAddr",
    "MappingFlags",
]

"""Nested (second-stage) page tables in the architectures' real binary formats.

:class:`NestedPageTable` implements map/unmap/protect/translate once; a
:class:`PteFormat` supplies one architecture's descriptors and geometry:
:class:`EptFormat` (x86-64 EPT), :class:`Stage2Format` (AArch64 stage-2, 4 KiB
granule) and :class:`Sv39x4Format` / :class:`Sv48x4Format` (RISC-V G-stage).
The ``*PageTable`` subclasses add the register values that point hardware at a
table (EPTP, VTCR_EL2/VTTBR_EL2, hgatp).
"""

from pyaxvisor.mm.page_table.ept import EptFormat, EptPageTable, eptp
from pyaxvisor.mm.page_table.format import Pte, PteFormat
from pyaxvisor.mm.page_table.gstage import (
    GStageFormat,
    GStagePageTable,
    Sv39x4Format,
    Sv48x4Format,
)
from pyaxvisor.mm.page_table.stage2 import Stage2Format, Stage2PageTable
from pyaxvisor.mm.page_table.table import MappingExists, NestedPageTable, NotMapped, WalkStep

__all__ = [
    "EptFormat", "EptPageTable", "GStageFormat", "GStagePageTable", "MappingExists",
    "NestedPageTable", "NotMapped", "Pte", "PteFormat", "Stage2Format", "Stage2PageTable",
    "Sv39x4Format", "Sv48x4Format", "WalkStep", "eptp",
]

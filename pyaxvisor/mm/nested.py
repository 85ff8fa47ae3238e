"""Pick the nested page-table format an architecture's hardware walks.

``x86_64`` → 4-level EPT; ``aarch64`` → VMSAv8-64 stage-2 with a 4 KiB granule
(``ipa_bits`` 32..48, default 40 as QEMU's ``virt`` board); ``riscv64`` → Sv39x4
(``riscv_mode="sv48x4"`` for 50-bit guest physical addresses).
"""

from __future__ import annotations

from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal.vcpu_hal import VCpuHal
from pyaxvisor.mm.page_table import EptPageTable, GStagePageTable, NestedPageTable, Stage2PageTable

ARCHES = ("x86_64", "aarch64", "riscv64")


def nested_page_table(hal: VCpuHal, arch: str, *, ipa_bits: int = 40,
                      riscv_mode: str = "sv39x4") -> NestedPageTable:
    if arch == "x86_64":
        return EptPageTable(hal)
    if arch == "aarch64":
        return Stage2PageTable(hal, ipa_bits=ipa_bits)
    if arch == "riscv64":
        return GStagePageTable(hal, mode=riscv_mode)
    raise InvalidInput(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHES)}")

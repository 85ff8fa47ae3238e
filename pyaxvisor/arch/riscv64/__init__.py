"""RISC-V 64 (riscv_vcpu) on the software CPU: the per-CPU state, the vCPU, SBI,
and the decoding of guest traps.

The CPU (Unicorn's RV64GC, misa ``RV64ACDFIMSU``) has no hypervisor extension, so
pyaxvisor takes the software path: guests run in real S-mode and pyaxvisor is their
M-mode firmware (the SBI implementation) and hypervisor. ``RISCVPerCpu.has_hardware_support``
reads misa's H bit for real and reports support through the software path when it
is absent (as it is here). The G-stage table of the VM's address space (Sv39x4 or
Sv48x4, hgatp format) stays the record of guest physical memory; the engine maps
exactly the same RAM, and PMP plus a native memory hook make every other
guest-physical access fault into pyaxvisor.

Modules: :mod:`.pcpu` (host CPU set-up: delegation, mstatus.TW),
:mod:`.vcpu` (the vCPU and its configurations), :mod:`.traps` (traps to M-mode),
:mod:`.sbi` (SBI v2.0), :mod:`.decode` (load/store decoding, guest page walks),
:mod:`.context` (state carried between host CPUs), :mod:`.memory` (the engine's RAM
from the G-stage table).
"""

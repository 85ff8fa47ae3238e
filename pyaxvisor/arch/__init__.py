"""Architecture-specific vCPU support (one sub-package per architecture), and what the
vCPUs on the software CPU share: :mod:`.soft_cpu` (per-CPU state owning the thread's
engine; kick and TLB-flush requests) and :mod:`.in_cpu` (device windows served inside
the CPU)."""

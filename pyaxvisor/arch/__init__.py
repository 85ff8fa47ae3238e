"""Architecture-specific vCPU support (one sub-package per architecture)."""

"""The AArch64 QEMU ``virt`` board on the software EL2: see :mod:`.board`.

Kept free of imports: the board (the software CPU, the GIC) is imported only
when a VM uses it.
"""

"""The RISC-V 64 QEMU ``virt`` board on the software engine: see :mod:`.board`.

Kept free of imports: the board (the software CPU, the PLIC) is imported only when
a VM uses it.
"""

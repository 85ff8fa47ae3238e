"""The x86_64 PC board on KVM (``pc``, ``q35``, ``microvm``): see :mod:`.board`.

Kept free of imports: :mod:`.layout` is a leaf the loaders read, and the board
itself (KVM, devices) is imported only when a VM uses it.
"""

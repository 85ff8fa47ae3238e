"""A gdb remote-protocol stub (``-s``, ``-S``, ``-gdb``), independent of any architecture.

:mod:`~pyaxvisor.gdb.packets` frames the protocol's packets, :mod:`~pyaxvisor.gdb.target`
names what the stub needs of a machine (:class:`~pyaxvisor.gdb.target.DebugTarget`),
:mod:`~pyaxvisor.gdb.stub` answers one client's packets and :mod:`~pyaxvisor.gdb.server`
listens for clients (TCP on loopback, or a Unix socket).
"""

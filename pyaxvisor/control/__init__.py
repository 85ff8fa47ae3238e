"""Controlling a running VM from outside: the QMP server (:mod:`.qmp`), its commands
(:mod:`.commands`) and the addresses it listens on (:mod:`.address`)."""

"""The generic VM (axvm): one :class:`~pyaxvisor.vm.vm.Vm` for every architecture,
described by a :class:`~pyaxvisor.vm.config.VmConfig` and built on the
:class:`~pyaxvisor.vm.board.Board` of its machine. Nothing here knows an
architecture: boards (:mod:`pyaxvisor.boards`) plug them in."""

"""``python -m pyaxvisor.cli``: the ``pyaxvisor`` command."""

from pyaxvisor.cli import main

main()

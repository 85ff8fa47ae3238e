"""Interrupt wiring between devices and interrupt controllers.

A device raises or lowers an input line of an interrupt controller through an
:class:`IrqLine`; the controller decides which CPU sees it. Lines are level
semantics (``set_level(True)`` asserts, ``False`` deasserts); an edge is
``pulse()``.
"""

from __future__ import annotations

from typing import Protocol


class IrqSink(Protocol):
    """An interrupt controller's input side."""

    def set_irq_level(self, irq: int, level: bool) -> None: ...


class IrqLine:
    """One wire from a device to input ``irq`` of ``sink``."""

    __slots__ = ("irq", "level", "sink")

    def __init__(self, sink: IrqSink, irq: int) -> None:
        self.sink = sink
        self.irq = irq
        self.level = False

    def set_level(self, level: bool) -> None:
        if level != self.level:
            self.level = level
            self.sink.set_irq_level(self.irq, level)

    def pulse(self) -> None:
        self.sink.set_irq_level(self.irq, True)
        self.sink.set_irq_level(self.irq, False)
        self.level = False


class NullIrqSink:
    """A sink that records the level of each line (unconnected boards, tests)."""

    def __init__(self) -> None:
        self.levels: dict[int, bool] = {}

    def set_irq_level(self, irq: int, level: bool) -> None:
        self.levels[irq] = level

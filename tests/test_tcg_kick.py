"""An interrupt line raised from another thread reaches a running software CPU without
stopping it: the CPU is kicked and writes the line itself before its next block (the
cpu-kick engine patch, as QEMU's cpu_interrupt does for another thread's vCPU). On a
library without the patch the CPU is stopped and entered again instead."""

from __future__ import annotations

import threading

from aarch64_machine import Machine as Aarch64Machine
from machines import machine_fixture
from riscv64_machine import Machine as Riscv64Machine

from pyaxvisor.engine.tcg.common import unicorn_build
from pyaxvisor.engine.tcg.riscv64_isa import INTERRUPT
from pyaxvisor.vcpu import Hypercall, SystemDown

KICK = "cpu-kick" in unicorn_build().patches
aarch64 = machine_fixture(Aarch64Machine)
riscv64 = machine_fixture(Riscv64Machine)


def test_an_irq_line_raised_elsewhere_is_taken_by_the_running_aarch64_cpu(aarch64):
    m = aarch64("exceptions")
    v = m.vcpu
    threading.Timer(0.05, v.arch.set_irq_line, args=(True,)).start()
    exits = []
    while not exits or not isinstance(exits[-1], Hypercall):
        exits.append(v.run())
    assert len(exits) == 1                                   # the IRQ needed no exit
    assert v.arch.ctx.elr == m.symbols["irq_done"]           # the guest's IRQ handler ran
    svc_at = m.symbols["user"]
    assert svc_at + 8 <= m.result(0x40) <= svc_at + 16       # taken in the spin loop
    stats = v.arch.engine.stats
    if KICK:
        assert (stats["preempt_stops"], stats["virq_kicks"]) == (0, 1)
    else:
        assert stats["preempt_stops"] >= 1


def test_an_ipi_raised_elsewhere_is_taken_by_the_running_riscv64_hart(riscv64):
    m = riscv64("ipi")
    threading.Timer(0.05, m.arch.set_software_line, args=(True,)).start()
    assert m.run() == SystemDown(reset=False)
    assert m.result(0x00) == INTERRUPT | 1                   # supervisor software interrupt
    stats = m.arch.engine.stats
    if KICK:
        assert stats["preempt_stops"] == 0 and stats["line_updates"] >= 1
    else:
        assert stats["preempt_stops"] >= 1

"""The hostile-guest cases both software-CPU architectures share, run on each: an
endless loop stopped by the timeout, and an MMIO storm on the UART. The guests, the
VMs and what each architecture's guest records are in ``test_hostile_aarch64.py`` and
``test_hostile_riscv64.py``."""

from __future__ import annotations

import pytest
import test_hostile_aarch64 as aarch64
import test_hostile_riscv64 as riscv64
from hostile import check_stopped_in_loop, check_storm

SUITES = {"aarch64": aarch64, "riscv64": riscv64}


@pytest.mark.parametrize("arch", sorted(SUITES))
def test_an_endless_loop_is_stopped_by_the_timeout_which_says_where_each_vcpu_is(alongside,
                                                                                    arch):
    suite = SUITES[arch]
    run = alongside(lambda: suite.run_hostile("hostile_loop", smp=2, timeout=1.0),
                    suite.bystander)
    check_stopped_in_loop(run, suite.pcs(run.result.state), suite.sym("hostile_loop", "spin"),
                          suite.sym("hostile_loop", "spin_end"))


@pytest.mark.parametrize("arch", sorted(SUITES))
@pytest.mark.parametrize("trap_mmio", [False, True], ids=["in-cpu", "every-access-exits"])
def test_an_mmio_storm_is_served_and_counted(alongside, arch, trap_mmio):
    suite, count = SUITES[arch], 4000
    run = alongside(lambda: suite.run_hostile("hostile_mmio_storm", trap_mmio=trap_mmio),
                    suite.bystander)
    check_storm(run, count, trap_mmio)
    suite.check_storm_registers(run, count)

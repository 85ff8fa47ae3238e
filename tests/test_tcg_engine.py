"""The software-CPU engine: its start-up self-test and native hooks."""

from __future__ import annotations

import pytest

from pyaxvisor.engine.tcg import aarch64 as eng
from pyaxvisor.engine.tcg.aarch64 import Aarch64Tcg, SelfTestFailed
from pyaxvisor.hal import HostMemory


def test_self_test_locates_the_exception_record():
    layout = eng.self_test()
    assert layout.record > 0 and layout.xregs > 0 and layout.pc > 0


def test_self_test_refuses_when_a_known_syndrome_is_not_found(monkeypatch):
    # Pretend the CPU reports a different syndrome: the expected 0x5A00ABCD is then
    # nowhere in the state and the engine must refuse rather than guess.
    monkeypatch.setattr(eng, "_hvc", lambda imm: 0xD4000002 | (0x1111 << 5))
    with pytest.raises(SelfTestFailed, match=r"0x5A00ABCD.*refusing to guess"):
        eng._run_self_test()


def test_memory_arenas_must_not_overlap():
    a = HostMemory(2 << 20)
    b = HostMemory(2 << 20)  # same default physical base
    try:
        engine = Aarch64Tcg()
        engine.attach_memory(a)
        engine.attach_memory(a)  # idempotent
        with pytest.raises(eng.EngineError, match="overlaps"):
            engine.attach_memory(b)
    finally:
        a.close()
        b.close()


def test_stop_request_before_run_returns_at_once():
    engine = Aarch64Tcg()
    engine.request_stop()
    trap = engine.run(0x1000)
    assert trap.kind is eng.TrapKind.PREEMPTED and trap.pc == 0x1000


def test_the_cpu_translates_with_4k_pages():
    """The TLB and code tracking work on the 4 KiB pages an ARMv8 CPU has (QEMU's
    choice), not Unicorn's ARMv5 default of 1 KiB (four TLB fills per page)."""
    engine = Aarch64Tcg()
    assert engine._uc.ctl_get_page_size() == eng.TARGET_PAGE_SIZE == 4096

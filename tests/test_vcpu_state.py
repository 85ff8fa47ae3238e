"""The VCpu wrapper's state machine and call order, driven through a recording mock."""

from __future__ import annotations

import threading

import pytest
from mock_arch import MockArchVCpu, MockCreateConfig, MockSetupConfig

from pyaxvisor.errors import BadState, InvalidInput, Unsupported
from pyaxvisor.mm.addr import GuestPhysAddr, HostPhysAddr
from pyaxvisor.vcpu import (
    AccessWidth,
    ArchOperationFailed,
    Halt,
    IoRead,
    MmioRead,
    NestedVCpuOperation,
    PendingRead,
    SysRegRead,
    VCpu,
    VCpuState,
    VCpuStateError,
    WrongHostCpu,
    get_bound_vcpu,
    get_current_vcpu,
)

S = VCpuState
ENTRY = GuestPhysAddr(0x4008_0000)
ROOT = HostPhysAddr(0x40_0000_3000)


def make(vcpu_id: int = 0) -> VCpu[MockArchVCpu]:
    return VCpu(1, vcpu_id, MockArchVCpu, MockCreateConfig())


def to_state(state: VCpuState, vcpu_id: int = 0) -> VCpu[MockArchVCpu]:
    v = make(vcpu_id)
    if state is S.Created:
        return v
    if state is S.Invalid:
        v.arch.fail_in.add("bind")
        v.setup(ENTRY, ROOT, MockSetupConfig())
        with pytest.raises(ArchOperationFailed):
            v.bind()
        return v
    v.setup(ENTRY, ROOT, MockSetupConfig())
    if state is S.Free:
        return v
    v.bind()
    if state is S.Blocked:
        v.block()
    return v


@pytest.fixture(autouse=True)
def _unbind_leftovers():
    yield
    bound = get_bound_vcpu()
    if bound is not None and bound.state is S.Ready:
        bound.unbind()
    from pyaxvisor.vcpu import current

    current._set_bound(None)


def test_new_creates_and_records_ids():
    v = make(3)
    assert v.state is S.Created
    assert v.arch.calls == [("new", 1, 3)]
    assert (v.vm_id, v.vcpu_id) == (1, 3)


def test_setup_calls_entry_then_ept_root_then_setup():
    v = make()
    cfg = MockSetupConfig()
    v.setup(ENTRY, ROOT, cfg)
    assert v.state is S.Free
    assert v.arch.calls[1:] == [("set_entry", ENTRY), ("set_ept_root", ROOT), ("setup", cfg)]


def test_full_lifecycle_states():
    v = make()
    v.setup(ENTRY, ROOT, MockSetupConfig())
    v.bind()
    assert v.state is S.Ready
    assert get_bound_vcpu() is v
    v.arch.exits.append(Halt())
    assert v.run() == Halt()
    assert v.state is S.Ready
    assert v.last_exit == Halt()
    v.unbind()
    assert v.state is S.Free
    assert get_bound_vcpu() is None
    assert [c[0] for c in v.arch.calls] == ["new", "set_entry", "set_ept_root", "setup",
                                            "bind", "run", "unbind"]


def test_state_is_running_during_run_and_current_is_set():
    v = to_state(S.Ready)
    seen = {}

    def during():
        seen["state"] = v.state
        seen["current"] = get_current_vcpu()

    v.arch.on_run = during
    v.run()
    assert seen == {"state": S.Running, "current": v}
    assert get_current_vcpu() is None


# Which operation is allowed in which state (everything else must fail and change nothing).
OPS = {
    "setup": ({S.Created}, lambda v: v.setup(ENTRY, ROOT, MockSetupConfig())),
    "bind": ({S.Free}, lambda v: v.bind()),
    "unbind": ({S.Ready}, lambda v: v.unbind()),
    "run": ({S.Ready}, lambda v: v.run()),
    "block": ({S.Ready}, lambda v: v.block()),
    "set_gpr": ({S.Created, S.Free, S.Ready, S.Blocked}, lambda v: v.set_gpr(1, 5)),
    "set_return_value": ({S.Created, S.Free, S.Ready, S.Blocked},
                         lambda v: v.set_return_value(7)),
    "inject_interrupt": ({S.Free, S.Ready, S.Running, S.Blocked},
                         lambda v: v.inject_interrupt(33)),
}
STATES = [S.Created, S.Free, S.Ready, S.Blocked, S.Invalid]


WRONG = [(op, st) for op in sorted(OPS) for st in STATES if st not in OPS[op][0]]


@pytest.mark.parametrize(("op", "state"), WRONG, ids=[f"{o}-{s.name}" for o, s in WRONG])
def test_wrong_state_is_refused_and_leaves_vcpu_unchanged(op, state):
    allowed, call = OPS[op]
    v = to_state(state)
    calls_before = list(v.arch.calls)
    with pytest.raises(VCpuStateError) as info:
        call(v)
    err = info.value
    assert err.current is state
    assert set(err.expected) == allowed
    assert state.name in str(err) and op in str(err)
    for s in allowed:
        assert s.name in str(err)
    assert v.state is state
    assert v.arch.calls == calls_before


@pytest.mark.parametrize("op", ["setup", "bind", "unbind", "run", "set_gpr"])
def test_operations_refused_while_running_from_another_thread(op):
    v = to_state(S.Ready)
    errors: list[BaseException] = []

    def attempt():
        try:
            OPS[op][1](v)
        except BaseException as exc:
            errors.append(exc)

    def during():
        t = threading.Thread(target=attempt)
        t.start()
        t.join()

    v.arch.on_run = during
    v.run()
    assert len(errors) == 1
    # unbind/run from a foreign thread fail on the thread check, others on the state
    assert isinstance(errors[0], VCpuStateError | WrongHostCpu)
    if isinstance(errors[0], VCpuStateError):
        assert errors[0].current is S.Running
    assert v.state is S.Ready


def test_failing_arch_setup_invalidates():
    v = make()
    with pytest.raises(ArchOperationFailed) as info:
        v.setup(ENTRY, ROOT, MockSetupConfig(fail_in={"setup"}))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert v.state is S.Invalid


@pytest.mark.parametrize("failing", ["set_entry", "set_ept_root"])
def test_failing_entry_or_root_stops_setup_at_that_point(failing):
    v = make()
    v.arch.fail_in.add(failing)
    with pytest.raises(ArchOperationFailed):
        v.setup(ENTRY, ROOT, MockSetupConfig())
    names = [c[0] for c in v.arch.calls]
    assert names[-1] == failing and "setup" not in names
    assert v.state is S.Invalid


def test_failing_run_invalidates_and_axerror_passes_through():
    v = to_state(S.Ready)
    v.arch.fail_in.add("run")
    with pytest.raises(ArchOperationFailed, match="mock run failure"):
        v.run()
    assert v.state is S.Invalid

    v.arch.fail_in.clear()
    w = to_state(S.Free, 1)

    def raise_unsupported():
        raise Unsupported("register X")

    w.arch.bind = raise_unsupported  # type: ignore[method-assign]
    with pytest.raises(Unsupported):
        w.bind()
    assert w.state is S.Invalid


def test_failing_new_raises_typed_error():
    with pytest.raises(ArchOperationFailed, match="mock new failure"):
        VCpu(1, 0, MockArchVCpu, MockCreateConfig(fail_new=True))


def test_config_types_are_checked():
    with pytest.raises(InvalidInput, match="MockCreateConfig"):
        VCpu(1, 0, MockArchVCpu, object())
    v = make()
    with pytest.raises(InvalidInput, match="MockSetupConfig"):
        v.setup(ENTRY, ROOT, object())
    with pytest.raises(InvalidInput, match="GuestPhysAddr"):
        v.setup(0x1000, ROOT, MockSetupConfig())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="HostPhysAddr"):
        v.setup(ENTRY, GuestPhysAddr(0x1000), MockSetupConfig())  # type: ignore[arg-type]
    assert v.state is S.Created
    assert v.arch.calls == [("new", 1, 0)]


def test_bad_register_argument_does_not_invalidate():
    v = to_state(S.Ready)
    with pytest.raises(InvalidInput, match="no GPR 99"):
        v.set_gpr(99, 1)
    assert v.state is S.Ready
    v.set_gpr(4, 0xDEAD)
    assert v.arch.gprs[4] == 0xDEAD
    v.set_return_value(0x55)
    assert v.arch.gprs[0] == 0x55


def test_nested_operation_is_refused():
    outer = to_state(S.Ready, 0)
    inner = make(1)
    seen: list[BaseException] = []

    def during():
        try:
            inner.setup(ENTRY, ROOT, MockSetupConfig())
        except NestedVCpuOperation as exc:
            seen.append(exc)

    outer.arch.on_run = during
    outer.run()
    assert len(seen) == 1
    assert "vCPU 0" in str(seen[0]) and "nested" in str(seen[0])
    assert inner.state is S.Created  # refused before anything happened
    assert outer.state is S.Ready


def test_one_bound_vcpu_per_host_thread():
    a = to_state(S.Ready, 0)
    b = to_state(S.Free, 1)
    with pytest.raises(WrongHostCpu, match="vCPU 0"):
        b.bind()
    assert b.state is S.Free
    a.unbind()
    b.bind()
    assert get_bound_vcpu() is b


def test_run_from_foreign_thread_is_refused():
    v = to_state(S.Ready)
    errors = []
    t = threading.Thread(target=lambda: errors.append(_catch(v.run)))
    t.start()
    t.join()
    assert isinstance(errors[0], WrongHostCpu)
    assert v.state is S.Ready


def _catch(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    return None


READS = [
    (MmioRead(GuestPhysAddr(0x900_0000), AccessWidth.Byte, 3, AccessWidth.Qword, True), 0x80,
     3, 0xFFFF_FFFF_FFFF_FF80),
    (MmioRead(GuestPhysAddr(0x900_0000), AccessWidth.Word, 5, AccessWidth.Dword, True), 0x8001,
     5, 0xFFFF_8001),
    (MmioRead(GuestPhysAddr(0x900_0000), AccessWidth.Word, 6, AccessWidth.Qword, False),
     0x1_8001, 6, 0x8001),
    (SysRegRead(0x3A_0000, 9), 0x1234_5678_9ABC_DEF0, 9, 0x1234_5678_9ABC_DEF0),
]


@pytest.mark.parametrize(("exit_reason", "value", "reg", "expected"), READS)
def test_read_exit_must_be_completed_before_next_run(exit_reason, value, reg, expected):
    v = to_state(S.Ready)
    v.arch.exits.append(exit_reason)
    assert v.run() == exit_reason
    assert v.pending_read == exit_reason
    with pytest.raises(PendingRead):
        v.run()
    assert v.state is S.Ready
    v.complete_read(value)
    assert v.arch.gprs[reg] == expected
    assert v.pending_read is None
    v.run()


def test_complete_read_without_pending_read_is_refused():
    v = to_state(S.Ready)
    v.run()
    with pytest.raises(BadState, match="without a pending read"):
        v.complete_read(1)


def test_port_read_on_an_architecture_without_ports_is_unsupported():
    v = to_state(S.Ready)
    v.arch.exits.append(IoRead(0x3F8, AccessWidth.Byte))
    v.run()
    with pytest.raises(Unsupported, match="no port I/O"):
        v.complete_read(0x41)
    assert v.state is S.Invalid


def test_blocked_vcpu_is_woken_by_interrupt_from_another_thread():
    v = to_state(S.Ready)
    v.block()
    assert v.state is S.Blocked
    assert v.wait_while_blocked(timeout=0.01) is False
    t = threading.Thread(target=lambda: v.inject_interrupt(27))
    t.start()
    assert v.wait_while_blocked(timeout=5) is True
    t.join()
    assert v.state is S.Ready
    assert v.arch.injected == [27]


def test_wake_only_acts_on_blocked():
    v = to_state(S.Ready)
    assert v.wake() is False
    assert v.state is S.Ready
    v.block()
    assert v.wake() is True
    assert v.state is S.Ready


def test_inject_bad_vector_keeps_state():
    v = to_state(S.Free)
    with pytest.raises(InvalidInput):
        v.inject_interrupt(-1)
    assert v.state is S.Free


def test_run_returning_garbage_is_an_error():
    v = to_state(S.Ready)
    v.arch.exits.append("not an exit")  # type: ignore[arg-type]
    with pytest.raises(ArchOperationFailed, match="not an ExitReason"):
        v.run()
    assert v.state is S.Invalid

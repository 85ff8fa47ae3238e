"""Vm.pause/resume: every vCPU stops running guest code and starts again; interrupts
raised while paused reach the guest after it resumes; the VM's events; --timeout
counts paused time. The generic part on the scripted vCPUs of the fake board, the
guests' part on the software CPUs' spinning guests (their counter must freeze)."""

from __future__ import annotations

import struct
import threading
import time

import fake_board
import pytest
from guest_build import build

import pyaxvisor
from pyaxvisor import boards
from pyaxvisor.boards.quick import config_for, x86_vm
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.errors import BadState
from pyaxvisor.vcpu import Halt, VCpuState
from pyaxvisor.vm.vm import Vm


@pytest.fixture
def fake_vm(monkeypatch):
    monkeypatch.setattr(boards, "_REGISTRY", list(boards._REGISTRY))
    boards.register(boards.BoardEntry("fake64", ("fakeboard",), "fake_board"))
    monkeypatch.setattr(fake_board.FakeBoard, "scripts", {})
    made = []

    def make(smp=1, scripts=None):
        fake_board.FakeBoard.scripts = scripts or {}
        config = config_for("fake64", memory=16 << 20, smp=smp)
        vm = Vm(config, fake_board.FakeBoard(config))
        made.append(vm)
        return vm

    yield make
    for vm in made:
        vm.close()


def _start(vm, timeout=30.0):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", vm.run(timeout=timeout)))
    t.start()
    return t, out


def _wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def _runs(vcpu) -> int:
    return sum(1 for call in vcpu.arch.calls if call == ("run",))


def test_pause_parks_every_vcpu_and_resume_runs_them_again(fake_vm):
    vm = fake_vm()
    events = []
    vm.events.subscribe(lambda name, data: events.append((name, data)))
    t, out = _start(vm)
    try:
        _wait_until(lambda: vm.vcpu(0) is not None and _runs(vm.vcpu(0)) > 100)
        vm.pause()
        assert vm.paused and vm.pause_gate.parked == {0}
        frozen = _runs(vm.vcpu(0))
        time.sleep(0.2)
        assert _runs(vm.vcpu(0)) == frozen  # no run() while paused
        vm.pause()  # already paused: nothing happens, no second STOP
        vm.resume()
        _wait_until(lambda: _runs(vm.vcpu(0)) > frozen + 100)
        vm.resume()  # not paused: nothing
        assert not vm.paused
    finally:
        vm.quit()
        t.join(10)
    assert out["r"].reason == "quit"
    assert events == [("STOP", {}), ("RESUME", {}),
                      ("SHUTDOWN", {"guest": False, "reason": "host-ui"})]


def test_an_interrupt_raised_while_paused_wakes_a_halted_vcpu_only_after_resume(fake_vm):
    vm = fake_vm(scripts={0: [Halt()]})
    t, out = _start(vm)
    try:
        _wait_until(lambda: vm.vcpu(0) is not None and vm.vcpu(0).state is VCpuState.Blocked)
        vcpu = vm.vcpu(0)
        before = _runs(vcpu)
        vm.pause()  # a halted vCPU counts as stopped
        vcpu.inject_interrupt(33)  # wakes it from the halt ...
        _wait_until(lambda: vm.pause_gate.parked == {0})  # ... into the parking spot
        time.sleep(0.1)
        assert _runs(vcpu) == before  # it did not enter the guest
        assert vcpu.arch.injected == [33]  # the interrupt is queued for its next entry
        vm.resume()
        _wait_until(lambda: _runs(vcpu) > before)
    finally:
        vm.quit()
        t.join(10)
    assert out["r"].reason == "quit"


def test_a_vcpu_started_while_paused_parks_before_it_runs(fake_vm):
    vm = fake_vm()
    vm.pause()  # before the VM runs: vCPU 0 parks before its first run()
    t, out = _start(vm)
    try:
        _wait_until(lambda: vm.pause_gate.parked == {0})
        assert _runs(vm.vcpu(0)) == 0
        vm.resume()
        _wait_until(lambda: _runs(vm.vcpu(0)) > 0)
    finally:
        vm.quit()
        t.join(10)
    assert out["r"].reason == "quit"


def test_the_timeout_counts_paused_time_and_ends_a_paused_vm(fake_vm):
    vm = fake_vm()
    vm.pause()
    t0 = time.monotonic()
    result = vm.run(timeout=0.5)
    assert result.reason == "timeout"
    assert time.monotonic() - t0 < 5
    with pytest.raises(BadState, match="the VM has ended: there is nothing to pause"):
        vm.pause()
    with pytest.raises(BadState, match="the VM has ended: there is nothing to resume"):
        vm.resume()


def test_a_vcpu_that_does_not_stop_is_named_and_the_vm_stays_paused(fake_vm):
    vm = fake_vm()
    release = threading.Event()
    t, out = _start(vm)
    try:
        _wait_until(lambda: vm.vcpu(0) is not None)
        inside = threading.Event()

        def stuck() -> None:  # a run() that ignores kicks
            inside.set()
            release.wait(5)

        vm.vcpu(0).arch.on_run = stuck
        assert inside.wait(10)
        with pytest.raises(BadState, match=r"vCPU 0 did not stop within 0.3 s \(the VM "
                                           r"stays paused\)"):
            vm.pause(timeout=0.3)
        assert vm.paused
        release.set()
        _wait_until(lambda: vm.pause_gate.parked == {0})
        vm.resume()
    finally:
        release.set()
        vm.quit()
        t.join(10)
    assert out["r"].reason == "quit"


@pytest.mark.parametrize("arch, load, results", [
    ("aarch64", 0x4008_0000, 0x4001_0000),
    ("riscv64", 0x8020_0000, 0x8001_0000),
])
def test_a_paused_guest_stops_counting_and_counts_on_after_resume(tmp_path, arch, load,
                                                                  results):
    image = tmp_path / "spin.bin"
    image.write_bytes(build(arch, "spin", load))
    with pyaxvisor.Machine(arch=arch, kernel=image, timeout=60) as m:
        def count() -> int:
            return struct.unpack("<Q", m.read_phys(results, 8))[0]

        _wait_until(lambda: count() > 1000)
        m.pause()
        frozen = count()
        time.sleep(0.3)
        assert count() == frozen
        m.resume()
        _wait_until(lambda: count() > frozen + 1000)
    assert m.result.reason == "quit"
    assert m.exit_status == 0


def test_a_vcpu_thread_cannot_pause_its_own_vm(fake_vm):
    vm = fake_vm()
    errors = []

    def on_run():
        if not errors:
            try:
                vm.pause()
            except BadState as exc:
                errors.append(str(exc))

    t, out = _start(vm)
    try:
        _wait_until(lambda: vm.vcpu(0) is not None)
        vm.vcpu(0).arch.on_run = on_run
        _wait_until(lambda: errors)
    finally:
        vm.quit()
        t.join(10)
    assert errors == ["a vCPU thread cannot pause its own VM (it would wait for itself)"]
    assert not vm.paused and out["r"].reason == "quit"


_kvm_ok, _kvm_reason = kvm_usable()


@pytest.mark.kvm
@pytest.mark.skipif(not _kvm_ok, reason=f"KVM not usable: {_kvm_reason}")
def test_a_paused_kvm_guest_stops_counting_and_counts_on_after_resume():
    code = (b"\x48\xff\xc0"                       # 1: inc rax
            b"\x48\x89\x04\x25\x00\x20\x00\x00"   # mov [0x2000], rax
            b"\xeb\xf3")                           # jmp 1b
    vm = x86_vm(ram_size=16 << 20)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "r", vm.run(0x1000, mode="long", timeout=120)))
    try:
        vm.write_guest(0x1000, code)
        t.start()

        def count() -> int:
            return struct.unpack("<Q", vm.read_guest(0x2000, 8))[0]

        _wait_until(lambda: count() > 1000, timeout=60)
        vm.pause()
        frozen = count()
        time.sleep(0.3)
        assert count() == frozen
        vm.resume()
        _wait_until(lambda: count() > frozen + 1000, timeout=60)
    finally:
        vm.quit()
        t.join(30)
        vm.close()
    assert out["r"].reason == "quit"


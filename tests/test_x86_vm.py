"""The x86_64 VM on KVM: port dispatch, the ways a guest ends, misbehaving guests.

Guests are the small sources in ``tests/guests/x86_64`` (assembled with the host's
binutils), loaded raw at 1 MiB and entered in 32-bit protected mode.
"""

from __future__ import annotations

import struct
import threading
import time

import pytest

from pyaxvisor.boards.quick import x86_vm as X86Vm
from pyaxvisor.boards.x86_pc.layout import KERNEL_LOAD
from pyaxvisor.devices.bus import BadAccess as BadPioAccess
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu import AccessWidth, Hypercall
from pyaxvisor.vm.vm import UnknownHypercall
from tests.guest_build import build, symbols
from tests.port_device import PioDevice

_ok, _reason = kvm_usable()
pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not _ok, reason=f"KVM not usable: {_reason}")]


class Out:
    def __init__(self) -> None:
        self.data = bytearray()
        self.lock = threading.Lock()

    def __call__(self, b: bytes) -> None:
        with self.lock:
            self.data += b

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


def run_guest(name: str, *, timeout: float = 20, **kw):
    out = Out()
    vm = X86Vm(ram_size=32 << 20, console_write=out, **kw)
    try:
        vm.write_guest(KERNEL_LOAD, build("x86_64", name, KERNEL_LOAD))
        result = vm.run(KERNEL_LOAD, mode="protected", timeout=timeout)
        return vm, result, out
    finally:
        vm.close()


def test_port_io_reaches_the_uart_and_unclaimed_ports_read_all_ones():
    out = Out()
    vm = X86Vm(ram_size=32 << 20, console_write=out)
    try:
        vm.write_guest(KERNEL_LOAD, build("x86_64", "ports", KERNEL_LOAD))
        result = vm.run(KERNEL_LOAD, mode="protected", timeout=20)
        assert result.reason == "poweroff", result
        assert result.status == 0
        assert out.text == "ports ok\n"
        addr = symbols("x86_64", "ports", KERNEL_LOAD)["results"]
        byte80, word80, scratch = struct.unpack("<BxHB", vm.read_guest(addr, 5))
        assert (byte80, word80, scratch) == (0xFF, 0xFFFF, 0x5A)
        assert vm.pio.unclaimed[0x80] == 2
        assert result.exits["IoWrite"] >= len("ports ok\n") + 2
        assert result.exits["IoRead"] == 3
    finally:
        vm.close()


class BrokenDevice(PioDevice):
    name = "broken"

    def pio_read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        raise BadPioAccess(f"broken: {width.size}-byte read at offset {offset} refused")

    def pio_write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        raise BadPioAccess("broken: writes refused")


def test_a_device_that_fails_stops_the_vm_with_its_error():
    out = Out()
    vm = X86Vm(ram_size=32 << 20, console_write=out)
    try:
        vm.pio.attach(0x80, 1, BrokenDevice())
        vm.write_guest(KERNEL_LOAD, build("x86_64", "ports", KERNEL_LOAD))
        result = vm.run(KERNEL_LOAD, mode="protected", timeout=20)
    finally:
        vm.close()
    assert result.reason == "error", result
    assert "broken: 1-byte read at offset 0 refused" in str(result.error)
    assert result.exits["IoWrite"] == 1 and result.exits["IoRead"] == 1  # the scratch register


def test_a_guest_spinning_forever_is_stopped_by_the_timeout():
    t0 = time.monotonic()
    _vm, result, _out = run_guest("spin", timeout=1.0)
    assert result.reason == "timeout"
    assert result.status == 124
    assert time.monotonic() - t0 < 10
    spin = symbols("x86_64", "spin", KERNEL_LOAD)["_start"]
    assert "vCPU 0: " in result.state and "protected mode" in result.state
    assert f"CS:RIP 0x10:{spin + 1:#x}" in result.state  # the `jmp .` after `cli`


def test_a_triple_fault_resets_and_ends_the_run():
    _vm, result, _ = run_guest("triple")
    assert result.reason == "reset"
    assert result.exits["SystemDown"] == 1


def test_wild_mmio_stops_the_vm_with_the_address():
    _vm, result, _ = run_guest("wild_mmio")
    assert result.reason == "error"
    assert result.status == 4
    assert "MMIO read at 0xd0000000" in str(result.error)


def test_i8042_reset_line():
    _vm, result, _ = run_guest("kbd_reset")
    assert result.reason == "reset"


def test_debug_exit_status():
    _vm, result, _ = run_guest("debug_exit", debug_exits=[(0xF4, 4)])
    assert result.reason == "debug-exit"
    assert result.exit_status == (0x21 << 1) | 1
    assert result.status == 0x43


def test_without_the_debug_exit_device_the_write_is_dropped_and_counted():
    vm, result, _ = run_guest("debug_exit", timeout=1.0)
    assert result.reason == "timeout"
    assert vm.pio.unclaimed[0xF4] == 1


def test_an_unknown_hypercall_exit_stops_the_vm_naming_it():
    vm = X86Vm(ram_size=32 << 20)
    try:
        with pytest.raises(UnknownHypercall, match=r"vCPU 0: unknown hypercall 0x1234 with "
                                                   r"arguments 0x1, 0x2, 0x3, 0x4, 0x5, 0x6"):
            vm._handle(0, None, Hypercall(0x1234, (1, 2, 3, 4, 5, 6)))  # type: ignore[arg-type]
    finally:
        vm.close()


def test_a_guest_hypercall_reaches_the_vm_with_its_registers():
    from pyaxvisor.arch.x86_64.pcpu import virtualization_extension

    vm = X86Vm(ram_size=32 << 20)
    try:
        if not vm.hypercalls_intercepted:
            pytest.skip(reason="this host's KVM cannot hand vmcall/vmmcall to user space (no "
                        "KVM_CAP_XEN_HVM intercept); KVM answers hypercalls itself there")
        insn = "0f01c1" if virtualization_extension() == "vmx" else "0f01d9"
        vm.write_guest(0x1000, bytes.fromhex(
            "48c7c034120000"   # mov rax, 0x1234
            "48c7c701000000"   # mov rdi, 1
            "48c7c602000000"   # mov rsi, 2
            "48c7c203000000"   # mov rdx, 3
            "48c7c104000000"   # mov rcx, 4
            "49c7c005000000"   # mov r8, 5
            "49c7c106000000"   # mov r9, 6
            + insn + "f4"))    # vmcall / vmmcall; hlt
        result = vm.run(0x1000, mode="long", timeout=20)
    finally:
        vm.close()
    assert result.reason == "error", result
    assert isinstance(result.error, UnknownHypercall)
    assert "unknown hypercall 0x1234 with arguments 0x1, 0x2, 0x3, 0x4, 0x5, 0x6" in \
        str(result.error)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ram_size": 1 << 20}, "less than the 16 MiB"),
    ({"ram_size": 1 << 50}, "more than this VM supports"),
    ({"ram_size": (32 << 20) + 5}, "not a multiple of 4 KiB"),
    ({"smp": 0}, "1..254 CPUs"),
    ({"smp": 300}, "1..254 CPUs"),
])
def test_bad_vm_configs_are_refused(kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        X86Vm(**kwargs)


def test_two_vms_run_side_by_side_and_one_failing_leaves_the_other():
    results: dict[str, object] = {}

    def go(name: str) -> None:
        results[name] = run_guest(name, timeout=20)[1]

    threads = [threading.Thread(target=go, args=(n,)) for n in ("wild_mmio", "ports")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results["wild_mmio"].reason == "error"  # type: ignore[attr-defined]
    assert results["ports"].reason == "poweroff"  # type: ignore[attr-defined]


def test_quit_after_the_vm_is_closed_does_nothing():
    vm, result, _ = run_guest("debug_exit", debug_exits=[(0xF4, 1)])
    assert result.reason == "debug-exit"
    vm.quit()  # e.g. the console's Ctrl-A X arriving after the run ended
    vm.close()


def _string_io_guest(n: int) -> tuple[bytes, int]:
    """The string-I/O benchmark's guest (``rep outsb`` of ``n`` bytes to COM1, then
    debug-exit 0 at port 0xF4), from ``benchmarks/x86_64.py``."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "x86_64.py"
    spec = importlib.util.spec_from_file_location("bench_x86_64", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.string_io_guest(n)


@pytest.mark.parametrize("coalesce", [True, False])
def test_rep_outsb_to_com1_arrives_whole_and_in_order_in_few_exits(coalesce, monkeypatch):
    from pyaxvisor.boards.x86_pc.board import PcBoard
    n = 16 * 1024
    guest, entry = _string_io_guest(n)
    monkeypatch.setattr(PcBoard, "coalesce_com1", coalesce)
    out = Out()
    vm = X86Vm(ram_size=32 << 20, debug_exits=[(0xF4, 1)], console_write=out)
    try:
        vm.write_guest(0x10_0000, guest)
        result = vm.run(entry, mode="protected", timeout=60)
        exits = vm.vcpu(0).arch.kvm_runs
    finally:
        vm.close()
    assert (result.reason, result.status) == ("debug-exit", 1), result
    line = bytes(0x30 + i % 10 for i in range(63)) + b"\n"
    assert bytes(out.data) == (line * (n // len(line) + 1))[:n]  # every byte, in order
    if coalesce:
        assert exits < n // 50, exits  # KVM queues ~170 writes per exit
    else:
        assert exits >= n, exits  # one exit per element

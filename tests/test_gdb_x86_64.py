"""gdb-multiarch against the stub on KVM: a small guest of the repository
(``tests/guests/x86_64/gdb_target.S``: counts 1..5 into a memory word, then writes
%eax to isa-debug-exit) run with ``-S -gdb``. The session stops at a hardware
breakpoint (KVM_SET_GUEST_DEBUG's DR0-DR3), steps (its single-step), reads registers
and memory (virtual and physical), sees a software breakpoint refused (not offered on
x86_64, see ``pyaxvisor/arch/x86_64/gdb.py``), writes %rax before the guest reports
it, and the exit status shows the write."""

from __future__ import annotations

import re

import pytest
from gdb_guest import GuestUnderGdb
from guest_build import build, symbols

from pyaxvisor.engine.kvm.probe import kvm_usable

_ok, _reason = kvm_usable()
pytestmark = [pytest.mark.kvm, pytest.mark.skipif(not _ok, reason=f"KVM not usable: {_reason}")]

LOAD = 0x10_0000


def test_gdb_hardware_breakpoints_steps_registers_and_memory_on_kvm(tmp_path):
    image = tmp_path / "gdb_target.bin"
    image.write_bytes(build("x86_64", "gdb_target", LOAD))
    sym = symbols("x86_64", "gdb_target", LOAD)
    loop, report, counter = sym["loop"], sym["report"], sym["counter"]
    vm = GuestUnderGdb("x86_64", tmp_path / "gdb.sock", "", "-kernel", str(image),
                       "-device", "isa-debug-exit,iobase=0xf4,iosize=4")
    out = vm.gdb("info registers rip",
                 f"break *{loop:#x}",
                 "continue",
                 "delete",
                 f"hbreak *{loop:#x}",
                 "continue",
                 "info registers rip rax rbx",
                 "stepi",
                 "stepi",
                 "info registers rip",
                 f"x/wx {counter:#x}",
                 "maintenance packet Qqemu.PhyMemMode:1",
                 f"x/wx {counter:#x}",
                 "maintenance packet Qqemu.PhyMemMode:0",
                 "delete",
                 f"hbreak *{report:#x}",
                 "continue",
                 "info registers rip rax",
                 "set $rax = 0x2a",
                 "delete",
                 "continue")
    status, _stdout, stderr = vm.finish()
    assert re.search(rf"^rip\s+{LOAD:#x}\s", out, re.M), out
    assert "Cannot insert breakpoint 1." in out, out      # no software breakpoints
    assert f"Breakpoint 2, {loop:#018x} in ?? ()" in out, out
    assert re.search(r"^rax\s+0x0\s", out, re.M), out
    assert re.search(rf"^rbx\s+{counter:#x}\s", out, re.M), out
    # inc %eax (1 byte), then mov %eax,(%ebx) (2 bytes): counter = 1
    assert re.search(rf"^rip\s+{loop + 3:#x}\s", out, re.M), out
    assert out.count(f"{counter:#x}:\t0x00000001") == 2, out  # virtual, then physical
    assert f"Breakpoint 3, {report:#018x} in ?? ()" in out, out
    assert re.search(r"^rax\s+0x5\s", out, re.M), out
    assert "[Inferior 1 (Remote target) exited normally]" in out, out
    assert status == (0x2A << 1) | 1, stderr[-2000:]  # the guest wrote the %rax gdb set

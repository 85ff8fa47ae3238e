"""gdb-multiarch itself against the stub: Debian's arm64 kernel on the software CPU.

The kernel runs with ``nokaslr`` so that its symbols' addresses are the ones it shows
in ``/proc/kallsyms``, which a first boot prints (Debian's package ships a placeholder
``System.map``; see ``tests/gdb_guest.py``). Then sessions of ``gdb-multiarch
-batch`` (Debian's, from tests/tools.py) drive ``pyaxvisor run -S -gdb unix:...`` and
the test asserts what gdb printed and what the guest did; a raw socket session checks
the protocol's error replies, Ctrl-C and detach.
"""

from __future__ import annotations

import os
import re

import pytest
from gdb_guest import GuestUnderGdb, RawClient, kernel_symbols

from pyaxvisor import images
from pyaxvisor.gdb.packets import frame
from pyaxvisor.images import USERSPACE_MARKER

pytestmark = pytest.mark.slow

#: Where the kernel's image starts (_text) without KASLR: arm64 6.1's KIMAGE_VADDR with
#: 48-bit virtual addresses; the Image file is laid out from there.
KIMAGE_VADDR = 0xFFFF_8000_0800_0000
#: Where the board puts the Image: the -S stop is at its first instruction.
IMAGE_PA = 0x4000_0000
#: What start_kernel first writes at the end of init's stack (set_task_stack_end_magic).
STACK_END_MAGIC = 0x57AC6E9D


@pytest.fixture(scope="module")
def symbols() -> dict[str, int]:
    return kernel_symbols("aarch64", ("start_kernel", "rest_init"),
                          kaslr_said="KASLR disabled on command line")


def test_gdb_breaks_at_start_kernel_steps_watches_and_continues_to_userspace(
        symbols, tmp_path):
    start, rest_init = symbols["start_kernel"], symbols["rest_init"]
    image = images.fetch("linux-arm64").read_bytes()
    off = start - KIMAGE_VADDR
    vm = GuestUnderGdb("aarch64", tmp_path / "gdb.sock")
    out = vm.gdb(
               "info registers pc",
               # MMU off at entry: the kernel's addresses are not mapped yet, so a
               # hardware breakpoint (as with QEMU)
               f"hbreak *{start:#x}",
               "continue",
               "info registers pc cpsr",
               "x/4xw $pc",
               "maintenance packet Qqemu.PhyMemMode:1",
               f"x/4xw {IMAGE_PA + off:#x}",
               "maintenance packet Qqemu.PhyMemMode:0",
               "delete",
               "stepi",
               "info registers pc",
               "stepi",
               "info registers pc",
               "set $x9 = 0x1234abcd",
               "p/x $x9",
               "p/x $sctlr_el1",
               "info threads",
               # the init task's stack-end magic, written first thing by start_kernel
               "watch -l *(unsigned long *)((unsigned long)$sp & ~0x3fff)",
               "continue",
               "delete",
               f"break *{rest_init:#x}",
               "continue",
               "info registers pc",
               "delete",
               "continue")
    status, stdout, stderr = vm.finish()
    # at reset: the Image's first instruction, physical
    assert re.search(r"^pc\s+0x40000000\s", out, re.M), out
    assert f"Breakpoint 1, {start:#018x} in ?? ()" in out, out
    assert re.search(rf"^pc\s+{start:#x}\s", out, re.M), out
    # memory at start_kernel read by virtual address, then physical: the Image's bytes
    words = [int.from_bytes(image[off + 4 * i:off + 4 * i + 4], "little") for i in range(4)]
    dump = "\t".join(f"0x{w:08x}" for w in words)
    assert f"{start:#x}:\t{dump}" in out, out
    assert f"{IMAGE_PA + off:#x}:\t{dump}" in out, out
    assert out.count('received: "OK"') == 2, out
    # two steps of one instruction each
    assert re.search(rf"^pc\s+{start + 4:#x}\s", out, re.M), out
    assert re.search(rf"^pc\s+{start + 8:#x}\s", out, re.M), out
    assert "$1 = 0x1234abcd" in out, out
    sctlr = int(re.search(r"^\$2 = (0x[0-9a-f]+)$", out, re.M)[1], 16)
    assert sctlr & 1, out  # the MMU is on in start_kernel
    assert re.search(r"^\* 1\s+Thread 1", out, re.M), out
    assert "Hardware watchpoint 2: -location" in out, out
    assert f"Old value = 0\nNew value = {STACK_END_MAGIC}" in out, out
    assert f"Breakpoint 3, {rest_init:#018x} in ?? ()" in out, out
    assert re.search(rf"^pc\s+{rest_init:#x}\s", out, re.M), out
    assert "[Inferior 1 (Remote target) exited normally]" in out, out
    assert status == 0, stderr[-2000:]
    assert USERSPACE_MARKER in stdout


def test_protocol_errors_ctrl_c_all_stop_and_detach(tmp_path):
    vm = GuestUnderGdb("aarch64", tmp_path / "gdb.sock", 'pyaxvisor.cmd="sleep 3"', "-smp",
                       "2")
    c = RawClient(vm.sock)
    try:
        c.raw(b"$g#00")                       # a bad checksum: a '-', nothing done
        assert c.event().good is False
        assert c.ask(b"qSupported:multiprocess+").startswith(b"PacketSize=4000;")
        assert c.ask(b"QStartNoAckMode") == b"OK"
        c.pending.clear()
        assert c.ask(b"?") == b"T05thread:1;"
        assert c.ask(b"qfThreadInfo") == b"m1"  # -S: only the boot CPU is on
        regs = c.ask(b"g")
        assert len(regs) == 2 * (34 * 8 - 4 + 20 * 8)
        assert regs[32 * 16:33 * 16] == (0x4000_0000).to_bytes(8, "little").hex().encode()
        xml = c.ask(b"qXfer:features:read:target.xml:0,3fff")
        assert xml.startswith(b"l<?xml") and b"org.gnu.gdb.aarch64.core" in xml
        assert c.ask(b"m40000000,4") == images.fetch("linux-arm64").read_bytes()[:4].hex() \
            .encode()
        assert c.ask(b"mffff000000000000,4") == b"E14"   # the MMU is off: no such RAM
        assert c.ask(b"m40000000") == b"E16"             # no length
        assert c.ask(b"m40000000,zz") == b"E16"
        assert c.ask(b"m40000000,100000") == b"E16"      # above the bound
        assert c.ask(b"P99=00") == b"E01"                # no register 0x99
        assert c.ask(b"P0=12") == b"E16"                 # 1 byte for an 8-byte register
        assert c.ask(b"Z9,0,4") == b""                   # not a breakpoint type
        assert c.ask(b"Z0,40000000,3") == b"E16"         # no 3-byte BRK
        assert c.ask(b"Hg5") == b"E01"                   # no thread 5
        assert c.ask(b"vWhatever") == b""
        c.raw(frame(b"M40000000,2000:" + b"00" * 0x2000))  # longer than PacketSize
        assert c.reply() == b"E16"
        image = images.fetch("linux-arm64").read_bytes()
        assert c.ask(b"m40000000,4") == image[:4].hex().encode()  # nothing written
        # a software breakpoint (the MMU is off: virtual = physical) is BRK #0 in
        # guest memory, shown to reads as the bytes it replaced, gone once removed
        assert c.ask(b"Z0,40000008,4") == b"OK"
        assert c.ask(b"m40000000,10") == image[:16].hex().encode()
        assert c.ask(b"Qqemu.PhyMemMode:1") == b"OK"
        assert c.ask(b"m40000008,4") == image[8:12].hex().encode()
        assert c.ask(b"Qqemu.PhyMemMode:0") == b"OK"
        # two steps from the entry (b to the kernel's code after one)
        c.raw(frame(b"vCont;s:1"))
        assert c.reply() == b"T05thread:1;"
        assert c.ask(b"p20") == (0x4000_0004).to_bytes(8, "little").hex().encode()
        assert c.ask(b"z0,40000008,4") == b"OK"
        # run until the second CPU is up, then Ctrl-C stops both
        c.raw(frame(b"vCont;c"))
        vm.wait_output("smp: Brought up 1 node, 2 CPUs")
        c.raw(b"\x03")
        stop = c.reply()
        assert re.fullmatch(rb"T02thread:[12];", stop), stop
        assert c.ask(b"qfThreadInfo") == b"m1,2"
        for tid in (b"1", b"2"):
            assert c.ask(b"Hg" + tid) == b"OK"
            pc = int.from_bytes(bytes.fromhex(c.ask(b"p20").decode()), "little")
            assert pc >> 48 == 0xFFFF, hex(pc)  # both in the kernel's addresses
        c.raw(frame(b"D"))
        assert c.reply() == b"OK"
    finally:
        c.sock.close()
    status, stdout, stderr = vm.finish()
    assert status == 0, stderr[-2000:]
    assert USERSPACE_MARKER in stdout                 # detached: the guest ran on
    assert "PYAXVISOR-CPUS: 2" in stdout
    assert "Traceback" not in stderr
    assert not os.path.exists(vm.sock)


def test_a_client_that_disconnects_or_kills(tmp_path):
    # a client that just goes lets the guest run on (as QEMU does)
    vm = GuestUnderGdb("aarch64", tmp_path / "a.sock")
    c = RawClient(vm.sock)
    assert c.ask(b"?") == b"T05thread:1;"
    assert c.ask(b"Z1,ffff800008000000,4") == b"OK"  # removed when the client goes
    c.sock.close()
    status, stdout, stderr = vm.finish()
    assert status == 0, stderr[-2000:]
    assert USERSPACE_MARKER in stdout
    assert "gdb: client gone; the guest runs on" in stderr
    # k ends the VM at once
    vm = GuestUnderGdb("aarch64", tmp_path / "b.sock")
    c = RawClient(vm.sock)
    assert c.ask(b"?") == b"T05thread:1;"
    c.raw(frame(b"k"))
    status, stdout, stderr = vm.finish(timeout=60)
    c.sock.close()
    assert status == 0, stderr[-2000:]
    assert "Booting Linux" not in stdout  # it never ran

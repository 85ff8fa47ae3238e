"""gdb-multiarch itself against the stub: Debian's arm64 kernel on the software CPU.

The kernel runs with ``nokaslr`` so that its symbols' addresses are the ones it shows
in ``/proc/kallsyms`` (Debian's package ships a placeholder ``System.map`` that says
the real one is in the 800 MB ``-dbg`` package; see :mod:`pyaxvisor.image_symbols`),
which a first boot prints. Then sessions of ``gdb-multiarch -batch`` (Debian's, from
tests/tools.py) drive ``pyaxvisor run -S -gdb unix:...`` and the test asserts what
gdb printed and what the guest did; a raw socket session checks the protocol's error
replies, Ctrl-C and detach.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tools import tool

from pyaxvisor import images
from pyaxvisor.gdb.packets import Packet, PacketReader, frame
from pyaxvisor.images import USERSPACE_MARKER

pytestmark = pytest.mark.slow

#: Where the kernel's image starts (_text) without KASLR: arm64 6.1's KIMAGE_VADDR with
#: 48-bit virtual addresses; the Image file is laid out from there.
KIMAGE_VADDR = 0xFFFF_8000_0800_0000
#: Where the board puts the Image: the -S stop is at its first instruction.
IMAGE_PA = 0x4000_0000
#: What start_kernel first writes at the end of init's stack (set_task_stack_end_magic).
STACK_END_MAGIC = 0x57AC6E9D


def _run_args(append: str, *extra: str) -> list[str]:
    kernel = images.fetch("linux-arm64")
    initrd = images.fetch("initramfs-arm64")
    return [sys.executable, "-m", "pyaxvisor.cli", "run", "-kernel", str(kernel), "-initrd",
            str(initrd), "-append", f"console=ttyAMA0 nokaslr {append}".strip(), "-m", "512M",
            "--timeout", "300", *extra]


@pytest.fixture(scope="module")
def symbols() -> dict[str, int]:
    """Addresses of the kernel's functions, from its own /proc/kallsyms (nokaslr)."""
    cmd = ('pyaxvisor.cmd="grep -w -e start_kernel -e rest_init /proc/kallsyms; '
           'dmesg | grep -i kaslr"')
    proc = subprocess.run(_run_args(cmd), capture_output=True, text=True, timeout=400,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = {m[2]: int(m[0], 16)
             for m in re.findall(r"^([0-9a-f]{16}) ([tT]) (\w+)\s*$", proc.stdout, re.M)}
    assert {"start_kernel", "rest_init"} <= table.keys(), proc.stdout[-3000:]
    assert "KASLR disabled on command line" in proc.stdout
    return table


class _Vm:
    """``pyaxvisor run -S -gdb unix:SOCK,server`` in the background."""

    def __init__(self, sock: Path, append: str = "", *extra: str) -> None:
        self.sock = sock
        self.stderr = sock.with_suffix(".stderr")
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                _run_args(append, "-S", "-gdb", f"unix:{sock},server", *extra),
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
        self.output: list[str] = []
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 120
        while not sock.exists():
            assert self.proc.poll() is None, self.stderr.read_text()
            assert time.monotonic() < deadline, "the gdb socket never appeared"
            time.sleep(0.1)

    def _read(self, stream) -> None:
        for line in stream:
            self.output.append(line)

    def wait_output(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.output):
            assert self.proc.poll() is None, "".join(self.output)[-2000:]
            assert time.monotonic() < deadline, f"no {text!r} in the guest's output"
            time.sleep(0.05)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        return self.proc.returncode, "".join(self.output), self.stderr.read_text()


def _gdb(sock: Path, *commands: str, timeout: float = 300) -> str:
    argv = [tool("gdb-multiarch"), "-batch", "-nx", "-ex", "set architecture aarch64",
            "-ex", "set pagination off", "-ex", f"target remote {sock}"]
    for c in commands:
        argv += ["-ex", c]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return proc.stdout + proc.stderr


def test_gdb_breaks_at_start_kernel_steps_watches_and_continues_to_userspace(
        symbols, tmp_path):
    start, rest_init = symbols["start_kernel"], symbols["rest_init"]
    image = images.fetch("linux-arm64").read_bytes()
    off = start - KIMAGE_VADDR
    vm = _Vm(tmp_path / "gdb.sock")
    out = _gdb(vm.sock,
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


# -- the protocol, by hand ----------------------------------------------------------------------

class _Client:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(60)
        self.reader = PacketReader()
        self.pending: list = []

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def event(self):
        while not self.pending:
            chunk = self.sock.recv(65536)
            assert chunk, "the stub closed the connection"
            self.pending += self.reader.feed(chunk)
        return self.pending.pop(0)

    def reply(self) -> bytes:
        while True:
            ev = self.event()
            if isinstance(ev, Packet):
                assert ev.ok
                return ev.data

    def ask(self, data: bytes) -> bytes:
        self.raw(frame(data))
        return self.reply()


def test_protocol_errors_ctrl_c_all_stop_and_detach(tmp_path):
    vm = _Vm(tmp_path / "gdb.sock", 'pyaxvisor.cmd="sleep 3"', "-smp", "2")
    c = _Client(vm.sock)
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
        assert c.ask(b"m40000000,4") == images.fetch("linux-arm64").read_bytes()[:4].hex() \
            .encode()                                    # nothing written
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

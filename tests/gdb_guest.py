"""Helpers of the gdb stub tests: a Debian kernel run under ``-S -gdb unix:...``, its
symbols, ``gdb-multiarch -batch`` sessions and a raw protocol client.

Debian's kernel packages ship a placeholder ``System.map`` (the real one is in the
800 MB ``-dbg`` package), so :func:`kernel_symbols` boots the kernel once with
``nokaslr`` and reads the addresses from its own ``/proc/kallsyms`` (functions only:
Debian builds without ``CONFIG_KALLSYMS_ALL``).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tools import tool

from pyaxvisor import images
from pyaxvisor.gdb.packets import Packet, PacketReader, frame

#: Per guest architecture: the images, the console, the board options, gdb's name.
GUESTS = {
    "aarch64": ("linux-arm64", "initramfs-arm64", "ttyAMA0", (), "aarch64"),
    "riscv64": ("linux-riscv64", "initramfs-riscv64", "ttyS0", ("-M", "virt"),
                "riscv:rv64"),
}


#: gdb's name of each architecture.
GDB_ARCH = {"aarch64": "aarch64", "riscv64": "riscv:rv64", "x86_64": "i386:x86-64"}


def run_args(arch: str, append: str, *extra: str) -> list[str]:
    if arch not in GUESTS:  # a guest of its own: the command line is all in ``extra``
        return [sys.executable, "-m", "pyaxvisor.cli", "run", "--arch", arch,
                "--timeout", "300", *extra]
    kernel, initrd, console, board, _gdb = GUESTS[arch]
    return [sys.executable, "-m", "pyaxvisor.cli", "run", *board, "-kernel",
            str(images.fetch(kernel)), "-initrd", str(images.fetch(initrd)), "-append",
            f"console={console} nokaslr {append}".strip(), "-m", "512M", "--timeout", "300",
            *extra]


def kernel_symbols(arch: str, names: tuple[str, ...], kaslr_said: str | None = None
                   ) -> dict[str, int]:
    """Addresses of the kernel's functions ``names`` (see the module doc); with
    ``kaslr_said``, checks that the kernel's log says so about KASLR."""
    pattern = " ".join(f"-e {n}" for n in names)
    cmd = f'pyaxvisor.cmd="grep -w {pattern} /proc/kallsyms; dmesg | grep -i kaslr"'
    proc = subprocess.run(run_args(arch, cmd), capture_output=True, text=True, timeout=400,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = {m[2]: int(m[0], 16)
             for m in re.findall(r"^([0-9a-f]{16}) ([tT]) (\w+)\s*$", proc.stdout, re.M)}
    assert set(names) <= table.keys(), proc.stdout[-3000:]
    if kaslr_said is not None:
        assert kaslr_said in proc.stdout, proc.stdout[-3000:]
    return table


class GuestUnderGdb:
    """``pyaxvisor run ... -S -gdb unix:SOCK,server`` in the background; its console
    output is collected as it comes (:attr:`output`)."""

    def __init__(self, arch: str, sock: Path, append: str = "", *extra: str) -> None:
        self.arch = arch
        self.sock = sock
        self.stderr = sock.with_suffix(".stderr")
        self.output: list[str] = []
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                run_args(arch, append, "-S", "-gdb", f"unix:{sock},server", *extra),
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
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

    def gdb(self, *commands: str, timeout: float = 300) -> str:
        """What ``gdb-multiarch -batch`` printed running ``commands`` against the stub."""
        argv = [tool("gdb-multiarch"), "-batch", "-nx", "-ex",
                f"set architecture {GDB_ARCH[self.arch]}", "-ex", "set pagination off",
                "-ex", f"target remote {self.sock}"]
        for c in commands:
            argv += ["-ex", c]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        return proc.stdout + proc.stderr

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """Wait for the run to end: (exit status, console output, stderr)."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        return self.proc.returncode, "".join(self.output), self.stderr.read_text()


class RawClient:
    """The remote protocol by hand over the stub's Unix socket."""

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

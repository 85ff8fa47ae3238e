"""The serial console on a terminal: raw mode, Ctrl-A X quits, the TTY is restored."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import termios
import time

from aarch64_machine import RAM
from guest_build import build


def test_ctrl_a_x_quits_and_restores_the_terminal(tmp_path):
    image = tmp_path / "spin.bin"
    image.write_bytes(build("aarch64", "spin", RAM + 0x8_0000))
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "pyaxvisor.cli", "run", "-kernel",
                             str(image), "--timeout", "60"],
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        # wait until pyaxvisor has put the terminal in raw mode (ICANON and ECHO off)
        while termios.tcgetattr(slave)[3] & (termios.ICANON | termios.ECHO):
            assert time.monotonic() < deadline, "the console never entered raw mode"
            time.sleep(0.05)
        os.write(master, b"\x01x")  # Ctrl-A X
        assert proc.wait(30) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    assert b"timeout" not in proc.stderr.read()

"""The boot status line: on a terminal (a pseudo-terminal here) a guest silent for a
few seconds gets a one-line status on standard error, erased when the guest prints;
nothing of it when the output is not a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

from aarch64_machine import RAM
from guest_build import build

from pyaxvisor.cli.boot_status import QUIET_AFTER

LOAD = RAM + 0x8_0000
ERASE = b"\r\x1b[K"


def guest_file(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(build("aarch64", name, LOAD))
    return str(path)


class PtyRun:
    """``pyaxvisor ARGS`` with standard input, output and error on one pseudo-terminal."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "pyaxvisor.cli", *args],
                                     stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.seen = b""

    def wait_for(self, text: bytes, timeout: float, start: int = 0) -> int:
        """Read until ``text`` appears after ``start``; its offset."""
        deadline = time.monotonic() + timeout
        while (at := self.seen.find(text, start)) < 0:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} did not appear; the terminal showed {self.seen!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                assert chunk, f"{text!r} did not appear before the end: {self.seen!r}"
                self.seen += chunk
        return at

    def finish(self, timeout: float = 60) -> int:
        status = self.proc.wait(timeout)
        while select.select([self.master], [], [], 0.2)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.seen += chunk
        os.close(self.master)
        return status


def test_a_silent_guest_gets_a_status_line_that_its_output_erases(tmp_path):
    # uart_echo prints '?', then waits (silent) for input and echoes each byte plus one
    run = PtyRun("run", "-kernel", guest_file(tmp_path, "uart_echo"), "--timeout", "120")
    try:
        run.wait_for(b"?", 60)
        started = time.monotonic()
        at = run.wait_for(b"no guest output for", 60)
        assert time.monotonic() - started >= QUIET_AFTER - 1.0
        end_of_line = run.wait_for(b" exits/s", 10, at) + len(b" exits/s")
        line = run.seen[run.seen.rfind(ERASE, 0, at) + len(ERASE):end_of_line]
        assert re.fullmatch(rb"pyaxvisor: \d+ s, no guest output for \d+ s; "
                            rb"vCPUs 0:(Running|Ready); \d+ exits/s", line), line
        os.write(run.master, b"a")
        echo = run.wait_for(b"b", 30, end_of_line)
        # the line was erased before the guest's byte
        assert run.seen[:echo].endswith(ERASE), run.seen[end_of_line:echo + 1]
        os.write(run.master, b".")
        assert run.finish() == 0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def test_no_status_line_when_the_output_is_not_a_terminal(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "pyaxvisor.cli", "run", "-kernel",
                             guest_file(tmp_path, "uart_echo"), "--timeout", "120"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    time.sleep(QUIET_AFTER + 1.5)
    out, err = proc.communicate(b"a.", timeout=60)
    assert proc.returncode == 0, err
    assert out.replace(b"\r\n", b"\n") == b"?b"
    assert b"no guest output" not in err and ERASE not in err and ERASE not in out

"""pyaxvisor.Machine, the harness API: the README's example runs as written; the
console's expect/send and their errors; wait, exit_status, pause/resume, read_phys and
write_phys (into the guest's code: the software CPU must run the new instruction)."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from guest_build import build

import pyaxvisor
from pyaxvisor.errors import AxError, BadState, InvalidInput
from pyaxvisor.harness import ConsoleTimeout, MachineTimeout

README = Path(__file__).parent.parent / "README.md"
LOAD = 0x4008_0000
RESULTS = 0x4001_0000
ADD_X0_1 = 0x91000400  # add x0, x0, #1: spin.S's third instruction
SUB_X0_1 = 0xD1000400  # sub x0, x0, #1


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("### Driving a VM from Python"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its pyaxvisor.Machine example"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_example_runs():
    p = subprocess.run([sys.executable, "-c", readme_example()], capture_output=True,
                       text=True, timeout=400, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    printed = [line for line in p.stdout.splitlines() if not line.startswith("images: ")]
    assert printed == [
        "U-Boot 2023.01", "0xcafef00d",
        "['exit-time', 'exits', 'guest-exceptions', 'in-cpu-accesses', 'metrics', 'timed']",
        "reset 0"], p.stdout + p.stderr


def spin(tmp_path: Path) -> Path:
    image = tmp_path / "spin.bin"
    image.write_bytes(build("aarch64", "spin", LOAD))
    return image


def _count(m) -> int:
    """The guest's counter, signed: counting down goes below 0 within a second."""
    return struct.unpack("<q", m.read_phys(RESULTS, 8))[0]


def _wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_write_phys_into_the_guests_code_changes_what_it_runs(tmp_path):
    with pyaxvisor.Machine(arch="aarch64", kernel=spin(tmp_path), timeout=60) as m:
        assert struct.unpack("<I", m.read_phys(LOAD + 8, 4))[0] == ADD_X0_1
        _wait_until(lambda: _count(m) > 100_000)  # the loop is translated and running
        m.pause()
        frozen = _count(m)
        m.write_phys(LOAD + 8, struct.pack("<I", SUB_X0_1))
        m.resume()
        _wait_until(lambda: _count(m) < frozen - 1000)  # it counts down now
        assert m.running and m.exit_status is None
    assert m.exit_status == 0 and m.result.reason == "quit"
    with pytest.raises(BadState, match="the VM has ended: its memory is released"):
        m.read_phys(RESULTS, 8)


def test_expect_returns_matches_in_order_and_its_timeout_shows_the_output():
    with pyaxvisor.Machine(arch="aarch64", smp=2, timeout=60) as m:
        first = m.console.expect(r"Hello from the pyaxvisor (\w+) guest on CPU (\d)")
        assert first.groups() == ("AArch64", "0")
        assert m.console.expect(r"CPU (\d) is up").group(1) == "1"
        with pytest.raises(ConsoleTimeout) as err:
            m.console.expect(r"Hello from")  # printed, but before the previous match
        result = m.wait(30)
    message = str(err.value)
    assert message.startswith("the console never printed 'Hello from': the VM ended "
                              "(poweroff) first; the last ")
    assert message.endswith("powering off (PSCI SYSTEM_OFF)\r\n")
    assert result.reason == "poweroff" and m.exit_status == 0
    with pytest.raises(BadState, match=r"the console takes no input: the VM ended "
                                       r"\(poweroff\)"):
        m.console.send("x")


def test_a_guest_that_prints_nothing_times_out_expect_and_wait(tmp_path):
    with pyaxvisor.Machine(arch="aarch64", kernel=spin(tmp_path), timeout=1) as m:
        with pytest.raises(ConsoleTimeout, match=r"'login:': not within 0.2 s; the last 0 "
                                                 r"characters of its output were:\n$"):
            m.console.expect("login:", timeout=0.2)
        with pytest.raises(InvalidInput, match="timeout must be a positive number"):
            m.console.expect("x", timeout=0)
        with pytest.raises(MachineTimeout, match=r"the VM was still running after 0\.1 s"):
            m.wait(0.1)
        result = m.wait(30)
    assert result.reason == "timeout"
    assert m.exit_status == 124
    assert result.state.startswith("vCPU 0: ")


def test_send_reaches_the_guests_serial_input(tmp_path):
    image = tmp_path / "echo.bin"
    image.write_bytes(build("aarch64", "uart_echo", LOAD))
    with pyaxvisor.Machine(arch="aarch64", kernel=image, timeout=60) as m:
        m.console.expect(r"\?")
        m.console.send("HAL")  # echoed plus one
        assert m.console.expect("IBM").group(0) == "IBM"
        m.console.send(".")
        assert m.wait(30).reason == "poweroff"
    assert m.console.text == "?IBM"


def test_a_machine_that_cannot_be_built_says_why_at_launch(tmp_path):
    missing = tmp_path / "no-such-kernel"
    with pytest.raises(AxError, match="no-such-kernel"), \
            pyaxvisor.Machine(arch="aarch64", kernel=missing):
        pass
    with pytest.raises(InvalidInput, match=re.escape(
            "-qmp tcp:192.168.1.1:4444: the host '192.168.1.1' is not a loopback address")):
        pyaxvisor.Machine(arch="aarch64", qmp="tcp:192.168.1.1:4444")
    m = pyaxvisor.Machine(arch="aarch64")
    with pytest.raises(BadState, match=r"the machine is not launched \(use 'with "
                                       r"Machine\(...\)' or launch\(\)\)"):
        m.pause()


def test_a_whole_config_and_the_console_keeps_the_last_output(monkeypatch):
    from pyaxvisor.boards.quick import config_for
    from pyaxvisor.harness import console as console_module

    monkeypatch.setattr(console_module, "MAX_KEPT", 64)
    with pyaxvisor.Machine(config=config_for("aarch64", smp=2, timeout=30)) as m:
        assert m.console.expect(r"PSCI (\w+)").group(1) == "CPU_ON"
        assert m.wait(30).reason == "poweroff"
    text = m.console.text
    assert len(text) == 64  # older output dropped
    assert text.endswith("powering off (PSCI SYSTEM_OFF)\r\n")
    assert m.console.expect(r"SYSTEM_(\w+)").group(1) == "OFF"

"""Real RISC-V firmware and kernels that nobody here wrote, from Debian's packages
(fetched and cached by ``pyaxvisor.images``): U-Boot S-mode to its prompt and Debian's
riscv64 Linux to a busybox shell, with pyaxvisor as their SBI firmware. Slow (tens of
seconds each); CI runs them."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest
from screen import Screen

import pyaxvisor
from pyaxvisor import images
from pyaxvisor.boards.quick import boot, config_for

pytestmark = pytest.mark.slow


def test_u_boot_s_mode_reaches_its_prompt_answers_version_and_resets():
    screen = Screen()
    config = config_for("riscv64", kernel=images.fetch("u-boot-riscv64"), memory=256 << 20,
                        timeout=180)
    vms = []
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault(
        "r", boot(config, screen.write, vms.append)))
    runner.start()
    try:
        pos = screen.wait_for(b"=> ")
        vms[0].uart.receive(b"version\r")
        pos = screen.wait_for(b"U-Boot 2023.01", pos)
        pos = screen.wait_for(b"=> ", pos)
        vms[0].uart.receive(b"reset\r")
        runner.join(60)
    finally:
        if vms and runner.is_alive():
            vms[0].quit()
            runner.join(30)
    assert result["r"].reason == "reset", result["r"]  # SBI SRST system_reset(cold reboot)
    assert b"DRAM:  256 MiB" in screen.data
    assert b"CPU:   rv64" in screen.data


def _boot_linux(smp: int, extra: str = "") -> subprocess.CompletedProcess[str]:
    kernel = images.fetch("linux-riscv64")
    initrd = images.fetch("initramfs-riscv64")
    return subprocess.run(
        [sys.executable, "-m", "pyaxvisor.cli", "run", "-M", "virt", "-kernel", str(kernel),
         "-initrd", str(initrd), "-append", f"console=ttyS0 {extra}".strip(), "-m", "512M",
         "-smp", str(smp), "--timeout", "400"],
        capture_output=True, text=True, timeout=500, stdin=subprocess.DEVNULL)


def test_debian_riscv64_linux_boots_to_busybox_runs_a_command_and_powers_off():
    with pyaxvisor.Machine(arch="riscv64", machine="virt",
                           kernel=images.fetch("linux-riscv64"),
                           initrd=images.fetch("initramfs-riscv64"),
                           append='console=ttyS0 pyaxvisor.cmd="cat /proc/interrupts"',
                           memory="512M", timeout=400) as m:
        m.console.expect(r"Linux version 6\.", timeout=120)
        m.console.expect("SBI implementation ID=", timeout=120)
        m.console.expect("PYAXVISOR-USERSPACE-OK", timeout=360)
        m.console.expect("PYAXVISOR-CMD-BEGIN: cat /proc/interrupts", timeout=60)
        m.console.expect("PYAXVISOR-CMD-END: status=0", timeout=60)
        m.console.expect("reboot: Power down", timeout=60)
        result = m.wait(60)
    assert result.reason == "poweroff" and m.exit_status == 0, result
    out = m.console.text
    assert "riscv64 GNU/Linux" in out
    assert "PYAXVISOR-CPUS: 1" in out
    # the command ran: the timer and the UART interrupt (PLIC source 10) both count
    timer = re.search(r"^\s*\d+:\s+(\d+)\s+RISC-V INTC\s+5 Edge\s+riscv-timer", out, re.M)
    assert timer is not None and int(timer.group(1)) > 10, out[-3000:]
    assert re.search(r"SiFive PLIC\s+10 Level\s+ttyS0", out) or \
        re.search(r"PLIC\s+10\s+\w+\s+ttyS0", out), out[-3000:]


def test_debian_riscv64_linux_brings_up_two_harts():
    r = _boot_linux(2)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "smp: Brought up 1 node, 2 CPUs" in r.stdout
    assert "PYAXVISOR-CPUS: 2" in r.stdout

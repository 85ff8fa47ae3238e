"""Real firmware and kernels that nobody here wrote, from Debian's packages (fetched
and cached by ``pyaxvisor.images``): U-Boot to its prompt and Debian's arm64 Linux to
a busybox shell. Slow (tens of seconds each); CI runs them."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pytest
from screen import Screen

import pyaxvisor
from pyaxvisor import images
from pyaxvisor.boards.aarch64_virt.fdt import build_aarch64_dtb
from pyaxvisor.boards.aarch64_virt.layout import RAM_BASE
from pyaxvisor.boards.quick import aarch64_vm as Aarch64Vm

pytestmark = pytest.mark.slow


def test_u_boot_reaches_its_prompt_answers_version_and_resets():
    firmware = images.fetch("u-boot-arm64").read_bytes()
    screen = Screen()
    vm = Aarch64Vm(ram_size=512 << 20, smp=1, console_write=screen.write)
    result = {}
    try:
        vm.write_guest(0, firmware)
        vm.write_guest(RAM_BASE, build_aarch64_dtb(memory=[(RAM_BASE, 512 << 20)], cpus=[0]))
        runner = threading.Thread(
            target=lambda: result.setdefault("r", vm.run(0, dtb_addr=RAM_BASE, timeout=180)))
        runner.start()
        pos = screen.wait_for(b"=> ")
        vm.uart.receive(b"version\r")
        pos = screen.wait_for(b"U-Boot 2023.01", pos)
        pos = screen.wait_for(b"=> ", pos)
        vm.uart.receive(b"reset\r")
        runner.join(60)
    finally:
        vm.close()
    assert result["r"].reason == "reset"  # PSCI SYSTEM_RESET
    assert b"DRAM:  512 MiB" in screen.data
    assert b"pl011@9000000" in screen.data


def _boot_linux(smp: int, extra: str = "",
                machine: str = "virt") -> subprocess.CompletedProcess[str]:
    kernel = images.fetch("linux-arm64")
    initrd = images.fetch("initramfs-arm64")
    return subprocess.run(
        [sys.executable, "-m", "pyaxvisor.cli", "run", "-M", machine, "-kernel", str(kernel),
         "-initrd", str(initrd), "-append", f"console=ttyAMA0 {extra}".strip(), "-m", "512M",
         "-smp", str(smp), "--timeout", "300"],
        capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL)


def test_debian_arm64_linux_boots_to_busybox_runs_a_command_and_powers_off():
    t0 = time.monotonic()
    with pyaxvisor.Machine(arch="aarch64", kernel=images.fetch("linux-arm64"),
                           initrd=images.fetch("initramfs-arm64"),
                           append='console=ttyAMA0 pyaxvisor.cmd="cat /proc/interrupts"',
                           memory="512M", timeout=300) as m:
        m.console.expect(r"Linux version 6\.", timeout=120)
        m.console.expect("PYAXVISOR-USERSPACE-OK", timeout=240)
        m.console.expect("PYAXVISOR-CMD-BEGIN: cat /proc/interrupts", timeout=60)
        m.console.expect("PYAXVISOR-CMD-END: status=0", timeout=60)
        m.console.expect("reboot: Power down", timeout=60)
        result = m.wait(60)
    assert result.reason == "poweroff" and m.exit_status == 0, result
    out = m.console.text
    assert "aarch64 GNU/Linux" in out
    assert "PYAXVISOR-CPUS: 1" in out
    # the power key's GPIO: Linux's pl061 driver took the device tree node and the IDs
    assert "pl061_gpio 9030000.pl061: PL061 GPIO chip registered" in out
    # the command ran: Linux's interrupt counts show timer PPI 27 and UART SPI 33 on the GIC
    timer = re.search(r"^\s*\d+:\s+(\d+)\s+GIC-0\s+27 Level\s+arch_timer", out, re.M)
    assert timer is not None and int(timer.group(1)) > 10
    assert re.search(r"GIC-0\s+33 Level\s+uart-pl011", out)
    assert time.monotonic() - t0 < 300


def test_debian_arm64_linux_brings_up_two_cpus():
    r = _boot_linux(2)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "CPU1: Booted secondary processor 0x0000000001" in r.stdout
    assert "SMP: Total of 2 processors activated." in r.stdout
    assert "PYAXVISOR-CPUS: 2" in r.stdout
    # the device tree's kaslr-seed, as QEMU's virt gives: the kernel randomises itself
    assert "kernel page table isolation forced ON by KASLR" in r.stdout
    assert "KASLR disabled" not in r.stdout


def test_debian_arm64_linux_gets_no_kaslr_seed_with_dtb_randomness_off():
    r = _boot_linux(1, machine="virt,dtb-randomness=off")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "KASLR disabled due to lack of seed" in r.stdout
    assert "forced ON by KASLR" not in r.stdout

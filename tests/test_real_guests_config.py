"""Debian's arm64 Linux booted from an AxVisor VM config file: RAM at 0x8000_0000 (not
the virt board's default), the kernel, initrd and device tree at the addresses the
file gives, two vCPUs with their MPIDRs from ``phys_cpu_ids``. Slow; CI runs it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pyaxvisor import images

pytestmark = pytest.mark.slow

CONFIG = """\
[base]
id = 3
name = "debian-linux"
vm_type = 2
cpu_num = 2
phys_cpu_ids = [0x0, 0x1]

[kernel]
entry_point = 0x8020_0000
kernel_path = "{kernel}"
kernel_load_addr = 0x8020_0000
ramdisk_path = "{initrd}"
ramdisk_load_addr = 0x9000_0000
dtb_load_addr = 0x8000_0000
cmdline = 'console=ttyAMA0 pyaxvisor.cmd="cat /proc/iomem"'
memory_regions = [
    [0x8000_0000, 0x2000_0000, 0x7, 1],  # 512 MiB, MAP_IDENTICAL
]

[devices]
passthrough_devices = [["/"]]
excluded_devices = [["/pcie@10000000"]]
emu_devices = []
interrupt_mode = "passthrough"
"""


def test_debian_linux_boots_from_an_axvisor_config_with_ram_at_2_gib(tmp_path):
    config = tmp_path / "linux.toml"
    config.write_text(CONFIG.format(kernel=images.fetch("linux-arm64"),
                                    initrd=images.fetch("initramfs-arm64")))
    check = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", "config", "check",
                            str(config), "--arch", "aarch64"], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stderr
    assert "[0x80000000, 0xa0000000) 512 MiB" in check.stdout
    r = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", "run", str(config), "--arch",
                        "aarch64", "--timeout", "300"], capture_output=True, text=True,
                       timeout=400, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    out = r.stdout
    assert "Machine model: linux,dummy-virt" in out
    assert "CPU1: Booted secondary processor 0x0000000001" in out
    assert "PYAXVISOR-USERSPACE-OK" in out
    assert "PYAXVISOR-CPUS: 2" in out
    # Linux found its RAM where the file put it, and the initrd the file placed
    assert re.search(r"^\s*80000000-9fffffff : System RAM", out, re.M), out[-3000:]
    assert "PYAXVISOR-CMD-END: status=0" in out
    assert "reboot: Power down" in out


RISCV_CONFIG = """\
[base]
id = 4
name = "debian-riscv64"
vm_type = 2
cpu_num = 2
phys_cpu_ids = [0, 1]

[kernel]
entry_point = 0x8020_0000
kernel_path = "{kernel}"
kernel_load_addr = 0x8020_0000
ramdisk_path = "{initrd}"
ramdisk_load_addr = 0x9000_0000
dtb_load_addr = 0x8800_0000
cmdline = 'console=ttyS0 pyaxvisor.cmd="cat /proc/device-tree/chosen/bootargs"'
memory_regions = [
    [0x8000_0000, 0x2000_0000, 0x7, 0],
]

[devices]
passthrough_devices = [["/"]]
emu_devices = []
interrupt_mode = "emu"
"""


def test_debian_riscv64_linux_boots_from_an_axvisor_config(tmp_path):
    # no [pyaxvisor] table and no --arch: the kernel's Image header says riscv64
    config = tmp_path / "riscv.toml"
    config.write_text(RISCV_CONFIG.format(kernel=images.fetch("linux-riscv64"),
                                          initrd=images.fetch("initramfs-riscv64")))
    r = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", "run", str(config),
                        "--timeout", "300"], capture_output=True, text=True, timeout=400,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    out = r.stdout
    assert "Machine model: riscv-virtio,qemu" in out
    assert "smp: Brought up 1 node, 2 CPUs" in out
    assert "PYAXVISOR-CPUS: 2" in out
    assert "console=ttyS0 pyaxvisor.cmd=" in out  # the command printed the file's cmdline
    assert "PYAXVISOR-CMD-END: status=0" in out
    assert "reboot: Power down" in out

"""Self-modifying code on the software engine: code stored before it first runs, code
rewritten after it ran (with the architecture's cache-maintenance sequence), and data
stored into pages that hold code. Whatever the engine (stock Unicorn or the patched
build, whose stores skip the slow path on pages without translated code) does, the
guest must see the architecture's behaviour."""

from __future__ import annotations

import subprocess
import sys

from aarch64_machine import RAM
from guest_build import build

LOAD = RAM + 0x8_0000
#: where a flat RISC-V payload goes (U-Boot S-mode's link address)
RISCV_PAYLOAD = 0x8020_0000


def test_aarch64_self_modifying_code(tmp_path):
    image = tmp_path / "self_modifying.bin"
    image.write_bytes(build("aarch64", "self_modifying", LOAD))
    r = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", "run", "-kernel", str(image)],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r\n", "\n") == "self-modifying code: ok\n", r.stdout + r.stderr


def test_riscv64_self_modifying_code(tmp_path):
    image = tmp_path / "self_modifying.bin"
    image.write_bytes(build("riscv64", "self_modifying", RISCV_PAYLOAD))
    r = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", "run", "--arch", "riscv64",
                        "-kernel", str(image)],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r\n", "\n") == "self-modifying code: ok\n", r.stdout + r.stderr

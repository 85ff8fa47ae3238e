"""benchmarks/profile_boot.py on the bundled AArch64 guest (a second or two): the
category table adds up to the wall time, the guest's exits appear with their counts
and the plot is a PNG."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_boot.py"
CATEGORIES = ("guest code (engine)", "in-CPU device accesses", "engine callbacks (Python)",
              "engine state via ctypes", "vCPU run path (Python)", "exit handlers",
              "halted (WFI)", "CPU off (CpuDown)", "exec-lock wait", "other lock waits",
              "run loop (dispatch)", "thread start-up/teardown", "not started / stopped")
NUMBER = r"(-?\d+(?:\.\d+)?)"


def test_profile_of_the_bundled_guest(tmp_path):
    png, data = tmp_path / "profile.png", tmp_path / "profile.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--guest", "bundled", "--png", str(png),
                        "--json", str(data)], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout

    # the category table: a row per category, one column per vCPU, total, %, count
    totals = {}
    for cat in CATEGORIES:
        m = re.search(rf"^{re.escape(cat)}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}%",
                      out, re.M)
        assert m is not None, f"no row for {cat!r}:\n{out}"
        vcpu0, vcpu1, total, _pct = map(float, m.groups())
        assert abs(vcpu0 + vcpu1 - total) <= 0.002
        totals[cat] = total
    wall = re.search(rf"^wall\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", out, re.M)
    assert wall is not None, out
    total_wall = float(wall.group(3))
    assert total_wall > 0
    assert abs(sum(totals.values()) - total_wall) <= 0.15 * total_wall
    assert totals["guest code (engine)"] > 0
    # per vCPU too, from the figures behind the table
    figures = json.loads(data.read_text())
    for cpu, cats in figures["per_cpu"].items():
        assert abs(sum(cats.values()) - figures["window"]) <= 0.15 * figures["window"], cpu

    # the bundled guest: PSCI CPU_ON once, CPU_OFF on CPU 1 once, SYSTEM_OFF once;
    # its UART output served inside the CPU
    exits = {m.group(1): int(m.group(2))
             for m in re.finditer(r"^(\w+)\s+(\d+)\s+\d+\.\d\s+(?:\d+\.\d|-)\s*$", out, re.M)}
    assert exits.get("CpuUp") == 1, out
    assert exits.get("CpuDown") == 1, out
    assert exits.get("SystemDown") == 1, out
    assert re.search(r"^Pl011\s+\d{2,}\s", out, re.M), out
    assert re.search(r"^ExecLock \(acquisitions\)\s+\d+", out, re.M), out
    # the sampler and the overhead line
    assert re.search(r"sampled every 1 ms: \d+ samples", out), out
    assert "top 25 Python functions by self time" in out
    assert re.search(r"without the profiler: overhead [+-]\d+\.\d%", out), out

    data_png = png.read_bytes()
    assert len(data_png) > 1000
    assert data_png.startswith(b"\x89PNG\r\n\x1a\n")

"""Exit metrics end to end: ``--stats-json`` and ``--stats`` against a guest whose exits
are known (``guests/aarch64/exit_counts.S``), ``--trace``, ``pyaxvisor profile``'s PNG
and summary, snapshots taken while the VM runs, the histogram and the trace buffer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aarch64_machine import RAM
from guest_build import build, symbols
from hypothesis import given
from hypothesis import strategies as st

from pyaxvisor.boards.quick import aarch64_vm, boot, config_for, x86_vm
from pyaxvisor.boards.x86_pc.layout import KERNEL_LOAD
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.vcpu import MmioWrite
from pyaxvisor.vcpu.width import AccessWidth
from pyaxvisor.vm.exit_trace import ExitTrace
from pyaxvisor.vm.histogram import (
    BUCKETS,
    LatencyHistogram,
    bucket_lower_ns,
    bucket_of,
    bucket_upper_ns,
)

LOAD = RAM + 0x8_0000
UART = "mmio:pl011@0x9000000"
#: What exit_counts.S does on -smp 2 with every device access an exit.
KNOWN = ("-smp", "2", "--trap-mmio")


def pyaxvisor(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyaxvisor.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd,
                          env=env)


def guest_file(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(build("aarch64", name, LOAD))
    return str(path)


def test_stats_json_has_the_known_exits_by_reason_device_and_vcpu(tmp_path):
    out = tmp_path / "metrics.json"
    r = pyaxvisor("run", "-kernel", guest_file(tmp_path, "exit_counts"), *KNOWN,
                  "--stats-json", str(out), "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "0123456789abcde\n"
    m = json.loads(out.read_text())
    assert m["schema"] == 1 and m["running"] is False and m["vcpus"] == 2
    assert m["result"] == {"reason": "poweroff", "status": 0}
    reasons = m["exits"]["by_reason"]
    # Nothing (a preempted run) may come and go with the host's timing; the rest is exact
    exact = {name: e["count"] for name, e in reasons.items() if name != "Nothing"}
    assert exact == {"MmioWrite": 16, "CpuUp": 1, "CpuDown": 1, "SystemDown": 1}
    assert all(e["in_engine"] == 0 for e in reasons.values())
    assert m["exits"]["by_device"] == {
        UART: {"count": 16, "by_reason": {"MmioWrite": 16},
               "time_s": m["exits"]["by_device"][UART]["time_s"]}}
    by_vcpu = m["exits"]["by_vcpu"]
    assert {k: v for k, v in by_vcpu["0"]["by_reason"].items() if k != "Nothing"} == {
        "MmioWrite": 11, "CpuUp": 1, "SystemDown": 1}
    assert {k: v for k, v in by_vcpu["1"]["by_reason"].items() if k != "Nothing"} == {
        "MmioWrite": 5, "CpuDown": 1}
    assert by_vcpu["0"]["by_device"] == {UART: 11} and by_vcpu["1"]["by_device"] == {UART: 5}
    writes = reasons["MmioWrite"]
    assert sum(n for _lo, _hi, n in writes["histogram_ns"]) == 16
    lat = writes["latency_us"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert writes["time_s"] > 0
    # CpuDown waits (vCPU 1 stays off until the end): blocked time, not VMM time
    assert by_vcpu["1"]["blocked_s"] > 0 and by_vcpu["0"]["blocked_s"] == 0
    for cpu in ("0", "1"):
        assert by_vcpu[cpu]["guest_s"] > 0 and by_vcpu[cpu]["vmm_s"] > 0
        assert by_vcpu[cpu]["engine"]["in_cpu_writes"] == 0  # --trap-mmio: none in-CPU
    assert m["time"]["guest_s"] == pytest.approx(by_vcpu["0"]["guest_s"]
                                                 + by_vcpu["1"]["guest_s"])
    assert "preempt_stops" in m["engine"]  # the software CPU's own counters
    timeline = m["timeline"]["by_reason"]
    assert sum(timeline["MmioWrite"]) == 16 and sum(timeline["CpuUp"]) == 1
    # --stats prints the same figures
    rows = {line.split()[0]: line.split() for line in r.stderr.splitlines() if line.strip()}
    assert rows["MmioWrite"][1] == "16" and rows["CpuUp"][1] == "1"
    assert rows[UART][1] == "16"
    assert re.search(r"^vCPU 1: \d+ exits; guest [\d.]+ s, VMM [\d.]+ s, waiting [\d.]+ s$",
                     r.stderr, re.M)


def test_trace_logs_each_exit_of_the_kinds_asked(tmp_path):
    trace = tmp_path / "exits.txt"
    r = pyaxvisor("run", "-kernel", guest_file(tmp_path, "exit_counts"), *KNOWN,
                  "--trace", "mmiowrite,CpuUp", "--trace-file", str(trace))
    assert r.returncode == 0, r.stderr
    assert f"pyaxvisor: trace: 17 exits traced, 0 dropped; written to {trace}" in r.stderr
    lines = trace.read_text().splitlines()
    assert lines[-1] == "# 17 exits traced, 0 dropped"
    records = [line.split() for line in lines[:-1]]
    assert len(records) == 17
    assert [rec[3] for rec in records].count("MmioWrite") == 16
    (up,) = [rec for rec in records if rec[3] == "CpuUp"]
    assert up[1] == "vcpu=0" and up[4] == "addr=0x1"  # the target CPU
    for cpu, text in (("0", "0123456789\n"), ("1", "abcde")):
        mine = [rec for rec in records if rec[1] == f"vcpu={cpu}" and rec[3] == "MmioWrite"]
        assert [chr(int(rec[6].removeprefix("value="), 16)) for rec in mine] == list(text)
        assert all(rec[4] == f"dev={UART}" and rec[5] == "addr=0x9000000" for rec in mine)
    # the PC is the store's: each CPU's loop has one strb, its third instruction
    labels = symbols("aarch64", "exit_counts", LOAD)
    for cpu, label in (("0", "_start"), ("1", "secondary")):
        pcs = {rec[2] for rec in records if rec[3] == "MmioWrite" and rec[1] == f"vcpu={cpu}"
               and rec[6] != "value=0xa"}
        assert pcs == {f"pc={labels[label] + 8:#x}"}


@pytest.mark.parametrize(("args", "message"), [
    (("--trace", "MmioWrite,Bogus"), "--trace: unknown exit kind 'Bogus'; valid kinds: "
     "CpuDown, CpuUp, DebugStop, ExternalInterrupt, FailEntry, Halt, Hypercall, IoRead, "
     "IoWrite, MmioRead, MmioWrite"),
    (("--trace", ","), "--trace: name at least one exit kind"),
    (("--trace-file", "t.txt"), "--trace-file needs --trace KINDS"),
    (("--stats-json", "/nonexistent/dir/m.json"),
     "--stats-json /nonexistent/dir/m.json: the directory /nonexistent/dir does not exist"),
    (("--stats-json", "."), "--stats-json .: is a directory, not a file"),
])
def test_bad_observation_options_are_usage_errors(tmp_path, args, message):
    r = pyaxvisor("run", *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_profile_writes_a_png_and_a_summary(tmp_path):
    png = tmp_path / "profile.png"
    r = pyaxvisor("profile", "--png", str(png), "-kernel", guest_file(tmp_path, "exit_counts"),
                  *KNOWN)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "0123456789abcde\n"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert f"profile: {png} ({len(data)} bytes)" in r.stderr
    assert re.search(r"^exits: \d+ in [\d.]+ s \(\d+/s\) on 2 vCPU\(s\)$", r.stderr, re.M)
    assert re.search(r"^time: guest [\d.]+ s \(\d+%\), VMM", r.stderr, re.M)
    assert re.search(r"^MmioWrite\s+16\s+0\s", r.stderr, re.M)
    assert f"devices: {UART} 16" in r.stderr
    assert len(r.stderr.splitlines()) <= 24  # one screen


def test_profile_without_matplotlib_names_the_extra(tmp_path):
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(shadow.parent), *os.environ.get("PYTHONPATH", "").split(os.pathsep)])}
    r = pyaxvisor("profile", "--png", str(tmp_path / "p.png"), env=env)
    assert r.returncode == 4
    assert "install the optional extra: pip install 'pyaxvisor[profile]'" in r.stderr
    assert not (tmp_path / "p.png").exists()


def test_metrics_are_off_unless_asked_and_snapshots_work_while_running(tmp_path):
    kernel = Path(guest_file(tmp_path, "exit_counts"))
    plain = boot(config_for("aarch64", smp=2, kernel=kernel, in_cpu_devices=False),
                 lambda _b: None)
    assert plain.reason == "poweroff" and plain.metrics is None

    # 4000 UART writes and 4000 flag reads as exits; snapshots from another thread
    # meanwhile, and from the vCPU's own thread at its 1000th and 3000th byte (certainly
    # mid-run, however fast the host)
    printed, inside = [0], []

    def console(data: bytes) -> None:
        printed[0] += len(data)
        if printed[0] in (1000, 3000):
            inside.append(vm.metrics.snapshot())

    vm = aarch64_vm(smp=1, exit_times=True, in_cpu_mmio=False, console_write=console)
    try:
        assert vm.metrics is not None
        vm.write_guest(LOAD, build("aarch64", "hostile_mmio_storm", LOAD))
        results = []
        runner = threading.Thread(target=lambda: results.append(vm.run(LOAD, timeout=60)))
        runner.start()
        seen = []
        while runner.is_alive():
            seen.append(vm.metrics.snapshot())
            time.sleep(0.005)  # leave the GIL to the vCPU between looks
        runner.join(30)
        assert results and results[0].reason == "poweroff", results
        assert [s["running"] for s in inside] == [True, True]
        first, second = (s["exits"]["total"] for s in inside)
        assert 1000 <= first < second < 8001
        totals = [s["exits"]["total"] for s in seen if s["running"]]
        assert totals == sorted(totals)  # never backwards, from any thread
        final = results[0].metrics
        assert final["running"] is False
        assert final["exits"]["by_reason"]["MmioWrite"]["count"] == 4001
        assert final["exits"]["by_reason"]["MmioRead"]["count"] == 4000
        assert final["exits"]["by_device"][UART]["count"] == 8001
        json.dumps(final)  # JSON-able as it is
    finally:
        vm.close()


def test_exit_trace_drops_and_counts_when_its_buffer_is_full(tmp_path):
    path = tmp_path / "t.txt"
    trace = ExitTrace(path, frozenset({MmioWrite}), capacity=4)
    e = MmioWrite(GuestPhysAddr(0x9000000), AccessWidth.Byte, 0x41)
    for i in range(10):  # the writer is not running: the ring fills and then drops
        trace.record(i % 2, 0x1000 + 4 * i, e, ("mmio", "pl011", 0x9000000), None)
    assert trace.dropped == 6
    trace.start()
    summary = trace.close()
    assert summary == ("4 exits traced, 6 dropped (the buffer of 4 records was full; "
                       "vCPU 0: 3, vCPU 1: 3)")
    lines = path.read_text().splitlines()
    assert [line.split()[1:3] for line in lines[:4]] == [
        ["vcpu=0", "pc=0x1000"], ["vcpu=1", "pc=0x1004"], ["vcpu=0", "pc=0x1008"],
        ["vcpu=1", "pc=0x100c"]]
    assert lines[4] == f"# {summary}"


@given(st.integers(min_value=0, max_value=1 << 45))
def test_each_duration_falls_in_its_bucket(ns):
    i = bucket_of(ns)
    assert 0 <= i < BUCKETS
    if i < BUCKETS - 1:
        assert bucket_lower_ns(i) <= ns <= bucket_upper_ns(i)
        assert bucket_upper_ns(i) - bucket_lower_ns(i) <= max(bucket_lower_ns(i) // 4, 0)


def test_histogram_percentiles_and_maximum():
    h = LatencyHistogram()
    for ns in [1000] * 98 + [50_000, 2_000_000]:
        h.record(ns)
    assert h.count == 100 and h.max_ns == 2_000_000
    assert bucket_lower_ns(bucket_of(1000)) <= h.percentile_ns(0.5) <= 1000 * 5 // 4
    assert 50_000 <= h.percentile_ns(0.99) <= 50_000 * 5 // 4
    assert h.percentile_ns(1.0) == 2_000_000
    assert h.summary_us()["max"] == 2000.0
    merged = LatencyHistogram.merged([h, h.copy()])
    assert merged.count == 200 and merged.max_ns == 2_000_000
    assert sum(n for _lo, _hi, n in merged.nonzero()) == 200


_kvm_ok, _kvm_reason = kvm_usable()


@pytest.mark.kvm
@pytest.mark.skipif(not _kvm_ok, reason=f"KVM not usable: {_kvm_reason}")
def test_x86_port_exits_served_in_the_engine_and_by_device():
    # ports.S: the COM1 scratch register written and read, port 0x80 (nothing there)
    # read twice, "ports ok\n" on COM1, then 0x604 powers off
    vm = x86_vm(ram_size=32 << 20, exit_times=True)
    try:
        vm.write_guest(KERNEL_LOAD, build("x86_64", "ports", KERNEL_LOAD))
        result = vm.run(KERNEL_LOAD, mode="protected", timeout=60)
    finally:
        vm.close()
    assert result.reason == "poweroff", result
    m = result.metrics
    reasons = m["exits"]["by_reason"]
    # the UART's and the power port's accesses are served inside the vCPU's run
    assert (reasons["IoWrite"]["count"], reasons["IoWrite"]["in_engine"]) == (11, 11)
    assert (reasons["IoRead"]["count"], reasons["IoRead"]["in_engine"]) == (3, 1)
    assert m["exits"]["by_device"] == {"port:unclaimed": {
        "count": 2, "by_reason": {"IoRead": 2},
        "time_s": m["exits"]["by_device"]["port:unclaimed"]["time_s"]}}
    assert m["engine"]["kvm_runs"] >= 1

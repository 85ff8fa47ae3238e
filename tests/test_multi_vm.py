"""Several VMs in one ``pyaxvisor run``: ``--vm`` groups and config files, each VM's name,
the consoles on one terminal (``[NAME] `` prefixes, input to the focused VM, the Ctrl-A
keys on a pseudo-terminal), VMs that end or fail while the others run on, the summary
and the exit status, and what several VMs cannot share."""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
from aarch64_machine import RAM
from guest_build import build
from test_boot_status import PtyRun

from pyaxvisor.cli.console_mux import HOLD, ConsoleMux
from pyaxvisor.cli.host import check_guests_memory, host_memory
from pyaxvisor.cli.multi import end_phrase
from pyaxvisor.cli.vm_groups import VmArgs, split
from pyaxvisor.errors import AxError, InvalidInput
from pyaxvisor.vm.result import VmResult

HELLO = str(Path(str(resources.files("pyaxvisor.guests"))) / "aarch64" / "hello.bin")
HELLO_LINES = ["Hello from the pyaxvisor AArch64 guest on CPU 0",
               "CPU 1 is up (PSCI CPU_ON)",
               "virtual timer interrupt 27 taken through the GICv2",
               "powering off (PSCI SYSTEM_OFF)"]
FAIL_MESSAGE = "error: vCPU 0: unknown hypercall 0xc600bad0"
#: the riscv64 board loads a raw -kernel 2 MiB into RAM
RISCV_LOAD = 0x8020_0000
GiB = 1 << 30


def aarch64_guest(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(build("aarch64", name, RAM + 0x8_0000))
    return str(path)


def riscv64_guest(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"rv-{name}.bin"
    path.write_bytes(build("riscv64", name, RISCV_LOAD))
    return str(path)


def pyaxvisor(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", *args], capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def lines_of(output: str, name: str) -> list[str]:
    """The console lines of the VM ``name`` (prefix taken off)."""
    prefix = f"[{name}] "
    return [line[len(prefix):].rstrip("\r") for line in output.splitlines()
            if line.startswith(prefix)]


def text_of(output: str, name: str) -> str:
    """What the VM ``name`` wrote, its lines joined: a line another VM's output cut
    (when the machine is slow, see ``console_mux.HOLD``) goes on in a line of its own."""
    return "".join(lines_of(output, name))


def summary(stderr: str) -> list[str]:
    """The summary lines: the last line per VM name on standard error."""
    return [line for line in stderr.splitlines()
            if line.startswith("pyaxvisor: [") and "still running" not in line]


def usage_error(p: subprocess.CompletedProcess[str], message: str) -> None:
    assert p.returncode == 2, p.stderr
    assert message in p.stderr, p.stderr


# -- how the command line splits ------------------------------------------------------------

VALUES = frozenset({"-kernel", "-m", "--timeout", "-name", "-M"})


def test_vm_groups_take_the_common_flags_first():
    vms = split(["--timeout", "10", "--vm", "-kernel", "a.bin", "--timeout", "60",
                 "--vm", "-M", "virt", "b.toml", "-m", "256M", "--vm"], VALUES)
    assert vms == [
        VmArgs("--vm group 1", ("--timeout", "10", "-kernel", "a.bin", "--timeout", "60")),
        VmArgs("b.toml", ("--timeout", "10", "-M", "virt", "-m", "256M", "b.toml")),
        VmArgs("--vm group 3", ("--timeout", "10")),
    ]


def test_config_files_without_vm_groups_share_every_flag():
    vms = split(["a.toml", "--timeout", "5", "b.toml", "-name", "x.toml", "-m=64M"], VALUES)
    # "x.toml" is -name's value, not a third file
    assert vms == [VmArgs("a.toml", ("--timeout", "5", "-name", "x.toml", "-m=64M", "a.toml")),
                   VmArgs("b.toml", ("--timeout", "5", "-name", "x.toml", "-m=64M", "b.toml"))]
    assert split(["a.toml", "--timeout", "5"], VALUES) is None  # one VM: plain run
    assert split(["-kernel", "a.bin", "-m", "64M"], VALUES) is None
    assert split(["--", "-odd.toml", "b.toml"], VALUES) == [
        VmArgs("-odd.toml", ("--", "-odd.toml")), VmArgs("b.toml", ("b.toml",))]


@pytest.mark.parametrize(("args", "message"), [
    (["a.toml", "--vm", "-kernel", "b"], "the config file a.toml comes before the first --vm"),
    (["--vm", "a.toml", "b.toml"], "--vm group 1 has 2 config files (a.toml, b.toml)"),
])
def test_vm_groups_that_cannot_be_read_one_way(args, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        split(args, VALUES)


@pytest.mark.parametrize(("args", "message"), [
    (["a.toml", "--vm", "-kernel", HELLO], "the config file a.toml comes before the first --vm"),
    (["--vm", "-kernel", HELLO, "--vm", "-smp", "lots"], "--vm group 2: cannot parse -smp 'lots'"),
    (["--vm", "--vm", "-no-such-option"], "--vm group 2: No such option '-no-such-option'"),
    (["--vm", "--vm", "--timeout", "-1"], "--vm group 2: --timeout '-1': give a positive number"),
    (["--vm", "-kernel", HELLO, "-s", "--vm", "-kernel", HELLO],
     "--vm group 1: -qmp, -gdb and -s serve one VM: give them to a run of one VM"),
    (["--vm", "-kernel", HELLO, "--vm", "-kernel", HELLO, "-qmp", "unix:q.sock,server,nowait"],
     "--vm group 2: -qmp, -gdb and -s serve one VM"),
])
def test_bad_vm_groups_are_usage_errors_naming_the_group(args, message):
    usage_error(pyaxvisor("run", *args), message)


def test_a_config_file_that_cannot_be_read_stops_everything_before_a_vm_runs(tmp_path):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    gen = pyaxvisor("config", "generate", "--arch", "aarch64", "--kernel", HELLO, "-m", "64M",
                    "-o", str(good))
    assert gen.returncode == 0, gen.stderr
    bad.write_text("this is [not toml\n")
    p = pyaxvisor("run", str(good), str(bad), "--timeout", "60")
    assert p.returncode == 4, p.stderr
    assert p.stderr.startswith(f"pyaxvisor: {bad}: TOML syntax error"), p.stderr
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert p.stdout == ""


def test_a_vm_that_cannot_be_loaded_fails_alone(tmp_path):
    missing = tmp_path / "none"
    p = pyaxvisor("run", "--timeout", "60", "--vm", "-kernel", HELLO, "-smp", "2",
                  "--vm", "-kernel", str(missing))
    assert p.returncode == 4, p.stderr
    assert text_of(p.stdout, "vm0") == "".join(HELLO_LINES), p.stdout
    assert summary(p.stderr)[-2:] == [
        "pyaxvisor: [vm0] powered off (status 0)",
        f"pyaxvisor: [vm1] error: kernel {missing}: no such file (status 4)"], p.stderr


# -- two architectures, one failing -----------------------------------------------------------

def test_two_architectures_in_one_process_one_fails_while_the_other_runs_on(tmp_path):
    # vm0 (riscv64) prints, then waits for a byte of input; arm (aarch64) prints and
    # makes a hypercall nobody serves: the VM error ends arm. Only once arm's end is on
    # standard error does vm0 get its byte (piped input goes to the first VM): it was
    # still running, finishes and powers off.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyaxvisor.cli", "run", "--timeout", "60",
         "--vm", "--arch", "riscv64", "-kernel", riscv64_guest(tmp_path, "uart_wait"),
         "--vm", "-name", "arm", "-kernel", aarch64_guest(tmp_path, "print_then_fail")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        err = b""
        deadline = time.monotonic() + 60
        while b"still running" not in err:
            assert time.monotonic() < deadline, err
            if select.select([proc.stderr], [], [], 1)[0]:
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk, err
                err += chunk
        assert err.decode().startswith(f"pyaxvisor: [arm] {FAIL_MESSAGE}"), err
        assert err.decode().rstrip().endswith("(status 4); 1 VM still running"), err
        out, rest = proc.communicate(b"Q", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stdout, stderr = out.decode(), (err + rest).decode()
    assert "Traceback" not in stderr, stderr
    assert text_of(stdout, "vm0") == "rv: waitingrv: got Q", stdout
    assert text_of(stdout, "arm") == "arm: failing on purpose", stdout
    assert all(line.startswith(("[vm0] ", "[arm] ")) for line in stdout.splitlines()), stdout
    vm0, arm = summary(stderr)
    assert vm0 == "pyaxvisor: [vm0] powered off (status 0)", stderr
    assert arm.startswith(f"pyaxvisor: [arm] {FAIL_MESSAGE}"), stderr
    assert arm.endswith("(status 4)"), stderr
    assert proc.returncode == 4  # the first VM whose status is not 0


# -- names, three VMs, the exit status ------------------------------------------------------

def test_duplicate_names_get_a_suffix(tmp_path):
    config = tmp_path / "a.toml"
    gen = pyaxvisor("config", "generate", "--arch", "aarch64", "--kernel", HELLO, "-m", "64M",
                    "-smp", "2", "-o", str(config))
    assert gen.returncode == 0, gen.stderr
    (tmp_path / "b.toml").write_text(config.read_text())  # the same [base] name
    p = pyaxvisor("run", str(config), str(tmp_path / "b.toml"), "--timeout", "60")
    assert p.returncode == 0, p.stderr
    name = "hello.bin"  # config generate names the VM after its kernel
    for each in (name, f"{name}-2"):
        assert text_of(p.stdout, each) == "".join(HELLO_LINES), p.stdout
    assert summary(p.stderr)[-2:] == [f"pyaxvisor: [{name}] powered off (status 0)",
                                      f"pyaxvisor: [{name}-2] powered off (status 0)"]
    # -name beats the file's name (flags override the file)
    p = pyaxvisor("run", "--timeout", "60", "--vm", str(config), "-name", "web",
                  "--vm", str(tmp_path / "b.toml"))
    assert p.returncode == 0, p.stderr
    assert [line.split("]")[0] for line in summary(p.stderr)[-2:]] == \
        ["pyaxvisor: [web", f"pyaxvisor: [{name}"]
    # without a name a VM is vmN, N its index; a name given twice gets a suffix
    p = pyaxvisor("run", "--timeout", "60", "-kernel", HELLO, "-smp", "2", "--vm", "-name",
                  "web", "--vm", "-name", "web", "--vm", "-name", "vm1", "--vm")
    assert p.returncode == 0, p.stderr
    assert [line.split("]")[0] for line in summary(p.stderr)[-4:]] == \
        ["pyaxvisor: [web", "pyaxvisor: [web-2", "pyaxvisor: [vm1", "pyaxvisor: [vm3"]
    assert text_of(p.stdout, "web-2") == "".join(HELLO_LINES), p.stdout


def test_three_vms_each_with_its_end_and_the_first_failure_is_the_status(tmp_path):
    # common flags first: every VM runs 2 vCPUs with a 60 s timeout unless its own say
    # otherwise; vm1 waits for input that never comes (stdin is /dev/null) until its
    # own 3 s timeout; vm2 fails. The status is vm1's (124), the first VM that did not
    # end with 0, though vm2 failed first.
    start = time.monotonic()
    p = pyaxvisor("run", "-smp", "2", "--timeout", "60",
                  "--vm", "-kernel", HELLO,
                  "--vm", "-kernel", aarch64_guest(tmp_path, "uart_echo"), "--timeout", "3",
                  "--vm", "-kernel", aarch64_guest(tmp_path, "print_then_fail"))
    assert p.returncode == 124, p.stderr
    assert time.monotonic() - start < 50
    assert text_of(p.stdout, "vm0") == "".join(HELLO_LINES), p.stdout
    assert text_of(p.stdout, "vm1") == "?", p.stdout
    assert text_of(p.stdout, "vm2") == "arm: failing on purpose", p.stdout
    done = summary(p.stderr)[-3:]
    assert done[0] == "pyaxvisor: [vm0] powered off (status 0)", p.stderr
    assert done[1] == "pyaxvisor: [vm1] timeout after 3 s (status 124)", p.stderr
    assert done[2].startswith(f"pyaxvisor: [vm2] {FAIL_MESSAGE}"), p.stderr


def test_each_end_has_its_phrase():
    assert end_phrase(VmResult("poweroff"), 5, "") == "powered off"
    assert end_phrase(VmResult("reset"), None, "") == "reset"
    assert end_phrase(VmResult("reset", detail="triple fault on vCPU 0"), None, "") == \
        "reset (triple fault on vCPU 0)"
    assert end_phrase(VmResult("debug-exit", exit_status=(3 << 1) | 1), None, "") == \
        "debug-exit value 3"
    assert end_phrase(VmResult("timeout"), 2.5, "") == "timeout after 2.5 s"
    assert end_phrase(VmResult("quit"), None, "Ctrl-A X") == "stopped by Ctrl-A X"
    assert end_phrase(VmResult("error", error=AxError("vCPU 0: boom")), None, "") == \
        "error: vCPU 0: boom"


def test_sigint_stops_every_vm(tmp_path):
    echo = aarch64_guest(tmp_path, "uart_echo")
    proc = subprocess.Popen([sys.executable, "-m", "pyaxvisor.cli", "run", "--timeout", "120",
                             "--vm", "-kernel", echo, "--vm", "-kernel", echo],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while seen.count(b"?") < 2:  # both guests are up
            assert time.monotonic() < deadline, seen
            if select.select([proc.stdout], [], [], 1)[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, seen
                seen += chunk
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert summary(err.decode()) == ["pyaxvisor: [vm0] stopped by SIGINT (status 0)",
                                     "pyaxvisor: [vm1] stopped by SIGINT (status 0)"]
    assert "interrupted (SIGINT); every VM was stopped" in err.decode()


# -- what VMs cannot share --------------------------------------------------------------------

def test_two_vms_on_one_disk_image_read_write_are_refused_by_name(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    rw = f"file={disk},format=raw,if=virtio"
    p = pyaxvisor("run", "--vm", "-name", "a", "-drive", rw, "--vm", "-name", "b",
                  "-drive", f"file={tmp_path}/../{tmp_path.name}/disk.img,if=virtio,"
                  "readonly=on")
    usage_error(p, "[a] and [b] both use the disk image")
    assert "one writer or any number of readers" in p.stderr
    assert p.stdout == ""
    # read-only on both: shared
    ro = f"{rw},readonly=on"
    p = pyaxvisor("run", "--timeout", "60", "-smp", "2", "-drive", ro, "--vm", "--vm")
    assert p.returncode == 0, p.stderr
    for name in ("vm0", "vm1"):
        assert text_of(p.stdout, name) == "".join(HELLO_LINES), p.stdout


def test_one_output_file_for_two_vms_is_refused(tmp_path):
    p = pyaxvisor("run", "--stats-json", str(tmp_path / "s.json"), "--vm", "--vm")
    usage_error(p, f"[vm0] (--stats-json) and [vm1] (--stats-json) would both write "
                   f"{tmp_path / 's.json'}")


def test_one_tap_interface_for_two_vms_is_refused():
    # checked before anything is opened: no TAP interface needs to exist
    p = pyaxvisor("run", "-netdev", "tap,id=n0,ifname=pyax-mv0", "-device",
                  "virtio-net-device,netdev=n0", "--vm", "-name", "a", "--vm", "-name", "b")
    usage_error(p, "[a] and [b] both use the TAP interface pyax-mv0")


def test_the_vms_memory_together_is_checked_against_the_host():
    host = host_memory()
    assert host is not None
    each = (host[0] + host[1]) // GiB // 2 + 1  # each fits, both do not
    start = time.monotonic()
    p = pyaxvisor("run", "--arch", "x86_64", "-m", f"{each}G", "--vm", "--vm", "-name", "big")
    assert time.monotonic() - start < 15  # nothing was reserved or mapped
    assert p.returncode == 4, p.stderr
    assert f"the 2 VMs' {2 * each} GiB of RAM together (vm0 {each} GiB, big {each} GiB) " \
           "is more than this host can ever back" in p.stderr


def test_the_memory_rule_for_several_vms(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        1048576 kB\nSwapTotal:        524288 kB\n")
    check_guests_memory({"a": 1 << 29, "b": 1 << 30}, meminfo)  # exactly RAM + swap
    with pytest.raises(InvalidInput) as info:
        check_guests_memory({"a": 1 << 30, "b": 1 << 30}, meminfo)
    assert str(info.value) == ("the 2 VMs' 2 GiB of RAM together (a 1 GiB, b 1 GiB) is more "
                               "than this host can ever back: 1 GiB of RAM and 512 MiB of "
                               "swap")


# -- the multiplexed console ----------------------------------------------------------------

def test_each_line_gets_its_vms_prefix_and_no_line_mixes_two_vms():
    out, err = io.BytesIO(), io.BytesIO()
    mux = ConsoleMux(["a", "bb"], output=out, errors=err)
    a, b = mux.writer(0), mux.writer(1)
    a(b"one\r\ntw")
    b(b"x")  # held: a's line is open
    assert out.getvalue() == b"[a] one\r\n[a] tw"
    a(b"o\r\n")  # a's line ends: b's bytes start the next
    mux.notice("pyaxvisor: note")  # ends b's line
    a(b"three")
    a(b"\nfour")
    b(b"y\n")
    held_at = time.monotonic()
    assert out.getvalue() == b"[a] one\r\n[a] two\r\n[bb] x\n[a] three\n[a] four"
    # a stays quiet: after HOLD its line is ended for it and b's line is shown
    while b"[bb] y" not in out.getvalue():
        assert time.monotonic() - held_at < 10, out.getvalue()
        time.sleep(0.02)
    assert time.monotonic() - held_at >= HOLD * 0.9
    a(b"!\n")
    mux.flush()
    assert out.getvalue() == (b"[a] one\r\n[a] two\r\n[bb] x\n[a] three\n[a] four\n"
                              b"[bb] y\n[a] !\n")
    assert err.getvalue() == b"pyaxvisor: note\n"


def console_of(seen: bytes, name: str) -> bytes:
    """What the VM ``name`` wrote, as the terminal shows it (prefixes taken off, its
    lines joined)."""
    prefix = f"[{name}] ".encode()
    return b"".join(line.rstrip(b"\r")[len(prefix):] for line in seen.split(b"\n")
                    if line.startswith(prefix))


def wait_console(run: PtyRun, name: str, text: bytes, timeout: float = 30) -> None:
    """Read the terminal until the VM ``name``'s console shows ``text``."""
    deadline = time.monotonic() + timeout
    while text not in console_of(run.seen, name):
        left = deadline - time.monotonic()
        assert left > 0, f"[{name}] did not show {text!r}; the terminal showed {run.seen!r}"
        if select.select([run.master], [], [], left)[0]:
            chunk = os.read(run.master, 4096)
            assert chunk, run.seen
            run.seen += chunk


def test_input_focus_and_the_keys_on_a_terminal(tmp_path):
    # two uart_echo guests: each prints '?', then echoes every byte plus one until '.'
    echo = aarch64_guest(tmp_path, "uart_echo")
    run = PtyRun("run", "--timeout", "120", "--vm", "-kernel", echo, "--vm", "-kernel", echo)

    def key(data: bytes) -> int:
        at = len(run.seen)
        os.write(run.master, data)
        return at

    try:
        wait_console(run, "vm0", b"?", 60)
        wait_console(run, "vm1", b"?", 60)
        key(b"a")  # the first VM has the input at the start
        wait_console(run, "vm0", b"?b")
        run.wait_for(b"pyaxvisor: input goes to [vm1] (VM 1, running)", 30, key(b"\x01n"))
        key(b"c\x01\x01")  # Ctrl-A Ctrl-A: a literal Ctrl-A (echoed as 2)
        wait_console(run, "vm1", b"?d\x02")
        run.wait_for(b"pyaxvisor: input goes to [vm0] (VM 0, running)", 30, key(b"\x010e"))
        wait_console(run, "vm0", b"?bf")
        at = run.wait_for(b"Ctrl-A 0..9", 30, key(b"\x01h"))
        run.wait_for(b"* 0 [vm0] running\r\n    1 [vm1] running\r\n", 30, at)
        # vm0 powers off; vm1 runs on
        run.wait_for(b"[vm0] powered off (status 0); 1 VM still running", 30, key(b"."))
        dropped = run.wait_for(b"[vm0] has ended: powered off; its input is dropped", 30,
                               key(b"zz"))
        run.wait_for(b"there is no VM 7: the VMs are 0..1", 30, key(b"z\x017"))
        assert run.seen.count(b"its input is dropped") == 1, run.seen[dropped:]  # said once
        run.wait_for(b"input goes to [vm1] (VM 1, running)", 30, key(b"\x01N"))
        key(b"g")
        wait_console(run, "vm1", b"?d\x02h")
        at = key(b"\x01x")  # Ctrl-A X stops every VM still running
        assert run.finish() == 0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    assert console_of(run.seen, "vm0") == b"?bf"
    tail = run.seen[at:]
    assert b"pyaxvisor: [vm0] powered off (status 0)\r\n" in tail, tail
    assert b"pyaxvisor: [vm1] stopped by Ctrl-A X (status 0)\r\n" in tail, tail
    # every line is a VM's (with its prefix) or the host's
    for line in run.seen.split(b"\n"):
        line = line.strip(b"\r")
        assert not line or line.startswith((b"[vm0] ", b"[vm1] ", b"pyaxvisor: ", b"  ",
                                            b"VMs (* takes the input):")), line

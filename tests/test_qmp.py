"""The QMP control socket: each command's transcript through the ``qemu.qmp`` client
(PyPI ``qemu.qmp``) against a running guest, the protocol's rules and bad input on a
raw socket, several clients, and ``pyaxvisor run -qmp`` end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from guest_build import build
from qemu.qmp import EventListener, ExecuteError, QMPClient

import pyaxvisor
from pyaxvisor.control.address import QmpAddress, parse_qmp_address
from pyaxvisor.control.framing import JsonSplitter, TooLong, Unbalanced
from pyaxvisor.control.qmp import MAX_MESSAGE
from pyaxvisor.errors import InvalidInput

AARCH64_LOAD = 0x4008_0000
RESULTS = 0x4001_0000


@pytest.fixture
def sock_dir():
    # a short directory: a Unix socket path has at most 107 bytes
    with tempfile.TemporaryDirectory(prefix="qmp", dir="/tmp") as d:
        yield Path(d)


def spin_image(tmp_path: Path) -> Path:
    image = tmp_path / "spin.bin"
    image.write_bytes(build("aarch64", "spin", AARCH64_LOAD))
    return image


def count(m) -> int:
    return struct.unpack("<Q", m.read_phys(RESULTS, 8))[0]


async def _client(path: Path) -> QMPClient:
    client = QMPClient("test")
    await asyncio.wait_for(client.connect(str(path)), 10)
    return client


async def _next_event(listener: EventListener, name: str) -> dict:
    while True:
        event = await asyncio.wait_for(listener.get(), 10)
        if event["event"] == name:
            return event


def test_each_command_through_qemu_qmp(tmp_path, sock_dir):
    path = sock_dir / "m.sock"
    with pyaxvisor.Machine(arch="aarch64", kernel=spin_image(tmp_path), smp=2, timeout=120,
                           qmp=f"unix:{path}") as m:
        assert m.qmp_addresses == [QmpAddress("unix", path=str(path))]
        transcript = asyncio.run(_each_command(m, path))
        m.wait(30)
    assert m.result.reason == "quit"
    assert m.exit_status == 0
    assert not path.exists()  # the server removed its socket
    assert [line.split(" ->")[0] for line in transcript] == [
        "query-status", "query-cpus-fast", "stop", "query-status", "query-exits",
        "query-vms", "cont", "query-status", "system_powerdown",
        "query-status", "query-version", "query-commands", "no-such-command", "quit"]


async def _each_command(m, path: Path) -> list[str]:
    client = await _client(path)
    transcript = []
    greeting = client.greeting.QMP
    assert greeting.version["qemu"] == {"major": 8, "minor": 0, "micro": 0}
    assert greeting.version["package"].startswith("pyaxvisor ")
    assert list(greeting.capabilities) == []
    with client.listener() as listener:
        async def run(command):
            result = await client.execute(command)
            transcript.append(f"{command} -> {result}")
            return result

        assert await run("query-status") == {"running": True, "status": "running"}
        deadline = time.monotonic() + 10
        while count(m) < 1000:  # the guest runs
            assert time.monotonic() < deadline, "the guest did not start counting"
            await asyncio.sleep(0.01)
        cpus = await run("query-cpus-fast")
        # vCPU 1 was never started by the guest (PSCI CPU_ON): it has no thread
        vcpu0 = next(t for t in threading.enumerate() if t.name == "vm1-vcpu0")
        assert cpus == [{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]",
                         "thread-id": vcpu0.native_id, "target": "aarch64"}]

        assert await run("stop") == {}
        stop = await _next_event(listener, "STOP")
        assert stop["data"] == {}
        assert abs(stop["timestamp"]["seconds"] + stop["timestamp"]["microseconds"] / 1e6
                   - time.time()) < 30
        assert await run("query-status") == {"running": False, "status": "paused"}
        frozen = count(m)
        await asyncio.sleep(0.3)
        assert count(m) == frozen  # stopped for real

        exits = await run("query-exits")
        assert exits == m.stats()  # parked vCPUs: the counters stand still
        assert exits["exits"].get("Nothing", 0) >= 1  # the kick that stopped the running vCPU 0
        assert set(exits) == {"exits", "exit-time", "in-cpu-accesses", "guest-exceptions",
                              "timed", "metrics"}
        assert exits["metrics"] is None  # a Machine keeps no metrics unless asked (stats)
        vms = await run("query-vms")
        assert vms == [{"id": 1, "name": "vm", "arch": "aarch64", "machine": "virt",
                        "cpus": 2, "memory": 512 << 20, "status": "paused"}]

        assert await run("cont") == {}
        assert (await _next_event(listener, "RESUME"))["data"] == {}
        assert await run("query-status") == {"running": True, "status": "running"}
        deadline = time.monotonic() + 10
        while count(m) <= frozen + 1000:
            assert time.monotonic() < deadline, "the guest did not run again after cont"
            await asyncio.sleep(0.01)

        # the power key is pressed (test_system_powerdown_presses_the_power_key has a
        # guest that looks); this one spins on
        assert await run("system_powerdown") == {}
        assert await run("query-status") == {"running": True, "status": "running"}

        version = await run("query-version")
        assert version["qemu"] == {"major": 8, "minor": 0, "micro": 0}
        names = {c["name"] for c in await run("query-commands")}
        assert names == {"qmp_capabilities", "query-status", "query-cpus-fast", "stop",
                         "cont", "system_powerdown", "system_reset", "quit", "query-version",
                         "query-commands", "query-exits", "query-vms"}
        with pytest.raises(ExecuteError) as err:
            await client.execute("no-such-command")
        assert err.value.error_class == "CommandNotFound"
        assert err.value.error.error.desc == "The command no-such-command has not been found"
        transcript.append(f"no-such-command -> {err.value.error_class}")

        assert await run("quit") == {}
        shutdown = await _next_event(listener, "SHUTDOWN")
        assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
    await _disconnect_after_shutdown(client)
    return transcript


async def _disconnect_after_shutdown(client: QMPClient) -> None:
    """Disconnect once the VM announced SHUTDOWN: the VM ends and its monitor closes the
    connection (as QEMU's does when it exits), so the client's reader may already have
    seen the end of the stream, which ``disconnect`` re-raises as EOFError."""
    with contextlib.suppress(EOFError, ConnectionResetError):
        await client.disconnect()


def test_system_reset_ends_the_vm_as_qemus_no_reboot(tmp_path, sock_dir):
    """No board reboots a guest (its own reset ends the run too): system_reset does what
    QEMU does under -no-reboot, a SHUTDOWN the host asked for, and the run ends as after
    a reset (status 0)."""
    path = sock_dir / "r.sock"
    with pyaxvisor.Machine(arch="aarch64", kernel=spin_image(tmp_path), timeout=120,
                           qmp=f"unix:{path}") as m:
        shutdown = asyncio.run(_reset(m, path))
        m.wait(30)
    assert shutdown == {"guest": False, "reason": "host-qmp-system-reset"}
    assert m.result.reason == "reset"
    assert m.result.detail == "the QMP client asked for it (system_reset)"
    assert m.exit_status == 0


async def _reset(m, path: Path) -> dict:
    client = await _client(path)
    try:
        with client.listener() as listener:
            deadline = time.monotonic() + 10
            while count(m) < 1000:  # the guest runs
                assert time.monotonic() < deadline, "the guest did not start counting"
                await asyncio.sleep(0.01)
            assert await client.execute("system_reset") == {}
            return (await _next_event(listener, "SHUTDOWN"))["data"]
    finally:
        await _disconnect_after_shutdown(client)


async def _execute(path: Path, command: str):
    client = await _client(path)
    try:
        return await client.execute(command)
    finally:  # a command that ends the VM (system_powerdown) may close the monitor first
        await _disconnect_after_shutdown(client)


def test_system_powerdown_presses_the_power_key(tmp_path, sock_dir):
    """power_key.S waits for a rising edge on the PL061's pin 3 (QEMU virt's gpio-keys),
    then leaves GPIOMIS, the GIC's pending bits for INTIDs 32..63 and GPIORIS after
    clearing it."""
    image = tmp_path / "power_key.bin"
    image.write_bytes(build("aarch64", "power_key", AARCH64_LOAD))
    path = sock_dir / "k.sock"
    with pyaxvisor.Machine(arch="aarch64", kernel=image, timeout=60,
                           qmp=f"unix:{path}") as m:
        m.console.expect("R")
        time.sleep(0.2)
        assert m.console.text == "R"  # nothing pressed yet
        assert asyncio.run(_execute(path, "system_powerdown")) == {}
        m.console.expect("P")
        mis, pending, ris = (struct.unpack("<Q", m.read_phys(RESULTS + o, 8))[0]
                             for o in (0, 8, 16))
    assert mis == 1 << 3  # pin 3's edge, unmasked
    assert pending & (1 << 7)  # SPI 7 = INTID 39 is pending at the GIC
    assert ris == 0  # cleared by GPIOIC
    assert m.result.reason == "quit"


def test_system_powerdown_on_a_board_without_a_power_button(tmp_path, sock_dir):
    image = tmp_path / "spin.bin"
    image.write_bytes(build("riscv64", "spin", 0x8020_0000))
    path = sock_dir / "v.sock"
    with pyaxvisor.Machine(arch="riscv64", kernel=image, timeout=60,
                           qmp=f"unix:{path}") as m:
        with pytest.raises(ExecuteError) as err:
            asyncio.run(_execute(path, "system_powerdown"))
        assert m.running
    assert err.value.error_class == "GenericError"
    assert err.value.error.error.desc == ("the riscv64 virt board has no power button: the "
                                          "guest cannot be asked to power down (quit stops "
                                          "it)")


def test_query_exits_counts_a_guests_device_exits(tmp_path, sock_dir):
    """uart_echo with every UART access an MMIO exit (trap_mmio): it writes '?', then
    each byte received plus one."""
    image = tmp_path / "echo.bin"
    image.write_bytes(build("aarch64", "uart_echo", AARCH64_LOAD))
    path = sock_dir / "e.sock"
    with pyaxvisor.Machine(arch="aarch64", kernel=image, trap_mmio=True, timeout=120,
                           qmp=f"unix:{path}") as m:
        m.console.expect(r"\?")
        m.console.send("ab")
        m.console.expect("bc")

        async def exits():
            client = await _client(path)
            await client.execute("stop")
            result = await client.execute("query-exits")
            await client.execute("cont")
            await client.disconnect()
            return result

        result = asyncio.run(exits())
        m.console.send(".")
        m.wait(30)
    assert result["exits"]["MmioWrite"] == 3  # '?', 'b', 'c'
    # each putc polls UARTFR at least once, each byte received is one UARTDR read
    assert result["exits"]["MmioRead"] >= 5
    assert result["timed"] is False and set(result["exit-time"]) == set(result["exits"])
    assert m.result.reason == "poweroff"
    assert m.result.exits["MmioWrite"] == 3


# -- the protocol on a raw socket -------------------------------------------------------
class Raw:
    """A QMP connection by hand: send bytes, read whole messages."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.buf = b""
        self.greeting = self.recv()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def recv(self) -> dict:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed; had {self.buf!r}"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return json.loads(line)

    def ask(self, data: bytes | str) -> dict:
        self.send(data)
        while True:
            message = self.recv()
            if "event" not in message:
                return message

    def close(self) -> None:
        self.sock.close()


def _err(message: dict, cls: str = "GenericError") -> str:
    assert set(message) <= {"error", "id"}, message
    assert message["error"]["class"] == cls, message
    return message["error"]["desc"]


@pytest.fixture
def raw_machine(tmp_path, sock_dir):
    path = sock_dir / "r.sock"
    with pyaxvisor.Machine(arch="aarch64", kernel=spin_image(tmp_path), timeout=120,
                           qmp=f"unix:{path}") as m:
        yield m, path


def test_capabilities_negotiation_comes_first(raw_machine):
    m, path = raw_machine
    c = Raw(path)
    try:
        assert c.greeting == {"QMP": {"version": {"qemu": {"major": 8, "minor": 0,
                                                           "micro": 0},
                                                  "package": f"pyaxvisor {pyaxvisor.__version__}"},
                                      "capabilities": []}}
        assert _err(c.ask('{"execute": "stop", "id": 1}'), "CommandNotFound") == \
            "Expecting capabilities negotiation with 'qmp_capabilities'"
        assert not m.paused
        assert _err(c.ask('{"execute": "qmp_capabilities", "arguments": {"enable": '
                          '["oob"]}}')) == \
            "Capability 'oob' is not available (this server offers none)"
        assert c.ask('{"execute": "qmp_capabilities", "id": "neg"}') == \
            {"return": {}, "id": "neg"}
        assert _err(c.ask('{"execute": "qmp_capabilities"}'), "CommandNotFound") == \
            "Capabilities negotiation is already complete, command ignored"
    finally:
        c.close()


def test_bad_input_gets_errors_and_the_server_carries_on(raw_machine):
    m, path = raw_machine
    c = Raw(path)
    try:
        c.ask('{"execute": "qmp_capabilities"}')
        assert _err(c.ask("{nonsense}\n")).startswith("JSON parse error, ")
        assert _err(c.ask("[1, 2]")) == "QMP input must be a JSON object"
        assert _err(c.ask("42 ")) == "QMP input must be a JSON object"
        assert _err(c.ask("]")) == "JSON parse error, unexpected ']'"
        assert _err(c.ask(b'{"execute": "\xff"}')) == \
            "JSON parse error, invalid UTF-8 at byte 13"
        assert _err(c.ask('{"execute": "stop", "bogus": 1, "id": 7}')) == \
            "QMP input member 'bogus' is unexpected"
        assert _err(c.ask('{"id": 8}')) == "QMP input lacks member 'execute'"
        assert _err(c.ask('{"execute": ["stop"]}')) == \
            "QMP input member 'execute' must be a string"
        assert _err(c.ask('{"execute": "stop", "arguments": [1]}')) == \
            "QMP input member 'arguments' must be an object"
        assert c.ask('{"execute": "stop", "arguments": {"now": true}, "id": {"k": [1]}}') \
            == {"error": {"class": "GenericError", "desc": "Parameter 'now' is unexpected"},
                "id": {"k": [1]}}
        assert not m.paused
        assert _err(c.ask('{"exec-oob": "stop"}')).startswith(
            "QMP input member 'exec-oob' needs the 'oob' capability")
        assert _err(c.ask("[" * 5000 + "]" * 5000)) == "JSON parse error, nesting too deep"
        # longer than MAX_MESSAGE: one error, the rest skipped; then it answers again
        c.send('{"execute": "query-status", "id": "' + "x" * (MAX_MESSAGE + 10) + '"}')
        assert _err(c.recv()) == (f"QMP input is longer than {MAX_MESSAGE} bytes; it was "
                                  "skipped to its end")
        # two commands in one write, no newline, ids of any JSON type
        c.send('{"execute": "query-status", "id": 1}{"execute":"stop","id":null}')
        assert c.recv() == {"return": {"running": True, "status": "running"}, "id": 1}
        messages = [c.recv(), c.recv()]
        assert {"return": {}, "id": None} in messages
        assert any(msg.get("event") == "STOP" for msg in messages)
        assert m.paused
        # a command cut in pieces
        for piece in ('{"exe', 'cute": "co', 'nt"', "}"):
            c.send(piece)
            time.sleep(0.02)
        messages = [c.recv(), c.recv()]
        assert {"return": {}} in messages
        assert not m.paused
    finally:
        c.close()
    assert m.running


def test_every_client_gets_the_events_and_one_leaving_disturbs_none(raw_machine):
    m, path = raw_machine
    a, b, quiet = Raw(path), Raw(path), Raw(path)
    try:
        for c in (a, b):
            c.ask('{"execute": "qmp_capabilities"}')
        quiet.close()  # gone before it said anything
        assert a.ask('{"execute": "stop"}') == {"return": {}}
        assert b.recv()["event"] == "STOP"
        b.close()
        m.resume()  # from the Python side: QMP clients hear of it all the same
        assert a.recv()["event"] == "RESUME"
        assert a.ask('{"execute": "query-status"}')["return"]["status"] == "running"
        m.quit()
        shutdown = a.recv()
        assert shutdown["event"] == "SHUTDOWN"
        assert shutdown["data"] == {"guest": False, "reason": "host-ui"}
        assert a.sock.recv(1) == b""  # the server closes the connection when the VM ends
    finally:
        a.close()
        b.close()


def test_a_guest_power_off_is_a_guest_shutdown_event(sock_dir):
    path = sock_dir / "p.sock"
    # the bundled guest powers off by itself (PSCI SYSTEM_OFF) once it is resumed
    m = pyaxvisor.Machine(arch="aarch64", smp=2, timeout=60, qmp=f"unix:{path}")
    with m:
        m.pause()  # hold it so the client is connected before it ends
        c = Raw(path)
        try:
            c.ask('{"execute": "qmp_capabilities"}')
            c.send('{"execute": "cont"}')
            messages = []
            while not messages or messages[-1].get("event") != "SHUTDOWN":
                messages.append(c.recv())
        finally:
            c.close()
        m.wait(30)
    assert {"return": {}} in messages
    events = [msg for msg in messages if "event" in msg]
    assert [e["event"] for e in events] == ["RESUME", "SHUTDOWN"]
    assert events[-1]["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert m.result.reason == "poweroff"


# -- addresses and framing ---------------------------------------------------------------
def test_qmp_addresses_in_qemus_spellings():
    assert parse_qmp_address("unix:/tmp/q.sock,server,nowait") == \
        QmpAddress("unix", path="/tmp/q.sock")
    assert parse_qmp_address("unix:/tmp/q.sock,server=on,wait=off") == \
        QmpAddress("unix", path="/tmp/q.sock")
    assert parse_qmp_address("tcp:127.0.0.1:4444,server,nowait") == \
        QmpAddress("tcp", host="127.0.0.1", port=4444)
    assert parse_qmp_address("tcp:[::1]:4444,server,wait=off") == \
        QmpAddress("tcp", host="::1", port=4444)
    assert parse_qmp_address("tcp:localhost:0", harness=True) == \
        QmpAddress("tcp", host="localhost", port=0)
    # QEMU's default for a server: wait for a client before the guest starts
    assert parse_qmp_address("unix:/tmp/q.sock,server") == \
        QmpAddress("unix", path="/tmp/q.sock", wait=True)
    assert parse_qmp_address("tcp:127.0.0.1:4444,server=on,wait=on").wait
    with pytest.raises(InvalidInput, match="a Machine does not wait for a client"):
        parse_qmp_address("unix:/tmp/q.sock,server,wait", harness=True)
    for spec, message in (
            ("tcp:0.0.0.0:4444,server,nowait", "the host '0.0.0.0' is not a loopback "
                                               "address"),
            ("tcp::4444,server,nowait", "the host '' is listening on every interface"),
            ("tcp:example.org:4444,server,nowait", "not an IP address"),
            ("tcp:10.0.0.1:4444,server,nowait", "not a loopback address"),
            ("tcp:127.0.0.1:99999,server,nowait", "the port '99999' is not a number"),
            ("unix:/tmp/q.sock", "pyaxvisor only listens for QMP clients"),
            ("unix:/tmp/q.sock,server,nowait,telnet", "unknown option 'telnet'"),
            ("stdio", "expected unix:PATH or tcp:HOST:PORT"),
            ("udp:1.2.3.4:5,server,nowait", "'udp' sockets are not supported"),
            ("unix:/" + "d" * 200 + ",server,nowait", "longer than 107 bytes"),
            ("unix:" + "x" * 5000, "at most 4096")):
        with pytest.raises(InvalidInput, match="-qmp") as err:
            parse_qmp_address(spec)
        assert message in str(err.value), (spec, str(err.value))


def test_the_splitter_cuts_a_json_stream_as_qemus_streamer_does():
    s = JsonSplitter(32)
    assert s.feed(b'{"a": "}{\\"", "b": [1, {}]}') == [b'{"a": "}{\\"", "b": [1, {}]}']
    assert s.feed(b'{"x":') == []
    assert s.feed(b' 1}  7 "s t"[]') == [b'{"x": 1}', b"7", b'"s t"', b"[]"]
    assert s.feed(b"}") == [Unbalanced("}")]
    assert s.feed(b'{"k": "' + b"y" * 40 + b'"} {}') == [TooLong(33), b"{}"]


# -- the command line --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _stop_cont_quit(connect: str | tuple[str, int]) -> list[str]:
    client = QMPClient("cli")
    deadline = time.monotonic() + 60
    while True:
        try:
            await client.connect(connect)
            break
        except Exception:
            assert time.monotonic() < deadline, "pyaxvisor run never listened"
            await asyncio.sleep(0.1)
    seen = []
    with client.listener() as listener:
        # pyaxvisor run -qmp keeps the exit metrics: by reason, device and vCPU
        metrics = (await client.execute("query-exits"))["metrics"]
        assert metrics["schema"] == 1 and metrics["running"] is True
        assert set(metrics["exits"]["by_vcpu"]) <= {"0", "1"}
        for command in ("stop", "cont"):
            await client.execute(command)
            seen.append((await asyncio.wait_for(listener.get(), 10))["event"])
        await client.execute("quit")
        seen.append((await asyncio.wait_for(listener.get(), 10))["event"])
    await _disconnect_after_shutdown(client)
    return seen


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_pyaxvisor_run_serves_qmp(tmp_path, sock_dir, kind):
    if kind == "unix":
        path = sock_dir / "cli.sock"
        spec, connect = f"unix:{path},server,nowait", str(path)
    else:
        port = _free_port()
        spec, connect = f"tcp:127.0.0.1:{port},server=on,wait=off", ("127.0.0.1", port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyaxvisor.cli", "run", "-kernel", str(spin_image(tmp_path)),
         "-qmp", spec, "--timeout", "120"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = asyncio.run(_stop_cont_quit(connect))
        assert proc.wait(60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    assert seen == ["STOP", "RESUME", "SHUTDOWN"]
    assert proc.stderr.read() == b""
    if kind == "unix":
        assert not os.path.exists(connect)


def test_pyaxvisor_run_refuses_a_qmp_socket_off_loopback(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "pyaxvisor.cli", "run", "-kernel", str(spin_image(tmp_path)),
         "-qmp", "tcp:0.0.0.0:4444,server,nowait"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 2
    assert "-qmp tcp:0.0.0.0:4444,server,nowait: the host '0.0.0.0' is not a loopback " \
           "address" in p.stderr
    assert "Traceback" not in p.stderr


def test_pyaxvisor_run_names_a_qmp_path_it_cannot_use(tmp_path, sock_dir):
    taken = sock_dir / "file"
    taken.write_text("not a socket")
    p = subprocess.run(
        [sys.executable, "-m", "pyaxvisor.cli", "run", "-kernel", str(spin_image(tmp_path)),
         "-qmp", f"unix:{taken},server,nowait", "--timeout", "30"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 4
    assert f"pyaxvisor: -qmp unix:{taken}: {taken} exists and is not a socket" in p.stderr
    assert taken.read_text() == "not a socket"


def test_a_client_that_never_reads_is_dropped_and_the_server_serves_on(raw_machine):
    _m, path = raw_machine
    greedy = Raw(path)
    greedy.ask('{"execute": "qmp_capabilities"}')
    greedy.sock.setblocking(False)
    command = b'{"execute": "query-vms"}' * 64
    sent, dropped = 0, False
    deadline = time.monotonic() + 60
    try:
        while sent < 200_000 and time.monotonic() < deadline:  # ~30 MB of answers asked
            try:
                greedy.sock.send(command)
                sent += 64
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
    finally:
        greedy.close()
    assert dropped, f"still connected after {sent} commands"
    other = Raw(path)  # the server is alive and answers
    try:
        other.ask('{"execute": "qmp_capabilities"}')
        assert other.ask('{"execute": "query-status"}') == \
            {"return": {"running": True, "status": "running"}}
    finally:
        other.close()


def test_a_tcp_port_0_gets_a_free_port_and_serves_qemu_qmp(tmp_path):
    with pyaxvisor.Machine(arch="aarch64", kernel=spin_image(tmp_path), timeout=60,
                           qmp="tcp:127.0.0.1:0") as m:
        (address,) = m.qmp_addresses
        assert address.kind == "tcp" and address.host == "127.0.0.1" and address.port > 0

        async def status():
            client = QMPClient("tcp")
            await client.connect(("127.0.0.1", address.port))
            try:
                return await client.execute("query-status")
            finally:
                await client.disconnect()

        assert asyncio.run(status())["status"] == "running"


def _run_waiting_for_a_client(path: Path, *extra: str) -> subprocess.Popen:
    """``pyaxvisor run -qmp unix:PATH,server`` (the bundled guest), once its socket is
    there: the run then waits for a client before the guest starts."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyaxvisor.cli", "run", "-qmp", f"unix:{path},server", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"no QMP socket at {path}: {proc.communicate()[1]!r}")
        time.sleep(0.05)
    return proc


def test_pyaxvisor_run_with_server_wait_starts_the_guest_once_a_client_connects(sock_dir):
    """The bundled guest prints and powers off within a second of starting; with QEMU's
    default ``server`` (wait) it does neither until a QMP client connected."""
    path = sock_dir / "w.sock"
    proc = _run_waiting_for_a_client(path, "--timeout", "60")
    try:
        time.sleep(2)
        assert proc.poll() is None  # held back: no client yet

        client = Raw(path)  # connecting is enough
        try:
            assert "QMP" in client.greeting
        finally:
            client.close()
        assert proc.wait(60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    assert b"Hello from the pyaxvisor AArch64 guest on CPU 0" in proc.stdout.read()
    assert proc.stderr.read().decode() == (
        f"pyaxvisor: QMP: waiting for a client on unix:{path} before the guest starts\n")


def test_ctrl_c_while_waiting_for_a_client_ends_the_run_and_removes_the_socket(sock_dir):
    path = sock_dir / "i.sock"
    proc = _run_waiting_for_a_client(path)
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    assert "pyaxvisor: interrupted (SIGINT); the guest was stopped" in proc.stderr.read().decode()
    assert not path.exists()

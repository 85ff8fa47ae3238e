"""A QMP server for one VM: the QEMU Machine Protocol (QEMU's ``docs/interop/qmp-spec``).

Wire format: JSON objects, as a stream (:mod:`.framing`: no line framing is needed,
as with QEMU); ``\\r\\n`` follows each message sent.
On connecting a client gets the greeting ``{"QMP": {"version": {"qemu": {...},
"package": ...}, "capabilities": []}}`` (no out-of-band support). Until it sends
``qmp_capabilities`` every other command answers ``CommandNotFound``; then commands
(``{"execute": NAME, "arguments": {...}, "id": ANY}``; ``arguments`` and ``id``
optional) are answered ``{"return": ..., "id": ...}`` or ``{"error": {"class": ...,
"desc": ...}, "id": ...}`` in the order they came, and the VM's events
(:mod:`pyaxvisor.vm.events`: ``STOP``, ``RESUME``, ``SHUTDOWN``) are sent as
``{"event": NAME, "data": {...}, "timestamp": {"seconds": S, "microseconds": US}}``.
The commands are :class:`~pyaxvisor.control.commands.QmpCommands`.

Bad input never ends the server: a text that is not JSON, not an object, has members
QMP does not define or a member of the wrong type gets a ``GenericError`` (without an
``id`` when none could be read); a message longer than :data:`MAX_MESSAGE` bytes gets
one error and is skipped to its end. A client whose unread output passes
:data:`MAX_PENDING_OUTPUT` bytes (it stopped reading events) is disconnected, and at
most :data:`MAX_CLIENTS` are served at once (more are closed on arrival).

Threads: :meth:`QmpServer.start` runs one thread with a selector over the listening
sockets, the clients and a wake-up socket; commands run on it one at a time (``stop``
waits there until every vCPU stopped). Events come from any thread and are queued
under a lock. :meth:`QmpServer.close` (any other thread) sends what is queued, with a
short time limit, closes every socket and removes the Unix socket files it made.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import stat
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyaxvisor import __version__
from pyaxvisor.control.address import QmpAddress
from pyaxvisor.control.commands import QEMU_VERSION, QmpCommands, QmpError
from pyaxvisor.control.framing import JsonSplitter, TooLong, Unbalanced
from pyaxvisor.errors import InvalidInput

if TYPE_CHECKING:
    from pyaxvisor.vm.vm import Vm

__all__ = ["MAX_CLIENTS", "MAX_MESSAGE", "MAX_PENDING_OUTPUT", "QmpServer"]

#: The longest input message (one command) read, in bytes.
MAX_MESSAGE = 64 * 1024
#: Clients served at once.
MAX_CLIENTS = 16
#: Output queued for a client that does not read before it is disconnected.
MAX_PENDING_OUTPUT = 4 << 20
#: How long :meth:`QmpServer.close` spends sending what is queued.
CLOSE_FLUSH_SECONDS = 2.0
_MEMBERS = {"execute", "arguments", "id"}


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(", ", ": ")).encode() + b"\r\n"


class _Client:
    """One connection: its JSON splitter, bytes not yet sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.negotiated = False
        self.splitter = JsonSplitter(MAX_MESSAGE)
        self.closed = False


class QmpServer:
    """Listens on ``addresses`` (bound at once: an address in use is an
    :class:`InvalidInput` naming it) and serves ``vm``."""

    def __init__(self, vm: Vm, addresses: Sequence[QmpAddress]) -> None:
        self.vm = vm
        self.commands = QmpCommands(vm)
        self._lock = threading.Lock()
        self._clients: dict[int, _Client] = {}
        self._listeners: list[socket.socket] = []
        self._paths: list[str] = []
        self._stopping = False
        self._connected = threading.Event()  # a first client came
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.addresses: list[QmpAddress] = []
        try:
            for address in addresses:
                self._listen(address)
        except BaseException:
            self._close_sockets()
            raise

    # -- setting up ------------------------------------------------------------------------
    def _listen(self, address: QmpAddress) -> None:
        if address.kind == "unix":
            path = address.path
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISSOCK(os.lstat(path).st_mode):
                    raise InvalidInput(f"-qmp {address}: {path} exists and is not a socket")
                os.unlink(path)  # a socket left by an earlier run (QEMU does the same)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                raise InvalidInput(f"-qmp {address}: cannot listen there: {exc.strerror}"
                                   ) from None
            self._paths.append(path)
            bound = address
        else:
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            host = "127.0.0.1" if address.host == "localhost" else address.host
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, address.port))
            except OSError as exc:
                sock.close()
                raise InvalidInput(f"-qmp {address}: cannot listen there: {exc.strerror}"
                                   ) from None
            bound = QmpAddress("tcp", host=host, port=sock.getsockname()[1], wait=address.wait)
        sock.listen(MAX_CLIENTS)
        sock.setblocking(False)
        self._listeners.append(sock)
        self.addresses.append(bound)

    def start(self) -> None:
        """Serve on a thread of its own and forward the VM's events."""
        self.vm.events.subscribe(self._event)
        self._thread = threading.Thread(target=self._serve, name="qmp", daemon=True)
        # A Ctrl-C inside Thread.start() would leave a thread that may or may not run
        # (start() raises while it waits for the thread to begin): SIGINT is held for
        # the moment and taken, as KeyboardInterrupt, once the thread has started.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def wait_for_client(self, timeout: float | None = None) -> bool:
        """Wait until a first client connected (QEMU's ``server,wait``); ``False`` on
        timeout. Interruptible by SIGINT on the main thread."""
        return self._connected.wait(timeout)

    def close(self) -> None:
        """Send what is queued (briefly), then close everything (idempotent)."""
        self.vm.events.unsubscribe(self._event)
        with self._lock:
            self._stopping = True
        self._wake()
        if self._thread is not None:
            if self._thread.ident is not None:  # not if start() never got that far
                self._thread.join(CLOSE_FLUSH_SECONDS + 5)
            self._thread = None
        self._close_sockets()

    # -- events (any thread) -----------------------------------------------------------------
    def _event(self, name: str, data: dict[str, Any]) -> None:
        now = time.time()
        seconds = int(now)
        message = _encode({"event": name, "data": data, "timestamp": {
            "seconds": seconds, "microseconds": int((now - seconds) * 1e6)}})
        with self._lock:
            for client in self._clients.values():
                if client.negotiated:
                    client.outbuf += message
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- the server thread --------------------------------------------------------------------
    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            for sock in self._listeners:
                sel.register(sock, selectors.EVENT_READ, "listen")
            while True:
                with self._lock:
                    if self._stopping:
                        break
                    for client in self._clients.values():
                        want = selectors.EVENT_READ | (
                            selectors.EVENT_WRITE if client.outbuf else 0)
                        if sel.get_key(client.sock).events != want:
                            sel.modify(client.sock, want, client)
                for key, events in sel.select(timeout=1.0):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError, OSError):
                            self._wake_r.recv(4096)
                    elif key.data == "listen":
                        self._accept(sel, key.fileobj)  # type: ignore[arg-type]
                    else:
                        client = key.data
                        if events & selectors.EVENT_READ:
                            self._read(sel, client)
                        if events & selectors.EVENT_WRITE and not client.closed:
                            self._send(sel, client)
            self._flush_all(sel)
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        with self._lock:
            if len(self._clients) >= MAX_CLIENTS:
                sock.close()
                return
            sock.setblocking(False)
            client = _Client(sock)
            client.outbuf += _encode({"QMP": {
                "version": {"qemu": dict(QEMU_VERSION), "package": f"pyaxvisor {__version__}"},
                "capabilities": []}})
            self._clients[sock.fileno()] = client
        self._connected.set()
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _drop(self, sel: selectors.BaseSelector, client: _Client) -> None:
        if client.closed:
            return
        client.closed = True
        with self._lock:
            self._clients.pop(client.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(client.sock)
        client.sock.close()

    def _read(self, sel: selectors.BaseSelector, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, client)
            return
        for item in client.splitter.feed(data):
            if isinstance(item, TooLong):
                self._reply(client, None, error=QmpError(
                    "GenericError", f"QMP input is longer than {MAX_MESSAGE} bytes; it was "
                    "skipped to its end"))
            elif isinstance(item, Unbalanced):
                self._reply(client, None, error=QmpError(
                    "GenericError", f"JSON parse error, unexpected '{item.char}'"))
            else:
                self._text(client, item)
        with self._lock:
            too_much = len(client.outbuf) > MAX_PENDING_OUTPUT
        if too_much:
            self._drop(sel, client)

    def _send(self, sel: selectors.BaseSelector, client: _Client) -> None:
        with self._lock:
            pending = bytes(client.outbuf)
        if not pending:
            return
        try:
            sent = client.sock.send(pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(sel, client)
            return
        with self._lock:
            del client.outbuf[:sent]
            too_much = len(client.outbuf) > MAX_PENDING_OUTPUT
        if too_much:
            self._drop(sel, client)

    def _flush_all(self, sel: selectors.BaseSelector) -> None:
        deadline = time.monotonic() + CLOSE_FLUSH_SECONDS
        with self._lock:
            clients = list(self._clients.values())
        for client in clients:
            while client.outbuf and not client.closed and time.monotonic() < deadline:
                _, writable, _ = _wait_writable(client.sock, deadline - time.monotonic())
                if not writable:
                    break
                self._send(sel, client)
            self._drop(sel, client)

    # -- messages ------------------------------------------------------------------------------
    def _text(self, client: _Client, text: bytes) -> None:
        try:
            message = json.loads(text)
        except UnicodeDecodeError as exc:
            self._reply(client, None, error=QmpError(
                "GenericError", f"JSON parse error, invalid UTF-8 at byte {exc.start}"))
        except json.JSONDecodeError as exc:
            self._reply(client, None, error=QmpError(
                "GenericError", f"JSON parse error, {exc.msg} at character {exc.pos + 1}"))
        except RecursionError:
            self._reply(client, None, error=QmpError(
                "GenericError", "JSON parse error, nesting too deep"))
        else:
            self._message(client, message)

    def _message(self, client: _Client, message: Any) -> None:
        if not isinstance(message, dict):
            self._reply(client, None, error=QmpError(
                "GenericError", "QMP input must be a JSON object"))
            return
        has_id = "id" in message
        ident = message.get("id")
        try:
            name, arguments = _parse_command(message)
            if not client.negotiated:
                if name != "qmp_capabilities":
                    raise QmpError("CommandNotFound",
                                   "Expecting capabilities negotiation with "
                                   "'qmp_capabilities'")
                _check_capabilities(arguments)
                client.negotiated = True
                result: Any = {}
            elif name == "qmp_capabilities":
                raise QmpError("CommandNotFound",
                               "Capabilities negotiation is already complete, command "
                               "ignored")
            elif name == "quit" and not arguments:  # answered before the VM goes
                self._reply(client, ident if has_id else None, has_id=has_id, result={})
                self.commands.run(name, arguments)
                return
            else:
                result = self.commands.run(name, arguments)
        except QmpError as exc:
            self._reply(client, ident, has_id=has_id, error=exc)
            return
        except Exception as exc:  # a bug in pyaxvisor: an answer, never a dead server
            self._reply(client, ident, has_id=has_id, error=QmpError(
                "GenericError", f"internal error: {type(exc).__name__}: {exc}"))
            return
        self._reply(client, ident, has_id=has_id, result=result)

    def _reply(self, client: _Client, ident: Any, *, has_id: bool = False,
               result: Any = None, error: QmpError | None = None) -> None:
        message: dict[str, Any] = (
            {"error": {"class": error.cls, "desc": error.desc}} if error is not None
            else {"return": result})
        if has_id:
            message["id"] = ident
        with self._lock:
            client.outbuf += _encode(message)

    def _close_sockets(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.sock.close()
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()
        for path in self._paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._paths.clear()
        self._wake_r.close()
        self._wake_w.close()


def _parse_command(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    for key in message:
        if key == "exec-oob":
            raise QmpError("GenericError", "QMP input member 'exec-oob' needs the 'oob' "
                           "capability, which this server does not offer")
        if key not in _MEMBERS:
            raise QmpError("GenericError", f"QMP input member '{key}' is unexpected")
    if "execute" not in message:
        raise QmpError("GenericError", "QMP input lacks member 'execute'")
    name = message["execute"]
    if not isinstance(name, str):
        raise QmpError("GenericError", "QMP input member 'execute' must be a string")
    arguments = message.get("arguments", {})
    if not isinstance(arguments, dict):
        raise QmpError("GenericError", "QMP input member 'arguments' must be an object")
    return name, arguments


def _check_capabilities(arguments: dict[str, Any]) -> None:
    for key, value in arguments.items():
        if key != "enable":
            raise QmpError("GenericError", f"Parameter '{key}' is unexpected")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise QmpError("GenericError", "Parameter 'enable' must be a list of strings")
        for capability in value:
            raise QmpError("GenericError", f"Capability '{capability}' is not available "
                           "(this server offers none)")


def _wait_writable(sock: socket.socket, timeout: float) -> tuple[list, list, list]:
    import select

    return select.select([], [sock], [], max(timeout, 0.0))

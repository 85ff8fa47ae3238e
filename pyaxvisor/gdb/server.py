"""The gdb stub's listening socket: ``tcp::PORT`` (loopback only) or ``unix:PATH``.

:func:`parse_address` reads QEMU's spellings (``tcp::1234``, ``tcp:localhost:1234``,
``unix:/path,server``, ``unix:/path``) and refuses anything else with
:class:`~pyaxvisor.errors.InvalidInput` naming the option. :class:`GdbServer` accepts
one client at a time on its own daemon thread and serves it
(:class:`~pyaxvisor.gdb.stub.GdbSession`); a client that goes lets the machine run on,
and the next one may connect. :meth:`GdbServer.close` stops listening (and removes a
Unix socket it created).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyaxvisor.errors import InvalidInput
from pyaxvisor.gdb.stub import GdbSession
from pyaxvisor.gdb.target import DebugTarget

#: QEMU's default port (``-s``).
DEFAULT_PORT = 1234
_LOOPBACK = ("", "localhost", "127.0.0.1")


@dataclass(frozen=True)
class GdbAddress:
    """Where to listen: a TCP ``port`` on 127.0.0.1, or a Unix socket ``path``."""

    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        return f"tcp::{self.port}" if self.path is None else f"unix:{self.path}"


def parse_address(text: str, option: str = "-gdb") -> GdbAddress:
    """QEMU's ``-gdb`` device spelling (see the module doc)."""
    if text.startswith("tcp:"):
        host, sep, port_s = text[4:].rpartition(":")
        port_s = port_s.split(",", 1)[0]
        if not sep or host not in _LOOPBACK:
            raise InvalidInput(f"{option} {text!r}: the stub listens on loopback only; "
                               "spell it tcp::PORT")
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise InvalidInput(f"{option} {text!r}: the port must be 1..65535")
        return GdbAddress(port=int(port_s))
    if text.startswith("unix:"):
        path, _sep, opts = text[5:].partition(",")
        if not path:
            raise InvalidInput(f"{option} {text!r}: unix: needs a socket path")
        for opt in filter(None, opts.split(",")):
            if opt not in ("server", "server=on", "nowait", "wait=off"):
                raise InvalidInput(f"{option} {text!r}: unknown option {opt!r} (server "
                                   "and nowait are accepted)")
        return GdbAddress(path=path)
    if text.isdigit():
        return parse_address(f"tcp::{text}", option)
    raise InvalidInput(f"{option} {text!r}: expected tcp::PORT or unix:PATH[,server]")


class GdbServer:
    """Listens at ``address`` and serves clients against ``target`` (see module doc)."""

    def __init__(self, address: GdbAddress, target: DebugTarget, *,
                 log: Callable[[str], None] | None = None) -> None:
        self.address = address
        self.target = target
        self.log = log or (lambda _m: None)
        self._closed = threading.Event()
        self._made_path: str | None = None
        if address.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                if os.path.exists(address.path):
                    raise InvalidInput(f"gdb socket {address.path}: the file exists already")
                sock.bind(address.path)
            except OSError as exc:
                sock.close()
                raise InvalidInput(f"gdb socket {address.path}: cannot listen there: "
                                   f"{exc.strerror}") from None
            except InvalidInput:
                sock.close()
                raise
            self._made_path = address.path
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", address.port or DEFAULT_PORT))
            except OSError as exc:
                sock.close()
                raise InvalidInput(f"gdb port {address.port}: cannot listen on "
                                   f"127.0.0.1: {exc.strerror}") from None
        sock.listen(1)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="gdb-server",
                                        daemon=True)

    @property
    def port(self) -> int | None:
        """The TCP port listened on (the one the system chose for port 0)."""
        if self.address.path is not None:
            return None
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            if conn.family == socket.AF_INET:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.log(f"gdb: client connected on {self.address}")
            try:
                GdbSession(conn, self.target, log=self.log).serve()
            except OSError as exc:
                self.log(f"gdb: connection lost: {exc}")
            finally:
                with contextlib.suppress(OSError):
                    conn.close()
            self.log("gdb: client gone; the guest runs on")

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        if self._made_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._made_path)
            self._made_path = None

"""Where a QMP server listens, in QEMU's ``-qmp`` spellings (its ``-chardev socket``
options): ``unix:PATH,server,nowait`` or ``tcp:HOST:PORT,server,nowait``, with
``server=on``/``wait=off`` accepted for ``server``/``nowait``.

pyaxvisor only listens (``server``). As QEMU, it holds the guest back until a client
connects unless ``nowait`` (``wait=off``) is given (:attr:`QmpAddress.wait`). A TCP host
must be a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``): the control socket
has no authentication, so it is never offered to other machines. ``harness=True`` (the
Python API) takes the bare address, ``server`` and ``nowait`` implied, and refuses
``wait``: a harness pauses the VM itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from pyaxvisor.errors import InvalidInput

__all__ = ["MAX_SPEC", "QmpAddress", "parse_qmp_address"]

#: The longest ``-qmp`` value taken (a Unix socket path is at most 107 bytes anyway).
MAX_SPEC = 4096
#: The longest Unix socket path Linux takes (``sun_path`` is 108 bytes with its NUL).
MAX_UNIX_PATH = 107

_TRUE = {"on", "yes", "true", "y"}
_FALSE = {"off", "no", "false", "n"}


@dataclass(frozen=True)
class QmpAddress:
    """``kind`` "unix" (``path``) or "tcp" (``host``, ``port``; port 0: any free one);
    ``wait``: the guest starts only once a client connected."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0
    wait: bool = False

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_qmp_address(spec: str, *, harness: bool = False) -> QmpAddress:
    """``-qmp``'s value as an address; :class:`InvalidInput` naming the problem."""
    if len(spec) > MAX_SPEC:
        raise InvalidInput(f"-qmp: the value is {len(spec)} characters long (at most "
                           f"{MAX_SPEC})")
    where, *options = spec.split(",")
    server = wait = None
    for option in options:
        key, _, value = option.partition("=")
        if key in ("server", "wait") and (not value or value in _TRUE | _FALSE):
            on = not value or value in _TRUE
            if key == "server":
                server = on
            else:
                wait = on
        elif key == "nowait" and not value:
            wait = False
        else:
            raise InvalidInput(f"-qmp {spec}: unknown option {option!r} (pyaxvisor takes "
                               "server and nowait, or server=on and wait=off)")
    kind, sep, rest = where.partition(":")
    if not sep:
        raise InvalidInput(f"-qmp {spec}: expected unix:PATH or tcp:HOST:PORT")
    if kind == "unix":
        if not rest:
            raise InvalidInput(f"-qmp {spec}: unix: needs a socket path")
        if len(rest.encode()) > MAX_UNIX_PATH:
            raise InvalidInput(f"-qmp {spec}: the socket path is longer than "
                               f"{MAX_UNIX_PATH} bytes (Linux's limit)")
        if "\0" in rest:
            raise InvalidInput(f"-qmp {spec}: the socket path has a NUL character")
        address = QmpAddress("unix", path=rest)
    elif kind == "tcp":
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise InvalidInput(f"-qmp {spec}: tcp: needs HOST:PORT")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise InvalidInput(f"-qmp {spec}: the port {port_text!r} is not a number "
                               "0..65535")
        _check_loopback(spec, host)
        address = QmpAddress("tcp", host=host, port=int(port_text))
    else:
        raise InvalidInput(f"-qmp {spec}: {kind!r} sockets are not supported (unix:PATH or "
                           "tcp:HOST:PORT)")
    if harness:
        if server is False:
            raise InvalidInput(f"-qmp {spec}: pyaxvisor only listens for QMP clients")
        if wait:
            raise InvalidInput(f"-qmp {spec}: a Machine does not wait for a client (pause() "
                               "it instead): leave wait out")
        return address
    if not server:
        raise InvalidInput(f"-qmp {spec}: pyaxvisor only listens for QMP clients: add "
                           ",server,nowait (or server=on,wait=off)")
    return dataclasses.replace(address, wait=wait is None or wait)


def _check_loopback(spec: str, host: str) -> None:
    if host == "localhost":
        return
    why = "listening on every interface" if not host else "not a loopback address"
    try:
        if host and ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        why = "not an IP address (name only localhost)"
    raise InvalidInput(f"-qmp {spec}: the host {host!r} is {why}: the QMP socket has no "
                       "authentication, so pyaxvisor listens on loopback only (127.0.0.1, "
                       "::1, localhost)")

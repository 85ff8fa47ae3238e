"""One gdb client's session: the remote protocol's commands answered from a
:class:`~pyaxvisor.gdb.target.DebugTarget`.

Supported: ``qSupported``, ``QStartNoAckMode``, ``qXfer:features:read`` (the target's
XML), ``?``, ``g``/``G``/``p``/``P``, ``m``/``M``/``X``, ``Z0``-``Z4``/``z``, ``c``/``s``
(and ``C``/``S``, the signal ignored), ``vCont`` (``c``, ``s``, ``C``, ``S``; a step
runs only the stepped CPU, the others stay stopped), ``qfThreadInfo``/``qsThreadInfo``,
``qC``, ``H``, ``T``, ``qThreadExtraInfo``, ``qAttached``, ``D``, ``k``, Ctrl-C and
QEMU's ``Qqemu.PhyMemMode:1``/``:0`` and ``qqemu.PhyMemMode`` (``m``/``M``/``X`` then
address guest-physical memory; by default addresses are virtual, translated through
the selected CPU's page tables). Anything else gets the empty reply (gdb's "not
supported"); a malformed packet gets ``E16`` (EINVAL), an address without translation
or memory ``E14`` (EFAULT); no client input ends the session but a closed socket,
``D`` or ``k``.

Threading: :meth:`GdbSession.serve` runs on the connection's own thread and returns
when the client is gone; the target is left running then (as QEMU leaves it).
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable

from pyaxvisor.errors import AxError, InvalidInput
from pyaxvisor.gdb.packets import (
    MAX_PACKET,
    Ack,
    Interrupt,
    Oversized,
    Packet,
    PacketReader,
    escape,
    frame,
)
from pyaxvisor.gdb.target import BreakKind, DebugTarget, StopEvent, StopKind

#: How long the session waits for a stop before looking at the socket again.
POLL = 0.05
SIGTRAP = 5
SIGINT = 2
E_INVAL = b"E16"
E_FAULT = b"E14"

Log = Callable[[str], None]


class _Malformed(Exception):
    """A packet's arguments do not parse."""


def _int(text: bytes, what: str) -> int:
    try:
        if not text or len(text) > 16:
            raise ValueError
        return int(text, 16)
    except ValueError:
        raise _Malformed(f"{what} {text[:20]!r} is not a hex number of at most 64 bits") \
            from None


def _thread(text: bytes) -> int:
    """A thread id: ``-1`` (all), ``0`` (any) or a positive hex number."""
    if text == b"-1":
        return -1
    return _int(text, "thread id")


class GdbSession:
    """Answers one connected client (see the module doc)."""

    def __init__(self, sock: socket.socket, target: DebugTarget, *,
                 log: Log | None = None) -> None:
        self.sock = sock
        self.target = target
        self.log = log or (lambda _m: None)
        self.reader = PacketReader()
        self.ack = True
        self.physical = False
        self.g_cpu = 0
        self.last_stop: StopEvent | None = None
        self.running = False
        self.closed = False
        self.detached = False  # D or k ended the session (the target needs no detach)
        self._attach_stop: StopEvent | None = None

    # -- wire ------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(frame(data))

    def _recv(self, timeout: float | None) -> list:
        ready, _w, _x = select.select([self.sock], [], [], timeout)
        if not ready:
            return []
        try:
            chunk = self.sock.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
            return []
        return self.reader.feed(chunk)

    # -- the session -------------------------------------------------------------------------
    def serve(self) -> None:
        """Serve until the client goes; the target then runs on."""
        try:
            self.last_stop = self._attach_stop = self.target.halt()
        except AxError as exc:
            self.log(f"gdb: cannot stop the machine for the debugger: {exc}")
            self._detach_quietly()
            return
        self.g_cpu = self.last_stop.cpu
        try:
            while not self.closed:
                if self.running:
                    stop = self.target.wait_stop(POLL)
                    if stop is not None:
                        self._stopped(stop)
                        continue
                    for ev in self._recv(0):
                        if isinstance(ev, Interrupt):
                            try:
                                self._stopped(self.target.halt())
                            except AxError as exc:
                                self.log(f"gdb: Ctrl-C: {exc}")
                            break
                    continue
                for ev in self._recv(None):
                    self._event(ev)
                    if self.closed:
                        break
        finally:
            if not self.detached:
                self._detach_quietly()

    def _detach_quietly(self) -> None:
        try:
            self.target.detach()
        except AxError as exc:
            self.log(f"gdb: detaching: {exc}")

    def _stopped(self, stop: StopEvent) -> None:
        self.running = False
        self.last_stop = stop
        if stop.kind is not StopKind.EXITED:
            self.g_cpu = stop.cpu
        self.send(self._stop_reply(stop))

    def _event(self, ev: object) -> None:
        if isinstance(ev, Packet):
            if self.ack:
                self.sock.sendall(b"+" if ev.ok else b"-")
            if not ev.ok:
                return
            try:
                reply = self.handle(ev.data)
            except _Malformed as exc:
                self.log(f"gdb: bad packet {ev.data[:40]!r}: {exc}")
                reply = E_INVAL
            except AxError as exc:  # the machine could not do it (it is not stopped...)
                self.log(f"gdb: {ev.data[:40]!r}: {exc}")
                reply = b"E01"
            if reply is not None:
                self.send(reply)
        elif isinstance(ev, Oversized):
            if self.ack:
                self.sock.sendall(b"+")
            self.log(f"gdb: dropped a packet of {ev.length} bytes (at most {MAX_PACKET})")
            self.send(E_INVAL)
        elif isinstance(ev, Interrupt):
            self.send(self._stop_reply(self.last_stop or self.target.halt()))
        elif isinstance(ev, Ack):
            return

    def _stop_reply(self, stop: StopEvent) -> bytes:
        if stop.kind is StopKind.EXITED:
            return b"W%02x" % (stop.exit_code & 0xFF)
        sig = (SIGINT if stop.kind is StopKind.INTERRUPT and stop is not self._attach_stop
               else SIGTRAP)
        extra = b""
        if stop.kind in (StopKind.WATCH_WRITE, StopKind.WATCH_READ, StopKind.WATCH_ACCESS):
            extra = stop.kind.value.encode() + b":%x;" % stop.addr
        return b"T%02x%sthread:%x;" % (sig, extra, stop.cpu + 1)

    # -- commands -------------------------------------------------------------------------------
    def handle(self, data: bytes) -> bytes | None:
        """The reply to one packet (``None``: none now, the target runs)."""
        if not data:
            return b""
        cmd, rest = data[:1], data[1:]
        if self.last_stop is not None and self.last_stop.kind is StopKind.EXITED \
                and cmd not in (b"?", b"q", b"Q", b"D", b"k", b"v"):
            return b"E01"
        match cmd:
            case b"?":
                assert self.last_stop is not None
                return self._stop_reply(self.last_stop)
            case b"q" | b"Q":
                return self._query(data)
            case b"g":
                return self._read_registers()
            case b"G":
                return self._write_registers(rest)
            case b"p":
                return self._read_register(_int(rest, "register number"))
            case b"P":
                num, sep, value = rest.partition(b"=")
                if not sep:
                    raise _Malformed("P needs NUMBER=VALUE")
                return self._write_register(_int(num, "register number"), value)
            case b"m":
                addr, length = self._addr_length(rest)
                return self._memory(lambda: self.target.read_memory(
                    self.g_cpu, addr, length, self.physical).hex().encode())
            case b"M":
                head, sep, hexdata = rest.partition(b":")
                addr, length = self._addr_length(head)
                try:
                    payload = bytes.fromhex(hexdata.decode("ascii"))
                except (ValueError, UnicodeDecodeError):
                    raise _Malformed("M data is not hex") from None
                return self._write_memory(addr, length, payload)
            case b"X":
                head, sep, payload = rest.partition(b":")
                addr, length = self._addr_length(head)
                return self._write_memory(addr, length, payload)
            case b"Z" | b"z":
                return self._breakpoint(cmd == b"Z", rest)
            case b"c" | b"C":
                return self._resume(None, rest if cmd == b"c" else rest.partition(b";")[2])
            case b"s" | b"S":
                return self._resume(self.g_cpu, rest if cmd == b"s" else
                                    rest.partition(b";")[2])
            case b"v":
                return self._v(data)
            case b"H":
                if len(rest) < 2:
                    raise _Malformed("H needs an operation and a thread")
                tid = _thread(rest[1:])
                if tid > 0:
                    if tid - 1 not in self.target.cpus():
                        return b"E01"
                    if rest[:1] == b"g":
                        self.g_cpu = tid - 1
                return b"OK"
            case b"T":
                tid = _thread(rest)
                return b"OK" if tid - 1 in self.target.cpus() else b"E01"
            case b"D":
                self.target.detach()
                self.send(b"OK")
                self.closed = self.detached = True
                return None
            case b"k":
                self.target.kill()
                self.closed = self.detached = True
                return None
        return b""

    def _query(self, data: bytes) -> bytes:
        name, _sep, args = data.partition(b":")
        match name:
            case b"qSupported":
                return (b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;"
                        b"vContSupported+;qemu.PhyMemMode+" % MAX_PACKET)
            case b"QStartNoAckMode":
                self.send(b"OK")
                self.ack = False
                return None  # type: ignore[return-value]
            case b"qXfer":
                return self._xfer(args)
            case b"qAttached":
                return b"1"
            case b"qC":
                return b"QC%x" % (self.g_cpu + 1)
            case b"qfThreadInfo":
                return b"m" + b",".join(b"%x" % (c + 1) for c in self.target.cpus())
            case b"qsThreadInfo":
                return b"l"
            case b"qThreadExtraInfo":
                tid = _thread(data.partition(b",")[2])
                return f"CPU#{tid - 1} [halted]".encode().hex().encode()
            case b"Qqemu.PhyMemMode":
                if args not in (b"0", b"1"):
                    raise _Malformed("Qqemu.PhyMemMode takes 0 or 1")
                self.physical = args == b"1"
                return b"OK"
            case b"qqemu.PhyMemMode":
                return b"1" if self.physical else b"0"
            case b"qSymbol":
                return b"OK"
            case b"qOffsets":
                return b"Text=0;Data=0;Bss=0"
        return b""

    def _xfer(self, args: bytes) -> bytes:
        parts = args.split(b":")
        if len(parts) != 4 or parts[0] != b"features" or parts[1] != b"read":
            return b""
        if parts[2] != b"target.xml":
            return b"E00"
        off_s, _c, len_s = parts[3].partition(b",")
        off, length = _int(off_s, "offset"), _int(len_s, "length")
        xml = self.target.target_xml
        length = min(length, MAX_PACKET // 2)
        chunk = xml[off:off + length]
        return (b"l" if off + length >= len(xml) else b"m") + escape(chunk)

    def _addr_length(self, text: bytes) -> tuple[int, int]:
        addr_s, sep, len_s = text.partition(b",")
        if not sep:
            raise _Malformed("needs ADDR,LENGTH")
        addr, length = _int(addr_s, "address"), _int(len_s, "length")
        if length > MAX_PACKET // 2:
            raise _Malformed(f"length {length:#x} is above {MAX_PACKET // 2:#x}")
        return addr, length

    def _memory(self, op: Callable[[], bytes]) -> bytes:
        try:
            return op()
        except InvalidInput:
            return E_INVAL
        except AxError:
            return E_FAULT

    def _write_memory(self, addr: int, length: int, payload: bytes) -> bytes:
        if len(payload) != length:
            raise _Malformed(f"{len(payload)} data bytes for a length of {length}")

        def op() -> bytes:
            self.target.write_memory(self.g_cpu, addr, payload, self.physical)
            return b"OK"
        return self._memory(op)

    # -- registers ---------------------------------------------------------------------------
    def _encode(self, number: int, value: int) -> bytes:
        size = self.target.register_sizes[number] // 8
        return (value & ((1 << (size * 8)) - 1)).to_bytes(size, "little").hex().encode()

    def _read_registers(self) -> bytes:
        values = self.target.read_registers(self.g_cpu)
        return b"".join(self._encode(n, v) for n, v in enumerate(values))

    def _read_register(self, number: int) -> bytes:
        if not 0 <= number < len(self.target.register_sizes):
            return b"E01"
        return self._encode(number, self.target.read_registers(self.g_cpu)[number])

    def _decode(self, number: int, text: bytes) -> int:
        size = self.target.register_sizes[number] // 8
        if len(text) != size * 2:
            raise _Malformed(f"register {number} takes {size} bytes, got {len(text) // 2}")
        try:
            return int.from_bytes(bytes.fromhex(text.decode("ascii")), "little")
        except (ValueError, UnicodeDecodeError):
            raise _Malformed("register value is not hex") from None

    def _write_register(self, number: int, text: bytes) -> bytes:
        if not 0 <= number < len(self.target.register_sizes):
            return b"E01"
        value = self._decode(number, text)
        try:
            self.target.write_register(self.g_cpu, number, value)
        except AxError:
            return b"E01"
        return b"OK"

    def _write_registers(self, text: bytes) -> bytes:
        sizes = self.target.register_sizes
        if len(text) != sum(sizes) // 4:
            raise _Malformed(f"G needs {sum(sizes) // 8} bytes, got {len(text) // 2}")
        pos = 0
        current = self.target.read_registers(self.g_cpu)
        for n, bits in enumerate(sizes):
            value = self._decode(n, text[pos:pos + bits // 4])
            pos += bits // 4
            if value != current[n]:
                try:
                    self.target.write_register(self.g_cpu, n, value)
                except AxError:
                    return b"E01"
        return b"OK"

    # -- breakpoints and running -----------------------------------------------------------------
    def _breakpoint(self, insert: bool, text: bytes) -> bytes:
        fields = text.split(b";", 1)[0].split(b",")
        if len(fields) != 3:
            raise _Malformed("Z/z needs TYPE,ADDR,KIND")
        kind_n = _int(fields[0], "breakpoint type")
        if kind_n > 4:
            return b""
        kind = BreakKind(kind_n)
        addr, length = _int(fields[1], "address"), _int(fields[2], "kind")
        if length > 1 << 20:
            raise _Malformed(f"length {length:#x} is too large")
        try:
            op = self.target.insert_breakpoint if insert else self.target.remove_breakpoint
            done = op(self.g_cpu, kind, addr, length)
        except InvalidInput:
            return E_INVAL
        except AxError:
            return E_FAULT
        return b"OK" if done else b""

    def _resume(self, step_cpu: int | None, addr: bytes) -> None:
        if addr:
            self.target.write_register(self.g_cpu, self._pc_number(), _int(addr, "address"))
        self.target.resume(step_cpu)
        self.running = True
        return None

    def _pc_number(self) -> int:
        pc = getattr(self.target, "pc_register", None)
        if pc is None:
            raise _Malformed("this target cannot resume at an address")
        return int(pc)

    def _v(self, data: bytes) -> bytes | None:
        if data == b"vCont?":
            return b"vCont;c;C;s;S"
        if data.startswith(b"vCont;"):
            step: int | None = None
            cont = False
            for action in data[6:].split(b";"):
                op, _c, tid_s = action.partition(b":")
                if op[:1] in (b"s", b"S"):
                    tid = _thread(tid_s) if tid_s else self.g_cpu + 1
                    step = self.g_cpu if tid <= 0 else tid - 1
                    if step not in self.target.cpus():
                        return b"E01"
                elif op[:1] in (b"c", b"C"):
                    cont = True
                else:
                    raise _Malformed(f"vCont action {op!r} is not supported")
            if step is None and not cont:
                raise _Malformed("vCont without an action")
            if step is not None:
                self.g_cpu = step
            self.target.resume(step)
            self.running = True
            return None
        if data.startswith(b"vKill"):
            self.target.kill()
            self.send(b"OK")
            self.closed = self.detached = True
            return None
        return b""

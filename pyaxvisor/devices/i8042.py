"""A minimal Intel 8042 PS/2 keyboard controller: enough for guests that probe it
and for the classic reset path (what Firecracker models, plus an answering
keyboard).

The register and command set follow the 8042 / PS/2 controller documentation;
QEMU's ``hw/input/pckbd.c`` and ``hw/input/ps2.c`` are the reference for the
behaviour guests have been tested against (power-on values, reply bytes).

Attaching: the PC's ports 0x60 (data) and 0x64 (status/command) are not
contiguous, so :class:`I8042` is not itself a port device: it exposes two
one-port :class:`~pyaxvisor.devices.bus.Device` objects sharing one state
and one lock::

    kbc = I8042(on_reset=vm.request_reset)
    bus.attach(I8042_DATA_PORT, 1, kbc.data_port)     # 0x60
    bus.attach(I8042_CMD_PORT, 1, kbc.command_port)   # 0x64

Only 1-byte accesses exist (the controller's ports are 8 bits wide); a wider
access raises :class:`BadAccess`.

Status register (``in 0x64``):

===== =========================================================================
bit   meaning
===== =========================================================================
0     OBF: a byte waits in the output buffer
1     IBF: always 0, every write is consumed at once
2     SYS: system flag, 0 at power-on, set by the self test (0xAA), as in QEMU
3     CMD: the last write went to the command port (1 at power-on)
4     keyboard not inhibited: always 1
5     AUX OBF: the waiting byte came from the auxiliary (mouse) side (0xD3)
6, 7  timeout / parity error: always 0
===== =========================================================================

Controller commands (``out 0x64``):

=========== ===================================================================
0x20        read the configuration byte (CTR) into the output buffer
0x60        write the CTR: the next data-port byte
0xA7/0xA8   disable/enable the mouse port (CTR bit 5)
0xA9        mouse port test: 0x00
0xAA        self test: 0x55, sets the SYS status flag
0xAB        keyboard port test: 0x00
0xAD/0xAE   disable/enable the keyboard port (CTR bit 4)
0xC0        read the input port: 0x80 (keyboard not inhibited), like QEMU
0xD0        read the output port (bit 4/5 mirror the output buffer state)
0xD1        write the output port: the next data byte; bit 0 clear resets the CPU
0xD2/0xD3   the next data byte appears in the output buffer as if it came from
            the keyboard / the mouse (loopback)
0xD4        the next data byte goes to the mouse: no mouse is attached, the byte
            is dropped and nothing answers
0xDD/0xDF   A20 off/on (output port bit 1; stored only, KVM has no A20 gate)
0xF0..0xFF  pulse output port bits 3..0 low: with bit 0 of the command clear
            (0xFE, but also 0xF0, 0xF2, ...) that pulses the reset line;
            the others are no-ops
=========== ===================================================================

Any other command is ignored and counted in :attr:`I8042.ignored_commands`.
Power-on state (QEMU's): CTR 0x03 (both port interrupts enabled), output port
0xCF (reset line high, A20 on), status 0x18.

Reset: a reset request (``0xFE``-style pulse, or ``0xD1`` with bit 0 clear)
first puts the controller back into its power-on state, then calls
``on_reset()`` with no lock held (the callback may touch the device).

Keyboard: an MF2 keyboard is attached and answers the PS/2 keyboard commands
written to the data port (when no controller command awaits a data byte):
``0xFF`` reset → ``0xFA 0xAA``; ``0xF2`` identify → ``0xFA 0xAB 0x83``
(``0xFA 0xAB 0x41`` with CTR bit 6, translation, set); ``0xEE`` echo → ``0xEE``;
``0xF4`` enable, ``0xF5`` disable + defaults, ``0xF6`` defaults, ``0xF7``..``0xFA``,
``0xFC``, ``0xFD``, ``0x00`` → ``0xFA``; ``0xED`` (LEDs), ``0xF3`` (typematic
rate), ``0xFB`` and ``0xF0`` (scan-code set) take a parameter byte, each byte
acknowledged with ``0xFA`` (``0xF0 0x00`` also returns the current set, or its
translated code 0x43/0x41/0x3F under translation; a set other than 0..3 →
``0xFE``); anything else → ``0xFE`` (resend). As in QEMU, keyboard bytes wait
while the keyboard port is disabled (CTR bit 4) and controller replies go
first. There is no input source: no key is ever pressed, and no IRQ is wired —
IRQ 1 (and 12) are never raised. A guest that polls the status register (the
firmware, Linux's i8042 probing, SeaBIOS) sees every answer; Linux's atkbd
driver waits for IRQ 1 and gives up on the keyboard after its timeouts, so
Linux guests should boot with ``i8042.noaux i8042.nomux i8042.dumbkbd`` (as
under Firecracker) or ``i8042.nokbd``.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable

from pyaxvisor.devices.bus import BadAccess, Device
from pyaxvisor.vcpu.width import AccessWidth

# Status register bits.
STATUS_OBF = 0x01
STATUS_IBF = 0x02
STATUS_SYS = 0x04
STATUS_CMD = 0x08
STATUS_UNLOCKED = 0x10
STATUS_AUX_OBF = 0x20

# Controller configuration byte (CTR) bits.
CTR_KBD_INT = 0x01
CTR_AUX_INT = 0x02
CTR_SYS = 0x04
CTR_KBD_DISABLE = 0x10
CTR_AUX_DISABLE = 0x20
CTR_TRANSLATE = 0x40

# Output port bits.
OUT_RESET = 0x01  # low = CPU held in reset
OUT_A20 = 0x02
OUT_OBF = 0x10
OUT_AUX_OBF = 0x20
OUT_ONES = 0xCC

POWER_ON_CTR = CTR_KBD_INT | CTR_AUX_INT
POWER_ON_OUTPORT = OUT_ONES | OUT_A20 | OUT_RESET
POWER_ON_STATUS = STATUS_CMD | STATUS_UNLOCKED

# Controller commands.
CMD_READ_CTR = 0x20
CMD_WRITE_CTR = 0x60
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_INPORT = 0xC0
CMD_READ_OUTPORT = 0xD0
CMD_WRITE_OUTPORT = 0xD1
CMD_WRITE_KBD_OBUF = 0xD2
CMD_WRITE_AUX_OBUF = 0xD3
CMD_WRITE_AUX = 0xD4
CMD_A20_OFF = 0xDD
CMD_A20_ON = 0xDF
CMD_PULSE = 0xF0  # 0xF0..0xFF
CMD_RESET = 0xFE

SELF_TEST_OK = 0x55
PORT_TEST_OK = 0x00
INPORT_VALUE = 0x80

# Keyboard commands and replies.
KBD_SET_LEDS = 0xED
KBD_ECHO = 0xEE
KBD_SCANCODE = 0xF0
KBD_IDENTIFY = 0xF2
KBD_SET_RATE = 0xF3
KBD_ENABLE = 0xF4
KBD_DISABLE = 0xF5
KBD_DEFAULTS = 0xF6
KBD_SET_MAKE_BREAK = 0xFB
KBD_RESET = 0xFF
KBD_ACK = 0xFA
KBD_RESEND = 0xFE
KBD_POR_OK = 0xAA
KBD_ID = (0xAB, 0x83)
KBD_ID_TRANSLATED = (0xAB, 0x41)
_ACK_ONLY = frozenset({0x00, KBD_ENABLE, KBD_DISABLE, KBD_DEFAULTS, 0xF7, 0xF8, 0xF9, 0xFA,
                       0xFC, 0xFD})
_WITH_PARAMETER = frozenset({KBD_SET_LEDS, KBD_SCANCODE, KBD_SET_RATE, KBD_SET_MAKE_BREAK})
_TRANSLATED_SET = {1: 0x43, 2: 0x41, 3: 0x3F}

#: Controller commands that take a data-port byte.
_DATA_COMMANDS = frozenset({CMD_WRITE_CTR, CMD_WRITE_OUTPORT, CMD_WRITE_KBD_OBUF,
                            CMD_WRITE_AUX_OBUF, CMD_WRITE_AUX})


class _Port(Device):
    def __init__(self, name: str, read: Callable[[], int],
                 write: Callable[[int], None]) -> None:
        self.name = name
        self._read = read
        self._write = write

    def _check(self, offset: int, width: AccessWidth, what: str) -> None:
        if width != AccessWidth.Byte:
            raise BadAccess(f"{self.name}: {width.size}-byte {what}: the port is 8 bits")
        if offset != 0:
            raise BadAccess(f"{self.name}: {what} at offset {offset:#x} is outside the port")

    def read(self, offset: int, width: AccessWidth, vcpu_id: int) -> int:
        self._check(offset, width, "read")
        return self._read()

    def write(self, offset: int, width: AccessWidth, value: int, vcpu_id: int) -> None:
        self._check(offset, width, "write")
        self._write(value & 0xFF)


class I8042:
    """The controller; attach :attr:`data_port` at 0x60 and :attr:`command_port`
    at 0x64, one port each."""

    name = "i8042"

    def __init__(self, on_reset: Callable[[], None]) -> None:
        self._on_reset = on_reset
        self._lock = threading.Lock()
        #: Commands the model does not implement, by command byte.
        self.ignored_commands: Counter[int] = Counter()
        #: Reset requests delivered to ``on_reset``.
        self.resets = 0
        self.data_port: Device = _Port("i8042-data", self._read_data, self._write_data)
        self.command_port: Device = _Port(
            "i8042-command", self._read_status, self._write_command)
        self._power_on()

    def _power_on(self) -> None:
        self._status = POWER_ON_STATUS
        self._ctr = POWER_ON_CTR
        self._outport = POWER_ON_OUTPORT
        self._pending: int | None = None  # controller command waiting for a data byte
        self._ctl: deque[tuple[int, bool]] = deque()  # controller output: (byte, from aux)
        self._kbd: deque[int] = deque()  # keyboard output
        self._last = 0
        self._kbd_cmd: int | None = None  # keyboard command waiting for its parameter
        self._scanning = True
        self._scancode_set = 2

    def reset(self) -> None:
        """Back to the power-on state (machine reset)."""
        with self._lock:
            self._power_on()

    # ------------------------------------------------------------------ inspection

    @property
    def status(self) -> int:
        with self._lock:
            return self._status_locked()

    @property
    def ctr(self) -> int:
        with self._lock:
            return self._ctr

    @property
    def output_port(self) -> int:
        with self._lock:
            return self._outport

    @property
    def a20(self) -> bool:
        with self._lock:
            return bool(self._outport & OUT_A20)

    @property
    def keyboard_scanning(self) -> bool:
        with self._lock:
            return self._scanning

    # ------------------------------------------------------------------ internals

    def _head(self) -> tuple[int, bool] | None:
        if self._ctl:
            return self._ctl[0]
        if self._kbd and not self._ctr & CTR_KBD_DISABLE:
            return self._kbd[0], False
        return None

    def _status_locked(self) -> int:
        st = self._status & ~(STATUS_OBF | STATUS_AUX_OBF | STATUS_IBF)
        head = self._head()
        if head is not None:
            st |= STATUS_OBF | (STATUS_AUX_OBF if head[1] else 0)
        return st

    def _read_status(self) -> int:
        with self._lock:
            return self._status_locked()

    def _read_data(self) -> int:
        with self._lock:
            if self._ctl:
                self._last = self._ctl.popleft()[0]
            elif self._kbd and not self._ctr & CTR_KBD_DISABLE:
                self._last = self._kbd.popleft()
            return self._last  # an empty buffer reads the last byte again

    def _write_command(self, cmd: int) -> None:
        reset = False
        with self._lock:
            self._status |= STATUS_CMD
            self._pending = None
            if cmd & 0xF0 == CMD_PULSE:
                reset = not cmd & OUT_RESET
            elif cmd in _DATA_COMMANDS:
                self._pending = cmd
            elif cmd == CMD_READ_CTR:
                self._ctl.append((self._ctr, False))
            elif cmd == CMD_AUX_DISABLE:
                self._ctr |= CTR_AUX_DISABLE
            elif cmd == CMD_AUX_ENABLE:
                self._ctr &= ~CTR_AUX_DISABLE
            elif cmd in (CMD_AUX_TEST, CMD_KBD_TEST):
                self._ctl.append((PORT_TEST_OK, False))
            elif cmd == CMD_SELF_TEST:
                self._status |= STATUS_SYS
                self._ctl.append((SELF_TEST_OK, False))
            elif cmd == CMD_KBD_DISABLE:
                self._ctr |= CTR_KBD_DISABLE
            elif cmd == CMD_KBD_ENABLE:
                self._ctr &= ~CTR_KBD_DISABLE
            elif cmd == CMD_READ_INPORT:
                self._ctl.append((INPORT_VALUE, False))
            elif cmd == CMD_READ_OUTPORT:
                out = self._outport & ~(OUT_OBF | OUT_AUX_OBF)
                head = self._head()
                if head is not None:
                    out |= OUT_AUX_OBF if head[1] else OUT_OBF
                self._ctl.append((out, False))
            elif cmd == CMD_A20_OFF:
                self._outport &= ~OUT_A20
            elif cmd == CMD_A20_ON:
                self._outport |= OUT_A20
            else:
                self.ignored_commands[cmd] += 1
            if reset:
                self._power_on()
                self.resets += 1
        if reset:
            self._on_reset()

    def _write_data(self, value: int) -> None:
        reset = False
        with self._lock:
            self._status &= ~STATUS_CMD
            pending, self._pending = self._pending, None
            if pending == CMD_WRITE_CTR:
                self._ctr = value
            elif pending == CMD_WRITE_OUTPORT:
                self._outport = value
                if not value & OUT_RESET:
                    self._power_on()
                    self.resets += 1
                    reset = True
            elif pending == CMD_WRITE_KBD_OBUF:
                self._ctl.append((value, False))
            elif pending == CMD_WRITE_AUX_OBUF:
                self._ctl.append((value, True))
            elif pending == CMD_WRITE_AUX:
                pass  # no mouse attached
            else:
                self._keyboard(value)
        if reset:
            self._on_reset()

    def _keyboard(self, byte: int) -> None:
        """The attached keyboard receives ``byte`` (lock held)."""
        out = self._kbd.extend
        cmd, self._kbd_cmd = self._kbd_cmd, None
        if cmd is not None:  # the parameter of a previous command
            if cmd == KBD_SCANCODE:
                if byte == 0:
                    current = self._scancode_set
                    if self._ctr & CTR_TRANSLATE:
                        current = _TRANSLATED_SET[current]
                    out((KBD_ACK, current))
                elif byte <= 3:
                    self._scancode_set = byte
                    out((KBD_ACK,))
                else:
                    out((KBD_RESEND,))
            else:
                out((KBD_ACK,))
            return
        if byte == KBD_RESET:
            self._scanning, self._scancode_set = True, 2
            out((KBD_ACK, KBD_POR_OK))
        elif byte == KBD_IDENTIFY:
            out((KBD_ACK, *(KBD_ID_TRANSLATED if self._ctr & CTR_TRANSLATE else KBD_ID)))
        elif byte == KBD_ECHO:
            out((KBD_ECHO,))
        elif byte in _WITH_PARAMETER:
            self._kbd_cmd = byte
            out((KBD_ACK,))
        elif byte in _ACK_ONLY:
            if byte == KBD_ENABLE:
                self._scanning = True
            elif byte in (KBD_DISABLE, KBD_DEFAULTS):
                self._scanning, self._scancode_set = byte == KBD_DEFAULTS, 2
            out((KBD_ACK,))
        else:
            out((KBD_RESEND,))

"""The minimal 8042 keyboard controller at ports 0x60/0x64 (8042 / PS/2 controller
documentation; power-on values and reply bytes as in QEMU's pckbd.c / ps2.c)."""

import pytest

from pyaxvisor.boards.x86_pc.layout import I8042_CMD_PORT, I8042_DATA_PORT
from pyaxvisor.devices import i8042 as k
from pyaxvisor.devices.bus import BadAccess as BadPioAccess
from pyaxvisor.devices.bus import port_bus as PioBus
from pyaxvisor.devices.i8042 import I8042
from pyaxvisor.vcpu.width import AccessWidth

B, W = AccessWidth.Byte, AccessWidth.Word
DATA, CMD = I8042_DATA_PORT, I8042_CMD_PORT


class Board:
    def __init__(self):
        self.resets = 0
        self.kbc = I8042(self._reset)
        self.bus = PioBus()
        self.bus.attach(DATA, 1, self.kbc.data_port)
        self.bus.attach(CMD, 1, self.kbc.command_port)

    def _reset(self):
        self.resets += 1

    def status(self):
        return self.bus.read(CMD, B)

    def command(self, cmd, *data):
        self.bus.write(CMD, B, cmd)
        for d in data:
            self.bus.write(DATA, B, d)

    def send(self, *data):
        for d in data:
            self.bus.write(DATA, B, d)

    def drain(self):
        """Poll the status register and read bytes while OBF is set (as Linux's
        i8042 driver and firmware do)."""
        out = []
        while self.status() & k.STATUS_OBF:
            out.append(self.bus.read(DATA, B))
            assert len(out) < 32
        return out


def test_ports_and_power_on_status():
    b = Board()
    assert (DATA, CMD) == (0x60, 0x64)
    assert b.bus.find(0x61) is None and b.bus.find(0x63) is None  # the PIT's 0x61 stays free
    assert b.status() == 0x18  # CMD | unlocked; OBF, IBF, SYS clear
    assert b.kbc.ctr == 0x03 and b.kbc.output_port == 0xCF and b.kbc.a20


def test_self_test_sets_the_system_flag():
    b = Board()
    assert not b.status() & k.STATUS_SYS
    b.command(0xAA)
    st = b.status()
    assert st & k.STATUS_OBF and st & k.STATUS_SYS and not st & k.STATUS_IBF
    assert b.bus.read(DATA, B) == 0x55
    assert b.status() & (k.STATUS_OBF | k.STATUS_SYS) == k.STATUS_SYS  # OBF cleared, SYS kept


def test_port_tests():
    b = Board()
    b.command(0xAB)
    assert b.drain() == [0x00]
    b.command(0xA9)
    assert b.drain() == [0x00]
    b.command(0xC0)
    assert b.drain() == [0x80]


def test_ctr_round_trip():
    b = Board()
    b.command(0x20)
    assert b.drain() == [0x03]
    b.command(0x60, 0x65)
    assert b.kbc.ctr == 0x65
    assert not b.status() & k.STATUS_OBF  # writing the CTR answers nothing
    b.command(0x20)
    assert b.drain() == [0x65]


def test_port_enable_disable_bits():
    b = Board()
    b.command(0xAD)
    b.command(0xA7)
    assert b.kbc.ctr == 0x03 | k.CTR_KBD_DISABLE | k.CTR_AUX_DISABLE
    b.command(0xAE)
    assert b.kbc.ctr == 0x03 | k.CTR_AUX_DISABLE
    b.command(0xA8)
    assert b.kbc.ctr == 0x03


def test_status_cmd_bit_tracks_the_last_write():
    b = Board()
    b.command(0x60)
    assert b.status() & k.STATUS_CMD
    b.send(0x03)
    assert not b.status() & k.STATUS_CMD


def test_data_read_with_empty_buffer_repeats_the_last_byte():
    b = Board()
    assert b.bus.read(DATA, B) == 0  # nothing ever sent
    b.command(0xAA)
    assert b.bus.read(DATA, B) == 0x55
    assert not b.status() & k.STATUS_OBF
    assert b.bus.read(DATA, B) == 0x55


def test_reset_via_pulse_fe():
    b = Board()
    b.command(0x60, 0x47)
    b.command(0xFE)
    assert b.resets == 1 and b.kbc.resets == 1
    assert b.kbc.ctr == 0x03  # the controller is back in its power-on state
    b.command(0xFF)  # pulse with bit 0 set: a no-op
    b.command(0xF1)
    assert b.resets == 1
    b.command(0xF0)  # bit 0 clear: also pulses the reset line
    assert b.resets == 2


def test_reset_via_output_port_bit0_clear():
    b = Board()
    b.command(0xD0)
    assert b.drain() == [0xCF]
    b.command(0xD1, 0xCF)  # bit 0 set: no reset
    assert b.resets == 0
    b.command(0xD1, 0xCD)  # A20 off, CPU still running
    assert b.resets == 0 and not b.kbc.a20
    b.command(0xD1, 0xCE)  # bit 0 clear
    assert b.resets == 1
    assert b.kbc.output_port == 0xCF


def test_a20_commands_and_output_port_obf_bit():
    b = Board()
    b.command(0xDD)
    assert not b.kbc.a20
    b.command(0xDF)
    assert b.kbc.a20
    b.command(0xD2, 0x99)  # a byte waits in the output buffer
    b.command(0xD0)
    assert b.drain() == [0x99, 0xCF | k.OUT_OBF]


def test_output_buffer_loopback_and_aux_flag():
    b = Board()
    b.command(0xD2, 0x5A)
    assert b.status() & (k.STATUS_OBF | k.STATUS_AUX_OBF) == k.STATUS_OBF
    assert b.bus.read(DATA, B) == 0x5A
    b.command(0xD3, 0xA5)
    assert b.status() & (k.STATUS_OBF | k.STATUS_AUX_OBF) == k.STATUS_OBF | k.STATUS_AUX_OBF
    assert b.bus.read(DATA, B) == 0xA5
    assert not b.status() & k.STATUS_AUX_OBF
    b.command(0xD4, 0xFF)  # no mouse: dropped, nothing answers
    assert b.drain() == []


def test_unknown_commands_are_ignored_and_counted():
    b = Board()
    b.command(0x12)
    b.command(0x12)
    b.command(0xC8)
    assert b.drain() == [] and b.resets == 0
    assert b.kbc.ignored_commands == {0x12: 2, 0xC8: 1}
    assert b.kbc.ctr == 0x03


def test_keyboard_reset_identify_and_enable():
    b = Board()
    b.send(0xFF)
    assert b.drain() == [0xFA, 0xAA]
    b.send(0xF2)
    assert b.drain() == [0xFA, 0xAB, 0x83]
    b.command(0x60, 0x03 | k.CTR_TRANSLATE)
    b.send(0xF2)
    assert b.drain() == [0xFA, 0xAB, 0x41]
    b.send(0xF5)
    assert b.drain() == [0xFA] and not b.kbc.keyboard_scanning
    b.send(0xF4)
    assert b.drain() == [0xFA] and b.kbc.keyboard_scanning
    b.send(0xEE)
    assert b.drain() == [0xEE]
    b.send(0x42)  # not a keyboard command
    assert b.drain() == [0xFE]


def test_keyboard_commands_with_parameters():
    b = Board()
    b.send(0xED, 0x07)  # LEDs
    assert b.drain() == [0xFA, 0xFA]
    b.send(0xF3, 0x20)  # typematic rate
    assert b.drain() == [0xFA, 0xFA]
    b.send(0xF0, 0x00)  # get scan-code set
    assert b.drain() == [0xFA, 0xFA, 0x02]
    b.send(0xF0, 0x01, 0xF0, 0x00)
    assert b.drain() == [0xFA, 0xFA, 0xFA, 0xFA, 0x01]
    b.command(0x60, k.CTR_TRANSLATE)
    b.send(0xF0, 0x00)
    assert b.drain() == [0xFA, 0xFA, 0x43]
    b.send(0xF0, 0x09)
    assert b.drain() == [0xFA, 0xFE]


def test_keyboard_bytes_wait_while_the_port_is_disabled():
    b = Board()
    b.command(0xAD)
    b.send(0xFF)
    assert not b.status() & k.STATUS_OBF
    b.command(0xAA)  # controller replies still go out, first
    assert b.drain() == [0x55]
    b.command(0xAE)
    assert b.drain() == [0xFA, 0xAA]


def test_byte_access_only():
    b = Board()
    with pytest.raises(BadPioAccess):
        b.bus.read(CMD, W)
    with pytest.raises(BadPioAccess):
        b.bus.write(DATA, W, 0xFE)
    with pytest.raises(BadPioAccess):
        b.kbc.data_port.pio_read(1, B, 0)
    assert b.resets == 0


def test_reset_callback_may_reenter_the_device():
    seen = []
    kbc = None

    def on_reset():
        seen.append(kbc.status)  # would deadlock if the lock were still held

    kbc = I8042(on_reset)
    kbc.command_port.pio_write(0, B, 0xFE, 0)
    assert seen == [0x18]
    kbc.reset()
    assert kbc.resets == 1

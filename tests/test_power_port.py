"""The ACPI PM1a-control-style power-off port at 0x604 (QEMU hw/acpi/core.c:
SLP_EN with SLP_TYP 0 is S5 soft-off)."""

import pytest

from pyaxvisor.boards.x86_pc.layout import POWER_OFF_PORT
from pyaxvisor.devices import power as pw
from pyaxvisor.devices.bus import BadAccess as BadPioAccess
from pyaxvisor.devices.bus import port_bus as PioBus
from pyaxvisor.devices.power import PowerPort
from pyaxvisor.vcpu.width import AccessWidth

B, W, D, Q = AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword, AccessWidth.Qword


def board():
    offs: list[int] = []
    dev = PowerPort(lambda: offs.append(1))
    bus = PioBus()
    bus.attach(POWER_OFF_PORT, PowerPort.PORT_COUNT, dev)
    return bus, dev, offs


def test_constants():
    assert (POWER_OFF_PORT, pw.PORT_COUNT, pw.POWER_OFF_VALUE) == (0x604, 2, 0x2000)


def test_word_write_0x2000_powers_off():
    bus, dev, offs = board()
    bus.write(0x604, W, 0x2000)
    assert offs == [1] and dev.power_offs == 1
    assert bus.read(0x604, W) == 0  # SLP_EN is write-only


def test_zero_and_plain_values_do_not_power_off():
    bus, dev, offs = board()
    bus.write(0x604, W, 0x0000)
    bus.write(0x604, W, 0x0001)  # SCI_EN
    bus.write(0x604, W, 0x1C01)  # SLP_TYP 7 without SLP_EN
    assert offs == [] and dev.power_offs == 0
    assert bus.read(0x604, W) == 0x1C01  # reads return the last value


def test_other_sleep_types_are_ignored_and_counted():
    bus, dev, offs = board()
    bus.write(0x604, W, 0x2000 | (1 << 10) | 1)  # S3 request
    bus.write(0x604, W, 0x2000 | (5 << 10))
    bus.write(0x604, W, 0x2000 | (5 << 10))
    assert offs == []
    assert dev.ignored_sleeps == {1: 1, 5: 2}
    assert bus.read(0x604, W) == 5 << 10  # stored without SLP_EN


def test_slp_en_with_other_bits_still_powers_off():
    bus, _, offs = board()
    bus.write(0x604, W, 0x2001)  # SCI_EN kept set, SLP_TYP 0
    assert offs == [1]
    assert bus.read(0x604, W) == 0x0001


def test_byte_writes():
    bus, dev, offs = board()
    bus.write(0x604, W, 0x0001)
    bus.write(0x604, B, 0x20)  # low byte: widened to a 16-bit 0x0020, no SLP_EN
    assert offs == [] and dev.value == 0x0020
    bus.write(0x605, B, 0x04)  # high byte only: merged with the low byte
    assert dev.value == 0x0420 and not dev.ignored_sleeps and offs == []
    bus.write(0x605, B, 0x20)  # high byte SLP_EN, SLP_TYP 0: power off
    assert offs == [1]
    assert dev.value == 0x0020  # low byte kept


def test_byte_reads_and_wide_accesses():
    bus, dev, offs = board()
    bus.write(0x604, W, 0x1C35)
    assert bus.read(0x604, B) == 0x35
    assert bus.read(0x605, B) == 0x1C
    assert bus.read(0x604, D) == 0xFFFF_1C35  # ports 0x606/0x607 are undriven
    assert bus.read(0x605, W) == 0xFF1C
    bus.write(0x604, D, 0xFFFF_2000)  # only the low word lands in the register
    assert offs == [1]
    bus.write(0x605, W, 0x0020)  # one byte 0x20 at 0x605, the other goes nowhere
    assert offs == [1, 1]
    with pytest.raises(BadPioAccess):
        dev.pio_read(2, B, 0)
    with pytest.raises(BadPioAccess):
        dev.pio_write(0, Q, 0x2000, 0)
    assert offs == [1, 1]


def test_callback_runs_without_the_lock():
    seen = []
    dev = None
    dev = PowerPort(lambda: seen.append(dev.value))
    dev.pio_write(0, W, 0x2003, 0)
    assert seen == [0x0003]

"""Device registers a software CPU reads from a table the device keeps current
(``RegisterMirror``, ``engine/tcg/mmio_mirror.c``): the table's rules, reads through
a real CPU (which go to the table and which to the device), the PL011's table agreeing
with the device after any sequence of events, and console input through it."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from machines import machine_fixture
from riscv64_machine import DEV, RAM, Machine

from pyaxvisor.boards.quick import aarch64_vm
from pyaxvisor.devices.pl011 import MMIO_SIZE, UARTDR, Pl011
from pyaxvisor.devices.uart16550 import Uart16550
from pyaxvisor.vcpu import Hypercall
from pyaxvisor.vcpu.arch_vcpu import InCpuWindow
from pyaxvisor.vcpu.register_mirror import WHOLE_WORD, RegisterMirror
from pyaxvisor.vcpu.width import AccessWidth as W

machine = machine_fixture(Machine)


# -- the table --------------------------------------------------------------------------------
def test_publish_and_hide_work_on_byte_lanes():
    m = RegisterMirror(16)
    m.publish(4, 4, 0xAABBCCDD)
    m.publish(9, 1, 0x5A)
    assert [m.published(i) for i in range(12)] == [False] * 4 + [True] * 4 + [False, True,
                                                                              False, False]
    assert (m.data[1], m.data[2]) == (0xAABBCCDD, 0x5A00)
    m.hide(6, 2)
    assert [m.published(i) for i in range(4, 8)] == [True, True, False, False]
    m.publish_words({0: 7, 12: 0xFFFF_FFFF})
    assert (m.data[0], m.data[3], m.published(15)) == (7, 0xFFFF_FFFF, True)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.publish(14, 4, 0), "not 4 bytes at 0xe"),
    (lambda m: m.publish(3, 2, 0), "not 2 bytes at 0x3"),
    (lambda m: m.publish(0, 8, 0), "not 8 bytes at 0x0"),
    (lambda m: m.hide(16, 1), "not 1 bytes at 0x10"),
    (lambda m: m.publish_words({2: 0}), "offset 0x2 is not 4-byte aligned"),
])
def test_bad_registers_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(RegisterMirror(16))


def test_a_window_that_is_not_whole_words_is_refused():
    with pytest.raises(ValueError, match="multiple of 4 bytes, not 6"):
        RegisterMirror(6)


def test_a_part_shares_the_words_of_its_table():
    row = RegisterMirror(0x400)
    first, second = row.part(0, 0x200), row.part(0x200, 0x200)
    second.publish_words({0x60: 0xABCD}, whole=True)
    first.publish(4, 2, 0x77)
    assert (row.data[(0x200 + 0x60) >> 2], row.valid[(0x200 + 0x60) >> 2]) == (0xABCD,
                                                                              0xF | WHOLE_WORD)
    assert (row.data[1], row.valid[1]) == (0x77, 0x3)
    assert row.published(0x260) and not row.published(0x60)
    second.hide(0x60, 4)
    assert not row.published(0x260)


@pytest.mark.parametrize("offset, size", [(2, 4), (0, 6), (0x3FC, 8), (-4, 4), (0, 0)])
def test_a_part_outside_its_table_or_not_whole_words_is_refused(offset, size):
    with pytest.raises(ValueError, match=f"not {size} bytes at"):
        RegisterMirror(0x400).part(offset, size)


# -- through a CPU ---------------------------------------------------------------------------
class _Device:
    """Answers every read it gets with 0x5566_7788 and logs it."""

    def __init__(self) -> None:
        self.log: list[tuple[int, W]] = []

    def read(self, offset: int, width: W, cpu: int) -> int:
        self.log.append((offset, width))
        return 0x5566_7788 & width.mask

    def write(self, offset: int, width: W, value: int, cpu: int) -> None:
        raise AssertionError("the guest writes nothing")


def test_a_cpu_reads_published_registers_from_the_table_and_asks_the_device_otherwise(
        machine):
    m = machine("mirror", hart_id=0)
    dev, mirror = _Device(), RegisterMirror(0x1000)
    mirror.publish(0, 4, 0x1234_ABCD)
    mirror.publish(4, 1, 0xEE)
    mirror.publish(0xFFC, 4, 0xC0FFEE)
    m.arch.serve_in_cpu([InCpuWindow("mmio", DEV, 0x1000, dev.read, dev.write, mirror)])
    assert isinstance(m.run(), Hypercall)
    assert [m.result(8 * i) for i in range(7)] == [0x1234_ABCD, 0xAB, 0x1234, 0x5566_7788,
                                                   0xEE, 0xC0FFEE, 0x5566_7788]
    assert dev.log == [(4, W.Dword), (8, W.Dword)]
    assert m.arch.served_counts().accesses == (7, 0)
    # The device changes what it publishes; the next run reads the new table.
    mirror.hide(0, 4)
    mirror.publish(4, 4, 0x0BAD_F00D)
    mirror.publish(0xFFC, 4, 1)
    dev.log.clear()
    m.arch.engine.pc = RAM
    assert isinstance(m.run(), Hypercall)
    assert [m.result(8 * i) for i in range(7)] == [0x5566_7788, 0x88, 0x7788, 0x0BAD_F00D,
                                                   0x0D, 1, 0x5566_7788]
    assert dev.log == [(0, W.Dword), (1, W.Byte), (2, W.Word), (8, W.Dword)]
    # A register taken in 32-bit accesses only: the word read is the table's, the
    # narrower reads of it go to the device (which would refuse them).
    mirror.publish_words({0: 0x1234_ABCD}, whole=True)
    dev.log.clear()
    m.arch.engine.pc = RAM
    assert isinstance(m.run(), Hypercall)
    assert [m.result(8 * i) for i in range(3)] == [0x1234_ABCD, 0x88, 0x7788]
    assert dev.log == [(1, W.Byte), (2, W.Word), (8, W.Dword)]


# -- the PL011 keeps its table current -------------------------------------------------------
_EVENTS = st.one_of(
    st.tuples(st.just("receive"), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("read"), st.sampled_from(range(0, 0x50, 4))),
    st.tuples(st.just("write"), st.sampled_from([0x00, 0x04, 0x2C, 0x30, 0x34, 0x38, 0x44,
                                                 0x24, 0x28, 0x20, 0x48]),
              st.integers(0, 0xFFFF)),
    st.tuples(st.just("reset")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_EVENTS, max_size=30))
# loopback on, a second character overruns the one-deep holding register, UARTECR clears
# the error flags: UARTRSR's published value must follow
@example([("receive", b"\x00"), ("write", 0x30, 0x80), ("write", 0x00, 0), ("write", 0x04, 0)])
def test_the_pl011_table_agrees_with_the_device_after_any_events(events):
    uart = Pl011(tx=lambda _b: None)
    for event in events:
        if event[0] == "receive":
            uart.receive(event[1])
        elif event[0] == "read":
            uart.read(event[1], W.Dword, 0)
        elif event[0] == "write":
            uart.write(event[1], W.Dword, event[2], 0)
        else:
            uart.reset()
        mirror = uart.mirror
        assert mirror is not None
        for offset in range(0, MMIO_SIZE, 4):
            if offset == UARTDR:
                assert not mirror.published(offset)       # a read takes a character
            elif mirror.published(offset):
                # the published value is what the device would answer now (a read of a
                # published register has no side effect, so asking does not change it)
                assert mirror.data[offset >> 2] == uart.read(offset, W.Dword, 0), hex(offset)


_UART16550_EVENTS = st.one_of(
    st.tuples(st.just("receive"), st.binary(min_size=1, max_size=20)),
    st.tuples(st.just("read"), st.integers(0, 7)),
    st.tuples(st.just("write"), st.integers(0, 7), st.integers(0, 0xFF)),
    st.tuples(st.just("modem"), st.booleans(), st.booleans()),
    st.tuples(st.just("overrun")),  # loopback, then more bytes than the receiver holds
    st.tuples(st.just("reset")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_UART16550_EVENTS, max_size=30))
def test_the_16550_table_agrees_with_the_device_and_hides_side_effects(events):
    uart = Uart16550(tx=lambda _b: None, mirrored=True)
    mirror = uart.mirror
    assert mirror is not None
    for event in events:
        if event[0] == "receive":
            uart.receive(event[1])
        elif event[0] == "read":
            uart.read(event[1], W.Byte, 0)
        elif event[0] == "write":
            uart.write(event[1], W.Byte, event[2], 0)
        elif event[0] == "modem":
            uart.set_modem_inputs(cts=event[1], ri=event[2])
        elif event[0] == "overrun":
            uart.write(3, W.Byte, 0x03, 0)               # LCR: DLAB off
            uart.write(4, W.Byte, 0x10, 0)               # MCR: loopback
            for byte in b"x" * 17:
                uart.write(0, W.Byte, byte, 0)
        else:
            uart.reset()
        for offset in range(8):
            if mirror.published(offset):
                before = (list(mirror.data), list(mirror.valid), uart.irq_level)
                expected = mirror.data[offset >> 2] >> (8 * (offset & 3)) & 0xFF
                # the device answers the same, and answering changed nothing
                assert uart.read(offset, W.Byte, 0) == expected, offset
                assert (list(mirror.data), list(mirror.valid), uart.irq_level) == before
        assert not (uart.mirror.published(0) and not uart.read(3, W.Byte, 0) & 0x80)  # RBR
        if not mirror.published(5):                          # LSR hidden only with errors,
            assert uart.read(5, W.Byte, 0) & 0x1E            # which this read clears ...
            assert mirror.published(5)                       # ... so it is published again


# -- console input through the table, on a whole VM ------------------------------------------
def test_a_guest_polling_the_flag_register_sees_input_as_it_arrives():
    from guest_build import build

    load = 0x4008_0000
    out = bytearray()
    vm = aarch64_vm(ram_size=64 << 20, smp=1, console_write=out.extend)
    try:
        vm.write_guest(load, build("aarch64", "uart_echo", load))
        result: list = []
        runner = threading.Thread(target=lambda: result.append(vm.run(load, dtb_addr=0,
                                                                      timeout=60)))
        runner.start()
        deadline = time.monotonic() + 30
        while b"?" not in out and time.monotonic() < deadline:
            time.sleep(0.01)
        for ch in b"mirror.":                  # one at a time: each empties the FIFO again
            time.sleep(0.02)
            vm.uart.receive(bytes((ch,)))
        runner.join(60)
        assert result and result[0].reason == "poweroff", result
        assert bytes(out) == b"?" + bytes(c + 1 for c in b"mirror")
        polls = int.from_bytes(vm.read_guest(0x4001_0000, 8), "little")
        # 7 writes ('?' and six echoes), each after a UARTFR read; 7 UARTDR reads; the
        # polls waited for input that came 20 ms apart, so there were many
        assert polls > 100
        assert result[0].in_cpu_accesses == (polls + 7 + 7, 7)
    finally:
        vm.close()

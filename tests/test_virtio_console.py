"""virtio-console (virtio 1.2 §5.3) behind the virtio-mmio transport, driven through
its registers and fake guest RAM."""

from __future__ import annotations

import threading
import time

from virtio_driver import Driver, FakeRam

from pyaxvisor.devices.irq import IrqLine, NullIrqSink
from pyaxvisor.devices.virtio import mmio as r
from pyaxvisor.devices.virtio.console import (
    F_SIZE,
    MAX_REQUEST,
    QUEUE_SIZE,
    RECEIVEQ,
    TRANSMITQ,
    VirtioConsole,
)
from pyaxvisor.devices.virtio.mmio import TRANSPORT_FEATURES, VirtioMmio
from pyaxvisor.devices.virtio.spec import F_EVENT_IDX, STATUS_DEVICE_NEEDS_RESET
from pyaxvisor.vcpu.width import AccessWidth

IRQ = 7


class Rig:
    """A console on a transport, a driver, the interrupt sink and the output."""

    def __init__(self, size: tuple[int, int] | None = None, start: bool = True,
                 **queue_kw: int) -> None:
        self.out: list[bytes] = []
        self.ram = FakeRam()
        self.sink = NullIrqSink()
        self.console = VirtioConsole(self.out.append, size)
        self.dev = VirtioMmio(self.console, self.ram, self.ram.ranges,
                              IrqLine(self.sink, IRQ))
        self.drv = Driver(self.dev, self.ram)
        self.queue_kw = queue_kw
        if start:
            self.start()

    def start(self) -> None:
        # without EVENT_IDX: every completion interrupts unless the driver masks them
        features = self.dev.device_features & ~(1 << F_EVENT_IDX)
        queues = self.drv.start(features, **self.queue_kw)
        self.rx, self.tx = queues[RECEIVEQ], queues[TRANSMITQ]

    @property
    def output(self) -> bytes:
        return b"".join(self.out)

    @property
    def irq(self) -> bool:
        return self.sink.levels.get(IRQ, False)


def test_identity_queues_and_no_size_by_default():
    rig = Rig()
    assert rig.drv.rd(r.DEVICE_ID) == 3
    assert rig.drv.device_features() == TRANSPORT_FEATURES  # no SIZE, MULTIPORT, EMERG_WRITE
    for index in (RECEIVEQ, TRANSMITQ):
        rig.drv.wr(r.QUEUE_SEL, index)
        assert rig.drv.rd(r.QUEUE_NUM_MAX) == QUEUE_SIZE
    rig.drv.wr(r.QUEUE_SEL, 2)
    assert rig.drv.rd(r.QUEUE_NUM_MAX) == 0  # no control queues
    assert rig.drv.rd(0x100) == 0  # cols, rows
    assert rig.drv.rd(0x104) == 1  # max_nr_ports


def test_size_offered_in_the_configuration_space():
    rig = Rig(size=(132, 43))
    assert rig.drv.device_features() & (1 << F_SIZE)
    assert rig.drv.rd(0x100, AccessWidth.Word) == 132
    assert rig.drv.rd(0x102, AccessWidth.Word) == 43
    rig.drv.wr(0x108, 0x41)  # emerg_wr: not offered, ignored
    assert rig.out == [] and rig.drv.rd(0x108) == 0
    assert rig.dev.status & STATUS_DEVICE_NEEDS_RESET == 0


def test_transmit_reaches_the_output_in_order_across_chains():
    rig = Rig()
    a = rig.tx.add([b"hello, ", b"wor"])
    b = rig.tx.add([b"ld"], indirect=True)
    c = rig.tx.add([b"!\n"], [8])  # a writable buffer is ignored
    rig.drv.notify(TRANSMITQ)
    assert rig.output == b"hello, world!\n"
    assert rig.tx.collect() == [(a.head, 0), (b.head, 0), (c.head, 0)]
    assert rig.tx.written(c) == b"\xee" * 8
    assert rig.irq
    d = rig.tx.add([b"more"])
    rig.drv.notify(TRANSMITQ)
    assert rig.output.endswith(b"!\nmore") and rig.tx.collect() == [(d.head, 0)]
    assert not rig.ram.violations


def test_large_transmit_is_read_in_bounded_pieces():
    rig = Rig(buffer_arena=200 << 10)
    data = bytes(i & 0xFF for i in range(MAX_REQUEST + 100))
    rig.tx.add([data])
    rig.drv.notify(TRANSMITQ)
    assert [len(piece) for piece in rig.out] == [MAX_REQUEST, 100]
    assert rig.output == data


def test_input_before_the_buffers_waits_and_is_split_across_small_buffers():
    rig = Rig()
    rig.console.receive(b"abcdefghij")
    assert rig.console.backlog == 10 and not rig.irq
    first = rig.rx.add([], [4])
    second = rig.rx.add([], [1, 2])
    rig.drv.notify(RECEIVEQ)
    assert rig.rx.collect() == [(first.head, 4), (second.head, 3)]
    assert rig.rx.written(first) == b"abcd" and rig.rx.written(second) == b"efg"
    assert rig.irq and rig.drv.ack() == 1 and not rig.irq
    third = rig.rx.add([], [16])
    rig.drv.notify(RECEIVEQ)
    assert rig.rx.collect() == [(third.head, 3)]
    assert rig.rx.written(third)[:3] == b"hij" and rig.console.backlog == 0
    assert rig.irq


def test_input_after_the_buffers_is_delivered_at_once_with_an_interrupt():
    rig = Rig()
    posted = [rig.rx.add([], [3]) for _ in range(3)]
    rig.drv.notify(RECEIVEQ)
    assert rig.rx.collect() == [] and not rig.irq  # nothing to deliver yet
    rig.console.receive(b"xy")
    assert rig.rx.collect() == [(posted[0].head, 2)] and rig.irq
    rig.drv.ack()
    rig.console.receive(b"12345")
    assert rig.rx.collect() == [(posted[1].head, 3), (posted[2].head, 2)]
    assert [rig.rx.written(p) for p in posted] == [b"xy\xee", b"123", b"45\xee"]
    assert rig.irq
    rig.console.receive(b"later")  # no buffer left: kept
    assert rig.console.backlog == 5
    last = rig.rx.add([], [64])
    rig.drv.notify(RECEIVEQ)
    assert rig.rx.collect() == [(last.head, 5)] and rig.rx.written(last)[:5] == b"later"


def test_input_typed_before_the_driver_starts_arrives_at_driver_ok():
    rig = Rig(start=False)
    rig.console.receive(b"early ")
    rig.console.receive(b"bytes")
    rig.drv.negotiate(rig.dev.device_features & ~(1 << F_EVENT_IDX))
    rx = rig.drv.setup_queue(RECEIVEQ)
    rig.drv.setup_queue(TRANSMITQ)
    req = rx.add([], [32])  # posted before DRIVER_OK: seen at DRIVER_OK
    rig.drv.wr(r.STATUS, rig.drv.status | 4)
    assert rx.collect() == [(req.head, 11)]
    assert rx.written(req)[:11] == b"early bytes"


def test_one_receive_chain_gets_at_most_max_request_bytes():
    rig = Rig(buffer_arena=300 << 10)
    data = bytes(i * 7 & 0xFF for i in range(MAX_REQUEST + 10))
    rig.console.receive(data)
    big = rig.rx.add([], [MAX_REQUEST + 100])
    rig.drv.notify(RECEIVEQ)
    assert rig.rx.collect() == [(big.head, MAX_REQUEST)]
    rest = rig.rx.add([], [100])
    rig.drv.notify(RECEIVEQ)
    assert rig.rx.collect() == [(rest.head, 10)]
    assert rig.rx.written(big)[:MAX_REQUEST] + rig.rx.written(rest)[:10] == data


def test_backlog_survives_a_reset():
    rig = Rig()
    rig.console.receive(b"kept")
    rig.start()  # the driver resets and re-initialises the device
    req = rig.rx.add([], [8])
    rig.drv.notify(RECEIVEQ)
    assert rig.rx.collect() == [(req.head, 4)] and rig.rx.written(req)[:4] == b"kept"


def test_input_from_another_thread_arrives_whole_and_in_order():
    rig = Rig()
    chunks = [f"<{i}>".encode() for i in range(300)]
    expected = b"".join(chunks)
    got = bytearray()

    def typist() -> None:
        for chunk in chunks:
            rig.console.receive(chunk)

    thread = threading.Thread(target=typist)
    thread.start()
    posted: dict[int, object] = {}
    deadline = time.monotonic() + 30
    while len(got) < len(expected):
        assert time.monotonic() < deadline, f"stuck after {len(got)} bytes"
        while len(posted) < 8:  # keep 8 small buffers posted, as a guest driver does
            req = rig.rx.add([], [5])
            posted[req.head] = req
        rig.drv.notify(RECEIVEQ)
        for head, n in rig.rx.collect():
            got += rig.rx.written(posted.pop(head))[:n]
    thread.join()
    assert bytes(got) == expected and rig.console.backlog == 0
    assert not rig.ram.violations

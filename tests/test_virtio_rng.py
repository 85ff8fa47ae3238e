"""virtio-rng (virtio 1.2 §5.4) behind the virtio-mmio transport."""

from __future__ import annotations

import itertools

from virtio_driver import Driver, FakeRam

from pyaxvisor.devices.irq import IrqLine, NullIrqSink
from pyaxvisor.devices.virtio import mmio as r
from pyaxvisor.devices.virtio.mmio import TRANSPORT_FEATURES, VirtioMmio
from pyaxvisor.devices.virtio.rng import MAX_REQUEST, VirtioRng
from pyaxvisor.vcpu.width import AccessWidth


def counting_source():
    counter = itertools.count()
    asked = []

    def source(n: int) -> bytes:
        asked.append(n)
        return bytes(next(counter) & 0xFF for _ in range(n))

    return source, asked


def rig(rng: VirtioRng | None = None, **queue_kw: int):
    ram = FakeRam()
    sink = NullIrqSink()
    dev = VirtioMmio(rng or VirtioRng(), ram, ram.ranges, IrqLine(sink, 5))
    drv = Driver(dev, ram)
    q = drv.start(**queue_kw)[0]
    return drv, q, sink, ram


def test_identity_and_features():
    drv, _q, _sink, _ram = rig()
    assert drv.rd(r.DEVICE_ID) == 4
    assert drv.device_features() == TRANSPORT_FEATURES  # no device-type bits
    drv.wr(r.QUEUE_SEL, 0)
    assert drv.rd(r.QUEUE_NUM_MAX) == 256
    drv.wr(r.QUEUE_SEL, 1)
    assert drv.rd(r.QUEUE_NUM_MAX) == 0  # one queue only
    assert drv.rd(0x100, AccessWidth.Qword) == 0  # no configuration space


def test_a_request_gets_the_length_it_asked_for():
    source, asked = counting_source()
    drv, q, sink, ram = rig(VirtioRng(source))
    req = q.add([], [16])
    drv.notify(0)
    assert q.collect() == [(req.head, 16)]
    assert q.written(req) == bytes(range(16))
    assert asked == [16]
    assert sink.levels[5] and not ram.violations


def test_bytes_are_spread_over_several_buffers():
    source, _asked = counting_source()
    drv, q, _sink, _ram = rig(VirtioRng(source))
    req = q.add([], [3, 5, 2])
    drv.notify(0)
    assert q.collect() == [(req.head, 10)]
    assert q.written(req) == bytes(range(10))


def test_os_urandom_by_default():
    drv, q, _sink, _ram = rig()
    reqs = [q.add([], [64]) for _ in range(2)]
    drv.notify(0)
    assert q.collect() == [(reqs[0].head, 64), (reqs[1].head, 64)]
    a, b = (q.written(req) for req in reqs)
    assert a != b and a != b"\xee" * 64  # fresh random bytes in each


def test_a_request_is_bounded_to_64_kib():
    source, asked = counting_source()
    drv, q, _sink, _ram = rig(VirtioRng(source), buffer_arena=200 << 10)
    req = q.add([], [MAX_REQUEST + 4096])
    drv.notify(0)
    assert q.collect() == [(req.head, MAX_REQUEST)]
    assert asked == [MAX_REQUEST]
    data = q.written(req)
    assert data[MAX_REQUEST:] == b"\xee" * 4096  # the rest is left alone


def test_readable_buffers_are_ignored_and_an_empty_request_gets_nothing():
    source, asked = counting_source()
    drv, q, _sink, _ram = rig(VirtioRng(source))
    a = q.add([b"ignored"], [4])
    b = q.add([b"only-readable"], [])
    drv.notify(0)
    assert q.collect() == [(a.head, 4), (b.head, 0)]
    assert asked == [4]

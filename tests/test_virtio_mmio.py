"""The virtio-mmio transport (virtio 1.2 §4.2): registers, feature negotiation,
queue set-up, notifications, interrupts, reset, and what a hostile driver gets."""

from __future__ import annotations

import re
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtio_driver import RAM_BASE, RAM_SIZE, VERSION_1, Driver, FakeRam

from pyaxvisor.devices.bus import BadAccess, mmio_bus
from pyaxvisor.devices.irq import IrqLine, NullIrqSink
from pyaxvisor.devices.virtio import mmio as r
from pyaxvisor.devices.virtio.backend import QueueHandle, VirtioBackend
from pyaxvisor.devices.virtio.chain import DescriptorChain
from pyaxvisor.devices.virtio.errors import BadRequest
from pyaxvisor.devices.virtio.mmio import MMIO_SIZE, VirtioMmio
from pyaxvisor.devices.virtio.spec import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    F_EVENT_IDX,
    F_INDIRECT_DESC,
    STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER,
    STATUS_DRIVER_OK,
    STATUS_FAILED,
    STATUS_FEATURES_OK,
)
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.register_mirror import WHOLE_WORD, RegisterMirror
from pyaxvisor.vcpu.width import AccessWidth

B, W, D, Q = AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword, AccessWidth.Qword
IRQ = 48
ALL_OK = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
#: The test back-end's device-type feature bits (one in the low word, one in word 3).
F_TEST_LOW, F_TEST_HIGH = 3, 100


class Echo(VirtioBackend):
    """A test device: each chain's readable bytes come back reversed in its writable
    buffers. With ``defer`` the chains are kept for the test to complete later. A chain
    whose first readable byte is 0xBB is refused as malformed."""

    name = "echo"
    device_id = 0x2A
    queue_max_sizes = (16, 8)

    def __init__(self, *, defer: bool = False) -> None:
        self.defer = defer
        self.deferred: list[tuple[QueueHandle, DescriptorChain]] = []
        self.config = bytearray(b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a")
        self.config_writes: list[tuple[int, bytes]] = []
        self.resets = 0
        self.activated: list[int] = []
        self.notified: list[int] = []

    def device_features(self) -> int:
        return (1 << F_TEST_LOW) | (1 << F_TEST_HIGH)

    def config_space(self) -> bytes:
        return bytes(self.config)

    def config_write(self, offset: int, data: bytes) -> None:
        self.config_writes.append((offset, data))
        self.config[offset:offset + len(data)] = data

    def activate(self, features: int) -> None:
        self.activated.append(features)

    def reset(self) -> None:
        self.resets += 1

    def queue_notify(self, queue: QueueHandle) -> None:
        self.notified.append(queue.index)
        while (chain := queue.pop()) is not None:
            if self.defer:
                self.deferred.append((queue, chain))
                continue
            queue.push(chain, self.serve(queue, chain))

    @staticmethod
    def serve(queue: QueueHandle, chain: DescriptorChain) -> int:
        data = chain.readable.read(queue.ram, 0, chain.readable.total, "echo")
        if data[:1] == b"\xbb":
            raise BadRequest("echo: request starts with 0xbb")
        out = data[::-1][:chain.writable.total]
        return chain.writable.write(queue.ram, 0, out, "echo")


class Rig:
    def __init__(self, backend: Echo | None = None) -> None:
        self.ram = FakeRam()
        self.sink = NullIrqSink()
        self.backend = backend or Echo()
        self.dev = VirtioMmio(self.backend, self.ram, self.ram.ranges, IrqLine(self.sink, IRQ))
        self.drv = Driver(self.dev, self.ram)

    @property
    def line(self) -> bool:
        return self.sink.levels.get(IRQ, False)

    def needs_reset(self) -> bool:
        return bool(self.drv.status & STATUS_DEVICE_NEEDS_RESET)


@pytest.fixture
def rig() -> Rig:
    return Rig()


# -- identification and plain registers ---------------------------------------------------------
def test_identification_registers(rig):
    d = rig.drv
    assert d.rd(r.MAGIC_VALUE) == 0x74726976
    assert d.rd(r.VERSION) == 2
    assert d.rd(r.DEVICE_ID) == 0x2A
    assert d.rd(r.VENDOR_ID) == 0x554D4551
    assert d.rd(r.CONFIG_GENERATION) == 0
    assert d.status == 0 and d.rd(r.INTERRUPT_STATUS) == 0


def test_device_features_by_word(rig):
    d = rig.drv
    words = []
    for sel in (0, 1, 2, 3, 4, 0xFFFF_FFFF):
        d.wr(r.DEVICE_FEATURES_SEL, sel)
        assert d.rd(r.DEVICE_FEATURES_SEL) == sel
        words.append(d.rd(r.DEVICE_FEATURES))
    assert words[0] == (1 << F_TEST_LOW) | (1 << F_INDIRECT_DESC) | (1 << F_EVENT_IDX)
    assert words[1] == 1  # VIRTIO_F_VERSION_1 is bit 32
    assert words[2] == 0
    assert words[3] == 1 << (F_TEST_HIGH - 96)
    assert words[4:] == [0, 0]


def test_queue_num_max_per_queue(rig):
    d = rig.drv
    for sel, size in ((0, 16), (1, 8), (2, 0), (0xFFFF_FFFF, 0)):
        d.wr(r.QUEUE_SEL, sel)
        assert d.rd(r.QUEUE_SEL) == sel
        assert d.rd(r.QUEUE_NUM_MAX) == size
        assert d.rd(r.QUEUE_READY) == 0


def test_no_shared_memory_regions(rig):
    d = rig.drv
    for sel in (0, 1, 255):
        d.wr(r.SHM_SEL, sel)
        assert d.rd(r.SHM_SEL) == sel
        length = d.rd(r.SHM_LEN_LOW) | d.rd(r.SHM_LEN_HIGH) << 32
        assert length == (1 << 64) - 1  # -1: no such region
        assert d.rd(r.SHM_BASE_LOW) == d.rd(r.SHM_BASE_HIGH) == 0xFFFF_FFFF


def test_reserved_and_write_only_registers(rig):
    d = rig.drv
    for off in (0x018, 0x028, 0x03C, 0x040, 0x048, 0x0C0, 0x0F8):
        d.wr(off, 0xFFFF_FFFF)
        assert d.rd(off) == 0
    d.wr(r.MAGIC_VALUE, 0)  # read-only: ignored
    d.wr(r.DEVICE_ID, 7)
    d.wr(r.CONFIG_GENERATION, 9)
    assert d.rd(r.MAGIC_VALUE) == 0x74726976 and d.rd(r.DEVICE_ID) == 0x2A
    assert d.rd(r.CONFIG_GENERATION) == 0
    assert d.rd(r.QUEUE_NOTIFY) == 0 and d.rd(r.INTERRUPT_ACK) == 0


@pytest.mark.parametrize("offset, width", [
    (r.STATUS, B), (r.STATUS, W), (r.STATUS, Q), (r.STATUS + 1, D), (0x0FE, W),
    (MMIO_SIZE, B), (MMIO_SIZE - 4, Q), (-4, D),
])
def test_refused_accesses(rig, offset, width):
    with pytest.raises(BadAccess, match="virtio-mmio"):
        rig.dev.read(offset, width, 0)
    with pytest.raises(BadAccess):
        rig.dev.write(offset, width, 0, 0)


def test_the_device_sits_on_a_bus():
    rig = Rig()
    bus = mmio_bus()
    bus.attach(0x0A00_0000, MMIO_SIZE, rig.dev)
    assert bus.read(0x0A00_0000, D) == 0x74726976
    assert bus.read(0x0A00_0100, B) == 1
    with pytest.raises(BadAccess):
        bus.read(0x0A00_0070, B)


# -- configuration space ------------------------------------------------------------------------
def test_config_space_reads_at_every_width(rig):
    d = rig.drv
    assert d.rd(0x100, B) == 0x01
    assert d.rd(0x101, W) == 0x0302
    assert d.rd(0x104, D) == 0x08070605
    assert d.rd(0x100, Q) == 0x0807060504030201
    assert d.rd(0x108, Q) == 0x0A09  # past the back-end's 10 bytes: zeros
    assert d.rd(0x1F8, Q) == 0


def test_config_space_writes_reach_the_back_end(rig):
    d = rig.drv
    d.wr(0x102, 0xBEEF, W)
    d.wr(0x108, 0x1122_3344_5566_7788, Q)  # only 2 bytes of it are inside the space
    d.wr(0x180, 0xFF, B)                     # outside: ignored
    assert rig.backend.config_writes == [(2, b"\xef\xbe"), (8, b"\x88\x77")]
    assert d.rd(0x100, Q) == 0x08070605BEEF0201


def test_config_changed_bumps_generation_and_interrupts_a_live_driver(rig):
    rig.dev.config_changed()
    assert rig.drv.rd(r.CONFIG_GENERATION) == 1
    assert rig.drv.rd(r.INTERRUPT_STATUS) == 0 and not rig.line  # no driver yet
    rig.drv.start()
    rig.dev.config_changed()
    assert rig.drv.rd(r.CONFIG_GENERATION) == 2
    assert rig.drv.rd(r.INTERRUPT_STATUS) == 2 and rig.line
    assert rig.drv.ack() == 2
    assert not rig.line


# -- handshake ----------------------------------------------------------------------------------
def test_handshake_and_every_register_reads_back(rig):
    d = rig.drv
    d.wr(r.STATUS, STATUS_ACKNOWLEDGE)
    assert d.status == STATUS_ACKNOWLEDGE
    d.wr(r.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    assert d.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER
    wanted = VERSION_1 | (1 << F_EVENT_IDX) | (1 << F_TEST_HIGH)
    d.write_features(wanted)
    for sel in range(4):
        d.wr(r.DRIVER_FEATURES_SEL, sel)
        assert d.rd(r.DRIVER_FEATURES_SEL) == sel
        assert d.rd(r.DRIVER_FEATURES) == (wanted >> (32 * sel)) & 0xFFFF_FFFF
    d.wr(r.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    assert d.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
    assert rig.dev.negotiated_features == wanted

    d.wr(r.QUEUE_SEL, 1)
    d.wr(r.QUEUE_NUM, 8)
    addrs = {r.QUEUE_DESC_LOW: RAM_BASE + 0x1000, r.QUEUE_DRIVER_LOW: RAM_BASE + 0x2000,
             r.QUEUE_DEVICE_LOW: RAM_BASE + 0x3000}
    for low, addr in addrs.items():
        d.wr(low, addr & 0xFFFF_FFFF)
        d.wr(low + 4, addr >> 32)
    assert d.rd(r.QUEUE_NUM) == 8
    for low, addr in addrs.items():
        assert d.rd(low) == addr & 0xFFFF_FFFF and d.rd(low + 4) == addr >> 32
    d.wr(r.QUEUE_READY, 1)
    assert d.rd(r.QUEUE_READY) == 1
    d.wr(r.QUEUE_SEL, 0)
    assert d.rd(r.QUEUE_READY) == 0 and d.rd(r.QUEUE_NUM) == 0
    d.wr(r.STATUS, ALL_OK)
    assert d.status == ALL_OK
    assert rig.backend.activated == [wanted]
    assert rig.dev.last_error is None and not rig.line


def test_queue_registers_are_frozen_while_the_queue_is_ready(rig):
    d = rig.drv
    q = rig.drv.start()[0]
    d.wr(r.QUEUE_SEL, 0)
    d.wr(r.QUEUE_NUM, 2)
    d.wr(r.QUEUE_DESC_LOW, 0)
    assert d.rd(r.QUEUE_NUM) == 16 and d.rd(r.QUEUE_DESC_LOW) == q.desc & 0xFFFF_FFFF


def test_the_driver_cannot_clear_status_bits_nor_set_needs_reset(rig):
    d = rig.drv
    d.start()
    d.wr(r.STATUS, STATUS_ACKNOWLEDGE | STATUS_DEVICE_NEEDS_RESET)
    assert d.status == ALL_OK
    d.wr(r.STATUS, STATUS_FAILED)
    assert d.status == ALL_OK | STATUS_FAILED


# -- feature negotiation -----------------------------------------------------------------------
def test_a_driver_without_version_1_does_not_get_features_ok(rig):
    assert not rig.drv.negotiate(1 << F_TEST_LOW)
    assert rig.drv.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER
    assert rig.dev.negotiated_features == 0


@pytest.mark.parametrize("extra", [1 << 0, 1 << 33, 1 << 127, 1 << F_TEST_HIGH + 1])
def test_features_the_device_did_not_offer_are_refused(rig, extra):
    assert not rig.drv.negotiate(VERSION_1 | extra)
    assert not rig.drv.status & STATUS_FEATURES_OK


def test_a_subset_is_accepted_and_then_frozen(rig):
    d = rig.drv
    assert d.negotiate(VERSION_1)
    d.write_features(VERSION_1 | (1 << F_TEST_LOW))  # after FEATURES_OK: ignored
    d.wr(r.DRIVER_FEATURES_SEL, 0)
    assert d.rd(r.DRIVER_FEATURES) == 0
    assert rig.dev.negotiated_features == VERSION_1


def test_feature_words_past_the_fourth_are_ignored(rig):
    d = rig.drv
    d.wr(r.DRIVER_FEATURES_SEL, 0xFFFF_FFFF)
    d.wr(r.DRIVER_FEATURES, 0xFFFF_FFFF)
    assert d.rd(r.DRIVER_FEATURES) == 0
    d.wr(r.DRIVER_FEATURES_SEL, 1)
    d.wr(r.DRIVER_FEATURES, 1)
    d.wr(r.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    assert d.status & STATUS_FEATURES_OK


def test_driver_ok_before_features_ok_needs_reset(rig):
    d = rig.drv
    d.wr(r.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK)
    assert d.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DEVICE_NEEDS_RESET
    assert "DRIVER_OK before FEATURES_OK" in rig.dev.last_error
    assert d.rd(r.INTERRUPT_STATUS) == 2 and rig.line
    assert rig.backend.activated == []


# -- reset -------------------------------------------------------------------------------------
def test_writing_zero_to_status_resets_everything(rig):
    d = rig.drv
    q = d.start()[0]
    q.add([b"abc"], [3])
    d.notify(0)
    assert rig.line
    d.wr(r.DEVICE_FEATURES_SEL, 1)
    d.wr(r.SHM_SEL, 3)
    d.wr(r.QUEUE_SEL, 1)
    resets = rig.backend.resets
    d.wr(r.STATUS, 0)
    assert rig.backend.resets == resets + 1
    assert not rig.line
    for reg in (r.STATUS, r.INTERRUPT_STATUS, r.DEVICE_FEATURES_SEL, r.DRIVER_FEATURES,
                r.DRIVER_FEATURES_SEL, r.QUEUE_SEL, r.SHM_SEL, r.QUEUE_READY, r.QUEUE_NUM,
                r.QUEUE_DESC_LOW, r.QUEUE_DRIVER_LOW, r.QUEUE_DEVICE_LOW):
        assert d.rd(reg) == 0, hex(reg)
    assert rig.dev.negotiated_features == 0
    # and it works again from scratch
    q = d.start()[0]
    req = q.add([b"xyz"], [3])
    d.notify(0)
    assert q.collect() == [(req.head, 3)] and q.written(req) == b"zyx"


def test_reset_clears_needs_reset(rig):
    d = rig.drv
    d.wr(r.STATUS, STATUS_DRIVER_OK)
    assert rig.needs_reset()
    d.wr(r.STATUS, 0)
    assert d.status == 0 and rig.dev.last_error is None and not rig.line


# -- queue set-up ------------------------------------------------------------------------------
@pytest.mark.parametrize("num, desc, avail, used, match", [
    (0, 0x1000, 0x2000, 0x3000, "QueueNum 0 is not a power of two"),
    (6, 0x1000, 0x2000, 0x3000, "QueueNum 6"),
    (32, 0x1000, 0x2000, 0x3000, r"QueueNum 32 is not a power of two in 1\.\.16"),
    (16, 0x1008, 0x2000, 0x3000, "QueueDesc .* not 16-byte aligned"),
    (16, 0x1000, 0x2001, 0x3000, "QueueDriver .* not 2-byte aligned"),
    (16, 0x1000, 0x2000, 0x3002, "QueueDevice .* not 4-byte aligned"),
    (16, RAM_SIZE - 0x80, 0x2000, 0x3000, "descriptor table"),
    (16, 0x1000, -RAM_BASE, 0x3000, "available ring"),
    (16, 0x1000, 0x2000, RAM_SIZE, "used ring"),
])
def test_an_invalid_queue_needs_reset(rig, num, desc, avail, used, match):
    d = rig.drv
    assert d.negotiate()
    d.wr(r.QUEUE_SEL, 0)
    d.wr(r.QUEUE_NUM, num)
    for low, off in ((r.QUEUE_DESC_LOW, desc), (r.QUEUE_DRIVER_LOW, avail),
                     (r.QUEUE_DEVICE_LOW, used)):
        d.wr(low, (RAM_BASE + off) & 0xFFFF_FFFF)
        d.wr(low + 4, (RAM_BASE + off) >> 32)
    d.wr(r.QUEUE_READY, 1)
    assert d.rd(r.QUEUE_READY) == 0
    assert rig.needs_reset()
    assert d.rd(r.INTERRUPT_STATUS) == 2 and rig.line
    assert rig.dev.last_error.startswith("virtio-mmio (echo) queue 0:")
    assert re.search(match, rig.dev.last_error)
    assert not rig.ram.violations


def test_queue_ready_before_features_ok_needs_reset(rig):
    d = rig.drv
    d.wr(r.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    d.wr(r.QUEUE_NUM, 4)
    d.wr(r.QUEUE_READY, 1)
    assert rig.needs_reset() and d.rd(r.QUEUE_READY) == 0
    assert "QueueReady set before FEATURES_OK" in rig.dev.last_error


def test_queue_ready_zero_stops_the_queue(rig):
    d = rig.drv
    q = d.start()[0]
    d.wr(r.QUEUE_SEL, 0)
    d.wr(r.QUEUE_READY, 0)
    assert d.rd(r.QUEUE_READY) == 0
    q.add([b"a"], [1])
    d.notify(0)
    assert q.collect() == [] and not rig.line
    d.wr(r.QUEUE_READY, 1)  # the same layout again: a fresh queue, counters at 0
    assert d.rd(r.QUEUE_READY) == 1


def test_writes_to_a_queue_that_does_not_exist_are_ignored(rig):
    d = rig.drv
    assert d.negotiate()
    d.wr(r.QUEUE_SEL, 5)
    d.wr(r.QUEUE_NUM, 4)
    d.wr(r.QUEUE_READY, 1)
    assert d.rd(r.QUEUE_NUM) == 0 and d.rd(r.QUEUE_READY) == 0
    assert not rig.needs_reset()


# -- notifications and interrupts --------------------------------------------------------------
def test_notify_processes_the_queue_and_interrupts(rig):
    d = rig.drv
    queues = d.start()
    req = queues[1].add([b"hello"], [2, 3])
    assert not rig.line
    d.notify(1)
    assert queues[1].collect() == [(req.head, 5)]
    assert queues[1].written(req) == b"olleh"
    assert d.rd(r.INTERRUPT_STATUS) == 1 and rig.line
    d.wr(r.INTERRUPT_ACK, 1)
    assert d.rd(r.INTERRUPT_STATUS) == 0 and not rig.line
    assert rig.backend.notified == [0, 1, 1]  # one pass per queue at DRIVER_OK, then ours


def test_notify_before_driver_ok_is_ignored_and_seen_at_driver_ok(rig):
    d = rig.drv
    assert d.negotiate()
    q = d.setup_queue(0)
    req = q.add([b"early"], [5])
    d.notify(0)
    assert q.collect() == [] and rig.backend.notified == []
    d.wr(r.STATUS, ALL_OK)
    assert q.collect() == [(req.head, 5)] and rig.line


def test_notify_of_an_unknown_queue_is_ignored(rig):
    rig.drv.start()
    for value in (2, 0xFFFF, 0xFFFF_FFFF):
        rig.drv.notify(value)
    assert not rig.needs_reset() and rig.backend.notified == [0, 1]


def test_indirect_chains_through_the_transport(rig):
    q = rig.drv.start()[0]
    req = q.add([b"ab", b"cd"], [1, 3], indirect=True)
    rig.drv.notify(0)
    assert q.collect() == [(req.head, 4)] and q.written(req) == b"dcba"


def test_no_interrupt_flag_without_event_idx(rig):
    q = rig.drv.start(VERSION_1)[0]
    q.set_avail_flags(1)
    q.add([b"x"], [1])
    rig.drv.notify(0)
    assert len(q.collect()) == 1
    assert rig.drv.rd(r.INTERRUPT_STATUS) == 0 and not rig.line


def test_event_idx_through_the_transport(rig):
    q = rig.drv.start(VERSION_1 | (1 << F_EVENT_IDX))[0]
    q.set_avail_flags(1)  # ignored with event idx
    q.set_used_event(1)   # interrupt when entry 1 is used
    q.add([b"a"], [1])
    rig.drv.notify(0)
    assert rig.drv.rd(r.INTERRUPT_STATUS) == 0
    assert q.avail_event == 1
    q.add([b"b"], [1])
    rig.drv.notify(0)
    assert rig.drv.rd(r.INTERRUPT_STATUS) == 1 and rig.line
    assert len(q.collect()) == 2


def test_completion_from_another_thread():
    rig = Rig(Echo(defer=True))
    q = rig.drv.start()[0]
    reqs = [q.add([bytes([i, i + 1])], [2]) for i in range(3)]
    rig.drv.notify(0)
    assert len(rig.backend.deferred) == 3 and not rig.line

    def worker():
        for handle, chain in rig.backend.deferred:
            handle.push(chain, Echo.serve(handle, chain))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert q.collect() == [(req.head, 2) for req in reqs]
    assert [q.written(req) for req in reqs] == [b"\x01\x00", b"\x02\x01", b"\x03\x02"]
    assert rig.line


def test_a_completion_after_reset_is_dropped():
    rig = Rig(Echo(defer=True))
    q = rig.drv.start()[0]
    q.add([b"a"], [1])
    rig.drv.notify(0)
    (handle, chain), = rig.backend.deferred
    rig.drv.wr(r.STATUS, 0)
    rig.ram.set_u16(q.used + 2, 0x5555)  # what the driver left there
    handle.push(chain, 1)
    assert rig.ram.u16(q.used + 2) == 0x5555 and not rig.line


def test_a_guest_error_reported_from_another_thread(rig):
    from pyaxvisor.devices.virtio.mmio import TransportQueue

    rig.drv.start()
    TransportQueue(rig.dev, 0).fail(BadRequest("found late"))
    assert rig.needs_reset() and rig.dev.last_error == "found late"


# -- hostile drivers ---------------------------------------------------------------------------
def hostile(rig: Rig, build) -> None:
    """Start the device, let ``build(q)`` write a bad chain into queue 0, notify."""
    q = rig.drv.start()[0]
    build(q)
    rig.drv.notify(0)
    assert rig.needs_reset()
    assert rig.drv.rd(r.INTERRUPT_STATUS) & 2 and rig.line
    assert not rig.ram.violations
    assert q.used_idx == 0


def test_a_descriptor_outside_ram_needs_reset(rig):
    def build(q):
        q.write_desc(0, RAM_BASE + RAM_SIZE, 64, DESC_F_WRITE)
        q.publish(0)

    hostile(rig, build)
    assert "is not inside guest RAM" in rig.dev.last_error


def test_a_huge_length_needs_reset(rig):
    def build(q):
        q.write_desc(0, RAM_BASE + 0x1000, 0xFFFF_FFFF, DESC_F_WRITE)
        q.publish(0)

    hostile(rig, build)
    assert "+0xffffffff" in rig.dev.last_error


def test_a_descriptor_loop_needs_reset(rig):
    def build(q):
        buf = q.buffer(16)
        q.write_desc(0, buf, 16, DESC_F_NEXT, 1)
        q.write_desc(1, buf, 16, DESC_F_NEXT, 2)
        q.write_desc(2, buf, 16, DESC_F_NEXT, 0)
        q.publish(0)

    hostile(rig, build)
    assert "runs past 16 descriptors" in rig.dev.last_error


def test_an_indirect_table_inside_an_indirect_table_needs_reset(rig):
    def build(q):
        inner = q.ram.alloc(16, 16)
        q.write_desc(0, q.buffer(4), 4, 0, table=inner)
        outer = q.ram.alloc(16, 16)
        q.write_desc(0, inner, 16, DESC_F_INDIRECT, table=outer)
        q.write_desc(0, outer, 16, DESC_F_INDIRECT)
        q.publish(0)

    hostile(rig, build)
    assert "inside an indirect table" in rig.dev.last_error


def test_indirect_without_the_feature_needs_reset():
    rig = Rig()
    q = rig.drv.start(VERSION_1)[0]
    q.add([b"a"], [1], indirect=True)
    rig.drv.notify(0)
    assert rig.needs_reset() and "INDIRECT_DESC was not negotiated" in rig.dev.last_error


def test_a_malformed_request_needs_reset(rig):
    hostile(rig, lambda q: q.add([b"\xbbad"], [4]))
    assert rig.dev.last_error == "echo: request starts with 0xbb"


def test_a_broken_device_ignores_notifies_until_reset(rig):
    def build(q):
        q.write_desc(0, 0, 4, 0)
        q.publish(0)

    hostile(rig, build)
    first = rig.dev.last_error
    rig.drv.notify(0)
    rig.drv.notify(1)
    assert rig.backend.notified == [0, 1, 0]  # the failing pass only
    assert rig.dev.last_error == first
    rig.drv.wr(r.STATUS, 0)
    q = rig.drv.start()[0]
    req = q.add([b"ok"], [2])
    rig.drv.notify(0)
    assert q.collect() == [(req.head, 2)]


# -- back-end declarations ---------------------------------------------------------------------
class Bad(Echo):
    pass


@pytest.mark.parametrize("attr, value, match", [
    ("device_features", lambda self: 1 << 28, "reserved for the transport"),
    ("device_features", lambda self: 1 << 40, "reserved for the transport"),
    ("queue_max_sizes", (12,), "queue 0 maximum size 12"),
    ("queue_max_sizes", (65536,), "maximum size 65536"),
    ("config_space", lambda self: bytes(257), "configuration space larger than 256"),
])
def test_bad_back_end_declarations_are_refused(monkeypatch, attr, value, match):
    monkeypatch.setattr(Bad, attr, value)
    ram = FakeRam()
    with pytest.raises(InvalidInput, match=match):
        VirtioMmio(Bad(), ram, ram.ranges)


# -- the register table a software CPU reads ----------------------------------------------------
_TABLE_EVENTS = st.lists(st.one_of(
    st.tuples(st.just("request"), st.sampled_from([0, 1]), st.booleans()),  # bad: 0xBB first
    st.tuples(st.just("ack"), st.integers(0, 3)),
    st.tuples(st.just("config"),),
    st.tuples(st.just("reset"),),
    st.tuples(st.just("start"),),
), max_size=25)


@settings(max_examples=120, deadline=None)
@given(_TABLE_EVENTS)
def test_the_register_table_agrees_with_the_transport_after_any_events(events):
    """The identity registers and InterruptStatus are published for 32-bit reads only,
    and what is published is what a read of the register answers, whatever happened."""
    rig = Rig()
    table = rig.dev.mirror
    published = {r.MAGIC_VALUE, r.VERSION, r.DEVICE_ID, r.VENDOR_ID, r.INTERRUPT_STATUS}
    queues = {}
    for event in events:
        if event[0] == "start" and not queues:
            queues = rig.drv.start()
        elif event[0] == "request" and event[1] in queues and not rig.needs_reset():
            queues[event[1]].add([b"\xbb" if event[2] else b"ok"], [2])
            rig.drv.notify(event[1])
            queues[event[1]].collect()
        elif event[0] == "ack":
            rig.drv.wr(r.INTERRUPT_ACK, event[1])
        elif event[0] == "config":
            rig.dev.config_changed()
        elif event[0] == "reset":
            rig.drv.wr(r.STATUS, 0)
            queues = {}
        for offset in range(0, MMIO_SIZE, 4):
            if offset in published:
                assert table.valid[offset >> 2] == 0xF | WHOLE_WORD, hex(offset)
                assert table.data[offset >> 2] == rig.drv.rd(offset), hex(offset)
            else:
                assert table.valid[offset >> 2] == 0, hex(offset)
    assert table.data[r.INTERRUPT_STATUS >> 2] == int(rig.line) * rig.drv.rd(r.INTERRUPT_STATUS)


def test_a_transport_publishes_in_the_part_of_a_row_table_it_is_given():
    row = RegisterMirror(4 * MMIO_SIZE)
    ram = FakeRam()
    sink = NullIrqSink()
    dev = VirtioMmio(Echo(), ram, ram.ranges, IrqLine(sink, IRQ), mirror=row.part(0x400, MMIO_SIZE))
    Driver(dev, ram).start()
    dev.config_changed()
    assert row.data[(0x400 + r.DEVICE_ID) >> 2] == 0x2A
    assert row.data[(0x400 + r.INTERRUPT_STATUS) >> 2] == 2
    assert not any(row.valid[i] for i in range(0x400 >> 2))


def test_a_table_of_another_size_is_refused():
    ram = FakeRam()
    with pytest.raises(InvalidInput, match="a register table of 256 bytes, not the window's 512"):
        VirtioMmio(Echo(), ram, ram.ranges, mirror=RegisterMirror(0x100))

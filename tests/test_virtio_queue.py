"""The split virtqueue (virtio 1.2 §2.7) and the guest-RAM bounds check, driven by
the test-side driver of ``tests/virtio_driver.py`` over fake guest RAM."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from virtio_driver import RAM_BASE, RAM_SIZE, CopyingRam, DriverQueue, FakeRam

from pyaxvisor.devices.virtio.chain import Buffer, BufferList
from pyaxvisor.devices.virtio.errors import (
    DescriptorChainError,
    GuestRangeError,
    QueueConfigError,
    VirtioGuestError,
)
from pyaxvisor.devices.virtio.memory import AddressedMemory, GuestRam
from pyaxvisor.devices.virtio.queue import (
    MAX_INDIRECT,
    QueueLayout,
    SplitQueue,
    vring_need_event,
)
from pyaxvisor.devices.virtio.spec import (
    AVAIL_F_NO_INTERRUPT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
)
from pyaxvisor.errors import InvalidInput, NotFound


def make(size: int = 8, *, event_idx: bool = False, indirect: bool = True, start: int = 0,
         ram: FakeRam | None = None) -> tuple[FakeRam, DriverQueue, SplitQueue]:
    ram = FakeRam() if ram is None else ram
    dq = DriverQueue(ram, size, start=start)
    q = SplitQueue(GuestRam(ram, ram.ranges), QueueLayout(size, dq.desc, dq.avail, dq.used),
                   event_idx=event_idx, indirect=indirect, name="q0")
    q.next_avail = q.next_used = start & 0xFFFF
    return ram, dq, q


def refused(q: SplitQueue, match: str, kind: type[Exception] = DescriptorChainError) -> str:
    with pytest.raises(kind, match=match) as info:
        q.pop()
    assert isinstance(info.value, VirtioGuestError)
    return str(info.value)


# -- vring_need_event -------------------------------------------------------------------------
@given(st.integers(0, 0xFFFF), st.integers(0, 300), st.integers(0, 600))
def test_need_event_is_true_exactly_when_the_event_index_was_crossed(old, step, offset):
    # the used idx moved from old by step entries; the driver asked for an interrupt
    # when entry event (somewhere around them) is used
    new = (old + step) & 0xFFFF
    event = (old + offset - 150) & 0xFFFF
    used_now = {(old + i) & 0xFFFF for i in range(step)}
    assert vring_need_event(event, new, old) == (event in used_now)


def test_need_event_examples():
    assert vring_need_event(5, 6, 5)           # entry 5 was just used
    assert not vring_need_event(6, 6, 5)       # the driver waits for entry 6
    assert vring_need_event(0xFFFF, 1, 0xFFFE)  # across the wrap
    assert not vring_need_event(3, 3, 3)       # nothing new


# -- guest RAM ---------------------------------------------------------------------------------
def test_guest_ram_accepts_ranges_inside_one_bank_only():
    ram = FakeRam()
    g = GuestRam(ram, [(RAM_BASE + RAM_SIZE, 0x1000), (RAM_BASE, RAM_SIZE)])
    assert g.ranges == ((RAM_BASE, RAM_SIZE), (RAM_BASE + RAM_SIZE, 0x1000))
    assert g.contains(RAM_BASE, RAM_SIZE)
    assert g.contains(RAM_BASE + RAM_SIZE, 0)
    assert not g.contains(RAM_BASE - 1, 2)
    assert not g.contains(RAM_BASE + RAM_SIZE - 8, 16)  # spans the two banks
    assert not g.contains(RAM_BASE + RAM_SIZE + 0x1000, 1)
    assert not g.contains(-1, 1)
    with pytest.raises(GuestRangeError, match=r"descriptor 3: guest range \[0x3fffffff, \+0x2\)"):
        g.read(RAM_BASE - 1, 2, "descriptor 3")
    with pytest.raises(GuestRangeError):
        g.write(RAM_BASE + RAM_SIZE - 1, b"ab", "used ring")
    assert not ram.violations


@pytest.mark.parametrize("ranges, problem", [
    ([], "no guest RAM"),
    ([(0x1000, 0)], "empty"),
    ([(1 << 64, 0x1000)], "64-bit"),
    ([(0x1000, 0x2000), (0x2000, 0x1000)], "overlap"),
])
def test_guest_ram_refuses_bad_ranges(ranges, problem):
    with pytest.raises(InvalidInput, match=problem):
        GuestRam(FakeRam(), ranges)


def test_memory_errors_become_guest_range_errors():
    class Unmapped:
        def read(self, gpa, length):
            raise NotFound("gone")

        def write(self, gpa, data):
            raise NotFound("gone")

    g = GuestRam(Unmapped(), [(0, 0x1000)])
    with pytest.raises(GuestRangeError, match="ring"):
        g.read(0, 4, "ring")
    with pytest.raises(GuestRangeError, match="ring"):
        g.write(0, b"x", "ring")


def test_addressed_memory_converts_each_address():
    class Gpa:
        def __init__(self, value: int) -> None:
            self.value = value

    class TypedRam:
        def __init__(self) -> None:
            self.data = bytearray(16)

        def read(self, gpa, length):
            assert isinstance(gpa, Gpa)
            return bytes(self.data[gpa.value:gpa.value + length])

        def write(self, gpa, data):
            assert isinstance(gpa, Gpa)
            self.data[gpa.value:gpa.value + len(data)] = data

    g = GuestRam(AddressedMemory(TypedRam(), Gpa), [(0, 16)])
    g.write(4, b"abcd", "x")
    assert g.read(3, 6, "x") == b"\0abcd\0"


def test_buffer_list_is_one_byte_stream():
    ram = FakeRam()
    g = GuestRam(ram, ram.ranges)
    a, b = RAM_BASE + 0x100, RAM_BASE + 0x300
    bl = BufferList((Buffer(a, 3), Buffer(b, 5)))
    assert bl.total == 8 and len(bl) == 2
    assert list(bl.segments(2, 4)) == [(a + 2, 1), (b, 3)]
    assert list(bl.segments(0, 8, chunk=2)) == [(a, 2), (a + 2, 1), (b, 2), (b + 2, 2),
                                                (b + 4, 1)]
    assert bl.write(g, 1, b"XYZW", "t") == 4
    assert ram.data[0x100:0x103] == b"\0XY" and ram.data[0x300:0x302] == b"ZW"
    assert bl.read(g, 1, 4, "t") == b"XYZW"
    with pytest.raises(InvalidInput, match="outside 8 bytes"):
        list(bl.segments(6, 3))


# -- layout ------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, kind, match", [
    ({"size": 0}, QueueConfigError, "QueueNum 0 is not a power of two"),
    ({"size": 12}, QueueConfigError, "QueueNum 12"),
    ({"size": 512}, QueueConfigError, r"in 1\.\.256"),
    ({"desc": RAM_BASE + 8}, QueueConfigError, "QueueDesc 0x40000008 is not 16-byte aligned"),
    ({"avail": RAM_BASE + 1}, QueueConfigError, "not 2-byte aligned"),
    ({"used": RAM_BASE + 2}, QueueConfigError, "not 4-byte aligned"),
    ({"desc": RAM_BASE + RAM_SIZE - 16}, GuestRangeError, "descriptor table"),
    ({"avail": 0x1000}, GuestRangeError, "available ring"),
    ({"used": RAM_BASE + RAM_SIZE - 8}, GuestRangeError, "used ring"),
])
def test_a_bad_layout_is_refused(change, kind, match):
    ram = FakeRam()
    layout = QueueLayout(8, RAM_BASE, RAM_BASE + 0x1000, RAM_BASE + 0x2000)._replace(**change)
    with pytest.raises(kind, match=match):
        SplitQueue(GuestRam(ram, ram.ranges), layout, max_size=256, name="q0")


# -- chains ------------------------------------------------------------------------------------
def test_an_empty_queue_pops_nothing():
    _ram, _dq, q = make()
    assert q.pop() is None


def test_a_chain_round_trips():
    ram, dq, q = make()
    req = dq.add([b"head", b"er-data"], [3, 5])
    chain = q.pop()
    assert chain.head == req.head and chain.descriptors == 4
    assert [tuple(b) for b in chain.readable.buffers] == req.readable
    assert [tuple(b) for b in chain.writable.buffers] == req.writable
    g = q.ram
    assert chain.readable.read(g, 0, chain.readable.total, "t") == b"header-data"
    chain.writable.write(g, 0, b"answer", "t")
    assert q.pop() is None
    assert q.push(chain, 6) is True
    assert dq.collect() == [(req.head, 6)]
    assert dq.written(req) == b"answer\xee\xee"
    assert q.in_flight == 0 and not ram.violations


def test_used_element_is_written_before_used_idx():
    ram, dq, q = make(ram=CopyingRam())
    req = dq.add([], [4])
    chain = q.pop()
    order = []
    real_write = ram.write

    def spy(gpa, data):
        order.append("idx" if gpa == dq.used + 2 else "elem" if gpa >= dq.used + 4 else gpa)
        real_write(gpa, data)

    ram.write = spy
    q.push(chain, 4)
    assert order == ["elem", "idx"]
    assert dq.collect() == [(req.head, 4)]


def test_push_refuses_device_bugs():
    _ram, dq, q = make()
    dq.add([], [4])
    chain = q.pop()
    with pytest.raises(InvalidInput, match="5 bytes written to a chain with 4 writable"):
        q.push(chain, 5)
    _ram2, _dq2, other = make()
    with pytest.raises(InvalidInput, match="not popped from this queue"):
        other.push(chain, 0)


def test_indices_wrap_past_65535():
    _ram, dq, q = make(size=4, start=0xFFFC)
    seen = []
    for round_ in range(12):  # entries 0xfffc .. 0x0007
        req = dq.add([bytes([round_])], [1])
        chain = q.pop()
        assert chain.readable.read(q.ram, 0, 1, "t") == bytes([round_])
        q.push(chain, 1)
        seen += dq.collect()
        assert seen[-1] == (req.head, 1)
    assert len(seen) == 12
    assert q.next_avail == q.next_used == 0x0008 == dq.used_idx


def test_several_chains_in_flight_complete_out_of_order():
    _ram, dq, q = make(size=8)
    reqs = [dq.add([bytes([i])], [2]) for i in range(4)]
    chains = [q.pop() for _ in range(4)]
    assert [c.head for c in chains] == [r.head for r in reqs]
    for c in reversed(chains):
        q.push(c, 2)
    assert dq.collect() == [(r.head, 2) for r in reversed(reqs)]


def test_indirect_chain_round_trips():
    ram, dq, q = make()
    req = dq.add([b"abc", b"de"], [4, 4], indirect=True)
    chain = q.pop()
    assert chain.head == req.head and chain.descriptors == 5
    assert chain.readable.read(q.ram, 0, 5, "t") == b"abcde"
    assert chain.writable.total == 8
    q.push(chain, 8)
    assert dq.collect() == [(req.head, 8)]
    assert not ram.violations


def test_direct_descriptors_may_lead_to_an_indirect_table():
    _ram, dq, q = make()
    table = dq.ram.alloc(32, 16)
    data = dq.buffer(4)
    dq.ram.write(data, b"1234")
    dq.write_desc(0, data, 2, DESC_F_NEXT, 1, table=table)
    dq.write_desc(1, data + 2, 2, DESC_F_WRITE, table=table)
    hdr = dq.buffer(2)
    dq.ram.write(hdr, b"hd")
    dq.write_desc(3, hdr, 2, DESC_F_NEXT, 5)
    dq.write_desc(5, table, 32, DESC_F_INDIRECT)
    dq.publish(3)
    chain = q.pop()
    assert chain.readable.read(q.ram, 0, 4, "t") == b"hd12"
    assert chain.writable.buffers == (Buffer(data + 2, 2),)


# -- refusals ----------------------------------------------------------------------------------
def test_readable_after_writable_is_refused():
    _ram, dq, q = make()
    buf = dq.buffer(8)
    dq.write_desc(0, buf, 4, DESC_F_WRITE | DESC_F_NEXT, 1)
    dq.write_desc(1, buf + 4, 4, 0)
    dq.publish(0)
    refused(q, "device-readable descriptor 1 follows a device-writable one")


def test_a_descriptor_loop_is_refused_not_followed_forever():
    ram, dq, q = make(size=8)
    buf = dq.buffer(8)
    dq.write_desc(0, buf, 8, DESC_F_NEXT, 1)
    dq.write_desc(1, buf, 8, DESC_F_NEXT, 0)
    dq.publish(0)
    refused(q, "runs past 8 descriptors")
    assert ram.reads < 40  # bounded: the walk stopped at the queue size


def test_a_self_loop_inside_an_indirect_table_is_refused():
    _ram, dq, q = make()
    table = dq.ram.alloc(48, 16)
    buf = dq.buffer(4)
    dq.write_desc(0, buf, 4, DESC_F_NEXT, 1, table=table)
    dq.write_desc(1, buf, 4, DESC_F_NEXT, 1, table=table)
    dq.write_desc(0, table, 48, DESC_F_INDIRECT)
    dq.publish(0)
    refused(q, "indirect table from head 0 runs past 3 descriptors")


@pytest.mark.parametrize("head, nxt, match", [
    (8, 0, "head descriptor index 8 is past the queue size 8"),
    (0, 9, "descriptor 0 has next 9, past the queue size 8"),
])
def test_indices_past_the_table_are_refused(head, nxt, match):
    _ram, dq, q = make()
    dq.write_desc(0, dq.buffer(4), 4, DESC_F_NEXT, nxt)
    dq.publish(head)
    refused(q, match)


def test_an_avail_idx_too_far_ahead_is_refused():
    _ram, dq, q = make(size=8)
    dq.ram.set_u16(dq.avail + 2, 9)
    refused(q, "available idx 9 is 9 entries ahead of the device's 0, more than the queue size")


def test_more_chains_in_flight_than_the_queue_size_is_refused():
    _ram, dq, q = make(size=2)
    dq.write_desc(0, dq.buffer(4), 4, 0)
    for _ in range(2):
        dq.publish(0)
        assert q.pop() is not None
    dq.publish(0)  # a driver re-using a descriptor still in flight
    refused(q, "more chains available than the queue size 2 while 2 are still in flight")


@pytest.mark.parametrize("addr, length", [
    (RAM_BASE + RAM_SIZE, 1),               # just past RAM
    (RAM_BASE - 0x1000, 16),                # below RAM
    (RAM_BASE, 0xFFFF_FFFF),                # a huge length
    ((1 << 64) - 8, 16),                    # wraps the address space
    (0x0900_0000, 4),                       # an MMIO window
])
def test_a_buffer_outside_ram_is_refused_without_touching_it(addr, length):
    ram, dq, q = make()
    dq.write_desc(0, addr, length, DESC_F_WRITE)
    dq.publish(0)
    refused(q, "buffer of descriptor 0", GuestRangeError)
    assert not ram.violations


def test_an_indirect_table_outside_ram_is_refused():
    ram, dq, q = make()
    dq.write_desc(0, RAM_BASE + RAM_SIZE - 16, 32, DESC_F_INDIRECT)
    dq.publish(0)
    refused(q, "indirect table of descriptor 0", GuestRangeError)
    assert not ram.violations


def test_a_buffer_outside_ram_inside_an_indirect_table_is_refused():
    ram, dq, q = make()
    table = dq.ram.alloc(16, 16)
    dq.write_desc(0, 0x1000, 4, 0, table=table)
    dq.write_desc(0, table, 16, DESC_F_INDIRECT)
    dq.publish(0)
    refused(q, "buffer of indirect descriptor 0", GuestRangeError)
    assert not ram.violations


@pytest.mark.parametrize("flags, length, indirect, match", [
    (DESC_F_INDIRECT, 16, False, "VIRTIO_F_INDIRECT_DESC was not negotiated"),
    (DESC_F_INDIRECT | DESC_F_NEXT, 16, True, "sets both INDIRECT and NEXT"),
    (DESC_F_INDIRECT, 0, True, "length 0 .* not a positive multiple of 16"),
    (DESC_F_INDIRECT, 24, True, "length 24 .* not a positive multiple of 16"),
    (DESC_F_INDIRECT, 16 * (MAX_INDIRECT + 1), True, f"{MAX_INDIRECT + 1} entries"),
])
def test_bad_indirect_descriptors_are_refused(flags, length, indirect, match):
    _ram, dq, q = make(indirect=indirect)
    dq.write_desc(0, RAM_BASE, length, flags)
    dq.publish(0)
    refused(q, match)


def test_an_indirect_table_inside_an_indirect_table_is_refused():
    _ram, dq, q = make()
    inner = dq.ram.alloc(16, 16)
    dq.write_desc(0, dq.buffer(4), 4, 0, table=inner)
    outer = dq.ram.alloc(16, 16)
    dq.write_desc(0, inner, 16, DESC_F_INDIRECT, table=outer)
    dq.write_desc(0, outer, 16, DESC_F_INDIRECT)
    dq.publish(0)
    refused(q, "indirect descriptor 0 inside an indirect table")


# -- notification suppression ------------------------------------------------------------------
def test_no_interrupt_flag_suppresses_interrupts_without_event_idx():
    _ram, dq, q = make()
    dq.add([], [1])
    dq.add([], [1])
    a, b = q.pop(), q.pop()
    dq.set_avail_flags(AVAIL_F_NO_INTERRUPT)
    assert q.push(a, 0) is False
    dq.set_avail_flags(0)
    assert q.push(b, 0) is True


def test_event_idx_interrupts_only_when_used_event_is_crossed():
    _ram, dq, q = make(event_idx=True)
    for _ in range(4):
        dq.add([], [1])
    chains = [q.pop() for _ in range(4)]
    dq.set_used_event(2)  # "interrupt me when entry 2 is used"
    assert [q.push(c, 1) for c in chains] == [False, False, True, False]
    assert dq.collect() == [(c.head, 1) for c in chains]


@pytest.mark.parametrize(("used_event", "wanted"), [(0, True), (2, True), (3, False), (5, False)])
def test_push_many_publishes_a_batch_with_one_used_idx_write(used_event, wanted):
    ram, dq, q = make(event_idx=True, ram=CopyingRam())  # every write through write()
    for _ in range(5):
        dq.add([], [4])
    chains = [q.pop() for _ in range(5)]
    dq.set_used_event(used_event)  # "interrupt me when entry N is used"
    writes = []
    original = ram.write
    ram.write = lambda gpa, data: (writes.append(gpa), original(gpa, data))[1]
    # the batch holds entries 0..2: an interrupt exactly when used_event is among them
    assert q.push_many([(chains[0], 1), (chains[1], 4), (chains[2], 0)]) is wanted
    assert writes.count(dq.used + 2) == 1 and dq.used_idx == 3
    assert dq.collect() == [(chains[0].head, 1), (chains[1].head, 4), (chains[2].head, 0)]
    assert q.in_flight == 2
    assert q.push_many([]) is False and dq.used_idx == 3


def test_push_many_checks_every_completion_before_writing_any():
    _ram, dq, q = make()
    dq.add([], [4])
    dq.add([], [4])
    a, b = q.pop(), q.pop()
    with pytest.raises(InvalidInput, match="5 bytes written to a chain with 4 writable"):
        q.push_many([(a, 4), (b, 5)])
    assert dq.used_idx == 0 and q.in_flight == 2


def test_event_idx_publishes_avail_event():
    _ram, dq, q = make(event_idx=True, start=0xFFFE)
    assert q.pop() is None
    assert dq.avail_event == 0xFFFE  # "notify me when you add entry 0xfffe"
    dq.add([], [1])
    dq.add([], [1])
    q.pop()
    assert dq.avail_event == 0xFFFF
    q.pop()
    assert dq.avail_event == 0x0000
    assert q.pop() is None and dq.avail_event == 0


def test_event_idx_rechecks_after_publishing_avail_event():
    ram, dq, q = make(event_idx=True, ram=CopyingRam())
    req = dq.add([], [1], publish=False)
    real_write = ram.write

    def racing_driver(gpa, data):  # the driver adds an entry as the device goes idle
        real_write(gpa, data)
        if gpa == dq.used + 4 + 8 * dq.size and dq.avail_idx == 0:
            dq.publish(req.head)

    ram.write = racing_driver
    chain = q.pop()
    assert chain is not None and chain.head == req.head


# -- property: random chains round-trip ---------------------------------------------------------
chains = st.tuples(
    st.lists(st.binary(min_size=0, max_size=40), max_size=5),
    st.lists(st.integers(0, 40), max_size=5),
    st.booleans(),
).filter(lambda c: c[0] or c[1])


@settings(max_examples=60, deadline=None)
@given(st.lists(chains, min_size=1, max_size=12), st.integers(0, 0xFFFF))
def test_random_chains_round_trip(batch, start):
    ram, dq, q = make(size=16, start=start)
    done = []
    for readable, writable, indirect in batch:
        req = dq.add(readable, writable, indirect=indirect)
        chain = q.pop()
        assert chain.head == req.head
        assert chain.readable.read(q.ram, 0, chain.readable.total, "t") == b"".join(readable)
        assert [b.length for b in chain.writable.buffers] == writable
        payload = bytes(i & 0xFF for i in range(chain.writable.total))
        chain.writable.write(q.ram, 0, payload, "t")
        q.push(chain, len(payload))
        done += dq.collect()
        assert done[-1] == (req.head, len(payload))
        assert dq.written(req) == payload
    assert dq.used_idx == (start + len(batch)) & 0xFFFF
    assert not ram.violations


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(RAM_BASE, RAM_BASE + RAM_SIZE),
                                    st.integers(0, (1 << 64) - 1)),
                          st.integers(0, 0xFFFF_FFFF),
                          st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
                min_size=8, max_size=8),
       st.integers(0, 7))
def test_random_descriptor_tables_never_escape_ram_nor_hang(table, head):
    ram, dq, q = make(size=8)
    for i, (addr, length, flags, nxt) in enumerate(table):
        ram.write(dq.desc + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))
    dq.publish(head)
    try:
        chain = q.pop()
    except VirtioGuestError:
        chain = None
    if chain is not None:
        for buf in chain.readable.buffers + chain.writable.buffers:
            assert q.ram.contains(buf.addr, buf.length)
    assert not ram.violations


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 64), min_size=0, max_size=8), st.data())
def test_segments_of_whole_buffers_match_the_piece_by_piece_walk(lengths, data):
    """``segments`` hands out whole buffers at once when the range is all of them, or
    all but the first and/or the last (a request's data): the same pieces as the walk."""
    addrs = [0x1000 * (i + 1) for i in range(len(lengths))]
    bl = BufferList.of(tuple(addrs), tuple(lengths))
    total = sum(lengths)
    candidates = [(0, total)]
    if lengths:
        candidates += [(lengths[0], total - lengths[0]), (0, total - lengths[-1]),
                       (lengths[0], max(0, total - lengths[0] - lengths[-1]))]
    offset, length = data.draw(st.sampled_from(candidates))
    if offset + length > total:
        return
    fast = list(bl.segments(offset, length))
    assert fast == list(bl._pieces(offset, length, None))
    assert sum(n for _a, n in fast) == length
    addrs_out, lengths_out = bl.columns(offset, length)  # the same pieces as two tuples
    assert list(zip(addrs_out, lengths_out, strict=True)) == fast


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 64), min_size=1, max_size=8), st.data())
def test_columns_of_any_range_are_the_segments(lengths, data):
    """``columns`` of any stream range (whole buffers or not) lists the pieces
    ``segments`` walks; a range past the end is refused the same way."""
    bl = BufferList.of(tuple(0x1000 * (i + 1) for i in range(len(lengths))), tuple(lengths))
    total = sum(lengths)
    offset = data.draw(st.integers(0, total))
    length = data.draw(st.integers(0, total - offset))
    walked = list(bl._pieces(offset, length, None))
    assert list(bl.segments(offset, length)) == walked  # the fast paths cut the same pieces
    addrs_out, lengths_out = bl.columns(offset, length)
    assert list(zip(addrs_out, lengths_out, strict=True)) == walked
    with pytest.raises(InvalidInput, match="outside"):
        bl.columns(offset, total - offset + 1)


def test_guest_ram_over_an_address_space_follows_its_map():
    """A device's accesses cut from one view of the guest's RAM range, taken again
    whenever the address space's map changes: a region taken out of the map is not
    reached through an old view."""
    from pyaxvisor.hal import HostHal
    from pyaxvisor.mm import GuestPhysAddr
    from pyaxvisor.mm.addrspace import AddrSpace
    from pyaxvisor.mm.nested import nested_page_table

    hal = HostHal(16 << 20)
    space = AddrSpace(hal, nested_page_table(hal, "aarch64"))
    try:
        region = space.map_ram(GuestPhysAddr(0x4000_0000), 2 << 20)
        g = GuestRam(AddressedMemory(space, GuestPhysAddr), [(0x4000_0000, 2 << 20)])
        g.write(0x4000_0010, b"ring", "x")
        assert space.read(GuestPhysAddr(0x4000_0010), 4) == b"ring"
        space.set_region_mapped(region.gpa, False)
        with pytest.raises(GuestRangeError, match="x"):
            g.read(0x4000_0010, 4, "x")
        space.set_region_mapped(region.gpa, True)
        assert g.read(0x4000_0010, 4, "x") == b"ring"
    finally:
        space.destroy()
        hal.close()

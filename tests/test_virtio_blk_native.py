"""virtio-blk's native fast path (``_sgio.serve``): requests of the shape Linux's driver
makes (one indirect table: header, data, status) are taken from the ring, carried out
and completed in C. It must be indistinguishable from the Python path for every
request, leave every other shape to Python, and never reach outside guest RAM."""

from __future__ import annotations

import itertools
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_virtio_blk import SECTORS, Rig, pattern
from virtio_driver import RAM_BASE, RAM_SIZE, FakeRam

from pyaxvisor.devices.virtio import _sgio
from pyaxvisor.devices.virtio import blk as vb
from pyaxvisor.devices.virtio.spec import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

#: (type, sector, OUT data, IN bytes, indirect, header split in two): a sequence of
#: requests run the same way with the fast path on and off.
SCENARIO = [
    (vb.T_IN, 0, b"", 4096, True, False),               # fast: a plain read
    (vb.T_OUT, 8, pattern(8192, 3), 0, True, False),    # fast: a write
    (vb.T_IN, 8, b"", 8192, True, False),               # fast: reads the write back
    (vb.T_IN, SECTORS - 1, b"", 1024, True, False),     # fast shape, past the end: IOERR
    (vb.T_OUT, 2, pattern(100), 0, True, False),        # fast shape, not whole sectors: IOERR
    (vb.T_IN, 4, b"", 512, True, True),                 # header in two pieces: Python
    (vb.T_IN, 4, b"", 512, False, False),               # direct descriptors: Python
    (vb.T_GET_ID, 0, b"", 20, True, False),             # another type: Python
    (vb.T_FLUSH, 0, b"", 0, True, False),               # Python
    (vb.T_OUT, SECTORS, pattern(512), 0, True, False),  # fast shape, past the end: IOERR
    (vb.T_IN, 1, b"", 3 * 512, True, False),            # fast again after Python ones
]


def run(image: Path, native: bool, *, read_only: bool = False, batch: bool = False,
        scenario=SCENARIO):
    """Run ``scenario`` (one notify per request, or all behind one notify with
    ``batch``); what the driver and the disk can see afterwards. A scenario's OUT data
    and IN sizes may be lists: the data in that many pieces."""
    calls: list[int] = []
    real = _sgio.serve

    def counting(*args):
        outcome = real(*args)
        calls.append(outcome[2])
        return outcome

    rig = Rig(image, read_only=read_only, native=native)
    try:
        vb._sgio.serve, saved = counting, vb._sgio.serve
        reqs = []
        for kind, sector, out, n_in, indirect, split in scenario:
            header = struct.pack("<IIQ", kind, 0, sector)
            readable = [header[:6], header[6:]] if split else [header]
            readable += out if isinstance(out, list) else [out] if out else []
            sizes = n_in if isinstance(n_in, list) else [n_in] if n_in else []
            reqs.append(rig.q.add(readable, [*sizes, 1], indirect=indirect))
            if not batch:
                rig.notify()
        rig.notify()
        used = dict(rig.q.collect())
        seen = [(used[r.head], rig.q.written(r)) for r in reqs]
        return seen, image.read_bytes(), sum(calls), rig.drv.rd(0x70)  # 0x70: Status
    finally:
        vb._sgio.serve = saved
        rig.close()


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("batch", [False, True])
def test_the_fast_path_gives_what_the_python_path_gives(tmp_path, read_only, batch):
    images = []
    for name in ("python", "native"):  # the same file name: GET_ID answers with it
        (tmp_path / name).mkdir()
        path = tmp_path / name / "disk.img"
        path.write_bytes(pattern(SECTORS * 512, 9))
        images.append(path)
    slow = run(images[0], False, read_only=read_only, batch=batch)
    fast = run(images[1], True, read_only=read_only, batch=batch)
    assert fast[0] == slow[0]          # used lengths, data and status bytes
    assert fast[1] == slow[1]          # the image
    assert fast[3] == slow[3]          # device status: no NEEDS_RESET
    assert slow[2] == 0
    # the fast path took the plain reads and writes (7 of them), Python the rest
    assert fast[2] == 7
    statuses = [written[-1] for _used, written in fast[0]]
    assert statuses[:5] == [vb.S_OK, vb.S_IOERR if read_only else vb.S_OK, vb.S_OK,
                            vb.S_IOERR, vb.S_IOERR]


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(pattern(SECTORS * 512))
    return path


def hostile_table(rig: Rig, entries: list[tuple[int, int, int, int]]) -> None:
    """Publish one chain: an indirect table of ``entries`` (addr, len, flags, next)."""
    q = rig.q
    table = rig.ram.alloc(16 * len(entries), 16)
    for i, (addr, length, flags, nxt) in enumerate(entries):
        q.write_desc(i, addr, length, flags, nxt, table=table)
    (head,) = q.take_desc(1)
    q.write_desc(head, table, 16 * len(entries), DESC_F_INDIRECT)
    q.publish(head)


@pytest.mark.parametrize("where", ["data outside RAM", "data past the end of RAM",
                                   "status outside RAM", "loop in the table"])
def test_a_hostile_table_is_left_to_python_which_refuses_it(image, where):
    rig = Rig(image)
    try:
        header = rig.q.buffer(16)
        rig.ram.write(header, struct.pack("<IIQ", vb.T_IN, 0, 0))
        data, status = rig.q.buffer(512), rig.q.buffer(1)
        entries = [(header, 16, DESC_F_NEXT, 1), (data, 512, DESC_F_NEXT | DESC_F_WRITE, 2),
                   (status, 1, DESC_F_WRITE, 0)]
        if where == "data outside RAM":
            entries[1] = (RAM_BASE - 0x10000, 512, DESC_F_NEXT | DESC_F_WRITE, 2)
        elif where == "data past the end of RAM":
            entries[1] = (RAM_BASE + RAM_SIZE - 256, 512, DESC_F_NEXT | DESC_F_WRITE, 2)
        elif where == "status outside RAM":
            entries[2] = (RAM_BASE + RAM_SIZE, 1, DESC_F_WRITE, 0)
        else:
            entries[1] = (data, 512, DESC_F_NEXT | DESC_F_WRITE, 0)
        hostile_table(rig, entries)
        rig.notify()
        assert rig.drv.rd(0x70) & 0x40, f"{where}: the device must need a reset"
        assert rig.q.collect() == []
        assert not rig.ram.violations
    finally:
        rig.close()


def test_ring_areas_outside_ram_are_refused_before_anything_is_read(image):
    view = memoryview(bytearray(4096))
    base = 0x1000
    # the used ring past the end of the view: nothing served, the Python queue decides
    outcome = _sgio.serve(-1, view, base, base, base + 0x100, base + 0x1000 - 8, 8, 0, 0,
                          True, 1 << 20, 1 << 20, False, 1 << 16, False, 16, None)
    assert outcome == (0, 0, 0, 0, 1, (), (), None)


class ReportingRam(FakeRam):
    """Guest RAM that hears what devices wrote (as AddrSpace tells the CPUs), with the
    used index of the queue under test at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[tuple[tuple[int, ...], tuple[int, ...], int]] = []
        self.used_idx_at: int | None = None
        self.fail = False

    def written_columns(self, addrs, lengths, within=None) -> None:
        self.reports.append((tuple(addrs), tuple(lengths), self.u16(self.used_idx_at)))
        self.within = within
        if self.fail:
            raise RuntimeError("listener bug")


def test_what_a_read_wrote_is_reported_before_the_driver_can_see_it(image):
    ram = ReportingRam()
    rig = Rig(image, ram=ram)
    try:
        ram.used_idx_at = rig.q.used + 2
        header = struct.pack("<IIQ", vb.T_IN, 0, 1)
        first = rig.q.add([header], [512, 1024, 1], indirect=True)
        second = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 7)], [512, 1], indirect=True)
        rig.notify()
        assert rig.q.collect() == [(first.head, 1537), (second.head, 513)]
        pieces = (*first.writable[:2], second.writable[0])
        # one report for the batch, of the data pieces only, while the used idx was 0
        assert ram.reports == [(tuple(a for a, _ in pieces), (512, 1024, 512), 0)]
        # with the range native code checked them against, so that it is looked up once
        assert ram.within == (RAM_BASE, RAM_BASE + RAM_SIZE)
        assert rig.q.written(first)[:1536] == pattern(SECTORS * 512)[512:2048]
    finally:
        rig.close()


def test_an_error_in_the_report_keeps_the_queue_consistent(image):
    ram = ReportingRam()
    rig = Rig(image, ram=ram)
    try:
        ram.used_idx_at = rig.q.used + 2
        ram.fail = True
        req = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 1)], [512, 1], indirect=True)
        # a listener's bug is a device error (a VM stops with it), raised once the
        # request is complete: the used ring and the device's indices agree
        with pytest.raises(RuntimeError, match="listener bug"):
            rig.notify()
        assert rig.q.collect() == [(req.head, 513)] and len(ram.reports) == 1
        ram.fail = False
        again = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 2)], [512, 1], indirect=True)
        rig.notify()
        assert rig.q.collect() == [(again.head, 513)] and len(ram.reports) == 2
    finally:
        rig.close()


def _pieces(total: int, cuts: list[int]) -> list[int]:
    """``total`` bytes cut at ``cut / 8`` of the way for each of ``cuts`` (1..7)."""
    edges = [0, *sorted({total * c // 8 for c in cuts} - {0, total}), total]
    return [b - a for a, b in itertools.pairwise(edges)]


_REQUEST = st.tuples(
    st.sampled_from([vb.T_IN, vb.T_OUT, vb.T_OUT, vb.T_IN, vb.T_FLUSH, vb.T_GET_ID, 7]),
    st.integers(0, SECTORS + 1),
    st.sampled_from([0, 100, 512, 1024, 1536, 4096]),
    st.lists(st.integers(1, 7), max_size=3),
    st.booleans(),
    st.sampled_from([False, False, False, True]))


@settings(max_examples=60, deadline=None)
@given(requests=st.lists(_REQUEST, min_size=1, max_size=6), batch=st.booleans(),
       read_only=st.sampled_from([False, False, True]))
def test_random_requests_give_the_same_outcome_both_ways(requests, batch, read_only):
    scenario = []
    for kind, sector, nbytes, cuts, indirect, split in requests:
        sizes = _pieces(nbytes, cuts) if nbytes else []
        if kind == vb.T_OUT:
            data = pattern(nbytes, sector)
            out, at = [], 0
            for n in sizes:
                out.append(data[at:at + n])
                at += n
            scenario.append((kind, sector, out, 0, indirect, split))
        else:
            scenario.append((kind, sector, b"", sizes, indirect, split))
    with tempfile.TemporaryDirectory() as tmp:
        seen = []
        for name, native in (("python", False), ("native", True)):
            (Path(tmp) / name).mkdir()
            path = Path(tmp) / name / "disk.img"
            path.write_bytes(pattern(SECTORS * 512, 5))
            seen.append(run(path, native, read_only=read_only, batch=batch, scenario=scenario))
    slow, fast = seen
    assert fast[0] == slow[0] and fast[1] == slow[1] and fast[3] == slow[3]

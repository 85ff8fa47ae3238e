"""virtio-blk (virtio 1.2 §5.2) over a raw image file, behind the virtio-mmio
transport: configuration, requests, status bytes, and how the image is opened."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from virtio_driver import VERSION_1, CopyingRam, Driver, DriverQueue, FakeRam

from pyaxvisor.devices.irq import IrqLine, NullIrqSink
from pyaxvisor.devices.virtio import blk as vb
from pyaxvisor.devices.virtio import mmio as r
from pyaxvisor.devices.virtio.blk import VirtioBlk
from pyaxvisor.devices.virtio.blk_image import RawImage
from pyaxvisor.devices.virtio.errors import (
    ImageLocked,
    ImageNotFound,
    ImageReadOnly,
)
from pyaxvisor.devices.virtio.mmio import TRANSPORT_FEATURES, VirtioMmio
from pyaxvisor.devices.virtio.spec import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    STATUS_DEVICE_NEEDS_RESET,
)
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth

D, Q = AccessWidth.Dword, AccessWidth.Qword
SECTORS = 128
REPO = Path(__file__).resolve().parent.parent


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed + (i >> 9)) & 0xFF for i in range(n))


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(pattern(SECTORS * 512))
    return path


class Rig:
    def __init__(self, path: Path, *, ram: FakeRam | None = None, **kw) -> None:
        self.ram = FakeRam() if ram is None else ram
        self.sink = NullIrqSink()
        self.blk = VirtioBlk(path, **kw)
        self.dev = VirtioMmio(self.blk, self.ram, self.ram.ranges, IrqLine(self.sink, 7))
        self.drv = Driver(self.dev, self.ram)
        self.q: DriverQueue = self.drv.start(buffer_arena=96 << 10)[0]

    def request(self, kind: int, sector: int = 0, *, out: bytes = b"", data_in: int = 0,
                indirect: bool = False, split_header: bool = False):
        header = struct.pack("<IIQ", kind, 0, sector)
        readable = [header[:6], header[6:]] if split_header else [header]
        if out:
            readable.append(out)
        writable = ([data_in] if data_in else []) + [1]
        req = self.q.add(readable, writable, indirect=indirect)
        self.notify()
        used = self.q.collect()
        assert used[0][0] == req.head and len(used) == 1
        written = self.q.written(req)
        return written[-1], written[:-1], used[0][1]

    def notify(self) -> None:
        """QueueNotify, then wait for the device's I/O thread to finish."""
        self.drv.notify(0)
        self.blk.drain()

    def close(self) -> None:
        self.blk.close()


@pytest.fixture(params=["views", "copies"])
def rig(image, request):
    """A device on guest RAM it moves data to and from zero-copy (``views``), or by
    copies (``copies``: a memory without views)."""
    rig = Rig(image, ram=FakeRam() if request.param == "views" else CopyingRam())
    yield rig
    rig.close()


# -- configuration ---------------------------------------------------------------------------
def test_identity_features_and_config(rig):
    d = rig.drv
    assert d.rd(r.DEVICE_ID) == 2
    feats = d.device_features()
    assert feats == TRANSPORT_FEATURES | (1 << 1) | (1 << 2) | (1 << 6) | (1 << 9)
    assert d.rd(0x100, Q) == SECTORS                 # capacity
    assert d.rd(0x108, D) == 1 << 20                 # size_max
    assert d.rd(0x10C, D) == 254                     # seg_max
    assert d.rd(0x114, D) == 512                     # blk_size
    assert d.rd(0x110, D) == 0 and d.rd(0x118, Q) == 0  # geometry, topology: not offered
    assert d.rd(0x13C, D) == 0                       # past the 60-byte space


def test_a_read_only_image_offers_ro(image):
    rig = Rig(image, read_only=True)
    try:
        assert rig.drv.device_features() & (1 << vb.F_RO)
    finally:
        rig.close()


def test_capacity_counts_whole_sectors(tmp_path):
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(512 * 3 + 100))
    rig = Rig(path)
    try:
        assert rig.drv.rd(0x100, Q) == 3
        assert rig.request(vb.T_IN, 2, data_in=512)[0] == vb.S_OK
        assert rig.request(vb.T_IN, 3, data_in=512)[0] == vb.S_IOERR  # the partial tail
    finally:
        rig.close()


# -- requests ----------------------------------------------------------------------------------
def test_read(rig, image):
    status, data, used = rig.request(vb.T_IN, 2, data_in=1024)
    assert status == vb.S_OK and used == 1025
    assert data == image.read_bytes()[1024:2048]


def test_read_through_an_indirect_table_with_a_split_header(rig, image):
    status, data, used = rig.request(vb.T_IN, 5, data_in=512, indirect=True, split_header=True)
    assert (status, used) == (vb.S_OK, 513)
    assert data == image.read_bytes()[5 * 512:6 * 512]


def test_read_into_several_buffers(rig, image):
    header = struct.pack("<IIQ", vb.T_IN, 0, 1)
    req = rig.q.add([header], [100, 412, 512, 1])
    rig.notify()
    assert rig.q.collect() == [(req.head, 1025)]
    written = rig.q.written(req)
    assert written[:-1] == image.read_bytes()[512:1536] and written[-1] == vb.S_OK


def test_write(rig, image):
    new = pattern(1024, seed=99)
    status, _data, used = rig.request(vb.T_OUT, 7, out=new)
    assert (status, used) == (vb.S_OK, 1)
    disk = image.read_bytes()
    assert disk[7 * 512:9 * 512] == new
    assert disk[:7 * 512] == pattern(SECTORS * 512)[:7 * 512]
    assert rig.request(vb.T_IN, 7, data_in=1024)[1] == new


def test_header_and_data_in_one_descriptor(rig, image):
    new = pattern(512, seed=3)
    req = rig.q.add([struct.pack("<IIQ", vb.T_OUT, 0, 9) + new], [1])
    rig.notify()
    assert rig.q.collect() == [(req.head, 1)]
    assert image.read_bytes()[9 * 512:10 * 512] == new


def test_flush_syncs_before_the_completion(rig, monkeypatch):
    seen = []
    real = os.fsync

    def fsync(fd):
        seen.append(rig.q.used_idx)  # the completion is not visible yet
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert rig.request(vb.T_OUT, 0, out=bytes(512))[0] == vb.S_OK
    status, _data, used = rig.request(vb.T_FLUSH)
    assert (status, used) == (vb.S_OK, 1)
    assert seen == [1]


def test_get_id_returns_the_serial(image):
    rig = Rig(image, serial="pyaxvisor-0001")
    try:
        status, data, used = rig.request(vb.T_GET_ID, data_in=20)
        assert (status, used) == (vb.S_OK, 21)
        assert data == b"pyaxvisor-0001".ljust(20, b"\0")
        status, data, used = rig.request(vb.T_GET_ID, data_in=4)  # a short area: cut
        assert (status, data, used) == (vb.S_OK, b"pyax", 5)
    finally:
        rig.close()


def test_the_default_serial_is_the_file_name(rig):
    status, data, _used = rig.request(vb.T_GET_ID, data_in=20)
    assert status == vb.S_OK and data == b"disk.img".ljust(20, b"\0")


@pytest.mark.parametrize("serial, match", [("é", "not ASCII"), ("x" * 21, "longer than 20")])
def test_a_bad_serial_is_refused(image, serial, match):
    with pytest.raises(InvalidInput, match=match):
        VirtioBlk(image, serial=serial)


@pytest.mark.parametrize("sector, length", [
    (SECTORS, 512),          # just past the end
    (SECTORS - 1, 1024),     # runs past the end
    (1 << 60, 512),          # far away
    ((1 << 64) - 1, 512),    # the largest sector number
])
def test_a_read_past_the_capacity_is_ioerr(rig, sector, length):
    status, data, used = rig.request(vb.T_IN, sector, data_in=length)
    assert (status, used) == (vb.S_IOERR, 1)
    assert data == b"\xee" * length  # no data moved


def test_a_write_past_the_capacity_is_ioerr(rig, image):
    before = image.read_bytes()
    assert rig.request(vb.T_OUT, SECTORS - 1, out=bytes(1024))[0] == vb.S_IOERR
    assert image.read_bytes() == before


def test_a_length_not_a_multiple_of_512_is_ioerr(rig, image):
    before = image.read_bytes()
    assert rig.request(vb.T_IN, 0, data_in=100)[0] == vb.S_IOERR
    assert rig.request(vb.T_OUT, 0, out=bytes(700))[0] == vb.S_IOERR
    assert image.read_bytes() == before


def test_an_unknown_request_type_is_unsupp(rig):
    for kind in (11, 13, 0xFFFF_FFFF):
        assert rig.request(kind, 0, data_in=512) == (vb.S_UNSUPP, b"\xee" * 512, 1)


def test_a_host_io_error_is_ioerr(rig, monkeypatch):
    def broken(offset, length, **_kw):
        raise OSError(errno.EIO, "media error")

    monkeypatch.setattr(rig.blk.image, "read", broken)
    monkeypatch.setattr(rig.blk.image, "readv", broken)
    assert rig.request(vb.T_IN, 0, data_in=512)[0] == vb.S_IOERR
    monkeypatch.setattr(rig.blk.image, "write", broken)
    monkeypatch.setattr(rig.blk.image, "writev", broken)
    assert rig.request(vb.T_OUT, 0, out=b"x" * 512)[0] == vb.S_IOERR
    monkeypatch.setattr(rig.blk.image, "flush", lambda: broken(0, 0))
    assert rig.request(vb.T_FLUSH)[0] == vb.S_IOERR


def test_a_request_larger_than_seg_max_times_size_max_is_ioerr(tmp_path):
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.truncate(512 << 20)  # sparse: larger than any request
    rig = Rig(path)
    try:
        ram, q = rig.ram, rig.q
        piece = 512 << 10
        count = vb.MAX_REQUEST_BYTES // piece + 2
        buf = ram.alloc(piece, 16)
        ram.write(buf, b"\xee" * piece)
        header = q.buffer(16)
        ram.write(header, struct.pack("<IIQ", vb.T_IN, 0, 0))
        status = q.buffer(1)
        table = ram.alloc(16 * (count + 2), 16)
        q.write_desc(0, header, 16, DESC_F_NEXT, 1, table=table)
        for i in range(count):
            q.write_desc(1 + i, buf, piece, DESC_F_WRITE | DESC_F_NEXT, 2 + i, table=table)
        q.write_desc(count + 1, status, 1, DESC_F_WRITE, table=table)
        (head,) = q.take_desc(1)
        q.write_desc(head, table, 16 * (count + 2), DESC_F_INDIRECT)
        q.publish(head)
        rig.notify()
        assert q.collect() == [(head, 1)]
        assert ram.read(status, 1) == bytes([vb.S_IOERR])
        assert ram.read(buf, piece) == b"\xee" * piece
    finally:
        rig.close()


def test_a_read_only_image_refuses_writes_but_reads(image):
    rig = Rig(image, read_only=True)
    try:
        before = image.read_bytes()
        assert rig.request(vb.T_OUT, 0, out=bytes(512))[0] == vb.S_IOERR
        assert image.read_bytes() == before
        status, data, _used = rig.request(vb.T_IN, 0, data_in=512)
        assert status == vb.S_OK and data == before[:512]
        assert rig.request(vb.T_FLUSH)[0] == vb.S_OK
    finally:
        rig.close()


@pytest.mark.parametrize("readable, writable, match", [
    ([bytes(8)], [1], "8 device-readable bytes, the header needs 16"),
    ([struct.pack("<IIQ", 0, 0, 0)], [], "no device-writable byte for the status"),
])
def test_a_request_without_room_for_header_or_status_needs_reset(rig, readable, writable,
                                                                  match):
    rig.q.add(readable, writable)
    rig.notify()
    assert rig.drv.status & STATUS_DEVICE_NEEDS_RESET
    assert match in rig.dev.last_error
    assert rig.q.collect() == [] and not rig.ram.violations


def test_negotiating_only_version_1_still_works(image):
    rig = Rig(image)
    try:
        rig.q = rig.drv.start(VERSION_1)[0]
        assert rig.request(vb.T_IN, 0, data_in=512)[0] == vb.S_OK
    finally:
        rig.close()


# -- opening the image ---------------------------------------------------------------------------
def test_a_missing_image_is_named(tmp_path):
    path = tmp_path / "nope.img"
    with pytest.raises(ImageNotFound, match=r"disk image '.*nope\.img': no such file") as info:
        VirtioBlk(path)
    assert info.value.path == str(path)


def test_a_read_only_file_asked_read_write_is_refused(image):
    image.chmod(0o444)
    with pytest.raises(ImageReadOnly, match=r"disk image '.*disk\.img': the file is read-only "
                                            r"\(mode 444\)"):
        VirtioBlk(image)
    with VirtioBlk(image, read_only=True).image as img:  # read-only is fine
        assert img.sectors == SECTORS


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_file_the_host_will_not_write_is_refused(image, monkeypatch, code):
    real = os.open

    def fake_open(path, flags, *a):
        if flags & os.O_RDWR:
            raise OSError(code, os.strerror(code), path)
        return real(path, flags, *a)

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(ImageReadOnly, match=r"disk\.img': cannot open it read-write"):
        VirtioBlk(image)


def test_a_directory_is_not_an_image(tmp_path):
    with pytest.raises(InvalidInput, match="not a regular file or block device"):
        VirtioBlk(tmp_path)


def test_a_second_writer_is_refused_by_the_lock(image):
    first = VirtioBlk(image)
    try:
        with pytest.raises(ImageLocked, match=r"disk\.img': cannot open it read-write: it is "
                                              r"in use"):
            VirtioBlk(image)
        with pytest.raises(ImageLocked, match="cannot open it read-only"):
            VirtioBlk(image, read_only=True)
    finally:
        first.close()
    VirtioBlk(image).close()  # released with the first


def test_readers_share_but_exclude_a_writer(image):
    a = RawImage(image, read_only=True)
    b = RawImage(image, read_only=True)
    try:
        with pytest.raises(ImageLocked):
            RawImage(image)
        b.close()
        with pytest.raises(ImageLocked):  # a still reads
            RawImage(image)
    finally:
        a.close()
        b.close()
    RawImage(image).close()


def test_the_lock_holds_against_another_process(image):
    held = RawImage(image)
    try:
        code = ("import sys\n"
                "from pyaxvisor.devices.virtio.blk_image import RawImage\n"
                "from pyaxvisor.devices.virtio.errors import ImageLocked\n"
                "try:\n    RawImage(sys.argv[1])\n"
                "except ImageLocked as e:\n    print('locked:', e)\n")
        out = subprocess.run([sys.executable, "-c", code, str(image)], cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert out.startswith("locked: disk image") and "disk.img" in out
    finally:
        held.close()


# -- the I/O thread ---------------------------------------------------------------------------
class Gate:
    """Makes the image's reads wait until opened, as if the data were on a slow disk
    (a non-blocking read is refused), and records the thread they ran on."""

    def __init__(self, image: RawImage, monkeypatch) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.threads: list[str] = []
        real = image.readv

        def gated(offset, buffers, *, nowait=False):
            if nowait:
                raise BlockingIOError(errno.EAGAIN, "not cached")
            self.threads.append(threading.current_thread().name)
            self.entered.set()
            assert self.opened.wait(10)
            real(offset, buffers)

        monkeypatch.setattr(image, "readv", gated)


def test_requests_run_on_the_io_thread_and_complete_with_an_interrupt(image, monkeypatch):
    rig = Rig(image)
    try:
        gate = Gate(rig.blk.image, monkeypatch)
        req = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 2)], [512, 1])
        rig.drv.notify(0)                       # returns while the read is under way
        assert gate.entered.wait(10)
        assert rig.q.collect() == [] and not rig.sink.levels.get(7)
        gate.opened.set()
        rig.blk.drain()
        assert rig.q.collect() == [(req.head, 513)]
        assert rig.q.written(req)[:-1] == image.read_bytes()[1024:1536]
        assert rig.sink.levels[7] is True       # raised by the I/O thread's completion
        assert gate.threads == [f"virtio-blk {image}"]
    finally:
        gate.opened.set()
        rig.close()
    assert not any(t.name.startswith("virtio-blk") for t in threading.enumerate())


def test_a_reset_waits_for_the_request_under_way_and_drops_its_completion(image, monkeypatch):
    rig = Rig(image)
    try:
        gate = Gate(rig.blk.image, monkeypatch)
        req = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 0)], [512, 1])
        rig.drv.notify(0)
        assert gate.entered.wait(10)
        resetting = threading.Thread(target=rig.dev.write,
                                     args=(r.STATUS, AccessWidth.Dword, 0, 0))
        resetting.start()
        resetting.join(0.2)
        assert resetting.is_alive()             # the reset waits for the read
        gate.opened.set()
        resetting.join(10)
        assert not resetting.is_alive()
        assert rig.q.collect() == []            # completed after the reset: dropped
        assert rig.q.written(req)[:-1] == image.read_bytes()[:512]  # the data did land
    finally:
        gate.opened.set()
        rig.close()


def test_reads_of_cached_data_complete_on_the_notifying_thread(image):
    rig = Rig(image)
    try:
        req = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 3)], [512, 1])
        rig.drv.notify(0)                       # no drain: done before notify returns
        assert rig.q.collect() == [(req.head, 513)]
        assert rig.q.written(req)[:-1] == image.read_bytes()[1536:2048]
        assert not any(t.name.startswith("virtio-blk") for t in threading.enumerate())
        req = rig.q.add([struct.pack("<IIQ", vb.T_OUT, 0, 3), bytes(512)], [1])
        rig.drv.notify(0)                       # a write always goes to the I/O thread
        rig.blk.drain()
        assert rig.q.collect() == [(req.head, 1)]
        assert any(t.name == f"virtio-blk {image}" for t in threading.enumerate())
    finally:
        rig.close()


def test_requests_after_one_that_would_block_keep_their_order(image, monkeypatch):
    rig = Rig(image)
    try:
        gate = Gate(rig.blk.image, monkeypatch)
        first = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 0)], [512, 1])
        second = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 1)], [512, 1])
        rig.drv.notify(0)
        assert gate.entered.wait(10)
        third = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 2)], [512, 1])
        rig.drv.notify(0)                       # the thread has work: this goes there too
        gate.opened.set()
        rig.blk.drain()
        assert rig.q.collect() == [(first.head, 513), (second.head, 513), (third.head, 513)]
        assert gate.threads == [f"virtio-blk {image}"] * 3
    finally:
        gate.opened.set()
        rig.close()


def test_without_an_io_thread_requests_complete_before_the_notify_returns(image):
    rig = Rig(image, iothread=False)
    try:
        req = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 1)], [512, 1])
        rig.drv.notify(0)
        assert rig.q.collect() == [(req.head, 513)]
        assert not any(t.name.startswith("virtio-blk") for t in threading.enumerate())
    finally:
        rig.close()

"""virtio-blk (virtio 1.2 §5.2) over a raw image file, behind the virtio-mmio
transport: configuration, requests, status bytes, and how the image is opened."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from virtio_driver import VERSION_1, CopyingRam, Driver, DriverQueue, FakeRam

from pyaxvisor.devices.irq import IrqLine, NullIrqSink
from pyaxvisor.devices.virtio import blk as vb
from pyaxvisor.devices.virtio import blk_image
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

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    holes = rig.blk.image.can_discard  # the file system's say (see the discard tests)
    assert feats == (TRANSPORT_FEATURES | (1 << 1) | (1 << 2) | (1 << 6) | (1 << 9)
                     | (1 << 14) | (holes << 13))
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
    for kind in (2, 10, 14, 0xFFFF_FFFF):
        assert rig.request(kind, 0, data_in=512) == (vb.S_UNSUPP, b"\xee" * 512, 1)


def test_a_host_io_error_is_ioerr(rig, monkeypatch):
    def broken(*_args, **_kw):
        raise OSError(errno.EIO, "media error")

    monkeypatch.setattr(rig.blk.image, "read", broken)
    monkeypatch.setattr(rig.blk.image, "readv", broken)
    monkeypatch.setattr(rig.blk.image, "transfer", broken)
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
        real_readv, real_transfer = image.readv, image.transfer

        def wait(nowait: bool) -> None:
            if nowait:
                raise BlockingIOError(errno.EAGAIN, "not cached")
            self.threads.append(threading.current_thread().name)
            self.entered.set()
            assert self.opened.wait(10)

        def gated_readv(offset, buffers, *, nowait=False):
            wait(nowait)
            real_readv(offset, buffers)

        def gated_transfer(offset, ram, base, addrs, lengths, *, write, nowait=False):
            if not write:
                wait(nowait)
            real_transfer(offset, ram, base, addrs, lengths, write=write)

        monkeypatch.setattr(image, "readv", gated_readv)
        monkeypatch.setattr(image, "transfer", gated_transfer)


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


@pytest.mark.parametrize("kind", [vb.T_IN, vb.T_OUT])
def test_completions_of_small_requests_done_together_are_published_together(image, kind):
    # Interrupt coalescing: requests carried out back to back complete with one update
    # of the used index (and at most one interrupt), but a completion never waits for
    # a request with more than COALESCE_BYTES of buffers behind it.
    rig = Rig(image, ram=CopyingRam())  # every write goes through ram.write
    try:
        used_idx, original = rig.q.used + 2, rig.ram.write
        idx_writes: list[int] = []

        def write(gpa: int, data: bytes) -> None:
            if gpa == used_idx:
                idx_writes.append(int.from_bytes(data, "little"))
            original(gpa, data)

        rig.ram.write = write

        def small(sector: int):
            header = struct.pack("<IIQ", kind, 0, sector)
            if kind == vb.T_OUT:
                return rig.q.add([header, pattern(512, sector)], [1])
            return rig.q.add([header], [512, 1])

        a, b = small(0), small(1)
        big = rig.q.add([struct.pack("<IIQ", vb.T_IN, 0, 0)], [vb.COALESCE_BYTES, 1])
        c = small(2)
        rig.notify()
        assert idx_writes == [2, 4]  # {a, b}, then {big, c}: big did not hold a and b
        small_used = 513 if kind == vb.T_IN else 1
        assert rig.q.collect() == [(a.head, small_used), (b.head, small_used),
                                   (big.head, vb.COALESCE_BYTES + 1), (c.head, small_used)]
    finally:
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



# -- discard and write zeroes (virtio 1.2 §5.2.6) -----------------------------------------------
B = AccessWidth.Byte
BIG = 2048  # sectors: 1 MiB, room for whole 4 KiB blocks to be punched
UNMAP = vb.WRITE_ZEROES_FLAG_UNMAP


def seg(sector: int, count: int, flags: int = 0) -> bytes:
    return struct.pack("<QII", sector, count, flags)


def fs_punches_holes(directory: Path) -> bool:
    probe = directory / "punch-probe"
    probe.write_bytes(bytes(8192))
    try:
        with open(probe, "r+b") as f:
            blk_image.fallocate(f.fileno(), blk_image.FALLOC_FL_PUNCH_HOLE
                                | blk_image.FALLOC_FL_KEEP_SIZE, 0, 4096)
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.fixture
def big(tmp_path) -> Path:
    """1 MiB of data, on disk (fsync'd: st_blocks counts it)."""
    assert fs_punches_holes(tmp_path), (
        f"the file system of {tmp_path} cannot punch holes (Linux's tmpfs, ext4, xfs and "
        "btrfs can): run the tests with TMPDIR on one that can")
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.write(pattern(BIG * 512, seed=5))
        os.fsync(f.fileno())
    return path


@pytest.fixture
def big_rig(big):
    rig = Rig(big)
    yield rig
    rig.close()


def blocks(path: Path) -> int:
    return os.stat(path).st_blocks  # 512-byte units


def test_discard_and_write_zeroes_are_offered_with_their_config(big_rig):
    d = big_rig.drv
    assert d.device_features() & (1 << vb.F_DISCARD | 1 << vb.F_WRITE_ZEROES) == (
        1 << 13 | 1 << 14)
    assert d.rd(0x124, D) == 4194303    # max_discard_sectors: 2 GiB - 512, QEMU's
    assert d.rd(0x128, D) == 1          # max_discard_seg
    assert d.rd(0x12C, D) == 1          # discard_sector_alignment (blk_size / 512)
    assert d.rd(0x130, D) == 4194303    # max_write_zeroes_sectors
    assert d.rd(0x134, D) == 1          # max_write_zeroes_seg
    assert d.rd(0x138, B) == 1          # write_zeroes_may_unmap: holes can be punched
    assert d.rd(0x138, D) == 1          # unused1 is 0
    assert d.rd(0x120, D) == 0          # writeback, num_queues: not offered


def test_the_probe_leaves_the_file_as_it_was(big):
    size, before, data = os.stat(big).st_size, blocks(big), big.read_bytes()
    VirtioBlk(big).close()
    assert (os.stat(big).st_size, blocks(big), big.read_bytes()) == (size, before, data)


def test_discard_punches_a_hole(big_rig, big):
    before, data = blocks(big), big.read_bytes()
    status, _data, used = big_rig.request(vb.T_DISCARD, out=seg(256, 512))
    assert (status, used) == (vb.S_OK, 1)
    assert blocks(big) <= before - 512      # 256 KiB deallocated
    disk = big.read_bytes()
    assert len(disk) == BIG * 512           # the size is kept
    assert disk[256 * 512:768 * 512] == bytes(512 * 512)
    assert disk[:256 * 512] == data[:256 * 512] and disk[768 * 512:] == data[768 * 512:]
    assert big_rig.request(vb.T_IN, 300, data_in=1024)[1] == bytes(1024)


@pytest.mark.parametrize("unmap", [False, True])
def test_write_zeroes_zeroes_the_range(big_rig, big, unmap):
    before, data = blocks(big), big.read_bytes()
    status, _data, used = big_rig.request(vb.T_WRITE_ZEROES, out=seg(8, 1000, UNMAP * unmap))
    assert (status, used) == (vb.S_OK, 1)
    disk = big.read_bytes()
    assert disk[8 * 512:1008 * 512] == bytes(1000 * 512)
    assert disk[:8 * 512] == data[:8 * 512] and disk[1008 * 512:] == data[1008 * 512:]
    assert big_rig.request(vb.T_IN, 500, data_in=512)[1] == bytes(512)
    if unmap:   # a hole: the whole 4 KiB blocks inside [4 KiB, 504 KiB) are freed
        assert blocks(big) <= before - 992
    else:       # FALLOC_FL_ZERO_RANGE: zeroes, still allocated
        assert blocks(big) == before


def test_partial_blocks_are_zeroed_too(big_rig, big):
    data = big.read_bytes()
    assert big_rig.request(vb.T_DISCARD, out=seg(3, 2))[0] == vb.S_OK  # inside one block
    disk = big.read_bytes()
    assert disk[3 * 512:5 * 512] == bytes(1024)
    assert disk[:3 * 512] == data[:3 * 512] and disk[5 * 512:] == data[5 * 512:]


def test_a_segment_of_no_sectors_does_nothing(big_rig, big):
    before, data = blocks(big), big.read_bytes()
    assert big_rig.request(vb.T_DISCARD, out=seg(0, 0))[0] == vb.S_OK
    assert big_rig.request(vb.T_WRITE_ZEROES, out=seg(BIG, 0))[0] == vb.S_OK
    assert (blocks(big), big.read_bytes()) == (before, data)


KINDS = [vb.T_DISCARD, vb.T_WRITE_ZEROES]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("out, status", [
    pytest.param(seg(BIG - 1, 2), vb.S_IOERR, id="runs-past-the-end"),
    pytest.param(seg(BIG, 1), vb.S_IOERR, id="just-past-the-end"),
    pytest.param(seg((1 << 64) - 1, 1), vb.S_IOERR, id="largest-sector"),
    pytest.param(seg(0, 0xFFFF_FFFF), vb.S_IOERR, id="over-max-sectors"),
    pytest.param(seg(0, 8) + seg(16, 8), vb.S_UNSUPP, id="over-max-seg"),
    pytest.param(seg(0, 8, 2), vb.S_UNSUPP, id="unknown-flag"),
    pytest.param(seg(0, 8, 1 << 31), vb.S_UNSUPP, id="top-flag"),
    pytest.param(seg(BIG, 8, 2), vb.S_UNSUPP, id="flags-checked-before-range"),
    pytest.param(b"", vb.S_IOERR, id="no-segment"),
    pytest.param(seg(0, 8)[:8], vb.S_IOERR, id="half-a-segment"),
    pytest.param(seg(0, 8) + bytes(8), vb.S_IOERR, id="one-and-a-half"),
])
def test_a_bad_request_leaves_the_image_untouched(big_rig, big, kind, out, status):
    before, data = blocks(big), big.read_bytes()
    assert big_rig.request(kind, out=out) == (status, b"", 1)
    assert (blocks(big), big.read_bytes()) == (before, data)


def test_unmap_on_a_discard_is_unsupp(big_rig, big):
    data = big.read_bytes()
    assert big_rig.request(vb.T_DISCARD, out=seg(0, 8, UNMAP))[0] == vb.S_UNSUPP
    assert big.read_bytes() == data


def test_many_segments_are_not_read(big_rig):
    reads = big_rig.ram.reads
    out = seg(0, 8) * 4096  # 64 KiB of segments: refused on the length alone
    assert big_rig.request(vb.T_DISCARD, out=out)[0] == vb.S_UNSUPP
    assert big_rig.ram.reads - reads < 16


def test_max_sectors_is_the_limit_not_the_capacity(tmp_path):
    path = tmp_path / "huge.img"
    with open(path, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB, larger than one segment may cover
    with Rig(path) as rig:
        assert rig.blk.discard_offered, f"the file system of {tmp_path} cannot punch holes"
        top = vb.MAX_DISCARD_SECTORS
        for kind in KINDS:
            assert rig.request(kind, out=seg(0, top + 1))[0] == vb.S_IOERR
            assert rig.request(kind, out=seg(0, top, UNMAP * (kind == vb.T_WRITE_ZEROES))
                               )[0] == vb.S_OK
        assert blocks(path) == 0


def test_a_read_only_image_offers_neither_and_refuses_both(big):
    with Rig(big, read_only=True) as rig:
        data = big.read_bytes()
        assert not rig.drv.device_features() & (1 << vb.F_DISCARD | 1 << vb.F_WRITE_ZEROES)
        assert all(rig.drv.rd(0x124 + 4 * i, D) == 0 for i in range(6))
        for kind in KINDS:
            assert rig.request(kind, out=seg(0, 8))[0] == vb.S_IOERR
        assert big.read_bytes() == data


def test_a_host_error_is_ioerr(big_rig, monkeypatch):
    def broken(*args, **kw):
        raise OSError(errno.EIO, "media error")

    monkeypatch.setattr(blk_image, "fallocate", broken)
    assert big_rig.request(vb.T_DISCARD, out=seg(0, 8))[0] == vb.S_IOERR
    assert big_rig.request(vb.T_WRITE_ZEROES, out=seg(0, 8))[0] == vb.S_IOERR


# What happens where the host cannot do it: fallocate refuses some modes.
class Refusing:
    def __init__(self, modes: int) -> None:
        self.modes = modes
        self.calls: list[int] = []
        self.real = blk_image.fallocate

    def __call__(self, fd: int, mode: int, offset: int, length: int) -> None:
        self.calls.append(mode)
        if mode & self.modes:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        self.real(fd, mode, offset, length)


def test_without_holes_discard_is_not_offered_and_zeroes_are_written(image, monkeypatch):
    monkeypatch.setattr(blk_image, "fallocate", Refusing(0xFF))  # fallocate: nothing
    with Rig(image) as rig:
        d = rig.drv
        assert d.device_features() & (1 << vb.F_DISCARD | 1 << vb.F_WRITE_ZEROES) == 1 << 14
        assert d.rd(0x124, D) == 0 and d.rd(0x130, D) == 4194303
        assert d.rd(0x138, B) == 0      # write zeroes never deallocates here
        data = image.read_bytes()
        assert rig.request(vb.T_DISCARD, out=seg(0, 8))[0] == vb.S_UNSUPP
        assert image.read_bytes() == data
        assert rig.request(vb.T_WRITE_ZEROES, out=seg(5, 100, UNMAP))[0] == vb.S_OK
        assert image.read_bytes() == data[:5 * 512] + bytes(100 * 512) + data[105 * 512:]


def test_zeroes_are_written_in_bounded_pieces(image, monkeypatch):
    monkeypatch.setattr(blk_image, "fallocate", Refusing(0xFF))
    monkeypatch.setattr(blk_image, "ZERO_CHUNK", 4096)
    sizes = []
    real = os.pwrite

    def pwrite(fd, data, offset):
        sizes.append(len(data))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with Rig(image) as rig:
        assert rig.request(vb.T_WRITE_ZEROES, out=seg(1, 20))[0] == vb.S_OK
        assert sizes == [4096, 4096, 2048]
        assert image.read_bytes()[512:21 * 512] == bytes(20 * 512)


def test_without_zero_range_zeroes_are_written_once_asked(big, monkeypatch):
    refusing = Refusing(blk_image.FALLOC_FL_ZERO_RANGE)  # tmpfs-like: holes only
    monkeypatch.setattr(blk_image, "fallocate", refusing)
    with Rig(big) as rig:
        assert rig.drv.rd(0x138, B) == 1
        before, data = blocks(big), big.read_bytes()
        for sector in (16, 64):
            assert rig.request(vb.T_WRITE_ZEROES, out=seg(sector, 16))[0] == vb.S_OK
        disk = big.read_bytes()
        assert disk[16 * 512:32 * 512] == disk[64 * 512:80 * 512] == bytes(16 * 512)
        assert disk[32 * 512:64 * 512] == data[32 * 512:64 * 512]
        assert blocks(big) == before                          # written, not freed
        zero_range = [m for m in refusing.calls if m & blk_image.FALLOC_FL_ZERO_RANGE]
        assert len(zero_range) == 1                           # asked once only


def test_a_discard_the_host_refuses_later_completes_without_freeing(big, monkeypatch):
    with Rig(big) as rig:
        monkeypatch.setattr(blk_image, "fallocate", Refusing(0xFF))
        before, data = blocks(big), big.read_bytes()
        assert rig.request(vb.T_DISCARD, out=seg(0, 64))[0] == vb.S_OK  # only a hint
        assert (blocks(big), big.read_bytes()) == (before, data)
        assert rig.blk.discard_offered and not rig.blk.image.can_discard
        assert rig.request(vb.T_DISCARD, out=seg(0, 64))[0] == vb.S_OK
        assert rig.request(vb.T_WRITE_ZEROES, out=seg(0, 8, UNMAP))[0] == vb.S_OK
        assert big.read_bytes()[:8 * 512] == bytes(8 * 512)


class LoopKernel:
    """The kernel's side of ``BLKDISCARD``/``BLKZEROOUT`` on a loop device over a file,
    for a machine where no loop device can be made (not root, no losetup): each ioctl
    is recorded and done to the file as the loop driver does it (a hole punched, a
    range zeroed in place)."""

    def __init__(self, fallocate) -> None:
        self.fallocate = fallocate
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, fd: int, request: int, arg: bytes) -> int:
        offset, length = struct.unpack("QQ", arg)
        self.calls.append((request, offset, length))
        mode = {blk_image.BLKDISCARD: blk_image.FALLOC_FL_PUNCH_HOLE,
                blk_image.BLKZEROOUT: blk_image.FALLOC_FL_ZERO_RANGE}[request]
        self.fallocate(fd, mode | blk_image.FALLOC_FL_KEEP_SIZE, offset, length)
        return 0


# A block device: a loop device over a file where one can be made (root and losetup),
# else the file seen as a block device, with LoopKernel answering its ioctls.
@pytest.fixture
def loop_device(tmp_path, monkeypatch):
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.write(pattern(BIG * 512, seed=9))
        os.fsync(f.fileno())
    made = None
    if os.geteuid() == 0 and shutil.which("losetup") is not None:
        made = subprocess.run(["losetup", "--find", "--show", str(backing)],
                              capture_output=True, text=True, timeout=60)
    if made is None or made.returncode != 0:
        kernel = LoopKernel(blk_image.fallocate)
        monkeypatch.setattr(blk_image.stat, "S_ISBLK", lambda mode: True)
        monkeypatch.setattr(blk_image, "_block_device_discards", lambda rdev: True)
        monkeypatch.setattr(blk_image.fcntl, "ioctl", kernel)
        yield backing, backing, kernel
        return
    dev = made.stdout.strip()
    try:
        yield Path(dev), backing, None
    finally:
        subprocess.run(["losetup", "--detach", dev], timeout=60, check=True)


def test_a_block_device_discards_and_zeroes_with_ioctls(loop_device, monkeypatch):
    dev, backing, kernel = loop_device
    with Rig(dev) as rig:
        image = rig.blk.image
        assert image.is_block_device and image.can_discard  # loop: discard_max_bytes > 0
        assert rig.drv.rd(0x100, Q) == BIG and rig.drv.rd(0x138, B) == 0  # BLKZEROOUT
        monkeypatch.setattr(blk_image, "fallocate", Refusing(0xFF))  # ioctls only
        before = blocks(backing)
        assert rig.request(vb.T_DISCARD, out=seg(0, 512))[0] == vb.S_OK
        assert blocks(backing) <= before - 512  # the loop driver punched the file
        assert rig.request(vb.T_WRITE_ZEROES, out=seg(1024, 8, UNMAP))[0] == vb.S_OK
        assert rig.request(vb.T_IN, 1024, data_in=4096)[1] == bytes(4096)
        assert rig.request(vb.T_IN, 1032, data_in=512)[1] == pattern(BIG * 512, seed=9)[
            1032 * 512:1033 * 512]
        assert rig.request(vb.T_WRITE_ZEROES, out=seg(BIG - 1, 2))[0] == vb.S_IOERR
    if kernel is not None:  # the ioctls, in bytes: a discard, then a zeroing in place
        assert kernel.calls == [(blk_image.BLKDISCARD, 0, 512 * 512),
                                (blk_image.BLKZEROOUT, 1024 * 512, 8 * 512)]


class ReportingRam(FakeRam):
    """Guest RAM that records what devices say they wrote (``written``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reported: list[tuple[int, int]] = []

    def written(self, pieces) -> None:
        self.reported.extend(pieces)


def test_data_read_into_guest_ram_is_reported_written(image):
    """Software CPUs drop translated code of what a device wrote: a read's data
    buffers (and the status byte) are reported after the data is in place."""
    ram = ReportingRam()
    with Rig(image, ram=ram) as rig:
        header = struct.pack("<IIQ", vb.T_IN, 0, 4)
        req = rig.q.add([header], [700, 324, 1])
        rig.notify()
        assert rig.q.collect() == [(req.head, 1025)]
        (a, _), (b, _), (status, _) = req.writable
        assert (a, 700) in ram.reported and (b, 324) in ram.reported
        assert (status, 1) in ram.reported
        assert ram.read(a, 700) + ram.read(b, 324) == image.read_bytes()[2048:3072]

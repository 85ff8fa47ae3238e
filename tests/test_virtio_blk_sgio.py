"""The block device's native data path (``_sgio.transfer`` behind
``RawImage.transfer``): scattered guest pieces moved to and from an image file in
order, every piece checked against the RAM buffer before any I/O, batches of
``IOV_BATCH`` pieces, and the errors of a short file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pyaxvisor.devices.virtio import _sgio
from pyaxvisor.devices.virtio.blk_image import IOV_BATCH, RawImage

BASE = 0x4000_0000
RAM = 64 * 1024


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 256)  # 64 KiB, byte i at offset i holds i % 256
    img = RawImage(path)
    yield img
    img.close()


def test_a_read_scatters_the_file_into_the_pieces_in_order(image):
    ram = bytearray(b"\xee" * RAM)
    addrs, lengths = (BASE + 0x3000, BASE + 0x100, BASE + 0x8000), (512, 1024, 7)
    image.transfer(1000, memoryview(ram), BASE, addrs, lengths, write=False)
    expect = (bytes(range(256)) * 256)[1000:1000 + sum(lengths)]
    got = b"".join(ram[a - BASE:a - BASE + n] for a, n in zip(addrs, lengths, strict=True))
    assert got == expect
    touched = sum(lengths)
    assert ram.count(0xEE) == RAM - touched + expect.count(0xEE)  # nothing else written


def test_a_write_gathers_the_pieces_into_the_file(image):
    ram = bytearray(os.urandom(RAM))
    addrs, lengths = (BASE + 0x200, BASE, BASE + RAM - 512), (512, 512, 512)
    image.transfer(4096, memoryview(ram), BASE, addrs, lengths, write=True)
    data = Path(image.path).read_bytes()
    assert data[4096:4096 + 1536] == ram[0x200:0x400] + ram[0:0x200] + ram[RAM - 512:]
    assert data[:4096] == (bytes(range(256)) * 16)  # before it: as it was


def test_more_pieces_than_one_system_call_takes_are_done_in_batches(image):
    n = IOV_BATCH * 2 + 5
    ram = bytearray(RAM)
    addrs = tuple(BASE + 16 * i for i in range(n))  # 8 bytes used of every 16
    image.transfer(0, memoryview(ram), BASE, addrs, (8,) * n, write=False)
    flat = bytes(range(256)) * 256
    for i in (0, 1, IOV_BATCH - 1, IOV_BATCH, IOV_BATCH + 1, n - 1):
        assert ram[16 * i:16 * i + 8] == flat[8 * i:8 * i + 8]
        assert ram[16 * i + 8:16 * i + 16] == bytes(8)


@pytest.mark.parametrize("addr, length", [
    (BASE - 1, 16),              # starts before the RAM
    (BASE + RAM - 8, 16),        # runs past its end
    (BASE + RAM + 4096, 1),      # far past
    (1 << 63, 1 << 63),          # wraps
])
def test_a_piece_outside_the_ram_is_refused_before_any_io(image, addr, length):
    before = Path(image.path).read_bytes()
    ram = bytearray(RAM)
    with pytest.raises(ValueError, match="outside the RAM range"):
        image.transfer(0, memoryview(ram), BASE, (BASE, addr), (512, length), write=True)
    with pytest.raises(ValueError, match="outside the RAM range"):
        image.transfer(0, memoryview(ram), BASE, (BASE, addr), (512, length), write=False)
    assert Path(image.path).read_bytes() == before
    assert ram == bytearray(RAM)


def test_a_read_past_the_end_of_the_file_is_an_error_naming_it(image):
    ram = bytearray(RAM)
    with pytest.raises(OSError, match=r"end of file at file offset 65536 after 512 of 1024"):
        image.transfer(RAM - 512, memoryview(ram), BASE, (BASE,), (1024,), write=False)


def test_a_cached_read_succeeds_without_waiting(image):
    ram = bytearray(RAM)
    image.read(0, RAM)  # in the page cache now
    if image.nowait_reads:
        image.transfer(0, memoryview(ram), BASE, (BASE,), (4096,), write=False, nowait=True)
        assert ram[:4096] == (bytes(range(256)) * 16)
    else:  # a file system that refuses RWF_NOWAIT: always "would wait"
        with pytest.raises(BlockingIOError):
            image.transfer(0, memoryview(ram), BASE, (BASE,), (4096,), write=False,
                           nowait=True)


def test_bad_arguments_are_refused():
    ram = bytearray(16)
    fd = os.open("/dev/zero", os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="differ in length"):
            _sgio.transfer(fd, 0, ram, BASE, (BASE,), (), False, False)
        with pytest.raises(TypeError, match="writable"):
            _sgio.transfer(fd, 0, bytes(16), BASE, (BASE,), (16,), False, False)
        with pytest.raises(ValueError, match="negative"):
            _sgio.transfer(fd, -1, ram, BASE, (BASE,), (16,), False, False)
        with pytest.raises(OSError) as info:  # a read from a file open for reading only
            _sgio.transfer(fd, 0, ram, BASE, (BASE,), (16,), True, False)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)


def test_a_read_only_image_refuses_writes(tmp_path):
    path = tmp_path / "ro.img"
    path.write_bytes(bytes(4096))
    img = RawImage(path, read_only=True)
    try:
        with pytest.raises(OSError, match="read-only"):
            img.transfer(0, memoryview(bytearray(4096)), BASE, (BASE,), (512,), write=True)
    finally:
        img.close()

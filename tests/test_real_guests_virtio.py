"""Debian's arm64 Linux on virtio-mmio: the kernel's own virtio-mmio, virtio-blk,
virtio-rng and ext4 modules (loaded by the ``initramfs-virtio-arm64`` image from the
same ``linux-image`` package) drive pyaxvisor's devices; the guest reads an ext4 disk
and a raw disk made here, writes to both, and a second boot reads that back. Images
are fetched (and cached) at test time, as for the other real-guest tests. Slow."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tools import tool

from pyaxvisor import images

pytestmark = pytest.mark.slow

RAW_PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(1 << 20))
RAW_MARK = b"PYAXVISOR-RAW-WRITE\n"
RAW_OFFSET = 8 * 512


def _boot(tmp: Path, cmd: str) -> str:
    """Boot with the ext4 disk, the raw disk and an entropy device; run ``cmd`` with
    ``$R`` naming the raw disk's device and ``$E`` the ext4 one's (told apart by their
    sizes, so the test does not depend on which slot each device is plugged in); return
    the guest's output."""
    cmd = ("for d in vda vdb; do [ $(cat /sys/block/$d/size) = 2048 ] && R=/dev/$d "
           "|| E=/dev/$d; done; echo raw=$R ext4=$E; " + cmd)
    kernel = images.fetch("linux-arm64")
    initrd = images.fetch("initramfs-virtio-arm64")
    r = subprocess.run(
        [sys.executable, "-m", "pyaxvisor.cli", "run", "-kernel", str(kernel),
         "-initrd", str(initrd), "-append", f'console=ttyAMA0 pyaxvisor.cmd="{cmd}"',
         "-m", "512M", "--timeout", "300",
         "-drive", f"file={tmp / 'ext4.img'},format=raw,if=virtio",
         "-drive", f"file={tmp / 'raw.img'},if=none,id=hd1",
         "-device", "virtio-blk-device,drive=hd1",
         "-device", "virtio-rng-device"],
        capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    out = r.stdout
    assert "PYAXVISOR-MODULES: 8/8" in out, out[-3000:]
    assert "PYAXVISOR-INSMOD-FAILED" not in out
    assert "PYAXVISOR-CMD-END: status=0" in out, out[-3000:]
    assert "reboot: Power down" in out
    return out


def _random_line(out: str) -> str:
    found = re.search(r"^0000000((?: [0-9a-f]{4}){8})$", out, re.M)
    assert found is not None, out[-2000:]
    assert found[1] != " 0000" * 8
    return found[1]


def test_debian_kernel_modules_drive_virtio_disks_and_entropy_across_two_boots(tmp_path):
    mke2fs, debugfs = tool("mke2fs"), tool("debugfs")
    files = tmp_path / "files"
    files.mkdir()
    (files / "hello.txt").write_text("hello from the host\n")
    subprocess.run([mke2fs, "-q", "-t", "ext4", "-d", str(files), "-F",
                    str(tmp_path / "ext4.img"), "16M"], check=True, capture_output=True)
    (tmp_path / "raw.img").write_bytes(RAW_PATTERN)

    t0 = time.monotonic()
    out = _boot(tmp_path, (
        "ls /sys/bus/virtio/devices; cat /sys/bus/virtio/devices/*/device; "
        "dd if=$R bs=512 count=1 | md5sum; "
        f"echo PYAXVISOR-RAW-WRITE | dd of=$R bs=512 seek={RAW_OFFSET // 512} "
        "conv=notrunc; "
        "mount -t ext4 $E /mnt && cat /mnt/hello.txt && "
        "echo written-by-the-guest > /mnt/guest.txt && umount /mnt; sync; "
        "dd if=/dev/hwrng bs=16 count=1 | od -x"))
    boot_seconds = time.monotonic() - t0
    assert re.search(r"\] virtio_blk virtio\d: \[vd[ab]\] 2048 512-byte logical", out)
    assert re.search(r"\] virtio_blk virtio\d: \[vd[ab]\] 32768 512-byte logical", out)
    assert re.search(r"^raw=/dev/vd[ab] ext4=/dev/vd[ab]$", out, re.M), out[-2000:]
    assert "virtio0  virtio1  virtio2" in out
    # device IDs: two block devices (2) and an entropy source (4)
    ids = re.findall(r"^0x000(\d)$", out, re.M)
    assert sorted(ids) == ["2", "2", "4"], out[-2000:]
    assert f"{hashlib.md5(RAW_PATTERN[:512]).hexdigest()}  -" in out
    assert "hello from the host" in out
    first_random = _random_line(out)
    assert boot_seconds < 300

    # the VM is off: what the guest wrote is in the images
    raw = (tmp_path / "raw.img").read_bytes()
    end = RAW_OFFSET + len(RAW_MARK)
    assert raw[RAW_OFFSET:end] == RAW_MARK
    assert raw[:RAW_OFFSET] == RAW_PATTERN[:RAW_OFFSET]
    assert raw[end:] == RAW_PATTERN[end:]
    cat = subprocess.run([debugfs, "-R", "cat /guest.txt", str(tmp_path / "ext4.img")],
                         capture_output=True, text=True, check=True)
    assert cat.stdout == "written-by-the-guest\n"

    # a second boot reads it back
    out = _boot(tmp_path, (
        f"dd if=$R bs=1 skip={RAW_OFFSET} count={len(RAW_MARK) - 1} 2>/dev/null; echo; "
        "mount -t ext4 -o ro $E /mnt && cat /mnt/guest.txt && umount /mnt; "
        "dd if=/dev/hwrng bs=16 count=1 | od -x"))
    assert re.search(r"^PYAXVISOR-RAW-WRITE$", out, re.M), out[-2000:]
    assert re.search(r"^written-by-the-guest$", out, re.M), out[-2000:]
    assert _random_line(out) != first_random


def test_the_virtio_initramfs_holds_the_running_kernels_modules():
    info = images.metadata("initramfs-virtio-arm64") or {}
    if not info:
        images.fetch("initramfs-virtio-arm64")
        info = images.metadata("initramfs-virtio-arm64") or {}
    kernel = images.metadata("linux-arm64") or {}
    assert info["kernel_package"] == kernel["package"]
    assert info["kernel_release"] == kernel["kernel_release"]
    assert info["modules"][:3] == ["virtio_mmio", "virtio_blk", "virtio_rng"]
    assert info["modules"][-1] == "ext4"
    assert {"jbd2", "mbcache", "crc16", "crc32c_generic"} <= set(info["modules"])

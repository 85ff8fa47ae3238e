"""Debian's arm64 and riscv64 Linux on virtio-mmio: the kernel's own virtio-mmio,
virtio-blk, virtio-rng, virtio-console, virtio-net and ext4 modules (loaded by the
``initramfs-virtio-<arch>`` image from the same ``linux-image`` package) drive
pyaxvisor's devices; the guest reads an ext4 disk and a raw disk made here, writes to
both, and a second boot reads that back; hvc0 carries output and input; an arm64 and a
riscv64 guest talk to the host over a tap in a network namespace the test makes. Images
are fetched (and cached) at test time, as for the other real-guest tests. Slow.

amd64: the ``initramfs-virtio-amd64`` image holds ``linux-amd64``'s modules; Debian's
amd64 kernel finds the pc board's transports in the DSDT (its virtio_mmio matches
``LNRO0005``; it is built without ``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES``). Booting it
needs a host whose KVM runs guest code natively: the test measures the host first, as
``tests/test_real_guests_x86_64.py`` does, and says why it skips."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import secrets
import signal
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


#: Per Debian architecture: pyaxvisor's --arch, the serial console, how many modules
#: the virtio initramfs loads (riscv64 has virtio_console built in).
ARCHES = {"arm64": ("aarch64", "ttyAMA0", 12), "riscv64": ("riscv64", "ttyS0", 11),
          "amd64": ("x86_64", "ttyS0", 15)}


def _modules_line(arch: str) -> str:
    n = ARCHES[arch][2]
    return f"PYAXVISOR-MODULES: {n}/{n}"


def _vm_argv(arch: str, append: str, *devices: str) -> list[str]:
    """``pyaxvisor run`` of Debian's ``arch`` kernel with the virtio initramfs, the
    serial console first on the command line, 512 MiB, ``devices`` plugged in."""
    pyarch, console, _n = ARCHES[arch]
    return [sys.executable, "-m", "pyaxvisor.cli", "run", "--arch", pyarch,
            "-kernel", str(images.fetch(f"linux-{arch}")),
            "-initrd", str(images.fetch(f"initramfs-virtio-{arch}")),
            "-append", f"console={console} {append}", "-m", "512M", "--timeout", "300",
            *devices]


def _make_disks(tmp: Path, hello: str) -> None:
    """The disks :func:`_boot` plugs in: ``ext4.img``, a 16 MiB ext4 made with
    ``mke2fs -d`` holding ``hello.txt`` = ``hello``, and ``raw.img`` = RAW_PATTERN."""
    files = tmp / "files"
    files.mkdir()
    (files / "hello.txt").write_text(hello)
    subprocess.run([tool("mke2fs"), "-q", "-t", "ext4", "-d", str(files), "-F",
                    str(tmp / "ext4.img"), "16M"], check=True, capture_output=True)
    (tmp / "raw.img").write_bytes(RAW_PATTERN)


def _boot(tmp: Path, cmd: str, arch: str = "arm64") -> str:
    """Boot with the ext4 disk, the raw disk and an entropy device; run ``cmd`` with
    ``$R`` naming the raw disk's device and ``$E`` the ext4 one's (told apart by their
    sizes, so the test does not depend on which slot each device is plugged in); return
    the guest's output."""
    cmd = ("for d in vda vdb; do [ $(cat /sys/block/$d/size) = 2048 ] && R=/dev/$d "
           "|| E=/dev/$d; done; echo raw=$R ext4=$E; " + cmd)
    r = subprocess.run(
        _vm_argv(arch, f'pyaxvisor.cmd="{cmd}"',
                 "-drive", f"file={tmp / 'ext4.img'},format=raw,if=virtio",
                 "-drive", f"file={tmp / 'raw.img'},if=none,id=hd1",
                 "-device", "virtio-blk-device,drive=hd1",
                 "-device", "virtio-rng-device"),
        capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    out = r.stdout
    assert _modules_line(arch) in out, out[-3000:]
    assert "PYAXVISOR-INSMOD-FAILED" not in out
    assert "PYAXVISOR-CMD-END: status=0" in out, out[-3000:]
    assert "reboot: Power down" in out
    return out


def _random_line(out: str) -> str:
    found = re.search(r"^0000000((?: [0-9a-f]{4}){8})$", out, re.M)
    assert found is not None, out[-2000:]
    assert found[1] != " 0000" * 8
    return found[1]


def assert_disks_hold(tmp_path: Path, debugfs: str, guest_txt: str) -> None:
    """The VM is off: the raw disk has the guest's mark at RAW_OFFSET and the pattern
    around it, the ext4 disk the guest's /guest.txt with ``guest_txt``."""
    raw = (tmp_path / "raw.img").read_bytes()
    end = RAW_OFFSET + len(RAW_MARK)
    assert raw[RAW_OFFSET:end] == RAW_MARK
    assert raw[:RAW_OFFSET] == RAW_PATTERN[:RAW_OFFSET]
    assert raw[end:] == RAW_PATTERN[end:]
    cat = subprocess.run([debugfs, "-R", "cat /guest.txt", str(tmp_path / "ext4.img")],
                         capture_output=True, text=True, check=True)
    assert cat.stdout == guest_txt


def test_debian_kernel_modules_drive_virtio_disks_and_entropy_across_two_boots(tmp_path):
    debugfs = tool("debugfs")
    _make_disks(tmp_path, "hello from the host\n")

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
    assert_disks_hold(tmp_path, debugfs, "written-by-the-guest\n")

    # a second boot reads it back
    out = _boot(tmp_path, (
        f"dd if=$R bs=1 skip={RAW_OFFSET} count={len(RAW_MARK) - 1} 2>/dev/null; echo; "
        "mount -t ext4 -o ro $E /mnt && cat /mnt/guest.txt && umount /mnt; "
        "dd if=/dev/hwrng bs=16 count=1 | od -x"))
    assert re.search(r"^PYAXVISOR-RAW-WRITE$", out, re.M), out[-2000:]
    assert re.search(r"^written-by-the-guest$", out, re.M), out[-2000:]
    assert _random_line(out) != first_random


@pytest.mark.parametrize("arch", ["arm64", "riscv64"])
def test_the_virtio_initramfs_holds_the_running_kernels_modules(arch):
    images.fetch(f"initramfs-virtio-{arch}")  # cached, or rebuilt when outdated
    info = images.metadata(f"initramfs-virtio-{arch}") or {}
    kernel = images.metadata(f"linux-{arch}") or {}
    assert info["kernel_package"] == kernel["package"]
    assert info["kernel_release"] == kernel["kernel_release"]
    assert info["wanted_modules"] == list(images.VIRTIO_MODULES)
    assert info["modules"][:3] == ["virtio_mmio", "virtio_blk", "virtio_rng"]
    assert info["modules"][-1] == "ext4"
    assert {"jbd2", "mbcache", "crc16", "crc32c_generic"} <= set(info["modules"])
    assert len(info["modules"]) == ARCHES[arch][2]
    assert {"virtio_net", "net_failover", "failover"} <= set(info["modules"])
    # Debian's riscv64 kernel has CONFIG_VIRTIO_CONSOLE=y, arm64's =m
    console_built_in = arch == "riscv64"
    assert ("virtio_console" in info["builtin_modules"]) == console_built_in
    assert ("virtio_console" in info["modules"]) != console_built_in
    if arch == "riscv64":  # Debian 13: merged /usr, xz-compressed modules
        assert all(f.startswith("usr/lib/modules/") and f.endswith(".ko.xz")
                   for f in info["module_files"])


def test_the_amd64_virtio_initramfs_holds_linux_amd64s_modules():
    """Debian's amd64 kernel builds the virtio core (virtio, virtio_ring) as modules too,
    and ext4 there also wants crc32c_intel (crc32c's other provider)."""
    from pyaxvisor.image_kmod import elf_section, parse_modinfo

    path = images.fetch("initramfs-virtio-amd64")  # cached, or rebuilt when outdated
    assert images.fetch("initramfs-virtio-x86_64") == path
    info = images.metadata("initramfs-virtio-amd64") or {}
    kernel = images.metadata("linux-amd64") or {}
    release = kernel["kernel_release"]
    assert (info["kernel_package"], info["kernel_release"]) == (kernel["package"], release)
    assert info["architecture"] == "amd64"
    assert info["wanted_modules"] == list(images.VIRTIO_MODULES)
    modules = info["modules"]
    assert len(modules) == ARCHES["amd64"][2] and info["builtin_modules"] == []
    assert set(images.VIRTIO_MODULES) | {"virtio", "virtio_ring", "failover", "net_failover",
                                         "jbd2", "mbcache", "crc16", "crc32c_generic"} \
        <= set(modules)
    # each after what it needs
    assert modules.index("virtio_ring") < modules.index("virtio") < modules.index("virtio_mmio")
    assert modules.index("failover") < modules.index("net_failover") < \
        modules.index("virtio_net")
    assert modules[-1] == "ext4" and modules.index("jbd2") < modules.index("ext4")
    assert all(f.startswith(f"lib/modules/{release}/kernel/") and f.endswith(".ko")
               for f in info["module_files"])
    files = images.newc_files(gzip.decompress(path.read_bytes()))
    init = files["init"].decode()
    assert [line.split()[2].rstrip(";") for line in init.splitlines()
            if line.startswith("if insmod ")] \
        == [f"/lib/modules/{name}.ko" for name in modules]
    assert f'echo "PYAXVISOR-MODULES: $loaded/{len(modules)}"' in init
    for name in modules:
        modinfo = parse_modinfo(elf_section(files[f"lib/modules/{name}.ko"], ".modinfo", name))
        assert modinfo["vermagic"][0].startswith(release + " "), name
    # how the kernel finds the pc board's transports: the DSDT's LNRO0005 devices
    mmio = parse_modinfo(elf_section(files["lib/modules/virtio_mmio.ko"], ".modinfo", "mmio"))
    assert "acpi*:LNRO0005:*" in mmio["alias"], mmio["alias"]


def test_debian_amd64_kernel_finds_the_virtio_devices_in_the_dsdt(tmp_path):
    from pyaxvisor.engine.kvm.probe import kvm_usable
    from tests.test_real_guests_x86_64 import NATIVE_RATE, guest_instruction_rate

    usable, why = kvm_usable()
    if not usable:
        pytest.skip(reason=f"KVM not usable: {why}")
    rate = guest_instruction_rate()
    if rate < NATIVE_RATE:
        pytest.skip(reason=f"this host's KVM emulates guest instructions: {rate / 1e6:.1f} M/s "
                    f"measured (native is above {NATIVE_RATE / 1e6:.0f} M/s); Linux's "
                    "decompressor would take hours (see tests/test_real_guests_x86_64.py)")
    _make_disks(tmp_path, "hello from the host to amd64\n")
    out = _boot(tmp_path, (
        "ls /sys/bus/platform/drivers/virtio-mmio; cat /sys/bus/virtio/devices/*/device; "
        "dd if=$R bs=512 count=1 | md5sum; "
        f"echo PYAXVISOR-RAW-WRITE | dd of=$R bs=512 seek={RAW_OFFSET // 512} "
        "conv=notrunc; "
        "mount -t ext4 $E /mnt && cat /mnt/hello.txt && umount /mnt; sync; "
        "dd if=/dev/hwrng bs=16 count=1 | od -x"), arch="amd64")
    assert "x86_64 GNU/Linux" in out
    assert len(set(re.findall(r"LNRO0005:0[0-7]", out))) == 3, out[-3000:]
    assert sorted(re.findall(r"^0x000(\d)$", out, re.M)) == ["2", "2", "4"], out[-2000:]
    assert f"{hashlib.md5(RAW_PATTERN[:512]).hexdigest()}  -" in out
    assert "hello from the host to amd64" in out
    _random_line(out)
    raw = (tmp_path / "raw.img").read_bytes()
    assert raw[RAW_OFFSET:RAW_OFFSET + len(RAW_MARK)] == RAW_MARK


def test_debian_riscv64_kernel_modules_drive_virtio_disks_and_entropy(tmp_path):
    debugfs = tool("debugfs")
    _make_disks(tmp_path, "hello from the host to riscv64\n")
    out = _boot(tmp_path, (
        "cat /sys/bus/virtio/devices/*/device; "
        "dd if=$R bs=512 count=1 | md5sum; "
        f"echo PYAXVISOR-RAW-WRITE | dd of=$R bs=512 seek={RAW_OFFSET // 512} "
        "conv=notrunc; "
        "mount -t ext4 $E /mnt && cat /mnt/hello.txt && "
        "echo written-by-riscv64 > /mnt/guest.txt && umount /mnt; sync; "
        "dd if=/dev/hwrng bs=16 count=1 | od -x"), arch="riscv64")
    assert "riscv64 GNU/Linux" in out
    assert re.search(r"\] virtio_blk virtio\d: \[vd[ab]\] 2048 512-byte logical", out)
    assert re.search(r"\] virtio_blk virtio\d: \[vd[ab]\] 32768 512-byte logical", out)
    assert re.search(r"^raw=/dev/vd[ab] ext4=/dev/vd[ab]$", out, re.M), out[-2000:]
    assert sorted(re.findall(r"^0x000(\d)$", out, re.M)) == ["2", "2", "4"], out[-2000:]
    assert f"{hashlib.md5(RAW_PATTERN[:512]).hexdigest()}  -" in out
    assert "hello from the host to riscv64" in out
    _random_line(out)
    assert_disks_hold(tmp_path, debugfs, "written-by-riscv64\n")


# ---------------------------------------------------------------------------
# hvc0: the virtio console of Debian's kernel


def test_debian_arm64_kernel_talks_over_hvc0_both_ways():
    """``console=ttyAMA0 console=hvc0``: early messages go to the UART until the
    virtio_console module loads; then /dev/console is hvc0. Both reach stdout. The guest
    writes to /dev/hvc0 and reads a line the test writes to pyaxvisor's stdin (a pipe;
    with a virtconsole present, input goes to hvc0 and not to the UART)."""
    token = secrets.token_hex(6)
    cmd = ("echo via-hvc0 > /dev/hvc0; cat /sys/class/tty/console/active; "
           "exec 3<>/dev/hvc0; echo ready-for-input >&3; read line <&3; echo got=$line")
    argv = _vm_argv("arm64", f'console=hvc0 pyaxvisor.cmd="{cmd}"',
                    "-device", "virtio-serial-device", "-device", "virtconsole")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    seen: list[bytes] = []
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if line.rstrip(b"\r\n") == b"ready-for-input":
                proc.stdin.write(f"{token}\n".encode())
                proc.stdin.flush()
                break
        else:
            pytest.fail("no ready-for-input line:\n" + b"".join(seen[-50:]).decode())
        rest, _ = proc.communicate(timeout=300)
        seen.append(rest)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    out = b"".join(seen).decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert _modules_line("arm64") in out, out[-3000:]
    assert re.search(r"^via-hvc0\r?$", out, re.M), out[-3000:]
    # both consoles are active; the last one listed (hvc0) is /dev/console
    assert re.search(r"^ttyAMA0 hvc0\r?$", out, re.M), out[-3000:]
    assert re.search(rf"^got={token}\r?$", out, re.M), out[-3000:]
    assert "PYAXVISOR-CMD-END: status=0" in out
    assert "reboot: Power down" in out


# ---------------------------------------------------------------------------
# A root filesystem on /dev/vda

def _root_disk(tmp: Path) -> Path:
    """A 32 MiB ext4 image made with ``mke2fs -d`` from :func:`images.make_root_tree`."""
    tree = images.make_root_tree(tmp / "root-tree")
    disk = tmp / "root.img"
    subprocess.run([tool("mke2fs"), "-q", "-t", "ext4", "-d", str(tree), "-F", str(disk),
                    "32M"], check=True, capture_output=True)
    return disk


def _run_argv(disk: Path, append: str) -> list[str]:
    return _vm_argv("arm64", append, "-drive", f"file={disk},format=raw,if=virtio")


def test_the_initramfs_switches_to_a_root_filesystem_on_vda(tmp_path):
    disk = _root_disk(tmp_path)
    r = subprocess.run(_run_argv(disk, 'root=/dev/vda rw pyaxvisor.cmd="echo $(id -u) '
                                       'on $(readlink /bin/sh); ls /sbin"'),
                       capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr
    assert _modules_line("arm64") in out, out[-3000:]
    assert "PYAXVISOR-ROOT: /dev/vda" in out
    assert "PYAXVISOR-ROOT-FAILED" not in out
    # the initramfs' /init hands over before reporting: only the root's init runs
    assert images.USERSPACE_MARKER not in out
    assert re.search(rf"^{images.ROOT_MARKER}$", out, re.M), out[-3000:]
    mounts = out.split("PYAXVISOR-ROOT-MOUNTS-BEGIN\n")[1].split("PYAXVISOR-ROOT-MOUNTS-END")[0]
    assert re.search(r"^/dev/vda / ext4 rw[, ]", mounts, re.M), mounts
    assert re.search(r"^0 on busybox$", out, re.M), out[-2000:]
    assert re.search(r"^init$", out, re.M)
    assert "PYAXVISOR-CMD-END: status=0" in out
    # / is remounted read-only before the power-off: the disk is left clean
    assert "EXT4-fs (vda): re-mounted" in out.split("PYAXVISOR-POWEROFF")[1], out[-2000:]
    assert "reboot: Power down" in out
    stats = subprocess.run([tool("debugfs"), "-R", "stats", str(disk)], capture_output=True,
                           text=True, check=True).stdout
    assert re.search(r"^Filesystem state:\s+clean$", stats, re.M), stats[:2000]
    assert "needs_recovery" not in stats


def test_what_the_guest_synced_survives_a_sigkill_of_the_vm(tmp_path):
    disk = _root_disk(tmp_path)
    token = secrets.token_hex(8)
    cmd = (f"cat /sys/block/vda/queue/write_cache; echo content-{token} > /synced.txt; "
           f"sync; echo SYNCED-{token}; sleep 600")
    proc = subprocess.Popen(_run_argv(disk, f'root=/dev/vda rw pyaxvisor.cmd="{cmd}"'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        for line in proc.stdout:
            seen.append(line)
            if line.rstrip("\r\n") == f"SYNCED-{token}":
                proc.send_signal(signal.SIGKILL)  # at once: no orderly shutdown at all
                break
            assert time.monotonic() < deadline, "".join(seen[-50:])
        else:
            pytest.fail("the VM ended without the marker:\n" + "".join(seen[-50:]))
    finally:
        proc.kill()
        proc.wait(timeout=30)
    out = "".join(seen)
    assert proc.returncode == -signal.SIGKILL
    # the guest's kernel sees a write-back cache, so ext4's sync sends FLUSH requests
    assert re.search(r"^write back$", out, re.M), out[-3000:]
    # the guest's sync committed the journal; replay it as the next mount would
    fsck = subprocess.run([tool("e2fsck"), "-fy", str(disk)], capture_output=True, text=True)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
    cat = subprocess.run([tool("debugfs"), "-R", "cat /synced.txt", str(disk)],
                         capture_output=True, text=True, check=True)
    assert cat.stdout == f"content-{token}\n", cat.stdout + cat.stderr


def test_a_second_vm_cannot_take_an_image_the_first_writes(tmp_path):
    disk = _root_disk(tmp_path)
    argv = _run_argv(disk, 'pyaxvisor.cmd="sleep 120"')
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, stdin=subprocess.DEVNULL)
    try:
        assert first.stdout is not None
        seen: list[str] = []
        for line in first.stdout:
            seen.append(line)
            if line.startswith("PYAXVISOR-CMD-BEGIN"):
                break
        else:
            pytest.fail("the first VM ended early:\n" + "".join(seen[-50:]))
        t0 = time.monotonic()
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
        took = time.monotonic() - t0
        assert first.poll() is None
    finally:
        first.kill()
        first.wait(timeout=30)
    assert second.returncode == 4, second.stdout[-2000:] + second.stderr
    assert second.stdout == ""
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert str(disk) in lines[0] and "in use" in lines[0], lines[0]
    assert "Traceback" not in second.stderr
    assert took < 30


# ---------------------------------------------------------------------------
# virtio-net on a TAP interface, inside a network namespace of its own

GUEST_TO_HOST, HOST_TO_GUEST = 5555, 5556
# Runs in the namespace: prints the line a guest sends to GUEST_TO_HOST, sends a line
# to whoever connects to HOST_TO_GUEST; both connections then closed by the host.
_HOST_SIDE = f"""
import socket, sys
a = socket.create_server(('0.0.0.0', {GUEST_TO_HOST}))
b = socket.create_server(('0.0.0.0', {HOST_TO_GUEST}))
print('HOST-LISTENING', flush=True)
conn, _ = a.accept()
print('HOST-GOT:', conn.makefile().readline().strip(), flush=True)
conn.close()
conn, _ = b.accept()
conn.sendall(b'hello-from-host\\n')
conn.close()
print('HOST-SENT', flush=True)
"""


class NetNamespace:
    """A network namespace of the test's own, and ``inside``: the command prefix that
    runs a program in it. As root, a named one (``ip netns``); otherwise one of a user
    namespace where the test's user is root (``unshare``, held by a sleeping process
    and entered with ``nsenter``), which lets pyaxvisor create its TAP there."""

    def __init__(self, ip: str, *, privileged: bool) -> None:
        self.ip = ip
        self._name = f"pyax-{secrets.token_hex(4)}" if privileged else None
        self._holder: subprocess.Popen[bytes] | None = None
        if self._name is not None:
            subprocess.run([ip, "netns", "add", self._name], check=True)
            self.inside = [ip, "netns", "exec", self._name]
            return
        self._holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net",
                                         "sleep", "900"])
        self.inside = ["nsenter", "-t", str(self._holder.pid), "-U", "-n",
                       "--preserve-credentials"]
        deadline = time.monotonic() + 30
        while subprocess.run([*self.inside, ip, "link", "show", "lo"],
                             capture_output=True).returncode != 0:  # until unshare is done
            assert self._holder.poll() is None, "unshare could not make a user namespace"
            assert time.monotonic() < deadline, "the namespace never appeared"
            time.sleep(0.05)

    def ip_cmd(self, *args: str) -> list[str]:
        return [*self.inside, self.ip, *args]

    def close(self) -> None:
        if self._name is not None:
            subprocess.run([self.ip, "netns", "del", self._name], check=False)
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()


@pytest.mark.parametrize("arch", ["arm64", "riscv64"])
def test_a_guest_talks_to_the_host_over_virtio_net_on_a_tap(arch):
    netns = NetNamespace(tool("ip"), privileged=os.geteuid() == 0)
    procs: list[subprocess.Popen[str]] = []
    try:
        host = subprocess.Popen([*netns.inside, sys.executable, "-c", _HOST_SIDE],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(host)
        assert host.stdout is not None and host.stdout.readline().strip() == "HOST-LISTENING"
        cmd = ("ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0; "
               "cat /sys/class/net/eth0/address; ping -c 3 -w 30 10.0.2.2; "
               f"echo hello-from-guest | nc 10.0.2.2 {GUEST_TO_HOST}; "
               f"sleep 10 | nc 10.0.2.2 {HOST_TO_GUEST}")
        vm = subprocess.Popen(
            [*netns.inside,
             *_vm_argv(arch, f'pyaxvisor.cmd="{cmd}"',
                       "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
                       "-device", "virtio-net-device,netdev=n0")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL)
        procs.append(vm)
        deadline = time.monotonic() + 120
        while subprocess.run(netns.ip_cmd("link", "show", "tap0"),
                             capture_output=True).returncode != 0:  # pyaxvisor creates it
            assert vm.poll() is None, vm.communicate()
            assert time.monotonic() < deadline, "tap0 never appeared"
            time.sleep(0.1)
        subprocess.run(netns.ip_cmd("addr", "add", "10.0.2.2/24", "dev", "tap0"), check=True)
        subprocess.run(netns.ip_cmd("link", "set", "tap0", "up"), check=True)
        out, err = vm.communicate(timeout=400)
        host_out, _ = host.communicate(timeout=30)
        assert vm.returncode == 0, out[-3000:] + err
        assert _modules_line(arch) in out, out[-3000:]
        assert f"{ARCHES[arch][0]} GNU/Linux" in out  # uname -m: the kernel that ran
        assert "52:54:00:12:34:56" in out  # QEMU's default MAC, from the config space
        received = re.search(r"(\d+) packets transmitted, (\d+) packets received", out)
        assert received is not None and int(received[2]) >= 1, out[-3000:]
        assert "HOST-GOT: hello-from-guest" in host_out, host_out + out[-3000:]
        assert "HOST-SENT" in host_out
        assert "hello-from-host" in out, out[-3000:]
        assert "PYAXVISOR-CMD-END: status=0" in out, out[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        netns.close()

"""Guest images from Debian packages: the newc writer, the initramfs, the cache and apt.

Everything but the ``slow`` tests runs without the network: apt is replaced by small
``.deb`` files built here with ``dpkg-deb --build``. The slow tests really download
``u-boot-qemu`` (about 2 MB, twice) and, through the private riscv64 apt, Debian
stable's riscv64 index and ``busybox-static`` (about 11 MB) into temporary caches.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import tools

from pyaxvisor import image_apt, images
from pyaxvisor.errors import AxError, ImageFetchError
from pyaxvisor.images import CpioEntry

# ---------------------------------------------------------------------------
# A newc reader, written from the format description independently of the writer.


def _align4(n: int) -> int:
    return (n + 3) & ~3


def read_newc(blob: bytes) -> list[dict]:
    members, off = [], 0
    while True:
        assert blob[off:off + 6] == b"070701", f"bad magic at {off}"
        fields = [int(blob[off + 6 + 8 * i:off + 14 + 8 * i], 16) for i in range(13)]
        (ino, mode, uid, gid, nlink, mtime, size, _dmaj, _dmin, rmaj, rmin,
         namesize, check) = fields
        assert check == 0
        name_at = off + 110
        assert blob[name_at + namesize - 1] == 0, "name is not NUL-terminated"
        name = blob[name_at:name_at + namesize - 1].decode()
        off = _align4(name_at + namesize)
        data = blob[off:off + size]
        assert len(data) == size
        off = _align4(off + size)
        if name == "TRAILER!!!":
            assert off == len(blob), "bytes after the trailer"
            return members
        members.append({"name": name, "ino": ino, "mode": mode, "uid": uid, "gid": gid,
                        "nlink": nlink, "mtime": mtime, "data": data, "rdev": (rmaj, rmin)})


SAMPLE = [
    CpioEntry.directory("bin"),
    CpioEntry.directory("dev", 0o700),
    CpioEntry.file("bin/tool", b"\x7fELF tool bytes", 0o755),
    CpioEntry.file("bin/odd", b"abc", 0o600),  # a size that needs padding
    CpioEntry.file("empty", b""),
    CpioEntry.symlink("bin/sh", "tool"),
    CpioEntry.symlink("abs", "/bin/tool"),
    CpioEntry.char_device("dev/console", 5, 1),
    CpioEntry.char_device("dev/ttyS0", 4, 64, 0o620),
    CpioEntry.file("a-longer-name-for-alignment.txt", b"x" * 1001),
]


def test_newc_round_trip_through_reader():
    members = read_newc(images.newc_archive(SAMPLE))
    assert [m["name"] for m in members] == [e.name for e in SAMPLE]
    by_name = {m["name"]: m for m in members}
    assert stat.S_ISDIR(by_name["bin"]["mode"]) and by_name["bin"]["mode"] & 0o7777 == 0o755
    assert by_name["dev"]["mode"] & 0o7777 == 0o700
    assert by_name["bin/tool"]["mode"] == stat.S_IFREG | 0o755
    assert by_name["bin/tool"]["data"] == b"\x7fELF tool bytes"
    assert by_name["bin/odd"]["data"] == b"abc"
    assert by_name["empty"]["data"] == b""
    assert by_name["a-longer-name-for-alignment.txt"]["data"] == b"x" * 1001
    assert stat.S_ISLNK(by_name["bin/sh"]["mode"]) and by_name["bin/sh"]["data"] == b"tool"
    assert by_name["abs"]["data"] == b"/bin/tool"
    console = by_name["dev/console"]
    assert stat.S_ISCHR(console["mode"]) and console["mode"] & 0o7777 == 0o600
    assert console["rdev"] == (5, 1) and console["data"] == b""
    assert by_name["dev/ttyS0"]["rdev"] == (4, 64)
    assert len({m["ino"] for m in members}) == len(members)  # no accidental hard links
    assert all(m["uid"] == 0 and m["gid"] == 0 and m["mtime"] == 0 for m in members)


def test_newc_rejects_bad_names():
    with pytest.raises(ValueError):
        images.newc_archive([CpioEntry.file("TRAILER!!!", b"")])
    with pytest.raises(ValueError):
        images.newc_archive([CpioEntry.file("/", b"")])


_CPIO_LINE = re.compile(r"^(?P<mode>\S{10})\s+\d+\s+\S+\s+\S+\s+(?:(?P<maj>\d+),\s*(?P<min>\d+)"
                        r"|(?P<size>\d+))\s+\w{3}\s+\d+\s+\d+\s(?P<rest>.*)$")


def test_newc_round_trip_through_debian_cpio():
    cpio = tools.tool("cpio")  # the system's, or Debian's fetched
    blob = images.newc_archive(SAMPLE)
    listing = subprocess.run([cpio, "-t", "-v", "--quiet"], input=blob, capture_output=True,
                             check=True).stdout.decode()
    seen = {}
    for line in listing.splitlines():
        m = _CPIO_LINE.match(line)
        assert m, f"unexpected cpio -tv line: {line!r}"
        seen[m["rest"]] = m
    assert set(seen) == {"bin", "dev", "bin/tool", "bin/odd", "empty", "bin/sh -> tool",
                         "abs -> /bin/tool", "dev/console", "dev/ttyS0",
                         "a-longer-name-for-alignment.txt"}
    assert seen["bin/tool"]["mode"] == "-rwxr-xr-x" and seen["bin/tool"]["size"] == "15"
    assert seen["dev"]["mode"] == "drwx------"
    assert seen["bin/sh -> tool"]["mode"] == "lrwxrwxrwx"
    assert (seen["dev/console"]["mode"], seen["dev/console"]["maj"],
            seen["dev/console"]["min"]) == ("crw-------", "5", "1")
    assert (seen["dev/ttyS0"]["maj"], seen["dev/ttyS0"]["min"]) == ("4", "64")
    for name, data in [("bin/tool", b"\x7fELF tool bytes"), ("bin/odd", b"abc"),
                       ("a-longer-name-for-alignment.txt", b"x" * 1001)]:
        out = subprocess.run(["cpio", "-i", "--to-stdout", "--quiet", name], input=blob,
                             capture_output=True, check=True).stdout
        assert out == data


# ---------------------------------------------------------------------------
# The initramfs and its /init


def fake_busybox(machine: int = 183, applets=images.BUSYBOX_APPLETS) -> bytes:
    header = b"\x7fELF\x02\x01\x01" + bytes(11) + machine.to_bytes(2, "little") + bytes(44)
    names = sorted({"[", "[[", "busybox", *applets})
    return header + b"code" * 16 + b"\x00".join(n.encode() for n in names) + b"\x00\x00tail"


def test_init_script_reports_and_powers_off():
    text = images.init_script()
    assert text.startswith("#!/bin/sh\n")
    assert images.USERSPACE_MARKER == "PYAXVISOR-USERSPACE-OK"
    assert "echo PYAXVISOR-USERSPACE-OK\n" in text
    assert "mount -t proc proc /proc" in text and "mount -t sysfs sysfs /sys" in text
    assert "uname -a" in text
    assert "grep -c ^processor /proc/cpuinfo" in text
    assert "/proc/cmdline" in text and "pyaxvisor.cmd" in text
    assert "poweroff -f" in text
    assert text.index("poweroff -f") > text.index(images.USERSPACE_MARKER)
    # Every command /init runs is an applet that gets a link.
    for applet in ("mount", "echo", "uname", "grep", "cat", "sh", "printf", "sync",
                   "poweroff", "reboot", "sleep", "["):
        assert applet in images.BUSYBOX_APPLETS
    assert set(images.BUSYBOX_APPLETS) >= images.REQUIRED_APPLETS


@pytest.mark.parametrize(("cmdline", "command"), [
    ("console=ttyAMA0 pyaxvisor.cmd=ls quiet", "ls"),
    ('console=ttyAMA0 pyaxvisor.cmd="cat /proc/meminfo" quiet', "cat /proc/meminfo"),
    ("pyaxvisor.cmd=dmesg", "dmesg"),
    ("console=ttyS0 earlycon", ""),
    ("notpyaxvisor.cmd=no pyaxvisor.cmd=yes", "yes"),
    ("pyaxvisor.cmd= rdinit=/init", ""),
])
def test_init_reads_command_from_cmdline(cmdline, command):
    # The parser is POSIX sh, so the host's /bin/sh runs it as busybox ash would.
    script = images._CMD_FUNCTION + '\npyaxvisor_cmd "$1"\n'
    out = subprocess.run(["/bin/sh", "-c", script, "sh", cmdline], capture_output=True,
                         text=True, check=True).stdout
    assert out == command + "\n"


def test_init_script_is_valid_sh():
    subprocess.run(["/bin/sh", "-n", "-c", images.init_script()], check=True)


def test_initramfs_contents():
    busybox = fake_busybox()
    blob = images.build_initramfs(busybox)
    assert blob[:2] == b"\x1f\x8b"
    assert images.build_initramfs(busybox) == blob  # reproducible
    members = {m["name"]: m for m in read_newc(gzip.decompress(blob))}
    for d in ("bin", "dev", "proc", "sys"):
        assert stat.S_ISDIR(members[d]["mode"]), d
    assert members["bin/busybox"]["data"] == busybox
    assert members["bin/busybox"]["mode"] == stat.S_IFREG | 0o755
    init = members["init"]
    assert init["mode"] == stat.S_IFREG | 0o755
    assert init["data"].decode() == images.init_script()
    console = members["dev/console"]
    assert stat.S_ISCHR(console["mode"]) and console["rdev"] == (5, 1)
    for applet in ("sh", "mount", "echo", "cat", "poweroff", "reboot", "ls", "uname", "dmesg",
                   "grep"):
        link = members[f"bin/{applet}"]
        assert stat.S_ISLNK(link["mode"]) and link["data"] == b"busybox", applet
    names = list(members)
    for name in names:  # parents come first
        parent = name.rpartition("/")[0]
        assert not parent or names.index(parent) < names.index(name)


def test_busybox_applet_table():
    assert images.busybox_applets(fake_busybox(applets=("sh", "ls"))) == {
        "[", "[[", "busybox", "sh", "ls"}
    assert images.busybox_applets(b"\x7fELF no table") is None


# ---------------------------------------------------------------------------
# Names, cache location, control parsing


def test_unknown_image_name_lists_known_ones():
    with pytest.raises(ImageFetchError) as info:
        images.fetch("linux-sparc", log=lambda _s: None)
    assert isinstance(info.value, AxError)
    for name in images.IMAGES:
        assert name in str(info.value)
    with pytest.raises(ImageFetchError, match="u-boot-arm64"):
        images.fetch_all(["u-boot-arm64", "nope"])


def test_image_names():
    assert set(images.IMAGES) == {"u-boot-arm64", "linux-arm64", "initramfs-arm64",
                                  "linux-amd64", "initramfs-amd64",
                                  "u-boot-riscv64", "linux-riscv64", "initramfs-riscv64",
                                  "initramfs-virtio-arm64", "initramfs-virtio-riscv64",
                                  "initramfs-virtio-amd64"}
    assert images.IMAGES["u-boot-arm64"].apt_name == "u-boot-qemu"
    assert images.IMAGES["initramfs-arm64"].apt_name == "busybox-static:arm64"
    assert images.IMAGES["linux-arm64"].apt_name == "linux-image-arm64:arm64"


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert images.cache_root() == tmp_path / "pyaxvisor" / "images"
    assert images.image_path("u-boot-arm64") == images.cache_root() / "u-boot-arm64.bin"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    assert images.cache_root() == Path.home() / ".cache" / "pyaxvisor" / "images"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert images.cache_root() == Path.home() / ".cache" / "pyaxvisor" / "images"


def test_parse_control_and_kernel_package():
    text = ("Package: linux-image-arm64\nSource: linux-signed-arm64 (6.1.192+2)\n"
            "Version: 6.1.192-2\nDepends: linux-image-6.1.0-56-arm64 (= 6.1.192-2)\n"
            "Description: Linux for 64-bit ARMv8 machines (meta-package)\n"
            " This package depends on the latest Linux kernel.\n\n"
            "Package: other\nVersion: 1\n")
    fields = images.parse_control(text)
    assert fields["Version"] == "6.1.192-2"
    assert fields["Description"].endswith("This package depends on the latest Linux kernel.")
    assert "other" not in fields.values()
    assert images.kernel_package(fields["Depends"]) == "linux-image-6.1.0-56-arm64"
    assert images.kernel_package(
        "initramfs-tools | linux-initramfs-tool, linux-image-6.1.0-9-amd64:amd64 (= 1)"
    ) == "linux-image-6.1.0-9-amd64"
    with pytest.raises(ImageFetchError, match="linux-image-arm64"):
        images.kernel_package("kmod, busybox", "linux-image-arm64")


def test_check_kernel_formats():
    header = bytearray(64)
    header[0x38:0x3C] = b"ARM\x64"
    header[16:24] = (40 << 20).to_bytes(8, "little")
    info = images.check_kernel(gzip.compress(bytes(header) + bytes(4096)), "arm64")
    assert info["compression"] == "gzip" and info["image_size"] == 40 << 20
    with pytest.raises(ImageFetchError, match="ARM"):
        images.check_kernel(gzip.compress(bytes(4096)), "arm64")
    # Debian bookworm's signed arm64 vmlinuz: a raw Image behind an EFI (PE "MZ") stub.
    header[0:2] = b"MZ"
    raw = images.check_kernel(bytes(header) + bytes(4096), "arm64")
    assert raw["compression"] == "none" and raw["efi_stub"] is True
    with pytest.raises(ImageFetchError, match="ARM"):
        images.check_kernel(bytes(4096), "arm64")
    bz = bytearray(0x400)
    bz[0x202:0x206] = b"HdrS"
    bz[0x206:0x208] = (0x020F).to_bytes(2, "little")
    assert images.check_kernel(bytes(bz), "amd64")["boot_protocol"] == "2.15"
    with pytest.raises(ImageFetchError, match="bzImage"):
        images.check_kernel(bytes(0x400), "amd64")


# ---------------------------------------------------------------------------
# fetch() against a fake apt that hands out .deb files built here


def make_deb(where: Path, package: str, version: str, arch: str,
             files: dict[str, bytes]) -> Path:
    root = where / f"{package}_{version}_{arch}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: pyaxvisor tests <tests@example.invalid>\nDescription: test package\n")
    for path, data in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    deb = where / f"{root.name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root),
                    str(deb)], check=True, capture_output=True)
    return deb


class FakeApt:
    """Stands in for apt: package lookups and downloads come from local tables."""

    def __init__(self, monkeypatch, tmp_path: Path):
        self.debs: dict[str, Path] = {}
        self.fields: dict[str, dict[str, str]] = {}
        self.downloads: list[str] = []
        self.arches: list[str] = []
        self.store = tmp_path / "debs"
        self.store.mkdir()
        monkeypatch.setattr(images, "_download", self.download)
        monkeypatch.setattr(images, "_package_fields", lambda name, log: self.fields[name])
        monkeypatch.setattr(images, "_ensure_arch", lambda arch, log: self.arches.append(arch))

    def add(self, apt_name: str, version: str, arch: str, files: dict[str, bytes]) -> None:
        package = apt_name.split(":")[0]
        self.debs[apt_name] = make_deb(self.store, package, version, arch, files)

    def download(self, apt_name: str, dest: Path, log) -> Path:
        self.downloads.append(apt_name)
        if apt_name not in self.debs:
            raise ImageFetchError(f"E: Unable to locate package {apt_name}")
        return Path(shutil.copy(self.debs[apt_name], dest))


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "pyaxvisor" / "images"


@pytest.fixture
def apt(monkeypatch, tmp_path) -> FakeApt:
    return FakeApt(monkeypatch, tmp_path)


UBOOT = b"\x0a\x00\x00\x14\x1f\x20\x03\xd5" + bytes(200)
UBOOT_MEMBER = "usr/lib/u-boot/qemu_arm64/u-boot.bin"


def test_fetch_file_writes_image_and_metadata_then_uses_cache(cache, apt):
    apt.add("u-boot-qemu", "2023.01+dfsg-2", "all", {UBOOT_MEMBER: UBOOT,
                                                     "usr/lib/u-boot/other/u-boot.bin": b"no"})
    logs: list[str] = []
    path = images.fetch("u-boot-arm64", log=logs.append)
    assert path == cache / "u-boot-arm64.bin"
    assert path.read_bytes() == UBOOT
    info = json.loads((cache / "u-boot-arm64.json").read_text())
    assert info["package"] == "u-boot-qemu" and info["version"] == "2023.01+dfsg-2"
    assert info["member"] == UBOOT_MEMBER and info["size"] == len(UBOOT)
    assert images.metadata("u-boot-arm64") == info
    assert apt.downloads == ["u-boot-qemu"] and apt.arches == ["all"]
    assert not list(cache.glob(".tmp-*"))
    assert any("ready" in line for line in logs)

    assert images.fetch("u-boot-arm64", log=logs.append) == path
    assert apt.downloads == ["u-boot-qemu"]  # the cache answered
    assert "cached" in logs[-1]

    apt.add("u-boot-qemu", "2023.01+dfsg-3", "all", {UBOOT_MEMBER: UBOOT + b"new"})
    images.fetch("u-boot-arm64", refresh=True, log=logs.append)
    assert apt.downloads == ["u-boot-qemu", "u-boot-qemu"]
    assert path.read_bytes() == UBOOT + b"new"
    assert images.metadata("u-boot-arm64")["version"] == "2023.01+dfsg-3"


def test_package_without_file_names_package_and_path(cache, apt):
    apt.add("u-boot-qemu", "9.9", "all", {"usr/lib/u-boot/qemu_arm/u-boot.bin": UBOOT})
    with pytest.raises(ImageFetchError) as info:
        images.fetch("u-boot-arm64", log=lambda _s: None)
    assert "u-boot-qemu 9.9" in str(info.value) and UBOOT_MEMBER in str(info.value)
    assert not (cache / "u-boot-arm64.bin").exists()
    assert not (cache / "u-boot-arm64.json").exists()
    assert not list(cache.glob(".tmp-*"))


def test_interrupted_fetch_leaves_nothing_that_looks_complete(cache, apt, monkeypatch):
    apt.add("u-boot-qemu", "1", "all", {UBOOT_MEMBER: UBOOT})
    real_put = images._put

    def put_then_die(work, final, data):
        if final.suffix == ".json":
            raise KeyboardInterrupt  # killed between moving the image and its metadata
        real_put(work, final, data)

    monkeypatch.setattr(images, "_put", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        images.fetch("u-boot-arm64", log=lambda _s: None)
    assert (cache / "u-boot-arm64.bin").exists()
    assert images.metadata("u-boot-arm64") is None  # not complete without its metadata
    monkeypatch.setattr(images, "_put", real_put)
    (cache / ".tmp-u-boot-arm64-killed").mkdir()  # a work directory of a killed process
    images.fetch("u-boot-arm64", log=lambda _s: None)
    assert apt.downloads == ["u-boot-qemu", "u-boot-qemu"]
    assert images.metadata("u-boot-arm64")["size"] == len(UBOOT)
    assert not list(cache.glob(".tmp-*"))


def test_truncated_image_is_fetched_again(cache, apt):
    apt.add("u-boot-qemu", "1", "all", {UBOOT_MEMBER: UBOOT})
    path = images.fetch("u-boot-arm64", log=lambda _s: None)
    path.write_bytes(UBOOT[:10])
    images.fetch("u-boot-arm64", log=lambda _s: None)
    assert path.read_bytes() == UBOOT and len(apt.downloads) == 2


def test_fetch_kernel_resolves_metapackage(cache, apt):
    header = bytearray(64)
    header[0x38:0x3C] = b"ARM\x64"
    vmlinuz = gzip.compress(bytes(header) + b"kernel" * 100)
    apt.fields["linux-image-arm64:arm64"] = {
        "Package": "linux-image-arm64", "Version": "6.1.999-1",
        "Depends": "linux-image-6.1.0-99-arm64 (= 6.1.999-1)"}
    apt.add("linux-image-6.1.0-99-arm64:arm64", "6.1.999-1", "arm64", {
        "boot/config-6.1.0-99-arm64": b"CONFIG_X=y\n",
        "boot/vmlinuz-6.1.0-99-arm64": vmlinuz,
        "lib/modules/6.1.0-99-arm64/kernel/x.ko": b"module"})
    path = images.fetch("linux-arm64", log=lambda _s: None)
    assert path.name == "linux-arm64.vmlinuz" and path.read_bytes() == vmlinuz
    info = images.metadata("linux-arm64")
    assert info["package"] == "linux-image-6.1.0-99-arm64" and info["version"] == "6.1.999-1"
    assert info["metapackage"] == "linux-image-arm64"
    assert info["kernel_release"] == "6.1.0-99-arm64" and info["compression"] == "gzip"
    assert apt.downloads == ["linux-image-6.1.0-99-arm64:arm64"] and apt.arches == ["arm64"]


def test_fetch_initramfs_from_busybox(cache, apt):
    busybox = fake_busybox(applets=[a for a in images.BUSYBOX_APPLETS if a != "vi"])
    apt.add("busybox-static:arm64", "1:1.35.0-4", "arm64", {"bin/busybox": busybox})
    logs: list[str] = []
    path = images.fetch("initramfs-arm64", log=logs.append)
    members = {m["name"]: m for m in read_newc(gzip.decompress(path.read_bytes()))}
    assert members["bin/busybox"]["data"] == busybox
    assert "bin/sh" in members and "bin/vi" not in members
    assert any("vi" in line and "no links" in line for line in logs)
    info = images.metadata("initramfs-arm64")
    assert info["package"] == "busybox-static" and info["version"] == "1:1.35.0-4"
    assert info["marker"] == images.USERSPACE_MARKER


def test_initramfs_checks_busybox(cache, apt):
    apt.add("busybox-static:amd64", "1", "amd64", {"bin/busybox": fake_busybox(machine=183)})
    with pytest.raises(ImageFetchError, match="not amd64"):
        images.fetch("initramfs-amd64", log=lambda _s: None)
    lacking = fake_busybox(62, [a for a in images.BUSYBOX_APPLETS if a != "poweroff"])
    apt.add("busybox-static:amd64", "2", "amd64", {"bin/busybox": lacking})
    with pytest.raises(ImageFetchError, match="poweroff"):
        images.fetch("initramfs-amd64", log=lambda _s: None)
    assert not (cache / "initramfs-amd64.cpio.gz").exists()


# ---------------------------------------------------------------------------
# The apt and dpkg commands themselves (subprocess replaced)


class FakeRun:
    """Replaces subprocess.run: answers dpkg/apt commands from a table, records them."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str, str]]):
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, argv, **_kwargs):
        self.calls.append([str(a) for a in argv])
        for prefix, (code, out, err) in self.answers.items():
            if tuple(argv[:len(prefix)]) == prefix:
                return subprocess.CompletedProcess(argv, code, out, err)
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_apt_failure_reports_stderr_tail(cache, monkeypatch):
    err = "W: noise\n" * 30 + "E: Failed to fetch http://archive/u-boot-qemu.deb  404\n"
    run = FakeRun({("apt-get", "download"): (100, "", err)})
    monkeypatch.setattr(images.subprocess, "run", run)
    monkeypatch.setattr(images, "_updated", True)  # no apt-get update retry
    with pytest.raises(ImageFetchError) as info:
        images.fetch("u-boot-arm64", log=lambda _s: None)
    text = str(info.value)
    assert "u-boot-qemu" in text and "exit status 100" in text
    assert "E: Failed to fetch http://archive/u-boot-qemu.deb  404" in text
    assert text.count("W: noise") < 30  # only the tail
    assert not list(cache.glob(".tmp-*"))


def test_missing_tool_is_explained(monkeypatch):
    def missing(argv, **_kwargs):
        raise FileNotFoundError(argv[0])

    monkeypatch.setattr(images.subprocess, "run", missing)
    with pytest.raises(ImageFetchError, match="apt-get not found"):
        images._run(["apt-get", "download", "x"], "downloading x")


def test_foreign_architecture_added_once(monkeypatch):
    run = FakeRun({("dpkg", "--print-architecture"): (0, "amd64\n", ""),
                   ("dpkg", "--print-foreign-architectures"): (0, "", "")})
    monkeypatch.setattr(images.subprocess, "run", run)
    monkeypatch.setattr(images.os, "geteuid", lambda: 0)
    monkeypatch.setattr(images, "_updated", False)
    logs: list[str] = []
    images._ensure_arch("arm64", logs.append)
    assert ["dpkg", "--add-architecture", "arm64"] in run.calls
    assert ["apt-get", "update"] in run.calls
    assert any("dpkg --add-architecture arm64 && apt-get update" in line for line in logs)

    for arch, foreign in [("amd64", ""), ("all", ""), ("arm64", "arm64\n")]:
        run = FakeRun({("dpkg", "--print-architecture"): (0, "amd64\n", ""),
                       ("dpkg", "--print-foreign-architectures"): (0, foreign, "")})
        monkeypatch.setattr(images.subprocess, "run", run)
        images._ensure_arch(arch, logs.append)
        assert not [c for c in run.calls if "--add-architecture" in c or "update" in c], arch


def test_foreign_architecture_needs_root(monkeypatch):
    run = FakeRun({("dpkg", "--print-architecture"): (0, "amd64\n", "")})
    monkeypatch.setattr(images.subprocess, "run", run)
    monkeypatch.setattr(images.os, "geteuid", lambda: 1000)
    with pytest.raises(ImageFetchError, match="dpkg --add-architecture arm64 && apt-get update"):
        images._ensure_arch("arm64", lambda _s: None)


def test_unknown_package_triggers_one_apt_update(monkeypatch):
    state = {"updated": False}

    def run(argv, **_kwargs):
        if argv[:2] == ["apt-get", "update"]:
            state["updated"] = True
            return subprocess.CompletedProcess(argv, 0, "", "")
        if state["updated"]:
            return subprocess.CompletedProcess(argv, 0, "Package: p\nVersion: 2\n", "")
        return subprocess.CompletedProcess(argv, 100, "", "E: No packages found")

    monkeypatch.setattr(images.subprocess, "run", run)
    monkeypatch.setattr(images.os, "geteuid", lambda: 0)
    monkeypatch.setattr(images, "_updated", False)
    logs: list[str] = []
    assert images._package_fields("p", logs.append)["Version"] == "2"
    assert any("apt-get update" in line for line in logs)


# ---------------------------------------------------------------------------
# The real thing


@pytest.mark.slow
def test_fetch_real_u_boot(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        path = images.fetch("u-boot-arm64", log=lambda _s: None)
    except ImageFetchError as exc:
        pytest.fail(f"could not fetch u-boot-arm64 from Debian's archive through apt "
                    f"(CI reaches the archive; check apt's sources and network): {exc}")
    data = path.read_bytes()
    assert len(data) > 100 * 1024
    first = int.from_bytes(data[:4], "little")
    # U-Boot's arm64 _start is an unconditional branch (B imm26) over its header.
    assert first & 0xFC00_0000 == 0x1400_0000, f"first word {first:#010x} is not B"
    info = images.metadata("u-boot-arm64")
    assert info is not None and info["package"] == "u-boot-qemu" and info["version"]
    assert info["member"] == UBOOT_MEMBER

    def no_commands(*args, **kwargs):
        raise AssertionError(f"a cached fetch ran a command: {args}")

    monkeypatch.setattr(subprocess, "run", no_commands)
    monkeypatch.setattr(subprocess, "Popen", no_commands)
    assert images.fetch("u-boot-arm64", log=lambda _s: None) == path
    assert path.read_bytes() == data


# ---------------------------------------------------------------------------
# riscv64: the images, and the private apt that fetches Debian stable's packages

MIRROR = "http://mirror.example/debian"


def no_log(_line: str) -> None:
    """A log that drops what it is told."""
RSC_MAGIC = b"RSC\x05"


def riscv_image(efi_stub: bool = True, size: int = 4096) -> bytes:
    """A RISC-V Linux Image header (boot-image-header.rst) and some body."""
    head = bytearray(64)
    head[0:4] = b"MZo\x10" if efi_stub else b"\x6f\x10\x60\x0d"
    head[8:16] = (0x20_0000).to_bytes(8, "little")  # text_offset
    head[16:24] = (0x1E6_B000).to_bytes(8, "little")  # image_size
    head[32:36] = (2).to_bytes(4, "little")  # header version 0.2
    head[48:56] = b"RISCV\0\0\0"
    head[56:60] = RSC_MAGIC
    return bytes(head) + b"\x13\x00\x00\x00" * (size // 4)


@pytest.fixture
def private_env(monkeypatch, tmp_path):
    """A fixed mirror and keyring, whatever the host's apt sources say."""
    keyring = tmp_path / "debian-archive-keyring.gpg"
    keyring.write_bytes(b"keys")
    monkeypatch.setenv(image_apt.MIRROR_ENV, MIRROR)
    monkeypatch.setattr(image_apt, "DEBIAN_KEYRING", keyring)
    return keyring


def test_riscv64_image_specs():
    uboot, linux, initramfs = (images.spec(n) for n in ("u-boot-riscv64", "linux-riscv64",
                                                           "initramfs-riscv64"))
    assert (uboot.kind, uboot.apt_name, uboot.member, uboot.filename) == (
        "file", "u-boot-qemu", "usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin",
        "u-boot-riscv64.bin")
    assert (linux.kind, linux.apt_name, linux.filename) == (
        "kernel", "linux-image-riscv64:riscv64", "linux-riscv64.vmlinuz")
    assert images.fnmatch.fnmatchcase("boot/vmlinux-6.12.107+deb13-riscv64", linux.member)
    assert images.fnmatch.fnmatchcase("boot/vmlinuz-6.12.107+deb13-riscv64", linux.member)
    assert not images.fnmatch.fnmatchcase("boot/config-6.12.107+deb13-riscv64", linux.member)
    assert (initramfs.kind, initramfs.apt_name, initramfs.member) == (
        "initramfs", "busybox-static:riscv64", "usr/bin/busybox")
    # pyaxvisor spells the architecture as Debian does: the names need no alias.
    assert all(images.canonical(n) == n for n in ("u-boot-riscv64", "linux-riscv64",
                                                  "initramfs-riscv64"))
    # Only riscv64 goes through a private apt; arm64 and amd64 keep the host's.
    assert set(image_apt.PRIVATE_SUITES) == {"riscv64"}
    assert images._private_apt("arm64") is None and images._private_apt("all") is None


def test_check_kernel_riscv64_formats():
    raw = riscv_image()
    info = images.check_kernel(raw, "riscv64")
    assert info == {"compression": "none", "format": "RISC-V Image", "efi_stub": True,
                    "image_size": 0x1E6_B000, "text_offset": 0x20_0000,
                    "header_version": "0.2"}
    gz = images.check_kernel(gzip.compress(riscv_image(efi_stub=False)), "riscv64")
    assert gz["compression"] == "gzip" and gz["efi_stub"] is False
    payload = gzip.compress(raw)
    zboot = bytearray(0x40)
    zboot[0:2], zboot[4:8] = b"MZ", b"zimg"
    zboot[8:12] = (0x40).to_bytes(4, "little")
    zboot[12:16] = len(payload).to_bytes(4, "little")
    zboot[24:28] = b"gzip"
    assert images.check_kernel(bytes(zboot) + payload, "riscv64")["compression"] == "zboot-gzip"
    arm64 = bytearray(raw)
    arm64[48:60] = bytes(8) + b"ARM\x64"
    for bad in (bytes(arm64), bytes(4096), gzip.compress(bytes(4096))):
        with pytest.raises(ImageFetchError, match="no RISC-V Image"):
            images.check_kernel(bad, "riscv64")


def test_fetch_riscv64_images_through_fake_apt(cache, apt, private_env):
    vmlinux = riscv_image()
    apt.fields["linux-image-riscv64:riscv64"] = {
        "Package": "linux-image-riscv64", "Version": "6.12.107-1",
        "Depends": "linux-image-6.12.107+deb13-riscv64 (= 6.12.107-1)"}
    apt.add("linux-image-6.12.107+deb13-riscv64:riscv64", "6.12.107-1", "riscv64", {
        "boot/config-6.12.107+deb13-riscv64": b"CONFIG_X=y\n",
        "boot/vmlinux-6.12.107+deb13-riscv64": vmlinux})
    busybox = fake_busybox(machine=243)
    apt.add("busybox-static:riscv64", "1:1.37.0-6+b9", "riscv64", {"usr/bin/busybox": busybox})
    apt.add("u-boot-qemu", "2023.01+dfsg-2", "all", {
        "usr/lib/u-boot/qemu-riscv64/u-boot.bin": b"M-mode",
        "usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin": b"S-mode U-Boot"})

    assert images.fetch("linux-riscv64", log=no_log).read_bytes() == vmlinux
    info = images.metadata("linux-riscv64")
    assert info["package"] == "linux-image-6.12.107+deb13-riscv64"
    assert info["kernel_release"] == "6.12.107+deb13-riscv64"
    assert info["member"] == "boot/vmlinux-6.12.107+deb13-riscv64"
    assert info["compression"] == "none" and info["format"] == "RISC-V Image"
    assert info["apt_source"] == (f"deb [arch=riscv64 signed-by={private_env}] {MIRROR} "
                                  "stable main")

    path = images.fetch("initramfs-riscv64", log=no_log)
    members = {m["name"]: m for m in read_newc(gzip.decompress(path.read_bytes()))}
    assert members["bin/busybox"]["data"] == busybox and "init" in members
    assert images.metadata("initramfs-riscv64")["version"] == "1:1.37.0-6+b9"

    assert images.fetch("u-boot-riscv64", log=no_log).read_bytes() == b"S-mode U-Boot"
    assert "apt_source" not in images.metadata("u-boot-riscv64")  # the host's apt
    assert apt.arches == ["riscv64", "riscv64", "all"]
    assert apt.downloads == ["linux-image-6.12.107+deb13-riscv64:riscv64",
                             "busybox-static:riscv64", "u-boot-qemu"]


def test_riscv64_busybox_must_be_riscv(cache, apt, private_env):
    apt.add("busybox-static:riscv64", "1", "riscv64", {"usr/bin/busybox": fake_busybox(183)})
    with pytest.raises(ImageFetchError, match="not riscv64"):
        images.fetch("initramfs-riscv64", log=lambda _s: None)


class FakePrivateRun:
    """Replaces subprocess.run for the private apt: checks that every apt command carries
    the private options, answers it like apt would (``update`` writes lists), and hands
    dpkg-deb to the real tool."""

    def __init__(self, private: image_apt.PrivateApt, store: Path | None = None):
        self.private = private
        self.store = store  # .deb files by package name, for `download`
        self.calls: list[tuple[list[str], Path | None]] = []
        self.update_result: tuple[int, str] = (0, "")
        self.release = "Architectures: amd64 arm64 riscv64 s390x\n"
        self.with_index = True
        self.show: dict[str, str] = {}
        self.real_run = subprocess.run

    def verbs(self) -> list[list[str]]:
        """The calls with the tool and the private options taken off."""
        n = 1 + len(self.private.options())
        return [argv[:1] + argv[n:] for argv, _cwd in self.calls if argv[0] != "dpkg-deb"]

    def __call__(self, argv, *, cwd=None, **kwargs):
        argv = [str(a) for a in argv]
        if argv[0] == "dpkg-deb":
            return self.real_run(argv, cwd=cwd, **kwargs)
        self.calls.append((argv, cwd))
        opts = self.private.options()
        assert argv[0] in ("apt-get", "apt-cache"), argv
        assert argv[1:1 + len(opts)] == opts, f"not the private apt: {argv}"
        rest = argv[1 + len(opts):]
        if rest[-1] == "update":
            code, err = self.update_result
            if code == 0:
                lists = self.private.lists
                prefix = "mirror.example_debian_dists_stable"
                (lists / f"{prefix}_InRelease").write_text(f"Suite: stable\n{self.release}")
                if self.with_index:
                    (lists / f"{prefix}_main_binary-riscv64_Packages.lz4").write_bytes(b"x")
            return subprocess.CompletedProcess(argv, code, "", err)
        if rest[0] == "show":
            text = self.show.get(rest[-1])
            if text is None:
                return subprocess.CompletedProcess(argv, 100, "", "E: No packages found\n")
            return subprocess.CompletedProcess(argv, 0, text, "")
        if rest[0] == "download":
            name = rest[-1].split(":")[0]
            deb = self.store / f"{name}.deb" if self.store else None
            if deb is None or not deb.exists():
                return subprocess.CompletedProcess(
                    argv, 100, "", f"E: Unable to locate package {rest[-1]}\n")
            shutil.copy(deb, Path(cwd) / deb.name)
            return subprocess.CompletedProcess(argv, 0, "", "")
        raise AssertionError(f"unexpected apt command {argv}")


def private_options(root: Path) -> list[str]:
    """The private apt's options, written out here independently of PrivateApt."""
    return ["-c", f"{root}/apt.conf",
            "-o", f"Dir::Etc::SourceList={root}/sources.list",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", "Dir::Etc::Preferences=/dev/null",
            "-o", "Dir::Etc::PreferencesParts=/dev/null",
            "-o", f"Dir::State::Lists={root}/lists",
            "-o", f"Dir::State::status={root}/status",
            "-o", f"Dir::Cache={root}/cache",
            "-o", "APT::Architecture=riscv64",
            "-o", "APT::Architectures::=riscv64",
            "-o", "Acquire::Languages=none"]


def test_private_apt_commands_and_files(monkeypatch, tmp_path):
    root = tmp_path / "apt-riscv64"
    private = image_apt.PrivateApt(root, "riscv64", MIRROR, keyring=Path("/k/debian.gpg"))
    assert private.options() == private_options(root)
    store = tmp_path / "store"
    store.mkdir()
    make_deb(store, "busybox-static", "1", "riscv64", {"usr/bin/busybox": b"bb"}).rename(
        store / "busybox-static.deb")
    run = FakePrivateRun(private, store)
    run.show["busybox-static:riscv64"] = "Package: busybox-static\nVersion: 1\n"
    monkeypatch.setattr(image_apt.subprocess, "run", run)
    logs: list[str] = []

    private.ensure_fresh(logs.append)
    assert [argv for argv, _ in run.calls] == [
        ["apt-get", *private_options(root), "--error-on=any", "update"]]
    assert (root / "sources.list").read_text() == (
        f"deb [arch=riscv64 signed-by=/k/debian.gpg] {MIRROR} stable main\n")
    conf = (root / "apt.conf").read_text()
    for key in ("APT::Update::Post-Invoke-Success", "APT::Update::Post-Invoke",
                "APT::Update::Pre-Invoke", "APT::Architectures"):
        assert f"#clear {key};" in conf
    assert (root / "status").read_text() == ""
    assert (root / "lists" / "partial").is_dir() and (root / "cache").is_dir()
    assert (root / "updated").read_text() == private.sources_line()
    assert any("updating Debian stable's riscv64 package lists" in line for line in logs)

    assert "Version: 1" in private.show("busybox-static:riscv64", logs.append)
    dest = tmp_path / "work"
    dest.mkdir()
    private.download("busybox-static:riscv64", dest, logs.append)
    assert (dest / "busybox-static.deb").exists()
    assert run.calls[1] == (["apt-cache", *private_options(root), "show", "--no-all-versions",
                             "busybox-static:riscv64"], None)
    assert run.calls[2] == (["apt-get", *private_options(root), "download",
                             "busybox-static:riscv64"], dest)

    private.ensure_fresh(logs.append)  # fresh: no second update
    assert len(run.calls) == 3


def _sha_tree(path: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and os.access(p, os.R_OK)}


def test_riscv64_fetch_leaves_the_host_apt_alone(cache, monkeypatch, tmp_path, private_env):
    store = tmp_path / "store"
    store.mkdir()
    make_deb(store, "busybox-static", "1:1.37.0-6+b9", "riscv64",
             {"usr/bin/busybox": fake_busybox(machine=243)}).rename(store / "busybox-static.deb")
    private = images._private_apt("riscv64")
    assert private.root == cache.parent / "apt-riscv64"
    run = FakePrivateRun(private, store)
    monkeypatch.setattr(images.subprocess, "run", run)
    monkeypatch.setattr(images.os, "geteuid", lambda: 1000)  # no root needed
    etc_before = _sha_tree(Path("/etc/apt"))

    images.fetch("initramfs-riscv64", log=lambda _s: None)

    assert run.verbs() == [["apt-get", "--error-on=any", "update"],
                           ["apt-get", "download", "busybox-static:riscv64"]]
    # Every apt command was the private one (FakePrivateRun checks the options); dpkg was
    # never asked about or given an architecture; the host's apt files are as they were.
    assert all(argv[0] != "dpkg" for argv, _ in run.calls)
    assert _sha_tree(Path("/etc/apt")) == etc_before
    assert images.metadata("initramfs-riscv64")["architecture"] == "riscv64"
    assert sorted(p.name for p in private.root.iterdir()) == [
        "apt.conf", "cache", "lists", "lock", "sources.list", "status", "updated"]


@pytest.fixture
def fake_private(monkeypatch, tmp_path) -> tuple[image_apt.PrivateApt, FakePrivateRun]:
    """A private apt in tmp_path whose apt commands FakePrivateRun answers."""
    private = image_apt.PrivateApt(tmp_path / "apt", "riscv64", MIRROR)
    run = FakePrivateRun(private)
    monkeypatch.setattr(image_apt.subprocess, "run", run)
    return private, run


def test_private_apt_updates_stale_lists_and_mirror_changes(fake_private):
    private, run = fake_private
    private.ensure_fresh(no_log)
    private.ensure_fresh(no_log)
    assert len(run.calls) == 1
    two_days = time.time() - 2 * 86400
    os.utime(private.stamp, (two_days, two_days))
    logs: list[str] = []
    private.ensure_fresh(logs.append)
    assert len(run.calls) == 2 and "hours old" in logs[-1]

    elsewhere = image_apt.PrivateApt(private.root, "riscv64", "https://other.example/debian")
    run.private = elsewhere
    elsewhere.ensure_fresh(logs.append)
    assert len(run.calls) == 3 and "another source" in logs[-1]
    assert "https://other.example/debian" in (private.root / "sources.list").read_text()


def test_private_apt_package_not_found(monkeypatch, fake_private):
    private, run = fake_private
    private.ensure_fresh(no_log)
    # Lists just fetched: a missing package is missing, no second update.
    with pytest.raises(ImageFetchError) as info:
        private.show("nosuch:riscv64", no_log)
    assert "nosuch:riscv64 is not in Debian stable's riscv64 package index" in str(info.value)
    assert MIRROR in str(info.value)
    assert [v[-1] for v in run.verbs()] == ["update", "nosuch:riscv64"]

    # Lists a few hours old: update once and look again.
    hours_ago = time.time() - 3 * 3600
    os.utime(private.stamp, (hours_ago, hours_ago))
    calls = len(run.calls)
    real_call = run.__call__

    def appears_after_update(argv, **kwargs):
        if argv[-1] == "update":
            run.show["newpkg:riscv64"] = "Package: newpkg\nVersion: 2\n"
        return real_call(argv, **kwargs)

    monkeypatch.setattr(image_apt.subprocess, "run", appears_after_update)
    assert "Version: 2" in private.show("newpkg:riscv64", no_log)
    assert [v[-1] for v in run.verbs()[calls:]] == ["newpkg:riscv64", "update",
                                                   "newpkg:riscv64"]


def test_private_apt_update_errors(fake_private):
    private, run = fake_private

    run.update_result = (100, "E: Failed to fetch http://mirror.example/debian/dists/stable/"
                              "InRelease  Could not resolve 'mirror.example'\n")
    with pytest.raises(ImageFetchError, match="no network") as info:
        private.ensure_fresh(no_log)
    assert "Could not resolve 'mirror.example'" in str(info.value) and MIRROR in str(info.value)
    assert not private.stamp.exists()

    run.update_result = (100, "E: Failed to fetch http://mirror.example/debian/dists/stable/"
                              "main/binary-riscv64/Packages.xz  404  Not Found\n")
    with pytest.raises(ImageFetchError, match=f"mirror {MIRROR} has no riscv64 packages"):
        private.ensure_fresh(no_log)

    run.update_result = (100, "W: GPG error: ... NO_PUBKEY 762F67A0B2C39DE4\n")
    with pytest.raises(ImageFetchError, match="debian-archive-keyring"):
        private.ensure_fresh(no_log)

    # A mirror whose stable has no riscv64: apt skips the index and succeeds.
    run.update_result = (0, "")
    run.with_index, run.release = False, "Architectures: amd64 arm64\n"
    with pytest.raises(ImageFetchError) as info:
        private.ensure_fresh(no_log)
    assert "has no riscv64 packages" in str(info.value)
    assert "amd64 arm64" in str(info.value) and image_apt.MIRROR_ENV in str(info.value)
    assert not private.stamp.exists()


def test_command_timeout_is_an_image_fetch_error(monkeypatch):
    def slow(argv, **kwargs):
        assert kwargs["timeout"] == image_apt.COMMAND_TIMEOUT
        raise subprocess.TimeoutExpired(argv, kwargs["timeout"])

    monkeypatch.setattr(image_apt.subprocess, "run", slow)
    with pytest.raises(ImageFetchError, match="did not finish within 1800 s"):
        images._run(["apt-get", "download", "x"], "downloading x")


def test_debian_mirror_choice(monkeypatch, tmp_path):
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    monkeypatch.delenv(image_apt.MIRROR_ENV, raising=False)
    assert image_apt.debian_mirror(etc) == image_apt.DEFAULT_MIRROR  # nothing configured
    (etc / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb http://deb.debian.org/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://packages.cloud.google.com/apt cloud main\n")
    (etc / "sources.list.d" / "old.list.disabled-by-farm").write_text(
        "deb http://disabled.example/debian bookworm main\n")
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "Suites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb deb-src\nURIs: http://ftp.de.debian.org/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert image_apt.system_mirror(etc) == "http://ftp.de.debian.org/debian"
    (etc / "sources.list.d" / "a.list").write_text(
        "deb [trusted=yes] http://mirror.local:3142/debian bookworm main # apt-cacher\n")
    assert image_apt.debian_mirror(etc) == "http://mirror.local:3142/debian"
    monkeypatch.setenv(image_apt.MIRROR_ENV, "https://env.example/debian/")
    assert image_apt.debian_mirror(etc) == "https://env.example/debian"
    monkeypatch.setenv(image_apt.MIRROR_ENV, "not a mirror")
    with pytest.raises(ImageFetchError, match=image_apt.MIRROR_ENV):
        image_apt.debian_mirror(etc)


def test_images_cli_lists_riscv64(cache, private_env):
    from click.testing import CliRunner

    from pyaxvisor.cli import main

    out = CliRunner().invoke(main, ["images", "list"])
    assert out.exit_code == 0, out.output
    for name in ("u-boot-riscv64", "linux-riscv64", "initramfs-riscv64"):
        assert re.search(rf"^{name} .*; not fetched$", out.output, re.M), out.output


def fetch_for_real(name: str, source: str) -> Path:
    try:
        return images.fetch(name, log=lambda _s: None)
    except ImageFetchError as exc:
        pytest.fail(f"could not fetch {name} from {source} (CI reaches Debian's archive; "
                    f"check the network): {exc}")


@pytest.mark.slow
def test_fetch_real_u_boot_riscv64(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = fetch_for_real("u-boot-riscv64", "the host's apt (u-boot-qemu)").read_bytes()
    assert len(data) > 100 * 1024
    # S-mode U-Boot's _start saves the hart id and the device tree pointer that the SBI
    # firmware hands over: c.mv tp, a0; c.mv s1, a1 (M-mode U-Boot reads mhartid first).
    assert data[:4] == bytes.fromhex("2a82ae84"), data[:8].hex()
    info = images.metadata("u-boot-riscv64")
    assert info is not None and info["package"] == "u-boot-qemu" and info["version"]
    assert info["member"] == "usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin"


def _host_apt_state() -> tuple[dict[str, str], str]:
    arches = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                            text=True, check=True).stdout
    return _sha_tree(Path("/etc/apt")), arches


@pytest.mark.slow
def test_fetch_real_riscv64_initramfs_through_private_apt(monkeypatch, tmp_path):
    """The private apt for real: Debian stable's riscv64 index (about 10 MB) and
    busybox-static (1 MB), with the host's apt sources and dpkg architectures untouched."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    before = _host_apt_state()
    path = fetch_for_real("initramfs-riscv64", "Debian stable through the private apt")
    assert _host_apt_state() == before
    busybox = {m["name"]: m for m in read_newc(gzip.decompress(path.read_bytes()))}[
        "bin/busybox"]["data"]
    assert busybox[:4] == b"\x7fELF" and int.from_bytes(busybox[18:20], "little") == 243
    info = images.metadata("initramfs-riscv64")
    assert info["architecture"] == "riscv64" and info["apt_source"].startswith(
        "deb [arch=riscv64")
    assert (tmp_path / "pyaxvisor" / "apt-riscv64" / "updated").exists()


def test_the_virtio_init_switches_root_only_when_asked_and_reads_the_cpio_back():
    script = images.init_script(["virtio_blk"])
    assert "switch_root /newroot" in script and 'root=*) root=${w#root=}' in script
    assert "switch_root" not in images.init_script()
    files = images.newc_files(images.newc_archive([
        images.CpioEntry.directory("bin"),
        images.CpioEntry.file("bin/busybox", b"\x7fELF..."),
        images.CpioEntry.symlink("bin/sh", "busybox"),
        images.CpioEntry.file("init", images.root_init_script().encode(), 0o755)]))
    assert files["bin/busybox"] == b"\x7fELF..."
    assert set(files) == {"bin/busybox", "init"}
    assert images.ROOT_MARKER in files["init"].decode()

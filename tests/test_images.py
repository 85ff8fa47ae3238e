"""Guest images from Debian packages: the newc writer, the initramfs, the cache and apt.

Everything but the ``slow`` test runs without the network: apt is replaced by small
``.deb`` files built here with ``dpkg-deb --build``. The slow test really downloads
``u-boot-qemu`` (about 2 MB) into a temporary cache.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pyaxvisor import images
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
    if shutil.which("cpio") is None:
        pytest.skip(reason="Debian's cpio tool is not installed (apt-get install cpio)")
    blob = images.newc_archive(SAMPLE)
    listing = subprocess.run(["cpio", "-t", "-v", "--quiet"], input=blob, capture_output=True,
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
                                  "linux-amd64", "initramfs-amd64"}
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

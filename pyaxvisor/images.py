"""Real guest images, fetched from Debian packages and cached outside the repository.

Each image comes from one Debian package that is downloaded with ``apt-get download``
(never installed) and opened with ``dpkg-deb``; only the one file the image needs is
taken out of the package's data archive. Results live in the user's cache directory,
``$XDG_CACHE_HOME/pyaxvisor/images`` (default ``~/.cache/pyaxvisor/images``):

    u-boot-arm64.bin           U-Boot for QEMU's arm64 ``virt`` board (``u-boot-qemu``)
    linux-arm64.vmlinuz        Debian's arm64 kernel, kept as shipped (an arm64 ``Image``)
    initramfs-arm64.cpio.gz    busybox initramfs built here from ``busybox-static:arm64``
    linux-amd64.vmlinuz        Debian's amd64 kernel (a ``bzImage``)
    initramfs-amd64.cpio.gz    busybox initramfs from ``busybox-static:amd64``
    u-boot-riscv64.bin         S-mode U-Boot for QEMU's riscv64 ``virt`` board, an SBI
                               payload run at 0x8020_0000 (``u-boot-qemu`` again)
    linux-riscv64.vmlinuz      Debian stable's riscv64 kernel, as shipped (a RISC-V
                               ``Image`` with an EFI stub; Debian names it ``vmlinux-*``)
    initramfs-riscv64.cpio.gz  busybox initramfs from ``busybox-static:riscv64``
    initramfs-virtio-arm64.cpio.gz  the arm64 one plus, from ``linux-arm64``'s own
                               package, the modules of :data:`VIRTIO_MODULES` and
                               their dependencies (see :mod:`pyaxvisor.image_kmod`),
                               which its ``/init`` loads first
    initramfs-virtio-riscv64.cpio.gz  the same for riscv64, with ``linux-riscv64``'s
                               modules (``.ko.xz`` in the package, unpacked here)
    initramfs-virtio-amd64.cpio.gz  the same for amd64, with ``linux-amd64``'s modules
                               (there the virtio core, virtio and virtio_ring, is a
                               module too)

and next to each a ``<name>.json`` that names the Debian package and version it came
from (for a kernel also the kernel release, e.g. ``6.1.0-56-arm64``, and whether the
file is compressed: bookworm's signed arm64 ``vmlinuz`` is a raw ``Image`` with an EFI
stub, not gzip; the metadata says ``"compression": "none"`` or ``"gzip"``).

Work happens in a temporary directory inside the cache; the image and then its
``.json`` are moved into place with :func:`os.replace`, and an image counts as present
only when both exist and agree on its size, so an interrupted fetch never leaves a
file that looks complete. A per-image lock file serialises concurrent fetches.

Packages of a foreign architecture (``arm64`` on an amd64 host) need that architecture
known to dpkg and apt: :func:`fetch` runs ``dpkg --add-architecture arm64`` and
``apt-get update`` when, and only when, that is missing, and says so through ``log``.
When apt does not know a package at all it runs ``apt-get update`` once and retries.

riscv64 packages come from Debian ``stable`` (Debian 12, the host's release, has no
riscv64 port) through a private apt configuration in ``~/.cache/pyaxvisor/apt-riscv64``
that leaves the host's sources and dpkg architectures alone and needs no root; see
:mod:`pyaxvisor.image_apt` (``$PYAXVISOR_DEBIAN_MIRROR`` chooses its mirror). The
``u-boot-qemu`` package (architecture ``all``) comes from the host's apt as for arm64.

The initramfs ``/init`` mounts proc, sysfs and devtmpfs, prints
:data:`USERSPACE_MARKER`, ``uname -a`` and the CPU count, runs the optional command
given on the kernel command line as ``pyaxvisor.cmd=...`` (see :func:`init_script`),
then powers the machine off with ``poweroff -f``. The virtio one, given ``root=/dev/vdX``,
instead mounts that disk and ``switch_root``s to its ``/sbin/init``; such a disk is
made with :func:`make_root_tree` (a busybox tree whose ``/sbin/init`` reports and runs
``pyaxvisor.cmd`` the same way) and ``mke2fs -t ext4 -d``.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import fnmatch
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyaxvisor.errors import ImageFetchError
from pyaxvisor.image_apt import PrivateApt, parse_control, private_apt, watch_growth
from pyaxvisor.image_apt import run as _run
from pyaxvisor.image_apt import tail as _tail
from pyaxvisor.image_kmod import (
    MAX_MODULE_SIZE,
    ModuleInfo,
    ModuleTooLargeError,
    builtin_list_release,
    builtin_roots,
    decompress_module,
    load_order,
    module_info,
    module_release,
    parse_builtin,
)

Log = Callable[[str], None]

#: Modules of Debian's kernel behind QEMU-style virtio-mmio disks, entropy, console
#: (``hvc0``) and network cards (virtio_net pulls in net_failover and failover), and
#: ext4. Debian's arm64 (6.1), riscv64 (6.12) and amd64 (6.1) kernels build them as
#: modules, except riscv64's ``virtio_console`` (built in); the virtio core is built in
#: on arm64 and riscv64, a module on amd64 (its ``depends=`` pull it in), hw_random is
#: built in on all three. A built-in one is left out of the initramfs (its metadata
#: lists it under ``builtin_modules``), see :mod:`pyaxvisor.image_kmod`.
VIRTIO_MODULES: tuple[str, ...] = ("virtio_mmio", "virtio_blk", "virtio_rng",
                                   "virtio_console", "virtio_net", "ext4")
#: Most module bytes (uncompressed) one initramfs takes.
MAX_MODULES_TOTAL = 64 << 20


@dataclass(frozen=True)
class ImageSpec:
    """Where one image comes from and what it becomes in the cache."""

    name: str
    #: ``file`` (one file taken as is), ``kernel`` (``package`` is a metapackage whose
    #: ``linux-image-<version>-<flavour>`` dependency holds the kernel) or ``initramfs``
    #: (a busybox initramfs built around the file).
    kind: str
    #: The Debian package to download (for a kernel: the metapackage to resolve).
    package: str
    #: Debian architecture of the package: ``all``, ``arm64``, ``amd64``...
    arch: str
    #: Path of the wanted file inside the package, without a leading ``/``; may be a glob.
    member: str
    #: Name of the image file in :func:`cache_root`.
    filename: str
    description: str
    #: For an ``initramfs``: kernel modules (names as the kernel spells them) that its
    #: ``/init`` loads, with their dependencies, before anything else...
    modules: tuple[str, ...] = ()
    #: ... taken from the package of this ``kernel`` image (so that they match it).
    kernel_image: str = ""

    @property
    def apt_name(self) -> str:
        """The package as ``apt-get`` spells it (``pkg:arch`` unless ``all``)."""
        return _apt_name(self.package, self.arch)


IMAGES: dict[str, ImageSpec] = {
    spec.name: spec
    for spec in (
        ImageSpec("u-boot-arm64", "file", "u-boot-qemu", "all",
                  "usr/lib/u-boot/qemu_arm64/u-boot.bin", "u-boot-arm64.bin",
                  "U-Boot for QEMU's arm64 virt board (flat binary, run from flash with -bios)"),
        ImageSpec("linux-arm64", "kernel", "linux-image-arm64", "arm64",
                  "boot/vmlinuz-*", "linux-arm64.vmlinuz",
                  "Debian's arm64 Linux kernel: an arm64 Image (EFI stub; gzip'd accepted)"),
        ImageSpec("initramfs-arm64", "initramfs", "busybox-static", "arm64",
                  "bin/busybox", "initramfs-arm64.cpio.gz",
                  "busybox initramfs (gzip'd newc cpio) whose /init reports and powers off"),
        ImageSpec("linux-amd64", "kernel", "linux-image-amd64", "amd64",
                  "boot/vmlinuz-*", "linux-amd64.vmlinuz",
                  "Debian's amd64 Linux kernel, a bzImage"),
        ImageSpec("initramfs-amd64", "initramfs", "busybox-static", "amd64",
                  "bin/busybox", "initramfs-amd64.cpio.gz",
                  "busybox initramfs (gzip'd newc cpio) whose /init reports and powers off"),
        ImageSpec("u-boot-riscv64", "file", "u-boot-qemu", "all",
                  "usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin", "u-boot-riscv64.bin",
                  "S-mode U-Boot for QEMU's riscv64 virt board (flat binary, an SBI "
                  "payload at 0x80200000)"),
        ImageSpec("linux-riscv64", "kernel", "linux-image-riscv64", "riscv64",
                  "boot/vmlinu[xz]-*", "linux-riscv64.vmlinuz",
                  "Debian stable's riscv64 Linux kernel: a RISC-V Image (EFI stub; gzip'd "
                  "accepted)"),
        ImageSpec("initramfs-riscv64", "initramfs", "busybox-static", "riscv64",
                  "usr/bin/busybox", "initramfs-riscv64.cpio.gz",  # Debian 13: merged /usr
                  "busybox initramfs (gzip'd newc cpio) whose /init reports and powers off"),
        ImageSpec("initramfs-virtio-arm64", "initramfs", "busybox-static", "arm64",
                  "bin/busybox", "initramfs-virtio-arm64.cpio.gz",
                  "busybox initramfs whose /init loads linux-arm64's virtio-mmio, "
                  "virtio-blk, virtio-rng, virtio-net and ext4 modules, reports and powers off",
                  modules=VIRTIO_MODULES, kernel_image="linux-arm64"),
        ImageSpec("initramfs-virtio-riscv64", "initramfs", "busybox-static", "riscv64",
                  "usr/bin/busybox", "initramfs-virtio-riscv64.cpio.gz",
                  "busybox initramfs whose /init loads linux-riscv64's virtio-mmio, "
                  "virtio-blk, virtio-rng and ext4 modules, reports and powers off",
                  modules=VIRTIO_MODULES, kernel_image="linux-riscv64"),
        ImageSpec("initramfs-virtio-amd64", "initramfs", "busybox-static", "amd64",
                  "bin/busybox", "initramfs-virtio-amd64.cpio.gz",
                  "busybox initramfs whose /init loads linux-amd64's virtio-mmio, "
                  "virtio-blk, virtio-rng, virtio-net and ext4 modules, reports and powers off",
                  modules=VIRTIO_MODULES, kernel_image="linux-amd64"),
    )
}


# ---------------------------------------------------------------------------
# Cache layout


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/pyaxvisor/images``, or ``~/.cache/pyaxvisor/images``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG spec asks. The directory is not
    created here; :func:`fetch` creates it.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "pyaxvisor" / "images"


#: The image names are Debian's architecture names (arm64, amd64, riscv64), as the cached
#: files are named; each is also accepted by the architecture as pyaxvisor spells it
#: (``--arch``, ``pyaxvisor-system-ARCH``): these aliases.
ALIASES: dict[str, str] = {
    "linux-x86_64": "linux-amd64", "initramfs-x86_64": "initramfs-amd64",
    "linux-aarch64": "linux-arm64", "initramfs-aarch64": "initramfs-arm64",
    "u-boot-aarch64": "u-boot-arm64", "initramfs-virtio-aarch64": "initramfs-virtio-arm64",
    "initramfs-virtio-x86_64": "initramfs-virtio-amd64",
}


def canonical(name: str) -> str:
    """The image name behind an alias of :data:`ALIASES` (other names unchanged)."""
    return ALIASES.get(name, name)


def aliases_of(name: str) -> list[str]:
    """The other names image ``name`` is accepted by (``linux-amd64``: ``linux-x86_64``)."""
    return [alias for alias, target in ALIASES.items() if target == canonical(name)]


def spec(name: str) -> ImageSpec:
    """The :class:`ImageSpec` called ``name`` (or an alias of it); an unknown name lists
    the known ones."""
    try:
        return IMAGES[canonical(name)]
    except KeyError:
        raise ImageFetchError(
            f"unknown image {name!r}; known images: {', '.join(sorted(IMAGES))}") from None


def image_path(name: str) -> Path:
    """Where image ``name`` lives once fetched (it may not exist yet)."""
    return cache_root() / spec(name).filename


def metadata_path(name: str) -> Path:
    """The ``<name>.json`` written next to the image."""
    spec(name)
    return cache_root() / f"{canonical(name)}.json"


def metadata(name: str) -> dict[str, Any] | None:
    """The metadata of a complete cached image, or ``None`` when it is not (fully) there."""
    image, meta = image_path(name), metadata_path(name)
    try:
        info = json.loads(meta.read_text())
        size = image.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("size") != size:
        return None
    return info


# ---------------------------------------------------------------------------
# Fetching


def fetch(name: str, *, refresh: bool = False, log: Log = print) -> Path:
    """Make image ``name`` ready in the cache and return its path.

    A second call finds it in the cache and runs no command at all; ``refresh=True``
    fetches it again (the new file replaces the old one atomically).
    """
    name = canonical(name)
    image = spec(name)
    root = cache_root()
    with cache_lock(root, name):
        final = root / image.filename
        if not refresh:
            info = metadata(name)
            if info is not None and _outdated(image, info, log):
                info = None
            if info is not None:
                log(f"images: {name}: cached ({info['package']} {info['version']}) at {final}")
                return final
        _remove_leftovers(root, name)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        try:
            data, info = _BUILDERS[image.kind](image, work, log)
            private = _private_apt(image.arch)
            if private is not None:
                info["apt_source"] = private.sources_line().strip()
            info = {
                "name": name,
                "file": image.filename,
                "description": image.description,
                **info,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            # Drop the old metadata first: from here until the new one is in place the
            # image does not count as present.
            metadata_path(name).unlink(missing_ok=True)
            _put(work, final, data)
            _put(work, metadata_path(name), (json.dumps(info, indent=2) + "\n").encode())
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"images: {name}: ready at {final} ({info['package']} {info['version']}, "
            f"{len(data)} bytes, {time.monotonic() - started:.1f} s)")
        return final


def fetch_all(names: Iterable[str] | None = None, *, refresh: bool = False,
              log: Log = print) -> dict[str, Path]:
    """:func:`fetch` each of ``names`` (all of :data:`IMAGES` when ``None``), in order."""
    wanted = list(IMAGES) if names is None else list(names)
    for name in wanted:  # reject a bad name before downloading anything
        spec(name)
    return {name: fetch(name, refresh=refresh, log=log) for name in wanted}


@contextlib.contextmanager
def cache_lock(root: Path, name: str) -> Iterator[None]:
    """Hold the exclusive lock ``root/.<name>.lock`` (other processes fetching the same
    thing wait); a cache that cannot be used is an :class:`ImageFetchError`."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ImageFetchError(f"cannot use the image cache {root}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _outdated(image: ImageSpec, info: dict[str, Any], log: Log) -> bool:
    """Whether a cached initramfs holds modules of another kernel than the one now
    cached as its ``kernel_image``, was built for another list of wanted modules than
    ``image.modules``, or has an ``/init`` older than :data:`INIT_VERSION` (each needs
    it rebuilt)."""
    if not image.kernel_image:
        return False
    if info.get("init_version") != INIT_VERSION:
        log(f"images: {image.name}: its /init is version {info.get('init_version', 1)}, "
            f"now {INIT_VERSION}; building it again")
        return True
    if info.get("wanted_modules") != list(image.modules):
        log(f"images: {image.name}: built for the modules {info.get('wanted_modules')}, "
            f"now {list(image.modules)}; building it again")
        return True
    kernel = metadata(image.kernel_image)
    if kernel is None or (kernel.get("package"), kernel.get("version")) == \
            (info.get("kernel_package"), info.get("kernel_version")):
        return False
    log(f"images: {image.name}: its modules are from {info.get('kernel_package')} "
        f"{info.get('kernel_version')}, {image.kernel_image} is now {kernel.get('package')} "
        f"{kernel.get('version')}; building it again")
    return True


def _remove_leftovers(root: Path, name: str) -> None:
    """Remove work directories of interrupted fetches (we hold this image's lock)."""
    for path in root.glob(f".tmp-{name}-*"):
        shutil.rmtree(path, ignore_errors=True)


def _put(work: Path, final: Path, data: bytes) -> None:
    """Write ``data`` in ``work`` and move it to ``final`` in one atomic rename."""
    tmp = work / (final.name + ".part")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, final)


def _fetch_file(image: ImageSpec, work: Path, log: Log) -> tuple[bytes, dict[str, Any]]:
    _ensure_arch(image.arch, log)
    deb = _download(image.apt_name, work, log)
    fields = _deb_fields(deb)
    member, data = _extract(deb, image.member, fields)
    return data, {**_origin(fields), "member": member}


def _fetch_kernel(image: ImageSpec, work: Path, log: Log) -> tuple[bytes, dict[str, Any]]:
    _ensure_arch(image.arch, log)
    meta = _package_fields(image.apt_name, log)
    package = kernel_package(meta.get("Depends", ""), image.package)
    log(f"images: {image.name}: {image.package} {meta.get('Version', '?')} -> {package}")
    deb = _download(_apt_name(package, image.arch), work, log)
    fields = _deb_fields(deb)
    member, data = _extract(deb, image.member, fields)
    release = re.sub(r"^vmlinu[xz]-", "", member.rsplit("/", 1)[-1])
    return data, {
        **_origin(fields),
        "member": member,
        "metapackage": image.package,
        "metapackage_version": meta.get("Version", ""),
        "kernel_release": release,
        **check_kernel(data, image.arch),
    }


def _fetch_initramfs(image: ImageSpec, work: Path, log: Log) -> tuple[bytes, dict[str, Any]]:
    _ensure_arch(image.arch, log)
    deb = _download(image.apt_name, work, log)
    fields = _deb_fields(deb)
    _member, busybox = _extract(deb, image.member, fields)
    _check_elf(busybox, image.arch, f"{fields.get('Package')} {image.member}")
    available = busybox_applets(busybox)
    applets = BUSYBOX_APPLETS
    if available is not None:
        missing = [a for a in BUSYBOX_APPLETS if a not in available]
        needed = [a for a in missing if a in REQUIRED_APPLETS]
        if needed:
            raise ImageFetchError(
                f"{fields.get('Package')} {fields.get('Version')}: busybox lacks the applets "
                f"{', '.join(needed)} that the initramfs /init needs")
        if missing:
            log(f"images: {image.name}: busybox has no {', '.join(missing)}; no links for them")
        applets = tuple(a for a in BUSYBOX_APPLETS if a in available)
    modules: list[tuple[str, bytes]] = []
    extra: dict[str, Any] = {}
    if image.modules:
        if "insmod" not in applets:
            raise ImageFetchError(f"{fields.get('Package')} {fields.get('Version')}: busybox "
                                  "has no insmod applet to load the kernel modules with")
        modules, extra = _kernel_modules(image, work, log)
        extra["init_version"] = INIT_VERSION
    return build_initramfs(busybox, applets, modules), {
        **_origin(fields),
        "member": image.member,
        "format": "newc cpio, gzip",
        "marker": USERSPACE_MARKER,
        "cmdline_param": CMD_PARAM,
        "applets": list(applets),
        **extra,
    }


def _kernel_modules(image: ImageSpec, work: Path, log: Log
                    ) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """``image.modules`` and what they need, in load order, as (name, plain ELF), from
    the package of the cached ``image.kernel_image`` (fetched first if need be); and
    the metadata that says so.

    The package is read twice as a stream: once for every module's ``.modinfo`` (the
    package has no ``modules.dep``), once for the modules wanted.
    """
    fetch(image.kernel_image, log=log)
    kernel = metadata(image.kernel_image)
    if kernel is None or not kernel.get("package") or not kernel.get("kernel_release"):
        raise ImageFetchError(f"{image.name}: the {image.kernel_image} image in the cache "
                              "has no usable metadata (fetch it again with refresh)")
    package, release = kernel["package"], kernel["kernel_release"]
    deb = _download(_apt_name(package, image.arch), work, log)
    fields = _deb_fields(deb)
    if fields.get("Version") != kernel.get("version"):
        raise ImageFetchError(
            f"{image.name}: apt now has {package} {fields.get('Version')}, but the cached "
            f"{image.kernel_image} is version {kernel.get('version')}; their modules would "
            f"not load into it; fetch {image.kernel_image} again (refresh) first")

    def ours(path: str) -> bool:
        return release in (module_release(path), builtin_list_release(path))

    infos: dict[str, ModuleInfo] = {}
    builtin: set[str] = set()

    def read_info(path: str, data: bytes) -> bool:
        if builtin_list_release(path) is not None:
            builtin.update(parse_builtin(data))
            return False
        try:
            info = module_info(path, decompress_module(path, data))
        except ModuleTooLargeError as exc:
            log(f"images: {image.name}: passing by {exc}")
            return False
        infos.setdefault(info.name, info)
        return False

    log(f"images: {image.name}: reading the modules of {package} {fields.get('Version')}")
    _scan_deb(deb, fields, ours, read_info, max_size=MAX_MODULE_SIZE)
    if not infos:
        raise ImageFetchError(f"{package} {fields.get('Version')} has no modules for "
                              f"kernel {release} (under lib/modules/{release}/kernel)")
    order, unresolved = load_order(image.modules, infos, builtin)
    built_in = builtin_roots(image.modules, infos, builtin)
    if built_in:
        log(f"images: {image.name}: built into {release}, no module needed: "
            f"{' '.join(built_in)}")
    for name in order:
        if not infos[name].vermagic.startswith(release + " "):
            raise ImageFetchError(f"{package}: module {name} is built for "
                                  f"{infos[name].vermagic!r}, not kernel {release}")
    paths = {infos[name].path: name for name in order}
    plain: dict[str, bytes] = {}
    total = 0

    def keep(path: str, data: bytes) -> bool:
        nonlocal total
        plain[paths[path]] = decompress_module(path, data)
        total += len(plain[paths[path]])
        if total > MAX_MODULES_TOTAL:
            raise ImageFetchError(f"{image.name}: the modules {', '.join(order)} come to "
                                  f"more than {MAX_MODULES_TOTAL} bytes")
        return len(plain) == len(paths)

    _scan_deb(deb, fields, lambda path: path in paths, keep, max_size=MAX_MODULE_SIZE)
    missing = [name for name in order if name not in plain]
    if missing:
        raise ImageFetchError(f"{package}: the modules {', '.join(missing)} vanished "
                              "between two reads of the package")
    log(f"images: {image.name}: modules in load order: {' '.join(order)}")
    return [(name, plain[name]) for name in order], {
        "kernel_package": package,
        "kernel_version": fields.get("Version", ""),
        "kernel_release": release,
        "wanted_modules": list(image.modules),
        "modules": order,
        "builtin_modules": built_in,
        "module_files": [infos[name].path for name in order],
        "unresolved_softdeps": unresolved,
    }


_BUILDERS: dict[str, Callable[[ImageSpec, Path, Log], tuple[bytes, dict[str, Any]]]] = {
    "file": _fetch_file,
    "kernel": _fetch_kernel,
    "initramfs": _fetch_initramfs,
}


def _origin(fields: dict[str, str]) -> dict[str, Any]:
    return {
        "package": fields.get("Package", ""),
        "version": fields.get("Version", ""),
        "architecture": fields.get("Architecture", ""),
        "source": fields.get("Source", fields.get("Package", "")),
    }


# ---------------------------------------------------------------------------
# apt and dpkg


def _apt_name(package: str, arch: str) -> str:
    return package if arch == "all" else f"{package}:{arch}"


def _private_apt(arch: str) -> PrivateApt | None:
    """The private apt that serves ``arch`` (riscv64), or ``None`` for the host's apt."""
    return private_apt(arch, cache_root().parent)


def _private_apt_of(apt_name: str) -> PrivateApt | None:
    """The private apt that serves ``pkg:arch``, or ``None`` for the host's apt."""
    _package, colon, arch = apt_name.rpartition(":")
    return _private_apt(arch) if colon else None


_updated = False


def _apt_update(log: Log, why: str) -> None:
    global _updated
    log(f"images: {why}; running apt-get update")
    if os.geteuid() != 0:
        raise ImageFetchError(f"{why}; run `apt-get update` as root, then fetch again")
    _run(["apt-get", "update"], "apt-get update")
    _updated = True


def _ensure_arch(arch: str, log: Log) -> None:
    """Make packages of ``arch`` available to apt, adding the architecture if needed
    (or, for an architecture of a private apt, making its package lists fresh)."""
    if arch == "all":
        return
    private = _private_apt(arch)
    if private is not None:
        private.ensure_fresh(log)
        return
    native = _run(["dpkg", "--print-architecture"], "dpkg").strip()
    if arch == native:
        return
    foreign = _run(["dpkg", "--print-foreign-architectures"], "dpkg").split()
    if arch in foreign:
        return  # already added; _package_fields updates the lists if apt lacks them
    command = f"dpkg --add-architecture {arch} && apt-get update"
    if os.geteuid() != 0:
        raise ImageFetchError(
            f"{arch} packages need the {arch} architecture in dpkg and apt; as root run: "
            f"{command}")
    log(f"images: adding the {arch} architecture to dpkg and apt ({command})")
    _run(["dpkg", "--add-architecture", arch], "dpkg --add-architecture")
    _apt_update(log, f"apt needs the {arch} package lists")


def _package_fields(apt_name: str, log: Log) -> dict[str, str]:
    """The candidate version's control fields of ``apt_name``, as apt knows them."""
    private = _private_apt_of(apt_name)
    if private is not None:
        out = private.show(apt_name, log)
    else:
        argv = ["apt-cache", "show", "--no-all-versions", apt_name]
        try:
            out = _run(argv, f"looking up {apt_name}")
        except ImageFetchError:
            if _updated:
                raise
            _apt_update(log, f"apt does not know {apt_name}")
            out = _run(argv, f"looking up {apt_name}")
    fields = parse_control(out)
    if not fields:
        raise ImageFetchError(f"apt has no installable version of {apt_name}")
    return fields


#: Makes a progress display for one download: ``(package, expected bytes or None)`` →
#: a context manager giving ``report(bytes so far)`` (called from a watcher thread).
DownloadProgress = Callable[[str, "int | None"],
                            contextlib.AbstractContextManager[Callable[[int], None]]]
_progress: contextvars.ContextVar[DownloadProgress | None] = contextvars.ContextVar(
    "pyaxvisor_download_progress", default=None)


@contextlib.contextmanager
def download_progress(factory: DownloadProgress) -> Iterator[None]:
    """Within the block, each package download of this thread shows its progress
    through ``factory`` (the command line's progress bars; nothing by default)."""
    token = _progress.set(factory)
    try:
        yield
    finally:
        _progress.reset(token)


def _download(apt_name: str, dest: Path, log: Log) -> Path:
    """``apt-get download`` one package into ``dest`` and return the ``.deb``, showing
    its progress when :func:`download_progress` asks for it (the expected size is the
    package's ``Size`` field, when apt knows it)."""
    log(f"images: downloading {apt_name}")
    progress = _progress.get()
    if progress is None:
        return _download_into(apt_name, dest, log)
    try:
        size = _package_fields(apt_name, log).get("Size", "")
    except ImageFetchError:
        size = ""  # the download reports what apt cannot find
    total = int(size) if size.isdigit() else None
    with progress(apt_name, total) as report, watch_growth(dest, report):
        return _download_into(apt_name, dest, log)


def _download_into(apt_name: str, dest: Path, log: Log) -> Path:
    before = set(dest.glob("*.deb"))
    private = _private_apt_of(apt_name)
    if private is not None:
        private.download(apt_name, dest, log)
    else:
        argv = ["apt-get", "download", apt_name]
        try:
            _run(argv, f"downloading {apt_name}", cwd=dest)
        except ImageFetchError:
            if _updated:
                raise
            # Stale lists point at files the archive no longer has; refresh them once.
            _apt_update(log, f"downloading {apt_name} failed")
            _run(argv, f"downloading {apt_name}", cwd=dest)
    debs = sorted(set(dest.glob("*.deb")) - before)
    if len(debs) != 1:
        raise ImageFetchError(f"apt-get download {apt_name} left {len(debs)} .deb files")
    return debs[0]


def _deb_fields(deb: Path) -> dict[str, str]:
    return parse_control(_run(["dpkg-deb", "--field", str(deb)], f"reading {deb.name}"))


def _extract(deb: Path, pattern: str, fields: dict[str, str]) -> tuple[str, bytes]:
    """The first regular file of ``deb``'s data whose path matches ``pattern``.

    The data archive is streamed out of ``dpkg-deb --fsys-tarfile`` and read as it
    comes, so nothing else of the package (a kernel's modules) is written to disk.
    """
    what = f"{fields.get('Package', deb.name)} {fields.get('Version', '')}".strip()
    found: list[tuple[str, bytes]] = []

    def take(path: str, data: bytes) -> bool:
        found.append((path, data))
        return True  # stop: the rest of the archive is not needed

    _scan_deb(deb, fields, lambda path: fnmatch.fnmatchcase(path, pattern), take)
    if not found:
        raise ImageFetchError(f"package {what} has no file /{pattern}")
    return found[0]


def _scan_deb(deb: Path, fields: dict[str, str], wanted: Callable[[str], bool],
              visit: Callable[[str, bytes], bool], *,
              max_size: int = 256 << 20) -> None:
    """Call ``visit(path, data)`` on each regular file of ``deb``'s data whose path
    (no leading ``/`` or ``./``) is ``wanted``, in archive order, until it returns true.

    The data archive is streamed from ``dpkg-deb --fsys-tarfile``, never written to
    disk; a wanted member that is not a regular file, or larger than ``max_size``
    bytes, is an :class:`ImageFetchError`.
    """
    what = f"{fields.get('Package', deb.name)} {fields.get('Version', '')}".strip()
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                    stdout=subprocess.PIPE, stderr=err)
        except FileNotFoundError:
            raise ImageFetchError("dpkg-deb not found; images need dpkg") from None
        stopped = read_all = False
        try:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for entry in tar:
                    path = entry.name.removeprefix("./").lstrip("/")
                    if not wanted(path):
                        continue
                    if not entry.isfile():
                        raise ImageFetchError(
                            f"{what}: {path} is not a regular file in the package")
                    if entry.size > max_size:
                        raise ImageFetchError(f"{what}: {path} is {entry.size} bytes, more "
                                              f"than the {max_size} accepted")
                    handle = tar.extractfile(entry)
                    assert handle is not None
                    if visit(path, handle.read()):
                        stopped = True
                        break
            read_all = not stopped
        except tarfile.TarError as exc:
            proc.kill()
            proc.wait()
            err.seek(0)
            raise ImageFetchError(f"{what}: cannot read the package data ({exc}):\n"
                                  f"{_tail(err.read().decode(errors='replace'))}") from exc
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            if not read_all and proc.poll() is None:
                proc.kill()  # stopped early, or failed: the rest is not needed
            code = proc.wait()
        if code != 0 and not stopped:
            err.seek(0)
            raise ImageFetchError(f"dpkg-deb --fsys-tarfile {deb.name} failed ({code}):\n"
                                  f"{_tail(err.read().decode(errors='replace'))}")


def kernel_package(depends: str, metapackage: str = "linux-image") -> str:
    """The ``linux-image-<version>-<flavour>`` package in a metapackage's ``Depends``."""
    for clause in depends.split(","):
        for alternative in clause.split("|"):
            name = alternative.strip().split(" ", 1)[0].split("(", 1)[0].split(":", 1)[0]
            if re.fullmatch(r"linux-image-\d[\w.+~-]*", name) and not name.endswith("-dbg"):
                return name
    raise ImageFetchError(
        f"{metapackage}: no linux-image-<version> package among its dependencies "
        f"({depends or 'none'})")


# ---------------------------------------------------------------------------
# Checks on what came out of a package

_ELF_MACHINES = {"arm64": 183, "amd64": 62, "riscv64": 243}


def _check_elf(data: bytes, arch: str, what: str) -> None:
    if data[:4] != b"\x7fELF":
        raise ImageFetchError(f"{what} is not an ELF file")
    machine = int.from_bytes(data[18:20], "little")
    if arch in _ELF_MACHINES and machine != _ELF_MACHINES[arch]:
        raise ImageFetchError(f"{what} is an ELF for machine {machine}, not {arch}")


def check_kernel(data: bytes, arch: str) -> dict[str, Any]:
    """Check a Debian ``vmlinuz`` is a kernel for ``arch``; describe its format."""
    if arch == "arm64":
        # Debian's signed arm64 kernels are a raw Image with an EFI stub (PE "MZ" header);
        # a gzip'd Image (what unsigned builds used to ship) is accepted too.
        compression = "gzip" if data[:2] == b"\x1f\x8b" else "none"
        head = data[:64]
        if compression == "gzip":
            try:
                head = zlib.decompressobj(31).decompress(data, 64)
            except zlib.error as exc:
                raise ImageFetchError(f"the arm64 vmlinuz does not decompress: {exc}") from exc
        if len(head) < 64 or head[0x38:0x3C] != b"ARM\x64":
            raise ImageFetchError("the arm64 vmlinuz holds no arm64 Image (no ARM\\x64 magic)")
        return {"compression": compression, "format": "arm64 Image",
                "efi_stub": head[:2] == b"MZ",
                "image_size": int.from_bytes(head[16:24], "little"),
                "text_offset": int.from_bytes(head[8:16], "little")}
    if arch == "riscv64":
        return _check_riscv_kernel(data)
    if arch == "amd64":
        if data[0x202:0x206] != b"HdrS":
            raise ImageFetchError("the amd64 vmlinuz is not a bzImage (no HdrS header)")
        version = int.from_bytes(data[0x206:0x208], "little")
        return {"compression": "bzImage", "format": "bzImage",
                "boot_protocol": f"{version >> 8}.{version & 0xFF:02d}"}
    return {"compression": "gzip" if data[:2] == b"\x1f\x8b" else "none", "format": "unknown"}


def _check_riscv_kernel(data: bytes) -> dict[str, Any]:
    """Check a riscv64 ``vmlinuz`` holds a RISC-V Image (raw, gzip'd or in an EFI zboot
    wrapper with a gzip payload), with the loaders' own header parser."""
    from pyaxvisor.loaders.compression import decompress, is_zboot
    from pyaxvisor.loaders.image import ImageError
    from pyaxvisor.loaders.linux_image import parse_riscv_header

    if data[:2] == b"\x1f\x8b":
        compression = "gzip"
    elif is_zboot(data):  # "zimg" at 4; the payload's compression is named at 24
        compression = "zboot-" + data[24:56].split(b"\0", 1)[0].decode("ascii", "replace")
    else:
        compression = "none"
    try:
        image = decompress(data, path="the riscv64 vmlinuz")
        header = parse_riscv_header(image, path="the riscv64 vmlinuz")
    except ImageError as exc:
        raise ImageFetchError(f"the riscv64 vmlinuz holds no RISC-V Image: {exc}") from exc
    return {"compression": compression, "format": "RISC-V Image",
            "efi_stub": image[:2] == b"MZ",
            "image_size": header.image_size,
            "text_offset": header.text_offset,
            "header_version": f"{header.version >> 16}.{header.version & 0xFFFF}"}


def busybox_applets(binary: bytes) -> frozenset[str] | None:
    """The applet names compiled into a busybox binary, read from its name table.

    Busybox keeps its applet names sorted in one NUL-separated string that starts with
    ``[`` and ``[[``; ``None`` when the table cannot be found.
    """
    start = binary.find(b"[\x00[[\x00")
    if start < 0:
        return None
    end = binary.find(b"\x00\x00", start)
    names = binary[start:end].split(b"\x00")
    return frozenset(n.decode("ascii", "replace") for n in names if n)


# ---------------------------------------------------------------------------
# The newc cpio format


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc cpio archive.

    ``mode`` carries the file type bits (``stat.S_IFREG`` ...). ``data`` is a regular
    file's contents or a symlink's target; ``rdev`` is a device node's (major, minor).
    """

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0
    mtime: int = 0

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> CpioEntry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return cls(name, stat.S_IFCHR | perm, rdev=(major, minor))


NEWC_MAGIC = b"070701"
NEWC_TRAILER = "TRAILER!!!"


def _pad4(n: int) -> int:
    return -n % 4


def _newc_member(name: str, fields: list[int], data: bytes) -> bytes:
    encoded = name.encode() + b"\x00"
    # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
    # namesize check, each as 8 hex digits.
    header = NEWC_MAGIC + b"".join(b"%08X" % v for v in [*fields[:6], len(data), 0, 0,
                                                          *fields[6:], len(encoded), 0])
    head = header + encoded
    return head + b"\x00" * _pad4(len(head)) + data + b"\x00" * _pad4(len(data))


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A newc (``070701``, "SVR4 no CRC") cpio archive of ``entries``, with its trailer.

    Names are stored as given (relative, no leading ``/``), in order, so parents must
    come before their children. Each entry gets its own inode number and one link.
    """
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        name = entry.name.lstrip("/")
        if not name or name == NEWC_TRAILER:
            raise ValueError(f"bad cpio member name {entry.name!r}")
        for v in (entry.mode, entry.uid, entry.gid, entry.mtime, *entry.rdev):
            if not 0 <= v <= 0xFFFF_FFFF:
                raise ValueError(f"{name}: field {v} does not fit a newc header")
        data = entry.data if stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode) else b""
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        out += _newc_member(name, [ino, entry.mode, entry.uid, entry.gid, nlink, entry.mtime,
                                   *entry.rdev], data)
    out += _newc_member(NEWC_TRAILER, [0, 0, 0, 0, 1, 0, 0, 0], b"")
    return bytes(out)


# ---------------------------------------------------------------------------
# The busybox initramfs

#: The line ``/init`` prints once userspace runs.
USERSPACE_MARKER = "PYAXVISOR-USERSPACE-OK"
#: Kernel command-line parameter holding an optional command for ``/init`` to run.
CMD_PARAM = "pyaxvisor.cmd"

#: Applets linked into ``/bin`` (``busybox --list`` cannot run on the host for a
#: foreign architecture, so the list is fixed; ones the binary lacks are left out).
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh", "ash", "mount", "umount", "echo", "cat", "poweroff", "reboot", "halt", "ls",
    "uname", "dmesg", "grep", "sleep", "mkdir", "rmdir", "rm", "cp", "mv", "ln", "chmod",
    "mknod", "sync", "true", "false", "test", "[", "printf", "wc", "head", "tail", "sed",
    "cut", "tr", "ps", "free", "df", "dd", "hexdump", "od", "date", "env", "hostname",
    "id", "kill", "stty", "setsid", "cttyhack", "mdev", "which", "find", "xargs", "nproc",
    "seq", "md5sum", "sha256sum", "touch", "stat", "readlink", "basename", "dirname",
    "expr", "awk", "vi", "more", "clear", "uptime", "top", "devmem", "insmod", "lsmod",
    "cmp", "blockdev", "switch_root", "ip", "ping", "nc",
)
#: Applets ``/init`` itself cannot do without.
REQUIRED_APPLETS = frozenset({"sh", "mount", "echo", "cat", "grep", "uname", "poweroff"})

# Prints the value of pyaxvisor.cmd in the kernel command line given as $1: the text
# after "pyaxvisor.cmd=" up to the next space, or, when the value starts with a double
# quote (the kernel's own quoting), up to the closing quote.
_CMD_FUNCTION = r"""pyaxvisor_cmd() {
	v=" $1"
	case "$v" in
	*' pyaxvisor.cmd="'*) v=${v#* pyaxvisor.cmd=\"}; v=${v%%\"*} ;;
	*' pyaxvisor.cmd='*) v=${v#* pyaxvisor.cmd=}; v=${v%% *} ;;
	*) v= ;;
	esac
	printf '%s\n' "$v"
}"""

# Runs the kernel command line's pyaxvisor.cmd (between PYAXVISOR-CMD-BEGIN/-END lines),
# then says it powers off and syncs; both inits end with it (after _CMD_FUNCTION).
_RUN_CMD = r"""cmd=$(pyaxvisor_cmd "$(cat /proc/cmdline)")
if [ -n "$cmd" ]; then
	echo "PYAXVISOR-CMD-BEGIN: $cmd"
	sh -c "$cmd"
	echo "PYAXVISOR-CMD-END: status=$?"
fi
echo PYAXVISOR-POWEROFF
sync
"""

#: Version of the ``/init`` of an initramfs with modules; a cached one of another
#: version is built again (see ``_outdated``). Bumped too when :data:`VIRTIO_MODULES` or
#: :data:`BUSYBOX_APPLETS` change (3: virtio_net; ip, ping, nc), so cached images get them.
INIT_VERSION = 3

# Switches to root=<device> when the kernel command line asks for it (see init_script).
_ROOT_SWITCH = r"""c=" $(cat /proc/cmdline) "
case "$c" in
*' pyaxvisor.cmd="'*) post=${c#* pyaxvisor.cmd=\"}; c="${c%% pyaxvisor.cmd=\"*} ${post#*\"}" ;;
esac
root= newinit=/sbin/init rw=ro
for w in $c; do
	case "$w" in
	root=*) root=${w#root=} ;;
	init=*) newinit=${w#init=} ;;
	rw|ro) rw=$w ;;
	esac
done
if [ -n "$root" ]; then
	echo "PYAXVISOR-ROOT: $root"
	i=0
	while [ ! -b "$root" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	mkdir -p /newroot
	if mount -t ext4 -o "$rw" "$root" /newroot && [ -x "/newroot$newinit" ]; then
		umount /sys /proc /dev
		exec switch_root /newroot "$newinit"
	fi
	umount /newroot 2>/dev/null
	echo "PYAXVISOR-ROOT-FAILED: $root"
fi
"""


def init_script(modules: Sequence[str] = ()) -> str:
    """The initramfs ``/init``: mount, report, run ``pyaxvisor.cmd``, power off.

    Output, one item per line: :data:`USERSPACE_MARKER`; ``PYAXVISOR-UNAME: <uname -a>``;
    ``PYAXVISOR-CPUS: <n>`` (``grep -c ^processor /proc/cpuinfo``); then, when the kernel
    command line has ``pyaxvisor.cmd=<command>``, ``PYAXVISOR-CMD-BEGIN: <command>``,
    the command's own output (run by ``sh -c``) and ``PYAXVISOR-CMD-END: status=<n>``;
    finally ``PYAXVISOR-POWEROFF`` and ``poweroff -f``. A command with spaces is
    quoted the kernel's way: ``pyaxvisor.cmd="cat /proc/meminfo"`` (it cannot itself
    contain a double quote). The kernel does not hand a dotted parameter to init, so the
    command is read back from ``/proc/cmdline``.

    With ``modules`` (names, in load order: each after those it needs), ``/init`` first
    loads ``/lib/modules/<name>.ko`` with ``insmod``, one by one, printing
    ``PYAXVISOR-INSMOD-FAILED: <name>`` for one that does not load, then
    ``PYAXVISOR-MODULES: <n loaded>/<n>`` before the marker. A name is a kernel
    module name (letters, digits and ``_``).

    With modules, ``/init`` can also switch to a root filesystem on a disk those modules
    drive: when the kernel command line has ``root=<device>`` (e.g. ``root=/dev/vda``;
    the kernel itself ignores it once an initramfs has ``/init``), it prints
    ``PYAXVISOR-ROOT: <device>``, waits up to 5 s for the device node, mounts it as
    ext4 on ``/newroot`` (read-only unless the command line says ``rw``, as the kernel
    would) and ``switch_root``s to ``init=<path>`` (default ``/sbin/init``), which then
    owns the machine. If that fails it prints ``PYAXVISOR-ROOT-FAILED: <device>`` and
    carries on as without ``root=``. ``root=`` and ``init=`` inside a quoted
    ``pyaxvisor.cmd`` are not taken for the kernel's.
    """
    for name in modules:
        if not re.fullmatch(r"\w+", name):
            raise ValueError(f"bad kernel module name {name!r}")
    load = "".join(f"""if insmod /lib/modules/{name}.ko; then loaded=$((loaded + 1)); \
else echo "PYAXVISOR-INSMOD-FAILED: {name}"; fi
""" for name in modules)
    if modules:
        load = f"loaded=0\n{load}echo \"PYAXVISOR-MODULES: $loaded/{len(modules)}\"\n"
        load += _ROOT_SWITCH
    return f"""#!/bin/sh
# pyaxvisor test initramfs: report that userspace runs, run one command, power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
{load}{_CMD_FUNCTION}
echo {USERSPACE_MARKER}
echo "PYAXVISOR-UNAME: $(uname -a)"
echo "PYAXVISOR-CPUS: $(grep -c ^processor /proc/cpuinfo)"
{_RUN_CMD}poweroff -f
reboot -f
while :; do sleep 3600; done
"""


def initramfs_entries(busybox: bytes, applets: Iterable[str] = BUSYBOX_APPLETS,
                      modules: Sequence[tuple[str, bytes]] = ()) -> list[CpioEntry]:
    """The members of the initramfs: directories, device nodes, busybox, links, /init;
    with ``modules`` ((name, ELF) in load order) also ``/lib/modules/<name>.ko``."""
    entries = [CpioEntry.directory(d) for d in ("bin", "dev", "proc", "sys", "tmp", "root",
                                                "mnt")]
    entries += [
        CpioEntry.symlink("sbin", "bin"),
        CpioEntry.char_device("dev/console", 5, 1),
        CpioEntry.char_device("dev/null", 1, 3, 0o666),
        CpioEntry.file("bin/busybox", busybox, 0o755),
    ]
    entries += [CpioEntry.symlink(f"bin/{a}", "busybox") for a in applets if a != "busybox"]
    if modules:
        entries += [CpioEntry.directory("lib"), CpioEntry.directory("lib/modules")]
        entries += [CpioEntry.file(f"lib/modules/{name}.ko", data) for name, data in modules]
    script = init_script([name for name, _data in modules])
    entries.append(CpioEntry.file("init", script.encode(), 0o755))
    return entries


def build_initramfs(busybox: bytes, applets: Iterable[str] = BUSYBOX_APPLETS,
                    modules: Sequence[tuple[str, bytes]] = ()) -> bytes:
    """The gzip-compressed newc initramfs around ``busybox`` (reproducible: mtime 0),
    with ``modules`` as :func:`initramfs_entries` takes them."""
    return gzip.compress(newc_archive(initramfs_entries(busybox, applets, modules)), 9,
                         mtime=0)


def newc_files(archive: bytes) -> dict[str, bytes]:
    """The regular files of a newc cpio archive (as :func:`newc_archive` writes them),
    by name; other members are skipped. A malformed archive is a :class:`ValueError`."""
    files: dict[str, bytes] = {}
    pos = 0
    while True:
        header = archive[pos:pos + 110]
        if len(header) < 110 or header[:6] != NEWC_MAGIC:
            raise ValueError(f"no newc cpio header at offset {pos}")
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_end = pos + 110 + namesize
        name = archive[pos + 110:name_end - 1].decode()
        start = name_end + _pad4(name_end)
        if name == NEWC_TRAILER:
            return files
        if start + size > len(archive):
            raise ValueError(f"cpio member {name!r} runs past the end of the archive")
        if stat.S_ISREG(mode):
            files[name] = archive[start:start + size]
        pos = start + size + _pad4(size)


# ---------------------------------------------------------------------------
# A busybox root filesystem tree, for a disk made with ``mke2fs -d``

#: The line the root filesystem's ``/sbin/init`` prints once it runs.
ROOT_MARKER = "PYAXVISOR-ROOT-OK"


def root_init_script() -> str:
    """``/sbin/init`` of :func:`make_root_tree`: mount proc, sysfs and devtmpfs, print
    :data:`ROOT_MARKER`, ``PYAXVISOR-ROOT-MOUNTS-BEGIN``, ``/proc/mounts`` and
    ``PYAXVISOR-ROOT-MOUNTS-END``, run ``pyaxvisor.cmd`` as the initramfs ``/init``
    does (``PYAXVISOR-CMD-BEGIN``/``-END`` lines, see :func:`init_script`), then
    ``sync``, remount ``/`` read-only (so the next mount needs no journal recovery)
    and ``poweroff -f``."""
    return f"""#!/bin/sh
# pyaxvisor test root filesystem: report, run one command, power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
{_CMD_FUNCTION}
echo {ROOT_MARKER}
echo PYAXVISOR-ROOT-MOUNTS-BEGIN
cat /proc/mounts
echo PYAXVISOR-ROOT-MOUNTS-END
{_RUN_CMD}mount -o remount,ro /
poweroff -f
reboot -f
while :; do sleep 3600; done
"""


def make_root_tree(dest: Path, initramfs: str = "initramfs-virtio-arm64", *,
                   log: Log = print) -> Path:
    """Fill the empty or missing directory ``dest`` with a small root filesystem for
    ``mke2fs -d``: ``/bin/busybox`` with a link per applet, ``/sbin/init`` (see
    :func:`root_init_script`) and empty ``dev proc sys tmp root mnt``.

    The busybox binary and its applet list come from the cached (fetched if need be)
    busybox initramfs image ``initramfs``, so nothing is downloaded twice and the
    binary is of that image's architecture. Returns ``dest``.
    """
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest}: not empty")
    path = fetch(initramfs, log=log)
    info = metadata(initramfs) or {}
    try:
        busybox = newc_files(gzip.decompress(path.read_bytes()))["bin/busybox"]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise ImageFetchError(f"{path}: no busybox to take ({exc!r}); "
                              f"fetch {initramfs} again (refresh)") from exc
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "root", "mnt"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "bin/busybox").write_bytes(busybox)
    (dest / "bin/busybox").chmod(0o755)
    for applet in info.get("applets", BUSYBOX_APPLETS):
        if applet != "busybox":
            (dest / "bin" / applet).symlink_to("busybox")
    (dest / "sbin/init").write_text(root_init_script())
    (dest / "sbin/init").chmod(0o755)
    return dest

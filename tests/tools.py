"""Programs the tests run, from the system or fetched from Debian without installing.

Some tests run programs that a fresh Debian machine lacks: the cross binutils that
assemble the test guests (``aarch64-linux-gnu-as``, ``riscv64-linux-gnu-ld``...),
``dtc`` (device-tree-compiler), ``cpio`` and ``qemu-system-riscv64`` (qemu-system-misc).
:func:`tool` gives the path of one: the system's when it is on ``PATH``, else a copy
fetched from Debian the way ``pyaxvisor images fetch`` gets guest images (``apt-get
download``, then the package's data archive read through ``dpkg-deb``), with no
install, no root and nothing written outside the cache. A tool that cannot be had is a
test failure naming the tool, the Debian package and the reason, never a skip.

The cache is ``$XDG_CACHE_HOME/pyaxvisor/tools`` (``~/.cache/pyaxvisor/tools``)::

    pkg/<package>/        the package's files that are kept (see below)
    pkg/<package>.json    written last (package, version, .deb size and SHA-256, bytes
                          kept): a package counts as fetched only with it
    bin/<tool>            a /bin/sh wrapper that runs the program with the fetched
                          libraries on LD_LIBRARY_PATH; written once the program ran
    shims-<hash>/<tool>   for tests that run a tool by name (:func:`put_shims_on_path`)
    apt/                  a private apt for the host's own release (below)
    .lock                 serialises fetches between test processes

What is fetched for a tool: its package and, recursively, every library package
(``lib*``) that a fetched package's ``Depends``/``Pre-Depends`` name (first
alternative) and that dpkg says is not installed on the host; the host's own copy
is used where it is. Other dependencies are not needed to run the programs
(``binutils-common``: translations; ``qemu-system-common``: helper programs;
``qemu-system-data``: firmware and keymaps, which ``-bios none`` and ``dumpdtb`` do
not load). On a fresh machine of this project's kind that is ``libfdt1`` for dtc and
about twenty libraries for QEMU (libaio1, libcapstone4, libfuse3-3, libibverbs1,
libpmem1, libslirp0, liburing2, libvdeplug2...); libbinutils, libctf0, libjansson4,
libzstd1 and libyaml-0-2 are there already.

Kept of a package: its files outside ``usr/share`` (documentation, manuals,
translations), except for the packages of :data:`ONLY`, of which only the named files
are kept (qemu-system-misc: one of its 200 MB of emulators).

Bounds and checks: a package above :data:`MAX_DEB` bytes is refused; the downloaded
``.deb`` must have the size and SHA-256 of apt's index; ``dpkg-deb --fsys-tarfile``
must exit 0 after its whole data archive was read; the kept files may not add up to
more than the package's ``Installed-Size``; archive members must be relative paths
without ``..`` and symlinks may not leave the package; and the program must then run
its version option (``--version``; ``-v`` for iasl, which refuses ``--version``).
Packages come from the host's apt; one it does not know (no package lists yet, as on a
new container) comes from a private apt configuration for the host's own Debian release
(:class:`pyaxvisor.image_apt.PrivateApt`, no root needed).

Run as ``python tests/tools.py TOOL [ARGS...]`` it fetches TOOL if needed and runs it
(what the shims do).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import posixpath
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyaxvisor.errors import ImageFetchError
from pyaxvisor.image_apt import DEBIAN_KEYRING, PrivateApt, debian_mirror, parse_control, run
from pyaxvisor.images import cache_lock

#: The largest ``.deb`` fetched (qemu-system-misc is about 46 MB).
MAX_DEB = 96 << 20
#: The most packages one tool may need (its own and the libraries it pulls in).
MAX_PACKAGES = 48
#: Wall-clock bound of one apt or dpkg command.
COMMAND_TIMEOUT = 600.0
#: Output of apt that means it does not know the package.
_NOT_FOUND = ("Unable to locate package", "No packages found", "Can't select",
              "has no installation candidate")
#: Output of apt that means the archive could not be reached.
_NO_NETWORK = ("Temporary failure resolving", "Could not resolve", "Could not connect",
               "Failed to fetch", "Network is unreachable", "Connection timed out",
               "Unable to connect", "Connection failed")


@dataclass(frozen=True)
class ToolSpec:
    """Where Debian keeps a program: the package and its path inside (no leading ``/``;
    a glob, since some packages moved their programs to ``/usr``), and the arguments
    that make it print its version and exit 0 (the check that the fetched copy runs)."""

    package: str
    path: str
    version: tuple[str, ...] = ("--version",)


def _binutils(target: str, package: str) -> dict[str, ToolSpec]:
    programs = ("as", "ld", "objcopy", "objdump", "nm", "readelf", "strip")
    return {f"{target}-{p}": ToolSpec(package, f"usr/bin/{target}-{p}") for p in programs}


TOOLS: dict[str, ToolSpec] = {
    **_binutils("aarch64-linux-gnu", "binutils-aarch64-linux-gnu"),
    **_binutils("riscv64-linux-gnu", "binutils-riscv64-linux-gnu"),
    "dtc": ToolSpec("device-tree-compiler", "usr/bin/dtc"),
    "cpio": ToolSpec("cpio", "*bin/cpio"),
    "qemu-system-riscv64": ToolSpec("qemu-system-misc", "usr/bin/qemu-system-riscv64"),
    "mke2fs": ToolSpec("e2fsprogs", "*sbin/mke2fs"),
    "debugfs": ToolSpec("e2fsprogs", "*sbin/debugfs"),
    "ip": ToolSpec("iproute2", "*bin/ip"),
    "e2fsck": ToolSpec("e2fsprogs", "*sbin/e2fsck"),
    "iasl": ToolSpec("acpica-tools", "usr/bin/iasl", ("-v",)),
    "gdb-multiarch": ToolSpec("gdb-multiarch", "usr/bin/gdb-multiarch"),
}

#: Packages of which only these files are kept (globs).
ONLY: dict[str, tuple[str, ...]] = {"qemu-system-misc": ("usr/bin/qemu-system-riscv64",)}

Log = Callable[[str], None]


class ToolError(Exception):
    """A program the tests need is not on ``PATH`` and could not be fetched."""


class _PackageError(Exception):
    """Fetching one Debian package failed (the message says why)."""


def _log(message: str) -> None:
    print(f"tests/tools.py: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------
# Finding a tool


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/pyaxvisor/tools`` (an absolute ``XDG_CACHE_HOME`` only, as the
    XDG spec asks), else ``~/.cache/pyaxvisor/tools``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "pyaxvisor" / "tools"


def _shim_dir() -> Path:
    """The shims of this Python (they name its executable)."""
    digest = hashlib.sha256(sys.executable.encode()).hexdigest()[:12]
    return cache_root() / f"shims-{digest}"


def system_tool(name: str) -> str | None:
    """``name`` on ``PATH``, not counting the shims :func:`put_shims_on_path` added."""
    shims = os.path.realpath(_shim_dir())
    dirs = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep)
            if d and os.path.realpath(d) != shims]
    return shutil.which(name, path=os.pathsep.join(dirs))


def ensure(name: str, *, log: Log = _log) -> str:
    """The path of program ``name``: the system's, or a copy fetched from Debian;
    raises :class:`ToolError` saying why it cannot be had."""
    return system_tool(name) or fetched(name, log=log)


def tool(name: str) -> str:
    """:func:`ensure` for a test: a program that cannot be had fails the test with the
    reason (never a skip)."""
    import pytest

    try:
        return ensure(name)
    except ToolError as exc:
        pytest.fail(str(exc), pytrace=False)


def fetched(name: str, *, log: Log = _log) -> str:
    """The wrapper that runs the Debian copy of ``name``, fetching it if needed."""
    spec = TOOLS.get(name)
    if spec is None:
        raise ToolError(f"{name} is not on PATH, and tests/tools.py knows no Debian package "
                        "that has it")
    root = cache_root()
    wrapper = root / "bin" / name
    if _ready(root, wrapper, spec):
        return str(wrapper)
    try:
        with cache_lock(root, "tools"):
            if not _ready(root, wrapper, spec):
                apt = _Apt(root, log)
                packages = _closure(apt, spec.package)
                roots = [_fetch_package(apt, root, p, fields, log) for p, fields in packages]
                _write_wrapper(name, spec, roots, packages[0][1], wrapper)
    except (_PackageError, OSError) as exc:
        raise ToolError(f"{name} is not on PATH, and it could not be fetched from Debian's "
                        f"{spec.package}: {exc}") from exc
    return str(wrapper)


def _ready(root: Path, wrapper: Path, spec: ToolSpec) -> bool:
    return wrapper.is_file() and (root / "pkg" / f"{spec.package}.json").is_file()


# ---------------------------------------------------------------------------
# apt


def _reason(package: str, exc: ImageFetchError) -> str:
    """What a failed apt command means, with its output."""
    text = str(exc)
    if any(mark in text for mark in _NOT_FOUND):
        why = f"apt knows no package {package} (no such package in this Debian release?)"
    elif any(mark in text for mark in _NO_NETWORK):
        why = "the download failed: no network, or the Debian mirror cannot be reached"
    else:
        why = "apt failed"
    return f"{why}:\n{text}"


class _Apt:
    """The host's apt, and a private apt for the host's release for packages the host's
    apt does not know (no package lists yet)."""

    def __init__(self, root: Path, log: Log) -> None:
        self.root = root
        self.log = log
        self._private: PrivateApt | None = None
        self._by_private: set[str] = set()

    def private(self) -> PrivateApt:
        if self._private is None:
            arch = run(["dpkg", "--print-architecture"], "dpkg", timeout=60).strip()
            keyring = DEBIAN_KEYRING if DEBIAN_KEYRING.is_file() else None
            self._private = PrivateApt(self.root / "apt", arch, debian_mirror(),
                                       _host_release(), keyring=keyring)
            self._private.ensure_fresh(self.log)
        return self._private

    def show(self, package: str) -> dict[str, str]:
        """The control fields of ``package``'s candidate version."""
        try:
            out = run(["apt-cache", "show", "--no-all-versions", package],
                      f"looking up {package}", timeout=COMMAND_TIMEOUT)
        except ImageFetchError:
            out = ""
        if not parse_control(out):
            self.log(f"the host's apt does not know {package}; asking Debian "
                     f"{_host_release()} through a private apt in {self.root / 'apt'}")
            try:
                out = self.private().show(package, self.log)
            except ImageFetchError as exc:
                raise _PackageError(f"{package}: {_reason(package, exc)}") from exc
            self._by_private.add(package)
        fields = parse_control(out)
        if not fields:
            raise _PackageError(f"apt has no installable version of {package}")
        return fields

    def download(self, package: str, dest: Path) -> None:
        """``apt-get download package`` into ``dest`` (from the apt that knew it)."""
        try:
            if package in self._by_private:
                self.private().download(package, dest, self.log)
            else:
                run(["apt-get", "download", package], f"downloading {package}", cwd=dest,
                    timeout=COMMAND_TIMEOUT)
        except ImageFetchError as exc:
            raise _PackageError(f"{package}: {_reason(package, exc)}") from exc


def _host_release() -> str:
    """The host's Debian codename (``/etc/os-release``), or ``stable``."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "stable"
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip().strip('"'):
            return value.strip().strip('"')
    return "stable"


def _installed(package: str) -> bool:
    """Whether dpkg has ``package`` installed on the host."""
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", package],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "installed"


def _depends(fields: dict[str, str]) -> list[str]:
    """The first alternative of each ``Pre-Depends`` and ``Depends`` clause, by name."""
    names = []
    for key in ("Pre-Depends", "Depends"):
        for clause in fields.get(key, "").split(","):
            first = clause.split("|", 1)[0].strip()
            name = first.split(" ", 1)[0].split("(", 1)[0].split(":", 1)[0].strip()
            if name:
                names.append(name)
    return names


def _closure(apt: _Apt, package: str) -> list[tuple[str, dict[str, str]]]:
    """``package`` and the library packages it needs that the host lacks, with their
    control fields (``package`` first)."""
    order: list[tuple[str, dict[str, str]]] = []
    seen = {package}
    todo = [package]
    while todo:
        name = todo.pop(0)
        fields = apt.show(name)
        order.append((name, fields))
        if len(order) > MAX_PACKAGES:
            raise _PackageError(f"{package} needs more than {MAX_PACKAGES} packages the host "
                                f"lacks ({', '.join(n for n, _f in order)}...)")
        for dep in _depends(fields):
            if dep.startswith("lib") and dep not in seen and not _installed(dep):
                seen.add(dep)
                todo.append(dep)
    return order


# ---------------------------------------------------------------------------
# One package


def _fetch_package(apt: _Apt, root: Path, package: str, fields: dict[str, str],
                   log: Log) -> Path:
    """The directory holding ``package``'s kept files, fetching it unless present."""
    pkg_dir = root / "pkg"
    final, stamp = pkg_dir / package, pkg_dir / f"{package}.json"
    if stamp.is_file() and final.is_dir():
        return final
    size = int(fields.get("Size", "0") or 0)
    if not 0 < size <= MAX_DEB:
        raise _PackageError(f"{package} {fields.get('Version', '?')}: apt gives its size as "
                            f"{size} bytes; at most {MAX_DEB} are fetched")
    pkg_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    for stale in pkg_dir.glob(f".tmp-{package}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{package}-", dir=pkg_dir))
    try:
        log(f"fetching Debian's {package} {fields.get('Version', '?')} ({size} bytes)")
        (work / "deb").mkdir()
        apt.download(package, work / "deb")
        debs = list((work / "deb").glob("*.deb"))
        if len(debs) != 1:
            raise _PackageError(f"apt-get download {package} left {len(debs)} .deb files")
        deb = debs[0]
        digest = _check_deb(package, deb, fields)
        kept = _extract(package, deb, work / "files", fields)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work / "files", final)
        info = {"package": package, "version": fields.get("Version", ""), "deb_size": size,
                "deb_sha256": digest, "kept_bytes": kept}
        tmp = work / "stamp.json"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, stamp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _check_deb(package: str, deb: Path, fields: dict[str, str]) -> str:
    """Check the downloaded file against apt's index; its SHA-256."""
    size = deb.stat().st_size
    if size != int(fields["Size"]):
        raise _PackageError(f"{deb.name} has {size} bytes; apt's index says {fields['Size']}")
    digest = hashlib.sha256()
    with open(deb, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    want = fields.get("SHA256", "").strip().lower()
    if want and digest.hexdigest() != want:
        raise _PackageError(f"{deb.name}: SHA-256 {digest.hexdigest()}, apt's index says {want}")
    return digest.hexdigest()


def _keep(package: str, path: str) -> bool:
    only = ONLY.get(package)
    if only is not None:
        return any(fnmatch.fnmatchcase(path, pattern) for pattern in only)
    return not path.startswith("usr/share/")


def _inside(path: str) -> bool:
    """Whether a normalised archive path stays inside the package."""
    return path not in ("", ".", "..") and not path.startswith(("/", "../"))


def _extract(package: str, deb: Path, dest: Path, fields: dict[str, str]) -> int:
    """Write the kept files of ``deb``'s data archive under ``dest``; the bytes kept."""
    limit = int(fields.get("Installed-Size", "0") or 0) * 1024 + (1 << 20)
    dest.mkdir()
    kept = 0
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    path = posixpath.normpath(member.name.removeprefix("./"))
                    if path == "." or not _keep(package, path) or member.isdir():
                        continue
                    if not _inside(path):
                        raise _PackageError(f"{deb.name}: member {member.name!r} is outside "
                                            "the package")
                    target = dest / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if member.issym():
                        link = posixpath.normpath(posixpath.join(posixpath.dirname(path),
                                                                 member.linkname))
                        if member.linkname.startswith("/") or not _inside(link):
                            continue  # e.g. into /etc/alternatives: not needed here
                        os.symlink(member.linkname, target)
                    elif member.islnk():
                        source = dest / posixpath.normpath(member.linkname.removeprefix("./"))
                        if source.is_file():
                            shutil.copy2(source, target)
                    elif member.isfile():
                        kept += member.size
                        if kept > limit:
                            raise _PackageError(f"{deb.name}: the kept files exceed the "
                                                f"package's Installed-Size ({limit} bytes)")
                        handle = tar.extractfile(member)
                        assert handle is not None
                        with open(target, "wb") as out:
                            shutil.copyfileobj(handle, out)
                        os.chmod(target, member.mode & 0o755)
            while proc.stdout.read(1 << 16):  # the archive's padding: let dpkg-deb finish
                pass
        except tarfile.TarError as exc:
            raise _PackageError(f"{deb.name}: cannot read its data archive ({exc})") from exc
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
        if code != 0:
            err.seek(0)
            raise _PackageError(f"dpkg-deb --fsys-tarfile {deb.name} failed with exit status "
                                f"{code}: {err.read().decode(errors='replace').strip()}")
    return kept


# ---------------------------------------------------------------------------
# The wrapper


def _write_wrapper(name: str, spec: ToolSpec, roots: list[Path], fields: dict[str, str],
                   wrapper: Path) -> None:
    """Write ``bin/<name>`` once the fetched program runs its version option."""
    main = roots[0]
    programs = sorted(p for p in main.rglob("*")
                      if fnmatch.fnmatchcase(p.relative_to(main).as_posix(), spec.path))
    if not programs:
        raise _PackageError(f"{spec.package} {fields.get('Version', '')} has no /{spec.path}")
    libs = sorted({str(p.parent) for r in roots for p in r.rglob("*.so*")
                   if p.name.endswith(".so") or ".so." in p.name})
    text = (f"#!/bin/sh\n# {name}: Debian's {spec.package} {fields.get('Version', '')}, "
            "fetched by tests/tools.py\n"
            + (f"LD_LIBRARY_PATH={shlex.quote(os.pathsep.join(libs))}"
               "${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\nexport LD_LIBRARY_PATH\n" if libs else "")
            + f"exec {shlex.quote(str(programs[0]))} \"$@\"\n")
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    tmp = wrapper.with_name(f".{name}.new")
    tmp.write_text(text)
    tmp.chmod(0o755)
    try:
        proc = subprocess.run([str(tmp), *spec.version], capture_output=True, text=True,
                              timeout=60, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _PackageError(f"the fetched {name} does not run: {exc}") from exc
    if proc.returncode != 0:
        asked = " ".join((name, *spec.version))
        raise _PackageError(f"the fetched {name} does not run (`{asked}` exited "
                            f"{proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    os.replace(tmp, wrapper)


# ---------------------------------------------------------------------------
# Shims, for tests that run a tool by name


def put_shims_on_path() -> None:
    """Append to ``PATH`` a directory of shims for the tools of :data:`TOOLS` that the
    system lacks: each runs ``python tests/tools.py TOOL ARGS``, which fetches the
    tool on first use. Tests that look a tool up with ``shutil.which`` and run it by
    name then find it; the system's copy still comes first."""
    missing = [name for name in TOOLS if system_tool(name) is None]
    if not missing:
        return
    shims = _shim_dir()
    shims.mkdir(parents=True, exist_ok=True)
    for name in missing:
        text = (f"#!/bin/sh\nexec {shlex.quote(sys.executable)} "
                f"{shlex.quote(str(Path(__file__).resolve()))} {shlex.quote(name)} \"$@\"\n")
        shim = shims / name
        with contextlib.suppress(OSError):
            if shim.read_text() == text and os.access(shim, os.X_OK):
                continue
        tmp = shims / f".{name}.{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, shim)
    path = os.environ.get("PATH", os.defpath)
    if str(shims) not in path.split(os.pathsep):
        os.environ["PATH"] = path + os.pathsep + str(shims)


def main(argv: list[str]) -> int:
    """``tools.py TOOL [ARGS...]``: run TOOL (fetched if needed) with ARGS."""
    if not argv:
        print("usage: tools.py TOOL [ARGS...]", file=sys.stderr)
        return 2
    try:
        path = ensure(argv[0])
    except ToolError as exc:
        print(f"tests/tools.py: {exc}", file=sys.stderr)
        return 127
    os.execv(path, [path, *argv[1:]])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

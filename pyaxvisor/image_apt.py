"""apt for the image fetcher: running apt and dpkg, and a private apt configuration.

:func:`run` runs one apt or dpkg command for :mod:`pyaxvisor.images` (bounded by
:data:`COMMAND_TIMEOUT`; a failure is an :class:`~pyaxvisor.errors.ImageFetchError`
with the tail of the command's output). :func:`parse_control` reads what
``apt-cache show`` and ``dpkg-deb --field`` print.

:class:`PrivateApt` fetches packages of an architecture the host's Debian release does
not carry (riscv64: Debian 12 has none, Debian 13 "trixie", the current stable, has)
from Debian ``stable`` with an apt configuration of its own, kept in one directory of
the user's cache (``~/.cache/pyaxvisor/apt-riscv64``)::

    sources.list   deb [arch=riscv64 signed-by=<Debian's keyring>] <mirror> stable main
    apt.conf       clears the update hooks of the host's apt.conf.d and APT::Architectures
    status         an empty dpkg status: nothing counts as installed
    lists/ cache/  apt's package lists and binary caches
    updated        written after each successful ``apt-get update``: its time is the
                   lists' age, its text the sources line they came from
    lock           serialises updates (exclusive) against lookups and downloads (shared)

Every command is ``apt-get``/``apt-cache`` with ``-c apt.conf`` and ``-o`` options that
point apt at those files and make ``riscv64`` its only architecture
(:meth:`PrivateApt.options`), so the host's sources, pinning, dpkg status and dpkg
architectures are neither read nor changed, and no step needs root. The host's
``apt.conf.d`` is still read, for its proxy settings. The lists are updated when
missing, older than a day (:data:`MAX_LIST_AGE`), made from another mirror, or when a
package is not found in lists older than :data:`RECENT_UPDATE`.

The mirror is ``$PYAXVISOR_DEBIAN_MIRROR`` when set, else the Debian mirror the host's
own sources use (:func:`system_mirror`), else ``http://deb.debian.org/debian``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from pyaxvisor.errors import ImageFetchError

Log = Callable[[str], None]

#: Wall-clock bound of one apt or dpkg command, a 100 MB kernel download included (apt
#: itself gives up on a connection that stalls for Acquire::http::Timeout, 30 s).
COMMAND_TIMEOUT = 30 * 60


def tail(text: str, lines: int = 12) -> str:
    """The last ``lines`` non-empty lines of ``text``, indented for an error message."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept)


def run(argv: list[str], what: str, *, cwd: Path | None = None,
        timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a dpkg/apt command; return its stdout or raise with the tail of its stderr."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                              timeout=timeout)
    except FileNotFoundError:
        raise ImageFetchError(
            f"{what}: {argv[0]} not found; images come from Debian packages and need "
            "apt and dpkg (a Debian or Ubuntu host)") from None
    except subprocess.TimeoutExpired:
        raise ImageFetchError(
            f"{what}: `{' '.join(map(str, argv))}` did not finish within {timeout:.0f} s "
            "(a slow or stalled download?)") from None
    if proc.returncode != 0:
        detail = tail(proc.stderr) or tail(proc.stdout) or "    (no output)"
        raise ImageFetchError(
            f"{what}: `{' '.join(map(str, argv))}` failed with exit status "
            f"{proc.returncode}:\n{detail}")
    return proc.stdout


def _new_bytes(directory: Path, before: set[Path]) -> int:
    """Bytes in the files under ``directory`` that were not in ``before``."""
    total = 0
    for path in directory.rglob("*"):
        if path in before:
            continue
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


@contextlib.contextmanager
def watch_growth(directory: Path, report: Callable[[int], None], *,
                 interval: float = 0.1) -> Iterator[None]:
    """While the block runs (a download into ``directory``), call ``report`` with the
    bytes of the files that appeared under ``directory`` since it began, from a
    watcher thread every ``interval`` s and once more at the end (on the calling
    thread). ``report`` must be thread-safe and must not raise."""
    import threading

    before = set(directory.rglob("*"))
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(interval):
            report(_new_bytes(directory, before))

    watcher = threading.Thread(target=watch, name="download-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
    report(_new_bytes(directory, before))


def parse_control(text: str) -> dict[str, str]:
    """The first stanza of deb822 control text (``apt-cache show``, ``dpkg-deb -f``)."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and key is not None:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


# ---------------------------------------------------------------------------
# Which mirror

DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: Environment variable naming the Debian mirror of the private apt.
MIRROR_ENV = "PYAXVISOR_DEBIAN_MIRROR"
#: Debian's archive keys; the private sources trust only them when the file exists.
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: Architectures fetched through a private apt, and the Debian suite that has them.
PRIVATE_SUITES: dict[str, str] = {"riscv64": "stable"}

_ONE_LINE = re.compile(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+")


def _debian_uri(uri: str) -> str | None:
    """``uri`` without a trailing ``/`` when it looks like a Debian mirror's root (an
    http(s) URI whose path ends in ``/debian``; not debian-security, not snapshot
    .debian.org's dated archives, not a third-party repository)."""
    uri = uri.rstrip("/")
    return uri if re.fullmatch(r"https?://[^/\s]+(?:/\S*)?/debian", uri) else None


def _sources_uris(path: Path) -> list[str]:
    """The URIs of the enabled ``deb`` entries of a sources file (one-line or deb822)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    if path.suffix != ".sources":
        return [m[1] for line in text.splitlines()
                if (m := _ONE_LINE.match(line.split("#", 1)[0].strip()))]
    uris: list[str] = []
    for stanza in re.split(r"\n\s*\n", text):
        lines = [line for line in stanza.splitlines() if not line.lstrip().startswith("#")]
        fields = parse_control("\n".join(lines))
        if "deb" in fields.get("Types", "").split() and \
                fields.get("Enabled", "yes").lower() != "no":
            uris += fields.get("URIs", "").split()
    return uris


def system_mirror(etc: Path = Path("/etc/apt")) -> str | None:
    """The first Debian mirror among the host's apt sources (``sources.list``, then
    ``sources.list.d/*.list`` and ``*.sources`` in name order), or ``None``."""
    parts = etc / "sources.list.d"
    files = [etc / "sources.list", *sorted(p for p in parts.glob("*")
                                          if p.suffix in (".list", ".sources"))]
    for path in files:
        for uri in _sources_uris(path):
            mirror = _debian_uri(uri)
            if mirror is not None:
                return mirror
    return None


def debian_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The mirror of the private apt: ``$PYAXVISOR_DEBIAN_MIRROR``, the host's Debian
    mirror (:func:`system_mirror`) or :data:`DEFAULT_MIRROR`."""
    chosen = os.environ.get(MIRROR_ENV, "").strip()
    if chosen:
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*:[^\s\[\]]+", chosen):
            raise ImageFetchError(f"{MIRROR_ENV}={chosen!r} is not a mirror URI "
                                  f"(for example {DEFAULT_MIRROR})")
        return chosen.rstrip("/")
    return system_mirror(etc) or DEFAULT_MIRROR


# ---------------------------------------------------------------------------
# The private apt

#: Lists older than this (seconds) are updated before use.
MAX_LIST_AGE = 24 * 3600
#: A package missing from lists younger than this (seconds) is not retried after an
#: update: the index has just been fetched.
RECENT_UPDATE = 10 * 60

_CONFIG = """\
// pyaxvisor's private apt configuration (pyaxvisor/image_apt.py writes this file).
// The options on apt's command line point it at the files of this directory; this
// file drops what the host's apt.conf.d would add: update hooks meant for the host's
// own lists, and any APT::Architectures list (the command line sets the one wanted).
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear APT::Architectures;
"""

_NOT_FOUND = ("No packages found", "Unable to locate package", "Can't select ")


@dataclass(frozen=True)
class PrivateApt:
    """apt confined to ``root``: Debian ``suite``'s ``arch`` packages from ``mirror``."""

    root: Path
    arch: str
    mirror: str
    suite: str = "stable"
    component: str = "main"
    #: Keyring the sources entry is ``signed-by``; ``None``: apt's trusted keys.
    keyring: Path | None = None

    @property
    def lists(self) -> Path:
        return self.root / "lists"

    @property
    def stamp(self) -> Path:
        return self.root / "updated"

    def sources_line(self) -> str:
        """The one entry of the private ``sources.list``."""
        options = f"arch={self.arch}"
        if self.keyring is not None:
            options += f" signed-by={self.keyring}"
        return f"deb [{options}] {self.mirror} {self.suite} {self.component}\n"

    def options(self) -> list[str]:
        """What makes ``apt-get``/``apt-cache`` this private apt (before the command)."""
        settings = [
            f"Dir::Etc::SourceList={self.root / 'sources.list'}",
            "Dir::Etc::SourceParts=/dev/null",
            "Dir::Etc::Preferences=/dev/null",
            "Dir::Etc::PreferencesParts=/dev/null",
            f"Dir::State::Lists={self.lists}",
            f"Dir::State::status={self.root / 'status'}",
            f"Dir::Cache={self.root / 'cache'}",
            f"APT::Architecture={self.arch}",
            f"APT::Architectures::={self.arch}",
            "Acquire::Languages=none",
        ]
        return ["-c", str(self.root / "apt.conf"), *(a for s in settings for a in ("-o", s))]

    def command(self, tool: str, *args: str) -> list[str]:
        """``tool`` (``apt-get`` or ``apt-cache``) run as this private apt."""
        return [tool, *self.options(), *args]

    # -- the lists ------------------------------------------------------------

    def ensure_fresh(self, log: Log) -> None:
        """Update the lists when missing, a day old or made from another mirror."""
        reason = self._stale(MAX_LIST_AGE)
        if reason is not None:
            self._refresh(log, reason, MAX_LIST_AGE)

    def _stale(self, max_age: float) -> str | None:
        """Why the lists need an update (``None``: they are younger than ``max_age``)."""
        try:
            made_from = self.stamp.read_text()
            age = time.time() - self.stamp.stat().st_mtime
        except OSError:
            return f"no {self.arch} package lists yet"
        if made_from != self.sources_line():
            return f"the {self.arch} package lists came from another source ({made_from.strip()})"
        if not 0 <= age < max_age:
            return f"the {self.arch} package lists are {age / 3600:.1f} hours old"
        return None

    def _refresh(self, log: Log, why: str, max_age: float) -> bool:
        """Update the lists unless, under the lock, they turn out younger than
        ``max_age`` (another process updated them); whether an update ran."""
        with self._locked(exclusive=True):
            if self._stale(max_age) is None:
                return False
            log(f"images: {why}; updating Debian {self.suite}'s {self.arch} package lists "
                f"from {self.mirror} (private apt in {self.root})")
            self._write_files()
            self.stamp.unlink(missing_ok=True)
            try:
                run(self.command("apt-get", "--error-on=any", "update"),
                    f"updating the {self.arch} package lists")
            except ImageFetchError as exc:
                raise self._update_error(exc) from exc
            self._check_index()
            self.stamp.write_text(self.sources_line())
            return True

    def _write_files(self) -> None:
        for sub in ("lists/partial", "cache"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for name, text in (("sources.list", self.sources_line()), ("apt.conf", _CONFIG),
                           ("status", "")):
            path = self.root / name
            with contextlib.suppress(OSError):
                if path.read_text() == text:
                    continue
            tmp = path.with_name(name + ".new")
            tmp.write_text(text)
            os.replace(tmp, path)

    def _update_error(self, exc: ImageFetchError) -> ImageFetchError:
        """What a failed ``apt-get update`` means, from apt's messages."""
        text = str(exc)
        if f"binary-{self.arch}/Packages" in text:  # a partial mirror: Release, no index
            return self._no_arch_error("its Release file names an index the mirror lacks",
                                       exc)
        if "NO_PUBKEY" in text or "is not signed" in text:
            why = (f"apt cannot verify the mirror's Release file with "
                   f"{self.keyring or 'the trusted keys'} (Debian {self.suite}'s archive "
                   "keys come with an up-to-date debian-archive-keyring package)")
        else:
            why = f"no network, or the mirror is unreachable? {MIRROR_ENV} selects another"
        return ImageFetchError(f"cannot fetch Debian {self.suite}'s {self.arch} package "
                               f"lists from {self.mirror} ({why}): {exc}")

    def _no_arch_error(self, detail: str, exc: ImageFetchError | None = None
                       ) -> ImageFetchError:
        return ImageFetchError(
            f"the Debian mirror {self.mirror} has no {self.arch} packages in "
            f"{self.suite}/{self.component} ({detail}); set {MIRROR_ENV} to a mirror "
            f"that carries {self.arch}, such as {DEFAULT_MIRROR}"
            + (f": {exc}" if exc is not None else ""))

    def _check_index(self) -> None:
        """Raise unless the update brought a Packages index of ``arch``."""
        if any(self.lists.glob(f"*_{self.component}_binary-{self.arch}_Packages*")):
            return
        arches = "unknown"
        for release in sorted(self.lists.glob(f"*_dists_{self.suite}_*Release")):
            found = re.search(r"^Architectures:[ \t]*(.*)$",
                              release.read_text(errors="replace"), re.M)
            if found:
                arches = found[1].strip() or "none"
                break
        raise self._no_arch_error(f"its Release file lists the architectures: {arches}")

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ImageFetchError(f"cannot use the private apt directory {self.root}: "
                                  f"{exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- lookups and downloads ------------------------------------------------

    def show(self, apt_name: str, log: Log) -> str:
        """``apt-cache show --no-all-versions apt_name``: the candidate's stanza."""
        return self._with_retry(["apt-cache", "show", "--no-all-versions", apt_name],
                                f"looking up {apt_name}", apt_name, log)

    def download(self, apt_name: str, dest: Path, log: Log) -> None:
        """``apt-get download apt_name`` into ``dest``."""
        self._with_retry(["apt-get", "download", apt_name], f"downloading {apt_name}",
                         apt_name, log, cwd=dest)

    def _with_retry(self, argv: list[str], what: str, apt_name: str, log: Log, *,
                    cwd: Path | None = None) -> str:
        """Run ``argv`` as this apt; when it fails, update lists older than
        :data:`RECENT_UPDATE` and run it once more."""
        try:
            with self._locked(exclusive=False):
                return run(self.command(*argv), what, cwd=cwd)
        except ImageFetchError as exc:
            if not self._refresh(log, f"{what} failed", RECENT_UPDATE):
                self._reraise(apt_name, exc)
        try:
            with self._locked(exclusive=False):
                return run(self.command(*argv), what, cwd=cwd)
        except ImageFetchError as exc:
            self._reraise(apt_name, exc)

    def _reraise(self, apt_name: str, exc: ImageFetchError) -> NoReturn:
        """Raise ``exc``, saying so plainly when apt does not know ``apt_name``."""
        if any(mark in str(exc) for mark in _NOT_FOUND):
            raise ImageFetchError(
                f"{apt_name} is not in Debian {self.suite}'s {self.arch} package index "
                f"from {self.mirror} (lists in {self.lists}): {exc}") from exc
        raise exc


def private_apt(arch: str, cache: Path) -> PrivateApt | None:
    """The private apt serving ``arch`` (in ``cache/apt-<arch>``), or ``None`` when the
    host's own apt serves it."""
    suite = PRIVATE_SUITES.get(arch)
    if suite is None:
        return None
    keyring = DEBIAN_KEYRING if DEBIAN_KEYRING.is_file() else None
    return PrivateApt(cache / f"apt-{arch}", arch, debian_mirror(), suite, keyring=keyring)

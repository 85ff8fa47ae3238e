"""Build the patched libunicorn the software engine prefers (issue 12).

    python -m pyaxvisor.engine.tcg.build_unicorn [--jobs N] [--cache DIR] [--dest DIR]
                                                  [--force] [--no-install]

Downloads the unicorn sdist of the pinned release from PyPI (checked against the pinned
SHA-256; the source is never kept in the repository), applies the patches listed in
``unicorn_patches/series`` in order, builds the library for the aarch64 and riscv
targets only (``riscv`` is how Unicorn's CMake names RISC-V; it builds riscv32 and
riscv64) with CMake in ``~/.cache/pyaxvisor/unicorn/<key>``, where the key hashes the
sdist, the patches and the build options, so a repeat build reuses it, and installs
``libunicorn.so.2`` into ``pyaxvisor/engine/tcg/libunicorn/``.
:mod:`pyaxvisor.engine.tcg.unicorn_select` makes the Python binding load it from there.

CMake: the one on ``PATH`` if it is 3.16 or newer, else the ``cmake`` package from PyPI
(``pip install cmake``). Needs a C compiler, ``make`` (or ninja) and ``patch`` or
``git``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

#: The release the patches are written against, and its sdist's SHA-256 as PyPI
#: publishes it (JSON API ``digests.sha256``; the same as the simple index's
#: ``#sha256=`` fragment).
UNICORN_VERSION = "2.1.4"
SDIST_NAME = f"unicorn-{UNICORN_VERSION}.tar.gz"
SDIST_SHA256 = "00567a70e323f749b419cd86bee4f9115beab7ebba32194581c090cbb7c59cff"
JSON_API = f"https://pypi.org/pypi/unicorn/{UNICORN_VERSION}/json"
SIMPLE_INDEX = "https://pypi.org/simple/unicorn/"
#: Unicorn's CMake architecture names: aarch64, and riscv (riscv32 + riscv64).
ARCHES = "aarch64;riscv"
CMAKE_ARGS = (f"-DUNICORN_ARCH={ARCHES}", "-DCMAKE_BUILD_TYPE=Release",
              "-DUNICORN_BUILD_TESTS=off", "-DUNICORN_INSTALL=off")
LIB_NAME = "libunicorn.so.2"

HERE = Path(__file__).resolve().parent
PATCH_DIR = HERE / "unicorn_patches"
DEST_DIR = HERE / "libunicorn"


def log(msg: str) -> None:
    print(f"build_unicorn: {msg}", file=sys.stderr, flush=True)


def series() -> list[Path]:
    """The patches to apply, in order (``unicorn_patches/series``; ``#`` comments)."""
    names = []
    for line in (PATCH_DIR / "series").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(PATCH_DIR / line)
    return names


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pyaxvisor" / "unicorn"


def build_key() -> str:
    """Hash of what determines the library: the sdist, the patches (names and
    contents, in order) and the CMake options."""
    h = hashlib.sha256()
    h.update(SDIST_SHA256.encode())
    for patch in series():
        h.update(patch.name.encode() + b"\0" + patch.read_bytes() + b"\0")
    h.update("\0".join(CMAKE_ARGS).encode())
    return h.hexdigest()[:20]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sdist_url() -> str:
    """The sdist's URL: PyPI's JSON API, else its simple index (PEP 503)."""
    try:
        with urllib.request.urlopen(JSON_API, timeout=30) as r:
            data = json.load(r)
        for entry in data["urls"]:
            if entry["packagetype"] == "sdist" and entry["filename"] == SDIST_NAME:
                if entry["digests"]["sha256"] != SDIST_SHA256:
                    raise RuntimeError(f"PyPI's JSON API gives {SDIST_NAME} the SHA-256 "
                                       f"{entry['digests']['sha256']}, not the pinned "
                                       f"{SDIST_SHA256}")
                return entry["url"]
    except (OSError, ValueError, KeyError) as e:
        log(f"PyPI JSON API unavailable ({e}); trying the simple index")
    with urllib.request.urlopen(SIMPLE_INDEX, timeout=30) as r:
        page = r.read().decode()
    m = re.search(r'href="([^"]*/' + re.escape(SDIST_NAME) + r')#sha256=([0-9a-f]{64})"', page)
    if not m:
        raise RuntimeError(f"{SDIST_NAME} is not on {SIMPLE_INDEX}")
    if m.group(2) != SDIST_SHA256:
        raise RuntimeError(f"PyPI lists {SDIST_NAME} with SHA-256 {m.group(2)}, "
                           f"not the pinned {SDIST_SHA256}")
    return m.group(1)


def fetch_sdist(dest: Path) -> Path:
    """The verified sdist in ``dest`` (downloaded once)."""
    path = dest / SDIST_NAME
    if path.exists() and _sha256(path) == SDIST_SHA256:
        return path
    tmp = path.with_suffix(".part")
    try:
        url = _sdist_url()
        log(f"downloading {url}")
        with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        # pip knows the machine's index configuration (mirrors, proxies)
        log(f"direct download failed ({e}); asking pip")
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.executable, "-m", "pip", "download", f"unicorn=={UNICORN_VERSION}",
                            "--no-binary", ":all:", "--no-deps", "--no-build-isolation",
                            "-d", d], check=True, stdout=subprocess.DEVNULL)
            shutil.copyfile(Path(d) / SDIST_NAME, tmp)
    got = _sha256(tmp)
    if got != SDIST_SHA256:
        tmp.unlink()
        raise RuntimeError(f"{SDIST_NAME}: SHA-256 {got}, expected {SDIST_SHA256}")
    tmp.replace(path)
    return path


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack ``tar`` below ``dest`` only: with the ``data`` filter where this Python has
    it (3.11.4+), else after checking every member by hand (no absolute or ``..``
    paths, no device files, links that stay inside)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        inside = target.is_relative_to(root)
        if member.issym() or member.islnk():
            base = target.parent if member.issym() else root
            inside = inside and (base / member.linkname).resolve().is_relative_to(root)
        if not inside or not (member.isfile() or member.isdir() or member.issym()
                              or member.islnk()):
            raise RuntimeError(f"the sdist holds an unsafe member {member.name!r}")
    tar.extractall(dest)  # every member checked above


def _apply(patch: Path, src: Path) -> None:
    if shutil.which("patch"):
        cmd = ["patch", "-p1", "--forward", "--batch", "-i", str(patch)]
    else:
        cmd = ["git", "apply", "-p1", str(patch)]
    r = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{patch.name} does not apply:\n{r.stdout}{r.stderr}")


def cmake_command() -> list[str]:
    """CMake 3.16+ from PATH, else the PyPI ``cmake`` package."""
    exe = shutil.which("cmake")
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"(\d+)\.(\d+)", out)
        if m and (int(m.group(1)), int(m.group(2))) >= (3, 16):
            return [exe]
    try:
        import cmake  # type: ignore[import-not-found]
    except ImportError as e:
        raise RuntimeError("CMake 3.16+ is needed: install it or `pip install cmake`") from e
    return [str(Path(cmake.CMAKE_BIN_DIR) / "cmake")]


def build(jobs: int | None = None, cache: Path | None = None, force: bool = False) -> Path:
    """Build (or reuse) the patched library; returns its path in the cache."""
    root = cache or cache_root()
    work = root / build_key()
    lib = work / LIB_NAME
    if lib.exists() and not force:
        log(f"reusing {lib}")
        return lib
    t0 = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    sdist = fetch_sdist(root)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    with tarfile.open(sdist) as tar:
        _extract(tar, work)
    src = work / f"unicorn-{UNICORN_VERSION}" / "src"
    for patch in series():
        log(f"applying {patch.name}")
        _apply(patch, src)
    bdir = work / "build"
    cmake = cmake_command()
    subprocess.run([*cmake, "-S", str(src), "-B", str(bdir), *CMAKE_ARGS], check=True,
                   stdout=subprocess.DEVNULL)
    jobs = jobs or os.cpu_count() or 1
    log(f"compiling with {jobs} jobs (a few minutes)")
    subprocess.run([*cmake, "--build", str(bdir), "--target", "unicorn", "-j", str(jobs)],
                   check=True, stdout=subprocess.DEVNULL)
    built = bdir / LIB_NAME
    if not built.exists():
        raise RuntimeError(f"the build made no {built}")
    (work / "SERIES").write_text("".join(p.name + "\n" for p in series()))
    built.replace(lib)
    shutil.rmtree(src.parent)  # keep only the library
    shutil.rmtree(bdir)
    log(f"built {lib} in {time.monotonic() - t0:.0f} s")
    return lib


def install(lib: Path, dest: Path = DEST_DIR) -> Path:
    """Copy the library where :mod:`~pyaxvisor.engine.tcg.unicorn_select` looks."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / LIB_NAME
    tmp = dest / (LIB_NAME + ".part")
    shutil.copyfile(lib, tmp)
    tmp.replace(target)
    (dest / "SERIES").write_text("".join(p.name + "\n" for p in series()))
    log(f"installed {target}")
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", "-j", type=int, default=None)
    ap.add_argument("--cache", type=Path, default=None,
                    help="build cache (default ~/.cache/pyaxvisor/unicorn)")
    ap.add_argument("--dest", type=Path, default=DEST_DIR, help="where to install the library")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--no-install", action="store_true", help="only build into the cache")
    args = ap.parse_args(argv)
    lib = build(args.jobs, args.cache, args.force)
    if not args.no_install:
        install(lib, args.dest)
    else:
        print(lib)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the small test guests from their assembly sources with Debian's cross binutils.

Images are cached under ``$XDG_CACHE_HOME/pyaxvisor/test-guests`` keyed by a hash of
the source, the ``*.inc`` files of its architecture (which sources may ``.include``)
and the link address, so a run rebuilds only what changed. The binutils are the
system's when on ``PATH``, else fetched from Debian by :mod:`tools` (x86_64 guests use
the host's own binutils, which the C compiler ``pip install`` needs brings along); a
toolchain that cannot be had is a test failure naming the package and the reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tools import tool

GUEST_DIR = Path(__file__).parent / "guests"
#: The binutils prefix of each architecture's guests.
TOOLCHAINS = {"aarch64": "aarch64-linux-gnu-", "riscv64": "riscv64-linux-gnu-", "x86_64": ""}


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = base / "pyaxvisor" / "test-guests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def symbols(arch: str, name: str, link_addr: int) -> dict[str, int]:
    """The guest's symbol table (label -> address), from ``nm`` of the linked ELF."""
    build(arch, name, link_addr)
    table = {}
    for line in _sym_path(arch, name, link_addr).read_text().splitlines():
        addr, _kind, label = line.split()
        table[label] = int(addr, 16)
    return table


def _key(arch: str, name: str, link_addr: int) -> str:
    text = (GUEST_DIR / arch / f"{name}.S").read_bytes()
    for inc in sorted((GUEST_DIR / arch).glob("*.inc")):
        text += inc.read_bytes()
    return hashlib.sha256(text + f"{arch}:{link_addr:#x}".encode()).hexdigest()[:16]


def _sym_path(arch: str, name: str, link_addr: int) -> Path:
    return cache_dir() / f"{arch}-{name}-{_key(arch, name, link_addr)}.sym"


def build(arch: str, name: str, link_addr: int) -> bytes:
    """Assemble ``guests/<arch>/<name>.S``, link it at ``link_addr`` and return the flat
    binary."""
    prefix = TOOLCHAINS[arch]
    src = GUEST_DIR / arch / f"{name}.S"
    key = _key(arch, name, link_addr)
    out = cache_dir() / f"{arch}-{name}-{key}.bin"
    if not out.exists():
        work = cache_dir() / f"{arch}-{name}-{key}.tmp"
        work.mkdir(exist_ok=True)
        obj, elf, tmp_bin = work / "g.o", work / "g.elf", work / "g.bin"
        as_, ld, objcopy, nm = (tool(prefix + p) for p in ("as", "ld", "objcopy", "nm"))
        _run([as_, "-I", str(GUEST_DIR / arch), "-o", str(obj), str(src)])
        _run([ld, "-e", hex(link_addr), f"-Ttext={link_addr:#x}", "-o", str(elf), str(obj)])
        _run([objcopy, "-O", "binary", str(elf), str(tmp_bin)])
        listing = _run([nm, str(elf)])
        _sym_path(arch, name, link_addr).write_text(listing)
        tmp_bin.replace(out)
        shutil.rmtree(work, ignore_errors=True)
    return out.read_bytes()


def _run(argv: list[str]) -> str:
    """Run one binutils command; its output, or an error with what it printed."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed with exit status {proc.returncode}:\n"
                           f"{proc.stderr}")
    return proc.stdout

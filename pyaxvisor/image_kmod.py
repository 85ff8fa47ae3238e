"""Linux kernel modules out of a Debian ``linux-image`` package, for an initramfs.

A module's own ``.modinfo`` ELF section says what it needs: ``depends=`` (modules
whose symbols it uses, comma-separated), ``softdep=pre: a b post: c`` (modules to load
around it, by name or alias) and ``alias=`` (other names it answers to). Debian's
kernel packages ship no ``modules.dep`` (``depmod`` runs when the package is
installed), so the load order is worked out here from ``.modinfo`` alone.

Debian 12 ships modules uncompressed (``.ko``); later releases compress them with xz
(``.ko.xz``); gzip (``.ko.gz``) is read too. Busybox ``insmod`` loads only a plain ELF,
so :func:`decompress_module` unpacks them, never past :data:`MAX_MODULE_SIZE`.
Modules cannot be zstd here (no zstd in Python's standard library): that is an error.

A driver may be built into the kernel (``=y`` in its ``/boot/config-*``) on one
architecture and a module (``=m``) on another: Debian's riscv64 kernel has
``virtio_console`` built in, its arm64 one a module. The package's
``lib/modules/<release>/modules.builtin`` lists the built-in ones (as
``kernel/.../name.ko``); :func:`load_order` skips a wanted module or dependency found
there instead of failing, and says which it skipped.

Nothing here imports from the rest of pyaxvisor except :mod:`pyaxvisor.errors`.
"""

from __future__ import annotations

import lzma
import re
import zlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from pyaxvisor.errors import ImageFetchError

#: Largest module accepted, compressed or not (Debian 12's largest, ext4 and btrfs, are
#: about 1.5 and 3.5 MiB; amdgpu is 20 MiB but nobody wants it here).
MAX_MODULE_SIZE = 32 << 20
#: Largest ``.modinfo`` section read.
MAX_MODINFO = 64 << 10
#: Module file suffixes, longest first.
SUFFIXES = (".ko.xz", ".ko.gz", ".ko.zst", ".ko")

_MODULE_PATH = re.compile(r"(?:usr/)?lib/modules/([^/]+)/kernel/.+\.ko(?:\.xz|\.gz|\.zst)?")
_BUILTIN_PATH = re.compile(r"(?:usr/)?lib/modules/([^/]+)/modules\.builtin")


class ModuleTooLargeError(ImageFetchError):
    """A module larger than :data:`MAX_MODULE_SIZE` once decompressed (riscv64's
    ``amdgpu.ko.xz``): never one an initramfs wants, so a scan may pass it by."""


@dataclass(frozen=True)
class ModuleInfo:
    """What one module's ``.modinfo`` says, with where it lies in the package."""

    #: Module name as the kernel spells it (``virtio_blk``; ``-`` becomes ``_``).
    name: str
    #: Path in the package, without a leading ``/``.
    path: str
    depends: tuple[str, ...] = ()
    #: ``softdep`` modules to load first, by module name or alias.
    pre: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    vermagic: str = ""


def module_release(path: str) -> str | None:
    """The kernel release of a module path ``lib/modules/<release>/kernel/...ko[.xz]``
    (``usr/lib`` too), or ``None`` when ``path`` is no module."""
    found = _MODULE_PATH.fullmatch(path)
    return found[1] if found else None


def builtin_list_release(path: str) -> str | None:
    """The kernel release of ``lib/modules/<release>/modules.builtin`` (``usr/lib``
    too), or ``None`` when ``path`` is not such a list."""
    found = _BUILTIN_PATH.fullmatch(path)
    return found[1] if found else None


def parse_builtin(text: bytes) -> frozenset[str]:
    """The module names of a ``modules.builtin`` file: one ``kernel/.../name.ko`` a line."""
    lines = text.decode("utf-8", "replace").splitlines()
    return frozenset(module_name(line.strip()) for line in lines if line.strip())


def module_name(path: str) -> str:
    """``virtio-rng`` from ``.../virtio-rng.ko.xz``, as the kernel names it:
    ``virtio_rng``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            return normalise(base[: -len(suffix)])
    raise ImageFetchError(f"{path} is not a kernel module (no .ko suffix)")


def normalise(name: str) -> str:
    """A module name with ``-`` as ``_`` (the kernel treats them alike)."""
    return name.replace("-", "_")


def decompress_module(path: str, data: bytes) -> bytes:
    """The ELF inside module file ``path``, at most :data:`MAX_MODULE_SIZE` bytes."""
    try:
        if path.endswith(".ko"):
            plain = data
        elif path.endswith(".ko.xz"):
            unpacker = lzma.LZMADecompressor()
            plain = unpacker.decompress(data, MAX_MODULE_SIZE + 1)
            if not unpacker.eof and len(plain) <= MAX_MODULE_SIZE:
                raise ImageFetchError(f"{path}: the xz stream is truncated")
        elif path.endswith(".ko.gz"):
            inflater = zlib.decompressobj(31)
            plain = inflater.decompress(data, MAX_MODULE_SIZE + 1)
            if not inflater.eof and len(plain) <= MAX_MODULE_SIZE:
                raise ImageFetchError(f"{path}: the gzip stream is truncated")
        else:
            raise ImageFetchError(f"{path}: cannot decompress this module (only plain, xz "
                                  "and gzip modules are supported)")
    except (lzma.LZMAError, zlib.error) as exc:
        raise ImageFetchError(f"{path}: does not decompress: {exc}") from exc
    if len(plain) > MAX_MODULE_SIZE:
        raise ModuleTooLargeError(f"{path}: larger than {MAX_MODULE_SIZE} bytes "
                                  "uncompressed")
    return plain


def elf_section(data: bytes, wanted: str, what: str) -> bytes | None:
    """The contents of section ``wanted`` of a little-endian ELF64 file, or ``None``.

    Every offset is checked against the file; a malformed header is an
    :class:`ImageFetchError` naming ``what``.
    """
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageFetchError(f"{what} is not a little-endian ELF64 file")

    def u(off: int, size: int) -> int:
        if off + size > len(data):
            raise ImageFetchError(f"{what}: ELF header field at {off} beyond the file")
        return int.from_bytes(data[off:off + size], "little")

    shoff, shentsize, shnum, shstrndx = u(0x28, 8), u(0x3A, 2), u(0x3C, 2), u(0x3E, 2)
    if shentsize < 64 or shstrndx >= shnum:
        raise ImageFetchError(f"{what}: bad ELF section header table")

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name, offset, size = u(base, 4), u(base + 24, 8), u(base + 32, 8)
        if offset + size > len(data):
            raise ImageFetchError(f"{what}: ELF section {index} lies beyond the file")
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    names = data[str_off:str_off + str_size]
    for index in range(shnum):
        name, offset, size = section(index)
        end = names.find(b"\0", name)
        if names[name:end if end >= 0 else None].decode("ascii", "replace") == wanted:
            return data[offset:offset + size]
    return None


def parse_modinfo(section: bytes) -> dict[str, list[str]]:
    """``key=value`` strings of a ``.modinfo`` section, each key's values in order."""
    fields: dict[str, list[str]] = {}
    for item in section[:MAX_MODINFO].split(b"\0"):
        key, eq, value = item.decode("utf-8", "replace").partition("=")
        if eq:
            fields.setdefault(key, []).append(value)
    return fields


def _softdep_pre(values: Iterable[str]) -> tuple[str, ...]:
    """The ``pre:`` names of ``softdep`` values (``pre: a b post: c`` gives a, b)."""
    pre: list[str] = []
    for value in values:
        section = None
        for word in value.split():
            if word.endswith(":"):
                section = word[:-1]
            elif section == "pre":
                pre.append(word)
    return tuple(pre)


def module_info(path: str, data: bytes) -> ModuleInfo:
    """Read module ``path`` (its plain ELF, see :func:`decompress_module`)."""
    section = elf_section(data, ".modinfo", path)
    if section is None:
        raise ImageFetchError(f"{path}: no .modinfo section; not a kernel module?")
    fields = parse_modinfo(section)
    depends = [normalise(d) for v in fields.get("depends", []) for d in v.split(",") if d]
    return ModuleInfo(
        name=module_name(path), path=path, depends=tuple(depends),
        pre=_softdep_pre(fields.get("softdep", [])),
        aliases=tuple(fields.get("alias", [])),
        vermagic=(fields.get("vermagic") or [""])[0])


def load_order(roots: Iterable[str], modules: Mapping[str, ModuleInfo],
               builtin: Collection[str] = frozenset()) -> tuple[list[str], list[str]]:
    """The modules to load for ``roots``, each after what it needs; and the soft
    dependencies that no module of ``modules`` provides (built in, or absent).

    ``depends`` must all be found (a missing one is an error); a ``softdep`` name is a
    module name or an alias, and every module answering to it is loaded first.
    A root or dependency that is no module of ``modules`` but is in ``builtin`` (the
    names of ``modules.builtin``, see :func:`parse_builtin`) is built into the kernel:
    it needs no loading and is left out (:func:`builtin_roots` names such roots).
    A dependency cycle is an error.
    """
    by_alias: dict[str, list[str]] = {}
    for info in modules.values():
        for alias in info.aliases:
            by_alias.setdefault(alias, []).append(info.name)
    order: list[str] = []
    unresolved: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise ImageFetchError(f"kernel modules depend on each other in a cycle: "
                                  f"{' -> '.join((*chain, name))}")
        info = modules.get(name)
        if info is None and name in builtin:
            state[name] = "done"  # built into the kernel: nothing to load
            return
        if info is None:
            needed_by = f" (needed by {chain[-1]})" if chain else ""
            raise ImageFetchError(f"kernel module {name}{needed_by} is not in the "
                                  "package and not built into the kernel (modules.builtin)")
        state[name] = "active"
        for soft in info.pre:
            providers = [normalise(soft)] if normalise(soft) in modules else \
                sorted(by_alias.get(soft, []))
            if not providers and normalise(soft) in builtin:
                continue
            if not providers and soft not in unresolved:
                unresolved.append(soft)
            for provider in providers:
                visit(provider, (*chain, name))
        for dep in info.depends:
            visit(dep, (*chain, name))
        state[name] = "done"
        order.append(name)

    for root in roots:
        visit(normalise(root), ())
    return order, unresolved


def builtin_roots(roots: Iterable[str], modules: Mapping[str, ModuleInfo],
                  builtin: Collection[str]) -> list[str]:
    """Those of ``roots`` that :func:`load_order` leaves out as built into the kernel."""
    names = [normalise(root) for root in roots]
    return [name for name in names if name not in modules and name in builtin]

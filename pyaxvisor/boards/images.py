"""What every board does with the images of a :class:`~pyaxvisor.vm.config.VmConfig`.

An image with an address in the configuration (axvmconfig's ``*_load_addr``) that
has no format of its own is copied there verbatim, as AxVisor does. An image
with a format (ELF, Multiboot, bzImage, a Linux ``Image``) is placed by its
format's rules, as QEMU's ``-kernel`` does; the configuration's load address and
entry point must then agree with what the format says, and a mismatch is an
error that names the key and the value the image needs (a silent choice between
the two would boot something else than either says).
"""

from __future__ import annotations

from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.image import ImageError, covered, read_image, span
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.config import ImageSpec, MemoryRegion, VmConfig

__all__ = ["bank_for", "check_address", "place_verbatim", "read_spec"]


def read_spec(spec: ImageSpec, what: str, limit: int) -> bytes:
    """The bytes of ``spec``'s file, refused before reading when above ``limit``."""
    return read_image(spec.path, what, limit=limit)


def bank_for(config: VmConfig, addr: int | None, key: str = "") -> MemoryRegion:
    """The RAM region holding ``addr`` (the value of ``key``), or the lowest one when
    ``addr`` is None."""
    banks = sorted(config.ram_regions, key=lambda r: r.gpa)
    if addr is None:
        return banks[0]
    for bank in banks:
        if bank.gpa <= addr < bank.end:
            return bank
    raise InvalidInput(f"{config.prefix(key) if key else ''}{addr:#x} is not in guest RAM ("
                       f"{', '.join(span(b.gpa, b.end) for b in banks)})")


def place_verbatim(space: AddrSpace, data: bytes, addr: int, path: str) -> tuple[int, int]:
    """Copy ``data`` to ``addr``; returns ``(start, end)``. Refused, with nothing
    written, unless guest RAM backs every byte."""
    end = addr + len(data)
    if addr < 0 or not covered(space, addr, end):
        raise ImageError(path, f"{len(data):#x} bytes at {span(addr, end)} do not fit in "
                               "guest RAM")
    space.write(GuestPhysAddr(addr), data)
    return addr, end


def check_address(config: VmConfig, key: str, asked: int | None, actual: int,
                  what: str) -> None:
    """``asked`` (a configured address) must be ``None`` or equal ``actual`` (where
    the image's format puts it)."""
    if asked is not None and asked != actual:
        raise InvalidInput(f"{config.prefix(key)}{asked:#x} is not where {what} "
                           f"({actual:#x}); set {key} = {actual:#x}")


def check_disjoint(path: str, spans: dict[str, tuple[int, int]],
                   start: int, end: int) -> None:
    """``[start, end)`` of the image at ``path`` must not overlap what is already
    placed (``spans``: name → ``(start, end)``)."""
    for name, (s, e) in spans.items():
        if start < e and s < end:
            raise ImageError(path, f"{span(start, end)} overlaps the {name} at {span(s, e)}")

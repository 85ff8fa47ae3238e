"""What every board does with the images of a :class:`~pyaxvisor.vm.config.VmConfig`.

An image with an address in the configuration (axvmconfig's ``*_load_addr``) that
has no format of its own is copied there verbatim, as AxVisor does. An image
with a format (ELF, Multiboot, bzImage, a Linux ``Image``) is placed by its
format's rules, as QEMU's ``-kernel`` does; the configuration's load address and
entry point must then agree with what the format says, and a mismatch is an
error that names the key and the value the image needs (a silent choice between
the two would boot something else than either says).

Boards whose kernels are Linux ``Image`` files (arm64, RISC-V) share the whole flow
(:func:`load_kernel`, :func:`load_initrd_for`, :func:`place_device_tree`) and
differ only in an :class:`ImageFormat`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.compression import decompress
from pyaxvisor.loaders.elf import load_elf
from pyaxvisor.loaders.image import ImageError, LoadedImage, covered, read_image, span
from pyaxvisor.loaders.placement import load_initrd, place_dtb
from pyaxvisor.loaders.raw import load_raw
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.config import ImageSpec, MemoryRegion, VmConfig

__all__ = ["ImageFormat", "bank_for", "check_address", "check_disjoint", "load_initrd_for",
           "load_kernel", "place_device_tree", "place_verbatim", "read_spec"]

#: A Linux ``Image`` is loaded text_offset bytes above a base aligned to this.
LINUX_IMAGE_ALIGN = 2 << 20


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


class ImageFormat(NamedTuple):
    """How one architecture's Linux-style kernels load (arm64, RISC-V): its format
    detector (→ ``"elf"``, ``"raw"`` or :attr:`image`), the format name of its
    ``Image``, the header parser and loader of that ``Image``, its ELF machine, where
    flat binaries go in RAM, and the architecture's name for messages."""

    detect: Callable[..., str]
    image: str
    parse_header: Callable[..., Any]
    load_image: Callable[..., LoadedImage]
    elf_machine: str
    raw_offset: int
    name: str


def load_kernel(space: AddrSpace, config: VmConfig, fmt: ImageFormat
                ) -> tuple[LoadedImage, int]:
    """The configured kernel placed by its format (see the module doc); and the entry
    point vCPU 0 starts at."""
    spec = config.kernel
    assert spec is not None
    path = str(spec.path)
    data = read_spec(spec, "kernel", limit=config.ram_size)
    kind = fmt.detect(data, path=path)
    if kind == "elf":
        loaded = load_elf(space, data, path=path, expected_machine=fmt.elf_machine)
        check_address(config, "[kernel] kernel_load_addr", spec.load_addr, loaded.start,
                      "the ELF's lowest segment is")
        check_address(config, "[kernel] entry_point", config.entry, loaded.entry,
                      "the ELF's entry point is")
        return loaded, loaded.entry
    if kind == "raw":
        addr = bank_for(config, None).gpa + fmt.raw_offset if spec.load_addr is None \
            else spec.load_addr
        loaded = load_raw(space, data, addr=addr, path=path)
        return loaded, loaded.entry if config.entry is None else config.entry
    # a Linux Image (perhaps compressed): a 2 MiB-aligned base + text_offset
    bank = bank_for(config, spec.load_addr, "[kernel] kernel_load_addr")
    base, size = bank.gpa, bank.size
    if spec.load_addr is not None:
        offset = fmt.parse_header(decompress(data, path=path), path=path).text_offset
        base = spec.load_addr - offset
        if base % LINUX_IMAGE_ALIGN or base < bank.gpa:
            raise InvalidInput(f"{config.prefix('[kernel] kernel_load_addr')}"
                               f"{spec.load_addr:#x} is not a 2 MiB-aligned base in RAM plus "
                               f"the Image's text_offset {offset:#x}, where {fmt.name} Linux "
                               "must be loaded")
        size = bank.end - base
    loaded = fmt.load_image(space, data, ram_base=base, ram_size=size, path=path)
    check_address(config, "[kernel] entry_point", config.entry, loaded.entry,
                  f"{'an' if fmt.name[0] in 'aeiou' else 'a'} {fmt.name} Image is entered")
    return loaded, loaded.entry


def load_initrd_for(space: AddrSpace, config: VmConfig, kernel: LoadedImage,
                    placed: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The configured initrd: at its load address, else as high as the loaders place
    it below the device tree's block; returns ``(start, end)``."""
    spec = config.initrd
    assert spec is not None
    path = str(spec.path)
    data = read_spec(spec, "initrd", limit=config.ram_size)
    if spec.load_addr is None:
        bank = bank_for(config, config.kernel.load_addr if config.kernel else None)
        return load_initrd(space, data, ram_base=bank.gpa, ram_size=bank.size,
                           kernel_end=kernel.end, path=path)
    check_disjoint(path, placed, spec.load_addr, spec.load_addr + len(data))
    return place_verbatim(space, data, spec.load_addr, path)


def place_device_tree(space: AddrSpace, config: VmConfig, dtb: bytes, addr: int | None,
                      placed: dict[str, tuple[int, int]], path: str) -> int:
    """Write ``dtb`` at ``addr`` (checked against what is ``placed``), or where the
    loaders place a device tree in the kernel's RAM region; returns its address."""
    if addr is not None:
        check_disjoint(path, placed, addr, addr + len(dtb))
        place_verbatim(space, dtb, addr, path)
        return addr
    bank = bank_for(config, config.kernel.load_addr if config.kernel else None)
    return place_dtb(space, dtb, ram_base=bank.gpa, ram_size=bank.size,
                     reserved=list(placed.values()), path=path)

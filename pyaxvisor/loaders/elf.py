"""ELF kernels: one parser (:func:`parse_elf`) and the two entry rules built on it.

:func:`parse_elf` reads the ELF header and the ``PT_LOAD`` segments (those with a
non-zero ``p_memsz``) and does every check that concerns the file alone: it is an
ELF file; it is well formed; little endian (every guest here is); of type
``ET_EXEC`` or ``ET_DYN``; has at least one ``PT_LOAD`` segment; no segment has
``p_filesz > p_memsz`` or file bytes past the end of the file; no two segments
overlap in physical memory; and ``e_entry`` lies in a segment, physically, or
virtually (a kernel linked at a virtual address), in which case it is translated
to the physical address through that segment. The caller's header check
(``accept``) runs first, so a file for the wrong machine is reported as such
rather than by its first defect. pyelftools is imported only here, when an ELF
image is met: it costs start-up time.

Entry rules (segments go to their ``p_paddr``, file bytes copied and the rest of
each segment zeroed; nothing is written unless every check passes)
    * :func:`load_elf` (arm64, RISC-V): ELFCLASS64 for ``expected_machine``, every
      segment in guest RAM; entry = the physical ``e_entry``. gzip-compressed files
      are decompressed first. Returns a :class:`~.image.LoadedImage`.
    * :func:`load_x86_elf`: ELF64 x86-64, entered in 64-bit mode (the entry must be in
      the 1 GiB identity map), or ELF32 i386, entered in 32-bit protected mode;
      segments anywhere in guest RAM, below 1 MiB too (the boot structures move out
      of their way: :class:`~.x86_entry.BootMemory`). No boot information is passed
      (a Linux ``vmlinux`` gets no ``boot_params``: boot its bzImage). Returns an
      :class:`~.x86_entry.X86Boot`.
    * Multiboot v1 ELF32 kernels use :func:`parse_elf` too (:mod:`.multiboot`).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.compression import decompress, describe_foreign
from pyaxvisor.loaders.image import (
    ELF_MAGIC,
    ImageError,
    LoadedImage,
    Segment,
    check_segments_in_ram,
    require_data,
    span,
    write_segments,
)
from pyaxvisor.loaders.x86_entry import (
    IDENTITY_MAP_END,
    BootMemory,
    X86Boot,
    check_x86_segments,
)
from pyaxvisor.mm.addrspace import AddrSpace

__all__ = [
    "ELF_MACHINES", "EM_386", "EM_AARCH64", "EM_RISCV", "EM_X86_64", "MACHINE_NAMES",
    "ElfHeader", "ElfImage", "accept_x86", "load_elf", "load_x86_elf", "machine_name", "parse_elf",
]

#: ``e_machine`` numbers (the ELF ABI's), for readers that look at raw bytes.
EM_386, EM_X86_64, EM_AARCH64, EM_RISCV = 3, 62, 183, 243
#: ``expected_machine`` -> the ELF ``e_machine`` it requires (pyelftools' names).
ELF_MACHINES = {"aarch64": "EM_AARCH64", "x86_64": "EM_X86_64", "riscv64": "EM_RISCV"}
#: pyelftools' ``e_machine`` names -> the names messages use.
MACHINE_NAMES = {
    "EM_AARCH64": "AArch64", "EM_ARM": "32-bit ARM", "EM_RISCV": "RISC-V",
    "EM_PPC": "PowerPC", "EM_PPC64": "PowerPC64", "EM_S390": "s390", "EM_MIPS": "MIPS",
    "EM_SPARC": "SPARC", "EM_SPARCV9": "SPARC64", "EM_IA_64": "Itanium",
    "EM_LOONGARCH": "LoongArch", "EM_386": "i386", "EM_X86_64": "x86-64",
}
_GUEST_OF_MACHINE = {machine: guest for guest, machine in ELF_MACHINES.items()}


@dataclass(frozen=True)
class ElfHeader:
    """The ELF header fields the entry rules decide on."""

    elfclass: int  # 32 or 64
    machine: str  # pyelftools' e_machine name ("EM_X86_64"), or the number as text
    little_endian: bool
    type: str  # "ET_EXEC", "ET_DYN", "ET_REL", ...


@dataclass(frozen=True)
class ElfImage:
    """A checked ELF file: its header, physical entry and ``PT_LOAD`` segments."""

    header: ElfHeader
    entry: int
    segments: tuple[Segment, ...]

    @property
    def elfclass(self) -> int:
        return self.header.elfclass

    @property
    def machine(self) -> str:
        return self.header.machine

    @property
    def start(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def end(self) -> int:
        return max(s.end for s in self.segments)


def machine_name(machine: str) -> str | None:
    """The name messages use for a pyelftools ``e_machine`` name, or None if unknown."""
    return MACHINE_NAMES.get(machine)


def parse_elf(data: bytes, *, path: str,
              accept: Callable[[ElfHeader], None] | None = None) -> ElfImage:
    """The checked :class:`ElfImage` of ``data`` (see the module doc for the checks).

    ``accept``, given the header, raises :class:`ImageError` for a machine or class
    the caller cannot boot; it runs before the other checks.
    """
    require_data(data, path)
    if data[:4] != ELF_MAGIC:
        foreign = describe_foreign(data)
        what = f"this is {foreign}" if foreign else "no \\x7fELF magic"
        raise ImageError(path, f"not an ELF file: {what}")
    # Imported here, when an ELF image is met: pyelftools costs start-up time.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(data))
        header = ElfHeader(elf.elfclass, str(elf.header["e_machine"]), elf.little_endian,
                           str(elf.header["e_type"]))
        entry = elf.header["e_entry"]
        phdrs = [seg.header for seg in elf.iter_segments()]
    except (ELFError, ValueError, EOFError, OverflowError, struct.error) as exc:
        raise ImageError(path, f"malformed or truncated ELF file ({exc})") from None
    if accept is not None:
        accept(header)
    if not header.little_endian:
        raise ImageError(path, "big-endian ELF; only little-endian guests are supported")
    if header.type not in ("ET_EXEC", "ET_DYN"):
        raise ImageError(path, f"ELF type {header.type} cannot be booted (link it into an "
                               "executable)")
    loads = [h for h in phdrs if h["p_type"] == "PT_LOAD" and h["p_memsz"] > 0]
    if not loads:
        raise ImageError(path, "ELF has no loadable (PT_LOAD) segment")
    view = memoryview(bytes(data))
    segments: list[Segment] = []
    for i, h in enumerate(loads):
        offset, filesz, memsz = h["p_offset"], h["p_filesz"], h["p_memsz"]
        if filesz > memsz:
            raise ImageError(path, f"PT_LOAD segment {i} has p_filesz {filesz:#x} > "
                                   f"p_memsz {memsz:#x}")
        if offset + filesz > len(data):
            raise ImageError(path, f"truncated: PT_LOAD segment {i} needs file bytes "
                                   f"{span(offset, offset + filesz)}, the file has "
                                   f"{len(data)}")
        seg = Segment(h["p_paddr"], view[offset:offset + filesz], memsz)
        for j, other in enumerate(segments):
            if seg.paddr < other.end and other.paddr < seg.end:
                raise ImageError(path, f"PT_LOAD segments {j} {span(other.paddr, other.end)}"
                                       f" and {i} {span(seg.paddr, seg.end)} overlap")
        segments.append(seg)
    if not any(s.paddr <= entry < s.end for s in segments):
        holder = next((h for h in loads if h["p_vaddr"] <= entry < h["p_vaddr"] + h["p_memsz"]),
                      None)
        if holder is None:
            raise ImageError(path, f"entry point {entry:#x} is outside every loaded segment")
        entry = entry - holder["p_vaddr"] + holder["p_paddr"]
    return ElfImage(header, entry, tuple(segments))


def load_elf(space: AddrSpace, data: bytes, *, path: str,
             expected_machine: str) -> LoadedImage:
    """Load a 64-bit little-endian ELF for ``expected_machine`` ("aarch64", "riscv64",
    "x86_64": a key of :data:`ELF_MACHINES`) into guest RAM; see the module doc."""
    if expected_machine not in ELF_MACHINES:
        raise InvalidInput(f"expected_machine must be one of {sorted(ELF_MACHINES)}, "
                           f"got {expected_machine!r}")
    want = ELF_MACHINES[expected_machine]

    def accept(header: ElfHeader) -> None:
        if header.machine != want:
            found = (_GUEST_OF_MACHINE.get(header.machine) or machine_name(header.machine)
                     or "an unknown machine")
            raise ImageError(path, f"ELF is built for {found} (e_machine {header.machine}), "
                                   f"but the guest is {expected_machine} ({want})")
        if header.elfclass != 64:
            raise ImageError(path, f"32-bit ELF; a {expected_machine} guest needs ELFCLASS64")

    elf = parse_elf(decompress(data, path=path), path=path, accept=accept)
    check_segments_in_ram(space, elf.segments, path)
    write_segments(space, elf.segments)
    return LoadedImage(entry=elf.entry, start=elf.start, end=elf.end)


def accept_x86(path: str) -> Callable[[ElfHeader], None]:
    """The header check of x86 kernels: an x86 machine (i386 or x86-64)."""

    def accept(header: ElfHeader) -> None:
        if header.machine not in ("EM_386", "EM_X86_64"):
            name = machine_name(header.machine) or f"e_machine {header.machine}"
            raise ImageError(path, f"ELF for {name}, not x86")

    return accept


def load_x86_elf(space: AddrSpace, data: bytes, *, path: str,
                 memory: BootMemory | None = None) -> X86Boot:
    """Load an ELF64 x86-64 (entered in 64-bit mode) or ELF32 i386 (32-bit protected
    mode) kernel; see the module doc. With ``memory`` the segments are entered there
    (the boot structures placed after them keep out of their way)."""
    elf = parse_elf(data, path=path, accept=accept_x86(path))
    if (elf.elfclass, elf.machine) not in ((64, "EM_X86_64"), (32, "EM_386")):
        raise ImageError(path, f"ELF{elf.elfclass} for {MACHINE_NAMES[elf.machine]}: x86 "
                               "kernels are ELF64 x86-64 or ELF32 i386")
    long = elf.machine == "EM_X86_64"
    check_x86_segments(space, elf.segments, path)
    if long and elf.entry >= IDENTITY_MAP_END:
        raise ImageError(path, f"entry point {elf.entry:#x} is above the "
                               f"{IDENTITY_MAP_END >> 30} GiB the 64-bit boot page tables map")
    if memory is not None:
        memory.claim_segments(elf.segments)
    write_segments(space, elf.segments)
    return X86Boot(elf.entry, "long" if long else "protected", {}, elf.start, elf.end, "elf",
                   f"ELF{elf.elfclass} {'x86-64' if long else 'i386'} kernel, "
                   f"{'64-bit' if long else '32-bit protected-mode'} entry")

"""Booting the ``virt`` board as QEMU does: firmware in flash (``-bios``), or a kernel
(``-kernel``: arm64 ``Image``, possibly gzip-compressed, ELF, or a raw binary) with an
optional initrd, a device tree and PSCI over HVC. Without either, the bundled guest.

Placement: with firmware, it runs from flash at 0 (or its configured load address)
and the device tree sits at the start of RAM, where QEMU puts it for firmware. With
a kernel, the loaders (:mod:`pyaxvisor.loaders`) place the kernel, initrd and device
tree in the RAM region that holds the kernel's configured load address, else the
lowest one; vCPU 0 enters the kernel with x0 = the device tree. A configuration may
give every address itself (:mod:`pyaxvisor.boards.images` says how they are held
against the images' formats) and its own device tree file (whose ``/chosen`` gets
the command line and initrd, as QEMU's ``-dtb`` does); otherwise the board writes
one describing the configured RAM, CPUs and command line, minus the excluded
devices.
"""

from __future__ import annotations

from importlib import resources

from pyaxvisor.boards.aarch64_virt import layout as L
from pyaxvisor.boards.aarch64_virt.fdt import build_aarch64_dtb, update_chosen
from pyaxvisor.boards.images import (
    bank_for,
    check_address,
    check_disjoint,
    place_verbatim,
    read_spec,
)
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.detect import detect_format
from pyaxvisor.loaders.elf import load_elf
from pyaxvisor.loaders.image import ImageError, LoadedImage
from pyaxvisor.loaders.linux_image import load_arm64_image, parse_arm64_header
from pyaxvisor.loaders.placement import DTB_MAX_SIZE, load_initrd, place_dtb
from pyaxvisor.loaders.raw import load_raw
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.board import BootState
from pyaxvisor.vm.config import VmConfig

__all__ = ["BUNDLED_LOAD", "bundled_guest", "load"]

#: Where the bundled guest is linked to run.
BUNDLED_LOAD = L.RAM_BASE + L.RAW_LOAD_OFFSET


def bundled_guest() -> bytes:
    return resources.files("pyaxvisor.guests").joinpath("aarch64/hello.bin").read_bytes()


def load(space: AddrSpace, config: VmConfig) -> BootState:
    """Put the configured guest into ``space``; returns vCPU 0's start."""
    if config.bios is not None:
        return _load_firmware(space, config)
    if config.kernel is None:
        if not any(r.gpa <= BUNDLED_LOAD < r.end for r in config.ram_regions):
            raise InvalidInput(f"the bundled guest runs at {BUNDLED_LOAD:#x}, where this VM "
                               "has no RAM: give a kernel")
        place_verbatim(space, bundled_guest(), BUNDLED_LOAD, "<bundled guest>")
        return BootState(BUNDLED_LOAD, {0: 0}, description="the bundled guest")
    kernel, entry = _load_kernel(space, config)
    placed = {"kernel": (kernel.start, kernel.end)}
    bank = bank_for(config, config.kernel.load_addr)
    initrd = None
    if config.initrd is not None:
        initrd = _load_initrd(space, config, kernel, placed)
        placed["initrd"] = initrd
    dtb = _device_tree(config, initrd)
    path = str(config.dtb.path) if config.dtb is not None else "<device tree>"
    dtb_addr = config.dtb.load_addr if config.dtb is not None else config.dtb_addr
    if dtb_addr is not None:
        check_disjoint(path, placed, dtb_addr, dtb_addr + len(dtb))
        place_verbatim(space, dtb, dtb_addr, path)
    else:
        dtb_addr = place_dtb(space, dtb, ram_base=bank.gpa, ram_size=bank.size,
                             reserved=list(placed.values()), path=path)
    return BootState(entry, {0: dtb_addr}, description=f"kernel {config.kernel.path}")


def _load_firmware(space: AddrSpace, config: VmConfig) -> BootState:
    assert config.bios is not None and config.kernel is None  # the board checked
    fw = read_spec(config.bios, "firmware", limit=config.ram_size + 2 * L.FLASH_SIZE)
    if len(fw) > L.FLASH_SIZE and config.bios.load_addr is None:
        raise ImageError(f"firmware {config.bios.path}", f"{len(fw)} bytes do not fit the "
                                                         f"{L.FLASH_SIZE >> 20} MiB flash")
    addr = L.FLASH_BASE if config.bios.load_addr is None else config.bios.load_addr
    place_verbatim(space, fw, addr, str(config.bios.path))
    bank = bank_for(config, None)
    dtb = _device_tree(config, None)
    dtb_addr = config.dtb.load_addr if config.dtb is not None else config.dtb_addr
    dtb_addr = bank.gpa if dtb_addr is None else dtb_addr
    place_verbatim(space, dtb, dtb_addr, "<device tree>")
    entry = addr if config.entry is None else config.entry
    return BootState(entry, {0: dtb_addr}, description=f"firmware {config.bios.path}")


def _load_kernel(space: AddrSpace, config: VmConfig) -> tuple[LoadedImage, int]:
    """The kernel, placed; and the entry point vCPU 0 starts at."""
    spec = config.kernel
    assert spec is not None
    path = str(spec.path)
    data = read_spec(spec, "kernel", limit=config.ram_size)
    fmt = detect_format(data, path=path)
    if fmt == "elf":
        loaded = load_elf(space, data, path=path, expected_machine="aarch64")
        check_address(config, "[kernel] kernel_load_addr", spec.load_addr, loaded.start,
                      "the ELF's lowest segment is")
        check_address(config, "[kernel] entry_point", config.entry, loaded.entry,
                      "the ELF's entry point is")
        return loaded, loaded.entry
    if fmt == "raw":
        addr = bank_for(config, None).gpa + L.RAW_LOAD_OFFSET if spec.load_addr is None \
            else spec.load_addr
        loaded = load_raw(space, data, addr=addr, path=path)
        return loaded, loaded.entry if config.entry is None else config.entry
    # an arm64 Image (perhaps compressed): 2 MiB-aligned base + text_offset (booting.rst)
    bank = bank_for(config, spec.load_addr, "[kernel] kernel_load_addr")
    base, size = bank.gpa, bank.size
    if spec.load_addr is not None:
        from pyaxvisor.loaders.compression import decompress

        offset = parse_arm64_header(decompress(data, path=path), path=path).text_offset
        base = spec.load_addr - offset
        if base % (2 << 20) or base < bank.gpa:
            raise InvalidInput(f"{config.prefix('[kernel] kernel_load_addr')}"
                               f"{spec.load_addr:#x} is not a 2 MiB-aligned base in RAM plus "
                               f"the Image's text_offset {offset:#x}, where arm64 Linux must "
                               "be loaded")
        size = bank.end - base
    loaded = load_arm64_image(space, data, ram_base=base, ram_size=size, path=path)
    check_address(config, "[kernel] entry_point", config.entry, loaded.entry,
                  "an arm64 Image is entered")
    return loaded, loaded.entry


def _load_initrd(space: AddrSpace, config: VmConfig, kernel: LoadedImage,
                 placed: dict[str, tuple[int, int]]) -> tuple[int, int]:
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


def _device_tree(config: VmConfig, initrd: tuple[int, int] | None) -> bytes:
    if config.dtb is not None:
        path = str(config.dtb.path)
        dtb = _checked_dtb(read_spec(config.dtb, "device tree", limit=DTB_MAX_SIZE), path)
        return update_chosen(dtb, bootargs=config.cmdline, initrd=initrd, path=path)
    exclude = [path for group in config.excluded_devices for path in group]
    return build_aarch64_dtb(memory=[(r.gpa, r.size) for r in config.ram_regions],
                             cpus=list(config.cpu_ids), bootargs=config.cmdline,
                             initrd=initrd, exclude=exclude)


def _checked_dtb(dtb: bytes, path: str) -> bytes:
    if dtb[:4] != b"\xd0\x0d\xfe\xed":
        raise ImageError(path, "not a device tree blob (no 0xd00dfeed magic)")
    return dtb

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

import os
from importlib import resources

from pyaxvisor.boards.aarch64_virt import layout as L
from pyaxvisor.boards.aarch64_virt.fdt import build_aarch64_dtb
from pyaxvisor.boards.fdt_common import RNG_SEED_BYTES, read_dtb_file
from pyaxvisor.boards.images import (
    ImageFormat,
    bank_for,
    load_initrd_for,
    load_kernel,
    place_device_tree,
    place_verbatim,
    read_spec,
)
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.detect import detect_format
from pyaxvisor.loaders.image import ImageError
from pyaxvisor.loaders.linux_image import load_arm64_image, parse_arm64_header
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.board import BootState
from pyaxvisor.vm.config import VmConfig

__all__ = ["ARM64", "BUNDLED_LOAD", "bundled_guest", "load"]

#: Where the bundled guest is linked to run.
BUNDLED_LOAD = L.RAM_BASE + L.RAW_LOAD_OFFSET
#: How arm64 kernels load.
ARM64 = ImageFormat(detect_format, "arm64-image", parse_arm64_header, load_arm64_image,
                    "aarch64", L.RAW_LOAD_OFFSET, "arm64")


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
    kernel, entry = load_kernel(space, config, ARM64)
    placed = {"kernel": (kernel.start, kernel.end)}
    initrd = None
    if config.initrd is not None:
        initrd = placed["initrd"] = load_initrd_for(space, config, kernel, placed)
    dtb = _device_tree(config, initrd)
    path = str(config.dtb.path) if config.dtb is not None else "<device tree>"
    addr = config.dtb.load_addr if config.dtb is not None else config.dtb_addr
    dtb_addr = place_device_tree(space, config, dtb, addr, placed, path)
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


def _device_tree(config: VmConfig, initrd: tuple[int, int] | None) -> bytes:
    if config.dtb is not None:
        return read_dtb_file(config.dtb.path, bootargs=config.cmdline, initrd=initrd)
    exclude = [path for group in config.excluded_devices for path in group]
    kaslr_seed = rng_seed = None
    if config.dtb_randomness:
        kaslr_seed, rng_seed = int.from_bytes(os.urandom(8), "little"), os.urandom(RNG_SEED_BYTES)
    return build_aarch64_dtb(memory=[(r.gpa, r.size) for r in config.ram_regions],
                             cpus=list(config.cpu_ids), bootargs=config.cmdline,
                             initrd=initrd, exclude=exclude, kaslr_seed=kaslr_seed,
                             rng_seed=rng_seed)

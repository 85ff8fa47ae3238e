"""Booting the RISC-V ``virt`` board as QEMU does with its default OpenSBI: ``-kernel``
takes an S-mode payload — Linux's ``Image`` (possibly gzip-compressed), an ELF, or a
flat binary such as U-Boot S-mode (``qemu-riscv64_smode/u-boot.bin``, linked at
0x8020_0000) — entered in S-mode with a0 = the hart id and a1 = the device tree.
pyaxvisor is the SBI firmware, so ``-bios default`` and ``-bios none`` mean the same
(nothing to load); an M-mode firmware cannot run (the guest runs in S-mode: the
software CPU has no H extension) and is refused, saying so.

Placement: a Linux ``Image`` at ``align_up(RAM base, 2 MiB) + text_offset`` (0x8020_0000
for RV64 kernels), a flat binary 2 MiB into RAM, an ELF at its segments; the initrd
and the device tree as high as the loaders place them (:mod:`pyaxvisor.loaders.placement`:
the DTB in its own 2 MiB block of the first 512 MiB, the initrd below it). A
configuration may give the addresses itself, held against the formats as for the
other boards (:mod:`pyaxvisor.boards.images`).
"""

from __future__ import annotations

import os

from pyaxvisor.boards.fdt_common import RNG_SEED_BYTES, read_dtb_file
from pyaxvisor.boards.images import ImageFormat, load_initrd_for, load_kernel, place_device_tree
from pyaxvisor.boards.riscv64_virt import layout as L
from pyaxvisor.boards.riscv64_virt.fdt import build_riscv64_dtb
from pyaxvisor.errors import InvalidInput
from pyaxvisor.loaders.detect import detect_riscv_format
from pyaxvisor.loaders.linux_image import load_riscv_image, parse_riscv_header
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.board import BootState
from pyaxvisor.vm.config import VmConfig

__all__ = ["FIRMWARE_NAMES", "RISCV", "load"]

#: ``-bios`` values that name pyaxvisor itself as the firmware (QEMU's spellings).
FIRMWARE_NAMES = ("default", "none")
#: How RISC-V kernels load.
RISCV = ImageFormat(detect_riscv_format, "riscv-image", parse_riscv_header, load_riscv_image,
                    "riscv64", L.RAW_LOAD_OFFSET, "RISC-V")


def load(space: AddrSpace, config: VmConfig) -> BootState:
    """Put the configured S-mode payload into ``space``; returns hart 0's start (a1 =
    the device tree; a0 = the hart id comes from the vCPU's create configuration)."""
    if config.kernel is None:
        raise InvalidInput("a riscv64 VM needs -kernel: an S-mode payload (Linux Image, "
                           "U-Boot S-mode, an ELF or a flat binary)")
    kernel, entry = load_kernel(space, config, RISCV)
    placed = {"kernel": (kernel.start, kernel.end)}
    initrd = None
    if config.initrd is not None:
        initrd = placed["initrd"] = load_initrd_for(space, config, kernel, placed)
    if config.dtb is not None:
        path, addr = str(config.dtb.path), config.dtb.load_addr
        dtb = read_dtb_file(config.dtb.path, bootargs=config.cmdline, initrd=initrd)
    else:
        path, addr = "<device tree>", config.dtb_addr
        dtb = build_riscv64_dtb(memory=[(r.gpa, r.size) for r in config.ram_regions],
                                harts=list(config.cpu_ids), bootargs=config.cmdline,
                                initrd=initrd,
                                exclude=[p for group in config.excluded_devices for p in group],
                                rng_seed=os.urandom(RNG_SEED_BYTES))
    dtb_addr = place_device_tree(space, config, dtb, addr, placed, path)
    return BootState(entry, {11: dtb_addr}, description=f"kernel {config.kernel.path}")

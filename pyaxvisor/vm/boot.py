"""Boot an AArch64 guest as QEMU's ``virt`` machine would: firmware in flash
(``-bios``), or a kernel (``-kernel``: arm64 ``Image``, possibly gzip-compressed,
ELF, or a raw binary) with an optional initrd, a generated device tree and
PSCI over HVC.

Placement: with ``-bios`` the firmware runs from flash at 0 and the device tree
sits at the start of RAM (0x4000_0000), where QEMU puts it for firmware. With
``-kernel`` the loader places the kernel, initrd and device tree (see
:mod:`pyaxvisor.vm.loader`) and vCPU 0 enters the kernel with x0 = the DTB.
Without either, the bundled guest (:mod:`pyaxvisor.guests`) runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pyaxvisor.errors import InvalidInput
from pyaxvisor.vm.aarch64_vm import FLASH_BASE, FLASH_SIZE, RAM_BASE, Aarch64Vm
from pyaxvisor.vm.fdt import build_aarch64_dtb
from pyaxvisor.vm.loader import (
    ImageError,
    detect_format,
    load_arm64_image,
    load_elf,
    load_initrd,
    load_raw,
    place_dtb,
    read_image,
)
from pyaxvisor.vm.result import VmResult

BUNDLED_LOAD = RAM_BASE + 0x8_0000


@dataclass
class BootSpec:
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    bios: Path | None = None
    memory: int = 512 << 20
    smp: int = 1
    timeout: float | None = None
    in_cpu_mmio: bool = True


def bundled_guest() -> bytes:
    return resources.files("pyaxvisor.guests").joinpath("aarch64/hello.bin").read_bytes()


def prepare(vm: Aarch64Vm, spec: BootSpec) -> tuple[int, int]:
    """Load everything into ``vm``; returns (entry, x0)."""
    ram_size = vm.ram_size
    if spec.bios is not None:
        if spec.kernel is not None:
            raise InvalidInput("-bios and -kernel together are not supported: the firmware "
                               "loads the kernel itself")
        fw = read_image(spec.bios, "firmware")
        if len(fw) > FLASH_SIZE:
            raise ImageError(f"firmware {spec.bios}: {len(fw)} bytes do not fit the "
                             f"{FLASH_SIZE >> 20} MiB flash")
        vm.write_guest(FLASH_BASE, fw)
        dtb = build_aarch64_dtb(memory=[(RAM_BASE, ram_size)], cpus=list(range(vm.smp)),
                                bootargs=spec.append)
        vm.write_guest(RAM_BASE, dtb)
        return FLASH_BASE, RAM_BASE
    if spec.kernel is None:
        vm.write_guest(BUNDLED_LOAD, bundled_guest())
        return BUNDLED_LOAD, 0
    data = read_image(spec.kernel, "kernel")
    path = str(spec.kernel)
    fmt = detect_format(data)
    if fmt == "elf":
        loaded = load_elf(vm.space, data, path=path, expected_machine="aarch64")
    elif fmt == "raw":
        loaded = load_raw(vm.space, data, addr=BUNDLED_LOAD, path=path)
    else:
        loaded = load_arm64_image(vm.space, data, ram_base=RAM_BASE, ram_size=ram_size,
                                  path=path)
    initrd = None
    if spec.initrd is not None:
        initrd = load_initrd(vm.space, read_image(spec.initrd, "initrd"), ram_base=RAM_BASE,
                             ram_size=ram_size, kernel_end=loaded.end, path=str(spec.initrd))
    dtb = build_aarch64_dtb(memory=[(RAM_BASE, ram_size)], cpus=list(range(vm.smp)),
                            bootargs=spec.append, initrd=initrd)
    dtb_addr = place_dtb(vm.space, dtb, ram_base=RAM_BASE, ram_size=ram_size)
    return loaded.entry, dtb_addr


def boot(spec: BootSpec, console_write: Callable[[bytes], None],
         on_vm: Callable[[Aarch64Vm], None] | None = None) -> VmResult:
    """Create the VM, load the guest, run it to the end, tear it down."""
    vm = Aarch64Vm(ram_size=spec.memory, smp=spec.smp, console_write=console_write,
                   in_cpu_mmio=spec.in_cpu_mmio)
    try:
        entry, x0 = prepare(vm, spec)
        if on_vm is not None:
            on_vm(vm)
        return vm.run(entry, dtb_addr=x0, timeout=spec.timeout)
    finally:
        vm.close()

"""Boards loading what a VmConfig describes: addresses given by a configuration
(AxVisor's ``*_load_addr``/``entry_point``) held against the images' formats, RAM at
a non-default base, device tree files, and the errors that name the key to fix.
Guest memory is read back after ``Vm.load``; nothing runs."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import ClassVar

import fake_board
import fdt
import pytest
from test_loader import aarch64_elf, arm64_image

from pyaxvisor import boards
from pyaxvisor.boards import board_class
from pyaxvisor.boards.aarch64_virt.fdt import build_aarch64_dtb
from pyaxvisor.boards.quick import config_for
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vm.config import ImageSpec, MemoryRegion, VmConfig
from pyaxvisor.vm.vm import Vm

RAM = 0x8000_0000
RAM_SIZE = 64 << 20


def virt(tmp_path: Path, **changes) -> VmConfig:
    config = VmConfig("aarch64", "virt", memory=(MemoryRegion(RAM, RAM_SIZE),),
                      source=tmp_path / "vm.toml")
    return config.with_(**changes)


def load(config: VmConfig):
    vm = Vm(config, board_class(config.arch, config.machine)(config))
    try:
        return vm, vm.load()
    except BaseException:
        vm.close()
        raise


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_flat_kernel_goes_where_the_config_says_with_its_entry(tmp_path):
    kernel = write(tmp_path, "k.bin", b"\x1f\x20\x03\xd5" * 64)  # nops
    initrd = write(tmp_path, "initrd", b"INITRD" * 100)
    config = virt(tmp_path, kernel=ImageSpec(kernel, RAM + 0x20_0000), entry=RAM + 0x20_0010,
                  initrd=ImageSpec(initrd, RAM + 0x100_0000), dtb_addr=RAM,
                  cmdline="console=ttyAMA0", cpu_ids=(0, 1))
    vm, start = load(config)
    try:
        assert start.entry == RAM + 0x20_0010
        assert start.gprs == {0: RAM}  # x0 = the device tree
        assert vm.read_guest(RAM + 0x20_0000, 256) == kernel.read_bytes()
        assert vm.read_guest(RAM + 0x100_0000, 600) == initrd.read_bytes()
        tree = fdt.parse_dtb(vm.read_guest(RAM, 0x2000))
        assert tree.get_property("reg", "/memory@80000000").data == [0, RAM, 0, RAM_SIZE]
        assert tree.get_property("bootargs", "/chosen").value == "console=ttyAMA0"
        assert tree.get_property("linux,initrd-start", "/chosen").data == [0, RAM + 0x100_0000]
        assert sorted(n.name for n in tree.get_node("/cpus").nodes) == ["cpu@0", "cpu@1"]
    finally:
        vm.close()


def test_without_addresses_the_formats_place_the_kernel_in_the_lowest_ram(tmp_path):
    image = arm64_image(text_offset=0)
    kernel = write(tmp_path, "Image.gz", gzip.compress(image))
    vm, start = load(virt(tmp_path, kernel=ImageSpec(kernel)))
    try:
        assert start.entry == RAM  # 2 MiB-aligned base of the RAM + text_offset 0
        assert vm.read_guest(RAM, len(image)) == image
        dtb_addr = start.gprs[0]
        assert RAM < dtb_addr < RAM + RAM_SIZE
        assert vm.read_guest(dtb_addr, 4) == b"\xd0\x0d\xfe\xed"
    finally:
        vm.close()


def test_an_arm64_image_goes_to_its_configured_address_if_booting_rst_allows(tmp_path):
    image = arm64_image(text_offset=0x8_0000)
    kernel = write(tmp_path, "Image", image)
    vm, start = load(virt(tmp_path, kernel=ImageSpec(kernel, RAM + 0x28_0000)))
    try:
        assert start.entry == RAM + 0x28_0000
        assert vm.read_guest(RAM + 0x28_0000, len(image)) == image
    finally:
        vm.close()
    with pytest.raises(InvalidInput, match=r"vm\.toml: \[kernel\] kernel_load_addr: 0x80210000 "
                                           r"is not a 2 MiB-aligned base in RAM plus the "
                                           r"Image's text_offset 0x80000"):
        load(virt(tmp_path, kernel=ImageSpec(kernel, RAM + 0x21_0000)))


def test_an_elf_entry_or_load_address_that_differs_from_the_file_names_the_fix(tmp_path):
    kernel = write(tmp_path, "k.elf", aarch64_elf(tmp_path, RAM + 0x10_0000))
    vm, start = load(virt(tmp_path, kernel=ImageSpec(kernel), entry=RAM + 0x10_0000))
    vm.close()
    assert start.entry == RAM + 0x10_0000
    with pytest.raises(InvalidInput, match=r"\[kernel\] entry_point: 0x80000000 is not where "
                                           r"the ELF's entry point is \(0x80100000\); set "
                                           r"\[kernel\] entry_point = 0x80100000"):
        load(virt(tmp_path, kernel=ImageSpec(kernel), entry=RAM))
    with pytest.raises(InvalidInput, match=r"kernel_load_addr: 0x80000000 is not where the "
                                           r"ELF's lowest segment is \(0x800[0-9a-f]{5}\)"):
        load(virt(tmp_path, kernel=ImageSpec(kernel, RAM)))


def test_a_device_tree_file_is_used_with_the_command_line_set_in_chosen(tmp_path):
    dtb = build_aarch64_dtb(memory=[(RAM, RAM_SIZE)], cpus=[0], bootargs="from the file")
    dtb_path = write(tmp_path, "board.dtb", dtb)
    kernel = write(tmp_path, "k.bin", bytes(64))
    vm, start = load(virt(tmp_path, kernel=ImageSpec(kernel, RAM + 0x8_0000),
                          dtb=ImageSpec(dtb_path, RAM + 0x10_0000), cmdline="from the config"))
    try:
        assert start.gprs[0] == RAM + 0x10_0000
        tree = fdt.parse_dtb(vm.read_guest(RAM + 0x10_0000, 0x2000))
        assert tree.get_property("bootargs", "/chosen").value == "from the config"
    finally:
        vm.close()
    bad = write(tmp_path, "bad.dtb", b"not a dtb at all")
    with pytest.raises(InvalidInput, match=r"bad\.dtb: not a device tree blob"):
        load(virt(tmp_path, kernel=ImageSpec(kernel), dtb=ImageSpec(bad)))


def _chosen(config: VmConfig, dtb_reg: int = 0) -> fdt.Node:
    """``/chosen`` of the device tree whose address the boot state puts in register
    ``dtb_reg`` (AArch64 x0, RISC-V a1 = x11)."""
    vm, start = load(config)
    try:
        return fdt.parse_dtb(vm.read_guest(start.gprs[dtb_reg], 0x2000)).get_node("/chosen")
    finally:
        vm.close()


def test_the_generated_device_tree_carries_fresh_random_seeds_as_qemus_virt(tmp_path):
    """AArch64: kaslr-seed and rng-seed, new for each VM, none with dtb-randomness off;
    RISC-V: rng-seed (QEMU's riscv virt has no kaslr-seed)."""
    kernel = write(tmp_path, "k.bin", b"\x1f\x20\x03\xd5" * 64)
    config = virt(tmp_path, kernel=ImageSpec(kernel, RAM + 0x20_0000), dtb_addr=RAM)
    first, second = _chosen(config), _chosen(config)
    for chosen in (first, second):  # a parser sees 32 bytes as eight 32-bit cells
        assert len(chosen.get_property("rng-seed").data) == 8
        assert len(chosen.get_property("kaslr-seed").data) == 2  # one 64-bit value
    assert first.get_property("rng-seed").data != second.get_property("rng-seed").data
    assert first.get_property("kaslr-seed").data != second.get_property("kaslr-seed").data
    off = _chosen(config.with_(dtb_randomness=False))
    assert not off.exist_property("rng-seed") and not off.exist_property("kaslr-seed")
    rv = config_for("riscv64", kernel=write(tmp_path, "rv.bin", b"\x13\x00\x00\x00" * 64))
    chosen = _chosen(rv, dtb_reg=11)
    assert len(chosen.get_property("rng-seed").data) == 8
    assert not chosen.exist_property("kaslr-seed")


def test_images_that_overlap_or_leave_ram_are_refused_before_writing(tmp_path):
    kernel = write(tmp_path, "k.bin", bytes(0x2000))
    initrd = write(tmp_path, "rd", bytes(0x2000))
    with pytest.raises(InvalidInput, match=r"rd: \[0x80081000, 0x80083000\) overlaps the kernel "
                                           r"at \[0x80080000, 0x80082000\)"):
        load(virt(tmp_path, kernel=ImageSpec(kernel, RAM + 0x8_0000),
                  initrd=ImageSpec(initrd, RAM + 0x8_1000)))
    with pytest.raises(InvalidInput, match=r"k\.bin: 0x2000 bytes at \[0x7ffff000, 0x80001000\) "
                                           r"do not fit in guest RAM"):
        load(virt(tmp_path, kernel=ImageSpec(kernel, RAM - 0x1000)))


def test_the_bundled_guest_needs_ram_where_it_is_linked(tmp_path):
    with pytest.raises(InvalidInput, match="the bundled guest runs at 0x40080000, where this "
                                           "VM has no RAM: give a kernel"):
        load(virt(tmp_path))


@pytest.mark.parametrize(("changes", "message"), [
    ({"memory": (MemoryRegion(0x0900_0000, 16 << 20),)},
     r"RAM \[0x9000000, 0xa000000\) overlaps the pl011 window at 0x9000000"),
    ({"memory": (MemoryRegion(RAM, (16 << 20) + 0x1000),)}, "must be a multiple of 2 MiB"),
    ({"cpu_ids": (0, 0x100_0000)}, r"MPIDR affinity 0x1000000 is not Aff2\.Aff1\.Aff0"),
    ({"cpu_ids": tuple(range(9))}, r"a virt VM has 1\.\.8 CPUs, not 9"),
    ({"kernel": ImageSpec(Path("/nonexistent/k")), "bios": ImageSpec(Path("/x"))},
     r"\[kernel\] bios_path: bios_path and kernel_path together are not supported"),
])
def test_board_rules_name_the_key_of_the_file(tmp_path, changes, message):
    with pytest.raises(InvalidInput, match=message) as err:
        load(virt(tmp_path, **changes))
    assert str(err.value).startswith(f"{tmp_path / 'vm.toml'}: [")


def test_the_pc_board_refuses_what_it_cannot_boot(tmp_path):
    config = config_for("x86_64", memory=64 << 20).with_(source=tmp_path / "pc.toml")
    cases = [
        ({"memory": (MemoryRegion(0x10_0000, 64 << 20),)},
         r"\[kernel\] memory_regions: the PC board's 64 MiB of RAM are \[0x0, 0x4000000\)"),
        ({"cpu_ids": (0, 2)}, r"\[base\] phys_cpu_ids: the PC board's APIC IDs are the vCPU "
                              r"numbers 0\.\.1, not \[0, 2\]"),
        ({"dtb": ImageSpec(Path("x.dtb"))}, r"\[kernel\] dtb_path: x86_64 guests get no device "
                                            r"tree"),
        ({"bios": ImageSpec(Path("bios.bin"))}, r"\[kernel\] bios_path: firmware is not "
                                                r"supported on x86_64"),
    ]
    cls = board_class("x86_64")
    for changes, message in cases:
        with pytest.raises(InvalidInput, match=message):
            cls(config.with_(**changes)).check()


class PinnedBoard(fake_board.FakeBoard):
    """The fake board, noting the host CPUs each vCPU thread may run on."""

    seen: ClassVar[dict[int, set[int]]] = {}

    def prepare_vcpu(self, vm, cpu, vcpu, start):
        self.seen[cpu] = os.sched_getaffinity(0)
        super().prepare_vcpu(vm, cpu, vcpu, start)


def test_phys_cpu_sets_pin_each_vcpu_thread(monkeypatch):
    monkeypatch.setattr(boards, "_REGISTRY", list(boards._REGISTRY))
    boards.register(boards.BoardEntry("fake64", ("fakeboard",), "fake_board"))
    host = sorted(os.sched_getaffinity(0))
    config = config_for("fake64", memory=16 << 20).with_(cpu_sets=(1 << host[-1],))
    vm = Vm(config, PinnedBoard(config))
    try:
        result = vm.run(timeout=0.3)
    finally:
        vm.close()
    assert result.reason == "timeout"
    assert PinnedBoard.seen == {0: {host[-1]}}
    config = config.with_(cpu_sets=(1 << 63,))
    vm = Vm(config, PinnedBoard(config))
    try:
        result = vm.run(timeout=5)
    finally:
        vm.close()
    assert result.reason == "error"
    assert "vCPU 0's mask 0x8000000000000000 names no host CPU" in str(result.error)

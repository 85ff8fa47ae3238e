"""AxVisor VM config files: reading (every rule and its message), writing, generating
a file for a kernel, and describing a configuration.

Config files are written here as text into ``tmp_path``; each bad-input case
changes one key of a valid file and expects the exact message.
"""

from __future__ import annotations

import os
import struct
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from pyaxvisor.axvmconfig.describe import describe
from pyaxvisor.axvmconfig.reader import parse_config, read_config
from pyaxvisor.axvmconfig.writer import generate, hex_address, render
from pyaxvisor.boards import board_class
from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal import HostHal
from pyaxvisor.mm import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.flags import MappingFlags
from pyaxvisor.mm.nested import nested_page_table
from pyaxvisor.vm.config import (
    DeviceSpec,
    ImageSpec,
    MapType,
    MemoryRegion,
    PassthroughSpec,
    VirtioDeviceSpec,
    VmConfig,
)

GUESTS = Path(str(resources.files("pyaxvisor.guests")))
SMP_ELF = GUESTS / "x86_64" / "smp.elf"
HELLO_BIN = GUESTS / "aarch64" / "hello.bin"
RWX = MappingFlags.READ | MappingFlags.WRITE | MappingFlags.EXECUTE

#: A valid aarch64 file, by table and key, values as TOML text.
ARM: dict[str, dict[str, str]] = {
    "pyaxvisor": {"arch": '"aarch64"'},
    "base": {"id": "1", "name": '"hello"', "vm_type": "1", "cpu_num": "2"},
    "kernel": {"entry_point": "0x4008_0000", "kernel_path": '"hello.bin"',
               "kernel_load_addr": "0x4008_0000",
               "memory_regions": "[[0x4000_0000, 0x2000_0000, 0x7, 0]]"},
    "devices": {"emu_devices": "[]", "passthrough_devices": "[]"},
}
#: A valid x86_64 file in the style of AxVisor's x86 templates (3-value regions).
X86: dict[str, dict[str, str]] = {
    "pyaxvisor": {"arch": '"x86_64"'},
    "base": {"id": "2", "name": '"smp"', "vm_type": "1", "cpu_num": "1"},
    "kernel": {"entry_point": "0x10_0000", "kernel_path": f'"{SMP_ELF}"',
               "kernel_load_addr": "0x10_0000",
               "memory_regions": "[[0x0, 0x1000_0000, 0x7]]"},
    "devices": {"emu_devices": "[]", "passthrough_devices": "[]"},
}


def toml_text(tables: dict[str, dict[str, str]], changes: dict[str, str | None] | None = None
              ) -> str:
    """The file of ``tables`` with ``changes`` ("table.key" → TOML value, or None to
    delete the key; "table" → None deletes the table)."""
    tables = {name: dict(keys) for name, keys in tables.items()}
    for where, value in (changes or {}).items():
        table, _, key = where.partition(".")
        if not key:
            del tables[table]
        elif value is None:
            tables[table].pop(key, None)
        else:
            tables.setdefault(table, {})[key] = value
    return "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) + "\n"
                   for name, keys in tables.items())


def write(tmp_path: Path, text: str | bytes, name: str = "vm.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def arm_dir(tmp_path: Path) -> Path:
    (tmp_path / "hello.bin").write_bytes(HELLO_BIN.read_bytes())
    return tmp_path


def arm(tmp_path: Path, changes: dict[str, str | None] | None = None, **kw: str) -> VmConfig:
    return read_config(write(tmp_path, toml_text(ARM, changes)), **kw)


def refused(tmp_path: Path, base: dict[str, dict[str, str]],
            changes: dict[str, str | None]) -> str:
    path = write(tmp_path, toml_text(base, changes))
    with pytest.raises(InvalidInput) as info:
        read_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


# -- reading: values --------------------------------------------------------------------------

def test_a_minimal_aarch64_file_maps_to_a_vm_config(arm_dir):
    config = arm(arm_dir)
    assert config == VmConfig(
        arch="aarch64", machine="virt", id=1, name="hello", vm_type=1, cpu_ids=(0, 1),
        memory=(MemoryRegion(0x4000_0000, 0x2000_0000, RWX, MapType.ALLOC),),
        kernel=ImageSpec(arm_dir / "hello.bin", 0x4008_0000), entry=0x4008_0000,
        interrupt_mode="no_irq", source=arm_dir / "vm.toml")
    assert config.extra == {}


def test_every_key_is_read(arm_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(arm_dir))
    (arm_dir / "boot").mkdir()
    config = arm(arm_dir, {
        "base.id": "7", "base.name": '"linux"', "base.vm_type": "2",
        "base.phys_cpu_ids": "[0x100, 0x101]", "base.phys_cpu_sets": "[0x1, 0x6]",
        "kernel.kernel_path": '"boot/Image"', "kernel.ramdisk_path": '"~/initrd.img"',
        "kernel.ramdisk_load_addr": "0x4800_0000", "kernel.dtb_path": '"/abs/virt.dtb"',
        "kernel.dtb_load_addr": "0x4400_0000", "kernel.cmdline": '"console=ttyAMA0 \\"q\\""',
        "kernel.image_location": '"memory"', "kernel.enable_bios": "false",
        "kernel.boot_protocol": '"kernel"', "kernel.uefi_firmware_path": '"fw/OVMF.fd"',
        "kernel.memory_regions": "[[0x4000_0000, 0x1000_0000, 0x7, 1], "
                                 "[0x5000_0000, 0x1000_0000, 0xf, 2], "
                                 "[0x0900_0000, 0x1000, 0x13]]",
        "devices.emu_devices": '[["uart", 0x0900_0000, 0x1000, 33, 2, []], '
                               '{name = "gicd", base_gpa = 0x0800_0000, length = 0x1_0000, '
                               'irq_id = 0, emu_type = 1, cfg_list = [1, 2]}]',
        "devices.passthrough_devices": '[["/"], ["uart0", 0x0900_0000, 0x0900_0000, 0x1000, '
                                       '33]]',
        "devices.excluded_devices": '[["/pcie@10000000", "/rtc"], []]',
        "devices.interrupt_mode": '"pt"', "devices.address_space_policy": '"virtualized"',
    })
    assert (config.id, config.name, config.vm_type) == (7, "linux", 2)
    assert config.cpu_ids == (0x100, 0x101) and config.cpu_sets == (1, 6)
    assert config.memory == (
        MemoryRegion(0x4000_0000, 0x1000_0000, RWX, MapType.IDENTICAL),
        MemoryRegion(0x5000_0000, 0x1000_0000, RWX | MappingFlags.USER, MapType.RESERVED),
        MemoryRegion(0x0900_0000, 0x1000, MappingFlags.READ | MappingFlags.WRITE
                     | MappingFlags.DEVICE, MapType.ALLOC))
    assert config.ram_size == 0x2000_0000  # the device region is not RAM
    assert config.kernel == ImageSpec(arm_dir / "boot" / "Image", 0x4008_0000)
    assert config.initrd == ImageSpec(arm_dir / "initrd.img", 0x4800_0000)
    assert config.dtb == ImageSpec(Path("/abs/virt.dtb"), 0x4400_0000)
    assert config.bios is None
    assert config.cmdline == 'console=ttyAMA0 "q"'
    assert config.devices == ()  # both describe the board's own devices
    assert config.passthrough == (PassthroughSpec("/"),
                                  PassthroughSpec("uart0", 0x0900_0000, 0x0900_0000, 0x1000, 33))
    assert config.excluded_devices == (("/pcie@10000000", "/rtc"), ())
    assert config.interrupt_mode == "passthrough"
    assert config.extra == {
        "image_location": "memory", "enable_bios": False, "boot_protocol": "direct",
        "uefi_firmware_path": arm_dir / "fw" / "OVMF.fd",
        "address_space_policy": "virtualized",
        "board_devices": (DeviceSpec("uart", 0x0900_0000, 0x1000, 33, 2),
                          DeviceSpec("gicd", 0x0800_0000, 0x1_0000, 0, 1, (1, 2)))}


def test_an_axvisor_aarch64_file_with_a_bare_dtb_load_addr(tmp_path):
    # The layout of AxVisor's arceos-aarch64-qemu-smp1.toml; the kernel need not exist.
    config = read_config(write(tmp_path, """
# Vm base info configs
[base]
id = 1
name = "arceos-qemu"
vm_type = 1
cpu_num = 1
phys_cpu_ids = [0]

[kernel]
entry_point = 0x8020_0000
image_location = "fs"
kernel_path = "/arceos-aarch64-dyn-smp1.bin"
kernel_load_addr = 0x8020_0000
dtb_load_addr = 0x8000_0000
memory_regions = [
  [0x8000_0000, 0x4000_0000, 0x7, 1], # System RAM 1G MAP_IDENTICAL
]

[devices]
passthrough_devices = [
  ["/",],
]
passthrough_addresses = [
    #[0x28041000, 0x100_0000]
]
excluded_devices = [
    ["/pcie@10000000"],
]
emu_devices = [
  # ["gppt-gicd", 0x0800_0000, 0x1_0000, 0, 0x21, []],
]
interrupt_mode = "passthrough"
"""), arch="aarch64")
    assert config.dtb is None
    assert config.dtb_addr == 0x8000_0000
    assert config.extra == {"image_location": "fs"}
    assert config.kernel == ImageSpec(Path("/arceos-aarch64-dyn-smp1.bin"), 0x8020_0000)
    assert config.memory == (MemoryRegion(0x8000_0000, 0x4000_0000, RWX, MapType.IDENTICAL),)
    assert config.passthrough == (PassthroughSpec("/"),)
    assert config.interrupt_mode == "passthrough"


def test_an_x86_file_with_three_value_regions_debug_exit_and_apic_passthrough(tmp_path):
    config = read_config(write(tmp_path, toml_text(X86, {
        "devices.emu_devices": '[["isa-debug-exit", 0xf4, 4, 0, 0, []]]',
        "devices.passthrough_devices": '[["IO APIC", 0xfec0_0000, 0xfec0_0000, 0x1000, 1], '
                                       '["Local APIC", 0xfee0_0000, 0xfee0_0000, 0x1000, 1]]',
        "kernel.cmdline": '"exit=5"'})))
    assert (config.arch, config.machine, config.cpu_ids) == ("x86_64", "pc", (0,))
    assert config.memory == (MemoryRegion(0, 0x1000_0000, RWX, MapType.ALLOC),)
    assert config.devices == (DeviceSpec("isa-debug-exit", 0xF4, 4),)
    assert [p.name for p in config.passthrough] == ["IO APIC", "Local APIC"]
    assert config.kernel == ImageSpec(SMP_ELF, 0x10_0000)


@pytest.mark.parametrize(("mode", "canonical"), [
    (None, "no_irq"), ('"no"', "no_irq"), ('"none"', "no_irq"), ('"no_irq"', "no_irq"),
    ('"emu"', "emu"), ('"emulated"', "emu"), ('"pt"', "passthrough"),
    ('"passthrough"', "passthrough")])
def test_interrupt_mode_spellings(arm_dir, mode, canonical):
    assert arm(arm_dir, {"devices.interrupt_mode": mode}).interrupt_mode == canonical


@pytest.mark.parametrize(("spelling", "canonical"), [
    ('"direct"', "direct"), ('"kernel"', "direct")])
def test_boot_protocol_direct_spellings_are_recorded(arm_dir, spelling, canonical):
    assert arm(arm_dir, {"kernel.boot_protocol": spelling}).extra == {"boot_protocol": canonical}


# -- reading: the architecture and the machine -------------------------------------------------

def arm64_image(text_offset: int = 0x20_0000, image_size: int = 0x10_0000) -> bytes:
    """An arm64 Image header (booting.rst) and a little code."""
    return struct.pack("<IIQQQQQQI", 0, 0, text_offset, image_size, 0b1010, 0, 0, 0,
                       0x644D5241) + bytes(4) + b"\x1f\x20\x03\xd5" * 64


def test_the_architecture_comes_from_the_kernel_when_nothing_names_it(tmp_path):
    (tmp_path / "Image").write_bytes(arm64_image())
    config = read_config(write(tmp_path, toml_text(ARM, {
        "pyaxvisor": None, "kernel.kernel_path": '"Image"',
        "kernel.entry_point": "0x4020_0000", "kernel.kernel_load_addr": "0x4020_0000"})))
    assert (config.arch, config.machine) == ("aarch64", "virt")
    x86 = read_config(write(tmp_path, toml_text(X86, {"pyaxvisor": None}), "x86.toml"))
    assert (x86.arch, x86.machine) == ("x86_64", "pc")


def test_the_architecture_argument_and_the_machine_decide_before_the_kernel(tmp_path):
    text = toml_text(X86, {"pyaxvisor": None, "kernel.kernel_path": '"missing.bin"'})
    path = write(tmp_path, text)
    assert read_config(path, arch="x86_64").arch == "x86_64"
    assert read_config(path, machine="q35").machine == "q35"
    on_file = write(tmp_path, text + '[pyaxvisor]\nmachine = "microvm"\n', "m.toml")
    assert (read_config(on_file).arch, read_config(on_file).machine) == ("x86_64", "microvm")
    # the argument overrides the file
    assert read_config(on_file, machine="pc").machine == "pc"


def test_the_architecture_argument_overrides_the_file(arm_dir):
    with pytest.raises(InvalidInput) as info:
        arm(arm_dir, arch="x86_64")
    # the file's other keys now meet the PC board's rules
    assert str(info.value).endswith("[kernel] memory_regions: the PC board's 512 MiB of RAM "
                                    "are [0x0, 0x20000000) (the boot protocols' e820 map); "
                                    "other RAM layouts are not supported")


FIX = 'add [pyaxvisor] arch = "aarch64" (or riscv64, x86_64) or pass --arch'


def test_a_raw_kernel_does_not_tell_the_architecture(arm_dir):
    message = refused(arm_dir, ARM, {"pyaxvisor": None})
    assert message == (f"cannot tell the guest architecture: {arm_dir / 'hello.bin'} does not "
                       "say what it is built for (a raw binary or compressed data); " + FIX)


def test_a_missing_kernel_is_named_when_the_architecture_must_come_from_it(tmp_path):
    message = refused(tmp_path, ARM, {"pyaxvisor": None})
    assert message == (f"[kernel] kernel_path: {tmp_path / 'hello.bin'}: No such file or "
                       f"directory (pyaxvisor reads it to tell the guest architecture; or "
                       f"{FIX})")
    (tmp_path / "hello.bin").mkdir()
    message = refused(tmp_path, ARM, {"pyaxvisor": None})
    assert message == (f"[kernel] kernel_path: {tmp_path / 'hello.bin'} is not a regular file "
                       f"(pyaxvisor reads it to tell the guest architecture; or {FIX})")


def test_a_kernel_for_an_architecture_without_a_board(tmp_path, monkeypatch):
    from pyaxvisor import boards

    monkeypatch.setattr(boards, "_REGISTRY", [e for e in boards._REGISTRY
                                              if e.arch != "riscv64"])
    riscv_elf = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HH", 2, 243) + bytes(44)
    (tmp_path / "hello.bin").write_bytes(riscv_elf)
    assert refused(tmp_path, ARM, {"pyaxvisor": None}) == (
        f"[kernel] kernel_path: {tmp_path / 'hello.bin'} is a riscv64 kernel; pyaxvisor "
        "emulates aarch64, x86_64")


def test_unknown_architectures_and_machines(arm_dir):
    assert refused(arm_dir, ARM, {"pyaxvisor.arch": '"mips"'}) == (
        "[pyaxvisor] arch: no board emulates 'mips' (choose one of aarch64, riscv64, x86_64)")
    assert refused(arm_dir, ARM, {"pyaxvisor.machine": '"raspi3"'}) == (
        "[pyaxvisor] machine: machine 'raspi3' is not supported: only 'virt'")
    path = write(arm_dir, toml_text(ARM))
    with pytest.raises(InvalidInput) as info:
        read_config(path, machine="raspi3")
    assert str(info.value) == f"{path}: machine 'raspi3' is not supported: only 'virt'"
    with pytest.raises(InvalidInput) as info:
        read_config(path, arch="mips")
    assert str(info.value) == (f"{path}: no board emulates 'mips' (choose one of aarch64, "
                               "riscv64, x86_64)")


# -- reading: the file itself ------------------------------------------------------------------

def test_file_problems(tmp_path):
    def message(path: Path) -> str:
        with pytest.raises(InvalidInput) as info:
            read_config(path)
        return str(info.value)

    assert message(tmp_path / "none.toml") == f"{tmp_path / 'none.toml'}: no such file"
    assert message(tmp_path) == f"{tmp_path}: is a directory, not a VM config file"
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate((1 << 20) + 1)  # sparse: refused from its size, not read
    assert message(big) == f"{big}: the file is more than 1 MiB; a VM config file is at most 1 MiB"
    latin = write(tmp_path, b'[base]\nname = "caf\xe9"\n', "latin.toml")
    assert message(latin) == f"{latin}: not UTF-8 text (byte 0xe9 at offset 18)"
    broken = write(tmp_path, "[base\nid = 1\n", "broken.toml")
    assert message(broken) == (f"{broken}: TOML syntax error: Expected ']' at the end of a "
                               "table declaration (at line 1, column 6)")


def test_exactly_one_mib_is_read(arm_dir):
    text = toml_text(ARM)
    path = write(arm_dir, text + "#" * ((1 << 20) - len(text) - 1) + "\n")
    assert os.path.getsize(path) == 1 << 20
    assert read_config(path).name == "hello"


def test_parse_config_names_the_source_and_resolves_paths_against_it(arm_dir):
    config = parse_config(toml_text(ARM), source=arm_dir / "sub" / "x.toml")
    assert config.source == arm_dir / "sub" / "x.toml"
    assert config.kernel == ImageSpec(arm_dir / "sub" / "hello.bin", 0x4008_0000)


def test_relative_paths_become_absolute(arm_dir, monkeypatch):
    monkeypatch.chdir(arm_dir)
    config = read_config(Path("vm.toml").parent / write(arm_dir, toml_text(ARM)).name)
    assert config.kernel.path == arm_dir / "hello.bin" and config.kernel.path.is_absolute()


# -- reading: every bad input, with its message ------------------------------------------------

REGION = "[kernel] memory_regions[0]"
FLAGS = "(read 1, write 2, execute 4, user 8, device 16, uncached 32)"
EMU_KNOWN = ("0x0 meta device, 0x1 interrupt controller, 0x2 console, 0x3 fw_cfg, "
             "0xa IVC channel, 0x20 GIC partial-passthrough redistributor, "
             "0x21 GIC partial-passthrough distributor, 0x22 GIC partial-passthrough ITS, "
             "0x30 PPPT global, 0xe1 virtio block, 0xe2 virtio net, 0xe3 virtio console")
VIRT_WINDOWS = ("intc [0x8000000, 0x8020000), pl011 [0x9000000, 0x9001000), "
                "pl061 [0x9030000, 0x9031000), flash [0x0, 0x8000000)")
PC_WINDOWS = "IO APIC [0xfec00000, 0xfec01000), Local APIC [0xfee00000, 0xfee01000)"
PASSTHROUGH_ROW = ('values; write just the name (["/"] or a device-tree path) or all five: '
                   "[name, base_gpa, base_hpa, length, irq_id]")
FIRMWARE = "pyaxvisor cannot boot through firmware: it loads the kernel directly"

BAD_ARM = [
    # tables and keys
    ({"device.x": "1"}, "[device]: unknown table (known: [base], [kernel], [devices], "
                        "[pyaxvisor])"),
    ({"devices": None}, "[devices]: missing table; AxVisor requires it (at least "
                        "emu_devices = [] and passthrough_devices = [])"),
    ({"base": None}, "[base]: missing table; AxVisor requires it (id, name, vm_type, cpu_num)"),
    ({"base.cpus": "2"}, "[base] cpus: unknown key (known: id, name, vm_type, cpu_num, "
                         "phys_cpu_ids, phys_cpu_sets)"),
    ({"pyaxvisor.cpu": '"max"'}, "[pyaxvisor] cpu: unknown key (known: arch, machine)"),
    ({"base.cpu_num": None}, "[base] cpu_num: missing; [base] requires id, name, vm_type, "
                             "cpu_num"),
    ({"kernel.memory_regions": None}, "[kernel] memory_regions: missing; [kernel] requires "
                                      "kernel_path, memory_regions"),
    ({"devices.passthrough_devices": None}, "[devices] passthrough_devices: missing; "
                                            "[devices] requires emu_devices, "
                                            "passthrough_devices"),
    # kinds
    ({"base.cpu_num": '"2"'}, '[base] cpu_num: expected an integer, found a string ("2")'),
    ({"base.cpu_num": "true"}, "[base] cpu_num: expected an integer, found a boolean (true)"),
    ({"base.id": "1.5"}, "[base] id: expected an integer, found a float (1.5)"),
    ({"base.id": "1979-05-27"}, "[base] id: expected an integer, found a date or time "
                                "(1979-05-27)"),
    ({"base.name": "3"}, "[base] name: expected a string, found an integer (3)"),
    ({"base.name": '"a\\u0000b"'}, '[base] name: "a\\u0000b" contains a NUL character'),
    ({"kernel.enable_bios": "1"}, "[kernel] enable_bios: expected a boolean (true or false), "
                                  "found an integer (1)"),
    ({"kernel.cmdline": "[1]"}, "[kernel] cmdline: expected a string, found an array ([1])"),
    ({"kernel.memory_regions": "5"}, "[kernel] memory_regions: expected an array, found an "
                                     "integer (5)"),
    ({"kernel.memory_regions": '[["0x4000_0000", 0x2000_0000, 7]]'},
     f'{REGION}: gpa: expected an integer, found a string ("0x4000_0000")'),
    ({"devices.emu_devices": "[1]"}, "[devices] emu_devices[0]: expected a row [name, base_gpa, "
                                     "length, irq_id, emu_type, cfg_list], found an integer (1)"),
    ({"devices.excluded_devices": '[["/a", 1]]'},
     "[devices] excluded_devices[0]: expected a string, found an integer (1)"),
    ({"devices.excluded_devices": '["/a"]'},
     '[devices] excluded_devices[0]: expected an array, found a string ("/a")'),
    ({"kernel.kernel_path": '""'}, "[kernel] kernel_path: the path is empty"),
    ({"pyaxvisor.arch": "64"}, "[pyaxvisor] arch: expected a string, found an integer (0x40)"),
    # negative and absurd values
    ({"kernel.entry_point": "-1"}, "[kernel] entry_point: -1 is negative"),
    ({"kernel.entry_point": "0x1_0000_0000_0000_0000"},
     "[kernel] entry_point: 0x10000000000000000 does not fit in 64 bits"),
    ({"base.id": "-3"}, "[base] id: -3 is negative"),
    ({"base.cpu_num": "0"}, "[base] cpu_num: 0 vCPUs; a VM has 1..4096"),
    ({"base.cpu_num": "5000"}, "[base] cpu_num: 5000 vCPUs; a VM has 1..4096"),
    ({"base.vm_type": "3"}, "[base] vm_type: unknown VM type 3 (0 host VM, 1 RTOS, 2 Linux)"),
    ({"base.cpu_num": "9"}, "[base] cpu_num: a virt VM has 1..8 CPUs, not 9"),
    # per-vCPU lists
    ({"base.phys_cpu_ids": "[0]"}, "[base] phys_cpu_ids: 1 given for cpu_num = 2 (one per "
                                   "vCPU)"),
    ({"base.phys_cpu_ids": "[1, 1]"}, "[base] phys_cpu_ids[1]: 1 is also vCPU 0's id"),
    ({"base.phys_cpu_ids": "[0, -1]"}, "[base] phys_cpu_ids[1]: -1 is negative"),
    ({"base.phys_cpu_ids": "[0, 0x100_0000]"},
     "[base] phys_cpu_ids: MPIDR affinity 0x1000000 is not Aff2.Aff1.Aff0 (0..0xffffff)"),
    ({"base.phys_cpu_sets": "[1, 2, 4]"}, "[base] phys_cpu_sets: 3 given for cpu_num = 2 "
                                          "(one per vCPU)"),
    ({"base.phys_cpu_sets": "[1, 0]"}, "[base] phys_cpu_sets[1]: mask 0 names no host CPU for "
                                       "vCPU 1"),
    ({"base.phys_cpu_ids": "[" + "0, " * 4097 + "]"},
     "[base] phys_cpu_ids: 4097 entries; at most 4096"),
    # memory regions
    ({"kernel.memory_regions": "[]"}, "[kernel] memory_regions: no regions: the VM needs RAM"),
    ({"kernel.memory_regions": "[[0x4000_0000, 0x2000_0000]]"},
     f"{REGION}: 2 values; a row is [gpa, size, flags, map_type]; the last 1 may be left out"),
    ({"kernel.memory_regions": "[[0x4000_0000, 0x2000_0000, 7, 0, 0]]"},
     f"{REGION}: 5 values; a row is [gpa, size, flags, map_type]; the last 1 may be left out"),
    ({"kernel.memory_regions": "[{gpa = 0x4000_0000, size = 0x2000_0000}]"},
     f"{REGION}: field flags is missing (a row is [gpa, size, flags, map_type])"),
    ({"kernel.memory_regions": "[{gpa = 0, size = 0x1000, flags = 7, kind = 0}]"},
     f'{REGION}: unknown field "kind" (fields: gpa, size, flags, map_type)'),
    ({"kernel.memory_regions": "[[0x4000_0800, 0x2000_0000, 7]]"},
     f"{REGION}: gpa 0x40000800 is not 4 KiB aligned"),
    ({"kernel.memory_regions": "[[0x4000_0000, 0x2000_0800, 7]]"},
     f"{REGION}: size 0x20000800 is not a multiple of 4 KiB"),
    ({"kernel.memory_regions": "[[0x4000_0000, 0, 7]]"}, f"{REGION}: size is 0"),
    ({"kernel.memory_regions": "[[0xf_ffff_ffff_f000, 0x2000, 7]]"},
     f"{REGION}: [0xffffffffff000, 0x10000000001000) ends beyond 52-bit guest physical "
     "addresses"),
    ({"kernel.memory_regions": "[[0x4000_0000, 0x2000_0000, 0x47]]"},
     f"{REGION}: flags 0x47 has unknown bits 0x40 {FLAGS}"),
    ({"kernel.memory_regions": "[[0x4000_0000, 0x2000_0000, 7, 3]]"},
     f"{REGION}: unknown map_type 3 (0 alloc, 1 identical, 2 reserved)"),
    ({"kernel.memory_regions": "[[0x4000_0000, 0x2000_0000, 7], [0x5000_0000, 0x1000_0000, 7]]"},
     "[kernel] memory_regions[1]: [0x50000000, 0x60000000) overlaps memory_regions[0] "
     "[0x40000000, 0x60000000)"),
    ({"kernel.memory_regions": "[[0x5000_0000, 0x1000_0000, 7], [0x4000_0000, 0x2000_0000, 7]]"},
     "[kernel] memory_regions[1]: [0x40000000, 0x60000000) overlaps memory_regions[0] "
     "[0x50000000, 0x60000000)"),
    ({"kernel.memory_regions": "[" + "[0x4000_0000, 0x1000, 7], " * 1025 + "]"},
     "[kernel] memory_regions: 1025 entries; at most 1024"),
    ({"kernel.memory_regions": "[[0x0900_0000, 0x1000, 0x13]]"},
     "[kernel] memory_regions: no RAM: every region has the device flag (16)"),
    ({"kernel.memory_regions": "[[0x4000_0000, 0x2000_0000, 7], [0x0a00_0000, 0x1000, 0x13]]"},
     "[kernel] memory_regions[1]: pyaxvisor cannot map host device memory [0xa000000, "
     "0xa001000): it has no host devices; a region with the device flag (16) must lie in one "
     f"of the virt board's device windows: {VIRT_WINDOWS}"),
    ({"kernel.memory_regions": "[[0x4000_0000, 0x40_0000, 7]]"},
     "[kernel] memory_regions: RAM size 0x400000 must be a multiple of 2 MiB, >= 16 MiB"),
    ({"kernel.memory_regions": "[[0x4000_0000, 0x2000_0000, 7], [0x0800_0000, 0x100_0000, 7]]",
      "kernel.entry_point": "0x4000_0000"},
     "[kernel] memory_regions: RAM [0x8000000, 0x9000000) overlaps the intc window at "
     "0x8000000 of the virt board"),
    # addresses in RAM
    ({"kernel.entry_point": "0x1000"}, "[kernel] entry_point: 0x1000 is not in guest RAM (the "
                                       "RAM regions: [0x40000000, 0x60000000))"),
    ({"kernel.kernel_load_addr": "0x6000_0000"},
     "[kernel] kernel_load_addr: 0x60000000 is not in guest RAM (the RAM regions: "
     "[0x40000000, 0x60000000))"),
    ({"kernel.ramdisk_load_addr": "0x4800_0000"},
     "[kernel] ramdisk_load_addr: given without ramdisk_path"),
    # strings with a fixed set of values
    ({"devices.interrupt_mode": '"fast"'}, '[devices] interrupt_mode: unknown value "fast" (one '
                                          "of no_irq, emu, passthrough; also no, none, emulated, "
                                          "pt)"),
    ({"kernel.boot_protocol": '"pxe"'}, '[kernel] boot_protocol: unknown value "pxe" (one of '
                                       "direct, multiboot, uefi; also kernel, bios, axvm-bios, "
                                       "efi)"),
    ({"kernel.image_location": '"disk"'}, '[kernel] image_location: unknown value "disk" (one '
                                         "of memory, fs)"),
    ({"devices.address_space_policy": '"identity"'},
     '[devices] address_space_policy: unknown value "identity" (one of virtualized, '
     "passthrough)"),
    # boot protocols: AxVisor's rules, then pyaxvisor's
    ({"kernel.boot_protocol": '"multiboot"'},
     "[kernel] boot_protocol: boot_protocol requires enable_bios = true"),
    ({"kernel.boot_protocol": '"efi"', "kernel.enable_bios": "false"},
     "[kernel] boot_protocol: boot_protocol requires enable_bios = true"),
    ({"kernel.boot_protocol": '"uefi"', "kernel.enable_bios": "true"},
     "[kernel] boot_protocol: uefi boot is for x86_64 guests, not aarch64"),
    ({"kernel.boot_protocol": '"direct"', "kernel.enable_bios": "true"},
     "[kernel] boot_protocol: direct boot conflicts with enable_bios = true"),
    ({"kernel.enable_bios": "true"},
     f"[kernel] enable_bios: {FIRMWARE} (enable_bios = false, or leave it out)"),
    # what pyaxvisor cannot provide
    ({"kernel.bios_path": '"u-boot.bin"'}, "[kernel] bios_path: bios_path and kernel_path "
                                          "together are not supported: the firmware loads "
                                          "the kernel itself"),
    ({"devices.emu_devices": '[["gppt-gicd", 0x0800_0000, 0x1_0000, 0, 0x21, []]]'},
     "[devices] emu_devices[0]: pyaxvisor cannot provide the GIC partial-passthrough "
     f"distributor 'gppt-gicd' at [0x8000000, 0x8010000): the virt board has {VIRT_WINDOWS} "
     "(a console or interrupt controller there describes it)"),
    ({"devices.emu_devices": '[["uart", 0x0a00_0000, 0x1000, 33, 2, []]]'},
     "[devices] emu_devices[0]: pyaxvisor cannot provide the console 'uart' at "
     f"[0xa000000, 0xa001000): the virt board has {VIRT_WINDOWS} (a console or interrupt "
     "controller there describes it)"),
    ({"devices.emu_devices": '[["isa-debug-exit", 0xf4, 4, 0, 0, []]]'},
     "[devices] emu_devices[0]: pyaxvisor cannot provide the meta device 'isa-debug-exit' at "
     f"[0xf4, 0xf8): the virt board has {VIRT_WINDOWS} (a console or interrupt controller "
     "there describes it)"),
    ({"devices.emu_devices": '[["x", 0x0900_0000, 0x1000, 0, 7, []]]'},
     f"[devices] emu_devices[0]: unknown emu_type 0x7 ({EMU_KNOWN})"),
    ({"devices.emu_devices": '[["x", 0x0900_0000, 0x1000, 0, 2]]'},
     "[devices] emu_devices[0]: 5 values; a row is [name, base_gpa, length, irq_id, emu_type, "
     "cfg_list]"),
    ({"devices.emu_devices": '[["x", 0x0900_0000, 0x1000, 0, 2, [-1]]]'},
     "[devices] emu_devices[0]: cfg_list -1 is negative"),
    ({"devices.passthrough_devices": '[["/timer"]]'},
     "[devices] passthrough_devices[0]: pyaxvisor cannot pass through '/timer': it has no host "
     f"devices, and the virt board's emulated ones are {VIRT_WINDOWS} ([\"/\"] stands for them "
     "all)"),
    ({"devices.passthrough_devices": '[["gic", 0x0800_0000, 0x0800_0000]]'},
     f"[devices] passthrough_devices[0]: 3 {PASSTHROUGH_ROW}"),
    ({"devices.passthrough_devices": '[["uart", 0x0900_0000, 0x0900_0000, 0, 33]]'},
     "[devices] passthrough_devices[0]: length is 0"),
    ({"devices.passthrough_devices": '[["rtc", 0x0901_0000, 0x0901_0000, 0x1000, 34]]'},
     "[devices] passthrough_devices[0]: pyaxvisor cannot pass through 'rtc' at [0x9010000, "
     f"0x9011000): it has no host devices, and the virt board's emulated ones are "
     f"{VIRT_WINDOWS} ([\"/\"] stands for them all)"),
    ({"devices.passthrough_addresses": "[[0x2804_1000, 0x100_0000]]"},
     "[devices] passthrough_addresses[0]: pyaxvisor cannot pass through host memory "
     "[0x28041000, 0x29041000): it has no host devices"),
    ({"devices.passthrough_addresses": "[[0x2804_1000]]"},
     "[devices] passthrough_addresses[0]: 1 values; a row is [base_gpa, length]"),
    ({"devices.passthrough_ports": "[[0x3f8, 8]]"},
     "[devices] passthrough_ports[0]: pyaxvisor cannot pass through host ports [0x3f8, "
     "0x400): it has no host devices"),
    ({"devices.emu_devices": "[" + '["u", 0x0900_0000, 0x1000, 33, 2, []], ' * 1025 + "]"},
     "[devices] emu_devices: 1025 entries; at most 1024"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_ARM,
                         ids=[f"{i}-{next(iter(c))}" for i, (c, _) in enumerate(BAD_ARM)])
def test_bad_aarch64_files_are_refused_with_file_key_and_problem(arm_dir, changes, message):
    assert refused(arm_dir, ARM, changes) == message


BAD_X86 = [
    ({"kernel.boot_protocol": '"uefi"', "kernel.enable_bios": "true"},
     "[kernel] boot_protocol: uefi needs uefi_firmware_path or bios_path"),
    ({"kernel.boot_protocol": '"uefi"', "kernel.enable_bios": "true",
      "kernel.uefi_firmware_path": '"OVMF.fd"'},
     "[kernel] boot_protocol: uefi needs bios_load_addr"),
    ({"kernel.boot_protocol": '"uefi"', "kernel.enable_bios": "true",
      "kernel.uefi_firmware_path": '"OVMF.fd"', "kernel.bios_load_addr": "0xffe0_0000"},
     f'[kernel] boot_protocol: {FIRMWARE} (boot_protocol = "direct", or leave it out)'),
    ({"kernel.boot_protocol": '"axvm-bios"', "kernel.enable_bios": "true"},
     f'[kernel] boot_protocol: {FIRMWARE} (boot_protocol = "direct", or leave it out)'),
    ({"kernel.bios_path": '"axvm-bios.bin"', "kernel.bios_load_addr": "0x8000"},
     "[kernel] bios_path: firmware is not supported on x86_64: give the kernel itself "
     "(bzImage, Multiboot, ELF or raw)"),
    ({"kernel.dtb_path": '"x.dtb"'}, "[kernel] dtb_path: x86_64 guests get no device tree (the "
                                     "boot protocols pass e820 and the MP table)"),
    ({"kernel.ramdisk_path": '"initrd"', "kernel.ramdisk_load_addr": "0x800_0000"},
     "[kernel] ramdisk_load_addr: x86 kernels get their initrd where their boot protocol puts "
     "it; leave it out"),
    ({"kernel.memory_regions": "[[0x0, 0x800_0000, 7], [0x1000_0000, 0x800_0000, 7]]"},
     "[kernel] memory_regions: the PC board's 256 MiB of RAM are [0x0, 0x10000000) (the boot "
     "protocols' e820 map); other RAM layouts are not supported"),
    ({"base.phys_cpu_ids": "[1]"}, "[base] phys_cpu_ids: the PC board's APIC IDs are the vCPU "
                                   "numbers 0..0, not [1]"),
    ({"devices.emu_devices": '[["isa-debug-exit", 0xf4, 3, 0, 0, []]]'},
     "[devices] emu_devices[0]: isa-debug-exit takes 1, 2 or 4 ports below 0x10000, not 3 at "
     "0xf4"),
    ({"devices.emu_devices": '[["isa-debug-exit", 0xfffe, 4, 0, 0, []]]'},
     "[devices] emu_devices[0]: isa-debug-exit takes 1, 2 or 4 ports below 0x10000, not 4 at "
     "0xfffe"),
    ({"devices.emu_devices": '[["isa-debug-exit", 0xf4, 4, 0, 2, []]]'},
     '[devices] emu_devices[0]: write isa-debug-exit as ["isa-debug-exit", iobase, iosize, 0, '
     "0, []]"),
    ({"devices.emu_devices": '[["com1", 0x3f8, 8, 4, 2, []]]'},
     "[devices] emu_devices[0]: pyaxvisor cannot provide the console 'com1' at [0x3f8, 0x400): "
     f"the pc board has {PC_WINDOWS} (a console or interrupt controller there describes it); "
     "and isa-debug-exit on ports"),
    ({"devices.passthrough_devices": '[["HPET", 0xfed0_0000, 0xfed0_0000, 0x1000, 1]]'},
     "[devices] passthrough_devices[0]: pyaxvisor cannot pass through 'HPET' at [0xfed00000, "
     f"0xfed01000): it has no host devices, and the pc board's emulated ones are {PC_WINDOWS} "
     '(["/"] stands for them all)'),
]


@pytest.mark.parametrize(("changes", "message"), BAD_X86,
                         ids=[f"{i}-{next(iter(c))}" for i, (c, _) in enumerate(BAD_X86)])
def test_bad_x86_files_are_refused_with_file_key_and_problem(tmp_path, changes, message):
    assert refused(tmp_path, X86, changes) == message


def test_keys_outside_tables_and_tables_that_are_not_tables(arm_dir):
    path = write(arm_dir, "id = 1\n" + toml_text(ARM))
    with pytest.raises(InvalidInput) as info:
        read_config(path)
    assert str(info.value) == (f"{path}: id: a key outside the tables (keys belong in [base], "
                               "[kernel], [devices], [pyaxvisor])")
    path = write(arm_dir, "base = 1\n" + toml_text(ARM, {"base": None}))
    with pytest.raises(InvalidInput) as info:
        read_config(path)
    assert str(info.value) == f"{path}: base: expected the table [base], found 1"


# -- writing ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "text"), [
    (0, "0x0"), (0xF4, "0xf4"), (0xFFFF, "0xffff"), (0x1_0000, "0x1_0000"),
    (0x20_0000, "0x20_0000"), (0x8000_0000, "0x8000_0000"), (0x1_0000_0000, "0x1_0000_0000")])
def test_hex_addresses_have_an_underscore_every_four_digits(value, text):
    assert hex_address(value) == text


def round_trip(config: VmConfig, tmp_path: Path) -> VmConfig:
    path = write(tmp_path, render(config), "written.toml")
    again = read_config(path)
    assert again.with_(source=config.source) == config
    assert again.extra == config.extra
    return again


def test_render_round_trips_a_file_with_every_key(arm_dir):
    config = arm(arm_dir, {
        "base.phys_cpu_ids": "[0x100, 0x101]", "base.phys_cpu_sets": "[0x1, 0x6]",
        "kernel.ramdisk_path": '"initrd.img"', "kernel.dtb_load_addr": "0x4400_0000",
        "kernel.cmdline": '"a \\"quoted\\" \\\\ back\\tslash \\u00e9 \\u0001"',
        "kernel.image_location": '"fs"', "kernel.boot_protocol": '"direct"',
        "kernel.uefi_firmware_path": '"OVMF.fd"',
        "kernel.memory_regions": "[[0x4000_0000, 0x1000_0000, 0x7, 1], "
                                 "[0x5000_0000, 0x1000_0000, 0x3], [0x0900_0000, 0x1000, 0x13]]",
        "devices.emu_devices": '[["uart", 0x0900_0000, 0x1000, 33, 2, [1, 0x20]]]',
        "devices.passthrough_devices": '[["/"], ["gic", 0x0800_0000, 0x0800_0000, 0x1_0000, '
                                       '0]]',
        "devices.excluded_devices": '[["/pcie@10000000"]]',
        "devices.interrupt_mode": '"emulated"', "devices.address_space_policy": '"passthrough"'})
    round_trip(config, arm_dir)


def test_render_round_trips_an_x86_file(tmp_path):
    config = read_config(write(tmp_path, toml_text(X86, {
        "pyaxvisor.machine": '"q35"', "base.cpu_num": "2",
        "devices.emu_devices": '[["isa-debug-exit", 0xf4, 4, 0, 0, []]]',
        "devices.passthrough_devices": '[["IO APIC", 0xfec0_0000, 0xfec0_0000, 0x1000, 1]]',
        "kernel.memory_regions": "[[0x0, 0xc000_0000, 0x7], [0x1_0000_0000, 0x4000_0000, 7]]",
    })))
    again = round_trip(config, tmp_path)
    assert again.machine == "q35" and again.ram_size == 4 << 30


def test_render_writes_axvisor_layout_with_comments(arm_dir):
    text = render(arm(arm_dir, {"devices.passthrough_devices": '[["/"]]'}))
    doc = tomllib.loads(text)
    assert list(doc) == ["pyaxvisor", "base", "kernel", "devices"]
    assert "memory_regions = [\n  [0x4000_0000, 0x2000_0000, 0x7, 0], # 512 MiB RAM, alloc, " \
           "rwx---\n]" in text
    assert "entry_point = 0x4008_0000\n" in text
    assert f'kernel_path = "{arm_dir / "hello.bin"}"\n' in text
    assert 'passthrough_devices = [\n  ["/"],\n]' in text
    assert 'interrupt_mode = "no_irq"\n' in text
    assert text.startswith("# AxVisor VM config, written by pyaxvisor ")
    assert sum(line.startswith("#") for line in text.splitlines()) >= 10


def test_render_needs_a_kernel_and_leaves_out_addresses_its_format_gives(tmp_path):
    from pyaxvisor.boards.quick import config_for

    with pytest.raises(InvalidInput) as info:
        render(config_for("aarch64"))
    assert str(info.value) == ("an AxVisor VM config names its kernel; this configuration has "
                               "none (generate() writes one for a kernel file)")
    text = render(config_for("aarch64", kernel=HELLO_BIN))
    assert "entry_point" not in text.replace("(entry_point", "")
    assert "# (entry_point / kernel_load_addr left out: the kernel's format says.)" in text
    again = read_config(write(tmp_path, text))
    assert again.kernel == ImageSpec(HELLO_BIN.absolute(), None) and again.entry is None


# -- generate --------------------------------------------------------------------------------

def aarch64_elf(entry: int, paddr: int, code: bytes) -> bytes:
    """An ELF64 AArch64 executable with one PT_LOAD segment."""
    header = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 2, 183, 1, entry,
                         64, 0, 0, 64, 56, 1, 64, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, paddr, paddr, len(code), len(code) + 0x100,
                          0x1000)
    return header + segment + bytes(0x1000 - 120) + code


def bzimage(kernel: bytes = b"\x90" * 0x2000) -> bytes:
    """A bzImage (boot protocol 2.15, 64-bit entry, relocatable) with 1 setup sector."""
    setup = bytearray(1024)
    setup[0x1F1] = 1
    struct.pack_into("<I", setup, 0x1F4, len(kernel) // 16)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x206] = b"\xeb\x66HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    setup[0x211] = 1
    struct.pack_into("<IBBH", setup, 0x230, 0x20_0000, 1, 21, 1)
    struct.pack_into("<I", setup, 0x238, 255)
    struct.pack_into("<I", setup, 0x260, 0x10000)
    return bytes(setup) + kernel


def boots(config: VmConfig) -> int:
    """The entry the board's loader gives ``config`` in a scratch address space (it
    refuses a load address or entry point the image's format does not agree with)."""
    from pyaxvisor.boards.aarch64_virt import boot as virt_boot
    from pyaxvisor.boards.x86_pc import boot as pc_boot

    cls = board_class(config.arch, config.machine)
    boot = pc_boot if config.arch == "x86_64" else virt_boot
    with HostHal(config.ram_size + (64 << 20)) as hal:
        space = AddrSpace(hal, nested_page_table(hal, config.arch, **cls.page_table_args))
        try:
            for r in config.ram_regions:
                space.map_ram(GuestPhysAddr(r.gpa), r.size)
            return boot.load(space, config).entry
        finally:
            space.destroy()


@pytest.mark.parametrize(("name", "data", "load", "entry", "vm_type"), [
    ("raw.bin", b"\x1f\x20\x03\xd5" * 16, 0x4008_0000, 0x4008_0000, 1),
    ("Image", arm64_image(), 0x4020_0000, 0x4020_0000, 2),
    ("Image0", arm64_image(text_offset=0), 0x4000_0000, 0x4000_0000, 2),
    ("kernel.elf", aarch64_elf(0x4010_0040, 0x4010_0000, bytes(0x80)), 0x4010_0000,
     0x4010_0040, 1),
])
def test_generate_aarch64_places_each_format_where_the_board_loads_it(tmp_path, name, data,
                                                                      load, entry, vm_type):
    (tmp_path / name).write_bytes(data)
    config = generate("aarch64", kernel=tmp_path / name, smp=2, cmdline="console=ttyAMA0")
    assert (config.kernel, config.entry) == (ImageSpec(tmp_path / name, load), entry)
    assert (config.arch, config.machine, config.cpu_ids, config.vm_type) == \
        ("aarch64", "virt", (0, 1), vm_type)
    assert config.memory == (MemoryRegion(0x4000_0000, 512 << 20),)
    assert boots(config) == entry
    round_trip(config, tmp_path)


def test_a_wrong_address_is_refused_by_the_board_so_generate_must_be_exact(tmp_path):
    (tmp_path / "Image").write_bytes(arm64_image())
    config = generate("aarch64", kernel=tmp_path / "Image")
    with pytest.raises(InvalidInput, match="set \\[kernel\\] entry_point = 0x40200000"):
        boots(config.with_(entry=0x4008_0000))


@pytest.mark.parametrize(("name", "data", "load", "entry", "vm_type"), [
    ("smp.elf", SMP_ELF.read_bytes(), 0x10_0000, None, 1),
    ("bzImage", bzimage(), 0x10_0000, 0x10_0200, 2),
    ("flat.bin", b"\xf4" * 64, 0x10_0000, 0x10_0000, 1),
])
def test_generate_x86_places_each_format_where_the_board_loads_it(tmp_path, name, data, load,
                                                                  entry, vm_type):
    (tmp_path / name).write_bytes(data)
    config = generate("x86_64", kernel=tmp_path / name, memory=64 << 20, smp=2,
                      cmdline="exit=3")
    assert config.kernel == ImageSpec(tmp_path / name, load)
    assert config.vm_type == vm_type
    if entry is not None:
        assert config.entry == entry
    assert config.memory == (MemoryRegion(0, 64 << 20),) and config.cpu_ids == (0, 1)
    assert boots(config) == config.entry
    round_trip(config, tmp_path)


def test_generate_refuses_what_the_board_or_the_format_refuses(tmp_path):
    (tmp_path / "flat.bin").write_bytes(b"\xf4" * 64)
    with pytest.raises(InvalidInput) as info:
        generate("x86_64", kernel=tmp_path / "flat.bin", initrd=tmp_path / "initrd")
    assert str(info.value) == (f"{tmp_path / 'flat.bin'}: an initrd can only be given to a "
                               "Linux bzImage or a Multiboot kernel")
    with pytest.raises(InvalidInput) as info:
        generate("aarch64", kernel=HELLO_BIN, smp=9)
    assert str(info.value) == "a virt VM has 1..8 CPUs, not 9"
    with pytest.raises(InvalidInput) as info:
        generate("aarch64", kernel=tmp_path / "none")
    assert str(info.value) == f"kernel {tmp_path / 'none'}: no such file"
    with pytest.raises(InvalidInput) as info:
        generate("x86_64", kernel=HELLO_BIN, dtb=tmp_path / "x.dtb")
    assert str(info.value) == ("x86_64 guests get no device tree (the boot protocols pass e820 "
                               "and the MP table)")
    with pytest.raises(InvalidInput) as info:
        generate("aarch64", kernel=HELLO_BIN, machine="pc")
    assert str(info.value) == "machine 'pc' is not supported: only 'virt'"


def test_generate_keeps_initrd_and_dtb_for_their_format_to_place(tmp_path):
    config = generate("aarch64", kernel=HELLO_BIN, initrd=Path("rd.img"), dtb=Path("v.dtb"),
                      memory=1 << 30)
    assert config.initrd == ImageSpec(Path.cwd() / "rd.img")
    assert config.dtb == ImageSpec(Path.cwd() / "v.dtb")
    assert config.memory == (MemoryRegion(0x4000_0000, 1 << 30),)
    text = render(config)
    assert f'ramdisk_path = "{Path.cwd() / "rd.img"}"\n' in text
    assert "ramdisk_load_addr" not in text and "dtb_load_addr" not in text


# -- describe --------------------------------------------------------------------------------

def test_describe_says_everything_the_file_says(arm_dir):
    config = arm(arm_dir, {
        "base.name": '"linux"', "base.vm_type": "2", "base.phys_cpu_ids": "[0x0, 0x100]",
        "base.phys_cpu_sets": "[0x1, 0xe]", "kernel.ramdisk_path": '"initrd.img"',
        "kernel.dtb_load_addr": "0x4400_0000", "kernel.cmdline": '"console=ttyAMA0"',
        "kernel.image_location": '"fs"',
        "kernel.memory_regions": "[[0x4000_0000, 0x2000_0000, 0x7, 1], "
                                 "[0x0900_0000, 0x1000, 0x13]]",
        "devices.emu_devices": '[["uart", 0x0900_0000, 0x1000, 33, 2, []]]',
        "devices.passthrough_devices": '[["/"], ["gic", 0x0800_0000, 0x0800_0000, 0x1_0000, '
                                       '0]]',
        "devices.excluded_devices": '[["/pcie@10000000", "/rtc"]]',
        "devices.interrupt_mode": '"emu"'})
    assert describe(config) == f"""\
{arm_dir / 'vm.toml'}: aarch64 VM 1 'linux' (Linux) on the virt board
vCPUs: 2
  vCPU 0: MPIDR affinity 0x0, runs on host CPUs 0 (mask 0x1)
  vCPU 1: MPIDR affinity 0x100, runs on host CPUs 1-3 (mask 0xe)
memory: 512 MiB of RAM
  [0x40000000, 0x60000000) 512 MiB rwx--- RAM (identical)
  [0x9000000, 0x9001000) 4 KiB rw--d- device window (the board's emulated device)
images:
  kernel  {arm_dir / 'hello.bin'}, at 0x40080000
  initrd  {arm_dir / 'initrd.img'}, placed by its format
  dtb     generated by the board, at 0x44000000
entry: 0x40080000
cmdline: 'console=ttyAMA0'
devices:
  uart at [0x9000000, 0x9001000), irq 33, console: the board's own, already there
virtio: (none)
passthrough:
  / (the whole host device tree): the board's emulated devices stand in
  gic [0x8000000, 0x8010000) (host 0x8000000, irq 0): the board's emulated device stands in
excluded devices: /pcie@10000000, /rtc
interrupt mode: emu
recorded, not used by pyaxvisor:
  image_location = fs
"""


def test_describe_an_x86_config_with_a_debug_exit_device(tmp_path):
    config = read_config(write(tmp_path, toml_text(X86, {
        "devices.emu_devices": '[["isa-debug-exit", 0xf4, 4, 0, 0, []]]',
        "kernel.cmdline": '"exit=5"'})))
    text = describe(config)
    assert text.splitlines()[0] == (f"{tmp_path / 'vm.toml'}: x86_64 VM 2 'smp' (RTOS) on the "
                                    "pc board")
    assert "  vCPU 0: APIC ID 0x0, runs on any host CPU\n" in text
    assert "  isa-debug-exit ports [0xf4, 0xf8), irq 0, meta device\n" in text
    assert "cmdline: 'exit=5'\n" in text
    assert "dtb" not in text
    assert text.endswith("interrupt mode: no_irq\n")


# -- virtio devices (emu_type 0xE1 block, 0xE3 console; 0xE2 net refused) -------------------

#: The aarch64 virt board's last two virtio-mmio slots: where the first and second
#: virtio devices go (QEMU's order), and their interrupts (GIC INTIDs).
SLOT31, IRQ31 = 0x0A00_3E00, 32 + 16 + 31
SLOT30, IRQ30 = 0x0A00_3C00, 32 + 16 + 30
DISK = '[["vda", 0x0A00_3E00, 0x200, 79, 0xE1, []]]'


def test_a_virtio_blk_entry_with_disk_path_is_a_virtio_device_in_its_slot(arm_dir):
    config = arm(arm_dir, {"kernel.disk_path": '"disks/root.img"',
                           "devices.emu_devices": DISK[:-1] +
                           ', ["hvc", 0x0A00_3C00, 0x200, 0, 0xE3, []]]'})
    assert config.virtio == (
        VirtioDeviceSpec("blk", image=arm_dir / "disks" / "root.img", id="vda"),
        VirtioDeviceSpec("console", id="hvc"))
    assert config.devices == ()
    slots = board_class("aarch64").virtio_slots
    assert [(slots.slot_base(slots.slot_for(i)), slots.slot_irq(slots.slot_for(i)))
            for i in range(2)] == [(SLOT31, IRQ31), (SLOT30, IRQ30)]


BAD_VIRTIO = [
    ({"kernel.disk_path": '"disk.img"'},
     "[kernel] disk_path: no virtio block device (emu_type 0xE1) in [devices] emu_devices "
     "to hold the disk"),
    ({"devices.emu_devices": DISK},
     "[kernel] disk_path: missing; the virtio block device 'vda' ([devices] emu_devices[0]) "
     "needs its disk image"),
    ({"kernel.disk_path": '"d.img"',
      "devices.emu_devices": DISK[:-1] + ', ["vdb", 0x0A00_3C00, 0x200, 0, 0xE1, []]]'},
     "[devices] emu_devices[1]: a second virtio block device: [kernel] disk_path gives one "
     "disk"),
    ({"kernel.disk_path": '"d.img"',
      "devices.emu_devices": '[["vda", 0x0A00_0000, 0x200, 0, 0xE1, []]]'},
     "[devices] emu_devices[0]: base_gpa 0xa000000: pyaxvisor puts virtio device 1 in the "
     "slot at 0xa003e00 (irq 79); the virt board's virtio-mmio slots are 32 at 0xa000000 + "
     "n * 0x200, filled from the last (QEMU's order)"),
    ({"kernel.disk_path": '"d.img"',
      "devices.emu_devices": '[["vda", 0x0A00_3E00, 0x1000, 0, 0xE1, []]]'},
     "[devices] emu_devices[0]: length 0x1000: a virtio-mmio slot of the virt board is "
     "0x200 bytes"),
    ({"kernel.disk_path": '"d.img"',
      "devices.emu_devices": '[["vda", 0x0A00_3E00, 0x200, 5, 0xE1, []]]'},
     "[devices] emu_devices[0]: irq_id 5: the slot at 0xa003e00 has irq 79 (or write 0)"),
    ({"kernel.disk_path": '"d.img"',
      "devices.emu_devices": '[["vda", 0x0A00_3E00, 0x200, 0, 0xE1, [1]]]'},
     "[devices] emu_devices[0]: cfg_list: a virtio device takes no cfg words (write [])"),
    ({"devices.emu_devices": '[["tap/0", 0x0A00_3E00, 0x200, 0, 0xE2, []]]'},
     "[devices] emu_devices[0]: name: the host TAP interface of a virtio-net device; tap "
     "interface 'tap/0': not a valid interface name (1 to 15 bytes, no '/', ':' or white "
     "space)"),
    ({"devices.emu_devices": '[["tap0", 0x0A00_3E00, 0x200, 0, 0xE2, [1, 2, 3]]]'},
     "[devices] emu_devices[0]: cfg_list [1, 2, 3]: a virtio-net device takes [] or its "
     "six MAC address bytes (0x52, 0x54, 0, 0x12, 0x34, 0x56)"),
    ({"devices.emu_devices": '[["tap0", 0x0A00_3E00, 0x200, 0, 0xE2, [1, 2, 3, 4, 5, 6]]]'},
     "[devices] emu_devices[0]: cfg_list: MAC address '01:02:03:04:05:06' is a multicast "
     "address: a NIC's must be unicast (even first byte)"),
]


def test_a_virtio_net_entry_names_its_tap_and_mac_and_round_trips(arm_dir):
    """0xE2: the row's name is the host TAP interface, cfg_list the MAC (or [] for
    QEMU's default of the card's place); the file pyaxvisor writes reads back equal."""
    config = arm(arm_dir, {"devices.emu_devices":
                           '[["tap0", 0x0A00_3E00, 0x200, 0, 0xE2, []], '
                           '["tap1", 0x0A00_3C00, 0x200, 78, 0xE2, '
                           '[0x52, 0x54, 0, 0xAB, 0xCD, 0xEF]]]'})
    assert config.virtio == (
        VirtioDeviceSpec("net", id="tap0", ifname="tap0", mac="52:54:00:12:34:56"),
        VirtioDeviceSpec("net", id="tap1", ifname="tap1", mac="52:54:00:ab:cd:ef"))
    written = render(config)
    assert ('  ["tap1", 0xa00_3c00, 0x200, 0x4e, 0xe2, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]], '
            '# virtio net\n') in written
    round_trip(config, arm_dir)


@pytest.mark.parametrize(("changes", "message"), BAD_VIRTIO)
def test_bad_virtio_entries_are_refused_naming_the_key(arm_dir, changes, message):
    assert refused(arm_dir, ARM, changes) == message


def test_an_x86_file_puts_virtio_devices_in_the_pc_boards_slots(tmp_path):
    """The pc board's row (QEMU microvm's addresses): the first device at 0xfeb00e00 on
    GSI 12, the second at 0xfeb00c00 on GSI 11."""
    (tmp_path / "d.img").write_bytes(bytes(4096))
    config = read_config(write(tmp_path, toml_text(X86, {
        "kernel.disk_path": '"d.img"',
        "devices.emu_devices": '[["vda", 0xFEB0_0E00, 0x200, 12, 0xE1, []], '
                               '["hvc", 0xFEB0_0C00, 0x200, 0, 0xE3, []]]'})))
    assert config.virtio == (VirtioDeviceSpec("blk", image=tmp_path / "d.img", id="vda"),
                             VirtioDeviceSpec("console", id="hvc"))
    assert ("  vda virtio-blk (" in describe(config)
            and ") at [0xfeb00e00, 0xfeb01000), irq 12\n" in describe(config))
    assert refused(tmp_path, X86, {
        "devices.emu_devices": '[["hvc", 0x0A00_3E00, 0x200, 0, 0xE3, []]]'}) == (
        "[devices] emu_devices[0]: base_gpa 0xa003e00: pyaxvisor puts virtio device 1 in the "
        "slot at 0xfeb00e00 (irq 12); the pc board's virtio-mmio slots are 8 at 0xfeb00000 + "
        "n * 0x200, filled from the last (QEMU's order)")
    assert refused(tmp_path, X86, {
        "devices.emu_devices": '[["hvc", 0xFEB0_0E00, 0x200, 0, 0xE3, []], '
                               '["rng", 0xFEB0_0C00, 0x200, 12, 0xE3, []]]'}) == (
        "[devices] emu_devices[1]: irq_id 12: the slot at 0xfeb00c00 has irq 11 (or write 0)")


def test_describe_and_render_show_the_virtio_devices(arm_dir):
    config = arm(arm_dir, {"kernel.disk_path": '"root.img"',
                           "devices.emu_devices": DISK[:-1] +
                           ', ["hvc", 0x0A00_3C00, 0x200, 78, 0xE3, []]]'})
    text = describe(config)
    assert (f"virtio:\n  vda virtio-blk ({arm_dir / 'root.img'}) at [0xa003e00, 0xa004000), "
            "irq 79\n  hvc virtio-console at [0xa003c00, 0xa003e00), irq 78\n") in text
    assert describe(arm(arm_dir)).count("virtio: (none)\n") == 1
    written = render(config)
    assert f'disk_path = "{arm_dir / "root.img"}"\n' in written
    assert '  ["vda", 0xa00_3e00, 0x200, 0x4f, 0xe1, []], # virtio block\n' in written
    round_trip(config, arm_dir)


@pytest.mark.parametrize("spec", [VirtioDeviceSpec("rng"),
                                  VirtioDeviceSpec("blk", image=Path("/d.img"), read_only=True)])
def test_render_refuses_virtio_devices_the_layout_cannot_hold(arm_dir, spec):
    config = arm(arm_dir).with_(virtio=(spec,))
    with pytest.raises(InvalidInput, match="AxVisor's VM config layout cannot hold it"):
        render(config)

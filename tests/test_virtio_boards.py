"""virtio devices on the boards: the configuration, the transports' slots (QEMU's),
a real AArch64 guest driving virtio-blk, image locking between VMs, and the command
line (``-drive``, ``-device virtio-*``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from guest_build import build

from pyaxvisor.boards.quick import aarch64_vm, config_for, new_vm
from pyaxvisor.cli.drives import DriveSpec, parse_drive, split_props, virtio_devices
from pyaxvisor.devices.virtio import VirtioMmio
from pyaxvisor.devices.virtio.blk_image import RawImage
from pyaxvisor.devices.virtio.empty import EmptyTransport
from pyaxvisor.devices.virtio.errors import ImageLocked, ImageNotFound
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth as W
from pyaxvisor.vm.config import VirtioDeviceSpec

LOAD = 0x4008_0000
RESULTS = 0x4001_0000
ERROR, USAGE = 4, 2


def image(tmp_path: Path, name: str = "disk.img", size: int = 64 << 10) -> Path:
    path = tmp_path / name
    path.write_bytes(bytes((i * 7 + i // 256) & 0xFF for i in range(size)))
    return path


def blk(path: Path, read_only: bool = False) -> VirtioDeviceSpec:
    return VirtioDeviceSpec("blk", path, read_only)


def pyaxvisor(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", *map(str, args)],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr, p.stderr
    return p


# -- a real guest -------------------------------------------------------------------------------

def test_an_aarch64_guest_reads_and_writes_the_disk(tmp_path):
    disk = image(tmp_path)
    original = disk.read_bytes()
    vm = aarch64_vm(ram_size=64 << 20, virtio=[blk(disk)])
    try:
        vm.write_guest(LOAD, build("aarch64", "virtio_blk", LOAD))
        result = vm.run(LOAD, dtb_addr=0, timeout=60)
        assert result.reason == "poweroff", result

        def word(offset: int) -> int:
            return int.from_bytes(vm.read_guest(RESULTS + offset, 8), "little")

        assert word(0x00) == 0x74726976 and word(0x08) == 2 and word(0x10) == 2
        assert word(0x60) & 1                       # VERSION_1 offered
        assert word(0x18) == 0xB                    # FEATURES_OK kept
        assert word(0x20) >= 8                      # QueueNumMax
        assert word(0x28) == 2                      # both requests used
        assert (word(0x30), word(0x38)) == (0, 0)   # VIRTIO_BLK_S_OK twice
        assert (word(0x40), word(0x48)) == (513, 1)
        assert word(0x50) & 1 and word(0x58) == 0   # used-buffer interrupt, then ACKed
        assert vm.read_guest(0x4002_2000, 512) == original[:512]
        written = bytes((i * 3 + 1) & 0xFF for i in range(512))
        assert vm.read_guest(0x4002_2200, 512) == written
    finally:
        vm.close()
    data = disk.read_bytes()
    assert data[512:1024] == written
    assert data[:512] == original[:512] and data[1024:] == original[1024:]


# -- slots, interrupts, closing -----------------------------------------------------------------

def test_aarch64_slots_follow_qemu_and_every_slot_exists(tmp_path):
    vm = aarch64_vm(ram_size=64 << 20, virtio=[blk(image(tmp_path)), VirtioDeviceSpec("rng")])
    try:
        bus = vm.devices.mmio
        for slot in range(32):
            hit = bus.find(0x0A00_0000 + 0x200 * slot)
            assert hit is not None, slot
            device = hit[0]
            assert device.read(0, W.Dword, 0) == 0x74726976
            expected = {31: 2, 30: 4}.get(slot, 0)  # first device: the last slot
            assert device.read(8, W.Dword, 0) == expected, slot
            assert isinstance(device, VirtioMmio if expected else EmptyTransport)
            # the row's one register table, which the CPU reads, has every slot's part
            row = vm.board.virtio.mirror
            assert row.data[(0x200 * slot + 8) >> 2] == expected and row.published(0x200 * slot)
        assert bus.find(0x0A00_4000) is None
        window, = (w for w in vm.board.in_cpu_windows(vm) if w.base == 0x0A00_0000)
        assert window.size == 0x4000 and window.mirror is vm.board.virtio.mirror
        # slot 31's line is SPI 47 = INTID 79
        transport = vm.board.virtio.devices[31]
        assert transport.irq.irq == 79 and vm.board.virtio.devices[30].irq.irq == 78
    finally:
        vm.close()


def test_riscv64_slots_follow_qemu(tmp_path):
    vm = new_vm("riscv64", ram_size=64 << 20, virtio=[VirtioDeviceSpec("rng")])
    try:
        transports = vm.board.virtio.devices
        assert len(transports) == 8
        assert isinstance(transports[7], VirtioMmio) and transports[7].irq.irq == 8
        assert all(isinstance(t, EmptyTransport) for t in transports[:7])
        hit = vm.devices.mmio.find(0x1000_8000)
        assert hit is not None
        assert vm.devices.mmio.find(0x1000_8200) is None  # the rest of the page is empty
    finally:
        vm.close()


def test_a_second_vm_gets_the_lock_error_and_closing_releases_the_image(tmp_path):
    disk = image(tmp_path)
    first = aarch64_vm(ram_size=64 << 20, virtio=[blk(disk)])
    try:
        with pytest.raises(ImageLocked, match="in use"):
            aarch64_vm(ram_size=64 << 20, virtio=[blk(disk)])
        with pytest.raises(ImageLocked):
            aarch64_vm(ram_size=64 << 20, virtio=[blk(disk, read_only=True)])
    finally:
        first.close()
    RawImage(disk).close()  # released
    readers = [aarch64_vm(ram_size=64 << 20, virtio=[blk(disk, read_only=True)])
               for _ in range(2)]
    for vm in readers:
        vm.close()


def test_a_vm_whose_second_image_fails_releases_the_first(tmp_path):
    disk = image(tmp_path)
    with pytest.raises(ImageNotFound, match="no such file"):
        aarch64_vm(ram_size=64 << 20, virtio=[blk(disk), blk(tmp_path / "missing.img")])
    RawImage(disk).close()


@pytest.mark.parametrize(("specs", "message"), [
    ([VirtioDeviceSpec("tape")], "unknown kind 'tape'"),
    ([VirtioDeviceSpec("blk")], "needs a disk image"),
    ([VirtioDeviceSpec("rng", Path("x.img"))], "has no disk image"),
    ([VirtioDeviceSpec("rng", id="a"), VirtioDeviceSpec("rng", id="a")], "'a' is used twice"),
    ([VirtioDeviceSpec("rng")] * 9, "9 virtio devices asked for: the riscv64 virt board has 8"),
])
def test_bad_virtio_configurations_are_refused(specs, message):
    from pyaxvisor.boards import board_class

    config = config_for("riscv64", virtio=specs)
    with pytest.raises(InvalidInput, match=message):
        board_class("riscv64", "virt")(config).check()


def test_the_x86_board_takes_eight_virtio_devices_and_refuses_a_ninth():
    from pyaxvisor.boards import board_class

    pc = board_class("x86_64", None)
    pc(config_for("x86_64", virtio=[VirtioDeviceSpec("rng")] * 8)).check()
    config = config_for("x86_64", virtio=[VirtioDeviceSpec("rng")] * 9)
    with pytest.raises(InvalidInput, match="9 virtio devices asked for: the x86_64 pc board "
                                           "has 8 virtio-mmio transports"):
        pc(config).check()


# -- the command line -----------------------------------------------------------------------------

def test_drive_and_device_spellings():
    assert split_props("file=a,,b.img,if=none") == ["file=a,b.img", "if=none"]
    assert parse_drive("file=d.img") == DriveSpec(Path("d.img"), "virtio", False, "",
                                                  "file=d.img")
    d = parse_drive("file=d.img,format=raw,if=none,readonly=on,id=hd0")
    assert (d.interface, d.read_only, d.id) == ("none", True, "hd0")
    drives = [parse_drive("file=a.img,if=virtio"), d]
    assert virtio_devices(["virtio-rng-device", "virtio-blk-device,drive=hd0,id=disk",
                           "isa-debug-exit"], drives) == (
        VirtioDeviceSpec("rng"), VirtioDeviceSpec("blk", Path("d.img"), True, "disk"),
        VirtioDeviceSpec("blk", Path("a.img")))


@pytest.mark.parametrize(("drives", "devices", "message"), [
    (["file=d.img,cache=none"], [], "-drive file=d.img,cache=none: unknown property 'cache'"),
    (["file=d.img,format=qcow2"], [], "format=qcow2 is not supported: only raw"),
    (["format=raw,if=virtio"], [], "-drive format=raw,if=virtio: no file="),
    (["file=d.img,if=ide"], [], "if=ide is not supported: only if=virtio"),
    (["file=d.img,readonly=maybe"], [], "readonly=maybe: use on or off"),
    (["file=d.img,if=none"], [], "an if=none drive needs id="),
    (["file=d.img,if=none,id=a"], ["virtio-blk-device,drive=b"], "no -drive with id 'b'"),
    (["file=d.img,if=none,id=a"], ["virtio-blk-device"], "drive= is required"),
    (["file=d.img,id=a"], ["virtio-blk-device,drive=a"], "drive 'a' is in use already"),
    (["file=d.img,if=none,id=a"], ["virtio-blk-device,drive=a", "virtio-blk-device,drive=a"],
     "drive 'a' is in use already"),
    (["file=d.img,if=none,id=a", "file=e.img,if=none,id=a"], [], "duplicate id 'a'"),
    ([], ["virtio-rng-device,max-bytes=1"], "-device virtio-rng-device: unknown property "
                                            "'max-bytes=1'"),
])
def test_bad_drives_and_devices_are_refused(drives, devices, message):
    with pytest.raises(InvalidInput) as info:
        virtio_devices(devices, [parse_drive(d) for d in drives])
    assert message in str(info.value)


def test_command_line_errors_name_the_option(tmp_path):
    p = pyaxvisor("run", "-drive", "file=d.img,format=qcow2")
    assert p.returncode == USAGE and "-drive file=d.img,format=qcow2: format=qcow2" in p.stderr
    # x86_64 takes -drive: a missing image is the VM's error (where KVM lets the VM be
    # built that far), not a usage error
    p = pyaxvisor("run", "--arch", "x86_64", "-drive", f"file={tmp_path / 'd.img'}")
    assert p.returncode == ERROR and "not supported" not in p.stderr, p.stderr
    if kvm_usable()[0]:
        assert "d.img': no such file" in p.stderr, p.stderr
    p = pyaxvisor("run", "--arch", "x86_64", "-device", "virtio-gpu-device")
    assert p.returncode == USAGE
    assert "-device 'virtio-gpu-device' is not supported on the x86_64 pc board" in p.stderr
    p = pyaxvisor("run", "--arch", "x86_64", "-netdev", "user,id=n0", "-device",
                  "virtio-net-device,netdev=n0")
    assert p.returncode == USAGE and "the user (slirp) back-end is not supported" in p.stderr
    p = pyaxvisor("run", "--arch", "riscv64", "-device", "isa-debug-exit")
    assert p.returncode == USAGE
    assert "-device 'isa-debug-exit' is not supported on the riscv64 virt board" in p.stderr


@pytest.mark.parametrize("arch", ["aarch64", "riscv64"])
def test_device_help_lists_the_virtio_devices(arch):
    p = pyaxvisor("run", "--arch", arch, "-device", "help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "Input devices:",
        'name "virtio-serial-device", bus virtio-bus, desc "virtio console (virtio-mmio) with '
        'one port: add a virtconsole"',
        'name "virtconsole", bus virtio-serial-bus, desc "the console port (hvc0) of a '
        'virtio-serial-device, on this terminal"', "",
        "Misc devices:",
        'name "virtio-rng-device", bus virtio-bus, desc "virtio entropy device (virtio-mmio), '
        'fed from the host"', "",
        "Network devices:",
        'name "virtio-net-device", bus virtio-bus, desc "virtio network card (virtio-mmio) on '
        'a -netdev tap"', "",
        "Storage devices:",
        'name "virtio-blk-device", bus virtio-bus, desc "virtio block device (virtio-mmio) '
        'over a -drive"']
    p = pyaxvisor("run", "--arch", arch, "-device", "virtio-blk-device,help")
    assert p.stdout.startswith("virtio-blk-device options:\n  drive=<str>")


def test_the_guest_runs_from_the_command_line_and_a_locked_image_is_a_clean_error(tmp_path):
    disk = image(tmp_path)
    kernel = tmp_path / "virtio_blk.bin"
    kernel.write_bytes(build("aarch64", "virtio_blk", LOAD))
    p = pyaxvisor("run", "-kernel", kernel, "-m", "64M", "-drive",
                  f"file={disk},format=raw,if=none,id=hd0", "-device",
                  "virtio-blk-device,drive=hd0")
    assert p.returncode == 0, p.stderr
    assert disk.read_bytes()[512:1024] == bytes((i * 3 + 1) & 0xFF for i in range(512))
    with RawImage(disk):  # another user holds it
        p = pyaxvisor("run", "-kernel", kernel, "-m", "64M", "-drive", f"file={disk}")
    assert p.returncode == ERROR
    assert f"pyaxvisor: disk image {str(disk)!r}" in p.stderr or str(disk) in p.stderr
    assert "in use" in p.stderr


@pytest.mark.parametrize(("arch", "base"), [("aarch64", 0x0A00_0000), ("riscv64", 0x1000_1000)])
def test_ram_over_the_virtio_transports_is_refused(arch, base):
    from pyaxvisor.boards import board_class
    from pyaxvisor.vm.config import MemoryRegion

    config = config_for(arch).with_(memory=(MemoryRegion(base + 0x1000, 32 << 20),))
    with pytest.raises(InvalidInput, match="overlaps the virtio-mmio window"):
        board_class(arch, "virt")(config).check()

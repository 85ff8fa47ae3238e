"""The RISC-V ``virt`` board: what it loads where, the command line's choices, the SBI
services it gives the harts (console, hart states, timers, IPIs), and the errors it
gives for what it cannot run."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import threading
from pathlib import Path

import fdt
import pytest

from pyaxvisor.boards import board_class
from pyaxvisor.boards.quick import config_for
from pyaxvisor.boards.riscv64_virt import layout as L
from pyaxvisor.boards.riscv64_virt.platform import HSM_STATE, harts_in_mask
from pyaxvisor.cli.run import infer_arch
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu import SendIPI
from pyaxvisor.vcpu.width import AccessWidth
from pyaxvisor.vm.config import ImageSpec, MemoryRegion
from pyaxvisor.vm.power import CpuPower, CpuStart
from pyaxvisor.vm.vm import Vm

RAM = L.RAM_BASE


def riscv_image(text_offset: int = 0x20_0000, body: bytes = b"\x13\x00\x00\x00" * 64) -> bytes:
    """A RISC-V Linux Image: the 64-byte header (boot-image-header.rst), then ``body``."""
    header = struct.pack("<IIQQQIIQQ4sI", 0x0000_006F, 0, text_offset, 64 + len(body) + 0x1000,
                         0, 0x2, 0, 0, 0x5643_5349_52, b"RSC\x05", 0)
    assert len(header) == 64
    return header + body


def make_vm(tmp_path: Path, **changes) -> Vm:
    config = config_for("riscv64", memory=64 << 20, smp=2).with_(**changes)
    return Vm(config, board_class("riscv64")(config), console_write=lambda _b: None)


def test_a_linux_image_goes_to_ram_plus_2_mib_with_the_device_tree_in_a1(tmp_path):
    kernel = tmp_path / "Image"
    kernel.write_bytes(riscv_image())
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"INITRD" * 50)
    vm = make_vm(tmp_path, kernel=ImageSpec(kernel), initrd=ImageSpec(initrd),
                 cmdline="console=ttyS0 earlycon=sbi")
    try:
        start = vm.load()
        assert start.entry == RAM + 0x20_0000
        assert vm.read_guest(RAM + 0x20_0000, 64) == kernel.read_bytes()[:64]
        tree = fdt.parse_dtb(vm.read_guest(start.gprs[11], 0x4000))
        assert tree.get_property("bootargs", "/chosen").value == "console=ttyS0 earlycon=sbi"
        start_addr = tree.get_property("linux,initrd-start", "/chosen").data
        assert vm.read_guest((start_addr[0] << 32) | start_addr[1], 300) == b"INITRD" * 50
        assert [n.name for n in tree.get_node("/cpus").nodes if n.name.startswith("cpu@")] \
            == ["cpu@0", "cpu@1"]
        assert tree.get_property("timebase-frequency", "/cpus").value == L.TIMEBASE_FREQ
    finally:
        vm.close()


def test_a_flat_payload_goes_where_u_boot_s_mode_is_linked(tmp_path):
    kernel = tmp_path / "u-boot.bin"
    kernel.write_bytes(b"\x13\x00\x00\x00" * 16)
    vm = make_vm(tmp_path, kernel=ImageSpec(kernel))
    try:
        assert vm.load().entry == 0x8020_0000
        assert vm.read_guest(0x8020_0000, 64) == kernel.read_bytes()
    finally:
        vm.close()


@pytest.mark.parametrize(("changes", "message"), [
    ({"bios": ImageSpec(Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin"))},
     "pyaxvisor is the SBI firmware of riscv64 guests"),
    ({"memory": (MemoryRegion(0x0C00_0000, 64 << 20),)}, "overlaps the plic window"),
    ({"memory": (MemoryRegion(RAM, (16 << 20) + 0x1000),)}, "must be a multiple of 2 MiB"),
    ({"cpu_ids": tuple(range(9))}, r"a virt VM has 1\.\.8 CPUs, not 9"),
])
def test_what_the_board_cannot_run_is_refused_before_anything_is_built(tmp_path, changes,
                                                                     message):
    config = config_for("riscv64", memory=64 << 20).with_(**changes)
    with pytest.raises(InvalidInput, match=message):
        board_class("riscv64")(config).check()


def test_bios_default_and_none_name_pyaxvisor_itself(tmp_path):
    for name in ("default", "none"):
        config = config_for("riscv64", memory=64 << 20, bios=Path(name))
        board_class("riscv64")(config).check()  # accepted: nothing to load


def test_a_vm_without_a_kernel_says_what_to_give(tmp_path):
    vm = make_vm(tmp_path)
    try:
        with pytest.raises(InvalidInput, match="a riscv64 VM needs -kernel: an S-mode payload"):
            vm.load()
    finally:
        vm.close()


def test_machine_virt_picks_the_architecture_from_the_kernel(tmp_path):
    kernel = tmp_path / "Image"
    kernel.write_bytes(riscv_image())
    assert infer_arch("virt", kernel) == "riscv64"
    assert infer_arch("virt", None) == "aarch64"  # QEMU's virt without a hint: arm
    assert infer_arch(None, kernel) == "riscv64"
    arm = tmp_path / "arm"
    arm.write_bytes(bytes(56) + b"ARM\x64" + bytes(8))
    assert infer_arch("virt", arm) == "aarch64"


def test_hart_masks_name_the_harts_sbi_means():
    ids = (0, 1, 2, 5)
    assert harts_in_mask(ids, 0b11, 0) == [0, 1]
    assert harts_in_mask(ids, 0b1001, 2) == [2, 5]
    assert harts_in_mask(ids, 0, (1 << 64) - 1) == [0, 1, 2, 5]  # base -1: every hart
    assert harts_in_mask(ids, 1 << 63, 0) == []
    assert HSM_STATE == {CpuPower.ON: 0, CpuPower.OFF: 1, CpuPower.PENDING: 2}


def test_the_sbi_platform_reads_the_console_from_the_uart_and_reports_hart_states(tmp_path):
    out = bytearray()
    config = config_for("riscv64", memory=64 << 20, smp=2)
    vm = Vm(config, board_class("riscv64")(config), console_write=out.extend)
    try:
        sbi = vm.board.sbi
        sbi.console_write(b"hi")
        assert bytes(out) == b"hi"
        assert sbi.console_read() is None
        vm.uart.receive(b"k")
        assert sbi.console_read() == ord("k")
        assert sbi.hart_status(0) == 1 and sbi.hart_status(1) == 1  # nothing started yet
        assert sbi.hart_status(7) is None  # no such hart
        board = vm.board
        assert board.cpu_up_status(CpuStart.STARTED) == 0
        assert board.cpu_up_status(CpuStart.ALREADY_ON) == (1 << 64) - 6
        assert board.cpu_up_status(CpuStart.INVALID) == (1 << 64) - 3
    finally:
        vm.close()


def test_the_plic_drives_the_harts_external_interrupt(tmp_path):
    vm = make_vm(tmp_path)
    try:
        plic = vm.board.plic
        bus = vm.devices.mmio
        D = AccessWidth.Dword
        bus.write(L.PLIC_BASE + 4 * L.UART_IRQ, D, 1)  # priority 1
        bus.write(L.PLIC_BASE + 0x2000 + 0x80 * L.plic_s_context(1), D, 1 << L.UART_IRQ)
        vm.uart.receive(b"x")
        assert not plic.context_irq(L.plic_s_context(1))
        bus.write(L.UART_BASE + 1, AccessWidth.Byte, 1)  # UART IER: data available
        assert plic.context_irq(L.plic_s_context(1))  # hart 1's S-mode context is raised
        assert not plic.context_irq(L.plic_s_context(0))  # hart 0 did not enable it
    finally:
        vm.close()


def test_send_ipi_with_a_hart_that_does_not_exist_is_invalid(tmp_path):
    vm = make_vm(tmp_path)

    class Caller:
        value = None

        def set_return_value(self, v: int) -> None:
            self.value = v

    try:
        caller = Caller()
        assert vm.board.on_exit(vm, 0, caller, SendIPI(0, 0b100, False, False, 0))
        assert caller.value == (1 << 64) - 3  # hart 2 does not exist
        assert vm.board.on_exit(vm, 0, caller, SendIPI(0, 0b10, False, False, 0))
        assert caller.value == 0
    finally:
        vm.close()


def test_the_command_line_runs_riscv64_and_refuses_m_mode_firmware(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", "run", "--arch", "riscv64",
                        "-bios", "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin",
                        "-kernel", "/nonexistent"], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 4
    assert "an M-mode firmware cannot run" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", "run", "--arch", "riscv64",
                        "-device", "isa-debug-exit"], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "isa-debug-exit" in r.stderr
    assert "not supported on the riscv64 virt board (its devices are virtio-blk-device, " \
        "virtio-rng-device" in r.stderr and "Traceback" not in r.stderr


def test_a_timer_written_before_its_hart_exists_is_ignored(tmp_path):
    vm = make_vm(tmp_path)
    try:
        vm.board.sbi.timer_written(0)  # hart 0 has no vCPU yet: nothing to arm, no error
        assert vm.done is False
    finally:
        vm.close()


def test_a_guest_claims_and_completes_the_uart_interrupt_at_the_plic(tmp_path):
    from guest_build import build

    kernel = tmp_path / "plic_uart.bin"
    kernel.write_bytes(build("riscv64", "plic_uart", 0x8020_0000))
    out = bytearray()
    ready = threading.Event()

    def write(b: bytes) -> None:
        out.extend(b)
        if b"ready\n" in out:
            ready.set()

    config = config_for("riscv64", memory=64 << 20, kernel=kernel)
    vm = Vm(config, board_class("riscv64")(config), console_write=write)
    result = {}
    try:
        vm.load()
        runner = threading.Thread(target=lambda: result.setdefault("r", vm.run(timeout=30)))
        runner.start()
        assert ready.wait(20), bytes(out)
        vm.uart.receive(b"Z")
        runner.join(30)
    finally:
        vm.close()
    assert result["r"].reason == "poweroff", result["r"]
    # claimed source 10 ('A' + 10 = 'K'), read 'Z', the second claim found nothing
    assert bytes(out) == b"ready\nKZ0\n"


def test_accesses_where_nothing_is_are_access_faults_in_the_guest(tmp_path):
    # Loads, a store and an AMO where nothing lives, a fetch past the end of RAM and a
    # load from U-mode: the guest's stvec sees each access fault (an AMO's is a
    # store/AMO fault); the VM reports each address once on stderr and counts them all.
    from guest_build import build

    kernel = tmp_path / "access_fault.bin"
    kernel.write_bytes(build("riscv64", "access_fault", RAM + L.RAW_LOAD_OFFSET))
    r = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", "run", "-M", "virt", "-m", "64M",
                        "-kernel", str(kernel), "--stats"], capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    s_mode, u_mode = 0x120, 0x020  # sstatus: SPP = the mode trapped from, SPIE = SIE (1)
    assert r.stdout.replace("\r\n", "\n") == "".join(
        f"fault scause={cause:016x} stval={stval:016x} sstatus={status:016x}\n"
        for cause, stval, status in ((5, 0x7000_0010, s_mode), (5, 0x7000_0010, s_mode),
                                     (7, 0x7000_0018, s_mode), (7, 0x7000_0020, s_mode),
                                     (1, 0x8400_0000, s_mode), (5, 0x7000_0030, u_mode)))
    reports = [line for line in r.stderr.splitlines() if "no RAM and no device there" in line]
    assert [re.sub(r" \(PC 0x[0-9a-f]+\)", "", line) for line in reports] == [
        f"pyaxvisor: vCPU 0: {what}: no RAM and no device there; the guest takes an access "
        "fault"
        for what in ("read at 0x70000010", "write at 0x70000018", "write at 0x70000020",
                     "instruction fetch at 0x84000000", "read at 0x70000030")]
    assert "(PC 0x84000000)" in reports[3]  # a fetch's PC is the address fetched
    rows = [line.split() for line in r.stderr.splitlines()]
    exits = {row[0]: int(row[1]) for row in rows if len(row) >= 2 and row[1].isdigit()}
    assert exits["AccessFault"] == 6

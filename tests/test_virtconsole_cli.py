"""The virtio console on the boards and on the command line: QEMU's
``-device virtio-serial-device`` + ``-device virtconsole[,chardev=ID]`` with
``-chardev stdio,id=ID``, and where its output and the terminal's input go."""

from __future__ import annotations

import subprocess
import sys

import pytest
from virtio_driver import Driver, FakeRam

from pyaxvisor.boards.quick import new_vm
from pyaxvisor.cli.drives import parse_drive, virtio_devices
from pyaxvisor.cli.virtconsole import parse_chardev
from pyaxvisor.devices.virtio import VirtioConsole, VirtioMmio
from pyaxvisor.devices.virtio.console import RECEIVEQ, TRANSMITQ
from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.vcpu.width import AccessWidth as W
from pyaxvisor.vm.config import VirtioDeviceSpec
from pyaxvisor.vm.vm import Vm

USAGE = 2
CONSOLE = VirtioDeviceSpec("console")


class VmRam(FakeRam):
    """The test driver's RAM is the VM's own (a piece of it, at ``base``)."""

    def __init__(self, vm: Vm, base: int, size: int = 1 << 20) -> None:
        super().__init__(base, size)
        self.vm = vm

    def read(self, gpa: int, length: int) -> bytes:
        return self.vm.read_guest(gpa, length)

    def write(self, gpa: int, data: bytes) -> None:
        self.vm.write_guest(gpa, data)

    def view(self, gpa: int, length: int) -> memoryview:
        return self.vm.space.view(GuestPhysAddr(gpa), length)


def test_the_console_writes_to_the_vm_console_and_takes_the_terminal_input():
    out: list[bytes] = []
    vm = new_vm("riscv64", ram_size=64 << 20, console_write=out.append,
                virtio=[VirtioDeviceSpec("rng"), CONSOLE])
    try:
        transport = vm.board.virtio.devices[6]  # the second device: the slot below the last
        assert isinstance(transport, VirtioMmio) and transport.read(8, W.Dword, 0) == 3
        assert isinstance(transport.backend, VirtioConsole)
        assert vm.board.virtio.console is transport.backend
        drv = Driver(transport, VmRam(vm, 0x8100_0000))
        queues = drv.start()
        queues[TRANSMITQ].add([b"hvc0 says hi\n"])
        drv.notify(TRANSMITQ)
        assert b"".join(out) == b"hvc0 says hi\n"
        deliver = vm.board.console_input()  # what the CLI hands the terminal's input to
        deliver(b"typed")
        req = queues[RECEIVEQ].add([], [16])
        drv.notify(RECEIVEQ)
        assert queues[RECEIVEQ].collect() == [(req.head, 5)]
        assert queues[RECEIVEQ].written(req)[:5] == b"typed"
        assert transport.interrupt_status & 1
    finally:
        vm.close()


def test_without_a_virtio_console_the_terminal_input_goes_to_the_uart():
    vm = new_vm("aarch64", ram_size=64 << 20, virtio=[VirtioDeviceSpec("rng")])
    try:
        assert vm.board.virtio.console is None
        vm.board.console_input()(b"x")
        assert vm.uart.rx_fifo_level + vm.uart.backlog == 1
    finally:
        vm.close()


def test_a_vm_has_one_virtio_console():
    with pytest.raises(InvalidInput, match="more than one virtio console"):
        new_vm("aarch64", virtio=[CONSOLE, CONSOLE])


# -- the spellings -------------------------------------------------------------------------------

def test_serial_bus_and_console_port_make_one_console_in_the_bus_place():
    drives = [parse_drive("file=a.img")]
    assert virtio_devices(["virtio-rng-device", "virtio-serial-device,id=ser0",
                           "virtconsole,chardev=term,id=con0"], drives, ["term"]) == (
        VirtioDeviceSpec("rng"), VirtioDeviceSpec("console", id="ser0"),
        VirtioDeviceSpec("blk", parse_drive("file=a.img").file))
    assert virtio_devices(["virtio-serial-device", "virtio-rng-device", "virtconsole"],
                          []) == (CONSOLE, VirtioDeviceSpec("rng"))
    assert parse_chardev("stdio,id=term") == "term"


@pytest.mark.parametrize(("devices", "message"), [
    (["virtconsole"], "-device virtconsole: no -device virtio-serial-device before it"),
    (["virtconsole", "virtio-serial-device"], "no -device virtio-serial-device before it"),
    (["virtio-serial-device"], "-device virtio-serial-device: no -device virtconsole for it"),
    (["virtio-serial-device", "virtconsole", "virtconsole"], "a second virtconsole"),
    (["virtio-serial-device", "virtconsole", "virtio-serial-device", "virtconsole"],
     "a second virtio-serial-device: a VM has one virtio console"),
    (["virtio-serial-device", "virtconsole,chardev=nope"],
     "-device virtconsole,chardev=nope: chardev='nope' names no -chardev stdio"),
    (["virtio-serial-device", "virtconsole,name=org.x"],
     "-device virtconsole: unknown property 'name=org.x'"),
    (["virtio-serial-device,max_ports=2", "virtconsole"],
     "-device virtio-serial-device: unknown property 'max_ports=2'"),
])
def test_bad_console_spellings_are_refused(devices, message):
    with pytest.raises(InvalidInput) as info:
        virtio_devices(devices, [], ["term"])
    assert message in str(info.value)


@pytest.mark.parametrize(("value", "message"), [
    ("pty,id=a", "-chardev pty,id=a: the 'pty' back-end is not supported: only stdio"),
    ("stdio", "-chardev stdio: id= is required"),
    ("stdio,id=a,mux=on", "-chardev stdio,id=a,mux=on: unknown property 'mux=on'"),
])
def test_bad_chardevs_are_refused(value, message):
    with pytest.raises(InvalidInput) as info:
        parse_chardev(value)
    assert message in str(info.value)


def pyaxvisor(*args: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", *args], capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_command_line_errors_name_the_option():
    p = pyaxvisor("run", "--arch", "aarch64", "-device", "virtconsole")
    assert p.returncode == USAGE
    assert "-device virtconsole: no -device virtio-serial-device before it" in p.stderr
    p = pyaxvisor("run", "--arch", "aarch64", "-chardev", "file,id=f,path=x")
    assert p.returncode == USAGE and "the 'file' back-end is not supported" in p.stderr
    p = pyaxvisor("run", "--arch", "aarch64", "-chardev", "stdio,id=a", "-chardev",
                  "stdio,id=a")
    assert p.returncode == USAGE and "-chardev: an id is used twice" in p.stderr
    p = pyaxvisor("run", "--arch", "x86_64", "-device", "virtconsole")
    assert p.returncode == USAGE
    assert "-device virtconsole: no -device virtio-serial-device before it" in p.stderr
    p = pyaxvisor("run", "--arch", "riscv64", "-device", "virtconsole,help")
    assert p.returncode == 0 and p.stdout.startswith("virtconsole options:\n  chardev=<str>")

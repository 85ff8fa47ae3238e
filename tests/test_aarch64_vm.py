"""The AArch64 VM end to end: the command line, the bundled guest, SMP, the GIC and
timer, and guests that misbehave (the host process and other VMs carry on)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

from aarch64_machine import RAM
from guest_build import build

from pyaxvisor.boards.aarch64_virt.boot import bundled_guest
from pyaxvisor.boards.aarch64_virt.timer import GenericTimers
from pyaxvisor.boards.quick import aarch64_vm as Aarch64Vm
from pyaxvisor.vcpu.width import AccessWidth
from pyaxvisor.vm.exits import UnknownHypercall
from pyaxvisor.vm.result import VmResult

LOAD = RAM + 0x8_0000


def pyaxvisor(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyaxvisor.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def guest_file(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(build("aarch64", name, LOAD))
    return str(path)


BUNDLED_OUTPUT = ("Hello from the pyaxvisor AArch64 guest on CPU 0\n"
                  "CPU 1 is up (PSCI CPU_ON)\n"
                  "virtual timer interrupt 27 taken through the GICv2\n"
                  "powering off (PSCI SYSTEM_OFF)\n")


def stats(stderr: str) -> dict[str, int]:
    rows = [line.split() for line in stderr.splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) >= 2 and r[1].isdigit()}


def test_bundled_guest_runs_on_two_cpus_and_powers_off():
    r = pyaxvisor("run", "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r\n", "\n") == BUNDLED_OUTPUT
    exits = stats(r.stderr)
    assert exits["CpuUp"] == 1 and exits["CpuDown"] == 1 and exits["SystemDown"] == 1
    assert "MmioWrite" not in exits  # UART and GIC are served inside the CPU
    served = re.search(r"served in-CPU \(no exit\): (\d+) reads, (\d+) writes", r.stderr)
    assert served is not None
    assert int(served.group(2)) >= len(BUNDLED_OUTPUT.replace("\n", "\r\n"))


def test_bundled_guest_powers_off_when_its_timer_fires_before_it_waits(monkeypatch):
    # A host under load can hold a vCPU up between the guest's timer write and its WFI
    # for longer than the timer's 10 ms: held up here for 50 ms after every timer write,
    # the interrupt is pending before the guest waits. It must still be taken once, the
    # handler's EOIR must reach the GIC, and the guest must power off.
    written = GenericTimers.written

    def held_up(self: GenericTimers, cpu: int, timer: int) -> None:
        written(self, cpu, timer)
        time.sleep(0.05)

    monkeypatch.setattr(GenericTimers, "written", held_up)
    output = bytearray()
    vm = Aarch64Vm(ram_size=64 << 20, smp=2, console_write=output.extend)
    try:
        vm.write_guest(LOAD, bundled_guest())
        result = vm.run(LOAD, dtb_addr=0, timeout=20)
        gicd = vm.board.gic.distributor
        active = [gicd.mmio_read(0x300, AccessWidth.Dword, cpu) for cpu in (0, 1)]
    finally:
        vm.close()
    assert result.reason == "poweroff", result
    assert bytes(output).decode().replace("\r\n", "\n") == BUNDLED_OUTPUT
    assert active == [0, 0]  # GICD_ISACTIVER0: the timer's interrupt was ended


def test_bundled_guest_with_every_device_access_as_an_exit():
    r = pyaxvisor("run", "--stats", "--trap-mmio")
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r\n", "\n") == BUNDLED_OUTPUT
    exits = stats(r.stderr)
    # every character is a UARTDR write (plus GIC programming and acknowledges)
    assert exits["MmioWrite"] >= len(BUNDLED_OUTPUT.replace("\n", "\r\n"))
    assert exits["MmioRead"] >= len(BUNDLED_OUTPUT)


def test_qemu_spellings_are_accepted():
    r = pyaxvisor("run", "-M", "virt", "-cpu", "cortex-a72", "-m", "256M", "-smp", "1",
                  "-nographic", "-serial", "stdio")
    assert r.returncode == 0, r.stderr
    assert "CPU 1 did not start" in r.stdout


def test_bad_arguments_are_usage_errors():
    r = pyaxvisor("run", "-m", "lots")
    assert r.returncode == 2 and "cannot parse memory size 'lots'" in r.stderr
    r = pyaxvisor("run", "-smp", "9")
    assert r.returncode == 4 and "1..8 CPUs, not 9" in r.stderr
    r = pyaxvisor("run", "-kernel", "/nonexistent/Image")
    assert r.returncode == 4 and "/nonexistent/Image: no such file" in r.stderr
    r = pyaxvisor("run", "--arch", "mips")
    assert r.returncode == 2 and "mips" in r.stderr


def test_timeout_stops_a_guest_that_never_ends(tmp_path):
    r = pyaxvisor("run", "-kernel", guest_file(tmp_path, "spin"), "--timeout", "0.5")
    assert r.returncode == 124
    assert "timeout: the guest was still running after 0.5 s" in r.stderr


def test_unknown_hypercall_stops_the_vm_with_a_clear_error(tmp_path):
    # Six SMCCC calls nobody implements get NOT_SUPPORTED and are counted; then a call
    # in pyaxvisor's own hypercall range, which the board does not serve, stops the VM.
    r = pyaxvisor("run", "-kernel", guest_file(tmp_path, "smccc"), "--stats")
    assert r.returncode == VmResult("error").status
    assert "unknown hypercall 0xc6000042 with arguments 0x7, 0x8, 0x0" in r.stderr
    assert stats(r.stderr)["SmcccNotSupported"] == 6


def test_wild_accesses_take_external_aborts_in_the_guest(tmp_path):
    # Loads, a store and a load pair where nothing lives, and a fetch past the end of
    # RAM: the guest's vectors see each abort; the VM reports each address once.
    r = pyaxvisor("run", "-kernel", guest_file(tmp_path, "abort"), "-m", "128M", "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r\n", "\n") == (
        "abort ESR=0000000096000010 FAR=0000007000000010\n"
        "abort ESR=0000000096000010 FAR=0000007000000010\n"
        "abort ESR=0000000096000050 FAR=0000007000000018\n"
        "abort ESR=0000000096000010 FAR=0000007000000020\n"
        "abort ESR=0000000086000010 FAR=0000000048000000\n")
    reports = [line for line in r.stderr.splitlines() if "no RAM and no device there" in line]
    assert [re.sub(r" \(PC 0x[0-9a-f]+\)", "", line) for line in reports] == [
        f"pyaxvisor: vCPU 0: {what}: no RAM and no device there; the guest takes a "
        "synchronous external abort"
        for what in ("read at 0x7000000010", "write at 0x7000000018", "read at 0x7000000020",
                     "instruction fetch at 0x48000000")]
    assert stats(r.stderr)["ExternalAbort"] == 5
    # each abort went to the guest's own vectors: no exit, counted
    assert "guest exceptions taken at its own vectors (no exit): 5\n" in r.stderr


def test_a_device_refusing_an_access_stops_the_vm(tmp_path):
    # the mmio guest's second access is an 8-byte store to the 32-bit PL011
    r = pyaxvisor("run", "-kernel", guest_file(tmp_path, "mmio"), "--trap-mmio")
    assert r.returncode == 4
    assert r.stdout == "A"  # the first, 1-byte, store reached the UART
    assert "pl011: 8-byte write at 0x8: registers are 32-bit" in r.stderr


def test_a_failing_vm_does_not_disturb_another():
    outputs: dict[str, bytearray] = {"good": bytearray(), "bad": bytearray()}
    results = {}

    def run(name: str, image: bytes) -> None:
        vm = Aarch64Vm(ram_size=64 << 20, smp=2, console_write=outputs[name].extend)
        try:
            vm.write_guest(LOAD, image)
            results[name] = vm.run(LOAD, dtb_addr=0, timeout=30)
        finally:
            vm.close()

    threads = [threading.Thread(target=run, args=("good", bundled_guest())),
               threading.Thread(target=run, args=("bad", build("aarch64", "smccc", LOAD)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["good"].reason == "poweroff"
    assert b"powering off" in outputs["good"]
    assert results["bad"].reason == "error"
    assert isinstance(results["bad"].error, UnknownHypercall)
    assert "unknown hypercall 0xc6000042" in str(results["bad"].error)
    assert results["bad"].exits["SmcccNotSupported"] == 6



def test_a_device_error_inside_the_cpu_stops_the_vm(tmp_path):
    r = pyaxvisor("run", "-kernel", guest_file(tmp_path, "gic_byte"), "--timeout", "30")
    assert r.returncode == 4, r.stderr
    assert "1-byte" in r.stderr and "0x4" in r.stderr, r.stderr

"""The power buttons QMP's system_powerdown presses: the x86 PC's ACPI fixed-feature
button (PM1_STS.PWRBTN_STS and the SCI, on the registers and for a KVM guest that
polls it); the AArch64 virt board's GPIO power key is in tests/test_qmp.py."""

from __future__ import annotations

import threading
import time

import pytest

from pyaxvisor.boards.quick import x86_vm
from pyaxvisor.control.commands import QmpCommands
from pyaxvisor.devices.acpi_pm import AcpiPm
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.vcpu.width import AccessWidth

W = AccessWidth.Word


class Sink:
    def __init__(self) -> None:
        self.level = False

    def set_irq_level(self, irq: int, level: bool) -> None:
        self.level = level


def test_the_acpi_power_button_sets_pwrbtn_sts_and_raises_the_sci_when_enabled():
    sink = Sink()
    pm = AcpiPm(lambda: None, sci=IrqLine(sink, 9))
    assert pm.event.read(0, W, 0) & 0x100 == 0
    pm.press_power_button()
    assert pm.event.read(0, W, 0) & 0x100  # PWRBTN_STS
    assert pm.event.read(1, AccessWidth.Byte, 0) & 0x01
    assert not sink.level  # PWRBTN_EN is clear
    pm.event.write(2, W, 0x100, 0)  # PWRBTN_EN
    assert sink.level
    pm.control.write(0, W, 0, 0)  # SCI_EN clear: the SCI drops
    assert not sink.level
    pm.control.write(0, W, 1, 0)
    assert sink.level
    pm.event.write(0, W, 0x0000, 0)  # writing 0 leaves it
    assert pm.event.read(0, W, 0) & 0x100
    pm.event.write(0, W, 0x100, 0)  # write 1 to clear
    assert pm.event.read(0, W, 0) & 0x100 == 0
    assert not sink.level
    assert pm.power_button_presses == 1


_ok, _reason = kvm_usable()

# long mode at 0x1000: poll PM1_STS (port 0x600) until PWRBTN_STS, clear it, read it
# again and write 0x2a + (PM1_STS >> 8) to the debug-exit port 0xf4
POLL_BUTTON = bytes.fromhex(
    "66ba0006"      # mov dx, 0x600
    "66ed"          # 1: in ax, dx
    "66a90001"      # test ax, 0x100
    "74f8"          # jz 1b
    "66b80001"      # mov ax, 0x100
    "66ef"          # out dx, ax
    "66ed"          # in ax, dx
    "88e0"          # mov al, ah
    "042a"          # add al, 0x2a
    "e6f4"          # out 0xf4, al
    "f4")           # hlt


@pytest.mark.kvm
@pytest.mark.skipif(not _ok, reason=f"KVM not usable: {_reason}")
def test_system_powerdown_reaches_a_pc_guest_through_pm1_sts():
    vm = x86_vm(ram_size=16 << 20, debug_exits=[(0xF4, 1)])
    out = {}
    try:
        vm.write_guest(0x1000, POLL_BUTTON)
        t = threading.Thread(target=lambda: out.setdefault(
            "r", vm.run(0x1000, mode="long", timeout=120)))
        t.start()
        time.sleep(0.5)
        assert t.is_alive()  # polling: nothing pressed yet
        assert QmpCommands(vm).run("system_powerdown", {}) == {}
        t.join(120)
    finally:
        vm.quit()
        vm.close()
    result = out["r"]
    assert result.reason == "debug-exit", result
    assert result.status == (0x2A << 1) | 1  # seen, then cleared

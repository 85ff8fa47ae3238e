"""Host IRQ dispatch through the VCpuHal and the per-CPU virtualization state."""

import threading

import pytest
from mock_arch import MockPerCpu

from pyaxvisor.errors import AlreadyExists, BadState, NotFound, Unsupported
from pyaxvisor.hal import HostHal
from pyaxvisor.vcpu import PerCpu


def test_irq_fetch_and_handler_dispatch_in_order():
    with HostHal(2 << 20) as hal:
        got = []
        hal.irqs.register(4, got.append)
        hal.irqs.register(9, got.append)
        assert hal.irq_fetch() is None
        assert hal.irq_handler() is None
        t = threading.Thread(target=lambda: (hal.irqs.raise_irq(9), hal.irqs.raise_irq(4)))
        t.start()
        t.join()
        assert hal.irq_fetch() == 9
        assert hal.irq_handler() == 9
        assert hal.irq_fetch() == 4
        assert hal.irq_handler() == 4
        assert got == [9, 4]
        assert hal.irq_fetch() is None


def test_irq_registration_errors():
    with HostHal(2 << 20) as hal:
        hal.irqs.register(1, lambda irq: None)
        with pytest.raises(AlreadyExists):
            hal.irqs.register(1, lambda irq: None)
        with pytest.raises(NotFound, match="no handler"):
            hal.irqs.raise_irq(2)
        hal.irqs.unregister(1)
        with pytest.raises(NotFound):
            hal.irqs.unregister(1)


def test_percpu_init_once_enable_disable_close():
    pc = PerCpu(MockPerCpu)
    with pytest.raises(BadState, match="not initialised"):
        pc.hardware_enable()
    pc.init(3)
    assert pc.arch.cpu_id == 3
    with pytest.raises(AlreadyExists, match="already initialised"):
        pc.init(3)
    assert not pc.is_enabled()
    pc.hardware_enable()
    assert pc.is_enabled()
    with pytest.raises(BadState, match="already enabled"):
        pc.hardware_enable()
    pc.hardware_disable()
    with pytest.raises(BadState, match="not enabled"):
        pc.hardware_disable()
    pc.hardware_enable()
    pc.close()
    assert not pc.is_enabled()
    assert pc.arch.log == ["enable", "disable", "enable", "disable"]
    assert pc.max_guest_page_table_levels() == 4


def test_percpu_without_hardware_support(monkeypatch):
    monkeypatch.setattr(MockPerCpu, "supported", False)
    pc = PerCpu(MockPerCpu)
    with pytest.raises(Unsupported, match="no virtualization support"):
        pc.init(0)
    assert not pc.initialised


def test_percpu_context_manager_disables():
    with PerCpu(MockPerCpu) as pc:
        pc.init(0)
        pc.hardware_enable()
    assert not pc.is_enabled()

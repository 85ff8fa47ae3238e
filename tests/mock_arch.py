"""A recording ArchVCpu / ArchPerCpu for the generic-layer tests."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Self

from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr, HostPhysAddr
from pyaxvisor.vcpu import ArchPerCpu, ArchVCpu, ExitReason, Nothing


@dataclass
class MockCreateConfig:
    fail_new: bool = False


@dataclass
class MockSetupConfig:
    fail_in: set[str] = field(default_factory=set)


class MockArchVCpu(ArchVCpu):
    CreateConfig = MockCreateConfig
    SetupConfig = MockSetupConfig
    NUM_GPRS = 31

    def __init__(self, vm_id: int, vcpu_id: int) -> None:
        self.vm_id = vm_id
        self.vcpu_id = vcpu_id
        self.calls: list[tuple] = []
        self.gprs = [0] * self.NUM_GPRS
        self.return_value: int | None = None
        self.entry: GuestPhysAddr | None = None
        self.ept_root: HostPhysAddr | None = None
        self.exits: deque[ExitReason] = deque()
        self.injected: list[int] = []
        self.fail_in: set[str] = set()
        self.on_run = None  # optional callable run inside run()
        self._lock = threading.Lock()

    def _fail_check(self, name: str) -> None:
        if name in self.fail_in:
            raise RuntimeError(f"mock {name} failure")

    @classmethod
    def new(cls, vm_id: int, vcpu_id: int, config: MockCreateConfig) -> Self:
        if config.fail_new:
            raise RuntimeError("mock new failure")
        v = cls(vm_id, vcpu_id)
        v.calls.append(("new", vm_id, vcpu_id))
        return v

    def set_entry(self, entry: GuestPhysAddr) -> None:
        self.calls.append(("set_entry", entry))
        self._fail_check("set_entry")
        self.entry = entry

    def set_ept_root(self, ept_root: HostPhysAddr) -> None:
        self.calls.append(("set_ept_root", ept_root))
        self._fail_check("set_ept_root")
        self.ept_root = ept_root

    def setup(self, config: MockSetupConfig) -> None:
        self.calls.append(("setup", config))
        self.fail_in |= config.fail_in
        self._fail_check("setup")

    def run(self) -> ExitReason:
        self.calls.append(("run",))
        self._fail_check("run")
        if self.on_run is not None:
            self.on_run()
        return self.exits.popleft() if self.exits else Nothing()

    def bind(self) -> None:
        self.calls.append(("bind",))
        self._fail_check("bind")

    def unbind(self) -> None:
        self.calls.append(("unbind",))
        self._fail_check("unbind")

    def set_gpr(self, index: int, value: int) -> None:
        if not 0 <= index < self.NUM_GPRS:
            raise InvalidInput(f"no GPR {index}")
        self.calls.append(("set_gpr", index, value))
        self.gprs[index] = value

    def inject_interrupt(self, vector: int) -> None:
        if vector < 0:
            raise InvalidInput(f"bad vector {vector}")
        with self._lock:
            self.injected.append(vector)

    def set_return_value(self, value: int) -> None:
        self.calls.append(("set_return_value", value))
        self.gprs[0] = value


class MockPerCpu(ArchPerCpu):
    supported = True
    instances: ClassVar[list[MockPerCpu]] = []

    def __init__(self, cpu_id: int) -> None:
        self.cpu_id = cpu_id
        self.enabled = False
        self.log: list[str] = []

    @classmethod
    def new(cls, cpu_id: int) -> Self:
        inst = cls(cpu_id)
        cls.instances.append(inst)
        return inst

    def is_enabled(self) -> bool:
        return self.enabled

    def hardware_enable(self) -> None:
        self.log.append("enable")
        self.enabled = True

    def hardware_disable(self) -> None:
        self.log.append("disable")
        self.enabled = False

    @classmethod
    def has_hardware_support(cls) -> bool:
        return cls.supported

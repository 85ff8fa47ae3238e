"""An x86_64 VM on Linux KVM (axvm for x86_vcpu): the PC layout of
:mod:`pyaxvisor.vm.x86_layout`.

What runs where:

* **In the kernel** (KVM): the CPUs, the EPT/NPT, the interrupt controllers
  (``KVM_CREATE_IRQCHIP``: the two 8259 PICs, the IOAPIC, a local APIC per vCPU —
  INIT/SIPI between vCPUs, the APIC timer and HLT are handled there) and the
  i8254 PIT (``KVM_CREATE_PIT2``).
* **Here**, on the :class:`~pyaxvisor.devices.pio.PioBus`: COM1 (a 16550A on
  IRQ 4, driven into the in-kernel irqchip with ``KVM_IRQ_LINE``), fw_cfg, the
  i8042 (its reset line), the power-off port, and ``isa-debug-exit`` devices
  when configured. Unclaimed ports read as all ones; writes to them are dropped
  and counted (:attr:`X86Vm.pio`'s ``unclaimed``).

Threads: one host thread per vCPU. Every vCPU is created, set up and bound
before any runs (a barrier), because an INIT/SIPI sent to a vCPU that does not
exist yet is lost: vCPU 0 starts at the boot image's entry; the others sit in
KVM's wait-for-SIPI state, inside their own ``KVM_RUN``, until the guest starts
them. The console input thread feeds COM1.

Ending: a guest power-off (port 0x604, ``KVM_SYSTEM_EVENT_SHUTDOWN``), a reset
(i8042, triple fault, ``KVM_SYSTEM_EVENT_RESET``), a debug-exit write, the host
(:meth:`X86Vm.quit`, Ctrl-A X) or the timeout stop every vCPU: each is kicked
out of ``KVM_RUN`` and its thread joined. A vCPU whose exit the VM cannot honour
(MMIO where no device is, a hypercall, string port I/O, a KVM internal error,
an entry failure) stops the VM with that error, which :meth:`X86Vm.run` returns;
the host process is never brought down by a guest.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from pyaxvisor.arch.x86_64.pcpu import X86PerCpu
from pyaxvisor.arch.x86_64.vcpu import X86VCpu, X86VCpuCreateConfig, X86VCpuSetupConfig
from pyaxvisor.devices.debug_exit import DebugExit
from pyaxvisor.devices.fw_cfg import FwCfg
from pyaxvisor.devices.i8042 import I8042
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.pio import PioBus
from pyaxvisor.devices.power import PowerPort
from pyaxvisor.devices.uart16550 import Uart16550
from pyaxvisor.engine.kvm.ioctls import KVM_CAP_MAX_VCPUS, KVM_CAP_NR_VCPUS, KVM_CAP_XEN_HVM
from pyaxvisor.engine.kvm.structs import KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL
from pyaxvisor.engine.kvm.system import KvmSystem
from pyaxvisor.errors import AxError, InvalidInput, Unsupported
from pyaxvisor.hal.vcpu_hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table
from pyaxvisor.vcpu import (
    ExitReason,
    FailEntry,
    Halt,
    Hypercall,
    IoRead,
    IoWrite,
    MmioRead,
    MmioWrite,
    Nothing,
    PerCpu,
    SystemDown,
    VCpu,
    VCpuState,
)
from pyaxvisor.vm import x86_layout as L
from pyaxvisor.vm.result import VmResult

#: Most vCPUs an x86 VM may have (the MP table's APIC IDs leave room for the IOAPIC).
MAX_CPUS = 254
#: Stack pointer vCPU 0 starts with (below the boot_params page; kernels set their own).
BOOT_STACK = 0x6F00


class KvmIrqSink:
    """Device IRQ lines into KVM's in-kernel PIC/IOAPIC (``KVM_IRQ_LINE``; the level
    is the wire's: the guest programs edge or level triggering)."""

    def __init__(self, kvm_vm: object) -> None:
        self._vm = kvm_vm

    def set_irq_level(self, irq: int, level: bool) -> None:
        self._vm.irq_line(irq, level)  # type: ignore[attr-defined]


class UnknownHypercall(Unsupported):
    """The guest made a hypercall this VM does not implement."""


class X86Vm:
    """A PC-like VM: ``ram_size`` bytes of RAM, ``smp`` vCPUs, COM1 to
    ``console_write``; ``cmdline`` is published in fw_cfg; ``debug_exits`` lists
    ``(iobase, iosize)`` of ``isa-debug-exit`` devices; ``exit_times`` times the
    handling of every exit for :attr:`exit_time` (counting in :attr:`exits` is
    always on). The port devices are served inside each vCPU's run
    (``X86VCpu.serve_ports``): their exits are counted there and added in when
    the vCPU stops."""

    def __init__(self, *, ram_size: int = 256 << 20, smp: int = 1, vm_id: int = 1,
                 console_write: Callable[[bytes], None] | None = None, cmdline: str = "",
                 debug_exits: Sequence[tuple[int, int]] = (),
                 exit_times: bool = False) -> None:
        if not isinstance(smp, int) or not 1 <= smp <= MAX_CPUS:
            raise InvalidInput(f"an x86 VM has 1..{MAX_CPUS} CPUs, not {smp}")
        if ram_size < L.MIN_RAM:
            raise InvalidInput(f"RAM size {ram_size:#x} is less than the {L.MIN_RAM >> 20} MiB "
                               "an x86 VM needs")
        if ram_size > L.MAX_RAM:
            raise InvalidInput(f"RAM size {ram_size >> 30} GiB is more than this VM supports "
                               f"({L.MAX_RAM >> 30} GiB)")
        if ram_size % 0x1000:
            raise InvalidInput(f"RAM size {ram_size:#x} is not a multiple of 4 KiB")
        self.vm_id = vm_id
        self.smp = smp
        self.ram_size = ram_size
        self.cmdline = cmdline
        self.exit_times = exit_times
        self.hal: HostHal | None = None
        self.kvm: KvmSystem | None = None
        try:
            self._create(console_write, debug_exits)
        except BaseException:
            self.close()
            raise

    def _create(self, console_write: Callable[[bytes], None] | None,
                debug_exits: Sequence[tuple[int, int]]) -> None:
        self.kvm = KvmSystem()
        limit = self.kvm.check_extension(KVM_CAP_MAX_VCPUS) or \
            self.kvm.check_extension(KVM_CAP_NR_VCPUS) or 4
        if self.smp > limit:
            raise InvalidInput(f"{self.smp} vCPUs: this host's KVM allows at most {limit}")
        self.hal = HostHal(self.ram_size + (16 << 20))
        self.space = AddrSpace(self.hal, nested_page_table(self.hal, "x86_64"))
        for gpa, size in L.ram_regions(self.ram_size):
            self.space.map_ram(GuestPhysAddr(gpa), size)
        self.kvm_vm = self.kvm.create_vm()
        self.kvm_vm.create_irqchip()
        self.kvm_vm.create_pit2()
        # Hypercalls reach the VM where KVM can hand them over (Xen interception);
        # elsewhere KVM answers them itself (see pyaxvisor.arch.x86_64.vcpu).
        caps = self.kvm.check_extension(KVM_CAP_XEN_HVM)
        self.hypercalls_intercepted = bool(caps & KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL)
        if self.hypercalls_intercepted:
            self.kvm_vm.intercept_hypercalls()
        self.pio = PioBus()
        self.uart = Uart16550(tx=console_write or (lambda b: None),
                              irq=IrqLine(KvmIrqSink(self.kvm_vm), L.COM1_IRQ))
        self.pio.attach(L.COM1_PORT, 8, self.uart)
        self.fw_cfg = FwCfg(nb_cpus=self.smp, ram_size=self.ram_size, cmdline=self.cmdline)
        self.pio.attach(L.FW_CFG_PORT, 2, self.fw_cfg)
        self.i8042 = I8042(on_reset=lambda: self._finish(VmResult("reset")))
        self.pio.attach(L.I8042_DATA_PORT, 1, self.i8042.data_port)
        self.pio.attach(L.I8042_CMD_PORT, 1, self.i8042.command_port)
        self.power = PowerPort(on_power_off=lambda: self._finish(VmResult("poweroff")))
        self.pio.attach(L.POWER_OFF_PORT, 2, self.power)
        for i, (iobase, iosize) in enumerate(debug_exits):
            self.pio.attach(iobase, iosize, DebugExit(self._debug_exit, iosize,
                                                      name=f"isa-debug-exit{i}"))
        self._vcpus: dict[int, VCpu[X86VCpu]] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: VmResult | None = None
        self.exits: Counter[str] = Counter()
        self.exit_time: dict[str, float] = defaultdict(float)

    # -- guest memory ---------------------------------------------------------------------
    def write_guest(self, gpa: int, data: bytes) -> None:
        self.space.write(GuestPhysAddr(gpa), data)

    def read_guest(self, gpa: int, size: int) -> bytes:
        return self.space.read(GuestPhysAddr(gpa), size)

    # -- running ----------------------------------------------------------------------------
    def run(self, entry: int, *, mode: str = "protected", gprs: dict[int, int] | None = None,
            timeout: float | None = None) -> VmResult:
        """Start vCPU 0 at ``entry`` in ``mode`` (``"real"``, ``"protected"`` or
        ``"long"``) with the GPRs ``gprs`` (hardware numbering), the other vCPUs
        waiting for their SIPI, and wait until the VM ends or ``timeout`` seconds pass."""
        barrier = threading.Barrier(self.smp)
        boot = (entry, mode, dict(gprs or {}))
        for cpu in range(self.smp):
            t = threading.Thread(target=self._vcpu_thread, args=(cpu, barrier, boot),
                                 name=f"vm{self.vm_id}-vcpu{cpu}", daemon=True)
            self._threads[cpu] = t
            t.start()
        if not self._done.wait(timeout):
            self._finish(VmResult("timeout"))
        self._stop_all()
        assert self._result is not None
        if self._result.reason == "timeout":
            self._result.state = self.describe()
        self._result.exits = self.exits
        self._result.exit_time = self.exit_time
        return self._result

    def describe(self) -> str:
        """Each vCPU's state, mode and RIP (for a guest that hangs; call after the
        vCPU threads have stopped)."""
        lines = []
        for cpu, v in sorted(self._vcpus.items()):
            try:
                regs, sregs = v.arch.kvm.regs, v.arch.kvm.sregs
            except AxError as exc:
                lines.append(f"vCPU {cpu}: {v.state.name}, registers unavailable: {exc}")
                continue
            mode = ("long" if sregs.efer & (1 << 10) else
                    "protected" if sregs.cr0 & 1 else "real")
            lines.append(f"vCPU {cpu}: {v.state.name}, {mode} mode, CS:RIP "
                         f"{sregs.cs.selector:#x}:{regs.rip:#x}, RFLAGS {regs.rflags:#x}, "
                         f"RSP {regs.rsp:#x}")
        return "\n".join(lines)

    def quit(self) -> None:
        """Stop the VM from the host (the console's Ctrl-A X)."""
        self._finish(VmResult("quit"))

    def close(self) -> None:
        if hasattr(self, "_threads"):
            self._stop_all()
            with self._lock:  # a late quit() or kick finds no closed vCPU
                vcpus = list(self._vcpus.values())
                self._vcpus.clear()
            for v in vcpus:
                v.arch.close()
        if hasattr(self, "kvm_vm"):
            self.kvm_vm.close()
        if self.kvm is not None:
            self.kvm.close()
        if hasattr(self, "space"):
            self.space.destroy()
        if self.hal is not None:
            self.hal.close()
            self.hal = None

    def _debug_exit(self, status: int) -> None:
        self._finish(VmResult("debug-exit", exit_status=status))

    def _finish(self, result: VmResult) -> None:
        with self._lock:
            if self._result is None:
                self._result = result
            self._done.set()
            for v in self._vcpus.values():
                v.arch.kick()

    def _stop_all(self) -> None:
        self._done.set()
        me = threading.current_thread()
        for _ in range(50):
            with self._lock:
                for v in self._vcpus.values():
                    v.arch.kick()
            alive = [t for t in self._threads.values() if t is not me and t.is_alive()]
            if not alive:
                break
            alive[0].join(timeout=0.2)

    # -- vCPUs --------------------------------------------------------------------------------
    def _vcpu_thread(self, cpu: int, barrier: threading.Barrier,
                     boot: tuple[int, str, dict[int, int]]) -> None:
        percpu = PerCpu(X86PerCpu)
        vcpu: VCpu[X86VCpu] | None = None
        try:
            percpu.init(cpu)
            percpu.hardware_enable()
            vcpu = VCpu(self.vm_id, cpu, X86VCpu, X86VCpuCreateConfig(
                kvm_vm=self.kvm_vm, space=self.space, irqchip=True,
                hypercalls_intercepted=self.hypercalls_intercepted))
            entry, mode, gprs = boot
            if cpu == 0:
                for index, value in gprs.items():
                    vcpu.set_gpr(index, value)
                config = X86VCpuSetupConfig(mode=mode, stack_pointer=BOOT_STACK,  # type: ignore[arg-type]
                                            page_table_gpa=L.PAGE_TABLE_ADDR,
                                            gdt_gpa=L.GDT_ADDR)
                vcpu.setup(GuestPhysAddr(entry), self.space.root_paddr, config)
            else:
                # An AP: KVM keeps it waiting for INIT/SIPI, which set its registers.
                vcpu.setup(GuestPhysAddr(0), self.space.root_paddr, X86VCpuSetupConfig())
            vcpu.bind()
            # Port exits to the devices are served inside the vCPU's run (no round trip
            # through this loop); unclaimed ports and string I/O still come here.
            vcpu.arch.serve_ports({port: (dev.pio_write, dev.pio_read, offset)
                                   for port, (dev, offset) in self.pio.port_table().items()},
                                  timing=self.exit_times)
            with self._lock:
                self._vcpus[cpu] = vcpu
            if self._done.is_set():
                return
            barrier.wait(timeout=30)
            self._loop(cpu, vcpu)
        except threading.BrokenBarrierError:
            self._finish(VmResult("error", AxError(
                f"vCPU {cpu}: another vCPU failed to start")))
        except AxError as exc:
            barrier.abort()
            self._finish(VmResult("error", exc))
        except Exception as exc:  # a bug in pyaxvisor: report it as the VM's end
            barrier.abort()
            self._finish(VmResult("error", AxError(f"vCPU {cpu}: internal error: {exc!r}")))
        finally:
            if vcpu is not None and vcpu.state is VCpuState.Ready:
                vcpu.unbind()
            percpu.close()

    def _loop(self, cpu: int, vcpu: VCpu[X86VCpu]) -> None:
        try:
            self._dispatch(cpu, vcpu)
        finally:
            writes, reads, write_s, read_s = vcpu.arch.served
            with self._lock:
                self.exits["IoWrite"] += writes
                self.exits["IoRead"] += reads
                self.exit_time["IoWrite"] += write_s
                self.exit_time["IoRead"] += read_s

    def _dispatch(self, cpu: int, vcpu: VCpu[X86VCpu]) -> None:
        """Hand each exit ``run`` returns to its device or handler, counting them
        (and timing them with ``exit_times``)."""
        done = self._done
        exits = self.exits
        exit_time = self.exit_time
        perf = time.perf_counter if self.exit_times else None
        pio = self.pio
        t0 = 0.0
        while not done.is_set():
            e = vcpu.run()
            if perf is not None:
                t0 = perf()
            cls = type(e)
            if cls is IoWrite:
                pio.write(e.port, e.width, e.data, cpu)  # type: ignore[attr-defined]
            elif cls is IoRead:
                vcpu.complete_read(pio.read(e.port, e.width, cpu))  # type: ignore[attr-defined]
            else:
                self._handle(cpu, vcpu, e)
            name = cls.__name__
            exits[name] += 1
            if perf is not None:
                exit_time[name] += perf() - t0

    def _handle(self, cpu: int, vcpu: VCpu[X86VCpu], e: ExitReason) -> None:
        match e:
            case Nothing():
                pass
            case Halt():
                # Only without the in-kernel LAPIC; with it KVM sleeps the vCPU itself.
                raise Unsupported(f"vCPU {cpu}: HLT exit with the in-kernel irqchip")
            case SystemDown(reset=reset):
                self._finish(VmResult("reset" if reset else "poweroff"))
            case MmioRead(addr=addr, width=width) | MmioWrite(addr=addr, width=width):
                what = "read" if isinstance(e, MmioRead) else "write"
                raise Unsupported(f"vCPU {cpu}: {width.size}-byte MMIO {what} at "
                                  f"{int(addr):#x}: no RAM and no device there")
            case Hypercall(nr=nr, args=args):
                raise UnknownHypercall(f"vCPU {cpu}: unknown hypercall {nr:#x} with arguments "
                                       f"{', '.join(hex(a) for a in args)}")
            case FailEntry(hardware_entry_failure_reason=why):
                raise AxError(f"vCPU {cpu}: VM entry failed, hardware reason {why:#x}")
            case _:
                raise Unsupported(f"vCPU {cpu}: the VM cannot handle the exit {e!r}")


__all__ = ["MAX_CPUS", "KvmIrqSink", "UnknownHypercall", "X86Vm"]

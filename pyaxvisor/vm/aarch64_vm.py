"""An AArch64 VM on the QEMU ``virt`` board layout (axvm for arm_vcpu).

Memory map: flash bank 0 at 0x0 (64 MiB, holds ``-bios`` firmware), a CFI
flash bank 1 at 0x0400_0000, GICv2
distributor 0x0800_0000 and CPU interface 0x0801_0000, PL011 at 0x0900_0000
(SPI 1 = INTID 33), RAM from 0x4000_0000. Timer PPIs: virtual 27, physical 30.

Threads: one host thread per vCPU (each with its own per-CPU virtualization
state; guest code of one VM executes on one of them at a time, see
:mod:`pyaxvisor.engine.tcg.exec_lock`), a timer thread for the generic timers'
deadlines, and the console input thread. vCPU 0 starts at boot; the others are
created when the guest turns them on with PSCI CPU_ON (entry point and context ID
become their PC and x0).

The exit dispatch (``_handle``): MMIO → the device at that address; Halt →
Blocked until the vCPU's IRQ line rises; CpuUp → start the target vCPU;
CpuDown → the vCPU's thread waits for another CPU_ON; SystemDown → stop every
vCPU; an unknown SMCCC fast call → NOT_SUPPORTED to the guest; anything else
the VM cannot honour (an unknown hypercall, MMIO where no device is, an
undecodable trap) stops the VM with that error, which :meth:`run` returns —
the host process itself is never brought down by a guest.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

from pyaxvisor.arch.aarch64.pcpu import Aarch64PerCpu
from pyaxvisor.arch.aarch64.psci import AffinityState, PsciRet, encode_return, is_smccc_fast_call
from pyaxvisor.arch.aarch64.vcpu import Aarch64VCpu, Aarch64VCpuCreateConfig, Aarch64VCpuSetupConfig
from pyaxvisor.devices.gicv2 import CPU_IF_SIZE, DIST_SIZE, GicV2
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.mmio import MmioBus, MmioDevice
from pyaxvisor.devices.pflash import CfiFlash
from pyaxvisor.devices.pl011 import Pl011
from pyaxvisor.engine.tcg.exec_lock import ExecLock
from pyaxvisor.engine.tcg.native import TIMER_PHYS, TIMER_VIRT
from pyaxvisor.errors import AxError, InvalidInput, Unsupported
from pyaxvisor.hal.timer import TimerEvent, TimerThread, monotonic_ns
from pyaxvisor.hal.vcpu_hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr, HostPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.flags import MappingFlags
from pyaxvisor.mm.nested import nested_page_table
from pyaxvisor.vcpu import (
    CpuDown,
    CpuUp,
    ExitReason,
    ExternalInterrupt,
    Halt,
    Hypercall,
    MmioRead,
    MmioWrite,
    Nothing,
    PerCpu,
    SystemDown,
    VCpu,
    VCpuState,
)
from pyaxvisor.vcpu.width import AccessWidth
from pyaxvisor.vm.result import VmResult

FLASH_BASE = 0x0000_0000
FLASH_SIZE = 0x0400_0000
GIC_DIST = 0x0800_0000
GIC_CPU = 0x0801_0000
UART_BASE = 0x0900_0000
UART_INTID = 33
RAM_BASE = 0x4000_0000
#: Physical window (outside the host memory arena) for devices served in-CPU.
IN_CPU_MMIO_BASE = 0x80_0000_0000
PPI_VTIMER = 27
PPI_PTIMER = 30
TIMER_FREQ = 62_500_000
MAX_CPUS = 8


class UnknownHypercall(Unsupported):
    """The guest made a hypercall this VM does not implement."""


class Aarch64Vm:
    def __init__(self, *, ram_size: int = 512 << 20, smp: int = 1, vm_id: int = 1,
                 console_write: Callable[[bytes], None] | None = None,
                 in_cpu_mmio: bool = True) -> None:
        if not 1 <= smp <= MAX_CPUS:
            raise InvalidInput(f"a GICv2 VM has 1..{MAX_CPUS} CPUs, not {smp}")
        if ram_size < (16 << 20) or ram_size % (2 << 20):
            raise InvalidInput(f"RAM size {ram_size:#x} must be a multiple of 2 MiB, >= 16 MiB")
        if ram_size > (64 << 30):
            raise InvalidInput(f"RAM size {ram_size >> 20} MiB is more than this VM supports "
                               "(64 GiB)")
        self.vm_id = vm_id
        self.smp = smp
        self.ram_size = ram_size
        self.hal = HostHal(ram_size + 2 * FLASH_SIZE + (64 << 20))
        self.space = AddrSpace(self.hal, nested_page_table(self.hal, "aarch64", ipa_bits=40))
        self.space.map_ram(GuestPhysAddr(RAM_BASE), ram_size)
        # Flash bank 0 holds firmware and is executed in place: guest RAM, read-write
        # (QEMU runs it as a ROM device; a CFI probe of bank 0 reads back RAM and finds
        # no flash there). Bank 1 is a CFI flash (the firmware's environment) run as a
        # ROM device: mapped read-only while in read-array mode, trapping otherwise.
        self.space.map_ram(GuestPhysAddr(FLASH_BASE), FLASH_SIZE,
                           MappingFlags.READ | MappingFlags.WRITE | MappingFlags.EXECUTE)
        bank1 = self.space.map_ram(GuestPhysAddr(FLASH_BASE + FLASH_SIZE), FLASH_SIZE,
                                   MappingFlags.READ)
        self.bus = MmioBus()
        self.gic = GicV2(num_cpus=smp, on_cpu_irq=self._cpu_irq)
        self.bus.attach(GIC_DIST, DIST_SIZE, self.gic.distributor)
        self.bus.attach(GIC_CPU, CPU_IF_SIZE, self.gic.cpu_interface)
        self.uart = Pl011(tx=console_write or (lambda b: None), irq=IrqLine(self.gic, UART_INTID))
        self.bus.attach(UART_BASE, 0x1000, self.uart)
        self.in_cpu_mmio: list[tuple[int, int, Callable[[int, int, int], int],
                                     Callable[[int, int, int, int], None]]] = []
        self.in_cpu_accesses = [0, 0]  # reads, writes served inside the CPU
        if in_cpu_mmio:
            for base, size, device in ((GIC_DIST, DIST_SIZE, self.gic.distributor),
                                       (GIC_CPU, CPU_IF_SIZE, self.gic.cpu_interface),
                                       (UART_BASE, 0x1000, self.uart)):
                self._serve_in_cpu(base, size, device)
        self.flash1 = CfiFlash(FLASH_SIZE, name="pflash1",
                               storage=self.space.region_view(bank1),
                               on_array_mode=self._flash_array_mode)
        self.bus.attach(FLASH_BASE + FLASH_SIZE, FLASH_SIZE, self.flash1)
        self.timers = TimerThread(name=f"vm{vm_id}-timers")
        self._timer_events: dict[tuple[int, int], TimerEvent] = {}
        self._timer_lock = threading.Lock()
        self.exec_lock = ExecLock()
        self._vcpus: dict[int, VCpu[Aarch64VCpu]] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._restart: dict[int, tuple[int, int]] = {}
        self._off: set[int] = set()
        self._lock = threading.RLock()
        self._done = threading.Event()
        self._result: VmResult | None = None
        self.exits: Counter[str] = Counter()
        self.exit_time: dict[str, float] = defaultdict(float)
        self.cntvoff = 0
        self.dtb_addr = 0

    # -- guest memory ---------------------------------------------------------------------
    def write_guest(self, gpa: int, data: bytes) -> None:
        self.space.write(GuestPhysAddr(gpa), data)

    # -- running ----------------------------------------------------------------------------
    def run(self, entry: int, *, dtb_addr: int, timeout: float | None = None) -> VmResult:
        """Start vCPU 0 at ``entry`` with x0 = ``dtb_addr`` and wait for the VM to end."""
        self.dtb_addr = dtb_addr
        # The virtual counter starts at 0 when the VM starts (CNTVOFF = CNTPCT now).
        from pyaxvisor.engine.tcg.aarch64 import BOOT_NS

        self.cntvoff = (monotonic_ns() - BOOT_NS) * TIMER_FREQ // 1_000_000_000
        self._start_cpu(0, entry, dtb_addr)
        if not self._done.wait(timeout):
            self._finish(VmResult("timeout", state=self.describe()))
        self._stop_all()
        assert self._result is not None
        self._result.exits = self.exits
        self._result.exit_time = self.exit_time
        self._result.in_cpu_accesses = tuple(self.in_cpu_accesses)  # type: ignore[assignment]
        return self._result

    def describe(self) -> str:
        """Each vCPU's state, PC, IRQ line and timers (for a guest that hangs)."""
        lines = []
        now = monotonic_ns()
        for cpu, v in sorted(self._vcpus.items()):
            a = v.arch
            vctl, vcval, pctl, _pcval = a.timer_state()
            deadline = a.timer_deadline(TIMER_VIRT)
            due = "" if deadline is None else f" (due in {(deadline - now) / 1e6:.1f} ms)"
            lines.append(
                f"vCPU {cpu}: {v.state.name}, PC {a.ctx.elr:#x}, IRQ line "
                f"{'high' if a.irq_line else 'low'} (GIC output "
                f"{'high' if self.gic.irq_asserted(cpu) else 'low'}), virtual timer "
                f"CTL {vctl:#x} CVAL {vcval:#x}{due}, physical timer CTL {pctl:#x}")
        return "\n".join(lines)

    def quit(self) -> None:
        """Stop the VM from the host (the console's Ctrl-A X)."""
        self._finish(VmResult("quit"))

    def close(self) -> None:
        self._stop_all()
        self.timers.stop()
        self.space.destroy()
        self.hal.close()

    def _finish(self, result: VmResult) -> None:
        with self._lock:
            if self._result is None:
                self._result = result
        self._done.set()
        for v in list(self._vcpus.values()):
            v.arch.kick()
            v.wake()

    def _stop_all(self) -> None:
        self._done.set()
        for v in list(self._vcpus.values()):
            v.arch.kick()
            v.wake()
        for t in list(self._threads.values()):
            if t is not threading.current_thread():
                t.join(timeout=10)

    # -- vCPUs --------------------------------------------------------------------------------
    def _start_cpu(self, cpu: int, entry: int, arg: int) -> int:
        """Power on ``cpu``; returns a PSCI status."""
        with self._lock:
            if not 0 <= cpu < self.smp:
                return PsciRet.INVALID_PARAMETERS
            if cpu in self._off:
                self._off.discard(cpu)
                self._restart[cpu] = (entry, arg)
                self._vcpus[cpu].wake()
                return PsciRet.SUCCESS
            if cpu in self._threads:
                return PsciRet.ALREADY_ON
            t = threading.Thread(target=self._vcpu_thread, args=(cpu, entry, arg),
                                 name=f"vm{self.vm_id}-vcpu{cpu}", daemon=True)
            self._threads[cpu] = t
        t.start()
        return PsciRet.SUCCESS

    def affinity_info(self, target_mpidr: int, lowest_level: int) -> int:
        cpu = target_mpidr & 0xFF
        if lowest_level != 0 or not 0 <= cpu < self.smp or target_mpidr & ~0xFF:
            return PsciRet.INVALID_PARAMETERS
        with self._lock:
            if cpu in self._off or cpu not in self._threads:
                return AffinityState.OFF
            return AffinityState.ON if cpu in self._vcpus else AffinityState.ON_PENDING

    def _vcpu_thread(self, cpu: int, entry: int, arg: int) -> None:
        percpu = PerCpu(Aarch64PerCpu)
        vcpu: VCpu[Aarch64VCpu] | None = None
        try:
            percpu.init(cpu)
            percpu.hardware_enable()
            vcpu = VCpu(self.vm_id, cpu, Aarch64VCpu, Aarch64VCpuCreateConfig(
                mpidr_el1=0x8000_0000 | cpu, dtb_addr=arg, memory=self.hal.memory,
                hal=self.hal, psci=self, cntvoff=self.cntvoff, exec_lock=self.exec_lock))
            vcpu.arch.attach_interrupt_controller(self)
            vcpu.arch.in_cpu_mmio = self.in_cpu_mmio
            vcpu.arch.on_timer_write = self._timer_written
            vcpu.setup(GuestPhysAddr(entry), self.space.root_paddr, Aarch64VCpuSetupConfig())
            with self._lock:
                self._vcpus[cpu] = vcpu
            vcpu.bind()
            self._loop(cpu, vcpu)
        except AxError as exc:
            self._finish(VmResult("error", exc))
        except Exception as exc:  # a bug in pyaxvisor: report it as the VM's end
            self._finish(VmResult("error", AxError(f"vCPU {cpu}: internal error: {exc!r}")))
        finally:
            if vcpu is not None and vcpu.state is VCpuState.Ready:
                vcpu.unbind()
            percpu.close()

    def _loop(self, cpu: int, vcpu: VCpu[Aarch64VCpu]) -> None:
        done = self._done
        exits = self.exits
        exit_time = self.exit_time
        perf = time.perf_counter
        while not done.is_set():
            exit_reason = vcpu.run()
            t0 = perf()
            name = type(exit_reason).__name__
            self._handle(cpu, vcpu, exit_reason)
            exits[name] += 1
            exit_time[name] += perf() - t0

    def _handle(self, cpu: int, vcpu: VCpu[Aarch64VCpu], e: ExitReason) -> None:
        match e:
            case MmioRead(addr=addr, width=width):
                vcpu.complete_read(self.bus.read(int(addr), width, cpu))
            case MmioWrite(addr=addr, width=width, data=data):
                self.bus.write(int(addr), width, data, cpu)
            case Nothing():
                pass
            case Halt():
                if not vcpu.arch.irq_line:
                    vcpu.block()
                    if vcpu.arch.irq_line:  # raised between the check and block()
                        vcpu.wake()
                    while not (vcpu.wait_while_blocked(0.5) or self._done.is_set()):
                        pass
                    if vcpu.state is VCpuState.Blocked:
                        vcpu.wake()
            case CpuUp(target_cpu=target, entry_point=entry, arg=arg):
                status = self._start_cpu(target & 0xFF if target < 0x100 else -1,
                                         int(entry), arg)
                vcpu.set_return_value(encode_return(status))
            case CpuDown():
                self._power_off(cpu, vcpu)
            case SystemDown(reset=reset):
                self._finish(VmResult("reset" if reset else "poweroff"))
            case ExternalInterrupt():
                self.hal.irq_handler()
            case Hypercall(nr=nr) if is_smccc_fast_call(nr):
                vcpu.set_return_value(encode_return(PsciRet.NOT_SUPPORTED))
            case Hypercall(nr=nr, args=args):
                raise UnknownHypercall(f"vCPU {cpu}: unknown hypercall {nr:#x} with arguments "
                                       f"{', '.join(hex(a) for a in args)}")
            case _:
                raise Unsupported(f"vCPU {cpu}: the VM cannot handle the exit {e!r}")

    def _power_off(self, cpu: int, vcpu: VCpu[Aarch64VCpu]) -> None:
        """PSCI CPU_OFF: wait until a CPU_ON names this CPU again."""
        with self._lock:
            self._off.add(cpu)
        vcpu.block()
        while not self._done.is_set():
            if vcpu.wait_while_blocked(0.5) and cpu in self._restart:
                break
        if vcpu.state is VCpuState.Blocked:
            vcpu.wake()
        with self._lock:
            restart = self._restart.pop(cpu, None)
        if restart is not None:
            vcpu.arch.restart(*restart)

    def _serve_in_cpu(self, base: int, size: int, device: MmioDevice) -> None:
        """Let the vCPUs call ``device`` from inside the CPU (as KVM's in-kernel devices
        are served without a return to user space): its guest window is mapped in the
        stage-2 table onto physical addresses the engine routes to the device."""
        paddr = IN_CPU_MMIO_BASE + base
        self.space.map_mmio_window(GuestPhysAddr(base), HostPhysAddr(paddr), size)
        widths = {w.size: w for w in AccessWidth}
        counts = self.in_cpu_accesses

        def read(offset: int, size: int, cpu: int) -> int:
            counts[0] += 1
            return device.mmio_read(offset, widths[size], cpu) & widths[size].mask

        def write(offset: int, size: int, value: int, cpu: int) -> None:
            counts[1] += 1
            device.mmio_write(offset, widths[size], value & widths[size].mask, cpu)

        self.in_cpu_mmio.append((paddr, size, read, write))

    def _flash_array_mode(self, array: bool) -> None:
        self.space.set_region_mapped(GuestPhysAddr(FLASH_BASE + FLASH_SIZE), array)
        for v in list(self._vcpus.values()):
            v.arch.request_tlb_flush()

    # -- interrupts ------------------------------------------------------------------------------
    def _cpu_irq(self, cpu: int, asserted: bool) -> None:
        v = self._vcpus.get(cpu)
        if v is not None:
            v.arch.set_irq_line(asserted)
            if asserted:
                v.wake()

    def inject(self, cpu_id: int, intid: int) -> None:
        """The vCPU's ``inject_interrupt``: raise ``intid`` for ``cpu_id`` at the GIC."""
        if 16 <= intid < 32:
            self.gic.set_ppi_level(cpu_id, intid, True)
        elif intid >= 32:
            self.gic.set_irq_level(intid, True)
        else:
            raise InvalidInput(f"SGIs are sent by the guest, not injected (INTID {intid})")

    def _timer_written(self, cpu: int, timer: int) -> None:
        # Runs inside the CPU loop (from the native timer hook): never raise.
        try:
            self._update_timer(cpu, timer)
        except Exception as exc:
            self._finish(VmResult("error", AxError(f"timer of vCPU {cpu}: {exc!r}")))

    def _update_timer(self, cpu: int, timer: int) -> None:
        """Drive the timer's PPI from its state and (re)arm the host event for its
        deadline. Called from the vCPU thread (guest wrote CTL/CVAL/TVAL) and from the
        timer thread (a deadline passed): serialised, or a rearm could be lost."""
        with self._timer_lock:
            self._update_timer_locked(cpu, timer)

    def _update_timer_locked(self, cpu: int, timer: int) -> None:
        v = self._vcpus.get(cpu)
        if v is None:
            return
        ppi = PPI_VTIMER if timer == TIMER_VIRT else PPI_PTIMER
        level = v.arch.timer_irq_level(timer, monotonic_ns())
        self.gic.set_ppi_level(cpu, ppi, level)
        key = (cpu, timer)
        old = self._timer_events.pop(key, None)
        if old is not None:
            self.timers.cancel(old)
        deadline = v.arch.timer_deadline(timer)
        if deadline is not None and not level:
            self._timer_events[key] = self.timers.schedule(
                deadline, lambda now, c=cpu, t=timer: self._update_timer(c, t))


__all__ = ["FLASH_BASE", "RAM_BASE", "TIMER_PHYS", "Aarch64Vm", "UnknownHypercall", "VmResult"]

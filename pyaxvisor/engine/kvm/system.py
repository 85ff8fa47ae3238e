"""The KVM API as Python objects: :class:`KvmSystem` (``/dev/kvm``), :class:`KvmVm`
(a VM file descriptor) and :class:`KvmVCpu` (a vCPU file descriptor and its mapped
``kvm_run``), following ``Documentation/virt/kvm/api.rst``.

Every ioctl goes through libc's ``ioctl`` via ctypes (so 64-bit integer arguments
and structure pointers pass unchanged and the GIL is released during ``KVM_RUN``).
A failing ioctl raises :class:`KvmError` naming the ioctl and the errno, e.g.
``KVM_SET_USER_MEMORY_REGION failed: EINVAL (Invalid argument)``.

``KVM_RUN`` interrupted by a signal — or refused because ``immediate_exit`` was
set — fails with EINTR; :meth:`KvmVCpu.run` does not raise then but returns
:data:`~pyaxvisor.engine.kvm.exits.KVM_EXIT_INTR` (10), the value the kernel also
stores in ``kvm_run.exit_reason`` for that case. To kick a vCPU that runs in
another thread: set ``vcpu.immediate_exit = True`` and then send that thread a
signal that has a handler (``signal.pthread_kill``); the run returns
``KVM_EXIT_INTR`` whether the signal arrives before or during ``KVM_RUN``. Clear
``immediate_exit`` before running again.

Coalesced port I/O (:meth:`KvmVm.coalesce_pio`): writes to a registered port range
do not exit; KVM queues them in the VM's ring page (mapped from a vCPU's file at
``KVM_CAP_COALESCED_MMIO`` pages), and :meth:`KvmVCpu.run_fields` hands them to the
port devices, in order, after every ``KVM_RUN`` (see ``_native.c``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Self

from pyaxvisor.engine.kvm import _native  # type: ignore[attr-defined]
from pyaxvisor.engine.kvm import ioctls as io
from pyaxvisor.engine.kvm import structs as st
from pyaxvisor.engine.kvm.exits import (
    KVM_EXIT_DEBUG,
    KVM_EXIT_FAIL_ENTRY,
    KVM_EXIT_HYPERCALL,
    KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_INTR,
    KVM_EXIT_IO,
    KVM_EXIT_IO_OUT,
    KVM_EXIT_MMIO,
    KVM_EXIT_SYSTEM_EVENT,
    KVM_EXIT_XEN,
    exit_reason_name,
)
from pyaxvisor.engine.kvm.probe import KVM_API_VERSION, KVM_DEVICE, KvmUnavailable
from pyaxvisor.errors import AxError, BadState

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int


class KvmError(AxError):
    """A KVM ioctl failed. ``ioctl`` is its name, ``errno`` the error number."""

    def __init__(self, ioctl: str, err: int, detail: str = "") -> None:
        name = errno.errorcode.get(err, f"errno {err}")
        msg = f"{ioctl} failed: {name} ({os.strerror(err)})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)
        self.ioctl = ioctl
        self.errno = err
        self.errno_name = name


def _arg(arg: int | ctypes.Structure | ctypes.Array | None) -> int | None:
    if arg is None or isinstance(arg, int):
        return arg
    return ctypes.addressof(arg)


def kvm_ioctl(fd: int, request: int, arg: int | ctypes.Structure | ctypes.Array | None = 0,
              *, detail: str = "") -> int:
    """``ioctl(fd, request, arg)``; ``arg`` is an integer or a ctypes object passed by
    pointer. Returns the ioctl's non-negative result or raises :class:`KvmError`."""
    if fd < 0:
        raise BadState(f"{io.ioctl_name(request)} on a closed KVM file descriptor")
    ret = _ioctl(fd, request, _arg(arg))
    if ret < 0:
        raise KvmError(io.ioctl_name(request), ctypes.get_errno(), detail)
    return ret


class _Fd:
    """A KVM file descriptor owner; closes it on :meth:`close` or context exit."""

    _fd: int = -1

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _ioctl(self, request: int, arg: int | ctypes.Structure | ctypes.Array | None = 0,
               detail: str = "") -> int:
        return kvm_ioctl(self._fd, request, arg, detail=detail)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        self._close_fd()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# -- /dev/kvm ---------------------------------------------------------------------------

class KvmSystem(_Fd):
    """``/dev/kvm``: capability queries, the supported CPUID, VM creation."""

    def __init__(self, device: str = KVM_DEVICE) -> None:
        try:
            self._fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(f"{device} does not exist: the kernel has no KVM module "
                                 "loaded or the host has no hardware virtualization") from None
        except PermissionError:
            raise KvmUnavailable(f"{device} is not accessible to this user") from None
        except OSError as exc:
            raise KvmUnavailable(f"cannot open {device}: {exc.strerror}") from None
        self.device = device
        self._mmap_size: int | None = None
        try:
            self.api_version = self._ioctl(io.KVM_GET_API_VERSION)
        except KvmError as exc:
            self.close()
            raise KvmUnavailable(str(exc)) from None
        if self.api_version != KVM_API_VERSION:
            self.close()
            raise KvmUnavailable(f"{device} speaks KVM API {self.api_version}, "
                                 f"pyaxvisor needs {KVM_API_VERSION}")

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION``: 0 if ``cap`` is unsupported, else a positive value."""
        return self._ioctl(io.KVM_CHECK_EXTENSION, cap)

    @property
    def vcpu_mmap_size(self) -> int:
        """``KVM_GET_VCPU_MMAP_SIZE``: bytes to mmap from a vCPU fd (``kvm_run`` and more)."""
        if self._mmap_size is None:
            self._mmap_size = self._ioctl(io.KVM_GET_VCPU_MMAP_SIZE)
        return self._mmap_size

    def supported_cpuid(self, max_entries: int = 128) -> ctypes.Structure:
        """``KVM_GET_SUPPORTED_CPUID`` as a ``kvm_cpuid2`` whose ``nent`` entries are
        filled (the buffer grows while the kernel answers E2BIG). It can be handed
        to :meth:`KvmVCpu.set_cpuid2` as is."""
        n = max_entries
        while True:
            buf = st.cpuid2_type(n)()
            buf.nent = n
            try:
                self._ioctl(io.KVM_GET_SUPPORTED_CPUID, buf)
            except KvmError as exc:
                if exc.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return buf

    def create_vm(self, machine_type: int = 0) -> KvmVm:
        return KvmVm(self, machine_type)


# -- VM ------------------------------------------------------------------------------------

class KvmVm(_Fd):
    """A VM (``KVM_CREATE_VM``). Closing it also closes the vCPUs created through it."""

    def __init__(self, system: KvmSystem, machine_type: int = 0) -> None:
        self.system = system
        self._fd = system._ioctl(io.KVM_CREATE_VM, machine_type)
        self.vcpus: list[KvmVCpu] = []
        self._coalesced: dict[int, int] = {}  # port -> size of each registered zone
        self._ring_lock = threading.Lock()
        self._ring_map: mmap.mmap | None = None
        self._ring: tuple[int, int, threading.Lock] | None = None
        self._ring_view: ctypes.Array | None = None  # first, last (u32)
        #: Shared by the vCPUs while they drain the ring (see ``_native.c``).
        self.drain_lock = threading.Lock()

    def set_user_memory_region(self, slot: int, gpa: int, size: int, host_addr: int,
                               readonly: bool = False, flags: int = 0) -> None:
        """``KVM_SET_USER_MEMORY_REGION``: back guest physical ``[gpa, gpa+size)`` with
        the host virtual range at ``host_addr`` (size 0 deletes the slot). The host
        memory must stay mapped while the slot exists."""
        if readonly:
            flags |= st.KVM_MEM_READONLY
        region = st.KvmUserspaceMemoryRegion(slot=slot, flags=flags, guest_phys_addr=gpa,
                                             memory_size=size, userspace_addr=host_addr)
        self._ioctl(io.KVM_SET_USER_MEMORY_REGION, region,
                    detail=f"slot {slot}, gpa {gpa:#x}, size {size:#x}, host {host_addr:#x}")

    def delete_memory_region(self, slot: int) -> None:
        self.set_user_memory_region(slot, 0, 0, 0)

    def create_irqchip(self) -> None:
        """``KVM_CREATE_IRQCHIP``: in-kernel PIC, IOAPIC and local APICs (before vCPUs)."""
        self._ioctl(io.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = 0) -> None:
        """``KVM_CREATE_PIT2``: the in-kernel i8254 (after :meth:`create_irqchip`)."""
        self._ioctl(io.KVM_CREATE_PIT2, st.KvmPitConfig(flags=flags))

    def intercept_hypercalls(self) -> None:
        """Send every ``vmcall``/``vmmcall`` to user space as ``KVM_EXIT_XEN``
        (``KVM_XEN_HVM_CONFIG`` with ``KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL``).

        Without it KVM answers hypercalls itself (its PV interface; unknown numbers
        get ``-KVM_ENOSYS`` in RAX), and ``KVM_CAP_EXIT_HYPERCALL`` forwards only
        ``KVM_HC_MAP_GPA_RANGE``. Xen interception is the one KVM mechanism that
        hands user space every hypercall with the caller's registers; no Xen
        hypercall page (MSR 0) and no event channels are configured, so nothing
        Xen-specific is visible to the guest. Raises :class:`KvmError` when the
        host's KVM lacks it (``KVM_CAP_XEN_HVM``)."""
        caps = self.system.check_extension(io.KVM_CAP_XEN_HVM)
        if not caps & st.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL:
            raise KvmError("KVM_XEN_HVM_CONFIG", errno.ENOTSUP,
                           "this KVM cannot intercept hypercalls (KVM_CAP_XEN_HVM "
                           f"= {caps:#x})")
        config = st.KvmXenHvmConfig(flags=st.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL)
        self._ioctl(io.KVM_XEN_HVM_CONFIG, config)

    def set_tss_addr(self, addr: int) -> None:
        """``KVM_SET_TSS_ADDR``: three pages of guest physical space for Intel's
        real-mode emulation (needed on VMX without unrestricted guest)."""
        self._ioctl(io.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """``KVM_SET_IDENTITY_MAP_ADDR``: one page for the VMX real-mode identity table."""
        value = ctypes.c_uint64(addr)
        self._ioctl(io.KVM_SET_IDENTITY_MAP_ADDR, value)

    def irq_line(self, irq: int, level: int | bool) -> None:
        """``KVM_IRQ_LINE``: set the in-kernel irqchip's input ``irq`` to ``level``."""
        self._ioctl(io.KVM_IRQ_LINE, st.KvmIrqLevel(irq=irq, level=int(level)))

    def create_vcpu(self, vcpu_id: int) -> KvmVCpu:
        vcpu = KvmVCpu(self, vcpu_id)
        self.vcpus.append(vcpu)
        return vcpu

    # -- coalesced port I/O -----------------------------------------------------------------
    def coalesced_pio_supported(self) -> bool:
        """Whether this KVM queues port writes (``KVM_CAP_COALESCED_PIO``)."""
        return bool(self.system.check_extension(io.KVM_CAP_COALESCED_PIO)
                    and self.system.check_extension(io.KVM_CAP_COALESCED_MMIO))

    def coalesce_pio(self, port: int, size: int, on: bool = True) -> None:
        """Queue the writes to ports ``[port, port + size)`` in the ring instead of
        exiting (``KVM_REGISTER_COALESCED_MMIO`` with ``pio`` = 1), or stop doing so
        (``on`` False: ``KVM_UNREGISTER_COALESCED_MMIO``; writes already queued stay in
        the ring until a vCPU drains it). Idempotent; any thread, vCPUs running or
        not. Only for ports every vCPU serves (:meth:`KvmVCpu.run_fields`' ``ports``),
        whose devices take writes late without the guest seeing a difference."""
        with self._ring_lock:
            if on == (self._coalesced.get(port) == size):
                return
            zone = st.KvmCoalescedMmioZone(addr=port, size=size, pio=1)
            if on:
                self._ioctl(io.KVM_REGISTER_COALESCED_MMIO, zone,
                            detail=f"ports {port:#x}+{size}")
                self._coalesced[port] = size
            else:
                self._ioctl(io.KVM_UNREGISTER_COALESCED_MMIO, zone,
                            detail=f"ports {port:#x}+{size}")
                del self._coalesced[port]

    @property
    def coalesced_ports(self) -> dict[int, int]:
        """The registered zones: first port → number of ports."""
        with self._ring_lock:
            return dict(self._coalesced)

    def coalesced_ring(self) -> tuple[int, int, threading.Lock] | None:
        """``(address, entries, lock)`` of the ring, for ``run_fields``; ``None`` until a
        zone was registered. Mapped (once) from the first vCPU's file: call it after
        a vCPU exists."""
        ring = self._ring
        if ring is not None or not self._coalesced:
            return ring
        with self._ring_lock:
            if self._ring is None and self._coalesced:
                if not self.vcpus:
                    raise BadState("the coalesced ring is mapped from a vCPU: create one first")
                page = mmap.PAGESIZE
                offset = self.system.check_extension(io.KVM_CAP_COALESCED_MMIO) * page
                self._ring_map = mmap.mmap(self.vcpus[0].fd, page, flags=mmap.MAP_SHARED,
                                           prot=mmap.PROT_READ | mmap.PROT_WRITE,
                                           offset=offset)
                self._ring_view = (ctypes.c_uint32 * 2).from_buffer(self._ring_map)
                self._ring = (ctypes.addressof(self._ring_view),
                              st.coalesced_ring_entries(page), self.drain_lock)
            return self._ring

    @property
    def coalesced_pending(self) -> int:
        """How many writes wait in the ring (0 when it is not mapped)."""
        view = self._ring_view
        if view is None or self._ring is None:
            return 0
        first, last = view[0], view[1]
        return (last - first) % self._ring[1]

    @property
    def coalesced_drained(self) -> int:
        """The ring's ``first`` index: it moves whenever a vCPU hands out a write (-1
        when the ring is not mapped)."""
        view = self._ring_view
        return -1 if view is None else view[0]

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        with self._ring_lock:
            self._ring = None
            view, self._ring_view = self._ring_view, None
            del view  # the ctypes export, so that the mapping can close
            if self._ring_map is not None:
                with contextlib.suppress(BufferError):
                    self._ring_map.close()
                self._ring_map = None
        self._close_fd()


# -- vCPU ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class IoExit:
    """``KVM_EXIT_IO``. ``data`` views the ``size * count`` bytes inside ``kvm_run``:
    read it for an OUT, write the result into it for an IN, before the next run."""

    direction: int  # KVM_EXIT_IO_IN / KVM_EXIT_IO_OUT
    size: int
    port: int
    count: int
    data: memoryview

    @property
    def is_out(self) -> bool:
        return self.direction == KVM_EXIT_IO_OUT


@dataclass(frozen=True)
class MmioExit:
    """``KVM_EXIT_MMIO``. ``data`` views ``len`` bytes of ``kvm_run.mmio.data``: the
    written value for a write, where to put the value for a read."""

    addr: int
    len: int
    is_write: bool
    data: memoryview


@dataclass(frozen=True)
class InternalError:
    suberror: int
    data: tuple[int, ...]


@dataclass(frozen=True)
class SystemEvent:
    type: int
    data: tuple[int, ...]


@dataclass(frozen=True)
class FailEntry:
    hardware_entry_failure_reason: int
    cpu: int


_EXIT_OFFSET = st.KvmRun.exit.offset
_NO_IO_EXITS: dict[int, object] = {}


def io_exit_key(port: int, size: int, direction: int, value: int) -> int:
    """The key :meth:`KvmVCpu.run_fields` looks a single port access up by (``value``
    is ignored for an IN)."""
    if direction != KVM_EXIT_IO_OUT:
        value = 0
    return value << 32 | (size | direction << 8) << 16 | port


class KvmVCpu(_Fd):
    """A vCPU (``KVM_CREATE_VCPU``) with its ``kvm_run`` mapped. Not thread-safe except
    for :attr:`immediate_exit`, which exists to be set from another thread.

    Views returned by :attr:`io` / :attr:`mmio` point into ``kvm_run`` and are only
    meaningful until the next :meth:`run`; drop them before :meth:`close` (a view
    still alive keeps the mapping, never a dangling pointer).
    """

    def __init__(self, vm: KvmVm, vcpu_id: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self._fd = vm._ioctl(io.KVM_CREATE_VCPU, vcpu_id)
        try:
            size = vm.system.vcpu_mmap_size
            self._mmap: mmap.mmap | None = mmap.mmap(
                self._fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            self._close_fd()
            raise
        self._run: st.KvmRun | None = st.KvmRun.from_buffer(self._mmap)
        self._run_address = ctypes.addressof(self._run)

    # -- kvm_run ------------------------------------------------------------------------
    @property
    def kvm_run(self) -> st.KvmRun:
        if self._run is None:
            raise BadState(f"vCPU {self.id} is closed")
        return self._run

    def run(self) -> int:
        """``KVM_RUN`` until the next exit; returns ``kvm_run.exit_reason``, or
        :data:`KVM_EXIT_INTR` if the run was interrupted by a signal or refused
        because :attr:`immediate_exit` is set (EINTR). Other errors raise."""
        run = self.kvm_run
        try:
            self._ioctl(io.KVM_RUN)
        except KvmError as exc:
            if exc.errno in (errno.EINTR, errno.EAGAIN):  # EAGAIN: a woken AP, see run_fields
                return KVM_EXIT_INTR
            raise
        return run.exit_reason

    def run_fields(self, io_exits: dict[int, object] | None = None,
                   ports: dict[int, tuple[object, object, int, int]] | None = None,
                   widths: tuple[object, object, object] | None = None,
                   counters: object = None,
                   ring: tuple[int, int, threading.Lock] | None = None) -> object:
        """:meth:`run` and the exit's fields in one native call (the hot path):
        ``(exit_reason, a, b, c)`` with, for ``KVM_EXIT_IO``, ``a`` = port, ``b`` =
        size | direction << 8 | count << 16 and ``c`` = the first ``size`` data bytes
        little-endian; for ``KVM_EXIT_MMIO``, ``a`` = address, ``b`` = len |
        is_write << 8, ``c`` = the data (first 8 bytes); otherwise zeros. An
        interrupted run gives ``KVM_EXIT_INTR``; other failures raise
        :class:`KvmError`.

        ``io_exits`` maps :func:`io_exit_key` of a single port access to a
        ready-made object; when the exit's key is there, that object is returned
        instead of the tuple.

        ``ports`` (with ``widths`` and ``counters``) serves port accesses without
        returning (string I/O element by element): ``ports[port] = (write, read,
        offset, vcpu_id)``; an OUT calls ``write(offset, widths[i], value,
        vcpu_id)``, an IN ``read(offset, widths[i], vcpu_id)`` (i = 0, 1, 2 for 1, 2,
        4 bytes; ``None`` leaves that direction to the caller), and ``KVM_RUN`` is
        entered again. ``counters`` is a
        writable buffer of six unsigned 64-bit integers ``[timing, writes, reads,
        write_ns, read_ns, runs]`` that counts what was served (and times it when
        ``timing`` is not 0) and the returns from ``KVM_RUN`` (each an exit of the
        guest, served here or not). A device's exception ends the call with it.

        ``ring`` (:meth:`KvmVm.coalesced_ring`, with ``ports``): after every
        ``KVM_RUN`` the writes KVM queued there are handed to ``ports``' write
        functions, oldest first, counted as served writes, before the exit is
        served or returned."""
        try:
            if ports is None:
                return _native.run(self._fd, self._run_address,
                                   _NO_IO_EXITS if io_exits is None else io_exits)
            return _native.run(self._fd, self._run_address,
                               _NO_IO_EXITS if io_exits is None else io_exits,
                               ports, widths, counters, ring)
        except OSError as exc:
            raise KvmError("KVM_RUN", exc.errno or 0) from None

    @property
    def exit_reason(self) -> int:
        return self.kvm_run.exit_reason

    @property
    def exit_reason_name(self) -> str:
        return exit_reason_name(self.exit_reason)

    @property
    def immediate_exit(self) -> bool:
        return bool(self.kvm_run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.kvm_run.immediate_exit = 1 if value else 0

    @property
    def request_interrupt_window(self) -> bool:
        return bool(self.kvm_run.request_interrupt_window)

    @request_interrupt_window.setter
    def request_interrupt_window(self, value: bool) -> None:
        self.kvm_run.request_interrupt_window = 1 if value else 0

    @property
    def ready_for_interrupt_injection(self) -> bool:
        return bool(self.kvm_run.ready_for_interrupt_injection)

    @property
    def if_flag(self) -> bool:
        return bool(self.kvm_run.if_flag)

    def _expect(self, reason: int) -> st.KvmRun:
        run = self.kvm_run
        if run.exit_reason != reason:
            raise BadState(f"vCPU {self.id}: last exit is {exit_reason_name(run.exit_reason)}, "
                           f"not {exit_reason_name(reason)}")
        return run

    @property
    def io(self) -> IoExit:
        e = self._expect(KVM_EXIT_IO).exit.io
        assert self._mmap is not None
        length = e.size * e.count
        if e.data_offset + length > len(self._mmap):
            raise BadState(f"KVM_EXIT_IO data at {e.data_offset:#x}+{length:#x} is outside "
                           "the kvm_run mapping")
        data = memoryview(self._mmap)[e.data_offset:e.data_offset + length]
        return IoExit(e.direction, e.size, e.port, e.count, data)

    @property
    def mmio(self) -> MmioExit:
        e = self._expect(KVM_EXIT_MMIO).exit.mmio
        assert self._mmap is not None
        start = _EXIT_OFFSET + st.KvmRunMmio.data.offset
        length = min(e.len, 8)
        return MmioExit(e.phys_addr, e.len, bool(e.is_write),
                        memoryview(self._mmap)[start:start + length])

    @property
    def fail_entry(self) -> FailEntry:
        e = self._expect(KVM_EXIT_FAIL_ENTRY).exit.fail_entry
        return FailEntry(e.hardware_entry_failure_reason, e.cpu)

    @property
    def internal_error(self) -> InternalError:
        e = self._expect(KVM_EXIT_INTERNAL_ERROR).exit.internal
        return InternalError(e.suberror, tuple(e.data[:min(e.ndata, 16)]))

    @property
    def system_event(self) -> SystemEvent:
        e = self._expect(KVM_EXIT_SYSTEM_EVENT).exit.system_event
        return SystemEvent(e.type, tuple(e.data[:min(e.ndata, 16)]))

    @property
    def xen(self) -> st.KvmRunXen:
        """The live ``kvm_run.xen`` (set ``hcall.result`` before the next run: KVM puts
        it in RAX and steps over the hypercall instruction)."""
        return self._expect(KVM_EXIT_XEN).exit.xen

    @property
    def hypercall(self) -> st.KvmRunHypercall:
        """The live ``kvm_run.hypercall`` (set ``ret`` before the next run)."""
        return self._expect(KVM_EXIT_HYPERCALL).exit.hypercall

    # -- registers ------------------------------------------------------------------------
    @property
    def regs(self) -> st.KvmRegs:
        """``KVM_GET_REGS`` (a copy: modify and pass to :meth:`set_regs`)."""
        regs = st.KvmRegs()
        self._ioctl(io.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: st.KvmRegs) -> None:
        self._ioctl(io.KVM_SET_REGS, regs)

    @property
    def sregs(self) -> st.KvmSregs:
        sregs = st.KvmSregs()
        self._ioctl(io.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: st.KvmSregs) -> None:
        self._ioctl(io.KVM_SET_SREGS, sregs)

    @property
    def fpu(self) -> st.KvmFpu:
        fpu = st.KvmFpu()
        self._ioctl(io.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: st.KvmFpu) -> None:
        self._ioctl(io.KVM_SET_FPU, fpu)

    # -- debugging ------------------------------------------------------------------------
    def set_guest_debug(self, control: int, debugreg: tuple[int, ...] = ()) -> None:
        """``KVM_SET_GUEST_DEBUG``: ``control`` (KVM_GUESTDBG_* bits) and DR0-DR7 (the
        first of ``debugreg``; the others 0)."""
        dbg = st.KvmGuestDebug()
        dbg.control = control
        for i, value in enumerate(debugreg[:8]):
            dbg.debugreg[i] = value
        self._ioctl(io.KVM_SET_GUEST_DEBUG, dbg)

    def translate(self, va: int) -> int | None:
        """``KVM_TRANSLATE``: the guest-physical address of linear address ``va`` in the
        vCPU's current paging mode, or None when it has none."""
        tr = st.KvmTranslation()
        tr.linear_address = va
        self._ioctl(io.KVM_TRANSLATE, tr)
        return int(tr.physical_address) if tr.valid else None

    @property
    def debug_exit(self) -> st.KvmDebugExitArch:
        """The live ``kvm_run.debug.arch`` of a KVM_EXIT_DEBUG."""
        return self._expect(KVM_EXIT_DEBUG).exit.debug

    def set_cpuid2(self, cpuid: ctypes.Structure) -> None:
        """``KVM_SET_CPUID2`` with a ``kvm_cpuid2`` (e.g. from
        :meth:`KvmSystem.supported_cpuid`, or built with :func:`structs.cpuid2_type`)."""
        self._ioctl(io.KVM_SET_CPUID2, cpuid)

    def get_msrs(self, indices: list[int] | tuple[int, ...]) -> dict[int, int]:
        """``KVM_GET_MSRS``: ``{index: value}``. An MSR KVM cannot read raises."""
        buf = st.msrs_type(len(indices))()
        buf.nmsrs = len(indices)
        for entry, index in zip(buf.entries, indices, strict=True):
            entry.index = index
        done = self._ioctl(io.KVM_GET_MSRS, buf)
        if done != len(indices):
            raise KvmError("KVM_GET_MSRS", errno.EINVAL,
                           f"MSR {indices[done]:#x} cannot be read")
        return {e.index: e.data for e in buf.entries}

    def set_msrs(self, values: dict[int, int]) -> None:
        """``KVM_SET_MSRS``; an MSR KVM refuses raises, naming it."""
        indices = list(values)
        buf = st.msrs_type(len(indices))()
        buf.nmsrs = len(indices)
        for entry, index in zip(buf.entries, indices, strict=True):
            entry.index = index
            entry.data = values[index]
        done = self._ioctl(io.KVM_SET_MSRS, buf)
        if done != len(indices):
            raise KvmError("KVM_SET_MSRS", errno.EINVAL,
                           f"MSR {indices[done]:#x} = {values[indices[done]]:#x} was refused")

    def close(self) -> None:
        run, self._run = getattr(self, "_run", None), None
        del run  # drop the ctypes export so the mapping can be closed
        mm, self._mmap = getattr(self, "_mmap", None), None
        if mm is not None:
            # An io/mmio view still held keeps the mapping alive (BufferError): it is
            # then unmapped when the last view goes, never left dangling.
            with contextlib.suppress(BufferError):
                mm.close()
        self._close_fd()


__all__ = [
    "FailEntry",
    "InternalError",
    "IoExit",
    "KvmError",
    "KvmSystem",
    "KvmVCpu",
    "KvmVm",
    "MmioExit",
    "SystemEvent",
    "io_exit_key",
    "kvm_ioctl",
]

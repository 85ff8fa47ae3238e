"""The Supervisor Binary Interface (SBI v2.0) that pyaxvisor, as M-mode, offers guests.

An ``ecall`` from S-mode is an SBI call: extension ID in a7, function ID in a6,
arguments in a0..a5. Calls return ``(error, value)`` in a0 and a1 (SBI v0.2+) or a
single value in a0 with every other register preserved (the legacy extensions,
EIDs 0x00..0x0F). :meth:`Sbi.call` performs one call and returns an
:class:`SbiResult`: what to put in a0/a1 and, when the VM must act, the exit.

Implemented:

==========  ===========  ==========================================================
EID         extension    functions
==========  ===========  ==========================================================
0x00-0x08   legacy       set_timer, console_putchar, console_getchar, clear_ipi,
                         send_ipi, remote_fence_i, remote_sfence_vma(_asid),
                         shutdown (hart masks are pointers: read through the
                         guest's translation; NULL means every hart)
0x10        BASE         spec version 2.0, implementation ID :data:`IMPL_ID`,
                         implementation version (pyaxvisor's, major << 16 | minor),
                         probe_extension, mvendorid/marchid/mimpid as the CPU reports
0x54494D45  TIME         set_timer: compare value stored, STIP cleared, platform told
0x735049    IPI          send_ipi -> ``SendIPI(target_cpu=hart_mask_base,
                         target_cpu_aux=hart_mask, send_to_all=base == -1)``
0x52464E43  RFENCE       remote_fence_i, remote_sfence_vma(_asid): this hart flushes if
                         named, the platform flushes the others; the hypervisor
                         fences (FIDs 3..6) are not supported (no H extension)
0x48534D    HSM          hart_start -> ``CpuUp`` (the VM sets the result),
                         hart_stop -> ``CpuDown``, hart_get_status from the platform,
                         hart_suspend: see below
0x53525354  SRST         shutdown -> ``SystemDown(reset=False)``, cold and warm reboot
                         -> ``SystemDown(reset=True)``
0x4442434E  DBCN         write, read, write_byte, through guest physical memory
0x504D55    PMU          every function NOT_SUPPORTED; probe_extension answers 0
0x0A505958  pyaxvisor    hypercalls: ``Hypercall(nr=fid, args=(a0..a5))``
==========  ===========  ==========================================================

Anything else (other EIDs, unknown FIDs) answers SBI_ERR_NOT_SUPPORTED and is
counted in :attr:`Sbi.unknown`; nothing raises for guest behaviour.

Choices:

* Implementation ID :data:`IMPL_ID` = 0x50594158 ("PYAX"): not in the SBI
  registry (which hands out small numbers: 0 BBL, 1 OpenSBI, ... 11 bhyve), chosen
  far from it so it cannot collide with a future registration.
* Hypercall extension :data:`HYPERCALL_EID` = 0x0A505958 ("\\x0aPYX"), in the range
  the specification reserves for firmware-specific extensions (0x0A000000..0x0AFFFFFF).
* hart_suspend: the default retentive type (0) is a ``Halt`` (a0 = SUCCESS, the
  call returns when an interrupt is pending, like ``wfi``). The default
  non-retentive type (0x80000000) is also implemented: the hart halts and, when it
  runs again, starts at ``resume_addr`` in S-mode with satp = 0, sstatus.SIE = 0,
  a0 = hart ID, a1 = ``opaque`` (the other registers keep their values, which the
  specification leaves undefined). Platform-specific types are not implemented
  (INVALID_PARAM), as are reserved ones.
* DBCN buffers are guest-physical and must lie in guest RAM the guest may read
  (write) there, else SBI_ERR_INVALID_PARAM: the hypervisor never touches memory
  that is not the guest's. One call moves at most :data:`DBCN_CHUNK` bytes (the
  specification allows partial writes and reads).
* A legacy hart-mask pointer that does not translate answers -3 (INVALID_PARAM)
  instead of redirecting a fault to the guest.
* Hart masks (IPI, RFENCE) must name harts the platform knows, else INVALID_PARAM.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import pyaxvisor
from pyaxvisor.errors import AxError
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.vcpu.exit import (
    CpuDown,
    CpuUp,
    ExitReason,
    Halt,
    Hypercall,
    SendIPI,
    SystemDown,
)

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
ALL_HARTS = U64  # hart_mask_base = -1

SPEC_VERSION = 2 << 24  # v2.0: major in bits 30:24, minor in 23:0
IMPL_ID = 0x5059_4158
HYPERCALL_EID = 0x0A50_5958
DBCN_CHUNK = 4096


def _impl_version() -> int:
    major, minor = (int(p) for p in pyaxvisor.__version__.split(".")[:2])
    return major << 16 | minor


IMPL_VERSION = _impl_version()


class SbiError(enum.IntEnum):
    SUCCESS = 0
    FAILED = -1
    NOT_SUPPORTED = -2
    INVALID_PARAM = -3
    DENIED = -4
    INVALID_ADDRESS = -5
    ALREADY_AVAILABLE = -6
    ALREADY_STARTED = -7
    ALREADY_STOPPED = -8


class Eid(enum.IntEnum):
    LEGACY_SET_TIMER = 0x00
    LEGACY_PUTCHAR = 0x01
    LEGACY_GETCHAR = 0x02
    LEGACY_CLEAR_IPI = 0x03
    LEGACY_SEND_IPI = 0x04
    LEGACY_REMOTE_FENCE_I = 0x05
    LEGACY_REMOTE_SFENCE_VMA = 0x06
    LEGACY_REMOTE_SFENCE_VMA_ASID = 0x07
    LEGACY_SHUTDOWN = 0x08
    BASE = 0x10
    TIME = 0x5449_4D45
    IPI = 0x0073_5049
    RFENCE = 0x5246_4E43
    HSM = 0x0048_534D
    SRST = 0x5352_5354
    PMU = 0x0050_4D55
    DBCN = 0x4442_434E
    HYPERCALL = HYPERCALL_EID


#: What probe_extension reports as available.
AVAILABLE = frozenset(Eid) - {Eid.PMU}
LEGACY_MAX = 0x0F


class HartState(enum.IntEnum):
    """SBI HSM states (hart_get_status values)."""

    STARTED = 0
    STOPPED = 1
    START_PENDING = 2
    STOP_PENDING = 3
    SUSPENDED = 4
    SUSPEND_PENDING = 5
    RESUME_PENDING = 6


SUSPEND_RETENTIVE = 0x0000_0000
SUSPEND_NON_RETENTIVE = 0x8000_0000
RESET_SHUTDOWN, RESET_COLD, RESET_WARM = 0, 1, 2


class SbiPlatform(Protocol):
    """What SBI needs from the machine. The calls run on the calling hart's thread,
    inside its CPU (with the VM's execution lock held): they must be quick, must not
    block and must not wait for another hart to run."""

    def console_write(self, data: bytes) -> None:
        """Write bytes to the debug console."""
        ...

    def console_read(self) -> int | None:
        """One byte from the debug console, or ``None`` when none is waiting."""
        ...

    def hart_status(self, hart_id: int) -> int | None:
        """The :class:`HartState` of ``hart_id``, or ``None`` if there is no such hart."""
        ...

    def timer_written(self, hart_id: int) -> None:
        """The hart's timer compare value changed: ask its ``timer_deadline()`` and
        raise its timer line (``set_timer_line(True)``, and wake it if halted) once
        ``timer_due(now)`` holds."""
        ...

    def remote_fence(self, hart_mask: int, hart_mask_base: int) -> None:
        """Make the named harts other than the caller drop cached translations
        (``request_tlb_flush()``); ``hart_mask_base`` -1 names every hart."""
        ...


class LoneHart:
    """The platform of a VM with one hart and nothing else: the console goes nowhere
    and has no input, the hart itself is STARTED, no other hart exists, the timer is
    not watched, remote fences have nobody to reach."""

    def __init__(self, hart_id: int) -> None:
        self.hart_id = hart_id

    def console_write(self, data: bytes) -> None:
        return

    def console_read(self) -> int | None:
        return None

    def hart_status(self, hart_id: int) -> int | None:
        return HartState.STARTED if hart_id == self.hart_id else None

    def timer_written(self, hart_id: int) -> None:
        return

    def remote_fence(self, hart_mask: int, hart_mask_base: int) -> None:
        return


class GuestAccessError(AxError):
    """A guest buffer an SBI call names is not guest RAM the guest may use that way."""


class SbiHart(Protocol):
    """What SBI needs from the calling hart (the vCPU)."""

    hart_id: int

    def set_timer(self, stime: int) -> None:
        """Store the timer compare value, clear STIP, tell the platform."""
        ...

    def clear_software_pending(self) -> bool:
        """Clear SSIP; whether it was set."""
        ...

    def flush_local(self) -> None:
        """Drop this hart's cached translations (TLB and translated code)."""
        ...

    def fence_all(self, code: bool) -> bool:
        """Make every hart of the VM, this one included, drop its cached address
        translations (``code``: and its translated code) before it runs again, waiting
        for the running ones; False when the hart cannot (the platform's
        ``remote_fence`` then reaches the others)."""
        ...

    def check_guest(self, gpa: int, size: int, write: bool) -> None:
        """Raise :class:`GuestAccessError` unless ``[gpa, gpa + size)`` is guest RAM
        the guest may read (``write``: write)."""
        ...

    def read_guest(self, gpa: int, size: int) -> bytes:
        """Guest RAM the guest may read; raises :class:`GuestAccessError` otherwise."""
        ...

    def write_guest(self, gpa: int, data: bytes) -> None:
        """Guest RAM the guest may write; raises :class:`GuestAccessError` otherwise."""
        ...

    def read_virtual_ulong(self, va: int) -> int | None:
        """An unsigned long at S-mode virtual address ``va``, or ``None``."""
        ...

    def is_entry(self, gpa: int) -> bool:
        """Whether the guest may execute at guest-physical ``gpa`` (start addresses)."""
        ...

    def machine_ids(self) -> tuple[int, int, int]:
        """(mvendorid, marchid, mimpid) as the CPU reports them."""
        ...


class SbiResult(NamedTuple):
    """What one SBI call gives the guest: ``error`` for a0 (the value for legacy
    calls), ``value`` for a1 (``None``: a1 keeps what it had: legacy calls), the
    ``exit`` for the VM (``None``: the call is complete), or ``restart`` =
    ``(entry, opaque)`` when the hart must start again there instead of returning
    (non-retentive suspend)."""

    error: int
    value: int | None = 0
    exit: ExitReason | None = None
    restart: tuple[int, int] | None = None

    @property
    def legacy(self) -> bool:
        return self.value is None


def _ok(value: int = 0, exit: ExitReason | None = None) -> SbiResult:
    return SbiResult(SbiError.SUCCESS, value & U64, exit)


def _err(error: SbiError) -> SbiResult:
    return SbiResult(error, 0)


def _legacy(value: int, exit: ExitReason | None = None) -> SbiResult:
    return SbiResult(value & U64, None, exit)


_NOT_SUPPORTED = _err(SbiError.NOT_SUPPORTED)
_INVALID_PARAM = _err(SbiError.INVALID_PARAM)


_SPEC_VERSION = _ok(SPEC_VERSION)
_IMPL_ID = _ok(IMPL_ID)
_IMPL_VERSION = _ok(IMPL_VERSION)
_AVAILABLE, _UNAVAILABLE = _ok(1), _ok(0)


class Sbi:
    """The SBI implementation of one hart. ``unknown`` counts the calls answered
    NOT_SUPPORTED because the extension or function does not exist here (PMU calls are
    known and not counted)."""

    def __init__(self, hart: SbiHart, platform: SbiPlatform) -> None:
        self.hart = hart
        self.platform = platform
        self.unknown: Counter[tuple[int, int]] = Counter()
        self._handlers = {
            Eid.BASE: self._base, Eid.TIME: self._time, Eid.IPI: self._ipi,
            Eid.RFENCE: self._rfence, Eid.HSM: self._hsm, Eid.SRST: self._srst,
            Eid.DBCN: self._dbcn, Eid.PMU: lambda _f, _a: _NOT_SUPPORTED,
            Eid.HYPERCALL: self._hypercall,
        }

    def call(self, regs: Sequence[int]) -> SbiResult:
        """Perform the call in ``regs`` = (a0, a1, ..., a7). The handlers take the FID
        and ``regs`` (their arguments are ``regs[0..5]``)."""
        eid = regs[7]
        if eid <= LEGACY_MAX:
            return self._legacy_call(eid, regs)
        handler = self._handlers.get(eid)  # type: ignore[call-overload]
        result = handler(regs[6], regs) if handler is not None else None
        if result is None:
            self.unknown[(eid, regs[6])] += 1
            return _NOT_SUPPORTED
        return result

    # -- BASE -----------------------------------------------------------------------------
    def _base(self, fid: int, a: Sequence[int]) -> SbiResult | None:
        match fid:
            case 0:
                return _SPEC_VERSION
            case 1:
                return _IMPL_ID
            case 2:
                return _IMPL_VERSION
            case 3:
                return _AVAILABLE if a[0] in AVAILABLE else _UNAVAILABLE
            case 4 | 5 | 6:
                return _ok(self.hart.machine_ids()[fid - 4])
        return None

    # -- TIME, IPI, RFENCE ------------------------------------------------------------------
    def _time(self, fid: int, a: Sequence[int]) -> SbiResult | None:
        if fid != 0:
            return None
        self.hart.set_timer(a[0])
        return _ok()

    def _harts_valid(self, mask: int, base: int) -> bool:
        if base == ALL_HARTS:
            return True
        harts = (base + bit for bit in range(64) if mask >> bit & 1)
        return all(self.platform.hart_status(h) is not None for h in harts)

    def _names_me(self, mask: int, base: int) -> bool:
        offset = self.hart.hart_id - base
        return base == ALL_HARTS or (0 <= offset < 64 and bool(mask >> offset & 1))

    def _ipi(self, fid: int, a: Sequence[int]) -> SbiResult | None:
        if fid != 0:
            return None
        mask, base = a[0], a[1]
        if not self._harts_valid(mask, base):
            return _INVALID_PARAM
        return _ok(exit=SendIPI(target_cpu=base, target_cpu_aux=mask,
                                send_to_all=base == ALL_HARTS, send_to_self=False, vector=0))

    def _fence(self, mask: int, base: int, code: bool) -> None:
        # A hart that reaches all harts itself (CPUs running at the same time) fences
        # them all, the named ones among them: an extra flush is harmless.
        if self.hart.fence_all(code):
            return
        if self._names_me(mask, base):
            self.hart.flush_local()
        self.platform.remote_fence(mask, base)

    def _rfence(self, fid: int, a: Sequence[int]) -> SbiResult | None:
        if fid > 2:
            return None  # HFENCE.* need the H extension, which guests do not have
        if not self._harts_valid(a[0], a[1]):
            return _INVALID_PARAM
        self._fence(a[0], a[1], code=fid == 0)
        return _ok()

    # -- HSM --------------------------------------------------------------------------------
    def _hsm(self, fid: int, a: Sequence[int]) -> SbiResult | None:
        match fid:
            case 0:  # hart_start(hartid, start_addr, opaque)
                if self.platform.hart_status(a[0]) is None:
                    return _INVALID_PARAM
                if not self.hart.is_entry(a[1]):
                    return _err(SbiError.INVALID_ADDRESS)
                return _ok(exit=CpuUp(target_cpu=a[0], entry_point=GuestPhysAddr(a[1]),
                                      arg=a[2]))
            case 1:  # hart_stop()
                return _ok(exit=CpuDown())
            case 2:  # hart_get_status(hartid)
                state = self.platform.hart_status(a[0])
                return _INVALID_PARAM if state is None else _ok(state)
            case 3:  # hart_suspend(suspend_type, resume_addr, opaque)
                return self._suspend(a[0], a[1], a[2])
        return None

    def _suspend(self, kind: int, resume_addr: int, opaque: int) -> SbiResult:
        if kind == SUSPEND_RETENTIVE:
            return _ok(exit=Halt())
        if kind == SUSPEND_NON_RETENTIVE:
            if not self.hart.is_entry(resume_addr):
                return _err(SbiError.INVALID_ADDRESS)
            return SbiResult(SbiError.SUCCESS, 0, Halt(), (resume_addr, opaque))
        return _INVALID_PARAM  # reserved, or platform-specific and not implemented

    # -- SRST -------------------------------------------------------------------------------
    def _srst(self, fid: int, a: Sequence[int]) -> SbiResult | None:
        if fid != 0:
            return None
        kind, reason = a[0], a[1]
        if kind > U32 or kind not in (RESET_SHUTDOWN, RESET_COLD, RESET_WARM) \
                or not (reason <= 1 or 0xE000_0000 <= reason <= U32):
            return _INVALID_PARAM
        return _ok(exit=SystemDown(reset=kind != RESET_SHUTDOWN))

    # -- DBCN -------------------------------------------------------------------------------
    def _dbcn(self, fid: int, a: Sequence[int]) -> SbiResult | None:
        match fid:
            case 0 | 1:
                count, base, high = min(a[0], DBCN_CHUNK), a[1], a[2]
                if high != 0:
                    return _INVALID_PARAM  # beyond 64-bit guest-physical addresses
                try:
                    if fid == 0:
                        self.platform.console_write(self.hart.read_guest(base, count))
                        return _ok(count)
                    self.hart.check_guest(base, count, write=True)  # before consuming input
                    data = bytearray()
                    while len(data) < count and (byte := self.platform.console_read()) \
                            is not None:
                        data.append(byte & 0xFF)
                    self.hart.write_guest(base, bytes(data))
                    return _ok(len(data))
                except GuestAccessError:
                    return _INVALID_PARAM
            case 2:
                self.platform.console_write(bytes([a[0] & 0xFF]))
                return _ok()
        return None

    # -- pyaxvisor hypercalls -----------------------------------------------------------------
    def _hypercall(self, fid: int, a: Sequence[int]) -> SbiResult:
        return _ok(exit=Hypercall(nr=fid, args=tuple(a[:6])))  # type: ignore[arg-type]

    # -- legacy (v0.1) ----------------------------------------------------------------------
    def _legacy_mask(self, pointer: int) -> tuple[int, int] | None:
        """(hart_mask, hart_mask_base) of a legacy mask pointer (NULL: every hart)."""
        if pointer == 0:
            return 0, ALL_HARTS
        mask = self.hart.read_virtual_ulong(pointer)
        return None if mask is None else (mask, 0)

    def _legacy_call(self, eid: int, a: Sequence[int]) -> SbiResult:
        match eid:
            case Eid.LEGACY_SET_TIMER:
                self.hart.set_timer(a[0])
                return _legacy(0)
            case Eid.LEGACY_PUTCHAR:
                self.platform.console_write(bytes([a[0] & 0xFF]))
                return _legacy(0)
            case Eid.LEGACY_GETCHAR:
                byte = self.platform.console_read()
                return _legacy(-1 if byte is None else byte & 0xFF)
            case Eid.LEGACY_CLEAR_IPI:
                return _legacy(1 if self.hart.clear_software_pending() else 0)
            case Eid.LEGACY_SEND_IPI | Eid.LEGACY_REMOTE_FENCE_I | \
                    Eid.LEGACY_REMOTE_SFENCE_VMA | Eid.LEGACY_REMOTE_SFENCE_VMA_ASID:
                hmask = self._legacy_mask(a[0])
                if hmask is None or not self._harts_valid(*hmask):
                    return _legacy(SbiError.INVALID_PARAM)
                mask, base = hmask
                if eid == Eid.LEGACY_SEND_IPI:
                    return _legacy(0, SendIPI(target_cpu=base, target_cpu_aux=mask,
                                              send_to_all=base == ALL_HARTS,
                                              send_to_self=False, vector=0))
                self._fence(mask, base, code=eid == Eid.LEGACY_REMOTE_FENCE_I)
                return _legacy(0)
            case Eid.LEGACY_SHUTDOWN:
                return _legacy(0, SystemDown(reset=False))
        self.unknown[(eid, 0)] += 1
        return _legacy(SbiError.NOT_SUPPORTED)

"""The guest register frame saved on a trap to EL2 (arm_vcpu ``TrapFrame``).

``Aarch64ContextFrame`` holds what the exception handler reads and edits: the
general-purpose registers x0..x30, SP_EL0, ELR_EL2 (the guest PC the trap
returns to) and SPSR_EL2 (the guest PSTATE). SP_EL1 and the other EL1 system
registers are not part of the trap frame; they stay in the vCPU's system
register state.

Register numbers follow the instruction encoding, as ESR_EL2's Rt and SRT fields
do: 0..30 are x0..x30 and 31 is the zero register XZR in a data-processing or
load/store *data* operand, so :meth:`~Aarch64ContextFrame.gpr` reads 31 as 0
and :meth:`~Aarch64ContextFrame.set_gpr` discards writes to it. (SP is never a
data operand of a trapped access, so index 31 never means SP here.)

All values are unsigned 64-bit; setters mask, so ``set_gpr(0, -1)`` stores
``0xffff_ffff_ffff_ffff`` (two's complement), which is what a PSCI error code
returned in x0 must look like.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyaxvisor.errors import InvalidInput

U64 = (1 << 64) - 1
NUM_GPRS = 31
"""x0..x30."""
XZR = 31
"""The register number that reads as zero (and ignores writes) in Rt/SRT."""

_SPSR_MODES = {
    0b0000: "EL0t",
    0b0100: "EL1t",
    0b0101: "EL1h",
    0b1000: "EL2t",
    0b1001: "EL2h",
}


def _as_u64(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{name} must be an int, got {value!r}")
    return value & U64


def _check_index(index: object) -> int:
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= XZR:
        raise InvalidInput(f"AArch64 register number must be 0..31, got {index!r}")
    return index


def spsr_mode_name(spsr: int) -> str:
    """Name the exception level and stack pointer encoded in SPSR.M, e.g. ``EL1h``."""
    if spsr & 0x10:
        return f"AArch32 mode {spsr & 0x1F:#07b}"
    return _SPSR_MODES.get(spsr & 0xF, f"reserved M={spsr & 0xF:#06b}")


class Aarch64ContextFrame:
    """x0..x30, SP_EL0, ELR and SPSR of a trapped guest vCPU.

    ``x`` is the plain list of the 31 registers; prefer :meth:`gpr` and
    :meth:`set_gpr`, which apply the XZR convention and mask to 64 bits.
    """

    __slots__ = ("_elr", "_sp_el0", "_spsr", "x")

    def __init__(
        self,
        x: Iterable[int] | None = None,
        *,
        sp_el0: int = 0,
        elr: int = 0,
        spsr: int = 0,
    ) -> None:
        regs = [0] * NUM_GPRS if x is None else list(x)
        if len(regs) != NUM_GPRS:
            raise InvalidInput(f"a trap frame has {NUM_GPRS} registers x0..x30, got {len(regs)}")
        self.x: list[int] = [_as_u64(f"x{i}", v) for i, v in enumerate(regs)]
        self._sp_el0 = _as_u64("sp_el0", sp_el0)
        self._elr = _as_u64("elr", elr)
        self._spsr = _as_u64("spsr", spsr)

    # -- special registers -------------------------------------------------------

    @property
    def elr(self) -> int:
        """ELR_EL2: the guest PC the exception returns to."""
        return self._elr

    @elr.setter
    def elr(self, value: int) -> None:
        self._elr = _as_u64("elr", value)

    @property
    def sp_el0(self) -> int:
        return self._sp_el0

    @sp_el0.setter
    def sp_el0(self, value: int) -> None:
        self._sp_el0 = _as_u64("sp_el0", value)

    @property
    def spsr(self) -> int:
        """SPSR_EL2: the guest PSTATE restored by ERET."""
        return self._spsr

    @spsr.setter
    def spsr(self, value: int) -> None:
        self._spsr = _as_u64("spsr", value)

    def advance_pc(self, step: int) -> None:
        """Move ELR past the trapping instruction (``step`` bytes: 4, or 2 for T32)."""
        self._elr = (self._elr + step) & U64

    # -- general-purpose registers ----------------------------------------------

    def gpr(self, index: int) -> int:
        """Register ``index`` as numbered by Rt/SRT: 0..30 are x0..x30, 31 reads as 0."""
        if _check_index(index) == XZR:
            return 0
        return self.x[index]

    def set_gpr(self, index: int, value: int) -> None:
        """Write register ``index`` (masked to 64 bits); a write to 31 (XZR) is dropped."""
        value = _as_u64(f"value for register {index}", value)
        if _check_index(index) != XZR:
            self.x[index] = value

    # -- plumbing -------------------------------------------------------------------

    def copy(self) -> Aarch64ContextFrame:
        return Aarch64ContextFrame(self.x, sp_el0=self._sp_el0, elr=self._elr, spsr=self._spsr)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Aarch64ContextFrame):
            return NotImplemented
        return (self.x, self._sp_el0, self._elr, self._spsr) == (
            other.x, other._sp_el0, other._elr, other._spsr)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def dump(self) -> str:
        """A multi-line register dump for error messages and logs."""
        lines = []
        for row in range(0, NUM_GPRS, 4):
            cells = [f"x{i:<2} = {self.x[i]:#018x}" for i in range(row, min(row + 4, NUM_GPRS))]
            lines.append("  ".join(cells))
        daif = "".join(flag if self._spsr >> bit & 1 else "-"
                       for flag, bit in (("D", 9), ("A", 8), ("I", 7), ("F", 6)))
        lines.append(
            f"elr = {self._elr:#018x}  sp_el0 = {self._sp_el0:#018x}  "
            f"spsr = {self._spsr:#010x} ({spsr_mode_name(self._spsr)}, DAIF={daif})"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        regs = ", ".join(f"x{i}={v:#x}" for i, v in enumerate(self.x))
        return (f"Aarch64ContextFrame(elr={self._elr:#x}, spsr={self._spsr:#x} "
                f"({spsr_mode_name(self._spsr)}), sp_el0={self._sp_el0:#x}, {regs})")


TrapFrame = Aarch64ContextFrame

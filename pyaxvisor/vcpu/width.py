"""Access widths and the small value types exits carry (axvcpu / axaddrspace).

``AccessWidth`` is the size of one guest memory, port or register access:
1, 2, 4 or 8 bytes. ``Port`` is an x86 I/O port (16 bits). ``SysRegAddr`` is an
architecture's system-register address: on AArch64 the ISS of an MSR/MRS trap
with Rt and the direction bit masked out (Op0 21:20, Op2 19:17, Op1 16:14,
CRn 13:10, CRm 4:1, left in place: ``ISS & 0x3FFC1E``, as arm_vcpu does), on
RISC-V a CSR number, on x86 an MSR index.
"""

from __future__ import annotations

import enum

from pyaxvisor.errors import InvalidInput


class AccessWidth(enum.IntEnum):
    Byte = 1
    Word = 2
    Dword = 4
    Qword = 8

    @classmethod
    def from_size(cls, size: int) -> AccessWidth:
        try:
            return cls(size)
        except ValueError:
            raise InvalidInput(f"access width must be 1, 2, 4 or 8 bytes, got {size}") from None

    @property
    def size(self) -> int:
        return int(self)

    @property
    def bits(self) -> int:
        return int(self) * 8

    @property
    def bits_range(self) -> range:
        """The bit positions the access covers, e.g. ``range(0, 16)`` for Word."""
        return range(0, self.bits)

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    def sign_extend(self, value: int, to: AccessWidth) -> int:
        """Sign-extend ``value`` (of this width) to ``to``'s width, as a raw unsigned value."""
        value &= self.mask
        if value >> (self.bits - 1):
            value -= 1 << self.bits
        return value & to.mask


class Port(int):
    """An x86 I/O port number, 0..0xffff."""

    def __new__(cls, value: int) -> Port:
        if not 0 <= int(value) <= 0xFFFF:
            raise InvalidInput(f"I/O port {int(value):#x} is outside 0..0xffff")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"Port({int(self):#x})"


class SysRegAddr(int):
    """A system-register address in its architecture's native encoding."""

    def __new__(cls, value: int) -> SysRegAddr:
        if not 0 <= int(value) < (1 << 32):
            raise InvalidInput(f"system register address {int(value):#x} is outside 32 bits")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"SysRegAddr({int(self):#x})"

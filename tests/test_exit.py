"""Exit reasons: immutable, validated, and the read-value extension rules."""

import dataclasses

import pytest

from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.flags import AccessFlags
from pyaxvisor.vcpu import (
    AccessWidth,
    CpuDown,
    CpuUp,
    ExternalInterrupt,
    FailEntry,
    Halt,
    Hypercall,
    IoRead,
    IoWrite,
    MmioRead,
    MmioWrite,
    NestedPageFault,
    Nothing,
    Port,
    SendIPI,
    SysRegAddr,
    SysRegRead,
    SysRegWrite,
    SystemDown,
    read_register_value,
)

W = AccessWidth
GPA = GuestPhysAddr(0x0900_0000)


def test_every_exit_reason_is_frozen():
    exits = [
        Hypercall(0x8400_0000, (1, 2, 3, 4, 5, 6)),
        MmioRead(GPA, W.Dword, 1, W.Qword, False), MmioWrite(GPA, W.Byte, 0x41),
        SysRegRead(0x30_0000, 2), SysRegWrite(0x30_0000, 5), IoRead(0x3F8, W.Byte),
        IoWrite(0x3F8, W.Word, 0xFFFF), ExternalInterrupt(32),
        NestedPageFault(GPA, AccessFlags.WRITE), Halt(),
        CpuUp(1, GuestPhysAddr(0x4008_0000), 0), CpuDown(0), SystemDown(), Nothing(),
        FailEntry(0x80000021), SendIPI(1, 0, False, False, 3),
    ]
    assert len({type(e) for e in exits}) == 16
    for e in exits:
        field = dataclasses.fields(e)[0].name if dataclasses.fields(e) else None
        if field:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(e, field, 0)


def test_typed_fields_are_normalised():
    r = IoRead(0x3F8, W.Byte)
    assert isinstance(r.port, Port) and r.port == 0x3F8
    assert isinstance(SysRegRead(0x1234, 0).addr, SysRegAddr)
    assert Hypercall(1, [0] * 6).args == (0,) * 6


@pytest.mark.parametrize("build", [
    lambda: Hypercall(0, (1, 2, 3)),
    lambda: Hypercall(-1, (0,) * 6),
    lambda: MmioWrite(GPA, W.Byte, 0x100),
    lambda: MmioWrite(0x900_0000, W.Byte, 1),
    lambda: MmioRead(GPA, W.Qword, 0, W.Dword, False),
    lambda: IoWrite(0x10000, W.Byte, 0),
    lambda: IoRead(0x60, W.Qword),
    lambda: SysRegWrite(1, 1 << 64),
    lambda: CpuUp(1, 0x1000, 0),
    lambda: NestedPageFault(5, AccessFlags.READ),
])
def test_malformed_exits_are_rejected(build):
    with pytest.raises(InvalidInput):
        build()


@pytest.mark.parametrize(("exit_reason", "value", "expected"), [
    (MmioRead(GPA, W.Byte, 0, W.Qword, True), 0x7F, 0x7F),
    (MmioRead(GPA, W.Byte, 0, W.Qword, True), 0xFF, 0xFFFF_FFFF_FFFF_FFFF),
    (MmioRead(GPA, W.Word, 0, W.Dword, True), 0x8000, 0xFFFF_8000),
    (MmioRead(GPA, W.Dword, 0, W.Qword, True), 0x8000_0000, 0xFFFF_FFFF_8000_0000),
    (MmioRead(GPA, W.Dword, 0, W.Qword, False), 0x1_8000_0000, 0x8000_0000),
    (IoRead(0x60, W.Byte), 0x1FF, 0xFF),
    (SysRegRead(0, 0), 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF),
])
def test_read_register_value(exit_reason, value, expected):
    assert read_register_value(exit_reason, value) == expected


def test_access_width():
    assert W.from_size(4) is W.Dword
    assert W.Word.bits_range == range(0, 16)
    assert W.Qword.mask == (1 << 64) - 1
    with pytest.raises(InvalidInput, match="1, 2, 4 or 8"):
        W.from_size(3)

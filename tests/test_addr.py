"""Address types must not mix silently."""

import pytest

from pyaxvisor.errors import AlignmentError, InvalidInput
from pyaxvisor.mm.addr import GuestPhysAddr, GuestVirtAddr, HostPhysAddr, HostVirtAddr


def test_arithmetic_keeps_the_kind():
    a = GuestPhysAddr(0x4000_0000)
    assert a + 0x10 == GuestPhysAddr(0x4000_0010)
    assert 0x10 + a == GuestPhysAddr(0x4000_0010)
    assert a - 0x10 == GuestPhysAddr(0x3FFF_FFF0)
    assert GuestPhysAddr(0x5000) - GuestPhysAddr(0x1000) == 0x4000
    assert type(a + 1) is GuestPhysAddr


@pytest.mark.parametrize(("a", "b"), [
    (GuestPhysAddr(1), HostPhysAddr(1)),
    (GuestPhysAddr(1), GuestVirtAddr(1)),
    (HostPhysAddr(1), HostVirtAddr(1)),
])
def test_kinds_do_not_mix(a, b):
    assert a != b
    with pytest.raises(TypeError):
        _ = a + b
    with pytest.raises(TypeError, match="subtract"):
        _ = a - b
    with pytest.raises(TypeError, match="compare"):
        _ = a < b
    with pytest.raises(TypeError, match="convert explicitly"):
        type(a)(b)
    assert type(a)(int(b)) == a


def test_values_are_checked_and_immutable():
    with pytest.raises(InvalidInput):
        GuestPhysAddr(-1)
    with pytest.raises(InvalidInput):
        GuestPhysAddr(1 << 64)
    with pytest.raises(TypeError):
        GuestPhysAddr("0x1000")  # type: ignore[arg-type]
    a = GuestPhysAddr(0x1000)
    with pytest.raises(AttributeError):
        a.value = 5  # type: ignore[misc]


def test_alignment_helpers_and_formatting():
    a = HostPhysAddr(0x20_1234)
    assert a.align_down(0x1000) == HostPhysAddr(0x20_1000)
    assert a.align_up(0x20_0000) == HostPhysAddr(0x40_0000)
    assert not a.is_aligned(0x1000)
    with pytest.raises(AlignmentError, match="0x201234 is not aligned to 0x1000"):
        a.check_aligned(0x1000)
    assert hex(a) == "0x201234"
    assert f"{a:x}" == "201234"
    assert repr(a) == "HostPhysAddr(0x201234)"
    assert {GuestPhysAddr(5), GuestPhysAddr(5), HostPhysAddr(5)} == {GuestPhysAddr(5),
                                                                      HostPhysAddr(5)}

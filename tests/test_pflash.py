"""CFI flash (Intel command set): query table, identifiers, program, erase, modes."""

import pytest

from pyaxvisor.devices.bus import BadAccess as BadMmioAccess
from pyaxvisor.devices.pflash import BLOCK_SIZE, CfiFlash
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth as W


def cfi(flash: CfiFlash, n: int) -> int:
    return flash.mmio_read(4 * n, W.Dword, 0)


def test_cfi_query_describes_a_64_mib_x32_flash():
    f = CfiFlash(64 << 20)
    f.mmio_write(0x55 * 4, W.Dword, 0x98, 0)
    assert bytes(cfi(f, i) for i in (0x10, 0x11, 0x12)) == b"QRY"
    assert (cfi(f, 0x13), cfi(f, 0x14)) == (0x01, 0x00)   # Intel/Sharp command set
    assert cfi(f, 0x27) == 26                              # 2^26 bytes
    assert (cfi(f, 0x28), cfi(f, 0x29)) == (0x03, 0x00)   # x32 interface
    assert cfi(f, 0x2C) == 1                               # one erase region
    assert (cfi(f, 0x2D), cfi(f, 0x2E)) == (0xFF, 0x00)   # 256 blocks (n - 1)
    assert (cfi(f, 0x2F), cfi(f, 0x30)) == (0x00, 0x04)   # 0x400 * 256 = 256 KiB
    assert bytes(cfi(f, i) for i in range(0x31, 0x34)) == b"PRI"
    f.mmio_write(0, W.Dword, 0xFF, 0)                      # back to read array
    assert f.mmio_read(0, W.Dword, 0) == 0xFFFF_FFFF


def test_identifier_and_status():
    f = CfiFlash(1 << 20)
    f.mmio_write(0, W.Dword, 0x90, 0)
    assert cfi(f, 0) == 0x89 and cfi(f, 1) == 0x18
    f.mmio_write(0, W.Dword, 0x70, 0)
    assert f.mmio_read(0, W.Dword, 0) == 0x80


def test_program_ands_bits_and_erase_restores_a_block():
    f = CfiFlash(1 << 20, contents=b"\x0f" * 8)
    f.mmio_write(0x4, W.Dword, 0x40, 0)
    f.mmio_write(0x4, W.Dword, 0x1234_56F8, 0)            # only 1 -> 0 transitions stick
    assert f.mmio_read(0, W.Dword, 0) == 0x80             # status mode, ready
    f.mmio_write(0, W.Dword, 0xFF, 0)
    assert f.mmio_read(0x4, W.Dword, 0) == 0x0204_0608
    f.mmio_write(BLOCK_SIZE + 8, W.Dword, 0x20, 0)
    f.mmio_write(BLOCK_SIZE + 8, W.Dword, 0xD0, 0)
    f.mmio_write(0, W.Dword, 0xFF, 0)
    assert f.mmio_read(0x4, W.Dword, 0) == 0x0204_0608    # other block untouched
    f.mmio_write(8, W.Dword, 0x20, 0)
    f.mmio_write(8, W.Dword, 0xD0, 0)
    f.mmio_write(0, W.Dword, 0xFF, 0)
    assert f.mmio_read(0x4, W.Dword, 0) == 0xFFFF_FFFF


def test_bad_command_sets_error_bits():
    f = CfiFlash(1 << 20)
    f.mmio_write(0, W.Dword, 0x20, 0)
    f.mmio_write(0, W.Dword, 0x33, 0)                      # erase not confirmed
    assert f.mmio_read(0, W.Dword, 0) == 0xB0


def test_rom_device_mode_callbacks_and_shared_storage():
    storage = memoryview(bytearray(1 << 20))
    modes = []
    f = CfiFlash(1 << 20, contents=b"env", storage=storage, on_array_mode=modes.append)
    assert bytes(storage[:4]) == b"env\xff"                # the guest sees this directly
    f.mmio_write(0x154, W.Dword, 0x98, 0)
    f.mmio_write(0x154, W.Dword, 0x98, 0)
    f.mmio_write(0, W.Dword, 0xFF, 0)
    assert modes == [False, True]


def test_bad_accesses_and_sizes():
    f = CfiFlash(1 << 20)
    with pytest.raises(BadMmioAccess):
        f.mmio_read(0, W.Qword, 0)
    with pytest.raises(BadMmioAccess):
        f.mmio_read(1 << 20, W.Byte, 0)
    with pytest.raises(InvalidInput):
        CfiFlash(3 << 18)

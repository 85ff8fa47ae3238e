"""The MP table (Intel MultiProcessor Specification 1.4), parsed back byte by byte
against hand-computed values at the spec's offsets."""

from __future__ import annotations

import struct

import pytest

from pyaxvisor.boards.x86_pc.mptable import build_mptable, mptable_size, write_mptable
from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal.vcpu_hal import HostHal
from pyaxvisor.mm.addr import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table

MPTABLE = 0x9FC00


def parse(data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """(floating pointer, config header, entries) with the structural checks done."""
    fp = data[:16]
    assert fp[:4] == b"_MP_"
    assert fp[8] == 1  # length in 16-byte units
    assert sum(fp) % 256 == 0
    phys = struct.unpack_from("<I", fp, 4)[0]
    table = data[phys - MPTABLE:]
    header = table[:44]
    assert header[:4] == b"PCMP"
    length = struct.unpack_from("<H", header, 4)[0]
    assert length == len(table)
    assert sum(table[:length]) % 256 == 0
    count = struct.unpack_from("<H", header, 34)[0]
    entries, pos = [], 44
    while pos < length:
        size = 20 if table[pos] == 0 else 8
        entries.append(table[pos:pos + size])
        pos += size
    assert pos == length and len(entries) == count
    return fp, header, entries


def test_floating_pointer_bytes():
    fp = build_mptable(1)[:16]
    # "_MP_", physptr 0x9FC10, length 1, revision 4, checksum, 5 feature bytes 0.
    # checksum: 0x5F+0x4D+0x50+0x5F + 0x10+0xFC+0x09 + 1 + 4 = 0x275 -> 0x100 - 0x75
    assert fp == bytes.fromhex("5f4d505f 10fc0900 01 04 8b 0000000000")
    assert build_mptable(7)[:16] == fp  # the pointer does not depend on the CPU count


def test_configuration_header_bytes_for_one_cpu():
    data = build_mptable(1)
    header = data[16:60]
    # 1 CPU: 44 + 20 + 8 (bus) + 8 (IOAPIC) + 15 * 8 (IRQs) + 2 * 8 (LINT) = 216 = 0xD8
    assert header[0:4] == b"PCMP"
    assert header[4:6] == bytes.fromhex("d800")
    assert header[6] == 4  # spec revision 1.4
    assert header[8:16] == b"PYAXVISR"
    assert header[16:28] == b"PYAXVISOR PC"
    assert header[28:34] == bytes(6)  # no OEM table
    assert header[34:36] == bytes.fromhex("1400")  # 20 entries
    assert header[36:40] == bytes.fromhex("0000e0fe")  # local APIC 0xFEE00000
    assert header[40:44] == bytes(4)  # no extended entries
    assert sum(data[16:]) % 256 == 0 and header[7] != 0
    assert len(data) == 16 + 216 == mptable_size(1)


def test_entries_field_by_field():
    _fp, _header, entries = parse(build_mptable(3))
    types = [e[0] for e in entries]
    assert types == [0, 0, 0, 1, 2] + [3] * 15 + [4, 4]
    cpu0, cpu1, cpu2 = entries[:3]
    # type 0, APIC id, APIC version 0x14, flags (EN | BP), signature 0x613, features FPU|APIC
    assert cpu0 == bytes.fromhex("00 00 14 03 13060000 01020000") + bytes(8)
    assert cpu1 == bytes.fromhex("00 01 14 01 13060000 01020000") + bytes(8)
    assert cpu2[:4] == bytes.fromhex("00 02 14 01")
    assert entries[3] == bytes.fromhex("01 00") + b"ISA   "
    # type 2, IOAPIC id 3 (= number of CPUs), version 0x11, enabled, 0xFEC00000
    assert entries[4] == bytes.fromhex("02 03 11 01 0000c0fe")
    irqs = entries[5:20]
    # type 3, INT, flags 0 (conforming), bus 0, IRQ i, IOAPIC 3, pin i
    assert irqs[0] == bytes.fromhex("03 00 0000 00 00 03 00")
    assert irqs[1] == bytes.fromhex("03 00 0000 00 01 03 01")
    assert irqs[2] == bytes.fromhex("03 00 0000 00 03 03 03")  # IRQ 2 (cascade) skipped
    # the virtio-mmio transports' lines: flags 0x0D, active high (01), level (11 << 2)
    assert irqs[4] == bytes.fromhex("03 00 0d00 00 05 03 05")
    assert [(e[5], e[7]) for e in irqs] == [(i, i) for i in range(16) if i != 2]
    level = {5, 6, 7, 8, 10, 11, 12, 13}
    assert [e[5] for e in irqs if e[2:4] == b"\x0d\0"] == sorted(level)
    assert all(e[2:4] == b"\0\0" for e in irqs if e[5] not in level)
    assert all(e[1] == 0 and e[4] == 0 and e[6] == 3 for e in irqs)
    # type 4: ExtINT on LINT0, NMI on LINT1, to every local APIC (0xFF)
    assert entries[20] == bytes.fromhex("04 03 0000 00 00 ff 00")
    assert entries[21] == bytes.fromhex("04 01 0000 00 00 ff 01")


@pytest.mark.parametrize("cpus", [1, 2, 40, 41, 128, 254])
def test_checksums_counts_and_fit(cpus):
    data = build_mptable(cpus)
    _fp, _header, entries = parse(data)
    assert len(entries) == cpus + 1 + 1 + 15 + 2
    assert [e[1] for e in entries[:cpus]] == list(range(cpus))
    assert [e[3] & 2 for e in entries[:cpus]] == [2] + [0] * (cpus - 1)  # one BSP
    assert entries[cpus + 1][1] == cpus  # the IOAPIC id follows the APIC ids
    assert len(data) == mptable_size(cpus) == 16 + 44 + 20 * cpus + 8 * 19
    # the floating pointer sits in the EBDA's first KiB; all of it stays below 1 MiB
    assert MPTABLE + len(data) <= 0x10_0000


@pytest.mark.parametrize("cpus", [0, -1, 255, 1000, True, 1.0, "2"])
def test_cpu_count_out_of_range(cpus):
    with pytest.raises(InvalidInput, match=r"1\.\.254 CPUs"):
        build_mptable(cpus)


def test_write_mptable_into_guest_ram():
    with HostHal(4 << 20) as hal:
        space = AddrSpace(hal, nested_page_table(hal, "x86_64"))
        space.map_ram(GuestPhysAddr(0), 2 << 20)
        assert write_mptable(space, 4) == MPTABLE
        data = build_mptable(4)
        assert space.read(GuestPhysAddr(MPTABLE), len(data)) == data
        assert space.read(GuestPhysAddr(MPTABLE - 16), 16) == bytes(16)
        space.destroy()


def test_write_mptable_needs_ram_there():
    with HostHal(4 << 20) as hal:
        space = AddrSpace(hal, nested_page_table(hal, "x86_64"))
        space.map_ram(GuestPhysAddr(0), 0x9F000)
        with pytest.raises(InvalidInput, match=r"MP table area \[0x9fc00, "):
            write_mptable(space, 1)
        space.destroy()

"""The gdb stub's pieces that need no guest: packet framing, the listening address
spellings, the AArch64 stage-1 walk a debugger's memory access goes through, and the
command line's gdb options."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pyaxvisor.arch.aarch64.stage1 import translate
from pyaxvisor.errors import InvalidInput, NotFound
from pyaxvisor.gdb.packets import (
    Ack,
    Interrupt,
    Oversized,
    Packet,
    PacketReader,
    checksum,
    escape,
    frame,
)
from pyaxvisor.gdb.server import GdbAddress, parse_address


def test_frames_round_trip_with_escapes_and_checksums():
    data = b"X1000,4:" + bytes([0x23, 0x24, 0x7D, 0x2A])
    wire = frame(escape(data))
    assert wire.startswith(b"$X1000,4:}\x03}\x04}]}\x0a#")
    events = PacketReader().feed(wire)
    assert events == [Packet(data, True)]


def test_reader_splits_acks_interrupts_and_packets_across_chunks():
    reader = PacketReader()
    wire = b"+" + frame(b"qSupported") + b"\x03" + b"-" + frame(b"g")
    events = []
    for i in range(len(wire)):  # one byte at a time
        events += reader.feed(wire[i:i + 1])
    assert events == [Ack(True), Packet(b"qSupported"), Interrupt(), Ack(False), Packet(b"g")]


def test_bad_checksum_is_reported_not_taken():
    assert PacketReader().feed(b"$g#00") == [Packet(b"g", False)]
    assert PacketReader().feed(b"$g#zz") == [Packet(b"g", False)]
    assert checksum(b"g") == 0x67


def test_oversized_packet_is_dropped_and_the_stream_goes_on():
    reader = PacketReader(max_packet=16)
    events = reader.feed(frame(b"M0,40:" + b"00" * 64) + frame(b"?"))
    assert events == [Oversized(6 + 128), Packet(b"?")]


@pytest.mark.parametrize("text, want", [
    ("tcp::1234", GdbAddress(port=1234)),
    ("tcp:localhost:4321", GdbAddress(port=4321)),
    ("tcp:127.0.0.1:99,server,nowait", GdbAddress(port=99)),
    ("unix:/tmp/x.sock,server", GdbAddress(path="/tmp/x.sock")),
    ("unix:/tmp/y", GdbAddress(path="/tmp/y")),
    ("2345", GdbAddress(port=2345)),
])
def test_qemu_spellings_of_the_gdb_address(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("text, message", [
    ("tcp:0.0.0.0:1234", "loopback only"),
    ("tcp:192.168.1.1:1234", "loopback only"),
    ("tcp::0", "port must be 1..65535"),
    ("tcp::70000", "port must be 1..65535"),
    ("tcp::http", "port must be 1..65535"),
    ("unix:", "needs a socket path"),
    ("unix:/tmp/s,reconnect=1", "unknown option 'reconnect=1'"),
    ("udp::1234", "expected tcp::PORT or unix:PATH"),
])
def test_bad_gdb_addresses_are_refused_by_name(text, message):
    with pytest.raises(InvalidInput, match="-gdb") as info:
        parse_address(text)
    assert message in str(info.value)


# -- the stage-1 walk -------------------------------------------------------------------------

def _tables(entries: dict[int, int]):
    def read_u64(gpa: int) -> int:
        return entries.get(gpa, 0)
    return read_u64


TCR_48 = 16 | (16 << 16) | (2 << 30)  # T0SZ = T1SZ = 16, TG0 4K, TG1 4K


def test_walk_4k_pages_through_ttbr1_and_a_2m_block_through_ttbr0():
    l0, l1, l2, l3 = 0x4000_0000, 0x4000_1000, 0x4000_2000, 0x4000_3000
    va = 0xFFFF_8000_0960_9A14
    i0, i1, i2, i3 = ((va >> s) & 0x1FF for s in (39, 30, 21, 12))
    mem = {l0 + i0 * 8: l1 | 3, l1 + i1 * 8: l2 | 3, l2 + i2 * 8: l3 | 3,
           l3 + i3 * 8: 0x4123_4000 | 0x403}
    # TTBR0: a 2 MiB block at level 2 for VA 0x20_0000 -> 0x4060_0000
    t0, t0l1, t0l2 = 0x4001_0000, 0x4001_1000, 0x4001_2000
    mem |= {t0: t0l1 | 3, t0l1: t0l2 | 3, t0l2 + 8: 0x4060_0000 | 0x401}
    read = _tables(mem)
    assert translate(va, 1, TCR_48, t0, l0 | (5 << 48), read) == 0x4123_4A14
    assert translate(0x20_1234, 1, TCR_48, t0, l0, read) == 0x4060_1234
    with pytest.raises(NotFound, match="0x401234"):
        translate(0x40_1234, 1, TCR_48, t0, l0, read)      # no entry at level 2
    with pytest.raises(NotFound, match="outside"):
        translate(0x0001_0000_0000_0000, 1, TCR_48, t0, l0, read)  # above 48 bits
    with pytest.raises(NotFound):
        translate(0x1000, 1, TCR_48 | (1 << 7), t0, l0, read)  # EPD0: no walks


def test_walk_with_the_mmu_off_is_the_identity():
    assert translate(0x4008_0000, 0, 0, 0, 0, _tables({})) == 0x4008_0000


def test_walk_64k_granule():
    tcr = 22 | (1 << 14)  # T0SZ 22 (42-bit), TG0 64K: two levels of 13 bits
    l2, l3 = 0x5000_0000, 0x5001_0000
    va = 0x123_4567_89AB
    mem = {l2 + ((va >> 29) & 0x1FFF) * 8: l3 | 3,
           l3 + ((va >> 16) & 0x1FFF) * 8: 0x7777_0000 | 3}
    assert translate(va, 1, tcr, l2, 0, _tables(mem)) == 0x7777_89AB


# -- the command line ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["-S"], "-S waits for gdb: it needs -s or -gdb"),
    (["-s", "-gdb", "tcp::1235"], "-s is -gdb tcp::1234: give one of them"),
    (["-gdb", "tcp:10.0.0.1:1234"], "the stub listens on loopback only"),
])
def test_cli_refuses_bad_gdb_options(args, message):
    proc = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", "run", *args],
                          capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr

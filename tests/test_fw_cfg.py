"""QEMU's fw_cfg device on the legacy x86 ports 0x510/0x511 (docs/specs/fw_cfg.rst;
port-width behaviour of QEMU's fw_cfg_io region in hw/nvram/fw_cfg.c)."""

import struct
import threading

import pytest

from pyaxvisor.boards.x86_pc.layout import FW_CFG_PORT, GiB
from pyaxvisor.devices import fw_cfg as fc
from pyaxvisor.devices.bus import BadAccess as BadPioAccess
from pyaxvisor.devices.bus import port_bus as PioBus
from pyaxvisor.devices.fw_cfg import FwCfg
from pyaxvisor.errors import AlreadyExists, InvalidInput, NotFound
from pyaxvisor.vcpu.width import AccessWidth

B, W, D, Q = AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword, AccessWidth.Qword
SEL, DATA = FW_CFG_PORT, FW_CFG_PORT + 1


def board(**kw):
    kw.setdefault("nb_cpus", 2)
    kw.setdefault("ram_size", 4 * GiB)
    dev = FwCfg(**kw)
    bus = PioBus()
    bus.attach(FW_CFG_PORT, FwCfg.PORT_COUNT, dev)
    return bus, dev


def select(bus, key):
    bus.write(SEL, W, key)


def read(bus, n):
    return bytes(bus.read(DATA, B) for _ in range(n))


def item(bus, key, n):
    select(bus, key)
    return read(bus, n)


def test_port_constants():
    assert (SEL, DATA, fc.PORT_COUNT) == (0x510, 0x511, 2)


def test_signature_byte_by_byte_and_id():
    bus, _ = board()
    select(bus, fc.SIGNATURE)
    assert [read(bus, 1) for _ in range(4)] == [b"Q", b"E", b"M", b"U"]
    assert read(bus, 3) == b"\0\0\0"  # past the end: zeros
    assert struct.unpack("<I", item(bus, fc.ID, 4)) == (1,)  # traditional, no DMA bit


def test_power_on_and_reset_select_the_signature():
    bus, dev = board()
    assert read(bus, 4) == b"QEMU"  # no selector write needed after power-on
    select(bus, fc.NB_CPUS)
    read(bus, 1)
    dev.reset()
    assert dev.selected == (fc.SIGNATURE, 0)
    assert read(bus, 2) == b"QE"


def test_standard_items():
    bus, _ = board(nb_cpus=3, ram_size=5 * GiB + 0x1234)
    assert struct.unpack("<H", item(bus, fc.NB_CPUS, 2)) == (3,)
    assert struct.unpack("<H", item(bus, fc.MAX_CPUS, 2)) == (3,)  # defaults to nb_cpus
    assert struct.unpack("<Q", item(bus, fc.RAM_SIZE, 8)) == (5 * GiB + 0x1234,)
    assert item(bus, fc.UUID, 17) == bytes(17)  # 16 zero bytes, then past the end
    assert struct.unpack("<H", item(bus, fc.NOGRAPHIC, 2)) == (1,)
    assert struct.unpack("<H", item(bus, fc.BOOT_MENU, 2)) == (0,)
    bus2, dev2 = board(nb_cpus=2, max_cpus=8)
    assert struct.unpack("<H", item(bus2, fc.MAX_CPUS, 2)) == (8,)
    assert dev2.item(fc.KERNEL_SIZE) is None and dev2.item(fc.INITRD_SIZE) is None


def test_kernel_and_initrd_sizes_when_given():
    bus, _ = board(kernel_size=0x12_3456, initrd_size=0x7_0000)
    assert struct.unpack("<I", item(bus, fc.KERNEL_SIZE, 4)) == (0x12_3456,)
    assert struct.unpack("<I", item(bus, fc.INITRD_SIZE, 4)) == (0x7_0000,)


def test_cmdline_size_and_data():
    line = "console=ttyS0 root=/dev/vda"
    bus, dev = board(cmdline=line)
    assert struct.unpack("<I", item(bus, fc.CMDLINE_SIZE, 4)) == (len(line) + 1,)
    assert item(bus, fc.CMDLINE_DATA, len(line) + 3) == line.encode() + b"\0\0\0"
    assert dev.item(fc.CMDLINE_DATA) == line.encode() + b"\0"


def test_empty_cmdline():
    bus, dev = board()
    assert struct.unpack("<I", item(bus, fc.CMDLINE_SIZE, 4)) == (0,)
    assert dev.item(fc.CMDLINE_DATA) == b""
    assert item(bus, fc.CMDLINE_DATA, 2) == b"\0\0"


def test_reselecting_resets_the_offset():
    bus, dev = board()
    select(bus, fc.SIGNATURE)
    assert read(bus, 2) == b"QE"
    assert dev.selected == (fc.SIGNATURE, 2)
    select(bus, fc.SIGNATURE)
    assert dev.selected == (fc.SIGNATURE, 0)
    assert read(bus, 4) == b"QEMU"


def test_reads_past_the_end_are_zero_and_do_not_advance():
    bus, dev = board(nb_cpus=0x1FF)
    select(bus, fc.NB_CPUS)
    assert read(bus, 2) == b"\xff\x01"
    assert read(bus, 5) == bytes(5)
    assert dev.selected == (fc.NB_CPUS, 2)


def test_unknown_keys_read_zero():
    bus, _ = board()
    for key in (fc.MACHINE_ID, 0x1F, fc.FILE_DIR, 0x20, 0x3FFF, 0x8000, 0xFFFF):
        assert item(bus, key, 4) == bytes(4), hex(key)


def test_write_channel_bit_is_ignored_when_selecting():
    bus, dev = board()
    assert item(bus, fc.WRITE_CHANNEL | fc.SIGNATURE, 4) == b"QEMU"
    assert dev.selected == (fc.SIGNATURE, 4)


def test_arch_local_items():
    bus, dev = board()
    dev.add_bytes(0x8003, b"\x01\x02\x03")  # e.g. QEMU's E820 table key
    assert item(bus, 0x8003, 4) == b"\x01\x02\x03\0"
    assert item(bus, 0x0003, 1) != b"\x01"  # RAM_SIZE is another table


def test_file_dir_layout_big_endian_sorted_by_name():
    bus, dev = board()
    dev.add_file("etc/zeta", b"z" * 5)
    dev.add_file("etc/alpha", b"ALPHA-DATA")
    dev.add_file("bootorder", b"/pci@i0cf8/*@1\0")
    assert (dev.file_key("bootorder"), dev.file_key("etc/alpha"),
            dev.file_key("etc/zeta")) == (0x20, 0x21, 0x22)
    select(bus, fc.FILE_DIR)
    assert read(bus, 4) == b"\0\0\0\x03"  # big-endian count
    entries = [struct.unpack(">IHH56s", read(bus, 64)) for _ in range(3)]
    assert [(size, sel, res, name.rstrip(b"\0")) for size, sel, res, name in entries] == [
        (15, 0x20, 0, b"bootorder"), (10, 0x21, 0, b"etc/alpha"), (5, 0x22, 0, b"etc/zeta")]
    assert all(len(e[3]) == 56 for e in entries)
    # the rest of QEMU's fixed-size directory is zero
    assert len(dev.item(fc.FILE_DIR)) == 4 + 64 * fc.FILE_SLOTS
    assert read(bus, 64) == bytes(64)
    assert item(bus, 0x21, 11) == b"ALPHA-DATA\0"
    assert item(bus, 0x22, 5) == b"zzzzz"
    assert item(bus, 0x23, 2) == b"\0\0"  # no fourth file


def test_add_helpers_are_little_endian():
    bus, dev = board()
    dev.add_u16(0x8010, 0x1234)
    dev.add_u32(0x8011, 0x1234_5678)
    dev.add_u64(0x8012, 0x0102_0304_0506_0708)
    dev.add_string(0x8013, "hi")
    assert item(bus, 0x8010, 2) == b"\x34\x12"
    assert item(bus, 0x8011, 4) == b"\x78\x56\x34\x12"
    assert item(bus, 0x8012, 8) == bytes(range(8, 0, -1))
    assert item(bus, 0x8013, 3) == b"hi\0"


def test_add_errors():
    _, dev = board()
    with pytest.raises(AlreadyExists):
        dev.add_u16(fc.NB_CPUS, 1)
    for key in (fc.FILE_DIR, 0x20, 0x4005, 0x1_0000, -1):
        with pytest.raises(InvalidInput):
            dev.add_bytes(key, b"x")
    with pytest.raises(InvalidInput):
        dev.add_u16(0x8020, 0x1_0000)
    with pytest.raises(InvalidInput):
        dev.add_string(0x8021, "a\0b")
    dev.add_file("a", b"")
    with pytest.raises(AlreadyExists):
        dev.add_file("a", b"1")
    for bad in ("", "x" * 56, "nul\0name"):
        with pytest.raises(InvalidInput):
            dev.add_file(bad, b"")
    dev.add_file("y" * 55, b"")  # 55 bytes and the NUL fill name[56]
    with pytest.raises(NotFound):
        dev.file_key("missing")
    for i in range(fc.FILE_SLOTS - 2):
        dev.add_file(f"f{i:03}", b"")
    with pytest.raises(InvalidInput):
        dev.add_file("one-too-many", b"")


def test_constructor_checks():
    for kw in ({"nb_cpus": 0}, {"nb_cpus": 4, "max_cpus": 2}, {"nb_cpus": 0x1_0000},
               {"nb_cpus": 1, "ram_size": -1}, {"nb_cpus": 1, "cmdline": "a\0"}):
        kw.setdefault("ram_size", GiB)
        with pytest.raises(InvalidInput):
            FwCfg(**kw)


def test_port_widths_follow_qemu():
    bus, dev = board()
    # a byte read of the selector port streams data too (the region ignores the port)
    select(bus, fc.SIGNATURE)
    assert bus.read(SEL, B) == ord("Q")
    assert bus.read(DATA, B) == ord("E")
    # a byte write to the selector is a (dropped) data write: no selection
    bus.write(SEL, B, fc.NB_CPUS)
    assert dev.selected == (fc.SIGNATURE, 2)
    bus.write(DATA, B, 0x41)  # data writes are ignored
    assert dev.selected == (fc.SIGNATURE, 2)
    assert dev.item(fc.SIGNATURE) == b"QEMU"
    # a 16-bit read of the selector is refused by the region: 0, no data consumed
    assert bus.read(SEL, W) == 0
    assert dev.selected == (fc.SIGNATURE, 2)
    # inw 0x511: one data byte, the byte at 0x512 is undriven
    assert bus.read(DATA, W) == 0xFF00 | ord("M")
    # inl 0x510: a refused 16-bit read, then two undriven ports
    assert bus.read(SEL, D) == 0xFFFF_0000
    # outl 0x510 selects with its low 16 bits
    bus.write(SEL, D, 0xABCD_0000 | fc.NB_CPUS)
    assert dev.selected == (fc.NB_CPUS, 0)
    # a 16-bit write at the data port is cut to one (dropped) data byte
    bus.write(DATA, W, fc.SIGNATURE)
    assert dev.selected == (fc.NB_CPUS, 0)
    with pytest.raises(BadPioAccess):
        dev.pio_read(2, B, 0)
    with pytest.raises(BadPioAccess):
        dev.pio_write(0, Q, 0, 0)


def test_concurrent_readers_never_lose_or_duplicate_bytes():
    _, dev = board()
    data = bytes(range(256)) * 8
    dev.add_bytes(0x8001, data)
    dev.pio_write(0, W, 0x8001, 0)
    got: list[list[int]] = [[] for _ in range(4)]

    def reader(out):
        for _ in range(len(data) // 4):
            out.append(dev.pio_read(1, B, 0))

    threads = [threading.Thread(target=reader, args=(g,)) for g in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(b for g in got for b in g) == sorted(data)
    assert dev.selected == (0x8001, len(data))

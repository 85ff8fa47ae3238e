"""virtio-net (virtio 1.2 §5.1) behind the virtio-mmio transport, driven through its
registers and fake guest RAM with a fake back-end; the TAP back-end on a real tap
interface; the ``-netdev``/``-device virtio-net-device`` spellings."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time

import pytest
from virtio_driver import Driver, FakeRam

from pyaxvisor.cli.drives import virtio_devices
from pyaxvisor.cli.netdev import parse_netdev
from pyaxvisor.devices.irq import IrqLine, NullIrqSink
from pyaxvisor.devices.virtio import tap as tap_module
from pyaxvisor.devices.virtio.errors import TapSetupError, TapUnavailable
from pyaxvisor.devices.virtio.mmio import TRANSPORT_FEATURES, VirtioMmio
from pyaxvisor.devices.virtio.net import (
    BACKLOG,
    F_MAC,
    F_MTU,
    F_STATUS,
    HDR_SIZE,
    QUEUE_SIZE,
    RECEIVEQ,
    TRANSMITQ,
    VirtioNet,
)
from pyaxvisor.devices.virtio.net_backend import Deliver, NetBackend
from pyaxvisor.devices.virtio.spec import F_EVENT_IDX, STATUS_DEVICE_NEEDS_RESET
from pyaxvisor.devices.virtio.tap import TapBackend
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth
from pyaxvisor.vm.config import VirtioDeviceSpec, parse_mac

IRQ = 5
MAC = bytes.fromhex("525400abcdef")


class FakeBackend(NetBackend):
    """Records sent frames; :meth:`inject` plays a host frame arriving."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.deliver: Deliver | None = None
        self.closed = 0

    def start(self, deliver: Deliver) -> None:
        self.deliver = deliver

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def inject(self, frame: bytes) -> None:
        assert self.deliver is not None
        self.deliver(frame)

    def close(self) -> None:
        self.closed += 1


class Rig:
    def __init__(self, mtu: int | None = None) -> None:
        self.backend = FakeBackend()
        self.ram = FakeRam()
        self.sink = NullIrqSink()
        self.net = VirtioNet(self.backend, MAC, mtu)
        self.dev = VirtioMmio(self.net, self.ram, self.ram.ranges, IrqLine(self.sink, IRQ))
        self.drv = Driver(self.dev, self.ram)
        queues = self.drv.start(self.dev.device_features & ~(1 << F_EVENT_IDX))
        self.rx, self.tx = queues[RECEIVEQ], queues[TRANSMITQ]

    @property
    def irq(self) -> bool:
        return self.sink.levels.get(IRQ, False)


def hdr(flags: int = 0, gso: int = 0) -> bytes:
    return struct.pack("<BBHHHHH", flags, gso, 0, 0, 0, 0, 0)


def frame(n: int, size: int = 60) -> bytes:
    return bytes([n & 0xFF]) * size


def test_identity_features_and_configuration_space():
    rig = Rig()
    assert rig.drv.rd(0x008) == 1  # DeviceID: network card
    assert rig.drv.device_features() == TRANSPORT_FEATURES | (1 << F_MAC) | (1 << F_STATUS)
    for index in (RECEIVEQ, TRANSMITQ):
        rig.drv.wr(0x030, index)
        assert rig.drv.rd(0x034) == QUEUE_SIZE
    rig.drv.wr(0x030, 2)
    assert rig.drv.rd(0x034) == 0  # no control queue
    assert bytes(rig.drv.rd(0x100 + i, AccessWidth.Byte) for i in range(6)) == MAC
    assert rig.drv.rd(0x106, AccessWidth.Word) == 1  # status: LINK_UP
    assert rig.drv.rd(0x108, AccessWidth.Word) == 1  # max_virtqueue_pairs
    assert rig.drv.rd(0x10A, AccessWidth.Word) == 0  # no MTU offered


def test_mtu_is_offered_when_configured():
    rig = Rig(mtu=9000)
    assert rig.drv.device_features() & (1 << F_MTU)
    assert rig.drv.rd(0x10A, AccessWidth.Word) == 9000
    with pytest.raises(InvalidInput, match="MTU"):
        VirtioNet(FakeBackend(), MAC, 20)
    with pytest.raises(InvalidInput, match="6 bytes"):
        VirtioNet(FakeBackend(), b"\x52\x54")


def test_transmit_strips_the_header_and_keeps_the_order():
    rig = Rig()
    a = rig.tx.add([hdr() + frame(1)])
    b = rig.tx.add([hdr()[:5], hdr()[5:] + frame(2)[:10], frame(2)[10:]])  # split anyhow
    c = rig.tx.add([hdr(), frame(3, 1514)], indirect=True)
    rig.drv.notify(TRANSMITQ)
    assert rig.backend.sent == [frame(1), frame(2), frame(3, 1514)]
    assert rig.tx.collect() == [(a.head, 0), (b.head, 0), (c.head, 0)]
    assert rig.net.tx_frames == 3 and rig.irq and not rig.ram.violations


@pytest.mark.parametrize("chain", [
    [hdr()[:11]],                       # shorter than the header
    [hdr(gso=1) + frame(1)],            # GSO TCPv4 was never offered
    [hdr(flags=1) + frame(1)],          # NEEDS_CSUM without checksum offload
])
def test_malformed_transmit_is_a_guest_error(chain):
    rig = Rig()
    rig.tx.add(chain)
    rig.drv.notify(TRANSMITQ)
    assert rig.dev.status & STATUS_DEVICE_NEEDS_RESET
    assert rig.backend.sent == []


def test_receive_prepends_the_header_one_chain_per_frame():
    rig = Rig()
    posted = [rig.rx.add([], [HDR_SIZE + 1514]) for _ in range(2)]
    split = rig.rx.add([], [HDR_SIZE, 30, 1500])  # header and frame over 3 buffers
    rig.drv.notify(RECEIVEQ)
    assert rig.rx.collect() == [] and not rig.irq
    rig.backend.inject(frame(7))
    rig.backend.inject(frame(8, 100))
    rig.backend.inject(frame(9, 64))
    assert rig.rx.collect() == [(posted[0].head, HDR_SIZE + 60),
                                (posted[1].head, HDR_SIZE + 100), (split.head, HDR_SIZE + 64)]
    expected_hdr = struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 1)
    assert rig.rx.written(posted[0])[:HDR_SIZE + 60] == expected_hdr + frame(7)
    assert rig.rx.written(posted[1])[:HDR_SIZE + 100] == expected_hdr + frame(8, 100)
    assert rig.rx.written(split)[:HDR_SIZE + 64] == expected_hdr + frame(9, 64)
    assert rig.irq and rig.net.rx_frames == 3 and not rig.ram.violations


def test_frames_wait_for_buffers_and_the_backlog_drops_the_oldest():
    rig = Rig()
    for n in range(BACKLOG + 3):
        rig.backend.inject(frame(n))
    assert rig.net.backlog == BACKLOG and rig.net.rx_overruns == 3 and not rig.irq
    reqs = [rig.rx.add([], [HDR_SIZE + 64]) for _ in range(4)]
    rig.drv.notify(RECEIVEQ)
    assert [n for _, n in rig.rx.collect()] == [HDR_SIZE + 60] * 4
    assert [rig.rx.written(r)[HDR_SIZE] for r in reqs] == [3, 4, 5, 6]  # 0..2 dropped
    assert rig.net.backlog == BACKLOG - 4 and rig.irq


def test_a_frame_too_big_for_the_chain_is_dropped_and_counted():
    rig = Rig()
    small = rig.rx.add([], [HDR_SIZE + 100])
    big = rig.rx.add([], [HDR_SIZE + 1514])
    rig.drv.notify(RECEIVEQ)
    rig.backend.inject(frame(1, 1000))  # does not fit ``small``: dropped, not split
    rig.backend.inject(frame(2, 1000))
    assert rig.rx.collect() == [(small.head, 0), (big.head, HDR_SIZE + 1000)]
    assert rig.net.rx_too_big == 1
    assert rig.rx.written(big)[HDR_SIZE:HDR_SIZE + 1000] == frame(2, 1000)
    assert rig.dev.status & STATUS_DEVICE_NEEDS_RESET == 0


def test_reset_empties_the_backlog_and_close_closes_the_backend():
    rig = Rig()
    rig.backend.inject(frame(1))
    assert rig.net.backlog == 1
    rig.drv.start(rig.dev.device_features & ~(1 << F_EVENT_IDX))
    assert rig.net.backlog == 0
    rig.net.close()
    assert rig.backend.closed == 1


def test_frames_from_another_thread_arrive_whole_and_in_order():
    rig = Rig()
    total = 500
    got: list[int] = []

    def host() -> None:
        for n in range(total):
            while rig.net.backlog > BACKLOG // 2:  # stay clear of overruns
                time.sleep(0.0005)
            rig.backend.inject(frame(n, 60 + n % 7))

    thread = threading.Thread(target=host)
    thread.start()
    posted: dict[int, object] = {}
    deadline = time.monotonic() + 30
    while len(got) < total:
        assert time.monotonic() < deadline, f"stuck after {len(got)} frames"
        while len(posted) < 8:
            req = rig.rx.add([], [HDR_SIZE + 80])
            posted[req.head] = req
        rig.drv.notify(RECEIVEQ)
        for head, n in rig.rx.collect():
            data = rig.rx.written(posted.pop(head))[:n]
            assert len(data) == HDR_SIZE + 60 + len(got) % 7
            got.append(data[HDR_SIZE])
    thread.join()
    assert got == [n & 0xFF for n in range(total)] and rig.net.rx_overruns == 0


# -- the TAP back-end ----------------------------------------------------------------------

ETHERTYPE = 0x88B5  # IEEE local experimental: nothing else on the tap uses it


def test_tap_round_trip_through_a_packet_socket():
    name = f"pyaxt{os.getpid() % 100000}"
    received: list[bytes] = []
    got = threading.Event()

    def deliver(data: bytes) -> None:
        if data[12:14] == ETHERTYPE.to_bytes(2, "big"):
            received.append(data)
            got.set()

    backend = TapBackend(name)
    try:
        backend.start(deliver)
        subprocess.run(["/usr/sbin/ip", "link", "set", name, "up"], check=True)
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE)) as s:
            s.bind((name, ETHERTYPE))
            s.settimeout(10)
            host_frame = b"\xff" * 6 + MAC + ETHERTYPE.to_bytes(2, "big") + b"to-guest" * 8
            s.send(host_frame)  # the interface transmits: the tap's reader gets it
            assert got.wait(10) and received[0] == host_frame
            guest_frame = b"\xff" * 6 + MAC + ETHERTYPE.to_bytes(2, "big") + b"to-host!" * 8
            backend.send(guest_frame)  # written to the tap: the interface receives it
            assert s.recv(2048) == guest_frame
    finally:
        backend.close()
        backend.close()  # idempotent
    link = subprocess.run(["/usr/sbin/ip", "link", "show", name], capture_output=True)
    assert link.returncode != 0  # the kernel removed the (non-persistent) tap


def test_tap_errors_name_the_interface(monkeypatch):
    with pytest.raises(InvalidInput, match="not a valid interface name"):
        TapBackend("a/b")
    with pytest.raises(InvalidInput, match="not a valid interface name"):
        TapBackend("x" * 16)
    with pytest.raises(TapSetupError, match=r"'lo'.*TUNSETIFF failed.*another kind"):
        TapBackend("lo")  # the loopback interface is not a tap
    monkeypatch.setattr(tap_module, "TUN_DEVICE", "/nonexistent/tun")
    with pytest.raises(TapUnavailable, match=r"'tap7'.*does not exist"):
        TapBackend("tap7")


# -- the command line ------------------------------------------------------------------------

def nets(devices, netdevs):
    return virtio_devices(devices, [], (), [parse_netdev(n) for n in netdevs])


def test_netdev_and_device_spellings():
    assert parse_netdev("tap,id=n0,ifname=tap0,script=no,downscript=no").ifname == "tap0"
    specs = nets(["virtio-net-device,netdev=n0",
                  "virtio-net-device,netdev=n1,mac=02:00:00:00:00:01,id=nic1",
                  "virtio-net-device,netdev=n2"],
                 ["tap,id=n0,ifname=tap0", "tap,id=n1,ifname=tap1", "tap,id=n2,ifname=tap2"])
    assert specs == (
        VirtioDeviceSpec("net", ifname="tap0", mac="52:54:00:12:34:56"),
        VirtioDeviceSpec("net", id="nic1", ifname="tap1", mac="02:00:00:00:00:01"),
        VirtioDeviceSpec("net", ifname="tap2", mac="52:54:00:12:34:58"),
    )
    assert parse_mac("52-54-00-AB-CD-EF") == MAC
    assert specs[0].describe() == "virtio-net (tap tap0, 52:54:00:12:34:56)"


@pytest.mark.parametrize(("netdev", "message"), [
    ("user,id=n0", "user .*not supported: only tap"),
    ("socket,id=n0", "'socket' back-end is not supported"),
    ("tap,id=n0,ifname=tap0,script=/etc/qemu-ifup", "script=/etc/qemu-ifup: pyaxvisor runs no"),
    ("tap,id=n0,ifname=tap0,downscript=x", "downscript=x"),
    ("tap,ifname=tap0", "id= is required"),
    ("tap,id=n0", "ifname= is required"),
    ("tap,id=n0,ifname=tap0,vhost=on", "unknown property 'vhost=on'"),
    ("tap,id=n0,ifname=much-too-long-name", "not a valid interface name"),
])
def test_netdev_errors(netdev, message):
    with pytest.raises(InvalidInput, match=f"-netdev {netdev.split(',')[0]}.*{message}"):
        parse_netdev(netdev)


@pytest.mark.parametrize(("device", "message"), [
    ("virtio-net-device", "netdev= is required"),
    ("virtio-net-device,netdev=n9", "no -netdev with id 'n9' \\(ids: 'n0'\\)"),
    ("virtio-net-device,netdev=n0,mac=52:54:00:12:34", "six hex byte pairs"),
    ("virtio-net-device,netdev=n0,mac=52:54:00:12:34:zz", "not hexadecimal"),
    ("virtio-net-device,netdev=n0,mac=01:00:5e:00:00:01", "multicast"),
    ("virtio-net-device,netdev=n0,speed=10", "unknown property 'speed=10'"),
])
def test_device_errors(device, message):
    with pytest.raises(InvalidInput, match=f"-device virtio-net-device.*{message}"):
        nets([device], ["tap,id=n0,ifname=tap0"])


def test_a_netdev_serves_one_card_and_ids_are_distinct():
    with pytest.raises(InvalidInput, match="used by another card"):
        nets(["virtio-net-device,netdev=n0"] * 2, ["tap,id=n0,ifname=tap0"])
    with pytest.raises(InvalidInput, match="duplicate id 'n0'"):
        nets([], ["tap,id=n0,ifname=tap0", "tap,id=n0,ifname=tap1"])


def test_command_line_errors_are_usage_errors():
    from click.testing import CliRunner

    from pyaxvisor.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["run", "-M", "virt", "-netdev", "user,id=n0",
                                  "-device", "virtio-net-device,netdev=n0"])
    assert result.exit_code == 2 and "user (slirp) back-end is not supported" in result.output
    result = runner.invoke(main, ["run", "-M", "virt", "-netdev", "tap,id=n0,ifname=t0",
                                  "-device", "virtio-net-device,netdev=n1"])
    assert result.exit_code == 2 and "no -netdev with id 'n1'" in result.output
    result = runner.invoke(main, ["run", "-M", "pc", "-netdev", "user,id=n0",
                                  "-device", "virtio-net-device,netdev=n0"])
    assert result.exit_code == 2 and "user (slirp) back-end is not supported" in result.output

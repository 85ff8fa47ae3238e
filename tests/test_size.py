"""QEMU-style ``-m`` and ``-smp`` values."""

from __future__ import annotations

import pytest

from pyaxvisor.cli.qemu_args import parse_memory_size, parse_smp, parse_smp_topology
from pyaxvisor.errors import InvalidInput


@pytest.mark.parametrize(("text", "size"), [
    ("256", 256 << 20), ("512M", 512 << 20), ("1G", 1 << 30), ("1.5G", 3 << 29),
    ("0.5G", 512 << 20), ("64MiB", 64 << 20), ("size=2G", 2 << 30), ("4096k", 4 << 20),
    (" 128m ", 128 << 20),
])
def test_memory_sizes(text, size):
    assert parse_memory_size(text) == size


@pytest.mark.parametrize(("text", "message"), [
    ("lots", "cannot parse memory size 'lots'"), ("0", "must be positive"),
    ("1.1k", "not a whole number of bytes"), ("-5M", "cannot parse"), ("1.G", "cannot parse"),
])
def test_bad_memory_sizes(text, message):
    with pytest.raises(InvalidInput, match=message):
        parse_memory_size(text)


@pytest.mark.parametrize(("text", "cpus"), [
    ("2", 2), ("cpus=4", 4), ("4,sockets=1,cores=4", 4), ("sockets=2,cores=2,threads=2", 8),
    ("2,maxcpus=4", 2), ("maxcpus=3", 3), ("cpus=3,maxcpus=3", 3),
    # QEMU computes what is left out: cores first, then sockets, then threads
    ("2,sockets=1", 2), ("4,sockets=2", 4), ("4,sockets=1,cores=2", 4), ("8,cores=2", 8),
    ("4,threads=2", 4), ("6,sockets=1,cores=3", 6), ("2,maxcpus=8,sockets=2", 2),
    ("cores=4", 4), ("threads=2", 2), ("4,dies=2,clusters=1,modules=1", 4),
    ("16,drawers=2,books=2,sockets=2", 16),
])
def test_smp_values(text, cpus):
    assert parse_smp(text) == cpus


@pytest.mark.parametrize(("text", "topology"), [
    ("2,sockets=1", dict(cpus=2, maxcpus=2, sockets=1, cores=2, threads=1)),
    ("4,sockets=2", dict(cpus=4, maxcpus=4, sockets=2, cores=2, threads=1)),
    ("4,sockets=1,cores=2", dict(cpus=4, maxcpus=4, sockets=1, cores=2, threads=2)),
    ("8,cores=2,threads=2", dict(cpus=8, maxcpus=8, sockets=2, cores=2, threads=2)),
    ("2,maxcpus=8,sockets=2", dict(cpus=2, maxcpus=8, sockets=2, cores=4, threads=1)),
    ("sockets=2,cores=3", dict(cpus=6, maxcpus=6, sockets=2, cores=3, threads=1)),
    ("3", dict(cpus=3, maxcpus=3, sockets=1, cores=3, threads=1)),
])
def test_smp_topology_fills_in_what_is_left_out_as_qemu_does(text, topology):
    got = parse_smp_topology(text)
    assert {key: getattr(got, key) for key in topology} == topology


@pytest.mark.parametrize(("text", "message"), [
    ("two", "cpus must be a count"), ("0", "cpus must be a count"),
    ("2,cores", "'cores' is not key=value"), ("2,widgets=3", "unknown property 'widgets'"),
    ("4,sockets=1,cores=2,threads=1", "the topology gives 2 CPUs, but maxcpus is 4"),
    ("sockets=2,maxcpus=3", "the topology gives 2 CPUs, but maxcpus is 3"),
    ("4,maxcpus=2", "more than maxcpus 2"),
    # 4 sockets leave 2 // 4 = 0 cores: QEMU refuses it
    ("2,sockets=4", r"the topology gives 0 CPUs, but maxcpus is 2 \(sockets \(4\) \* "
                    r"cores \(0\) \* threads \(1\)"),
    ("3,sockets=2", "the topology gives 2 CPUs, but maxcpus is 3"),
    ("2,maxcpus=3,cores=2", "the topology gives 2 CPUs, but maxcpus is 3"),
    ("2,sockets=0", "sockets must be a count"), ("cpus=", "cpus must be a count"),
])
def test_bad_smp_values(text, message):
    with pytest.raises(InvalidInput, match=message):
        parse_smp(text)

"""QEMU-style ``-m`` and ``-smp`` values."""

from __future__ import annotations

import pytest

from pyaxvisor.cli.qemu_args import parse_memory_size, parse_smp
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
    ("2,maxcpus=4", 2), ("2,sockets=4", 2), ("maxcpus=3", 3), ("cpus=3,maxcpus=3", 3),
])
def test_smp_values(text, cpus):
    assert parse_smp(text) == cpus


@pytest.mark.parametrize(("text", "message"), [
    ("two", "cpus must be a count"), ("0", "cpus must be a count"),
    ("2,cores", "'cores' is not key=value"), ("2,widgets=3", "unknown property 'widgets'"),
    ("4,sockets=1,cores=2", "4 CPUs is more than maxcpus 2"),
    ("sockets=2,maxcpus=3", "the topology gives 2 CPUs, but maxcpus is 3"),
    ("4,maxcpus=2", "more than maxcpus 2"),
])
def test_bad_smp_values(text, message):
    with pytest.raises(InvalidInput, match=message):
        parse_smp(text)

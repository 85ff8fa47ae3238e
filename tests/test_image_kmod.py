"""Kernel modules for an initramfs (``pyaxvisor.image_kmod``) and the ``/init`` that
loads them: on small ELF files made here, no network."""

from __future__ import annotations

import gzip
import lzma
import struct

import pytest

from pyaxvisor import images
from pyaxvisor.errors import ImageFetchError
from pyaxvisor.image_kmod import (
    MAX_MODULE_SIZE,
    ModuleInfo,
    ModuleTooLargeError,
    builtin_list_release,
    builtin_roots,
    decompress_module,
    elf_section,
    load_order,
    module_info,
    module_name,
    module_release,
    parse_builtin,
    parse_modinfo,
)


def fake_module(modinfo: bytes) -> bytes:
    """A little-endian ELF64 with a ``.modinfo`` section holding ``modinfo``."""
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body = modinfo + shstrtab
    shoff = 64 + len(body)
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 1, 183, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)

    def sh(name: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, offset, size, 0, 0, 1, 0)

    return (header + body + bytes(64) + sh(1, 64, len(modinfo))
            + sh(10, 64 + len(modinfo), len(shstrtab)))


EXT4 = fake_module(b"alias=fs-ext4\0depends=jbd2,mbcache,crc16\0softdep=pre: crc32c\0"
                   b"vermagic=6.1.0-57-arm64 SMP mod_unload modversions aarch64\0")


def test_modinfo_is_read_from_the_elf_section():
    section = elf_section(EXT4, ".modinfo", "ext4.ko")
    assert section is not None and parse_modinfo(section)["depends"] == ["jbd2,mbcache,crc16"]
    assert elf_section(EXT4, ".text", "ext4.ko") is None
    info = module_info("lib/modules/6.1.0-57-arm64/kernel/fs/ext4/ext4.ko", EXT4)
    assert info.name == "ext4" and info.depends == ("jbd2", "mbcache", "crc16")
    assert info.pre == ("crc32c",) and info.aliases == ("fs-ext4",)
    assert info.vermagic.startswith("6.1.0-57-arm64 ")
    with pytest.raises(ImageFetchError, match="not a little-endian ELF64"):
        module_info("x.ko", b"junk")
    with pytest.raises(ImageFetchError, match="beyond the file"):
        module_info("x.ko", EXT4[:100])


def test_module_names_releases_and_compression():
    assert module_name("lib/modules/r/kernel/drivers/char/hw_random/virtio-rng.ko.xz") == \
        "virtio_rng"
    assert module_release("lib/modules/6.1.0-57-arm64/kernel/fs/ext4/ext4.ko") == \
        "6.1.0-57-arm64"
    assert module_release("usr/lib/modules/6.12.1-riscv64/kernel/a/b.ko.xz") == \
        "6.12.1-riscv64"
    assert module_release("lib/modules/6.1.0-57-arm64/modules.order") is None
    assert decompress_module("a.ko", EXT4) == EXT4
    assert decompress_module("a.ko.xz", lzma.compress(EXT4)) == EXT4
    assert decompress_module("a.ko.gz", gzip.compress(EXT4)) == EXT4
    with pytest.raises(ImageFetchError, match="truncated"):
        decompress_module("a.ko.xz", lzma.compress(EXT4)[:-20])
    with pytest.raises(ImageFetchError, match="only plain, xz and gzip"):
        decompress_module("a.ko.zst", b"")
    # riscv64's amdgpu.ko.xz: a typed error, which the module scan passes by
    with pytest.raises(ModuleTooLargeError, match="larger than"):
        decompress_module("amdgpu.ko.gz", gzip.compress(bytes(MAX_MODULE_SIZE + 1), 1))


def test_load_order_puts_dependencies_and_soft_dependencies_first():
    mods = {m.name: m for m in (
        ModuleInfo("ext4", "ext4.ko", ("jbd2", "crc16"), ("crc32c",)),
        ModuleInfo("jbd2", "jbd2.ko", (), ("crypto-crc32c",)),
        ModuleInfo("crc16", "crc16.ko"),
        ModuleInfo("crc32c_generic", "crc32c_generic.ko", aliases=("crc32c", "crypto-crc32c")),
        ModuleInfo("virtio_mmio", "virtio_mmio.ko", (), ("nothing-provides-this",)),
    )}
    order, unresolved = load_order(["virtio-mmio", "ext4"], mods)
    assert order == ["virtio_mmio", "crc32c_generic", "jbd2", "crc16", "ext4"]
    assert unresolved == ["nothing-provides-this"]
    with pytest.raises(ImageFetchError, match=r"mbcache \(needed by ext4\) is not in"):
        load_order(["ext4"], {**mods, "ext4": ModuleInfo("ext4", "e", ("mbcache",))})
    loop = {"a": ModuleInfo("a", "a", ("b",)), "b": ModuleInfo("b", "b", ("a",))}
    with pytest.raises(ImageFetchError, match="cycle: a -> b -> a"):
        load_order(["a"], loop)


def test_built_in_modules_are_skipped_not_missing():
    """riscv64's Debian kernel has virtio_console built in (=y), arm64's as a module."""
    builtin = parse_builtin(b"kernel/drivers/char/virtio_console.ko\n"
                            b"kernel/crypto/crc32c_generic.ko\n\n")
    assert builtin == {"virtio_console", "crc32c_generic"}
    mods = {m.name: m for m in (
        ModuleInfo("ext4", "ext4.ko", ("crc32c_generic",), ("crc32c",)),
        ModuleInfo("virtio_mmio", "virtio_mmio.ko"),
    )}
    roots = ["virtio-mmio", "virtio-console", "ext4"]
    assert load_order(roots, mods, builtin) == (["virtio_mmio", "ext4"], ["crc32c"])
    assert builtin_roots(roots, mods, builtin) == ["virtio_console"]
    with pytest.raises(ImageFetchError, match="not built into the kernel"):
        load_order(["virtio_console"], mods)
    assert builtin_list_release("usr/lib/modules/6.12.1-riscv64/modules.builtin") == \
        "6.12.1-riscv64"
    assert builtin_list_release("lib/modules/6.1.0-arm64/modules.builtin") == "6.1.0-arm64"
    assert builtin_list_release("lib/modules/6.1.0-arm64/modules.builtin.modinfo") is None


def test_the_init_loads_the_modules_in_order_before_reporting():
    script = images.init_script(["virtio_mmio", "ext4"])
    first = script.index("insmod /lib/modules/virtio_mmio.ko")
    assert first < script.index("insmod /lib/modules/ext4.ko") < \
        script.index('echo "PYAXVISOR-MODULES: $loaded/2"') < \
        script.index(images.USERSPACE_MARKER)
    assert 'echo "PYAXVISOR-INSMOD-FAILED: ext4"' in script
    assert "insmod" not in images.init_script()
    with pytest.raises(ValueError, match="bad kernel module name"):
        images.init_script(["x; reboot"])
    names = [e.name for e in images.initramfs_entries(b"\x7fELF", ["sh"],
                                                      [("virtio_mmio", EXT4)])]
    assert "lib/modules/virtio_mmio.ko" in names
    assert names.index("lib/modules") < names.index("lib/modules/virtio_mmio.ko")


def test_the_virtio_initramfs_is_registered_with_its_kernel():
    image = images.spec("initramfs-virtio-aarch64")
    assert image.name == "initramfs-virtio-arm64"
    assert image.kernel_image == "linux-arm64" and "virtio_blk" in image.modules


def test_a_virtio_initramfs_of_another_kernel_counts_as_outdated(monkeypatch):
    kernel = {"package": "linux-image-6.1.0-57-arm64", "version": "6.1.192-3"}
    monkeypatch.setattr(images, "metadata", lambda name: dict(kernel))
    image = images.spec("initramfs-virtio-arm64")
    ours = {"kernel_package": "linux-image-6.1.0-57-arm64", "kernel_version": "6.1.192-3",
            "init_version": images.INIT_VERSION, "wanted_modules": list(image.modules)}
    said: list[str] = []
    assert not images._outdated(image, ours, said.append)
    assert images._outdated(image, {**ours, "kernel_version": "6.1.190-1"}, said.append)
    assert "building it again" in said[-1]
    # built before virtio_console joined the list (no wanted_modules): built again
    old_list = {k: v for k, v in ours.items() if k != "wanted_modules"}
    assert images._outdated(image, old_list, said.append)
    assert "now ['virtio_mmio'" in said[-1]
    assert not images._outdated(images.spec("initramfs-arm64"), {}, said.append)


def test_a_virtio_initramfs_with_an_older_init_counts_as_outdated(monkeypatch):
    kernel = {"package": "linux-image-6.1.0-57-arm64", "version": "6.1.192-3"}
    monkeypatch.setattr(images, "metadata", lambda name: dict(kernel))
    image = images.spec("initramfs-virtio-arm64")
    old = {"kernel_package": "linux-image-6.1.0-57-arm64", "kernel_version": "6.1.192-3"}
    said: list[str] = []
    assert images._outdated(image, old, said.append)
    assert "its /init is version 1" in said[-1]

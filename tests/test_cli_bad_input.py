"""Bad input to ``pyaxvisor run``: one clear line, the right status, never a
traceback, never an unbounded read or wait.

Every command line here is run as a user runs it (``python -m pyaxvisor.cli``); each
test asserts the message, the exit status (2: usage error, 4: the VM could not be
built or was stopped by an error) and that no ``Traceback`` appears. Images are
built here from the formats' specs (booting.rst, boot-image-header.rst, PE/COFF).
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import pytest

from pyaxvisor import images
from pyaxvisor.cli.host import check_guest_memory, describe_size, host_memory
from pyaxvisor.cli.qemu_args import MAX_TIMEOUT, parse_timeout
from pyaxvisor.engine.kvm.probe import kvm_usable
from pyaxvisor.errors import InvalidInput
from pyaxvisor.hal import HostHal
from pyaxvisor.loaders.image import ImageError
from pyaxvisor.loaders.linux_image import image_file_end, load_arm64_image, load_riscv_image
from pyaxvisor.mm import GuestPhysAddr
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.mm.nested import nested_page_table

_kvm, _why = kvm_usable()
kvm_only = pytest.mark.skipif(not _kvm, reason=f"KVM not usable: {_why}")

MiB, GiB = 1 << 20, 1 << 30
ERROR, USAGE = 4, 2
HELLO = str(Path(str(resources.files("pyaxvisor.guests"))) / "aarch64" / "hello.bin")


def pyaxvisor(*args: str | Path, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "pyaxvisor.cli", *map(str, args)],
                       capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, **kw)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def refused(p: subprocess.CompletedProcess[str], status: int, message: str) -> None:
    """The run ended with ``status``, and standard error says ``message`` in one line."""
    assert p.returncode == status, p.stderr
    lines = [line for line in p.stderr.splitlines() if message in line]
    assert lines, p.stderr
    assert "<image>" not in p.stderr


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# -- synthetic images --------------------------------------------------------------------------

ARM64 = {"magic56": b"ARM\x64", "text_offset": 0x8_0000, "flags": 0b1010, "version": 0,
         "machine": 0xAA64}
RISCV = {"magic56": b"RSC\x05", "text_offset": 0x20_0000, "flags": 0, "version": 0x2,
         "machine": 0x5064}
PE_AT = 0x40
OPTIONAL_SIZE = 0xA0  # a PE32+ optional header with 16 data directories
SECTIONS_AT = PE_AT + 24 + OPTIONAL_SIZE  # 0xF8
TABLE_END = SECTIONS_AT + 2 * 40  # 0x148 = 328


def efi_image(arch: dict, size: int = 0x2_0000, *, signature: bytes = b"PE\0\0") -> bytes:
    """A Linux Image with an EFI stub: code0 "MZ", the 64-byte header, a PE/COFF header
    at 0x40 whose two sections place their raw data up to ``size`` bytes."""
    data = bytearray(size)
    struct.pack_into("<2sHIQQQII", data, 0, b"MZ", 0, 0, arch["text_offset"],
                     size + 0x1_0000, arch["flags"], arch["version"], 0)
    data[56:60] = arch["magic56"]
    struct.pack_into("<I", data, 60, PE_AT)
    struct.pack_into("<4sHHIIIHH", data, PE_AT, signature, arch["machine"], 2, 0, 0, 0,
                     OPTIONAL_SIZE, 0x206)
    struct.pack_into("<H", data, PE_AT + 24, 0x20B)  # PE32+
    split = size // 2
    for i, (name, start, end) in enumerate(((b".text", 0x1000, split), (b".data", split, size))):
        struct.pack_into("<8sIIII", data, SECTIONS_AT + 40 * i, name, end - start, start,
                         end - start, start)
    return bytes(data)


def plain_image(arch: dict, image_size: int, body: int = 0x1000, flags: int | None = None
                ) -> bytes:
    """A Linux Image without an EFI stub (code0 a branch)."""
    header = struct.pack("<IIQQQII8x8s4sI", 0x1400_0010, 0, arch["text_offset"], image_size,
                         arch["flags"] if flags is None else flags, arch["version"],
                         0, bytes(8), arch["magic56"], 0)
    return header + bytes(body)


# -- --timeout ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "message"), [
    ("inf", "--timeout 'inf': give a positive number of seconds"),
    ("-inf", "--timeout '-inf': give a positive number of seconds"),
    ("nan", "--timeout 'nan': give a positive number of seconds"),
    ("1e400", "--timeout '1e400': give a positive number of seconds"),  # inf as a float
    ("0", "--timeout '0': give a positive number of seconds"),
    ("-1", "--timeout '-1': give a positive number of seconds"),
    ("1e10", f"--timeout '1e10': at most {MAX_TIMEOUT} s (30 days)"),
    (str(MAX_TIMEOUT + 1), f"at most {MAX_TIMEOUT} s (30 days)"),
    ("soon", "--timeout 'soon' is not a number of seconds"),
    ("", "--timeout '' is not a number of seconds"),
])
def test_a_timeout_that_is_not_a_positive_finite_number_is_a_usage_error(value, message):
    refused(pyaxvisor("run", "--timeout", value), USAGE, message)


def test_the_largest_and_smallest_timeouts_are_taken():
    assert parse_timeout(str(MAX_TIMEOUT)) == MAX_TIMEOUT == 30 * 24 * 3600
    assert parse_timeout("0.001") == 0.001
    with pytest.raises(InvalidInput):
        parse_timeout("2592000.5")


# -- -m ----------------------------------------------------------------------------------------

def _meminfo_total() -> tuple[int, int]:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        fields[key] = int(rest.split()[0]) * 1024
    return fields["MemTotal"], fields.get("SwapTotal", 0)


def test_memory_the_host_can_never_back_is_refused_at_once():
    ram, swap = _meminfo_total()
    size = (ram + swap) // GiB + 2  # GiB: more than RAM and swap together
    start = time.monotonic()
    p = pyaxvisor("run", "--arch", "x86_64", "-m", f"{size}G")
    assert time.monotonic() - start < 15  # nothing was reserved or mapped
    refused(p, ERROR, f"the guest's {size} GiB of RAM (-m) is more than this host can ever "
                      f"back: {describe_size(ram)} of RAM and ")
    assert (f"{describe_size(swap)} of swap" if swap else "no swap") in p.stderr


def test_the_host_memory_rule_is_ram_plus_swap(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        1048576 kB\nMemFree:          1024 kB\n"
                       "MemAvailable:      2048 kB\nSwapTotal:        524288 kB\n")
    assert host_memory(meminfo) == (GiB, 512 * MiB)
    check_guest_memory(GiB + 512 * MiB, meminfo)  # more than free or available: fine
    with pytest.raises(InvalidInput) as info:
        check_guest_memory(2 * GiB, meminfo)
    assert str(info.value) == ("the guest's 2 GiB of RAM (-m) is more than this host can ever "
                               "back: 1 GiB of RAM and 512 MiB of swap")
    meminfo.write_text("MemTotal:        1048576 kB\n")
    with pytest.raises(InvalidInput, match="1 GiB of RAM and no swap"):
        check_guest_memory(GiB + MiB, meminfo)
    check_guest_memory(1 << 50, tmp_path / "missing")  # a host that does not say: no check


@pytest.mark.parametrize(("value", "status", "message"), [
    ("lots", USAGE, "cannot parse memory size 'lots'"),
    ("0", USAGE, "memory size '0' must be positive"),
    ("-5M", USAGE, "cannot parse memory size '-5M'"),
    ("1.1k", USAGE, "is not a whole number of bytes"),
    ("100G", ERROR, "RAM size 102400 MiB is more than this VM supports (64 GiB)"),
    ("8M", ERROR, "must be a multiple of 2 MiB, >= 16 MiB"),
])
def test_bad_memory_sizes(value, status, message):
    refused(pyaxvisor("run", "-m", value), status, message)


# -- the other arguments -----------------------------------------------------------------------

@pytest.mark.parametrize(("args", "status", "message"), [
    (("-smp", "two"), USAGE, "cannot parse -smp 'two': cpus must be a count such as 2"),
    (("-smp", "0"), USAGE, "cpus must be a count such as 2"),
    (("-smp", "2,sockets=4"), USAGE, "the topology gives 0 CPUs, but maxcpus is 2"),
    (("-smp", "2,widgets=1"), USAGE, "unknown property 'widgets'"),
    (("-smp", "9"), ERROR, "a virt VM has 1..8 CPUs, not 9"),
    (("--arch", "mips"), USAGE, "'mips' is not one of"),
    (("-M", "raspi3"), USAGE, "machine 'raspi3' is not supported: only 'virt'"),
    (("-cpu", "cortex-a53"), USAGE, "CPU model 'cortex-a53' is not supported"),
    (("-initrd", "x.cpio"), USAGE, "-initrd needs -kernel"),
    (("-device", "isa-debug-exit"), USAGE,
     "-device 'isa-debug-exit' is not supported on the aarch64 virt board (its devices are "
     "virtio-blk-device, virtio-rng-device"),
    (("-drive", "file=d.img,if=scsi"), USAGE, "-drive file=d.img,if=scsi: if=scsi is not "
                                              "supported: only if=virtio"),
    (("-drive", "if=virtio"), USAGE, "-drive if=virtio: no file= (the disk image)"),
    (("-drive", "file=d.img,format=vmdk"), USAGE, "format=vmdk is not supported: only raw"),
    (("-drive", "file=d.img,snapshot=on"), USAGE, "unknown property 'snapshot'"),
    (("-drive", "file=d.img,if=none,id=a", "-device", "virtio-blk-device,drive=b"), USAGE,
     "-device virtio-blk-device,drive=b: no -drive with id 'b' (ids: 'a')"),
    (("-drive", "file=/nonexistent/d.img"), ERROR, "disk image '/nonexistent/d.img': no such "
                                                   "file"),
    (("--arch", "x86_64", "--trap-mmio"), USAGE, "--trap-mmio is for aarch64"),
    (("--arch", "x86_64", "-bios", "u-boot.bin"), USAGE, "-bios is not supported on x86_64"),
    (("--arch", "x86_64", "-device", "isa-debug-exit,iobase=zz"), USAGE,
     "-device isa-debug-exit: iobase='zz' is not a number"),
    (("-no-such-option",), USAGE, "No such option '-no-such-option'"),
    (("/nonexistent/vm.toml",), ERROR, "/nonexistent/vm.toml"),
])
def test_bad_arguments(args, status, message):
    refused(pyaxvisor("run", *args), status, message)


def test_a_config_file_that_is_not_toml(tmp_path):
    path = tmp_path / "vm.toml"
    path.write_bytes(b"\xff\xfe not toml [[[")
    p = pyaxvisor("run", path)
    assert p.returncode == ERROR and str(path) in p.stderr


# -- files that are not images -----------------------------------------------------------------

@pytest.mark.parametrize("option", ["-kernel", "-initrd", "-bios"])
def test_devices_directories_and_missing_files_are_refused_before_reading(option, tmp_path):
    extra = ("-kernel", HELLO) if option == "-initrd" else ()
    what = {"-kernel": "kernel", "-initrd": "initrd", "-bios": "firmware"}[option]
    refused(pyaxvisor("run", *extra, option, "/dev/zero"), ERROR,
            f"{what} /dev/zero is not a regular file (it is a character device)")
    refused(pyaxvisor("run", *extra, option, tmp_path), ERROR,
            f"{what} {tmp_path} is not a regular file (it is a directory)")
    refused(pyaxvisor("run", *extra, option, tmp_path / "nope"), ERROR,
            f"{what} {tmp_path / 'nope'}: no such file")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    refused(pyaxvisor("run", *extra, option, empty), ERROR, f"{what} {empty}: the file is empty")


@pytest.mark.parametrize("option", ["-kernel", "-initrd"])
def test_a_huge_file_is_refused_from_its_size_with_the_guest_limit(option, tmp_path):
    huge = sparse(tmp_path / "huge", 2 * GiB)
    extra = ("-kernel", HELLO) if option == "-initrd" else ()
    what = option.lstrip("-")
    start = time.monotonic()
    refused(pyaxvisor("run", *extra, "-m", "256M", option, huge), ERROR,
            f"{what} {huge}: the file is 2048 MiB, more than the 256 MiB limit (the most the "
            "guest can take)")
    assert time.monotonic() - start < 15


def test_firmware_larger_than_the_flash_is_refused_in_one_line(tmp_path):
    big = sparse(tmp_path / "big.bin", 65 * MiB)
    refused(pyaxvisor("run", "-bios", big), ERROR,
            f"firmware {big}: {65 * MiB} bytes do not fit the 64 MiB flash")
    huge = sparse(tmp_path / "huge.bin", 4 * GiB)
    refused(pyaxvisor("run", "-bios", huge), ERROR,
            f"firmware {huge}: the file is 4096 MiB, more than the 640 MiB limit")


def test_a_fifo_with_no_writer_does_not_hang(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused(pyaxvisor("run", "-kernel", fifo, timeout=30), ERROR,
            f"kernel {fifo}: the pipe is empty (nothing was written to it)")


def _through_a_pipe(data: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    """``pyaxvisor run ARGS -kernel /dev/fd/N`` with ``data`` written into the pipe N."""
    read_end, write_end = os.pipe()

    def feed() -> None:
        try:
            with os.fdopen(write_end, "wb") as f:
                f.write(data)
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        return pyaxvisor("run", *args, "-kernel", f"/dev/fd/{read_end}", pass_fds=(read_end,))
    finally:
        os.close(read_end)
        writer.join()


def test_a_kernel_through_a_pipe_is_read_up_to_the_guest_limit():
    p = _through_a_pipe(Path(HELLO).read_bytes(), "-smp", "2")
    assert p.returncode == 0, p.stderr
    assert "powering off (PSCI SYSTEM_OFF)" in p.stdout
    refused(_through_a_pipe(bytes(64 * MiB + 1), "-m", "64M"), ERROR,
            "the pipe holds more than 64 MiB, the limit (the most the guest can take)")


# -- truncated and damaged Linux Images --------------------------------------------------------

@pytest.mark.parametrize("cut", [100, 4096, "half"])
@pytest.mark.parametrize(("arch", "layout"), [("aarch64", ARM64), ("riscv64", RISCV)])
def test_a_truncated_efi_stub_image_is_refused(tmp_path, arch, layout, cut):
    full = efi_image(layout, 0x20_0000)
    size = len(full) // 2 if cut == "half" else cut
    path = tmp_path / "Image"
    path.write_bytes(full[:size])
    p = pyaxvisor("run", "--arch", arch, "-kernel", path)
    if size < TABLE_END:
        message = f"{path}: truncated: the EFI stub's PE section table needs {TABLE_END} bytes, " \
                  f"the file has {size}"
    else:
        message = f"{path}: truncated: the EFI stub's PE header places {len(full)} bytes of " \
                  f"kernel in the file, the file has {size}"
    refused(p, ERROR, message)
    gz = tmp_path / "Image.gz"
    gz.write_bytes(gzip.compress(full[:size]))
    refused(pyaxvisor("run", "--arch", arch, "-kernel", gz), ERROR, f"{gz}: truncated")


def _space(base: int, size: int) -> tuple[HostHal, AddrSpace]:
    hal = HostHal(size + 8 * MiB)
    space = AddrSpace(hal, nested_page_table(hal, "riscv64"))
    space.map_ram(GuestPhysAddr(base), size)
    return hal, space


@pytest.mark.parametrize(("layout", "load"), [(ARM64, load_arm64_image),
                                              (RISCV, load_riscv_image)])
def test_a_whole_efi_stub_image_loads_and_its_file_end_is_its_last_section(layout, load):
    image = efi_image(layout, 0x20_0000)
    assert image_file_end(image, "Image") == len(image)
    # a signed kernel: an Authenticode signature after the last section is fine
    signed = image + b"SIGNATURE" * 50
    assert image_file_end(signed, "Image") == len(image)
    hal, space = _space(0x8000_0000, 32 * MiB)
    with hal:
        loaded = load(space, signed, ram_base=0x8000_0000, ram_size=32 * MiB, path="Image")
        assert loaded.start == 0x8000_0000 + layout["text_offset"]
        assert space.read(GuestPhysAddr(loaded.start), 64) == signed[:64]
        space.destroy()
    # an Image without an EFI stub: nothing tells its file size
    assert image_file_end(plain_image(layout, 0x10_0000), "Image") is None


@pytest.mark.parametrize(("layout", "load"), [(ARM64, load_arm64_image),
                                              (RISCV, load_riscv_image)])
def test_a_damaged_pe_header_is_refused_before_guest_memory_is_written(layout, load):
    hal, space = _space(0x8000_0000, 32 * MiB)
    with hal:
        before = space.read(GuestPhysAddr(0x8000_0000), 4 * MiB)
        for data, message in [
            (efi_image(layout, signature=b"PX\0\0"),
             "\"MZ\" (an EFI stub) but no PE signature at 0x40"),
            (efi_image(layout)[:0x50], "truncated: the EFI stub's PE header at 0x40 needs 88"),
        ]:
            with pytest.raises(ImageError, match=re.escape(message)):
                load(space, data, ram_base=0x8000_0000, ram_size=32 * MiB, path="Image")
        assert space.read(GuestPhysAddr(0x8000_0000), 4 * MiB) == before
        space.destroy()


# -- loader errors name the file ---------------------------------------------------------------

def _zboot(payload: bytes, comp: bytes = b"gzip", offset: int = 0x40) -> bytes:
    head = struct.pack("<2s2x4sII8x32s", b"MZ", b"zimg", offset, len(payload), comp)
    return head.ljust(offset, b"\0") + payload


def _elf(machine: int) -> bytes:
    elf = bytearray(64)
    elf[:4] = b"\x7fELF"
    elf[4], elf[5], elf[6] = 2, 1, 1
    struct.pack_into("<HHI", elf, 16, 2, machine, 1)
    struct.pack_into("<H", elf, 52, 64)
    return bytes(elf)


_BZIMAGE = bytes(0x1FE) + b"\x55\xaa" + b"\xeb\x66" + b"HdrS" + bytes(0x200)
AARCH64_BAD = {
    "corrupt-gzip": (b"\x1f\x8b\x08\x00" + b"garbage" * 10, "gzip data is corrupt or truncated"),
    "bzimage": (_BZIMAGE, "this is an x86 Linux bzImage"),
    "riscv-image": (plain_image(RISCV, 0x10_0000), "this is a RISC-V Linux Image"),
    "uimage": (b"\x27\x05\x19\x56" + bytes(60), "a U-Boot legacy uImage"),
    "dtb": (b"\xd0\x0d\xfe\xed" + bytes(60), "a device tree blob, not a kernel"),
    "xz": (b"\xfd7zXZ\x00" + bytes(58), "xz-compressed data (only gzip is decompressed"),
    "zboot-zstd": (_zboot(b"x" * 64, b"zstd"), "EFI zboot image with a 'zstd' payload"),
    "zboot-outside": (_zboot(b"", offset=0x40)[:0x40] + b"\0" * 8,
                      "EFI zboot payload [0x40, 0x40) lies outside"),
    "elf-x86": (_elf(62), "ELF is built for x86_64 (e_machine EM_X86_64), but the guest is "
                          "aarch64"),
    "elf-truncated": (_elf(183)[:40], "malformed or truncated ELF file"),
    "image-size-small": (plain_image(ARM64, 0x100, body=0x1000),
                         "header image_size 0x100 is smaller than the 0x1040-byte file"),
    "big-endian": (plain_image(ARM64, 0x10_0000, flags=0b1011), "big-endian arm64 kernel"),
    "too-big-for-ram": (plain_image(ARM64, 1 << 40), "kernel needs [0x40080000, 0x10040080000)"),
}


@pytest.mark.parametrize("name", list(AARCH64_BAD))
def test_aarch64_loader_errors_name_the_file(tmp_path, name):
    kernel_refused(tmp_path, "aarch64", *AARCH64_BAD[name])


def kernel_refused(tmp_path: Path, arch: str, data: bytes, message: str) -> None:
    """``data`` as the ``arch`` guest's kernel is refused with ``message``, after the
    file's name (``--arch``: without it the file's own format would choose the board,
    a bzImage x86_64)."""
    path = tmp_path / "kernel.img"
    path.write_bytes(data)
    p = pyaxvisor("run", "--arch", arch, "-kernel", path)
    refused(p, ERROR, f"{path}: ")
    refused(p, ERROR, message)


@pytest.mark.parametrize(("data", "message"), [
    (plain_image(ARM64, 0x10_0000), "this is an arm64 Linux Image (\"ARM\\x64\" at offset 56), "
                                    "not a RISC-V kernel"),
    (plain_image(RISCV, 0), "header image_size is 0; a RISC-V Image must give its size"),
    (gzip.compress(_elf(183)), "ELF is built for aarch64 (e_machine EM_AARCH64), but the guest "
                               "is riscv64"),
])
def test_riscv64_loader_errors_name_the_file(tmp_path, data, message):
    kernel_refused(tmp_path, "riscv64", data, message)


@pytest.mark.kvm
@kvm_only
@pytest.mark.parametrize(("data", "message"), [
    (plain_image(ARM64, 0x10_0000), "this is an arm64 Linux Image"),
    (gzip.compress(_BZIMAGE), "gzip-compressed data holding an x86 bzImage"),
    (_zboot(gzip.compress(b"x" * 100)), "an EFI zboot image"),
    (b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40) + b"PE\0\0" + bytes(64),
     "a PE/EFI executable without a Linux setup header"),
    (bytes(0x202) + b"HdrS" + bytes(0x200), "\"HdrS\" at 0x202 but no 0xAA55 boot flag"),
    (_elf(183), "ELF for AArch64, not x86"),
])
def test_x86_loader_errors_name_the_file(tmp_path, data, message):
    kernel_refused(tmp_path, "x86_64", data, message)


# -- images ------------------------------------------------------------------------------------

def test_images_list_shows_one_set_of_names_and_the_other_spelling(tmp_path):
    p = pyaxvisor("images", "list", env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    names = [line.split()[0] for line in p.stdout.splitlines()]
    assert names == list(images.IMAGES)
    assert all(not name.endswith(("-x86_64", "-aarch64")) for name in names)
    rows = {line.split()[0]: line for line in p.stdout.splitlines()}
    assert "(also linux-x86_64); not fetched" in rows["linux-amd64"]
    assert "(also initramfs-aarch64); not fetched" in rows["initramfs-arm64"]


def test_both_spellings_name_the_same_image():
    for alias, name in [("linux-x86_64", "linux-amd64"), ("initramfs-x86_64", "initramfs-amd64"),
                        ("linux-aarch64", "linux-arm64"), ("u-boot-aarch64", "u-boot-arm64")]:
        assert images.spec(alias) is images.spec(name)
        assert images.image_path(alias) == images.image_path(name)
        assert alias in images.aliases_of(name) and alias in images.aliases_of(alias)
    p = pyaxvisor("images", "fetch", "linux-mips")
    assert p.returncode == 1
    assert "unknown image 'linux-mips'; known images:" in p.stderr


# -- signals -----------------------------------------------------------------------------------

def test_sigint_stops_the_guest_with_status_130(tmp_path):
    code = [0xD2A12001,  # movz x1, #0x900, lsl #16 (the PL011)
            0x52800A40,  # movz w0, #'R'
            0x39000020,  # strb w0, [x1]
            0x14000000]  # b .
    path = tmp_path / "spin.bin"
    path.write_bytes(b"".join(word.to_bytes(4, "little") for word in code))
    proc = subprocess.Popen([sys.executable, "-m", "pyaxvisor.cli", "run", "-kernel", str(path),
                             "--timeout", "60"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.read(1) == b"R"  # the guest runs
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    lines = [line for line in err.decode().splitlines()
             if "software CPU on stock libunicorn" not in line]  # the stock-library notice
    assert "\n".join(lines).strip() == "pyaxvisor: interrupted (SIGINT); the guest was stopped"

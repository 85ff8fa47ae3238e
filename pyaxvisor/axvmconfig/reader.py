"""Reading an AxVisor VM config file into a :class:`~pyaxvisor.vm.config.VmConfig`.

:func:`read_config` reads a file (at most 1 MiB, UTF-8, TOML) and hands its text to
:func:`parse_config`, which checks it in this order, stopping at the first problem:

1. the tables and keys, and every value's kind and range (:mod:`.schema`); the
   vCPU ids and masks against ``cpu_num``; the memory regions (4 KiB aligned, not
   overlapping, known flag bits and map type); that ``entry_point`` and the load
   addresses lie in RAM;
2. the architecture: the ``arch`` argument, else ``[pyaxvisor] arch``, else the
   machine's (``machine`` argument or ``[pyaxvisor] machine``), else what the
   kernel file (or the firmware) says it is built for; and the machine, which its
   board must know;
3. AxVisor's boot-protocol rules, then pyaxvisor's: it loads kernels directly, so
   ``enable_bios = true`` and firmware protocols are refused;
4. what the board can stand for: pyaxvisor has no host devices, so the file may
   only ask for the board's own. Accepted: an emulated console (emu_type 2) or
   interrupt controller (1) inside one of the board's ``device_windows``, which
   describes that device (kept in ``extra["board_devices"]``, written back, not
   built again); on boards that take QEMU's ``-device isa-debug-exit`` (x86_64),
   ``["isa-debug-exit", iobase, iosize, 0, 0, []]`` (a pyaxvisor extension); a
   passthrough device ``["/"]`` (the whole host device tree) or one whose
   ``[base_gpa, base_gpa + length)`` lies in a device window (the emulated device
   stands in); a memory region with the device flag inside a device window (not
   RAM); a virtio device (emu_type 0xE1 block, 0xE2 network card, 0xE3 console) in
   the board's virtio-mmio slot pyaxvisor gives it (see :func:`_virtio`), the block
   device's image being ``[kernel] disk_path``, the network card's host TAP interface
   its row's name and its MAC its ``cfg_list`` (six bytes, or [] for QEMU's default).
   Anything else, and any passthrough address or port range, is refused;
5. the board's own rules (``Board.check``: RAM size and layout, CPU count, ids,
   firmware and a kernel together).

Paths are relative to the config file's directory (``~`` expanded) and become
absolute. Images are not opened, except the kernel's first bytes when nothing
else tells the architecture. Every error is an
:class:`~pyaxvisor.errors.InvalidInput` reading ``"FILE: KEY: PROBLEM"``.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyaxvisor.axvmconfig import schema as S
from pyaxvisor.axvmconfig.schema import Key, span
from pyaxvisor.boards import arches, arches_of_machine, board_class
from pyaxvisor.devices.virtio.tap import check_ifname
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vm.board import Board
from pyaxvisor.vm.config import (
    DeviceSpec,
    ImageSpec,
    MemoryRegion,
    VirtioDeviceSpec,
    VmConfig,
    default_mac,
    format_mac,
    parse_mac,
)

__all__ = ["DEBUG_EXIT", "parse_config", "read_config"]

#: The x86 device a file may ask for as ``["isa-debug-exit", iobase, iosize, 0, 0, []]``.
DEBUG_EXIT = "isa-debug-exit"
FIRMWARE = "pyaxvisor cannot boot through firmware: it loads the kernel directly"


def read_config(path: Path, *, arch: str | None = None, machine: str | None = None
                ) -> VmConfig:
    """The VM the config file at ``path`` describes (see the module doc)."""
    path = Path(path)
    return parse_config(_read_text(path), source=path, arch=arch, machine=machine)


def _read_text(path: Path) -> str:
    """The file's text: opened first (without blocking on a FIFO), then judged by what
    was opened, so the checks and the read see the same file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InvalidInput(f"{path}: is a directory, not a VM config file")
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{path}: is not a regular file")
        with open(fd, "rb", closefd=False) as stream:
            raw = b"" if info.st_size > S.MAX_FILE_SIZE else stream.read(S.MAX_FILE_SIZE + 1)
    finally:
        os.close(fd)
    if info.st_size > S.MAX_FILE_SIZE or len(raw) > S.MAX_FILE_SIZE:
        raise InvalidInput(f"{path}: the file is more than 1 MiB; a VM config file is at "
                           "most 1 MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                           f"{exc.start})") from None


@dataclass
class _Draft:
    """What the file says, checked on its own, before the board is known."""

    source: Path
    fields: dict[str, Any] = field(default_factory=dict)  # VmConfig keyword arguments
    extra: dict[str, object] = field(default_factory=dict)
    own: dict[str, str] = field(default_factory=dict)  # [pyaxvisor]
    cpu_num: int = 1
    disk: Path | None = None  # [kernel] disk_path: the virtio-blk device's image

    def key(self, table: str, name: str = "") -> Key:
        return Key(self.source, f"[{table}] {name}" if name else f"[{table}]")


def parse_config(text: str, *, source: Path, arch: str | None = None,
                 machine: str | None = None) -> VmConfig:
    """The VM ``text`` (a config file read from ``source``) describes."""
    source = Path(source)
    draft = _Draft(source)
    tables = _tables(text, draft)
    _base(tables["base"], draft)
    _kernel(tables["kernel"], draft)
    _devices(tables["devices"], draft)
    for name in ("arch", "machine"):
        if name in tables.get("pyaxvisor", {}):
            draft.own[name] = S.string(tables["pyaxvisor"][name], draft.key("pyaxvisor", name))
    cls = _board(draft, arch, machine)
    _check_boot_protocol(draft, cls.arch)
    _check_board_devices(draft, cls)
    if draft.fields["cpu_ids"] is None:
        draft.fields["cpu_ids"] = cls.default_cpu_ids(draft.cpu_num)
    config = VmConfig(**draft.fields, source=source, extra=draft.extra)
    cls(config).check()
    return config


def _tables(text: str, draft: _Draft) -> dict[str, dict[str, Any]]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{draft.source}: TOML syntax error: {exc}") from None
    known = ", ".join(f"[{t}]" for t in S.TABLES)
    for name, value in doc.items():
        if name not in S.TABLES:
            if isinstance(value, dict):
                raise draft.key(name).error(f"unknown table (known: {known})")
            raise Key(draft.source, name).error(f"a key outside the tables (keys belong in "
                                                f"{known})")
        if not isinstance(value, dict):
            raise Key(draft.source, name).error(f"expected the table [{name}], found "
                                                f"{S.show(value)}")
        spec = S.TABLES[name]
        for k in value:
            if k not in spec.keys:
                raise draft.key(name, k).error(f"unknown key (known: {', '.join(spec.keys)})")
        for k in spec.required:
            if k not in value:
                raise draft.key(name, k).error(f"missing; [{name}] requires "
                                               f"{', '.join(spec.required)}")
    for name in S.REQUIRED_TABLES:
        if name not in doc:
            keys = ", ".join(S.TABLES[name].required)
            if name == "devices":
                keys = "at least emu_devices = [] and passthrough_devices = []"
            raise draft.key(name).error(f"missing table; AxVisor requires it ({keys})")
    return doc


def _base(t: dict[str, Any], draft: _Draft) -> None:
    f = draft.fields
    f["id"] = S.integer(t["id"], draft.key("base", "id"))
    f["name"] = S.string(t["name"], draft.key("base", "name"))
    key = draft.key("base", "vm_type")
    f["vm_type"] = S.integer(t["vm_type"], key)
    if f["vm_type"] not in S.VM_TYPES:
        raise key.error(f"unknown VM type {f['vm_type']} "
                        f"({', '.join(f'{n} {v}' for n, v in S.VM_TYPES.items())})")
    key = draft.key("base", "cpu_num")
    cpu_num = S.integer(t["cpu_num"], key)
    if not 1 <= cpu_num <= S.MAX_CPUS:
        raise key.error(f"{cpu_num} vCPUs; a VM has 1..{S.MAX_CPUS}")
    draft.cpu_num = cpu_num
    f["cpu_ids"] = S.per_cpu(t.get("phys_cpu_ids"), draft.key("base", "phys_cpu_ids"), cpu_num)
    f["cpu_sets"] = S.per_cpu(t.get("phys_cpu_sets"), draft.key("base", "phys_cpu_sets"),
                            cpu_num)


def _path(value: object, key: Key, draft: _Draft) -> Path:
    text = S.string(value, key)
    if not text:
        raise key.error("the path is empty")
    path = Path(text).expanduser()
    return path if path.is_absolute() else draft.source.parent.absolute() / path


def _kernel(t: dict[str, Any], draft: _Draft) -> None:
    f, extra = draft.fields, draft.extra
    f["memory"] = S.memory_regions(t["memory_regions"], draft.key("kernel", "memory_regions"))
    ram = [r for r in f["memory"] if r.is_ram]
    if not ram:
        raise draft.key("kernel", "memory_regions").error(
            "no RAM: every region has the device flag (16)")
    addrs = {name: _address(t[name], draft.key("kernel", name), ram)
             for name in ("entry_point", "kernel_load_addr", "dtb_load_addr",
                          "ramdisk_load_addr") if name in t}
    if "bios_load_addr" in t:  # firmware may run from flash, outside RAM
        addrs["bios_load_addr"] = S.integer(t["bios_load_addr"],
                                          draft.key("kernel", "bios_load_addr"))
    f["entry"] = addrs.get("entry_point")
    paths = {name: _path(t[name], draft.key("kernel", name), draft)
             for name in ("kernel_path", "bios_path", "dtb_path", "ramdisk_path",
                          "uefi_firmware_path", "disk_path") if name in t}
    f["kernel"] = ImageSpec(paths["kernel_path"], addrs.get("kernel_load_addr"))
    for image, spec in (("bios", "bios"), ("initrd", "ramdisk"), ("dtb", "dtb")):
        path, load = paths.get(f"{spec}_path"), addrs.get(f"{spec}_load_addr")
        f[image] = ImageSpec(path, load) if path is not None else None
        if path is None and load is not None:
            if spec == "ramdisk":
                raise draft.key("kernel", "ramdisk_load_addr").error(
                    "given without ramdisk_path")
            if spec == "dtb":
                f["dtb_addr"] = load  # where the board's generated device tree goes
            else:
                extra[f"{spec}_load_addr"] = load  # UEFI firmware's place (recorded)
    f["cmdline"] = S.string(t.get("cmdline", ""), draft.key("kernel", "cmdline"))
    draft.disk = paths.get("disk_path")
    if "uefi_firmware_path" in paths:
        extra["uefi_firmware_path"] = paths["uefi_firmware_path"]
    for name, choices in (("image_location", S.IMAGE_LOCATIONS),
                          ("boot_protocol", S.BOOT_PROTOCOLS)):
        if name in t:
            extra[name] = S.choice(t[name], draft.key("kernel", name), choices)
    if "enable_bios" in t:
        extra["enable_bios"] = S.boolean(t["enable_bios"], draft.key("kernel", "enable_bios"))


def _address(value: object, key: Key, ram: list[MemoryRegion]) -> int:
    addr = S.integer(value, key)
    if not any(r.gpa <= addr < r.end for r in ram):
        spans = ", ".join(span(r.gpa, r.end) for r in ram)
        raise key.error(f"{addr:#x} is not in guest RAM (the RAM regions: {spans})")
    return addr


def _devices(t: dict[str, Any], draft: _Draft) -> None:
    f = draft.fields
    key = draft.key("devices", "emu_devices")
    f["devices"] = tuple(S.emu_device(item, key[i])
                         for i, item in enumerate(S.array(t["emu_devices"], key)))
    key = draft.key("devices", "passthrough_devices")
    f["passthrough"] = tuple(S.passthrough_device(item, key[i])
                             for i, item in enumerate(S.array(t["passthrough_devices"], key)))
    for name, layout in (("passthrough_addresses", S.ADDRESS_ROW),
                         ("passthrough_ports", S.PORT_ROW)):
        key = draft.key("devices", name)
        f[name] = tuple(S.address_range(item, key[i], layout)
                        for i, item in enumerate(S.array(t.get(name, []), key)))
    key = draft.key("devices", "excluded_devices")
    f["excluded_devices"] = tuple(
        tuple(S.string(p, key[i]) for p in S.array(group, key[i]))
        for i, group in enumerate(S.array(t.get("excluded_devices", []), key)))
    f["interrupt_mode"] = S.choice(t.get("interrupt_mode", "no_irq"),
                                 draft.key("devices", "interrupt_mode"), S.INTERRUPT_MODES)
    if "address_space_policy" in t:
        draft.extra["address_space_policy"] = S.choice(
            t["address_space_policy"], draft.key("devices", "address_space_policy"),
            S.ADDRESS_SPACE_POLICIES)


def _board(draft: _Draft, arch: str | None, machine: str | None) -> type[Board]:
    """The board class for the architecture and machine (see the module doc); sets the
    ``arch`` and ``machine`` fields."""
    machine_key = None if machine else draft.key("pyaxvisor", "machine")
    machine = machine or draft.own.get("machine")
    if arch is None and "arch" in draft.own:
        arch = draft.own["arch"]
        if arch not in arches():
            raise draft.key("pyaxvisor", "arch").error(
                f"no board emulates {arch!r} (choose one of {', '.join(arches())})")
    elif arch is None:
        candidates = arches_of_machine(machine)
        # one architecture has that machine; or several (virt): the image decides
        arch = candidates[0] if len(candidates) == 1 else _guess_arch(draft)
        if candidates and arch not in candidates:
            arch = candidates[0]  # its board refuses what the image is not
    elif arch not in arches():
        raise InvalidInput(f"{draft.source}: no board emulates {arch!r} (choose one of "
                           f"{', '.join(arches())})")
    cls = board_class(arch, machine)
    try:
        cls.check_machine(machine, None)
    except InvalidInput as exc:
        if machine_key is not None:
            raise machine_key.error(str(exc)) from None
        raise InvalidInput(f"{draft.source}: {exc}") from None
    draft.fields["arch"] = arch
    draft.fields["machine"] = (machine or "").split(",")[0] or cls.machines[0]
    return cls


def _guess_arch(draft: _Draft) -> str:
    """The architecture the kernel (else the firmware) file says it is for."""
    from pyaxvisor.loaders.detect import GUESS_BYTES, guess_arch

    fix = (f"add [pyaxvisor] arch = \"{arches()[0]}\" (or {', '.join(arches()[1:])}) or "
           "pass --arch")
    images = [(name, draft.fields[image].path) for name, image in
              (("kernel_path", "kernel"), ("bios_path", "bios")) if draft.fields[image]]
    for name, path in images:
        key = draft.key("kernel", name)
        why = f"(pyaxvisor reads it to tell the guest architecture; or {fix})"
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open
                raise key.error(f"{path} is not a regular file {why}")
            with open(path, "rb") as stream:
                guess = guess_arch(stream.read(GUESS_BYTES))
        except OSError as exc:
            raise key.error(f"{path}: {exc.strerror} {why}") from None
        if guess is not None:
            if guess not in arches():
                raise key.error(f"{path} is a {guess} kernel; pyaxvisor emulates "
                                f"{', '.join(arches())}")
            return guess
    files = " or ".join(str(path) for _, path in images)
    raise InvalidInput(f"{draft.source}: cannot tell the guest architecture: {files} does "
                       f"not say what it is built for (a raw binary or compressed data); "
                       f"{fix}")


def _check_boot_protocol(draft: _Draft, arch: str) -> None:
    """AxVisor's rules for ``enable_bios`` and ``boot_protocol``, then pyaxvisor's: no
    firmware boot at all."""
    protocol, bios = draft.extra.get("boot_protocol"), draft.extra.get("enable_bios", False)
    key = draft.key("kernel", "boot_protocol")
    if protocol in ("multiboot", "uefi"):
        if not bios:
            raise key.error("boot_protocol requires enable_bios = true")
        if arch != "x86_64":
            raise key.error(f"{protocol} boot is for x86_64 guests, not {arch}")
        if protocol == "uefi" and "uefi_firmware_path" not in draft.extra \
                and draft.fields["bios"] is None:
            raise key.error("uefi needs uefi_firmware_path or bios_path")
        if protocol == "uefi" and "bios_load_addr" not in draft.extra \
                and (draft.fields["bios"] is None or draft.fields["bios"].load_addr is None):
            raise key.error("uefi needs bios_load_addr")
        raise key.error(f"{FIRMWARE} (boot_protocol = \"direct\", or leave it out)")
    if protocol == "direct" and bios:
        raise key.error("direct boot conflicts with enable_bios = true")
    if bios:
        raise draft.key("kernel", "enable_bios").error(
            f"{FIRMWARE} (enable_bios = false, or leave it out)")


def _windows(cls: type[Board]) -> str:
    return ", ".join(f"{name} {span(b, b + s)}" for name, (b, s) in cls.device_windows.items())


def _check_board_devices(draft: _Draft, cls: type[Board]) -> None:
    """Step 4 of the module doc: devices, passthrough and device regions must be the
    board's own."""
    f, board = draft.fields, f"the {cls.machines[0]} board"

    def inside(base: int, length: int) -> bool:
        return any(b <= base and base + length <= b + s
                   for b, s in cls.device_windows.values())

    ports = DEBUG_EXIT in cls.device_types
    kept, described, virtio = [], [], []
    for i, dev in enumerate(f["devices"]):
        key = draft.key("devices", "emu_devices")[i]
        if ports and dev.name == DEBUG_EXIT:
            if (dev.irq, dev.emu_type, dev.cfg) != (0, 0, ()):
                raise key.error(f"write {DEBUG_EXIT} as [\"{DEBUG_EXIT}\", iobase, iosize, 0, "
                                "0, []]")
            if dev.length not in (1, 2, 4) or dev.base + dev.length > 0x1_0000:
                raise key.error(f"{DEBUG_EXIT} takes 1, 2 or 4 ports below 0x10000, not "
                                f"{dev.length} at {dev.base:#x}")
            kept.append(dev)
        elif dev.emu_type in S.VIRTIO_TYPES:
            virtio.append(_virtio(draft, cls, dev, key, virtio))
        elif dev.emu_type in (1, 2) and inside(dev.base, dev.length):
            described.append(dev)
        else:
            also = f"; and {DEBUG_EXIT} on ports" if ports else ""
            raise key.error(f"pyaxvisor cannot provide the {S.EMU_TYPES[dev.emu_type]} "
                            f"{dev.name!r} at {span(dev.base, dev.base + dev.length)}: "
                            f"{board} has {_windows(cls)} (a console or interrupt "
                            f"controller there describes it){also}")
    f["devices"], f["virtio"] = tuple(kept), tuple(virtio)
    if draft.disk is not None and not any(spec.kind == "blk" for spec in virtio):
        raise draft.key("kernel", "disk_path").error(
            "no virtio block device (emu_type 0xE1) in [devices] emu_devices to hold the disk")
    if described:
        draft.extra["board_devices"] = tuple(described)
    no_host = "it has no host devices"
    for i, pt in enumerate(f["passthrough"]):
        if (pt.name == "/" and pt.length == 0) or (pt.length and inside(pt.base_gpa,
                                                                        pt.length)):
            continue
        where = f" at {span(pt.base_gpa, pt.base_gpa + pt.length)}" if pt.length else ""
        raise draft.key("devices", "passthrough_devices")[i].error(
            f"pyaxvisor cannot pass through {pt.name!r}{where}: {no_host}, and {board}'s "
            f"emulated ones are {_windows(cls)} ([\"/\"] stands for them all)")
    for name, what in (("passthrough_addresses", "memory"), ("passthrough_ports", "ports")):
        if f[name]:
            base, length = f[name][0]
            raise draft.key("devices", name)[0].error(
                f"pyaxvisor cannot pass through host {what} {span(base, base + length)}: "
                f"{no_host}")
    for i, region in enumerate(f["memory"]):
        if not region.is_ram and not inside(region.gpa, region.size):
            raise draft.key("kernel", "memory_regions")[i].error(
                f"pyaxvisor cannot map host device memory {span(region.gpa, region.end)}: "
                f"{no_host}; a region with the device flag (16) must lie in one of "
                f"{board}'s device windows: {_windows(cls)}")


def _virtio(draft: _Draft, cls: type[Board], dev: DeviceSpec, key: Key,
            before: list[VirtioDeviceSpec]) -> VirtioDeviceSpec:
    """The virtio device of an ``emu_devices`` row. AxVisor lets the file place it;
    pyaxvisor's boards have a fixed row of slots, filled in QEMU's order (the first
    device in the last slot), so the row must name the slot its place in that order
    gives it: that base, a length within the slot, the slot's interrupt (or 0)."""
    kind = S.VIRTIO_TYPES[dev.emu_type]
    board = f"the {cls.machines[0]} board"
    slots = getattr(cls, "virtio_slots", None)
    if slots is None:
        raise key.error(f"{board} has no virtio-mmio transports")
    if len(before) >= slots.count:
        raise key.error(f"{board} has {slots.count} virtio-mmio transports, all taken")
    slot = slots.slot_for(len(before))
    base, irq = slots.slot_base(slot), slots.slot_irq(slot)
    if dev.base != base:
        raise key.error(
            f"base_gpa {dev.base:#x}: pyaxvisor puts virtio device {len(before) + 1} in the "
            f"slot at {base:#x} (irq {irq}); {board}'s virtio-mmio slots are "
            f"{slots.count} at {slots.base:#x} + n * {slots.stride:#x}, filled from the "
            "last (QEMU's order)")
    if not 0 < dev.length <= slots.stride:
        raise key.error(f"length {dev.length:#x}: a virtio-mmio slot of {board} is "
                        f"{slots.stride:#x} bytes")
    if dev.irq not in (0, irq):
        raise key.error(f"irq_id {dev.irq}: the slot at {base:#x} has irq {irq} (or write 0)")
    if kind == "net":
        return _virtio_net(dev, key, sum(1 for spec in before if spec.kind == "net"))
    if dev.cfg:
        raise key.error("cfg_list: a virtio device takes no cfg words (write [])")
    if kind != "blk":
        return VirtioDeviceSpec(kind, id=dev.name)
    disk = draft.key("kernel", "disk_path")
    if draft.disk is None:
        raise disk.error(f"missing; the virtio block device {dev.name!r} "
                         f"({key.name}) needs its disk image")
    if any(spec.kind == "blk" for spec in before):
        raise key.error("a second virtio block device: [kernel] disk_path gives one disk")
    return VirtioDeviceSpec("blk", image=draft.disk, id=dev.name)


def _virtio_net(dev: DeviceSpec, key: Key, index: int) -> VirtioDeviceSpec:
    """A virtio-net row (0xE2): its name is the host TAP interface; ``cfg_list`` is
    empty (QEMU's default MAC for the ``index``-th card) or the card's six MAC bytes."""
    try:
        check_ifname(dev.name)
    except InvalidInput as exc:
        raise key.error(f"name: the host TAP interface of a virtio-net device; {exc}") from None
    if not dev.cfg:
        return VirtioDeviceSpec("net", id=dev.name, ifname=dev.name, mac=default_mac(index))
    if len(dev.cfg) != 6 or not all(0 <= b <= 0xFF for b in dev.cfg):
        raise key.error(f"cfg_list {list(dev.cfg)}: a virtio-net device takes [] or its six "
                        "MAC address bytes (0x52, 0x54, 0, 0x12, 0x34, 0x56)")
    try:
        mac = format_mac(parse_mac(format_mac(bytes(dev.cfg))))
    except InvalidInput as exc:
        raise key.error(f"cfg_list: {exc}") from None
    return VirtioDeviceSpec("net", id=dev.name, ifname=dev.name, mac=mac)

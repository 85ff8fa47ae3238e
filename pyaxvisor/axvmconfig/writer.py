"""Writing a :class:`~pyaxvisor.vm.config.VmConfig` as an AxVisor VM config file, and
making one for a kernel file.

:func:`render` writes AxVisor's layout (``[base]``, ``[kernel]``, ``[devices]``)
with a comment before each group of keys, addresses in hex with an underscore
every four digits (``0x8000_0000``) as AxVisor's own files have them, small
numbers in decimal, and a ``[pyaxvisor]`` table with the architecture and the
machine. Every path is written absolute, so the file means the same wherever it
is moved. What the layout cannot hold (the CPU model, a timeout, statistics) is
left out: those are options of a run. Virtio devices become ``emu_devices`` rows
in the board's slots (0xE1 block, its image ``disk_path``; 0xE2 network card, its
TAP interface the row's name and its MAC the ``cfg_list``; 0xE3 console); one the
layout cannot hold (virtio-rng, a read-only or second disk) is an error. The values
in ``VmConfig.extra`` that the reader records are written back, so reading what
:func:`render` wrote gives an equal configuration (apart from ``source``).

:func:`generate` makes the configuration of a VM for a kernel file on a board's
default memory map and CPU ids. AxVisor's layout needs the kernel's load address
and entry point; the boards hold those against the image's format
(:func:`pyaxvisor.boards.images.check_address`), so :func:`generate` loads the
kernel into a scratch guest address space with the loader the board would use
and writes down where it went: on x86_64 the ``kernel_start`` and ``entry`` of
the bzImage, Multiboot, ELF or flat loader (a flat binary at 1 MiB); on aarch64
an ELF's lowest segment and entry, an arm64 Image at ``align_up(RAM base, 2 MiB)
+ text_offset``, a flat binary at RAM base + 0x80000. The initrd and the device
tree get no load address: the board places them by the kernel's format.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from pyaxvisor import __version__
from pyaxvisor.axvmconfig import schema as S
from pyaxvisor.axvmconfig.schema import toml_string
from pyaxvisor.boards import board_class
from pyaxvisor.errors import InvalidInput
from pyaxvisor.mm.addrspace import AddrSpace
from pyaxvisor.vm.config import (
    DeviceSpec,
    ImageSpec,
    MemoryRegion,
    PassthroughSpec,
    VmConfig,
    parse_mac,
)

__all__ = ["CPU_ID_NAMES", "flag_letters", "generate", "hex_address", "render", "size_text"]

#: The hardware id each architecture gives its vCPUs, for comments.
CPU_ID_NAMES = {"aarch64": "MPIDR affinity", "x86_64": "APIC ID", "riscv64": "hart id"}


def hex_address(value: int) -> str:
    """``value`` in hex with ``_`` between groups of four digits: ``0x8000_0000``."""
    digits = f"{value:x}"
    groups = [digits[max(0, end - 4):end] for end in range(len(digits), 0, -4)]
    return "0x" + "_".join(reversed(groups))


def _number(value: int) -> str:
    return str(value) if value < 10 else hex_address(value)


def _path(path: Path) -> str:
    return toml_string(str(Path(path).expanduser().absolute()))


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return hex_address(value)
    if isinstance(value, Path):
        return _path(value)
    return toml_string(str(value))


def size_text(size: int) -> str:
    """``size`` in the largest binary unit that divides it: ``512 MiB``."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size:#x} bytes"


def flag_letters(flags: int) -> str:
    """``rwx---``: a letter per MappingFlags bit (read, write, execute, user, device,
    uncached), ``-`` where it is clear."""
    return "".join(letter if flags & bit else "-" for bit, _name, letter in S.FLAG_BITS)


def _rows(name: str, rows: list[tuple[str, str]]) -> list[str]:
    """``name = [ row, # comment ... ]``."""
    if not rows:
        return [f"{name} = []"]
    lines = [f"{name} = ["]
    for text, comment in rows:
        lines.append(f"  {text},{f' # {comment}' if comment else ''}")
    return [*lines, "]"]


def _region(r: MemoryRegion) -> tuple[str, str]:
    kind = f"RAM, {S.MAP_TYPE_NAMES[r.map_type]}" if r.is_ram else "device window"
    return (f"[{hex_address(r.gpa)}, {hex_address(r.size)}, {hex_address(r.flags)}, "
            f"{int(r.map_type)}]", f"{size_text(r.size)} {kind}, {flag_letters(r.flags)}")


def _device(d: DeviceSpec) -> tuple[str, str]:
    cfg = ", ".join(_number(w) for w in d.cfg)
    return (f"[{toml_string(d.name)}, {hex_address(d.base)}, {hex_address(d.length)}, "
            f"{_number(d.irq)}, {hex_address(d.emu_type)}, [{cfg}]]",
            S.EMU_TYPES.get(d.emu_type, ""))


def render(config: VmConfig) -> str:
    """``config`` as an AxVisor VM config file (see the module doc)."""
    kernel = config.kernel
    if kernel is None:
        raise InvalidInput("an AxVisor VM config names its kernel; this configuration has "
                           "none (generate() writes one for a kernel file)")
    out = [f"# AxVisor VM config, written by pyaxvisor {__version__}.",
           "# AxVisor reads [base], [kernel] and [devices]; [pyaxvisor] names the board that",
           "# runs the VM under pyaxvisor (AxVisor's is the one it was built for).", "",
           "[pyaxvisor]", f"arch = {toml_string(config.arch)}",
           f"machine = {toml_string(config.machine)}"]
    for table in (_base_table, _kernel_table, _devices_table):
        out += ["", *table(config)]
    return "\n".join(out) + "\n"


def _base_table(config: VmConfig) -> list[str]:
    out = ["[base]", "# The VM's id and name; vm_type: 0 host VM, 1 RTOS, 2 Linux.",
           f"id = {config.id}", f"name = {toml_string(config.name)}", f"vm_type = {config.vm_type}",
           f"# vCPUs and each one's hardware id "
           f"({CPU_ID_NAMES.get(config.arch, 'hardware id')}).",
           f"cpu_num = {config.cpu_num}",
           f"phys_cpu_ids = [{', '.join(_number(i) for i in config.cpu_ids)}]"]
    if config.cpu_sets is not None:
        out += ["# The host CPUs each vCPU may run on, one bit mask per vCPU.",
                f"phys_cpu_sets = [{', '.join(_number(m) for m in config.cpu_sets)}]"]
    return out


def _kernel_table(config: VmConfig) -> list[str]:
    kernel, extra = config.kernel, config.extra
    assert kernel is not None
    out = ["[kernel]", "# Where vCPU 0 starts; the kernel image and where it is loaded."]
    if config.entry is None or kernel.load_addr is None:
        out.append("# (entry_point / kernel_load_addr left out: the kernel's format says.)")
    if config.entry is not None:
        out.append(f"entry_point = {hex_address(config.entry)}")
    out.append(f"kernel_path = {_path(kernel.path)}")
    if kernel.load_addr is not None:
        out.append(f"kernel_load_addr = {hex_address(kernel.load_addr)}")
    images = (("bios", config.bios, "Firmware", "UEFI firmware goes (recorded)"),
              ("ramdisk", config.initrd, "The initial ramdisk", ""),
              ("dtb", config.dtb, "The device tree",
               "AxVisor puts the device tree it generates (recorded; pyaxvisor's board "
               "places its own)"))
    for key, spec, what, bare in images:
        load = spec.load_addr if spec is not None else \
            config.dtb_addr if key == "dtb" else extra.get(f"{key}_load_addr")
        if spec is not None:
            placed = "" if load is not None else " (placed by the kernel's format)"
            out += [f"# {what}{placed}.", f"{key}_path = {_path(spec.path)}"]
        elif load is not None:
            out.append(f"# Where {bare}.")
        if load is not None:
            out.append(f"{key}_load_addr = {hex_address(load)}")
    disks = [spec.image for spec in config.virtio if spec.kind == "blk" and spec.image]
    if disks:
        out += ["# The virtio block device's disk image.", f"disk_path = {_path(disks[0])}"]
    if config.cmdline:
        out += ["# The kernel command line.", f"cmdline = {toml_string(config.cmdline)}"]
    recorded = [f"{k} = {_value(extra[k])}" for k, table in S.EXTRA_KEYS.items()
                if table == "kernel" and k in extra and not k.endswith("_load_addr")]
    if recorded:
        out += ["# Recorded for AxVisor; pyaxvisor loads the kernel directly from files.",
                *recorded]
    out += ["# Guest memory: [gpa, size, flags, map_type]; flags: read 1, write 2, execute 4,",
            "# user 8, device 16, uncached 32; map_type: 0 alloc, 1 identical, 2 reserved.",
            *_rows("memory_regions", [_region(r) for r in config.memory])]
    return out


def _devices_table(config: VmConfig) -> list[str]:
    extra = config.extra
    described = cast("tuple[DeviceSpec, ...]", extra.get("board_devices", ()))
    devices = [*described, *config.devices, *_virtio_rows(config)]
    out = ["[devices]", "# Emulated devices: [name, base_gpa, length, irq_id, emu_type, "
            "[cfg words]].", *_rows("emu_devices", [_device(d) for d in devices]),
            "# Passed-through devices: [name, base_gpa, base_hpa, length, irq_id], or [\"/\"]",
            "# for the whole host device tree (pyaxvisor's board devices stand in for them).",
            *_rows("passthrough_devices", [_passthrough(p) for p in config.passthrough])]
    for name, ranges in (("passthrough_addresses", config.passthrough_addresses),
                         ("passthrough_ports", config.passthrough_ports)):
        if ranges:
            out += _rows(name, [(f"[{hex_address(b)}, {hex_address(n)}]", "")
                                for b, n in ranges])
    if config.excluded_devices:
        out += ["# Host device-tree nodes the guest does not get.",
                *_rows("excluded_devices", [("[" + ", ".join(toml_string(p) for p in group) + "]",
                                             "") for group in config.excluded_devices])]
    out += ["# Interrupts: no_irq, emu (emulated controller) or passthrough.",
            f"interrupt_mode = {toml_string(config.interrupt_mode)}"]
    if "address_space_policy" in extra:
        out.append(f"address_space_policy = {_value(extra['address_space_policy'])}")
    return out


def _virtio_rows(config: VmConfig) -> list[DeviceSpec]:
    """The virtio devices as ``emu_devices`` rows, each in the slot the board gives it."""
    types = {kind: emu_type for emu_type, kind in S.VIRTIO_TYPES.items()}
    slots = getattr(board_class(config.arch, config.machine), "virtio_slots", None)
    rows = []
    for i, spec in enumerate(config.virtio):
        what = f"virtio device {spec.id!r}" if spec.id else spec.describe()
        blk_again = spec.kind == "blk" and any(s.kind == "blk" for s in config.virtio[:i])
        if spec.kind not in types or spec.read_only or blk_again:
            raise InvalidInput(f"{what}: AxVisor's VM config layout cannot hold it (only a "
                               "writable virtio-blk with disk_path, network cards and a "
                               "virtio console)")
        if slots is None or i >= slots.count:
            raise InvalidInput(f"{what}: the {config.machine} board has no slot for it")
        slot = slots.slot_for(i)
        if spec.kind == "net":  # the name is the TAP, cfg_list the MAC (see the reader)
            rows.append(DeviceSpec(spec.ifname, slots.slot_base(slot), slots.stride,
                                   slots.slot_irq(slot), types["net"],
                                   tuple(parse_mac(spec.mac))))
            continue
        rows.append(DeviceSpec(spec.id or f"virtio-{spec.kind}", slots.slot_base(slot),
                               slots.stride, slots.slot_irq(slot), types[spec.kind]))
    return rows


def _passthrough(p: PassthroughSpec) -> tuple[str, str]:
    if not (p.base_gpa or p.base_hpa or p.length or p.irq):
        return f"[{toml_string(p.name)}]", ""
    return (f"[{toml_string(p.name)}, {hex_address(p.base_gpa)}, {hex_address(p.base_hpa)}, "
            f"{hex_address(p.length)}, {_number(p.irq)}]", "")


# -- generate ------------------------------------------------------------------------------

@contextmanager
def _scratch(arch: str, regions: tuple[MemoryRegion, ...], page_table_args: dict[str, int]
             ) -> Iterator[AddrSpace]:
    """A throw-away guest address space with ``regions`` mapped (host memory is
    committed only where a loader writes)."""
    from pyaxvisor.hal.vcpu_hal import HostHal
    from pyaxvisor.mm.addr import GuestPhysAddr
    from pyaxvisor.mm.nested import nested_page_table

    with HostHal(sum(r.size for r in regions) + (16 << 20)) as hal:
        space = AddrSpace(hal, nested_page_table(hal, arch, **page_table_args))
        try:
            for r in regions:
                space.map_ram(GuestPhysAddr(r.gpa), r.size, r.flags)
            yield space
        finally:
            space.destroy()


def _place_x86(space: AddrSpace, data: bytes, path: str, ram_size: int, cmdline: str,
               initrd: bool) -> tuple[int, int, str]:
    from pyaxvisor.loaders import (
        detect_x86_format,
        load_bzimage,
        load_multiboot,
        load_x86_elf,
        load_x86_raw,
    )
    from pyaxvisor.loaders.image import ImageError

    fmt = detect_x86_format(data, path=path)
    if initrd and fmt not in ("bzimage", "multiboot"):
        raise ImageError(path, "an initrd can only be given to a Linux bzImage or a Multiboot "
                               "kernel")
    if fmt == "bzimage":
        boot = load_bzimage(space, data, ram_size=ram_size, cmdline=cmdline, initrd=None,
                            path=path)
    elif fmt == "multiboot":
        boot = load_multiboot(space, data, ram_size=ram_size, cmdline=cmdline, path=path)
    elif fmt == "elf":
        boot = load_x86_elf(space, data, path=path)
    else:
        boot = load_x86_raw(space, data, path=path)
    return boot.kernel_start, boot.entry, fmt


def _place_arm64(space: AddrSpace, data: bytes, path: str, bank: MemoryRegion
                 ) -> tuple[int, int, str]:
    from pyaxvisor.boards.aarch64_virt.layout import RAW_LOAD_OFFSET
    from pyaxvisor.loaders import detect_format, load_arm64_image, load_elf, load_raw

    fmt = detect_format(data, path=path)
    if fmt == "elf":
        loaded = load_elf(space, data, path=path, expected_machine="aarch64")
    elif fmt == "raw":
        loaded = load_raw(space, data, addr=bank.gpa + RAW_LOAD_OFFSET, path=path)
    else:
        loaded = load_arm64_image(space, data, ram_base=bank.gpa, ram_size=bank.size, path=path)
    return loaded.start, loaded.entry, fmt


def generate(arch: str, *, kernel: Path, initrd: Path | None = None, dtb: Path | None = None,
             memory: int | None = None, smp: int = 1, cmdline: str = "",
             machine: str | None = None) -> VmConfig:
    """The configuration of a VM booting ``kernel`` on ``arch``'s board ``machine`` with
    ``memory`` bytes of RAM (the board's default without) and ``smp`` vCPUs, with the
    kernel's load address and entry point that ``pyaxvisor run`` accepts (see the
    module doc). ``vm_type`` is 2 (Linux) for a Linux kernel format, else 1 (RTOS).
    The board's rules are checked (:meth:`Board.check`)."""
    from pyaxvisor.loaders.image import MAX_IMAGE_SIZE, read_image

    cls = board_class(arch, machine)
    cls.check_machine(machine, None)
    regions = cls.default_memory_regions(cls.default_memory if memory is None else memory)
    cpu_ids = cls.default_cpu_ids(smp)
    kernel = Path(kernel).expanduser().absolute()
    ram_size = sum(r.size for r in regions)
    config = VmConfig(arch=arch, machine=(machine or "").split(",")[0] or cls.machines[0],
                      cpu_ids=cpu_ids, memory=regions, kernel=ImageSpec(kernel))
    cls(config).check()  # the RAM and CPU rules, before anything is read
    data = read_image(kernel, "kernel", limit=min(ram_size, MAX_IMAGE_SIZE))
    bank = min(regions, key=lambda r: r.gpa)
    with _scratch(arch, regions, cls.page_table_args) as space:
        if arch == "x86_64":
            load, entry, fmt = _place_x86(space, data, str(kernel), ram_size, cmdline,
                                          initrd is not None)
        elif arch == "aarch64":
            load, entry, fmt = _place_arm64(space, data, str(kernel), bank)
        else:
            raise InvalidInput(f"generate: no kernel placement rules for {arch}")
    config = config.with_(
        name=kernel.name, vm_type=2 if fmt in ("bzimage", "arm64-image") else 1,
        kernel=ImageSpec(kernel, load), entry=entry, cmdline=cmdline,
        initrd=ImageSpec(Path(initrd).expanduser().absolute()) if initrd else None,
        dtb=ImageSpec(Path(dtb).expanduser().absolute()) if dtb else None,
        interrupt_mode="emu")
    cls(config).check()
    return config

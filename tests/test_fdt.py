"""The AArch64 device tree: decoded back with dtc and with the fdt package's parser."""

from __future__ import annotations

import re
import struct
import subprocess

import fdt
import pytest
from tools import tool

from pyaxvisor.boards.aarch64_virt.fdt import build_aarch64_dtb
from pyaxvisor.errors import InvalidInput

RAM = (0x4000_0000, 256 << 20)
GIC = "/intc@8000000"
UART = "/pl011@9000000"
GPIO = "/pl061@9030000"


# -- decoders ----------------------------------------------------------------------------------

def dtc_decode(blob: bytes, tmp_path) -> str:
    """``dtc -I dtb -O dts`` of the blob; any dtc warning fails the test."""
    path = tmp_path / "vm.dtb"
    path.write_bytes(blob)
    proc = subprocess.run([tool("dtc"), "-I", "dtb", "-O", "dts", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", f"dtc warned:\n{proc.stderr}"
    return proc.stdout


def dts_props(text: str) -> dict[str, dict[str, str | None]]:
    """dtc's DTS output as {node path: {property: raw value text, or None if empty}}."""
    nodes: dict[str, dict[str, str | None]] = {}
    stack: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("/dts-v1/") or line.startswith("/memreserve/"):
            continue
        path = "/" + "/".join(stack[1:])
        if line.endswith("{"):
            name = line[:-1].strip()
            stack.append(name)
            nodes["/" + "/".join(stack[1:])] = {}
        elif line == "};":
            stack.pop()
        else:
            prop = line.rstrip(";")
            if " = " in prop:
                key, value = prop.split(" = ", 1)
                nodes[path][key] = value
            else:
                nodes[path][prop] = None
    return nodes


def cells(value: str | None) -> list[int]:
    """``<0x01 0x0d ...>`` -> [1, 13, ...]."""
    assert value is not None and value.startswith("<") and value.endswith(">"), value
    return [int(c, 16) for c in value[1:-1].split()]


def strings(value: str | None) -> list[str]:
    """``"a\\0b"`` -> ["a", "b"]."""
    assert value is not None and value.startswith('"') and value.endswith('"'), value
    return value[1:-1].split("\\0")


def parse(blob: bytes) -> fdt.FDT:
    return fdt.parse_dtb(blob)


def words(tree: fdt.FDT, path: str, name: str) -> list[int]:
    prop = tree.get_property(name, path)
    assert isinstance(prop, fdt.PropWords), (path, name, prop)
    return list(prop.data)


def strs(tree: fdt.FDT, path: str, name: str) -> list[str]:
    prop = tree.get_property(name, path)
    assert isinstance(prop, fdt.PropStrings), (path, name, prop)
    return list(prop.data)


def u64(hi_lo: list[int]) -> int:
    hi, lo = hi_lo
    return hi << 32 | lo


def node_names(tree: fdt.FDT, path: str = "/") -> list[str]:
    return [n.name for n in tree.get_node(path).nodes]


def build(**kw) -> bytes:
    kw.setdefault("memory", [RAM])
    kw.setdefault("cpus", [0, 1])
    return build_aarch64_dtb(**kw)


# -- content -----------------------------------------------------------------------------------

def test_dtb_header_is_version_17_and_names_the_boot_cpu():
    blob = build(cpus=[2, 3])
    magic, total, *_rest = struct.unpack_from(">7I", blob)
    assert magic == 0xD00DFEED
    assert total == len(blob)
    tree = parse(blob)
    assert tree.header.version == 17
    assert tree.header.last_comp_version == 16
    assert tree.header.boot_cpuid_phys == 2
    assert tree.entries == []


def test_top_level_nodes(tmp_path):
    blob = build()
    tree = parse(blob)
    assert sorted(node_names(tree)) == sorted([
        "psci", "memory@40000000", "pl011@9000000", "pl061@9030000", "gpio-keys",
        "intc@8000000", "cpus", "timer", "pmu", "apb-pclk", "chosen",
        *(n[1:] for n in VIRTIO)])
    dts = dts_props(dtc_decode(blob, tmp_path))
    assert set(dts) == {"/", "/psci", "/memory@40000000", UART, GPIO, "/gpio-keys",
                        "/gpio-keys/poweroff", GIC, "/cpus", "/cpus/cpu@0", "/cpus/cpu@1",
                        "/timer", "/pmu", "/apb-pclk", "/chosen", *VIRTIO}


#: The 32 virtio-mmio transports QEMU's virt board always has, lowest address first.
VIRTIO = [f"/virtio_mmio@{0x0A00_0000 + 0x200 * i:x}" for i in range(32)]


def test_virtio_mmio_nodes_are_qemus(tmp_path):
    blob = build()
    dts = dts_props(dtc_decode(blob, tmp_path))
    # in the tree lowest address first, as QEMU's (it adds them in reverse order)
    assert [n for n in node_names(parse(blob)) if n.startswith("virtio")] == \
        [n[1:] for n in VIRTIO]
    for i, path in enumerate(VIRTIO):
        props = dts[path]
        assert set(props) == {"compatible", "reg", "interrupts", "dma-coherent"}
        assert strings(props["compatible"]) == ["virtio,mmio"]
        assert cells(props["reg"]) == [0, 0x0A00_0000 + 0x200 * i, 0, 0x200]
        # GIC_SPI, SPI 16 + i (INTID 48 + i), IRQ_TYPE_EDGE_RISING: QEMU's specifier
        assert cells(props["interrupts"]) == [0, 16 + i, 1]
        assert props["dma-coherent"] is None
    assert VIRTIO[0] == "/virtio_mmio@a000000" and VIRTIO[-1] == "/virtio_mmio@a003e00"


def test_ram_over_the_virtio_transports_is_refused():
    with pytest.raises(InvalidInput, match="virtio-mmio transports"):
        build(memory=[(0x0A00_0000, 0x10_0000)])


def test_root_properties_and_interrupt_parent_resolves_to_the_gic(tmp_path):
    blob = build()
    dts = dts_props(dtc_decode(blob, tmp_path))
    root = dts["/"]
    assert strings(root["compatible"]) == ["linux,dummy-virt"]
    assert strings(root["model"]) == ["linux,dummy-virt"]
    assert cells(root["#address-cells"]) == [2]
    assert cells(root["#size-cells"]) == [2]
    assert cells(root["interrupt-parent"]) == cells(dts[GIC]["phandle"])

    tree = parse(blob)
    assert strs(tree, "/", "compatible") == ["linux,dummy-virt"]
    assert words(tree, "/", "#address-cells") == [2]
    assert words(tree, "/", "#size-cells") == [2]
    parent = words(tree, "/", "interrupt-parent")[0]
    owners = [n for n in tree.search("phandle", itype=fdt.ItemType.PROP_WORDS)
              if n.value == parent]
    assert len(owners) == 1
    assert owners[0].parent.name == "intc@8000000"


def test_memory_banks_below_and_above_4g(tmp_path):
    banks = [(0x4000_0000, 0x2000_0000), (0x1_0000_0000, 0x1_8000_0000)]
    blob = build(memory=banks)
    dts = dts_props(dtc_decode(blob, tmp_path))
    assert strings(dts["/memory@40000000"]["device_type"]) == ["memory"]
    assert cells(dts["/memory@40000000"]["reg"]) == [0, 0x4000_0000, 0, 0x2000_0000]
    assert cells(dts["/memory@100000000"]["reg"]) == [1, 0, 1, 0x8000_0000]

    tree = parse(blob)
    for base, size in banks:
        path = f"/memory@{base:x}"
        assert strs(tree, path, "device_type") == ["memory"]
        reg = words(tree, path, "reg")
        assert (u64(reg[0:2]), u64(reg[2:4])) == (base, size)


def test_cpu_nodes(tmp_path):
    blob = build(cpus=[0, 1, 2, 3])
    dts = dts_props(dtc_decode(blob, tmp_path))
    assert cells(dts["/cpus"]["#address-cells"]) == [1]
    assert cells(dts["/cpus"]["#size-cells"]) == [0]
    tree = parse(blob)
    assert node_names(tree, "/cpus") == ["cpu@0", "cpu@1", "cpu@2", "cpu@3"]
    for i in range(4):
        path = f"/cpus/cpu@{i}"
        assert strings(dts[path]["device_type"]) == ["cpu"]
        assert strings(dts[path]["compatible"]) == ["arm,cortex-a72"]
        assert strings(dts[path]["enable-method"]) == ["psci"]
        assert cells(dts[path]["reg"]) == [i]
        assert words(tree, path, "reg") == [i]
        assert strs(tree, path, "enable-method") == ["psci"]


def test_cpu_nodes_are_named_by_mpidr_affinity(tmp_path):
    blob = build(cpus=[0x0, 0x100, 0x1_0203])
    dts = dts_props(dtc_decode(blob, tmp_path))
    assert cells(dts["/cpus/cpu@100"]["reg"]) == [0x100]
    assert cells(dts["/cpus/cpu@10203"]["reg"]) == [0x1_0203]


@pytest.mark.parametrize("method", ["hvc", "smc"])
def test_psci_node(tmp_path, method):
    blob = build(psci_method=method)
    dts = dts_props(dtc_decode(blob, tmp_path))["/psci"]
    assert strings(dts["compatible"]) == ["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]
    assert strings(dts["method"]) == [method]
    assert cells(dts["cpu_suspend"]) == [0xC400_0001]
    assert cells(dts["cpu_off"]) == [0x8400_0002]
    assert cells(dts["cpu_on"]) == [0xC400_0003]
    assert cells(dts["migrate"]) == [0xC400_0005]
    tree = parse(blob)
    assert strs(tree, "/psci", "compatible") == ["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]
    assert words(tree, "/psci", "cpu_on") == [0xC400_0003]


def test_gic_node(tmp_path):
    blob = build()
    dts = dts_props(dtc_decode(blob, tmp_path))[GIC]
    assert strings(dts["compatible"]) == ["arm,cortex-a15-gic"]
    assert cells(dts["#interrupt-cells"]) == [3]
    assert "interrupt-controller" in dts and dts["interrupt-controller"] is None
    assert cells(dts["reg"]) == [0, 0x0800_0000, 0, 0x1000, 0, 0x0801_0000, 0, 0x2000]
    tree = parse(blob)
    assert type(tree.get_property("interrupt-controller", GIC)) is fdt.Property
    reg = words(tree, GIC, "reg")
    assert [u64(reg[i:i + 2]) for i in range(0, 8, 2)] == [
        0x0800_0000, 0x1000, 0x0801_0000, 0x2000]


def test_gic_and_uart_addresses_can_move(tmp_path):
    blob = build(gic_dist=0x2f00_0000, gic_cpu=0x2f10_0000, uart_base=0x1c09_0000, uart_spi=5)
    dts = dts_props(dtc_decode(blob, tmp_path))
    assert cells(dts["/intc@2f000000"]["reg"]) == [0, 0x2f00_0000, 0, 0x1000,
                                                   0, 0x2f10_0000, 0, 0x2000]
    assert cells(dts["/pl011@1c090000"]["reg"]) == [0, 0x1c09_0000, 0, 0x1000]
    assert cells(dts["/pl011@1c090000"]["interrupts"]) == [0, 5, 4]
    assert strings(dts["/chosen"]["stdout-path"]) == ["/pl011@1c090000"]
    assert cells(dts["/"]["interrupt-parent"]) == cells(dts["/intc@2f000000"]["phandle"])


@pytest.mark.parametrize("ncpus, flags", [(1, 0x104), (2, 0x304), (4, 0xF04), (8, 0xFF04)])
def test_timer_interrupts_carry_the_cpu_mask(tmp_path, ncpus, flags):
    blob = build(cpus=list(range(ncpus)))
    dts = dts_props(dtc_decode(blob, tmp_path))["/timer"]
    # GIC_PPI (1): secure EL1 13, non-secure EL1 14, virtual 11, hypervisor 10;
    # flags: level-high (4) | CPU mask << 8, as QEMU's virt board encodes them.
    expect = [1, 13, flags, 1, 14, flags, 1, 11, flags, 1, 10, flags]
    assert cells(dts["interrupts"]) == expect
    assert strings(dts["compatible"]) == ["arm,armv8-timer", "arm,armv7-timer"]
    assert "always-on" in dts and dts["always-on"] is None
    assert "clock-frequency" not in dts
    assert words(parse(blob), "/timer", "interrupts") == expect


def test_timer_clock_frequency_only_when_given(tmp_path):
    blob = build(timer_freq_hz=62_500_000)
    assert cells(dts_props(dtc_decode(blob, tmp_path))["/timer"]["clock-frequency"]) == [
        62_500_000]
    assert words(parse(blob), "/timer", "clock-frequency") == [62_500_000]


def test_uart_and_its_clock(tmp_path):
    blob = build()
    dts = dts_props(dtc_decode(blob, tmp_path))
    uart = dts[UART]
    assert strings(uart["compatible"]) == ["arm,pl011", "arm,primecell"]
    assert cells(uart["reg"]) == [0, 0x0900_0000, 0, 0x1000]
    assert cells(uart["interrupts"]) == [0, 1, 4]  # SPI 1, level-high
    assert strings(uart["clock-names"]) == ["uartclk", "apb_pclk"]
    clk = dts["/apb-pclk"]
    assert cells(uart["clocks"]) == cells(clk["phandle"]) * 2
    assert strings(clk["compatible"]) == ["fixed-clock"]
    assert cells(clk["#clock-cells"]) == [0]
    assert cells(clk["clock-frequency"]) == [24_000_000]
    assert cells(clk["phandle"]) != cells(dts[GIC]["phandle"])

    tree = parse(blob)
    clk_phandle = words(tree, "/apb-pclk", "phandle")[0]
    assert words(tree, UART, "clocks") == [clk_phandle, clk_phandle]
    assert words(tree, UART, "interrupts") == [0, 1, 4]
    assert strs(tree, UART, "clock-names") == ["uartclk", "apb_pclk"]


def test_the_power_key_is_pin_3_of_the_pl061_as_in_qemu(tmp_path):
    dts = dts_props(dtc_decode(build(), tmp_path))
    gpio = dts[GPIO]
    assert strings(gpio["compatible"]) == ["arm,pl061", "arm,primecell"]
    assert cells(gpio["reg"]) == [0, 0x0903_0000, 0, 0x1000]
    assert cells(gpio["interrupts"]) == [0, 7, 4]  # SPI 7, level-high
    assert gpio["gpio-controller"] is None
    assert cells(gpio["#gpio-cells"]) == [2]
    assert cells(gpio["clocks"]) == cells(dts["/apb-pclk"]["phandle"])
    assert strings(gpio["clock-names"]) == ["apb_pclk"]
    assert strings(dts["/gpio-keys"]["compatible"]) == ["gpio-keys"]
    key = dts["/gpio-keys/poweroff"]
    assert strings(key["label"]) == ["GPIO Key Poweroff"]
    assert cells(key["linux,code"]) == [116]  # KEY_POWER
    assert cells(key["gpios"]) == [*cells(gpio["phandle"]), 3, 0]  # pin 3, active high
    assert len({cells(dts[p]["phandle"])[0] for p in (GPIO, GIC, "/apb-pclk")}) == 3


def test_chosen_with_bootargs_and_initrd_above_4g(tmp_path):
    args = "console=ttyAMA0 earlycon root=/dev/ram0 rdinit=/init"
    blob = build(memory=[(0x4000_0000, 0x2000_0000), (0x1_0000_0000, 0x1000_0000)],
                 bootargs=args, initrd=(0x1_0800_0000, 0x1_0812_3456))
    chosen = dts_props(dtc_decode(blob, tmp_path))["/chosen"]
    assert strings(chosen["bootargs"]) == [args]
    assert strings(chosen["stdout-path"]) == [UART]
    assert cells(chosen["linux,initrd-start"]) == [1, 0x0800_0000]
    assert cells(chosen["linux,initrd-end"]) == [1, 0x0812_3456]

    tree = parse(blob)
    assert strs(tree, "/chosen", "bootargs") == [args]
    assert u64(words(tree, "/chosen", "linux,initrd-start")) == 0x1_0800_0000
    assert u64(words(tree, "/chosen", "linux,initrd-end")) == 0x1_0812_3456


def test_chosen_without_bootargs_or_initrd(tmp_path):
    chosen = dts_props(dtc_decode(build(), tmp_path))["/chosen"]
    assert set(chosen) == {"stdout-path"}


def test_chosen_carries_the_seeds_it_is_given_as_qemu_writes_them(tmp_path):
    """QEMU's virt: ``rng-seed`` as 32 bytes, ``kaslr-seed`` as a 64-bit value."""
    tree = parse(build(rng_seed=bytes(range(32)), kaslr_seed=0x0123_4567_89AB_CDEF))
    assert u64(words(tree, "/chosen", "kaslr-seed")) == 0x0123_4567_89AB_CDEF
    # a parser sees 32 bytes as eight 32-bit cells: the bytes in order, big-endian
    rng = tree.get_property("rng-seed", "/chosen").data
    assert b"".join(w.to_bytes(4, "big") for w in rng) == bytes(range(32))
    chosen = dts_props(dtc_decode(build(rng_seed=b"\x5a" * 32, kaslr_seed=7), tmp_path))["/chosen"]
    assert set(chosen) == {"stdout-path", "rng-seed", "kaslr-seed"}


def test_both_decoders_agree_on_every_property(tmp_path):
    blob = build(cpus=[0, 1, 2], bootargs="console=ttyAMA0", initrd=(0x4800_0000, 0x4810_0000),
                 timer_freq_hz=1_000_000_000)
    dts = dts_props(dtc_decode(blob, tmp_path))
    seen = 0
    for path, _nodes, props in parse(blob).walk():
        for prop in props:
            text = dts[path][prop.name]
            if isinstance(prop, fdt.PropWords):
                assert cells(text) == list(prop.data), (path, prop.name)
            elif isinstance(prop, fdt.PropStrings):
                assert strings(text) == list(prop.data), (path, prop.name)
            else:
                assert text is None, (path, prop.name)
            seen += 1
    assert seen == sum(len(p) for p in dts.values())


def test_dts_text_shows_the_expected_lines(tmp_path):
    text = dtc_decode(build(cpus=[0], bootargs="quiet"), tmp_path)
    assert re.search(r"^\tintc@8000000 \{$", text, re.M)
    assert re.search(r"^\t\tinterrupts = <0x01 0x0d 0x104 0x01 0x0e 0x104 0x01 0x0b 0x104 "
                     r"0x01 0x0a 0x104>;$", text, re.M)
    assert '\t\tbootargs = "quiet";' in text
    assert '\t\tstdout-path = "/pl011@9000000";' in text


def test_a_parsed_dtb_with_memreserve_does_not_leak_into_new_trees(tmp_path):
    # fdt.FDT() shares one default ``entries`` list, which parse_dtb() appends to.
    src = tmp_path / "r.dts"
    src.write_text("/dts-v1/;\n/memreserve/ 0x1000 0x2000;\n/ { };\n")
    out = tmp_path / "r.dtb"
    subprocess.run([tool("dtc"), "-I", "dts", "-O", "dtb", "-o", str(out), str(src)], check=True,
                   capture_output=True)
    default_entries = fdt.FDT.__init__.__defaults__[1]
    try:
        assert parse(out.read_bytes()).entries == [{"address": 0x1000, "size": 0x2000}]
        blob = build()
        assert "/memreserve/" not in dtc_decode(blob, tmp_path)
    finally:
        default_entries.clear()


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"cpus": []}, "at least one CPU"),
    ({"cpus": list(range(9))}, "at most 8"),
    ({"memory": []}, "at least one memory bank"),
    ({"initrd": (0x4800_0000, 0x4800_0000)}, "initrd end"),
    ({"initrd": (0x4800_0000, 0x4700_0000)}, "initrd end"),
    ({"initrd": (0x3000_0000, 0x3010_0000)}, "inside one memory bank"),
    ({"cpus": [0, 0]}, "distinct"),
    ({"cpus": [1 << 32]}, "Aff2.Aff1.Aff0"),
    ({"cpus": [-1]}, "Aff2.Aff1.Aff0"),
    ({"psci_method": "svc"}, "psci_method"),
    ({"uart_spi": 988}, "uart_spi"),
    ({"timer_freq_hz": 0}, "timer_freq_hz"),
    ({"timer_freq_hz": 1 << 32}, "timer_freq_hz"),
    ({"bootargs": "console=ttyAMA0\n"}, "printable ASCII"),
    ({"bootargs": "root=/dev/vda \u00e9"}, "printable ASCII"),
    ({"memory": [(0x4000_0000, 0)]}, "memory bank 0"),
    ({"memory": [(0x4000_0000, 1 << 30), (0x6000_0000, 1 << 20)]}, "overlaps bank 0"),
    ({"memory": [(0x0, 0x1000_0000)]}, "overlaps the GIC distributor"),
    ({"gic_cpu": 0x0800_0800}, "overlaps"),
    ({"kaslr_seed": 1 << 64}, "kaslr-seed 0x10000000000000000 is not a 64-bit value"),
])
def test_bad_configurations_are_rejected(kw, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        build(**kw)

"""The RISC-V 64 device tree: decoded back with dtc and with the fdt package's parser,
and set against the tree QEMU 7.2's ``virt`` board writes."""

from __future__ import annotations

import re
import subprocess

import fdt
import pytest
from test_fdt import cells, dts_props, node_names, parse, strings, strs, u64, words
from tools import tool

from pyaxvisor.boards.riscv64_virt import layout
from pyaxvisor.boards.riscv64_virt.fdt import build_riscv64_dtb
from pyaxvisor.errors import InvalidInput

RAM = (layout.RAM_BASE, 256 << 20)
PLIC = "/soc/plic@c000000"
UART = "/soc/serial@10000000"
#: The one warning dtc gives for QEMU's own tree, once per hart.
QEMU_WARNING = re.compile(r"<stdout>: Warning \(interrupt_provider\): "
                          r"/cpus/cpu@[0-9a-f]+/interrupt-controller: "
                          r"Missing #address-cells in interrupt provider")


def build(**kw) -> bytes:
    kw.setdefault("memory", [RAM])
    kw.setdefault("harts", [0, 1])
    return build_riscv64_dtb(**kw)


def dtc(blob: bytes, tmp_path, name: str = "vm.dtb") -> tuple[str, list[str]]:
    """``dtc -I dtb -O dts`` of the blob: the source text and dtc's warning lines."""
    path = tmp_path / name
    path.write_bytes(blob)
    proc = subprocess.run([tool("dtc"), "-I", "dtb", "-O", "dts", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr.splitlines()


def decode(blob: bytes, tmp_path) -> dict[str, dict[str, str | None]]:
    """The tree as {path: {property: dtc's text}}; dtc may only warn as for QEMU's."""
    text, warnings = dtc(blob, tmp_path)
    assert all(QEMU_WARNING.fullmatch(w) for w in warnings), warnings
    return dts_props(text)


def phandle_owner(tree: fdt.FDT, value: int) -> str:
    """The path of the one node whose phandle is ``value``."""
    owners = [path for path, _nodes, props in tree.walk()
              if any(p.name == "phandle" and list(p.data) == [value] for p in props)]
    assert len(owners) == 1, (value, owners)
    return owners[0]


# -- content -----------------------------------------------------------------------------------

def test_dtb_header_names_the_first_hart_as_the_boot_cpu():
    blob = build(harts=[2, 3])
    assert blob[:4] == b"\xd0\x0d\xfe\xed"
    tree = parse(blob)
    header = tree.header
    assert (header.version, header.last_comp_version) == (17, 16)
    assert (header.boot_cpuid_phys, header.total_size, tree.entries) == (2, len(blob), [])


def test_nodes(tmp_path):
    dts = decode(build(), tmp_path)
    assert set(dts) == {
        "/", "/memory@80000000", "/cpus", "/cpus/cpu@0", "/cpus/cpu@0/interrupt-controller",
        "/cpus/cpu@1", "/cpus/cpu@1/interrupt-controller", "/cpus/cpu-map",
        "/cpus/cpu-map/cluster0", "/cpus/cpu-map/cluster0/core0",
        "/cpus/cpu-map/cluster0/core1", "/soc", PLIC, UART, "/chosen", *VIRTIO}


#: QEMU's 8 virtio-mmio transports, always there.
VIRTIO = [f"/soc/virtio_mmio@{0x1000_1000 + 0x1000 * i:x}" for i in range(8)]


def test_virtio_mmio_nodes_are_qemus(tmp_path):
    blob = build()
    dts = decode(blob, tmp_path)
    # in the tree highest address first, as QEMU's (each node it adds goes first)
    assert [n for n in node_names(parse(blob), "/soc") if n.startswith("virtio")] == \
        [n.rpartition("/")[2] for n in reversed(VIRTIO)]
    for i, path in enumerate(VIRTIO):
        props = dts[path]
        assert set(props) == {"compatible", "reg", "interrupts", "interrupt-parent"}
        assert strings(props["compatible"]) == ["virtio,mmio"]
        assert cells(props["reg"]) == [0, 0x1000_1000 + 0x1000 * i, 0, 0x1000]
        assert cells(props["interrupts"]) == [1 + i]
        assert cells(props["interrupt-parent"]) == cells(dts[PLIC]["phandle"])


def test_root_and_soc(tmp_path):
    dts = decode(build(), tmp_path)
    root = dts["/"]
    assert set(root) == {"#address-cells", "#size-cells", "compatible", "model"}
    assert cells(root["#address-cells"]) == [2]
    assert cells(root["#size-cells"]) == [2]
    assert strings(root["compatible"]) == ["riscv-virtio"]
    assert strings(root["model"]) == ["riscv-virtio,qemu"]
    soc = dts["/soc"]
    assert strings(soc["compatible"]) == ["simple-bus"]
    assert cells(soc["#address-cells"]) == [2]
    assert cells(soc["#size-cells"]) == [2]
    assert "ranges" in soc and soc["ranges"] is None


def test_memory_banks_below_and_above_4g(tmp_path):
    banks = [(0x8000_0000, 0x4000_0000), (0x1_0000_0000, 0x1_8000_0000)]
    dts = decode(build(memory=banks), tmp_path)
    assert strings(dts["/memory@80000000"]["device_type"]) == ["memory"]
    assert cells(dts["/memory@80000000"]["reg"]) == [0, 0x8000_0000, 0, 0x4000_0000]
    assert cells(dts["/memory@100000000"]["reg"]) == [1, 0, 1, 0x8000_0000]


def test_cpu_nodes(tmp_path):
    blob = build(harts=[0, 1, 2, 3])
    dts = decode(blob, tmp_path)
    cpus = dts["/cpus"]
    assert cells(cpus["#address-cells"]) == [1]
    assert cells(cpus["#size-cells"]) == [0]
    assert cells(cpus["timebase-frequency"]) == [10_000_000]  # 0x989680, as QEMU
    tree = parse(blob)
    assert [n for n in node_names(tree, "/cpus") if n.startswith("cpu@")] == [
        "cpu@0", "cpu@1", "cpu@2", "cpu@3"]
    phandles = []
    for hart in range(4):
        cpu = dts[f"/cpus/cpu@{hart}"]
        assert set(cpu) == {"phandle", "device_type", "reg", "status", "compatible",
                            "riscv,isa", "mmu-type"}
        assert strings(cpu["device_type"]) == ["cpu"]
        assert cells(cpu["reg"]) == [hart]
        assert strings(cpu["status"]) == ["okay"]
        assert strings(cpu["compatible"]) == ["riscv"]
        assert strings(cpu["riscv,isa"]) == ["rv64imafdc_zicsr_zifencei"]
        assert strings(cpu["mmu-type"]) == ["riscv,sv48"]
        intc = dts[f"/cpus/cpu@{hart}/interrupt-controller"]
        assert set(intc) == {"#interrupt-cells", "interrupt-controller", "compatible",
                             "phandle"}
        assert cells(intc["#interrupt-cells"]) == [1]
        assert intc["interrupt-controller"] is None
        assert strings(intc["compatible"]) == ["riscv,cpu-intc"]
        assert type(tree.get_property("interrupt-controller",
                                      f"/cpus/cpu@{hart}/interrupt-controller")) is fdt.Property
        phandles += cells(cpu["phandle"]) + cells(intc["phandle"])
    phandles += cells(dts[PLIC]["phandle"])
    assert len(set(phandles)) == len(phandles) == 9


def test_cpu_map_names_every_hart_in_order(tmp_path):
    blob = build(harts=[0, 5, 7])
    dts = decode(blob, tmp_path)
    assert set(dts["/cpus/cpu-map"]) == set() and set(dts["/cpus/cpu-map/cluster0"]) == set()
    tree = parse(blob)
    assert node_names(tree, "/cpus/cpu-map/cluster0") == ["core0", "core1", "core2"]
    for core, hart in enumerate([0, 5, 7]):
        ref = cells(dts[f"/cpus/cpu-map/cluster0/core{core}"]["cpu"])[0]
        assert phandle_owner(tree, ref) == f"/cpus/cpu@{hart:x}"


def test_hart_ids_name_the_cpu_nodes(tmp_path):
    dts = decode(build(harts=[0x10, 0x1F]), tmp_path)
    assert cells(dts["/cpus/cpu@10"]["reg"]) == [0x10]
    assert cells(dts["/cpus/cpu@1f"]["reg"]) == [0x1F]


@pytest.mark.parametrize("harts", [[0], [0, 1], [3, 1, 0, 2]])
def test_plic_node_and_its_contexts(tmp_path, harts):
    blob = build(harts=harts)
    dts = decode(blob, tmp_path)
    plic = dts[PLIC]
    assert strings(plic["compatible"]) == ["sifive,plic-1.0.0", "riscv,plic0"]
    assert cells(plic["reg"]) == [0, 0x0C00_0000, 0, layout.plic_size(len(harts))]
    assert cells(plic["riscv,ndev"]) == [95]  # sources 1..95
    assert cells(plic["#interrupt-cells"]) == [1]
    assert cells(plic["#address-cells"]) == [0]
    assert plic["interrupt-controller"] is None
    # For each hart in order: its M-mode (11) then S-mode (9) external interrupt, i.e.
    # PLIC context 2*i is hart i's M-mode and 2*i + 1 (layout.plic_s_context) its S-mode.
    tree = parse(blob)
    ext = cells(plic["interrupts-extended"])
    assert len(ext) == 4 * len(harts)
    pairs = [ext[k:k + 2] for k in range(0, len(ext), 2)]
    for i, hart in enumerate(harts):
        m_mode, s_mode = pairs[2 * i], pairs[layout.plic_s_context(i)]
        assert m_mode[1] == 11 and s_mode[1] == 9
        owner = f"/cpus/cpu@{hart:x}/interrupt-controller"
        assert phandle_owner(tree, m_mode[0]) == owner
        assert phandle_owner(tree, s_mode[0]) == owner
    assert words(tree, PLIC, "interrupts-extended") == ext


def test_plic_contexts_for_one_and_two_harts_literally(tmp_path):
    one = decode(build(harts=[0]), tmp_path)
    intc0 = cells(one["/cpus/cpu@0/interrupt-controller"]["phandle"])[0]
    assert cells(one[PLIC]["interrupts-extended"]) == [intc0, 11, intc0, 9]
    assert cells(one[PLIC]["reg"]) == [0, 0x0C00_0000, 0, 0x20_2000]
    two = decode(build(harts=[0, 1]), tmp_path)
    a = cells(two["/cpus/cpu@0/interrupt-controller"]["phandle"])[0]
    b = cells(two["/cpus/cpu@1/interrupt-controller"]["phandle"])[0]
    assert cells(two[PLIC]["interrupts-extended"]) == [a, 11, a, 9, b, 11, b, 9]
    assert cells(two[PLIC]["reg"]) == [0, 0x0C00_0000, 0, 0x20_4000]


def test_uart(tmp_path):
    blob = build()
    dts = decode(blob, tmp_path)
    uart = dts[UART]
    assert set(uart) == {"interrupts", "interrupt-parent", "clock-frequency", "reg",
                         "compatible"}
    assert strings(uart["compatible"]) == ["ns16550a"]
    assert cells(uart["reg"]) == [0, 0x1000_0000, 0, 0x100]
    assert cells(uart["interrupts"]) == [10]
    assert cells(uart["interrupt-parent"]) == cells(dts[PLIC]["phandle"])
    # 0x384000 = bytes 00 38 40 00, which dtc shows as the string "\08@" (as QEMU's).
    assert uart["clock-frequency"] == '"\\08@"'
    tree = parse(blob)
    assert words(tree, UART, "clock-frequency") == [0x38_4000]
    assert phandle_owner(tree, words(tree, UART, "interrupt-parent")[0]) == PLIC


def test_chosen_with_bootargs_and_initrd_above_4g(tmp_path):
    args = "console=ttyS0 earlycon root=/dev/ram0 rdinit=/init"
    blob = build(memory=[(0x8000_0000, 0x4000_0000), (0x1_0000_0000, 0x1000_0000)],
                 bootargs=args, initrd=(0x1_0800_0000, 0x1_0812_3456))
    chosen = decode(blob, tmp_path)["/chosen"]
    assert strings(chosen["bootargs"]) == [args]
    assert strings(chosen["stdout-path"]) == [UART]
    assert cells(chosen["linux,initrd-start"]) == [1, 0x0800_0000]
    assert cells(chosen["linux,initrd-end"]) == [1, 0x0812_3456]
    tree = parse(blob)
    assert u64(words(tree, "/chosen", "linux,initrd-start")) == 0x1_0800_0000
    assert strs(tree, "/chosen", "stdout-path") == [UART]
    assert tree.exist_node(UART)


def test_chosen_without_bootargs_or_initrd(tmp_path):
    assert set(decode(build(), tmp_path)["/chosen"]) == {"stdout-path"}


def test_isa_mmu_type_and_timebase_can_be_chosen(tmp_path):
    dts = decode(build(harts=[0], isa="rv64imac_zicsr", mmu_type="riscv,sv39",
                       timebase_freq=1_000_000), tmp_path)
    assert strings(dts["/cpus/cpu@0"]["riscv,isa"]) == ["rv64imac_zicsr"]
    assert strings(dts["/cpus/cpu@0"]["mmu-type"]) == ["riscv,sv39"]
    assert cells(dts["/cpus"]["timebase-frequency"]) == [1_000_000]


def test_excluded_nodes_are_left_out(tmp_path):
    dts = decode(build(exclude=[UART, "/cpus/cpu-map/", "/pcie@30000000",
                                "/soc/virtio_mmio@10008000"]), tmp_path)
    assert UART not in dts and "/cpus/cpu-map" not in dts
    assert "/soc/virtio_mmio@10008000" not in dts and "/soc/virtio_mmio@10007000" in dts
    assert PLIC in dts and "/cpus/cpu@0" in dts


def test_dtc_warns_only_as_for_qemus_tree(tmp_path):
    _text, warnings = dtc(build(harts=[0, 1, 2]), tmp_path)
    assert warnings == [
        f"<stdout>: Warning (interrupt_provider): /cpus/cpu@{h}/interrupt-controller: "
        "Missing #address-cells in interrupt provider" for h in range(3)]


def test_dtc_reads_back_exactly_what_was_written(tmp_path):
    """dtc's source, compiled again by dtc, is the same tree (as the fdt package
    prints it): dtc understood every node and property the way they were meant."""
    blob = build(harts=[0, 1, 2], bootargs="console=ttyS0", initrd=(0x8800_0000, 0x8810_0000))
    text, _warnings = dtc(blob, tmp_path)
    source = tmp_path / "vm.dts"
    source.write_text(text)
    again = subprocess.run([tool("dtc"), "-I", "dts", "-O", "dtb", "-b", "0", str(source)],
                           capture_output=True, check=True).stdout
    assert parse(again).to_dts() == parse(blob).to_dts()


@pytest.mark.parametrize("smp", [1, 2])
def test_shaped_like_qemus_virt_tree(tmp_path, smp):
    """Every node this tree has, QEMU's has with the same properties (the UART's
    too), and dtc warns about nothing it does not warn about for QEMU's tree."""
    qemu_dtb = tmp_path / "qemu.dtb"
    # -bios none: the tree is the same (only /chosen's random rng-seed differs), and a
    # QEMU fetched by tests/tools.py has no firmware beside it (qemu-system-data)
    subprocess.run([tool("qemu-system-riscv64"), "-M", f"virt,dumpdtb={qemu_dtb}", "-cpu",
                    "rv64", "-smp", str(smp), "-m", "256M", "-nographic", "-bios", "none"],
                   capture_output=True, check=True, timeout=60)
    qemu_text, qemu_warnings = dtc(qemu_dtb.read_bytes(), tmp_path, "qemu-vm.dtb")
    qemu = dts_props(qemu_text)
    ours_text, our_warnings = dtc(build(harts=list(range(smp)), bootargs="quiet",
                                        initrd=(0x8800_0000, 0x8810_0000)), tmp_path)
    ours = dts_props(ours_text)
    assert set(our_warnings) <= set(qemu_warnings)
    for path, props in ours.items():
        assert path in qemu, path
        if path == "/chosen":  # QEMU's has -append/-initrd only when given; it adds rng-seed
            assert set(props) - set(qemu[path]) == {"bootargs", "linux,initrd-start",
                                                     "linux,initrd-end"}
        else:
            assert set(props) == set(qemu[path]), path
    # Values that agree with QEMU's (phandles, the PLIC's reg size, riscv,ndev and
    # riscv,isa differ on purpose: see the module's docstring).
    for path, prop in [("/", "compatible"), ("/", "model"), ("/cpus", "timebase-frequency"),
                       ("/cpus/cpu@0", "mmu-type"), ("/cpus/cpu@0", "reg"),
                       ("/soc", "compatible"), (PLIC, "compatible"), (UART, "reg"),
                       (UART, "interrupts"), (UART, "clock-frequency"),
                       ("/memory@80000000", "reg"), ("/chosen", "stdout-path"),
                       *((path, prop) for path in VIRTIO
                         for prop in ("reg", "interrupts", "compatible"))]:
        assert ours[path][prop] == qemu[path][prop], (path, prop)


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    ({"harts": []}, "at least one hart"),
    ({"harts": list(range(7937))}, "at most 7936 (two per hart)"),
    ({"harts": [0, 0]}, "hart ids must be distinct"),
    ({"harts": [-1]}, "hart id -1 is not a number in 0..0xffffffff"),
    ({"harts": [1 << 32]}, "is not a number in 0..0xffffffff"),
    ({"harts": ["0"]}, "hart id '0'"),
    ({"memory": []}, "at least one memory bank"),
    ({"memory": [(0x8000_0000, 0)]}, "memory bank 0"),
    ({"memory": [(0x8000_0000, 1 << 30), (0xA000_0000, 1 << 20)]}, "overlaps bank 0"),
    ({"memory": [(0x0, 0x1000_0000)]}, "overlaps the PLIC"),
    ({"memory": [(0x1000_0000, 0x1000)]}, "overlaps the UART"),
    ({"initrd": (0x8800_0000, 0x8800_0000)}, "initrd end"),
    ({"initrd": (0x8800_0000, 0x8700_0000)}, "initrd end"),
    ({"initrd": (0x4000_0000, 0x4010_0000)}, "inside one memory bank"),
    ({"bootargs": "console=ttyS0\n"}, "bootargs must be printable ASCII"),
    ({"isa": "rv64imafdc\u00e9"}, "isa must be printable ASCII"),
    ({"isa": "rv32imafdc"}, "is not a RISC-V 64 ISA string"),
    ({"isa": "RV64IMAFDC"}, "is not a RISC-V 64 ISA string"),
    ({"isa": "rv64gc"}, "is not a RISC-V 64 ISA string"),
    ({"isa": "rv64imafdc__zicsr"}, "is not a RISC-V 64 ISA string"),
    ({"isa": ""}, "is not a RISC-V 64 ISA string"),
    ({"mmu_type": "riscv,sv57"}, "mmu_type must be one of 'riscv,sv39', 'riscv,sv48'"),
    ({"mmu_type": "sv48"}, "mmu_type must be one of"),
    ({"timebase_freq": 0}, "timebase_freq 0 must be a positive 32-bit number"),
    ({"timebase_freq": 1 << 32}, "timebase_freq"),
    ({"exclude": ["soc"]}, "excluded device 'soc' is not a device tree path"),
    ({"exclude": ["/"]}, "is not a device tree path"),
])
def test_bad_configurations_are_rejected(kw, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        build(**kw)

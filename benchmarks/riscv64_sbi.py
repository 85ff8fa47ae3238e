"""The cost of an SBI call on the RISC-V software CPU, median of N runs.

    python benchmarks/riscv64_sbi.py [--runs 5] [--calls 200000]

* SBI round trip: a guest ``ecall`` to BASE get_spec_version, pyaxvisor's SBI handler
  (Python, called inside the CPU) and back into the guest, with no exit to the vCPU's
  ``run()``: the whole run divided by the number of calls (the guest's loop around
  the call costs a few nanoseconds);
* hypercall exit: the same loop calling pyaxvisor's hypercall extension, so every
  call leaves ``run()`` with a ``Hypercall`` exit and enters the guest again: what
  an exit the VM handles costs on top.

Nothing to compare against (QEMU has no SBI implementation in Python): the figures
are absolute. Needs ``binutils-riscv64-linux-gnu``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyaxvisor.arch.riscv64.pcpu import RISCVPerCpu  # noqa: E402
from pyaxvisor.arch.riscv64.vcpu import (  # noqa: E402
    RISCVVCpu,
    RISCVVCpuCreateConfig,
    RISCVVCpuSetupConfig,
)
from pyaxvisor.hal import HostHal  # noqa: E402
from pyaxvisor.mm import GuestPhysAddr  # noqa: E402
from pyaxvisor.mm.addrspace import AddrSpace  # noqa: E402
from pyaxvisor.mm.nested import nested_page_table  # noqa: E402
from pyaxvisor.vcpu import Hypercall, PerCpu, SystemDown, VCpu  # noqa: E402

RAM = 0x8000_0000
GUEST = """
    .globl _start
_start:
    li s1, {calls}
1:  li a7, {eid}
    li a6, {fid}
    ecall
    addi s1, s1, -1
    bnez s1, 1b
    li a7, 0x53525354           /* SRST shutdown */
    li a6, 0
    li a0, 0
    li a1, 0
    ecall
    j .
"""


def build(source: str, work: Path) -> bytes:
    src, obj, elf, binary = (work / n for n in ("g.S", "g.o", "g.elf", "g.bin"))
    src.write_text(source)
    prefix = "riscv64-linux-gnu-"
    subprocess.run([f"{prefix}as", "-o", obj, src], check=True)
    subprocess.run([f"{prefix}ld", "-e", hex(RAM), f"-Ttext={RAM:#x}", "-o", elf, obj],
                   check=True)
    subprocess.run([f"{prefix}objcopy", "-O", "binary", elf, binary], check=True)
    return binary.read_bytes()


def run_once(image: bytes, calls: int) -> float:
    """Seconds per call of one run of ``image`` to its shutdown."""
    hal = HostHal(64 << 20)
    space = AddrSpace(hal, nested_page_table(hal, "riscv64"))
    space.map_ram(GuestPhysAddr(RAM), 16 << 20)
    space.write(GuestPhysAddr(RAM), image)
    percpu = PerCpu(RISCVPerCpu)
    percpu.init(0)
    percpu.hardware_enable()
    vcpu = VCpu(1, 0, RISCVVCpu, RISCVVCpuCreateConfig(hart_id=0, dtb_addr=0, space=space))
    vcpu.setup(GuestPhysAddr(RAM), space.root_paddr, RISCVVCpuSetupConfig())
    vcpu.bind()
    try:
        start = time.perf_counter()
        while True:
            exit_reason = vcpu.run()
            if isinstance(exit_reason, SystemDown):
                break
            if not isinstance(exit_reason, Hypercall):
                raise RuntimeError(f"unexpected exit {exit_reason!r}")
            vcpu.set_return_value(0)
        return (time.perf_counter() - start) / calls
    finally:
        vcpu.unbind()
        vcpu.arch.close()
        percpu.close()
        space.destroy()
        hal.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, eid, fid in (("SBI round trip (BASE, in-CPU)", 0x10, 0),
                                ("hypercall exit (run() and back)", 0x0A50_5958, 0)):
            image = build(GUEST.format(calls=args.calls, eid=eid, fid=fid), work)
            per_call = statistics.median(run_once(image, args.calls) for _ in range(args.runs))
            print(f"{label:<36}{per_call * 1e6:>8.2f} us  (median of {args.runs} runs of "
                  f"{args.calls} calls)", flush=True)


if __name__ == "__main__":
    main()

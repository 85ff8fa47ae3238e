"""Debian's x86_64 Linux kernel (``linux-image-amd64``, fetched and cached by
``pyaxvisor.images``) on KVM: a bzImage nobody here wrote, entered through the 64-bit
boot protocol. Slow; CI runs them.

How far Linux gets depends on the host. Where KVM runs guest code natively, Linux
prints ``Linux version …`` within seconds. Our machines sit under a hypervisor whose KVM
emulates every guest instruction (``kvm_emulate_insn`` fires for each ``mov`` and ``imul``):
about 1.5 M instructions/s in a tight loop and far less in Linux's decompressor. There
the kernel's decompressor still runs, reads our boot_params and command line and talks to
our UART — the first test checks exactly that — but decompressing the kernel takes
hours, so the ``Linux version`` test measures the host first and says why it skips.
"""

from __future__ import annotations

import re
import struct
import time

import pytest

import pyaxvisor
from pyaxvisor import images
from pyaxvisor.boards.quick import x86_vm as X86Vm
from pyaxvisor.engine.kvm.probe import kvm_usable

_ok, _reason = kvm_usable()
pytestmark = [pytest.mark.slow, pytest.mark.kvm,
              pytest.mark.skipif(not _ok, reason=f"KVM not usable: {_reason}")]

#: Guest instructions per second below which the host is taken to emulate guest code
#: (native execution of the probe loop is well above 100 M/s even when nested).
NATIVE_RATE = 50e6


def _loop_run_time(iterations: int) -> float:
    """Seconds from a VM's start to its debug-exit write, for a long-mode guest that
    first runs ``dec ecx; jnz`` ``iterations`` times."""
    code = (b"\xb9" + max(iterations, 1).to_bytes(4, "little")  # mov ecx, iterations
            + b"\xff\xc9\x75\xfc"                               # l: dec ecx; jnz l
            + b"\xe6\xf4\xf4")                                   # out 0xf4, al; hlt
    vm = X86Vm(ram_size=16 << 20, debug_exits=[(0xF4, 1)])
    try:
        vm.write_guest(0x1000, code)
        t0 = time.perf_counter()
        result = vm.run(0x1000, mode="long", timeout=120)
        elapsed = time.perf_counter() - t0
    finally:
        vm.close()
    assert result.reason == "debug-exit", result
    return elapsed


def guest_instruction_rate(iterations: int = 300_000) -> float:
    """Guest instructions per second on this host's KVM: the run time of a loop of
    ``2 * iterations`` instructions minus that of an empty run (best of two each, so
    the VM's start-up and the host's jitter cancel out)."""
    loop = min(_loop_run_time(iterations) for _ in range(2))
    empty = min(_loop_run_time(1) for _ in range(2))
    return 2 * iterations / max(loop - empty, 1e-9)


def bzimage_runtime_window(data: bytes) -> tuple[int, int]:
    """Where a relocatable bzImage decompresses itself without KASLR: ``[runtime,
    runtime + init_size)`` (boot protocol: pref_address aligned to kernel_alignment)."""
    align = struct.unpack_from("<I", data, 0x230)[0]
    pref_address = struct.unpack_from("<Q", data, 0x258)[0]
    init_size = struct.unpack_from("<I", data, 0x260)[0]
    runtime = -(-max(0x100000, pref_address) // align) * align
    return runtime, runtime + init_size


def test_decompressor_reads_our_boot_params_and_prints_on_our_uart():
    kernel = images.fetch("linux-x86_64")
    with pyaxvisor.Machine(arch="x86_64", machine="pc", memory="256M", kernel=kernel,
                           append="console=ttyS0 earlyprintk=ttyS0 nokaslr panic=-1",
                           timeout=20) as m:
        # Linux's own decompressor (arch/x86/boot/compressed) found "nokaslr" in the
        # command line boot_params pointed it at, and wrote this through the 16550 at 0x3F8.
        m.console.expect("KASLR disabled: 'nokaslr' on cmdline.", timeout=60)
        result = m.wait(120)
    if result.reason == "timeout":  # a slow host: still decompressing when the timeout hit
        assert m.exit_status == 124
        where = re.search(r"vCPU 0: \w+, long mode, CS:RIP 0x10:(0x[0-9a-f]+)", result.state)
        assert where, result.state
        # ... running its relocated copy inside the area init_size reserves.
        start, end = bzimage_runtime_window(kernel.read_bytes())
        assert start <= int(where.group(1), 16) < end, (hex(start), where.group(1), hex(end))
    else:  # a fast host: Linux booted, found no root and rebooted (panic=-1)
        assert "Linux version" in m.console.text, m.console.text[-3000:]
        assert m.exit_status == 0, result


def test_linux_prints_its_version_banner():
    rate = guest_instruction_rate()
    if rate < NATIVE_RATE:
        pytest.skip(reason=f"this host's KVM emulates guest instructions: {rate / 1e6:.1f} M/s "
                    f"measured (native is above {NATIVE_RATE / 1e6:.0f} M/s); Linux's "
                    "decompressor would take hours to reach 'Linux version' (see the module "
                    "docstring)")
    with pyaxvisor.Machine(arch="x86_64", kernel=images.fetch("linux-x86_64"),
                           append="console=ttyS0 earlyprintk=ttyS0 panic=-1",
                           memory="256M", timeout=600) as m:
        banner = m.console.expect(r"Linux version [^\r\n]*", timeout=600).group(0)
    assert re.match(r"Linux version \d+\.\d+", banner), banner

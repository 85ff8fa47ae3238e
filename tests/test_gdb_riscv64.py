"""gdb-multiarch against the stub: Debian's riscv64 kernel on the software CPU.

As for AArch64 (``tests/test_gdb_aarch64.py``): the kernel's function addresses come
from its own ``/proc/kallsyms`` (``nokaslr``), then one ``gdb-multiarch -batch``
session breaks at ``start_kernel`` with a hardware breakpoint (the MMU is off at
entry), steps (gdb steps RISC-V with breakpoints of its own: C.EBREAK at the next
instruction), reads and writes registers, reads memory by virtual and physical
address, watches the init task's stack-end magic, stops at a software breakpoint in
``rest_init`` and lets the guest run to userspace.
"""

from __future__ import annotations

import re

import pytest
from gdb_guest import GuestUnderGdb, kernel_symbols

from pyaxvisor import images
from pyaxvisor.images import USERSPACE_MARKER

pytestmark = pytest.mark.slow

#: Where the kernel image is linked (_start; no KASLR) and where the board loads it.
KERNEL_VA = 0xFFFF_FFFF_8000_0000
KERNEL_PA = 0x8020_0000
#: What start_kernel first writes at the end of init's stack (set_task_stack_end_magic).
STACK_END_MAGIC = 0x57AC6E9D


def test_gdb_breaks_at_start_kernel_steps_and_continues_to_userspace(tmp_path):
    sym = kernel_symbols("riscv64", ("_start", "start_kernel", "rest_init"))
    assert sym["_start"] == KERNEL_VA  # not randomised (the board gives no KASLR seed)
    start = sym["start_kernel"]
    # rest_init begins with ftrace's patchable NOPs, which the kernel rewrites before
    # it runs them: break after them (C.ADDI16SP or ADDI sp, the first real one)
    image = images.fetch("linux-riscv64").read_bytes()
    body = sym["rest_init"] - KERNEL_VA
    skip = 0
    while int.from_bytes(image[body + skip:body + skip + 2], "little") == 0x0001:  # c.nop
        skip += 2
    rest = sym["rest_init"] + skip
    off = start - KERNEL_VA
    words = [int.from_bytes(image[off + 4 * i:off + 4 * i + 4], "little") for i in range(2)]
    dump = "\t".join(f"0x{w:08x}" for w in words)
    vm = GuestUnderGdb("riscv64", tmp_path / "gdb.sock")
    out = vm.gdb("info registers pc",
                 f"hbreak *{start:#x}",
                 "continue",
                 "info registers pc",
                 "x/2xw $pc",
                 "maintenance packet Qqemu.PhyMemMode:1",
                 f"x/2xw {KERNEL_PA + off:#x}",
                 "maintenance packet Qqemu.PhyMemMode:0",
                 "delete",
                 "stepi",
                 "info registers pc",
                 "stepi",
                 "info registers pc",
                 "set $t6 = 0x5a5a1234",
                 "p/x $t6",
                 "p/x $satp",
                 # the init task's stack-end magic, written first thing by start_kernel
                 "watch -l *(unsigned long *)((unsigned long)$sp & ~0x3fff)",
                 "continue",
                 "delete",
                 f"break *{rest:#x}",
                 "continue",
                 "info registers pc",
                 "delete",
                 "continue")
    status, stdout, stderr = vm.finish()
    assert re.search(rf"^pc\s+{KERNEL_PA:#x}\s", out, re.M), out  # -S: the first instruction
    assert f"Breakpoint 1, {start:#018x} in ?? ()" in out, out
    assert f"{start:#x}:\t{dump}" in out, out
    assert f"{KERNEL_PA + off:#x}:\t{dump}" in out, out
    # start_kernel's first instructions are 2-byte C.NOPs (ftrace's): one step each
    assert words[0] == 0x00010001, hex(words[0])
    assert re.search(rf"^pc\s+{start + 2:#x}\s", out, re.M), out
    assert re.search(rf"^pc\s+{start + 4:#x}\s", out, re.M), out
    assert "$1 = 0x5a5a1234" in out, out
    satp = int(re.search(r"^\$2 = (0x[0-9a-f]+)$", out, re.M)[1], 16)
    assert satp >> 60 in (8, 9, 10), out  # Sv39/48/57: paging is on in start_kernel
    assert "Hardware watchpoint 2: -location" in out, out
    assert f"Old value = 0\nNew value = {STACK_END_MAGIC}" in out, out
    assert f"Breakpoint 3, {rest:#018x} in ?? ()" in out, out
    assert re.search(rf"^pc\s+{rest:#x}\s", out, re.M), out
    assert "[Inferior 1 (Remote target) exited normally]" in out, out
    assert status == 0, stderr[-2000:]
    assert USERSPACE_MARKER in stdout

"""Stops requested from another thread (``uc_emu_stop`` while the CPU runs) must not
interrupt an instruction after its memory access: resuming would replay the access,
adding twice with an LSE atomic and reading a device twice. Unicorn 2.1.4 does replay;
the patched build (``async-stop-at-block-start``) honours such stops at block starts
only; `pip install .` builds it, so the test fails (never skips) on the stock library."""

from __future__ import annotations

import threading
import time

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc
from unicorn import arm64_const as a64

from pyaxvisor.engine.tcg.common import unicorn_build

N = 300_000
CODE = b"".join(w.to_bytes(4, "little") for w in (
    0xF8260067,  # 1: ldadd x6, x7, [x3]
    0xB940010A,  #    ldr   w10, [x8]        (a device register)
    0x91000529,  #    add   x9, x9, #1
    0xF1000421,  #    subs  x1, x1, #1
    0x54FFFF81,  #    b.ne  1b
    0x14000000,  #    b     .
))
BASE, COUNTER, DEVICE = 0x4000_0000, 0x4008_0000, 0x0900_0000


def test_stops_from_another_thread_never_replay_an_access():
    build = unicorn_build()
    assert "async-stop-at-block-start" in build.patches, (
        f"the engine runs on {build.path}, not the patched libunicorn that `pip install .` "
        "builds (PYAXVISOR_STOCK_UNICORN set, or its build failed)")
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.ctl_set_cpu_model(a64.UC_CPU_ARM64_MAX)
    uc.mem_map(BASE, 0x10_0000)
    uc.mem_write(BASE, CODE)
    reads = 0

    def read(_uc, _off, _size, _data):
        nonlocal reads
        reads += 1
        return 0

    uc.mmio_map(DEVICE, 0x1000, read, None, lambda *_: None, None)
    for reg, value in ((a64.UC_ARM64_REG_X1, N), (a64.UC_ARM64_REG_X3, COUNTER),
                       (a64.UC_ARM64_REG_X6, 1), (a64.UC_ARM64_REG_X8, DEVICE)):
        uc.reg_write(reg, value)
    end = BASE + len(CODE) - 4
    done = threading.Event()
    stops = 0

    def hammer() -> None:
        nonlocal stops
        while not done.is_set():
            uc.emu_stop()
            stops += 1
            time.sleep(0.0001)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        pc, starts = BASE, 0
        while pc != end:
            uc.emu_start(pc, end)
            starts += 1
            pc = uc.reg_read(a64.UC_ARM64_REG_PC)
    finally:
        done.set()
        thread.join()
    assert starts > 10, "the other thread's stops did not stop the CPU"
    assert int.from_bytes(uc.mem_read(COUNTER, 8), "little") == N
    assert reads == uc.reg_read(a64.UC_ARM64_REG_X9) == N


def _spin_cpu() -> Uc:
    """A CPU at BASE on ``add x0, x0, #1; b .-4``: it runs until something stops it."""
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.mem_map(BASE, 0x1000)
    uc.mem_write(BASE, (0x91000400).to_bytes(4, "little") + (0x17FFFFFF).to_bytes(4, "little"))
    return uc


def test_a_stop_requested_before_the_run_is_not_lost():
    """patch stop-requests: a uc_emu_stop that comes before uc_emu_start (or while it
    begins) ends the next run before its first block; the run after that is not
    affected. Stock 2.1.4 drops it and the CPU spins on (the timer below ends it)."""
    assert "stop-requests" in unicorn_build().patches
    uc = _spin_cpu()
    rescue = threading.Timer(5.0, uc.emu_stop)  # ends a run the stop was lost for
    rescue.start()
    try:
        uc.emu_stop()
        t0 = time.monotonic()
        uc.emu_start(BASE, -1)
        took = time.monotonic() - t0
    finally:
        rescue.cancel()
    assert took < 2.0, "the stop requested before the run was lost"
    assert uc.reg_read(a64.UC_ARM64_REG_X0) == 0  # not one instruction ran
    assert uc.reg_read(a64.UC_ARM64_REG_PC) == BASE
    later = threading.Timer(0.05, uc.emu_stop)
    later.start()
    uc.emu_start(BASE, -1)  # a fresh run: goes on until the timer stops it
    later.join()
    assert uc.reg_read(a64.UC_ARM64_REG_X0) > 0


def test_a_device_callback_stops_the_cpu_at_the_next_block_without_a_replay():
    """uc_emu_stop_at_block from an MMIO callback (on the emulating thread): the access
    completes once and the CPU stops at the next block start, where uc_emu_stop would
    restart the instruction and read the device again. Under UC_CTL_EXIT_AT_BLOCKS_ONLY
    (patch exit-at-blocks-only) the same holds for uc_emu_stop itself."""
    from pyaxvisor.engine.tcg.native import _stop_at_block, exit_at_blocks_only

    assert _stop_at_block is not None
    for blocks_only in (False, True):
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        if blocks_only:
            assert exit_at_blocks_only(uc)
        uc.mem_map(BASE, 0x1000)
        code = (0xB940010A,  # ldr w10, [x8]  (the device)
                0x91000529,  # add x9, x9, #1
                0x14000000)  # b .
        uc.mem_write(BASE, b"".join(w.to_bytes(4, "little") for w in code))
        uc.reg_write(a64.UC_ARM64_REG_X8, DEVICE)
        reads = 0

        def read(_uc, _off, _size, _data, uc=uc, blocks_only=blocks_only):
            nonlocal reads
            reads += 1
            if blocks_only:
                uc.emu_stop()
            else:
                _stop_at_block(uc._uch)
            return 0x55

        uc.mmio_map(DEVICE, 0x1000, read, None, lambda *_: None, None)
        uc.emu_start(BASE, -1)
        assert reads == 1, "the device was read again"
        assert uc.reg_read(a64.UC_ARM64_REG_X10) == 0x55
        assert uc.reg_read(a64.UC_ARM64_REG_X9) == 1  # the block ran to its end
        assert uc.reg_read(a64.UC_ARM64_REG_PC) == BASE + 8

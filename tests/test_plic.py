"""The SiFive-compatible PLIC, driven through an MMIO bus as a guest drives it.

Offsets from the RISC-V PLIC specification (riscv-plic-spec 1.0.0, chapter "Memory
Map"): priority of source s at 4*s, pending words at 0x1000, the enable words of
context c at 0x2000 + 0x80*c, the threshold of context c at 0x20_0000 + 0x1000*c and
its claim/complete register 4 bytes above. Contexts on QEMU's virt board: 2*h is hart
h's M-mode, 2*h + 1 its S-mode.
"""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

from pyaxvisor.boards.riscv64_virt import layout
from pyaxvisor.devices.bus import BadAccess, UnhandledMmio, mmio_bus
from pyaxvisor.devices.irq import IrqLine
from pyaxvisor.devices.plic import Plic
from pyaxvisor.errors import InvalidInput
from pyaxvisor.vcpu.width import AccessWidth

B, W, D, Q = AccessWidth.Byte, AccessWidth.Word, AccessWidth.Dword, AccessWidth.Qword
BASE = layout.PLIC_BASE
PENDING, ENABLE, CONTEXT = 0x1000, 0x2000, 0x20_0000
S0, S1 = layout.plic_s_context(0), layout.plic_s_context(1)  # contexts 1 and 3


def prio(source: int) -> int:
    return 4 * source


def enable(context: int, word: int = 0) -> int:
    return ENABLE + 0x80 * context + 4 * word


def threshold(context: int) -> int:
    return CONTEXT + 0x1000 * context


def claim(context: int) -> int:
    return CONTEXT + 0x1000 * context + 4


class Machine:
    """A PLIC for ``harts`` harts on a bus at the board's address, recording its
    output callbacks."""

    def __init__(self, harts: int = 2, priorities: int = layout.PLIC_PRIORITIES,
                 window: int | None = None) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.plic = Plic(num_sources=layout.PLIC_SOURCES, num_contexts=2 * harts,
                         priorities=priorities,
                         on_context_irq=lambda c, level: self.calls.append((c, level)))
        self.bus = mmio_bus()
        self.bus.attach(BASE, window or layout.plic_size(harts), self.plic)

    def r(self, off: int, vcpu: int = 0, width: AccessWidth = D) -> int:
        return self.bus.read(BASE + off, width, vcpu)

    def w(self, off: int, value: int, vcpu: int = 0, width: AccessWidth = D) -> None:
        self.bus.write(BASE + off, width, value, vcpu)

    def source(self, source: int, priority: int, *contexts: int) -> None:
        """Give ``source`` a priority and enable it for ``contexts`` (what Linux's PLIC
        driver does when a device requests its interrupt)."""
        self.w(prio(source), priority)
        for c in contexts:
            word = enable(c, source // 32)
            self.w(word, self.r(word) | 1 << (source % 32))

    def line(self, source: int, level: bool) -> None:
        self.plic.set_irq_level(source, level)


@pytest.fixture
def m() -> Machine:
    return Machine()


# -- layout and reset ---------------------------------------------------------------------------

def test_window_matches_the_board_layout():
    for harts in (1, 2, 4, 8):
        plic = Plic(layout.PLIC_SOURCES, 2 * harts, layout.PLIC_PRIORITIES)
        # Contexts start at 2 MiB, 0x1000 each: 1 hart = 0x20_2000, 2 harts = 0x20_4000.
        assert plic.size == layout.plic_size(harts) == 0x20_0000 + 0x2000 * harts


def test_reset_values(m):
    for s in (1, 10, 95):
        assert m.r(prio(s)) == 0
    for word in range(3):  # 96 sources: 3 pending words, 3 enable words per context
        assert m.r(PENDING + 4 * word) == 0
        for c in range(4):
            assert m.r(enable(c, word)) == 0
    for c in range(4):
        assert m.r(threshold(c)) == 0
        assert m.r(claim(c)) == 0
    assert m.calls == []


def test_reset_clears_registers_and_claims_but_keeps_line_levels(m):
    m.source(10, 3, S0)
    m.w(threshold(S0), 1)
    m.line(10, True)
    m.line(11, True)
    assert m.r(claim(S0)) == 10
    m.plic.reset()
    assert m.r(prio(10)) == 0
    assert m.r(enable(S0)) == 0
    assert m.r(threshold(S0)) == 0
    # Source 10 is no longer in flight and both lines are still high: both pending
    # (bits 10 and 11 of pending word 0 = 0xC00).
    assert m.r(PENDING) == 0xC00
    assert m.calls == [(S0, True), (S0, False)]
    m.source(10, 1, S0)
    assert m.calls[-1] == (S0, True)
    assert m.r(claim(S0)) == 10


# -- priorities ---------------------------------------------------------------------------------

def test_priority_is_warl_to_seven_levels(m):
    # 7 levels: 3 implemented bits, so a write keeps value & 7 (as QEMU: value % 8).
    for value, expect in [(5, 5), (7, 7), (0xFFFF_FFFF, 7), (8, 0), (0x1D, 5), (0, 0)]:
        m.w(prio(10), value)
        assert m.r(prio(10)) == expect, hex(value)
    m.w(prio(95), 0x3)
    assert m.r(prio(95)) == 3  # the last source (riscv,ndev = 95)


def test_priority_warl_when_levels_are_not_a_power_of_two_minus_one():
    m = Machine(priorities=5)
    # 3 bits implemented; results above 5 read as 5.
    for value, expect in [(4, 4), (5, 5), (6, 5), (7, 5), (0xF, 5), (0xC, 4), (0x8, 0)]:
        m.w(prio(10), value)
        assert m.r(prio(10)) == expect, hex(value)
        m.w(threshold(S0), value)
        assert m.r(threshold(S0)) == expect, hex(value)


def test_priority_of_source_0_and_past_the_last_source_is_reserved(m):
    m.w(prio(0), 7)
    assert m.r(prio(0)) == 0
    m.w(prio(96), 7)  # 96 source IDs: 0..95
    assert m.r(prio(96)) == 0
    m.w(0xFFC, 7)  # last word of the priority block
    assert m.r(0xFFC) == 0


def test_priority_zero_never_interrupts(m):
    m.source(10, 0, S0)
    m.line(10, True)
    assert m.r(PENDING) == 1 << 10  # pending, but priority 0 is never signalled
    assert m.calls == []
    assert m.r(claim(S0)) == 0
    m.w(prio(10), 1)
    assert m.calls == [(S0, True)]
    m.w(prio(10), 0)
    assert m.calls == [(S0, True), (S0, False)]


def test_threshold_masks_priorities_at_or_below_it(m):
    m.source(10, 3, S0)
    m.w(threshold(S0), 3)
    m.line(10, True)
    assert m.calls == []  # priority must be strictly above the threshold
    assert m.r(claim(S0)) == 0
    m.w(threshold(S0), 2)
    assert m.calls == [(S0, True)]
    m.w(threshold(S0), 7)
    assert m.r(threshold(S0)) == 7
    assert m.calls == [(S0, True), (S0, False)]
    m.w(threshold(S0), 0xF)  # WARL: 0xF & 7
    assert m.r(threshold(S0)) == 7
    m.w(threshold(S0), 0)
    assert m.calls[-1] == (S0, True)
    assert m.r(claim(S0)) == 10


# -- enables ------------------------------------------------------------------------------------

def test_enables_are_per_context(m):
    m.w(enable(S0, 0), 0xFFFF_FFFF)
    assert m.r(enable(S0, 0)) == 0xFFFF_FFFE  # bit 0 is source 0, which does not exist
    m.w(enable(S1, 1), 0x8000_0001)  # sources 32 and 63
    m.w(enable(0, 2), 0x8000_0000)  # source 95, hart 0 M-mode
    assert m.r(enable(S0, 1)) == 0
    assert m.r(enable(S1, 0)) == 0
    assert m.r(enable(S1, 1)) == 0x8000_0001
    assert m.r(enable(0, 2)) == 0x8000_0000
    assert m.r(enable(2, 2)) == 0
    m.w(enable(S0, 0), 0x400)
    assert m.r(enable(S0, 0)) == 0x400  # a write replaces the whole word


def test_enable_words_past_the_sources_and_contexts_are_reserved(m):
    m.w(enable(S0, 3), 0xFFFF_FFFF)  # sources 96..127 do not exist
    assert m.r(enable(S0, 3)) == 0
    m.w(enable(S0, 31), 0xFFFF_FFFF)  # last word of the context's 0x80 bytes
    assert m.r(enable(S0, 31)) == 0
    m.w(enable(4, 0), 0xFFFF_FFFF)  # 2 harts: contexts 0..3 only
    assert m.r(enable(4, 0)) == 0
    m.w(0x1F_FFFC, 0xFFFF_FFFF)  # last word before the context blocks
    assert m.r(0x1F_FFFC) == 0


def test_disabled_source_is_pending_but_not_signalled(m):
    m.source(40, 2)  # priority, no enable
    m.line(40, True)
    assert m.r(PENDING + 4) == 1 << 8  # source 40 = bit 8 of pending word 1
    assert m.calls == []
    assert m.r(claim(S0)) == 0
    m.w(enable(S0, 1), 1 << 8)
    assert m.calls == [(S0, True)]
    m.w(enable(S0, 1), 0)
    assert m.calls == [(S0, True), (S0, False)]


# -- claim and complete ---------------------------------------------------------------------------

def test_claim_order_is_priority_then_lowest_id(m):
    for source, priority in [(5, 2), (7, 5), (3, 5), (9, 1), (33, 5)]:
        m.source(source, priority, S0)
        m.line(source, True)
    assert m.r(PENDING) == (1 << 3) | (1 << 5) | (1 << 7) | (1 << 9)
    assert m.r(PENDING + 4) == 1 << 1  # source 33
    claimed = [m.r(claim(S0)) for _ in range(6)]
    assert claimed == [3, 7, 33, 5, 9, 0]  # 5, 5, 5 (lowest ID first), 2, 1, none
    assert m.r(PENDING) == 0 and m.r(PENDING + 4) == 0  # all in flight
    assert m.calls == [(S0, True), (S0, False)]  # dropped with the last claim


def test_claim_and_complete_with_the_line_still_high(m):
    m.source(10, 1, S0)
    m.line(10, True)
    assert m.calls == [(S0, True)]
    assert m.r(PENDING) == 1 << 10
    assert m.r(claim(S0)) == 10
    assert m.r(PENDING) == 0  # claimed: not pending while in flight
    assert m.calls == [(S0, True), (S0, False)]
    assert m.r(claim(S0)) == 0  # not claimed twice
    m.w(claim(S0), 10)  # complete, line still high: pending again
    assert m.r(PENDING) == 1 << 10
    assert m.calls == [(S0, True), (S0, False), (S0, True)]
    assert m.r(claim(S0)) == 10
    m.line(10, False)  # the device is served while the source is in flight
    m.w(claim(S0), 10)
    assert m.r(PENDING) == 0
    assert m.r(claim(S0)) == 0
    assert m.calls == [(S0, True), (S0, False), (S0, True), (S0, False)]


def test_line_changes_while_in_flight_are_seen_only_at_completion(m):
    m.source(10, 1, S0)
    m.line(10, True)
    assert m.r(claim(S0)) == 10
    m.line(10, False)
    m.line(10, True)
    assert m.r(PENDING) == 0
    assert m.r(claim(S0)) == 0
    m.w(claim(S0), 10)
    assert m.r(claim(S0)) == 10


def test_lowering_the_line_before_a_claim_withdraws_the_request(m):
    m.source(10, 1, S0)
    m.line(10, True)
    m.line(10, False)
    assert m.r(PENDING) == 0
    assert m.r(claim(S0)) == 0
    assert m.calls == [(S0, True), (S0, False)]


def test_complete_from_the_wrong_context_is_ignored(m):
    m.source(10, 1, S0, S1)
    m.line(10, True)
    assert sorted(m.calls) == [(S0, True), (S1, True)]
    assert m.r(claim(S1)) == 10  # hart 1 wins; hart 0 loses the request too
    assert sorted(m.calls[2:]) == [(S0, False), (S1, False)]
    m.calls.clear()
    m.w(claim(S0), 10)  # hart 0 did not claim it
    assert m.r(PENDING) == 0
    assert m.r(claim(S0)) == 0
    assert m.calls == []
    m.w(claim(S1), 10)
    assert m.r(PENDING) == 1 << 10
    assert sorted(m.calls) == [(S0, True), (S1, True)]


def test_complete_of_a_source_no_longer_enabled_is_ignored(m):
    m.source(10, 1, S0)
    m.line(10, True)
    assert m.r(claim(S0)) == 10
    m.w(enable(S0), 0)
    m.w(claim(S0), 10)  # the specification: not enabled for the target -> ignored
    m.w(enable(S0), 1 << 10)
    assert m.r(PENDING) == 0  # still in flight
    assert m.r(claim(S0)) == 0
    m.w(claim(S0), 10)
    assert m.r(claim(S0)) == 10


def test_completions_naming_nothing_claimed_are_ignored(m):
    m.source(10, 1, S0)
    m.source(11, 1, S0)
    m.line(10, True)
    assert m.r(claim(S0)) == 10
    m.calls.clear()
    for value in (0, 11, 96, 1023, 0xFFFF_FFFF):
        m.w(claim(S0), value)
    assert m.r(PENDING) == 0
    assert m.calls == []
    assert m.r(claim(S0)) == 0


def test_pending_bits_are_read_only(m):
    m.source(10, 1, S0)
    m.w(PENDING, 0xFFFF_FFFF)
    m.w(PENDING + 4, 0xFFFF_FFFF)
    assert m.r(PENDING) == 0
    assert m.r(PENDING + 4) == 0
    assert m.calls == []
    m.line(10, True)
    m.w(PENDING, 0)
    assert m.r(PENDING) == 1 << 10
    assert m.r(PENDING + 12) == 0  # past the 3 pending words: reserved
    assert m.r(0x1FFC) == 0


def test_context_registers_past_claim_are_reserved(m):
    m.w(threshold(S0) + 8, 0xFFFF_FFFF)
    assert m.r(threshold(S0) + 8) == 0
    assert m.r(threshold(S0) + 0xFFC) == 0


# -- outputs -------------------------------------------------------------------------------------

def test_output_callback_only_on_changes(m):
    m.source(10, 2, S0)
    m.source(11, 3, S0)
    m.line(10, True)
    m.line(11, True)  # already requesting: no second call
    m.w(prio(10), 5)
    m.w(threshold(S0), 1)
    m.line(10, True)  # same level again
    assert m.calls == [(S0, True)]
    assert m.r(claim(S0)) == 10  # 11 is still pending: the request stays up
    assert m.calls == [(S0, True)]
    assert m.r(claim(S0)) == 11
    assert m.calls == [(S0, True), (S0, False)]
    assert m.plic.context_irq(S0) is False


def test_two_harts_use_contexts_1_and_3(m):
    # Hart 0's S-mode is context 1, hart 1's is context 3; 0 and 2 are their M-modes.
    m.source(10, 1, S1)  # the UART routed to hart 1
    m.source(1, 1, S0)
    m.line(10, True)
    assert m.calls == [(S1, True)]
    assert [m.plic.context_irq(c) for c in range(4)] == [False, False, False, True]
    assert m.r(claim(S0)) == 0
    # The context is chosen by the address, not by the accessing vCPU.
    assert m.r(claim(S1), vcpu=0) == 10
    assert m.calls == [(S1, True), (S1, False)]
    m.line(1, True)
    assert m.calls[-1] == (S0, True)
    assert m.r(claim(S0), vcpu=1) == 1
    assert m.calls[-1] == (S0, False)
    m.line(10, False)
    m.w(claim(S1), 10, vcpu=1)  # line low: done
    m.w(claim(S0), 1, vcpu=0)  # line still high: hart 0 is interrupted again
    assert m.calls == [(S1, True), (S1, False), (S0, True), (S0, False), (S0, True)]


def test_m_mode_contexts_work_too(m):
    m.source(10, 1, 0, 2)
    m.line(10, True)
    assert sorted(m.calls) == [(0, True), (2, True)]
    assert m.r(claim(2)) == 10


def test_a_device_line_drives_the_plic():
    m = Machine(harts=1)
    m.source(layout.UART_IRQ, 1, S0)
    line = IrqLine(m.plic, layout.UART_IRQ)
    line.set_level(True)
    assert m.calls == [(S0, True)]
    assert m.r(claim(S0)) == layout.UART_IRQ
    line.set_level(False)
    m.w(claim(S0), layout.UART_IRQ)
    assert m.r(claim(S0)) == 0


def test_callback_may_claim_at_once():
    """A callback that calls back into the PLIC (a vCPU taking the interrupt on the
    spot) does not deadlock; its own change is reported after it returns."""
    calls: list[tuple[int, bool]] = []
    claims: list[int] = []

    def on_irq(context: int, level: bool) -> None:
        calls.append((context, level))
        if level:
            claims.append(plic.read(claim(context), D, 0))

    plic = Plic(layout.PLIC_SOURCES, 2, layout.PLIC_PRIORITIES, on_context_irq=on_irq)
    plic.write(prio(10), D, 1, 0)
    plic.write(enable(S0), D, 1 << 10, 0)
    plic.set_irq_level(10, True)
    assert claims == [10]
    assert calls == [(S0, True), (S0, False)]


def test_a_raising_callback_does_not_stop_later_deliveries():
    calls: list[tuple[int, bool]] = []

    def on_irq(context: int, level: bool) -> None:
        calls.append((context, level))
        if len(calls) == 1:
            raise RuntimeError("board failed")

    plic = Plic(layout.PLIC_SOURCES, 2, layout.PLIC_PRIORITIES, on_context_irq=on_irq)
    plic.write(prio(10), D, 1, 0)
    plic.write(enable(S0), D, 1 << 10, 0)
    with pytest.raises(RuntimeError, match="board failed"):
        plic.set_irq_level(10, True)
    plic.set_irq_level(10, False)
    assert calls == [(S0, True), (S0, False)]


def test_without_a_callback_the_output_is_still_tracked():
    plic = Plic(layout.PLIC_SOURCES, 2, layout.PLIC_PRIORITIES)
    plic.write(prio(10), D, 1, 0)
    plic.write(enable(S0), D, 1 << 10, 0)
    plic.set_irq_level(10, True)
    assert plic.context_irq(S0) is True
    calls: list[tuple[int, bool]] = []
    plic.on_context_irq = lambda c, level: calls.append((c, level))
    plic.set_irq_level(10, False)
    assert calls == [(S0, False)]


# -- bad accesses and inputs ----------------------------------------------------------------------

@pytest.mark.parametrize("width", [B, W, Q])
def test_only_32_bit_accesses(m, width):
    with pytest.raises(BadAccess, match=rf"{width.size}-byte PLIC read at 0x28: .*32-bit"):
        m.r(prio(10), width=width)
    with pytest.raises(BadAccess, match=rf"{width.size}-byte PLIC write at 0x200004: .*32-bit"):
        m.w(claim(0), 10, width=width)


def test_misaligned_32_bit_accesses_are_refused(m):
    with pytest.raises(BadAccess, match="4-byte PLIC read at 0x2a"):
        m.r(prio(10) + 2)
    with pytest.raises(BadAccess, match="4-byte PLIC write at 0x2001"):
        m.w(ENABLE + 1, 1)


def test_offsets_past_the_window():
    # Attached with QEMU's 0x60_0000 device-tree window, a 2-hart PLIC has 0x20_4000 bytes.
    m = Machine(window=0x60_0000)
    with pytest.raises(BadAccess, match=r"PLIC read at 0x204000 is past its 0x204000-byte"):
        m.r(claim(4) - 4)
    with pytest.raises(BadAccess, match=r"PLIC write at 0x5ffffc is past"):
        m.w(0x5F_FFFC, 0)
    assert m.r(claim(3) + 0xFF8) == 0  # the last word of context 3 is inside
    exact = Machine()  # attached with the board's own window: the bus refuses
    with pytest.raises(UnhandledMmio):
        exact.r(0x20_4000)


def test_bad_sources_and_contexts():
    plic = Plic(layout.PLIC_SOURCES, 2, layout.PLIC_PRIORITIES)
    for source in (0, 96, -1):
        with pytest.raises(InvalidInput, match=r"PLIC sources are 1\.\.95"):
            plic.set_irq_level(source, True)
    with pytest.raises(InvalidInput, match=r"contexts 0\.\.1, not 2"):
        plic.context_irq(2)


@pytest.mark.parametrize("kw, message", [
    ({"num_sources": 1}, "2..1024 source IDs"),
    ({"num_sources": 1025}, "2..1024 source IDs"),
    ({"num_contexts": 0}, "1..15872 contexts"),
    ({"num_contexts": 15873}, "1..15872 contexts"),
    ({"priorities": 0}, "priority levels"),
])
def test_constructor_validation(kw, message):
    args = {"num_sources": 96, "num_contexts": 2, "priorities": 7} | kw
    with pytest.raises(InvalidInput, match=message.replace(".", r"\.")):
        Plic(**args)


def test_sources_not_a_multiple_of_32():
    plic = Plic(num_sources=40, num_contexts=1, priorities=3)
    plic.write(enable(0, 1), D, 0xFFFF_FFFF, 0)
    assert plic.read(enable(0, 1), D, 0) == 0xFF  # sources 32..39
    plic.write(prio(39), D, 3, 0)
    plic.set_irq_level(39, True)
    assert plic.read(PENDING + 4, D, 0) == 0x80
    assert plic.read(claim(0), D, 0) == 39


# -- threads -------------------------------------------------------------------------------------

def test_concurrent_set_irq_level_from_threads():
    """Eight device threads toggle their lines while two vCPU threads claim and
    complete: every claim names one of those sources, no source is claimed while it is
    in flight, and when all is quiet the pending bits follow the lines and the
    callbacks never repeated a level and ended at the outputs."""
    m = Machine(harts=2)
    sources = list(range(10, 18))
    for s in sources:
        m.source(s, 1 + s % 7, S0, S1)
    lock = threading.Lock()
    in_flight: set[int] = set()
    errors: list[str] = []
    stop = threading.Event()

    def device(source: int, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(400):
            m.line(source, rng.random() < 0.5)
        m.line(source, source % 2 == 0)  # even sources end high

    def vcpu(context: int) -> None:
        while not stop.is_set():
            got = m.r(claim(context), vcpu=context // 2)
            if not got:
                continue
            with lock:
                if got not in sources or got in in_flight:
                    errors.append(f"context {context} claimed {got}; in flight: {in_flight}")
                in_flight.add(got)
            time.sleep(0)  # serve the device, letting the other threads run
            with lock:
                in_flight.discard(got)
            m.w(claim(context), got, vcpu=context // 2)

    vcpus = [threading.Thread(target=vcpu, args=(c,)) for c in (S0, S1)]
    devices = [threading.Thread(target=device, args=(s, s)) for s in sources]
    for t in vcpus + devices:
        t.start()
    for t in devices:
        t.join()
    stop.set()
    for t in vcpus:
        t.join()
    assert errors == []
    # Quiet now: nothing in flight, the even sources' lines high.
    assert m.r(PENDING) == sum(1 << s for s in sources if s % 2 == 0)
    for context in (S0, S1):
        levels = [level for c, level in m.calls if c == context]
        assert all(a != b for a, b in itertools.pairwise(levels)), \
            "a callback repeated a level"
        assert levels[-1] is m.plic.context_irq(context) is True
    assert m.calls and all(c in (S0, S1) for c, _ in m.calls)

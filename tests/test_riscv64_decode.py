"""Decoding of the guest's loads and stores (checked against binutils' encodings) and
walks of its own Sv39/Sv48/Sv57 page tables."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pyaxvisor.arch.riscv64.decode import (
    Access,
    GuestTranslationFault,
    decode_access,
    guest_translate,
    mmio_exit,
)
from pyaxvisor.mm import AccessFlags, GuestPhysAddr
from pyaxvisor.vcpu import AccessWidth, MmioRead, MmioWrite, NestedPageFault

W = AccessWidth
G = GuestPhysAddr

CASES = [
    ("lb a0, -1(a1)", Access("load", W.Byte, True, 10, 11, -1, 4)),
    ("lbu t0, 2047(s0)", Access("load", W.Byte, False, 5, 8, 2047, 4)),
    ("lh a1, -2048(a2)", Access("load", W.Word, True, 11, 12, -2048, 4)),
    ("lhu a1, 4(a2)", Access("load", W.Word, False, 11, 12, 4, 4)),
    ("lw s3, 8(s4)", Access("load", W.Dword, True, 19, 20, 8, 4)),
    ("lwu s2, 12(sp)", Access("load", W.Dword, False, 18, 2, 12, 4)),
    ("ld a0, 16(s5)", Access("load", W.Qword, False, 10, 21, 16, 4)),
    ("lw zero, 0(a0)", Access("load", W.Dword, True, 0, 10, 0, 4)),
    ("sb a0, -1(a1)", Access("store", W.Byte, False, 10, 11, -1, 4)),
    ("sh zero, 6(a2)", Access("store", W.Word, False, 0, 12, 6, 4)),
    ("sw t6, 2000(t5)", Access("store", W.Dword, False, 31, 30, 2000, 4)),
    ("sd ra, -8(sp)", Access("store", W.Qword, False, 1, 2, -8, 4)),
    ("flw f0, 4(a0)", Access("fp_load", W.Dword, False, 0, 10, 4, 4)),
    ("fld f1, 8(a0)", Access("fp_load", W.Qword, False, 1, 10, 8, 4)),
    ("fsw f2, 12(a0)", Access("fp_store", W.Dword, False, 2, 10, 12, 4)),
    ("fsd f3, 16(a0)", Access("fp_store", W.Qword, False, 3, 10, 16, 4)),
    ("amoadd.w a0, a1, (a2)", Access("amo", W.Dword, False, 10, 12, 0, 4)),
    ("lr.d a0, (a1)", Access("amo", W.Qword, False, 10, 11, 0, 4)),
    ("sc.d a0, a2, (a1)", Access("amo", W.Qword, False, 10, 11, 0, 4)),
    ("c.lw a1, 124(a2)", Access("load", W.Dword, True, 11, 12, 124, 2)),
    ("c.ld a3, 248(a4)", Access("load", W.Qword, False, 13, 14, 248, 2)),
    ("c.sw a5, 64(s0)", Access("store", W.Dword, False, 15, 8, 64, 2)),
    ("c.sd s1, 8(s1)", Access("store", W.Qword, False, 9, 9, 8, 2)),
    ("c.lwsp a0, 252(sp)", Access("load", W.Dword, True, 10, 2, 252, 2)),
    ("c.ldsp ra, 504(sp)", Access("load", W.Qword, False, 1, 2, 504, 2)),
    ("c.swsp t0, 252(sp)", Access("store", W.Dword, False, 5, 2, 252, 2)),
    ("c.sdsp s11, 504(sp)", Access("store", W.Qword, False, 27, 2, 504, 2)),
    ("c.fld fa0, 8(a1)", Access("fp_load", W.Qword, False, 10, 11, 8, 2)),
    ("c.fsdsp fs1, 32(sp)", Access("fp_store", W.Qword, False, 9, 2, 32, 2)),
    ("addi a0, a0, 1", None),
    ("c.addi a0, 1", None),
    ("ecall", None),
]


@pytest.fixture(scope="module")
def encodings() -> dict[str, int]:
    """The instruction bits binutils gives each case (no RVC relaxation of 4-byte ones)."""
    if shutil.which("riscv64-linux-gnu-as") is None:
        pytest.fail("riscv64-linux-gnu-as not found: install binutils-riscv64-linux-gnu")
    out: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for text, _ in CASES:
            src = work / "i.S"
            src.write_text((".option rvc\n" if text.startswith("c.") else ".option norvc\n")
                           + text + "\n")
            subprocess.run(["riscv64-linux-gnu-as", "-o", work / "i.o", src], check=True)
            subprocess.run(["riscv64-linux-gnu-objcopy", "-O", "binary", "-j", ".text",
                            work / "i.o", work / "i.bin"], check=True)
            data = (work / "i.bin").read_bytes()
            out[text] = int.from_bytes(data[:2] if data[0] & 3 != 3 else data[:4], "little")
    return out


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0] for c in CASES])
def test_decode_matches_the_assembler(encodings, text, expected):
    assert decode_access(encodings[text]) == expected


def test_mmio_exits_of_each_kind():
    load = Access("load", W.Word, True, 5, 6, 0, 4)
    assert mmio_exit(load, 0x1000, 0) == MmioRead(G(0x1000), W.Word, 5, W.Qword, True)
    store = Access("store", W.Byte, False, 5, 6, 0, 2)
    assert mmio_exit(store, 0x1001, 0x1234) == MmioWrite(G(0x1001), W.Byte, 0x34)
    amo = Access("amo", W.Qword, False, 5, 6, 0, 4)
    assert mmio_exit(amo, 0x2000, 0) == NestedPageFault(G(0x2000),
                                                        AccessFlags.READ | AccessFlags.WRITE)
    fp = Access("fp_store", W.Qword, False, 5, 6, 0, 4)
    assert mmio_exit(fp, 0x2000, 0) == NestedPageFault(G(0x2000), AccessFlags.WRITE)


# -- guest page walks -------------------------------------------------------------------
V, R, WR, X, A, D = 1, 2, 4, 8, 0x40, 0x80
LEAF = V | R | WR | A | D


def pte(pa: int, bits: int) -> int:
    return (pa >> 12) << 10 | bits


class Tables:
    """Guest memory holding page tables: gpa -> u64."""

    def __init__(self) -> None:
        self.mem: dict[int, int] = {}

    def set(self, table: int, index: int, value: int) -> None:
        self.mem[table + 8 * index] = value

    def read(self, gpa: int) -> int | None:
        if not 0x8000_0000 <= gpa < 0x8100_0000:
            return None
        return self.mem.get(gpa, 0)


def sv39(root: int) -> int:
    return 8 << 60 | root >> 12


def test_sv39_pages_of_every_size():
    t = Tables()
    root, l1, l0 = 0x8000_0000, 0x8000_1000, 0x8000_2000
    t.set(root, 2, pte(0x8000_0000, LEAF | X))               # 1 GiB at 0x8000_0000
    t.set(root, 0, pte(l1, V))
    t.set(l1, 3, pte(0x1020_0000, LEAF))                     # 2 MiB at VA 0x60_0000
    t.set(l1, 0, pte(l0, V))
    t.set(l0, 5, pte(0x1000_3000, LEAF))                     # 4 KiB at VA 0x5000
    assert guest_translate(sv39(root), 0x8123_4567, t.read) == 0x8123_4567
    assert guest_translate(sv39(root), 0x61_2345, t.read) == 0x1021_2345
    assert guest_translate(sv39(root), 0x5ABC, t.read) == 0x1000_3ABC
    assert guest_translate(0, 0x1234, t.read) == 0x1234     # bare
    # negative VAs are sign-extended from bit 38
    t.set(root, 511, pte(0x8000_0000, LEAF))
    assert guest_translate(sv39(root), 0xFFFF_FFFF_C000_0010, t.read) == 0x8000_0010


def test_sv48_walks_four_levels():
    t = Tables()
    root, l2, l1, l0 = 0x8000_0000, 0x8000_1000, 0x8000_2000, 0x8000_3000
    t.set(root, 1, pte(l2, V))                               # VA bit 39
    t.set(l2, 0, pte(l1, V))
    t.set(l1, 0, pte(l0, V))
    t.set(l0, 1, pte(0x1000_0000, LEAF))
    assert guest_translate(9 << 60 | root >> 12, 0x80_0000_1008, t.read) == 0x1000_0008


def test_sv57_walks_five_levels():
    t = Tables()
    tables = [0x8000_0000 + 0x1000 * i for i in range(5)]
    for upper, lower in itertools.pairwise(tables):
        t.set(upper, 1 if upper == tables[0] else 0, pte(lower, V))   # VA bit 48 at the root
    t.set(tables[4], 2, pte(0x1000_0000, LEAF))
    assert guest_translate(10 << 60 | tables[0] >> 12, 1 << 48 | 0x2ABC, t.read) == 0x1000_0ABC


def test_walk_faults():
    t = Tables()
    root = 0x8000_0000
    with pytest.raises(GuestTranslationFault, match="invalid page-table entry") as info:
        guest_translate(sv39(root), 0x1000, t.read)
    assert info.value.pte_gpa == root
    t.set(root, 0, pte(0x9000_0000, V))                      # next table outside RAM
    with pytest.raises(GuestTranslationFault, match="not in guest RAM") as info:
        guest_translate(sv39(root), 0x1000, t.read)
    assert info.value.pte_gpa == 0x9000_0000
    t.set(root, 1, pte(0x4020_0000, LEAF))                   # 1 GiB page, misaligned PPN
    with pytest.raises(GuestTranslationFault, match="misaligned superpage"):
        guest_translate(sv39(root), 0x4000_0000, t.read)
    t.set(root, 2, WR | V)                                   # W without R: reserved
    with pytest.raises(GuestTranslationFault, match="invalid"):
        guest_translate(sv39(root), 0x8000_0000, t.read)
    with pytest.raises(GuestTranslationFault, match="canonical"):
        guest_translate(sv39(root), 0x40_0000_0000, t.read)
    with pytest.raises(GuestTranslationFault, match="not Sv39, Sv48 or Sv57"):
        guest_translate(11 << 60, 0, t.read)

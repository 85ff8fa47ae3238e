"""Random input to the RISC-V decoders (hypothesis): every instruction word decodes to
a well-formed access or to nothing, every access becomes one of the three exits, and
every page-table walk over random guest memory ends in an address or a typed error.

(The AArch64 syndrome decoders have their own property tests in test_aarch64_esr.py
and test_aarch64_exception.py; the loaders' in test_loaders_properties.py.)
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyaxvisor.arch.riscv64.decode import (
    GuestTranslationFault,
    decode_access,
    fault_flags,
    guest_translate,
    mmio_exit,
)
from pyaxvisor.mm import AccessFlags
from pyaxvisor.vcpu import AccessWidth, MmioRead, MmioWrite, NestedPageFault

U64 = (1 << 64) - 1


@settings(max_examples=3000, deadline=None)
@given(insn=st.integers(0, (1 << 32) - 1), gpa=st.integers(0, U64), data=st.integers(0, U64))
def test_any_instruction_word_decodes_to_a_well_formed_access_or_none(insn, gpa, data):
    access = decode_access(insn)
    if access is None:
        assert fault_flags(None, fetch=True) == AccessFlags.EXECUTE
        return
    compressed = insn & 3 != 3
    assert access.length == (2 if compressed else 4)
    assert 0 <= access.reg < 32 and 0 <= access.base < 32
    assert isinstance(access.width, AccessWidth)
    if compressed:  # scaled unsigned immediates: at most 8 * 63 (C.LDSP/C.SDSP)
        assert 0 <= access.offset < 512 and access.offset % 4 == 0
    else:  # a signed 12-bit immediate
        assert -(1 << 11) <= access.offset < (1 << 11)
    exit_ = mmio_exit(access, gpa, data)
    if access.kind == "load":
        assert isinstance(exit_, MmioRead)
        assert (exit_.width, exit_.reg, exit_.signed_ext) == (access.width, access.reg,
                                                              access.signed)
    elif access.kind == "store":
        assert isinstance(exit_, MmioWrite)
        assert exit_.data == data & access.width.mask
    else:  # FP accesses and AMOs are not emulated as MMIO
        assert isinstance(exit_, NestedPageFault)
        assert exit_.access_flags == fault_flags(access)
    assert int(exit_.addr) == gpa


@settings(max_examples=2000, deadline=None)
@given(satp=st.integers(0, U64), va=st.integers(0, U64),
       memory=st.dictionaries(st.integers(0, 1 << 20).map(lambda a: a * 8),
                              st.integers(0, U64), max_size=64),
       holes=st.booleans())
def test_any_page_table_walk_ends_in_an_address_or_a_typed_fault(satp, va, memory, holes):
    reads = []

    def read_u64(gpa: int) -> int | None:
        reads.append(gpa)
        value = memory.get(gpa)
        return None if value is None and holes else (value or 0)

    try:
        gpa = guest_translate(satp, va, read_u64)
    except GuestTranslationFault as exc:
        assert exc.va == va
        assert str(exc).startswith(f"guest virtual address {va:#x}: ")
        assert exc.pte_gpa is None or exc.pte_gpa == reads[-1]
        return
    assert 0 <= gpa < 1 << 64
    assert len(reads) <= 5  # at most Sv57's five levels
    if satp >> 60 == 0:  # bare: no translation, no table read
        assert gpa == va and reads == []
    else:
        assert gpa & 0xFFF == va & 0xFFF  # the page offset survives every walk

# SBI round-trip benchmark: 200 000 calls of BASE get_spec_version (EID 0x10, FID 0),
# then SBI SRST system_reset(shutdown).
	.text
	.global _start
_start:
	li	s0, 200000
1:	li	a7, 0x10
	li	a6, 0
	ecall
	addi	s0, s0, -1
	bnez	s0, 1b
	li	a7, 0x53525354
	li	a6, 0
	li	a0, 0
	li	a1, 0
	ecall
	j	.

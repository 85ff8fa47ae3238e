# ALU benchmark: 10^9 iterations of add/xor/addi/branch in S-mode, then SBI SRST
# system_reset(shutdown) — under pyaxvisor or under QEMU with OpenSBI alike.
	.text
	.global _start
_start:
	li	t1, 1000000000
	li	t0, 0
1:	addi	t0, t0, 3
	xor	t2, t0, t1
	addi	t1, t1, -1
	bnez	t1, 1b
	li	a7, 0x53525354		# EID "SRST"
	li	a6, 0			# FID system_reset
	li	a0, 0			# reset type: shutdown
	li	a1, 0			# reason: none
	ecall
	j	.

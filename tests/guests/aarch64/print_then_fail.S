// Prints a line, then makes a hypercall in pyaxvisor's range that nobody serves: the
// VM ends with an error (for the tests of several VMs in one process, one failing).
	.include "a64.inc"
	.text
	.global _start
_start:
	adr	x0, message
	bl	puts
	ldr	x0, =UNEXPECTED_CALL
	hvc	#0
	b	.
message:
	.asciz	"arm: failing on purpose\n"
	.balign	4
	A64_LIB

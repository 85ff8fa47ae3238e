# pyaxvisor's bundled x86 test kernel: entry, Multiboot v1 header, GDT and the AP
# trampoline (GNU as, i386). The logic is in kernel.c; build.sh builds both images.
#
# Images (both linked at 0x100000 by kernel.ld, entered in 32-bit protected mode with
# flat segments and interrupts off):
#   smp.elf  Multiboot ELF32; header flags 0x00000002 (memory info), no a.out kludge.
#   smp.bin  flat binary (objcopy -O binary); assembled with --defsym AOUT_KLUDGE=1, so
#            its header has flags 0x00010002 and the address fields header_addr,
#            load_addr (0x100000), load_end_addr (_edata), bss_end_addr (_end) and
#            entry_addr (entry32). The first bytes are a `jmp entry32`, so the file
#            also runs when loaded raw at 0x100000 and entered at its first byte.
# EAX = 0x2BADB002 and EBX = the Multiboot info when a Multiboot loader started us;
# with any other EAX, EBX is never used.
#
# What the kernel does (see kernel.c for details):
#   1. loads its GDT (flat code 0x08, data 0x10), a stack in bss, zeroes its bss;
#   2. COM1 115200 8N1, prints "pyaxvisor x86 test kernel";
#   3. reads fw_cfg over I/O 0x510/0x511 (signature, id, NB_CPUS, RAM_SIZE, CMDLINE)
#      and prints "fw_cfg: QEMU id=<n> cpus=<n> ram=<MiB> MiB", "cmdline: <text>",
#      and the Multiboot cmdline / mem_upper when given;
#   4. starts the APs with INIT + 2x STARTUP (vector 0x08: the trampoline below,
#      copied to 0x8000); each AP prints "CPU <apicid> up" and halts;
#   5. prints "all <n> CPUs up" or "only <k> of <n> CPUs came up";
#   6. prints "exit <code>", writes the code with outl to port 0xF4 (isa-debug-exit:
#      host status (code << 1) | 1), then outw 0x2000 to port 0x604, then cli; hlt.
# Command line options: exit=<decimal> (the exit code; default 0x10 on success,
# 0x11 on failure), spin=1 (print "spin", spin forever), triple=1 (print "triple
# fault", IDT limit 0, ud2 -> triple fault); both act right after the first line.

	.equ MB_MAGIC, 0x1BADB002
	.equ MB_FLAG_MEMINFO, 1 << 1
	.equ MB_FLAG_AOUT_KLUDGE, 1 << 16
	.equ MAX_CPUS, 16
	.equ STACK_SIZE, 4096

	.ifndef AOUT_KLUDGE
	.equ AOUT_KLUDGE, 0
	.endif
	.if AOUT_KLUDGE
	.equ MB_FLAGS, MB_FLAG_MEMINFO | MB_FLAG_AOUT_KLUDGE
	.else
	.equ MB_FLAGS, MB_FLAG_MEMINFO
	.endif

	.section .text.entry, "ax"
	.code32
	.global _start
_start:
	jmp	entry32				# first byte: entry of the raw flat binary

	.balign 4
	.global multiboot_header
multiboot_header:
	.long	MB_MAGIC
	.long	MB_FLAGS
	.long	-(MB_MAGIC + MB_FLAGS)
	.if AOUT_KLUDGE
	.long	multiboot_header		# header_addr
	.long	_start				# load_addr
	.long	_edata				# load_end_addr
	.long	_end				# bss_end_addr
	.long	entry32				# entry_addr
	.endif

	.global entry32
entry32:
	cli
	cld
	movl	%eax, %esi			# Multiboot magic (or whatever the loader left)
	movl	%ebx, %ebp			# Multiboot info: only used if the magic matches
	lgdtl	gdt_desc
	ljmpl	$0x08, $1f
1:	movw	$0x10, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %fs
	movw	%ax, %gs
	movw	%ax, %ss
	movl	$bsp_stack_top, %esp
	# zero the bss (a raw flat-binary load does not)
	movl	$__bss_start, %edi
	movl	$_end, %ecx
	subl	%edi, %ecx
	xorl	%eax, %eax
	rep stosb
	pushl	%ebp
	pushl	%esi
	call	kmain				# kmain(magic, info): does not return
halt:	cli
	hlt
	jmp	halt

# 32-bit entry of the application processors, far-jumped to by the trampoline.
	.global ap_entry32
ap_entry32:
	movw	$0x10, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %fs
	movw	%ax, %gs
	movw	%ax, %ss
	movl	$1, %eax
	lock xaddl %eax, ap_next_stack		# unique stack slot 0, 1, ... per AP
	cmpl	$MAX_CPUS - 1, %eax		# the BSP has its own stack
	jae	halt				# no stack left: halt without reporting
	incl	%eax
	shll	$12, %eax			# STACK_SIZE
	leal	ap_stacks(%eax), %esp		# top of slot
	call	ap_main
	jmp	halt

# The AP trampoline: copied to 0x8000 by the BSP, entered by STARTUP vector 0x08 in
# real mode at CS=0x0800 IP=0, so it may only address itself relative to its start.
	.code16
	.balign 16
	.global trampoline_start, trampoline_end
trampoline_start:
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds
	lgdtl	(tramp_gdt_desc - trampoline_start)	# DS-relative, 32-bit base
	movl	%cr0, %eax
	orl	$1, %eax			# PE
	movl	%eax, %cr0
	ljmpl	$0x08, $ap_entry32		# 66 EA: 32-bit offset, linked address
	.balign 8
tramp_gdt_desc:
	.word	gdt_end - gdt - 1
	.long	gdt
trampoline_end:

	.section .rodata
	.balign 8
gdt:
	.quad	0				# null
	.quad	0x00CF9A000000FFFF		# 0x08: code, base 0, limit 4 GiB, 32-bit
	.quad	0x00CF92000000FFFF		# 0x10: data, base 0, limit 4 GiB
gdt_end:
	.balign 4
	.word	0
gdt_desc:
	.word	gdt_end - gdt - 1
	.long	gdt

	.data
	.balign 4
ap_next_stack:
	.long	0

	.bss
	.balign 4096
	.global ap_stacks
ap_stacks:					# slot i (AP i) is [ap_stacks + i*4K, +4K)
	.skip	(MAX_CPUS - 1) * STACK_SIZE
bsp_stack:
	.skip	STACK_SIZE
bsp_stack_top:

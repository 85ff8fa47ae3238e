/*
 * pyaxvisor's bundled x86 test kernel (freestanding C, i386). entry.S enters
 * kmain(magic, info) on the BSP with a flat GDT and a stack; ap_main runs on each
 * application processor. build.sh builds smp.elf (Multiboot ELF32) and smp.bin (flat
 * binary with the Multiboot a.out kludge, also runnable raw at 0x100000).
 *
 * What it does, in order:
 *   1. COM1 (0x3F8) at 115200 8N1 (divisor 1), FIFO on; output polls LSR.THRE (bit 5)
 *      and ends lines with "\r\n". Line 1: "pyaxvisor x86 test kernel".
 *   2. fw_cfg over I/O: the 16-bit selector is written with outw to 0x510, data is read
 *      byte by byte with inb from 0x511. Keys: 0x0000 signature ("QEMU"), 0x0001 id
 *      (u32 LE, bit 0 = traditional interface must be set), 0x0005 NB_CPUS (u16 LE),
 *      0x0003 RAM_SIZE (u64 LE), 0x0014 CMDLINE_SIZE (u32 LE, NUL included) and 0x0015
 *      CMDLINE_DATA. Prints "fw_cfg: QEMU id=<n> cpus=<n> ram=<MiB> MiB" and
 *      "cmdline: <text>", or "fw_cfg: absent" (then 1 CPU is assumed, and the run
 *      counts as failed). With a Multiboot info (EAX = 0x2BADB002): prints
 *      "multiboot cmdline: <text>" if its flags bit 2 is set and
 *      "multiboot mem_upper=<KiB> KiB" if flags bit 0 is set. With another EAX, EBX
 *      is never dereferenced.
 *   3. SMP: copies the real-mode trampoline (entry.S) to 0x8000, software-enables the
 *      local APIC (0xFEE00000), sends INIT to all-excluding-self (ICR 0x000C4500),
 *      spins, then STARTUP vector 0x08 (ICR 0x000C4608) twice with a spin between
 *      (ICR high dword 0x310 written before low dword 0x300). Each AP takes a 4 KiB
 *      stack (lock xadd), reads its APIC ID (0xFEE00020 bits 31:24), takes the print
 *      spinlock (lock xchg), prints "CPU <apicid> up", increments cpus_up (lock xadd),
 *      releases the lock and halts (cli; hlt loop). Up to 16 CPUs (15 APs) get a stack.
 *   4. The BSP waits for cpus_up == NB_CPUS - 1, bounded by 2^31 pause iterations and
 *      a TSC deadline of 2^33 ticks (about 2-4 s), then prints "all <n> CPUs up" or
 *      "only <k> of <n> CPUs came up" (k counts the BSP).
 *   5. Exit: prints "exit <code>" (decimal), writes the code with outl to port 0xF4
 *      (QEMU isa-debug-exit,iobase=0xf4,iosize=4: host status (code << 1) | 1), then
 *      outw 0x2000 to port 0x604 (ACPI-style power-off), then cli; hlt forever.
 *
 * Command line (fw_cfg CMDLINE_DATA if non-empty, else the Multiboot cmdline;
 * whitespace-separated words, QEMU's Multiboot cmdline starts with the kernel path):
 *   exit=<decimal>  the exit code, whatever the outcome (default: 0x10 (16) on
 *                   success, 0x11 (17) on failure: fewer CPUs up than NB_CPUS, or
 *                   fw_cfg absent or with a bad id)
 *   spin=1          after line 1, print "spin" and spin forever with interrupts off
 *   triple=1        after line 1, print "triple fault", load an IDT with limit 0 and
 *                   execute ud2 (#UD -> #GP -> #DF -> triple fault: shutdown/reset).
 *                   ud2 rather than int3: software interrupts go through KVM's
 *                   instruction emulator on some hosts (kvm_pvm), which then fails
 *                   with KVM_EXIT_INTERNAL_ERROR instead of a triple fault.
 */
#include <stddef.h>
#include <stdint.h>

#define COM1 0x3F8
#define FW_CFG_SEL 0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_SIGNATURE 0x0000
#define FW_CFG_ID 0x0001
#define FW_CFG_RAM_SIZE 0x0003
#define FW_CFG_NB_CPUS 0x0005
#define FW_CFG_CMDLINE_SIZE 0x0014
#define FW_CFG_CMDLINE_DATA 0x0015
#define DEBUG_EXIT_PORT 0xF4
#define POWER_OFF_PORT 0x604

#define LAPIC_BASE 0xFEE00000u
#define LAPIC_ID 0x020
#define LAPIC_SVR 0x0F0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_INIT_ALL_BUT_SELF 0x000C4500u
#define ICR_STARTUP_ALL_BUT_SELF 0x000C4600u
#define ICR_BUSY (1u << 12)

#define MB_BOOT_MAGIC 0x2BADB002u
#define MB_INFO_MEMORY (1u << 0)
#define MB_INFO_CMDLINE (1u << 2)

#define TRAMPOLINE_ADDR 0x8000u /* STARTUP vector 0x08 */
#define MAX_CPUS 16
#define CMDLINE_MAX 512
#define EXIT_SUCCESS_CODE 0x10
#define EXIT_FAILURE_CODE 0x11

extern const char trampoline_start[], trampoline_end[];

struct multiboot_info {
	uint32_t flags;
	uint32_t mem_lower;
	uint32_t mem_upper;
	uint32_t boot_device;
	uint32_t cmdline;
};

static volatile uint32_t cpus_up;
static volatile uint32_t print_lock;
static char fw_cmdline[CMDLINE_MAX];
static char mb_cmdline[CMDLINE_MAX];

/* ---- port and MMIO access ---- */

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline uint32_t mmio_read32(uint32_t addr)
{
	uint32_t v;
	__asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(addr) : "memory");
	return v;
}

static inline void mmio_write32(uint32_t addr, uint32_t v)
{
	__asm__ volatile("movl %0, (%1)" : : "r"(v), "r"(addr) : "memory");
}

static inline void cpu_pause(void) { __asm__ volatile("pause" ::: "memory"); }

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static __attribute__((noreturn)) void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* ---- locks and atomics ---- */

static void lock(void)
{
	uint32_t v;
	do {
		v = 1;
		__asm__ volatile("lock xchgl %0, %1" : "+r"(v), "+m"(print_lock) : : "memory");
		if (v)
			cpu_pause();
	} while (v);
}

static void unlock(void)
{
	__asm__ volatile("" ::: "memory");
	print_lock = 0;
}

static void atomic_inc(volatile uint32_t *p)
{
	uint32_t one = 1;
	__asm__ volatile("lock xaddl %0, %1" : "+r"(one), "+m"(*p) : : "memory");
}

/* ---- COM1 ---- */

static void serial_init(void)
{
	outb(COM1 + 1, 0x00); /* IER: no interrupts */
	outb(COM1 + 3, 0x80); /* LCR: DLAB */
	outb(COM1 + 0, 0x01); /* DLL: divisor 1 (115200) */
	outb(COM1 + 1, 0x00); /* DLM */
	outb(COM1 + 3, 0x03); /* LCR: 8N1 */
	outb(COM1 + 2, 0xC7); /* FCR: FIFO on, clear both, 14-byte trigger */
	outb(COM1 + 4, 0x03); /* MCR: DTR, RTS */
}

static void putc(char c)
{
	while (!(inb(COM1 + 5) & 0x20)) /* LSR.THRE */
		cpu_pause();
	outb(COM1, (uint8_t)c);
}

static void puts(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			putc('\r');
		putc(*s);
	}
}

static void putu(uint32_t v)
{
	char buf[11];
	int i = sizeof(buf) - 1;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts(&buf[i]);
}

/* ---- fw_cfg ---- */

static void fw_cfg_select(uint16_t key) { outw(FW_CFG_SEL, key); }

static void fw_cfg_read(void *dst, uint32_t n)
{
	uint8_t *p = dst;
	while (n--)
		*p++ = inb(FW_CFG_DATA);
}

static uint32_t fw_cfg_u32(uint16_t key)
{
	uint8_t b[4];
	fw_cfg_select(key);
	fw_cfg_read(b, 4);
	return b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* ---- command line ---- */

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Finds the word "<key><decimal>" (key includes the '='); 1 and *val if found. */
static int cmdline_opt(const char *s, const char *key, uint32_t *val)
{
	int found = 0;
	while (*s) {
		while (is_space(*s))
			s++;
		const char *k = key, *w = s;
		while (*k && *w == *k) {
			k++;
			w++;
		}
		if (!*k && *w >= '0' && *w <= '9') {
			uint32_t v = 0;
			while (*w >= '0' && *w <= '9')
				v = v * 10 + (uint32_t)(*w++ - '0');
			if (!*w || is_space(*w)) {
				*val = v; /* the last occurrence wins */
				found = 1;
			}
		}
		while (*s && !is_space(*s))
			s++;
	}
	return found;
}

static int cmdline_flag(const char *s, const char *key)
{
	uint32_t v;
	return cmdline_opt(s, key, &v) && v == 1;
}

static void copy_str(char *dst, const char *src, uint32_t max)
{
	uint32_t i = 0;
	for (; i + 1 < max && src[i]; i++)
		dst[i] = src[i];
	dst[i] = 0;
}

/* ---- SMP ---- */

static void delay(uint32_t n)
{
	while (n--)
		cpu_pause();
}

static void lapic_icr(uint32_t low)
{
	mmio_write32(LAPIC_BASE + LAPIC_ICR_HI, 0);
	mmio_write32(LAPIC_BASE + LAPIC_ICR_LO, low);
	for (uint32_t i = 0; i < 1000000 && (mmio_read32(LAPIC_BASE + LAPIC_ICR_LO) & ICR_BUSY); i++)
		cpu_pause();
}

static void start_aps(void)
{
	uint32_t n = (uint32_t)(trampoline_end - trampoline_start);
	uint32_t dst = TRAMPOLINE_ADDR;
	const char *src = trampoline_start;
	__asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");

	mmio_write32(LAPIC_BASE + LAPIC_SVR, 0x1FF); /* software-enable, spurious 0xFF */
	lapic_icr(ICR_INIT_ALL_BUT_SELF);
	delay(100000); /* ~10 ms on hardware; KVM and TCG do not need it */
	lapic_icr(ICR_STARTUP_ALL_BUT_SELF | (TRAMPOLINE_ADDR >> 12));
	delay(10000);
	lapic_icr(ICR_STARTUP_ALL_BUT_SELF | (TRAMPOLINE_ADDR >> 12));
}

void ap_main(void)
{
	uint32_t id = mmio_read32(LAPIC_BASE + LAPIC_ID) >> 24;
	lock();
	puts("CPU ");
	putu(id);
	puts(" up\n");
	atomic_inc(&cpus_up);
	unlock();
}

static __attribute__((noreturn)) void triple_fault(void)
{
	static const struct __attribute__((packed)) {
		uint16_t limit;
		uint32_t base;
	} idt0 = {0, 0};
	__asm__ volatile("lidtl %0; ud2" : : "m"(idt0));
	halt_forever();
}

static __attribute__((noreturn)) void do_exit(uint32_t code)
{
	puts("exit ");
	putu(code);
	puts("\n");
	outl(DEBUG_EXIT_PORT, code);
	outw(POWER_OFF_PORT, 0x2000);
	halt_forever();
}

void __attribute__((noreturn)) kmain(uint32_t magic, uint32_t info_addr)
{
	int fw = 0, ok = 1;
	uint32_t id = 0, ncpus = 1, ram_mib = 0, mb_flags = 0, mem_upper = 0;

	serial_init();

	/* fw_cfg */
	char sig[4];
	fw_cfg_select(FW_CFG_SIGNATURE);
	fw_cfg_read(sig, 4);
	if (sig[0] == 'Q' && sig[1] == 'E' && sig[2] == 'M' && sig[3] == 'U') {
		uint8_t b[8];
		fw = 1;
		id = fw_cfg_u32(FW_CFG_ID);
		fw_cfg_select(FW_CFG_NB_CPUS);
		fw_cfg_read(b, 2);
		ncpus = b[0] | (uint32_t)b[1] << 8;
		fw_cfg_select(FW_CFG_RAM_SIZE);
		fw_cfg_read(b, 8);
		uint64_t ram = 0;
		for (int i = 7; i >= 0; i--)
			ram = ram << 8 | b[i];
		ram_mib = (uint32_t)(ram >> 20);
		uint32_t size = fw_cfg_u32(FW_CFG_CMDLINE_SIZE);
		if (size > CMDLINE_MAX - 1)
			size = CMDLINE_MAX - 1;
		fw_cfg_select(FW_CFG_CMDLINE_DATA);
		fw_cfg_read(fw_cmdline, size);
		fw_cmdline[size] = 0;
		if (!(id & 1))
			ok = 0;
	} else {
		ok = 0;
	}
	if (ncpus == 0)
		ncpus = 1;

	/* Multiboot info: only when the loader says there is one */
	if (magic == MB_BOOT_MAGIC) {
		const volatile struct multiboot_info *mbi = (const void *)info_addr;
		mb_flags = mbi->flags;
		mem_upper = mbi->mem_upper;
		if (mb_flags & MB_INFO_CMDLINE)
			copy_str(mb_cmdline, (const char *)mbi->cmdline, CMDLINE_MAX);
	}
	const char *cmdline = fw_cmdline[0] ? fw_cmdline : mb_cmdline;

	puts("pyaxvisor x86 test kernel\n");
	if (cmdline_flag(cmdline, "spin=")) {
		puts("spin\n");
		__asm__ volatile("cli; 1: jmp 1b");
	}
	if (cmdline_flag(cmdline, "triple=")) {
		puts("triple fault\n");
		triple_fault();
	}

	if (fw) {
		puts("fw_cfg: QEMU id=");
		putu(id);
		puts(" cpus=");
		putu(ncpus);
		puts(" ram=");
		putu(ram_mib);
		puts(" MiB\ncmdline: ");
		puts(fw_cmdline);
		puts("\n");
	} else {
		puts("fw_cfg: absent\n");
	}
	if (mb_flags & MB_INFO_CMDLINE) {
		puts("multiboot cmdline: ");
		puts(mb_cmdline);
		puts("\n");
	}
	if (mb_flags & MB_INFO_MEMORY) {
		puts("multiboot mem_upper=");
		putu(mem_upper);
		puts(" KiB\n");
	}

	if (ncpus > 1)
		start_aps();

	uint64_t t0 = rdtsc();
	for (uint32_t i = 0; i < (1u << 31); i++) {
		if (cpus_up >= ncpus - 1 || rdtsc() - t0 > (1ull << 33))
			break;
		cpu_pause();
	}

	uint32_t up = cpus_up + 1;
	lock();
	if (up >= ncpus) {
		puts("all ");
		putu(ncpus);
		puts(" CPUs up\n");
	} else {
		ok = 0;
		puts("only ");
		putu(up);
		puts(" of ");
		putu(ncpus);
		puts(" CPUs came up\n");
	}

	uint32_t code;
	if (!cmdline_opt(cmdline, "exit=", &code))
		code = ok ? EXIT_SUCCESS_CODE : EXIT_FAILURE_CODE;
	do_exit(code); /* with the lock held: late APs stay quiet */
}

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
 *      counts as failed). With a Multiboot info (EAX = 0x2BADB002) whose flags bit 2
 *      is set, the Multiboot command line is split as QEMU and GRUB write it, "<kernel
 *      path> <arguments>": prints "multiboot kernel: <path>" and "multiboot cmdline:
 *      <arguments>"; with flags bit 0, "multiboot mem_upper=<KiB> KiB". With another
 *      EAX, EBX is never dereferenced.
 *   3. Options that act right after line 1 (spin=1, triple=1) and before the SMP
 *      start (cpuid=N, acpi=1): see below.
 *   4. SMP: copies the real-mode trampoline (entry.S) to 0x8000, software-enables the
 *      local APIC (0xFEE00000), sends INIT to all-excluding-self (ICR 0x000C4500),
 *      spins, then STARTUP vector 0x08 (ICR 0x000C4608) twice with a spin between
 *      (ICR high dword 0x310 written before low dword 0x300). Each AP takes a 4 KiB
 *      stack (lock xadd), reads its APIC ID (0xFEE00020 bits 31:24), takes the print
 *      spinlock (lock xchg), prints "CPU <apicid> up", increments cpus_up (lock xadd),
 *      releases the lock and halts (cli; hlt loop). Up to 16 CPUs (15 APs) get a stack.
 *   5. The BSP waits for cpus_up == NB_CPUS - 1, bounded by 2^31 pause iterations and
 *      a TSC deadline of 2^33 ticks (about 2-4 s), then prints "all <n> CPUs up" or
 *      "only <k> of <n> CPUs came up" (k counts the BSP).
 *   6. Exit: prints "exit <code>" (decimal), writes the code with outl to port 0xF4
 *      (QEMU isa-debug-exit,iobase=0xf4,iosize=4: host status (code << 1) | 1), then
 *      powers off: with acpi=1 and a FADT PM1a_CNT_BLK and a \_S5 package found, prints
 *      "acpi: S5 power-off: PM1a_CNT 0x<port> = 0x<value>" and writes SLP_TYPa << 10 |
 *      SLP_EN (bit 13) there with outw; otherwise outw 0x2000 to port 0x604 (QEMU's
 *      PM1a_CNT with its S5 type 0). Then cli; hlt forever.
 *
 * Command line (fw_cfg CMDLINE_DATA if non-empty, else the Multiboot arguments, i.e.
 * its command line without the first word; whitespace-separated words):
 *   exit=<decimal>  the exit code, whatever the outcome (default: 0x10 (16) on
 *                   success, 0x11 (17) on failure: fewer CPUs up than NB_CPUS,
 *                   fw_cfg absent or with a bad id, or acpi=1 and the ACPI walk failed)
 *   spin=1          after line 1, print "spin" and spin forever with interrupts off
 *   triple=1        after line 1, print "triple fault", load an IDT with limit 0 and
 *                   execute ud2 (#UD -> #GP -> #DF -> triple fault: shutdown/reset).
 *                   ud2 rather than int3: software interrupts go through KVM's
 *                   instruction emulator on some hosts (kvm_pvm), which then fails
 *                   with KVM_EXIT_INTERNAL_ERROR instead of a triple fault.
 *   cpuid=<n>       time n (1..100000) executions of CPUID for each of the leaves 0x0,
 *                   0x1, 0x7, 0xB, 0xD, 0x80000001, 0x80000008 and 0x40000000 (subleaf 0)
 *                   with RDTSC; prints "cpuid: rdtsc pair median <c> cycles" (two
 *                   back-to-back RDTSCs) and per leaf "cpuid 0x<leaf>: <n> in <c>
 *                   cycles each, median <m>" (the mean of the whole loop, and the
 *                   median of the n single RDTSC-CPUID-RDTSC samples, in 64-cycle
 *                   buckets, which a preempted host thread does not move).
 *   acpi=1          walk the ACPI tables the way an OS finds them and print what it
 *                   finds, every line starting "acpi: ": the RSDP (signature "RSD
 *                   PTR " on a 16-byte boundary in the EBDA's first KiB, the EBDA
 *                   segment read from 0x40E, then in 0xE0000..0xFFFFF; the checksum of
 *                   its first 20 bytes and, from revision 2, of its whole length), the
 *                   XSDT (revision >= 2) or RSDT and every table it lists (signature,
 *                   address, length, revision, checksum), the MADT (local APIC address,
 *                   flags, every processor local APIC, I/O APIC, interrupt source
 *                   override and local APIC NMI entry), the FADT (SCI, SMI_CMD, PM1a
 *                   event and control blocks, the PM timer block and width, flags,
 *                   IAPC_BOOT_ARCH, the reset register; the X_ fields where present),
 *                   SCI_EN in PM1a_CNT, the FACS, the DSDT (checksum, the \_S5 package's
 *                   SLP_TYPa/SLP_TYPb, and the _CRS of the PNP0501 device: its I/O
 *                   ports and IRQ), and whether the PM timer counts (it waits for 3580
 *                   ticks, 1 ms, and prints the TSC cycles that took). The last line
 *                   is "acpi: ok" or "acpi: failed (<what>)"; the final power-off then
 *                   uses the FADT and \_S5 (step 6).
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
static const char *mb_path = "";
static const char *mb_args = "";

/* ---- port and MMIO access ---- */

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }

static inline uint16_t inw(uint16_t port)
{
	uint16_t v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline uint32_t inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

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

static void puthex(uint32_t v)
{
	static const char digits[] = "0123456789abcdef";
	char buf[11];
	buf[0] = '0';
	buf[1] = 'x';
	for (int i = 0; i < 8; i++)
		buf[2 + i] = digits[(v >> (28 - 4 * i)) & 0xF];
	buf[10] = 0;
	puts(buf);
}

/* ---- physical memory (flat segments, no paging: the address is the pointer) ---- */

/* The pointer is laundered through an empty asm so that the compiler does not treat
 * constant low addresses (0x40E) as out-of-bounds accesses of nothing. */
static inline const volatile uint8_t *phys(uint32_t addr)
{
	const volatile uint8_t *p;
	__asm__("" : "=r"(p) : "0"(addr));
	return p;
}

static uint8_t rd8(uint32_t a) { return *phys(a); }
static uint16_t rd16(uint32_t a) { return (uint16_t)(rd8(a) | rd8(a + 1) << 8); }
static uint32_t rd32(uint32_t a) { return rd16(a) | (uint32_t)rd16(a + 2) << 16; }

/* ---- 64-bit arithmetic without libgcc ---- */

static uint64_t udiv64(uint64_t n, uint32_t d)
{
	uint64_t q = 0, r = 0;
	for (int i = 63; i >= 0; i--) {
		r = r << 1 | ((n >> i) & 1);
		if (r >= d) {
			r -= d;
			q |= 1ull << i;
		}
	}
	return q;
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

/* ---- cpuid=N: the cost of a CPUID exit ---- */

#define CPUID_MAX_RUNS 100000u
#define HIST_SHIFT 6 /* 64-cycle buckets */
#define HIST_BUCKETS 4096

static uint32_t hist[HIST_BUCKETS];

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
			 : "0"(leaf), "2"(sub));
}

static void hist_add(uint64_t cycles)
{
	uint64_t b = cycles >> HIST_SHIFT;
	hist[b < HIST_BUCKETS ? b : HIST_BUCKETS - 1]++;
}

/* The median of the samples in the histogram (the middle of its bucket), emptying it. */
static uint32_t hist_median(uint32_t n)
{
	uint32_t seen = 0, median = 0;
	int found = 0;
	for (uint32_t b = 0; b < HIST_BUCKETS; b++) {
		seen += hist[b];
		if (!found && seen > n / 2) {
			median = (b << HIST_SHIFT) + (1u << (HIST_SHIFT - 1));
			found = 1;
		}
		hist[b] = 0;
	}
	return median;
}

static void cpuid_bench(uint32_t n)
{
	static const uint32_t leaves[] = {0x0, 0x1, 0x7, 0xB, 0xD, 0x80000001u, 0x80000008u,
					  0x40000000u};
	uint32_t r[4];
	if (n == 0 || n > CPUID_MAX_RUNS)
		n = n ? CPUID_MAX_RUNS : 1;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t a = rdtsc();
		uint64_t b = rdtsc();
		hist_add(b - a);
	}
	puts("cpuid: rdtsc pair median ");
	putu(hist_median(n));
	puts(" cycles\n");
	for (uint32_t l = 0; l < sizeof(leaves) / sizeof(leaves[0]); l++) {
		uint64_t t0 = rdtsc();
		for (uint32_t i = 0; i < n; i++) {
			uint64_t a = rdtsc();
			cpuid(leaves[l], 0, r);
			uint64_t b = rdtsc();
			hist_add(b - a);
		}
		uint64_t t1 = rdtsc();
		puts("cpuid ");
		puthex(leaves[l]);
		puts(": ");
		putu(n);
		puts(" in ");
		putu((uint32_t)udiv64(t1 - t0, n));
		puts(" cycles each, median ");
		putu(hist_median(n));
		puts("\n");
	}
}

/* ---- acpi=1: walk the ACPI tables ---- */

#define ACPI_HEADER 36
#define GAS_SYSTEM_IO 1
#define SLP_EN (1u << 13)
#define SCI_EN 1u
#define PM_TIMER_HZ 3579545u
#define PM_TICKS_1MS 3580u

static struct {
	int failed;
	const char *why;
	uint32_t pm1a_cnt;
	uint32_t pm_tmr;
	int tmr32;
	int have_s5;
	uint32_t slp_typ_s5;
	uint32_t cpus;
} acpi;

static void acpi_fail(const char *why)
{
	if (!acpi.failed) {
		acpi.failed = 1;
		acpi.why = why;
	}
}

static uint8_t sum_bytes(uint32_t addr, uint32_t len)
{
	uint8_t s = 0;
	while (len--)
		s = (uint8_t)(s + rd8(addr++));
	return s;
}

static int mem_is(uint32_t addr, const char *text, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (rd8(addr + i) != (uint8_t)text[i])
			return 0;
	return 1;
}

static void put_chars(uint32_t addr, uint32_t n)
{
	char buf[9];
	for (uint32_t i = 0; i < n && i < 8; i++) {
		char c = (char)rd8(addr + i);
		buf[i] = c >= 0x20 && c < 0x7F ? c : '?';
	}
	buf[n < 8 ? n : 8] = 0;
	puts(buf);
}

/* "RSD PTR " on a 16-byte boundary in [from, to) with valid checksums, or 0. */
static uint32_t scan_rsdp(uint32_t from, uint32_t to)
{
	for (uint32_t a = (from + 15) & ~15u; a + 20 <= to; a += 16) {
		if (!mem_is(a, "RSD PTR ", 8) || sum_bytes(a, 20) != 0)
			continue;
		if (rd8(a + 15) >= 2) {
			uint32_t len = rd32(a + 20);
			if (len < 36 || a + len > to || sum_bytes(a, len) != 0)
				continue;
		}
		return a;
	}
	return 0;
}

/* Prints the table's header line; 0 with the failure recorded if it is unusable. */
static uint32_t acpi_table(uint32_t addr, const char *want)
{
	puts("acpi: ");
	if (want && !mem_is(addr, want, 4)) {
		puts(want);
		puts(" missing at ");
		puthex(addr);
		puts("\n");
		acpi_fail(want);
		return 0;
	}
	uint32_t len = rd32(addr + 4);
	put_chars(addr, 4);
	puts(" at ");
	puthex(addr);
	puts(" length ");
	putu(len);
	puts(" revision ");
	putu(rd8(addr + 8));
	if (len < ACPI_HEADER || sum_bytes(addr, len) != 0) {
		puts(" checksum bad\n");
		acpi_fail("checksum");
		return 0;
	}
	puts(" checksum ok\n");
	return len;
}

static void acpi_madt(uint32_t a, uint32_t len)
{
	puts("acpi: MADT local APIC ");
	puthex(rd32(a + 36));
	puts(" flags ");
	puthex(rd32(a + 40));
	puts("\n");
	for (uint32_t p = a + 44; p + 2 <= a + len;) {
		uint32_t type = rd8(p), l = rd8(p + 1);
		if (l < 2 || p + l > a + len) {
			acpi_fail("MADT entry length");
			return;
		}
		puts("acpi: ");
		if (type == 0 && l >= 8) {
			uint32_t flags = rd32(p + 4);
			puts("CPU uid ");
			putu(rd8(p + 2));
			puts(" APIC ID ");
			putu(rd8(p + 3));
			puts(flags & 1 ? " enabled\n" : " disabled\n");
			if (flags & 1)
				acpi.cpus++;
		} else if (type == 1 && l >= 12) {
			puts("IOAPIC ID ");
			putu(rd8(p + 2));
			puts(" at ");
			puthex(rd32(p + 4));
			puts(" GSI base ");
			putu(rd32(p + 8));
			puts("\n");
		} else if (type == 2 && l >= 10) {
			puts("override bus ");
			putu(rd8(p + 2));
			puts(" IRQ ");
			putu(rd8(p + 3));
			puts(" -> GSI ");
			putu(rd32(p + 4));
			puts(" flags ");
			puthex(rd16(p + 8));
			puts("\n");
		} else if (type == 4 && l >= 6) {
			puts("local APIC NMI uid ");
			puthex(rd8(p + 2));
			puts(" LINT");
			putu(rd8(p + 5));
			puts(" flags ");
			puthex(rd16(p + 3));
			puts("\n");
		} else {
			puts("MADT entry type ");
			putu(type);
			puts(" length ");
			putu(l);
			puts("\n");
		}
		p += l;
	}
}

/* A port from a FADT 32-bit block field and its Generic Address Structure (the
 * X_ field, if the table is long enough to have it and it is set). */
static uint32_t fadt_port(uint32_t a, uint32_t len, uint32_t legacy_off, uint32_t gas_off)
{
	if (len >= gas_off + 12 && rd32(a + gas_off + 4) != 0) {
		if (rd8(a + gas_off) != GAS_SYSTEM_IO || rd32(a + gas_off + 8) != 0)
			acpi_fail("FADT X_ block not in I/O space");
		return rd32(a + gas_off + 4);
	}
	return rd32(a + legacy_off);
}

static uint32_t aml_pkglength(uint32_t *p)
{
	uint32_t lead = rd8(*p), n = lead >> 6, len = n ? lead & 0xF : lead & 0x3F;
	for (uint32_t i = 0; i < n; i++)
		len |= (uint32_t)rd8(*p + 1 + i) << (4 + 8 * i);
	*p += 1 + n;
	return len;
}

/* An integer package element: ZeroOp, OneOp, BytePrefix, WordPrefix; -1 otherwise. */
static int32_t aml_small_int(uint32_t *p)
{
	uint32_t op = rd8(*p);
	*p += 1;
	if (op == 0x00 || op == 0x01)
		return (int32_t)op;
	if (op == 0x0A)
		return rd8((*p)++);
	if (op == 0x0B) {
		*p += 2;
		return rd16(*p - 2);
	}
	return -1;
}

static uint32_t find_bytes(uint32_t from, uint32_t to, const char *pat, uint32_t n)
{
	for (uint32_t a = from; a + n <= to; a++)
		if (mem_is(a, pat, n))
			return a;
	return 0;
}

static void acpi_dsdt(uint32_t a, uint32_t len)
{
	uint32_t end = a + len;
	uint32_t s5 = find_bytes(a + ACPI_HEADER, end, "_S5_", 4);
	if (s5 && rd8(s5 + 4) == 0x12) { /* PackageOp */
		uint32_t p = s5 + 5;
		aml_pkglength(&p);
		uint32_t count = rd8(p++);
		int32_t typa = count >= 1 ? aml_small_int(&p) : -1;
		int32_t typb = count >= 2 ? aml_small_int(&p) : -1;
		if (typa >= 0 && typa <= 7) {
			acpi.have_s5 = 1;
			acpi.slp_typ_s5 = (uint32_t)typa;
			puts("acpi: \\_S5 SLP_TYPa ");
			putu((uint32_t)typa);
			puts(" SLP_TYPb ");
			putu(typb >= 0 ? (uint32_t)typb : 0);
			puts("\n");
		}
	}
	if (!acpi.have_s5) {
		puts("acpi: no \\_S5 package in the DSDT\n");
		acpi_fail("\\_S5");
	}
	/* EisaId ("PNP0501") as a DWordConst: 0C 41 D0 05 01 */
	static const char pnp0501[] = {0x0C, 0x41, (char)0xD0, 0x05, 0x01};
	uint32_t dev = find_bytes(a + ACPI_HEADER, end, pnp0501, 5);
	uint32_t crs = dev ? find_bytes(dev, end, "_CRS", 4) : 0;
	if (!crs || rd8(crs + 4) != 0x11) { /* BufferOp */
		puts("acpi: no PNP0501 device with a _CRS buffer in the DSDT\n");
		acpi_fail("PNP0501");
		return;
	}
	uint32_t p = crs + 5, start = p;
	uint32_t blen = aml_pkglength(&p);
	uint32_t bend = start + blen;
	int32_t size = aml_small_int(&p);
	if (size < 0 || bend > end) {
		acpi_fail("_CRS buffer");
		return;
	}
	puts("acpi: PNP0501 _CRS");
	while (p < bend) {
		uint32_t tag = rd8(p);
		if (tag & 0x80) { /* large item */
			p += 3 + rd16(p + 1);
			continue;
		}
		uint32_t type = (tag >> 3) & 0xF, l = tag & 7;
		if (type == 0xF)
			break;
		if (type == 0x8 && l >= 7) {
			puts(" io ");
			puthex(rd16(p + 2));
			puts(" length ");
			putu(rd8(p + 7));
		} else if (type == 0x4 && l >= 2) {
			uint32_t mask = rd16(p + 1);
			for (uint32_t irq = 0; irq < 16; irq++)
				if (mask & (1u << irq)) {
					puts(" irq ");
					putu(irq);
				}
		}
		p += 1 + l;
	}
	puts("\n");
}

static void acpi_fadt(uint32_t a, uint32_t len)
{
	uint32_t pm1a_evt = fadt_port(a, len, 56, 148);
	uint32_t pm1a_cnt = fadt_port(a, len, 64, 172);
	uint32_t pm_tmr = fadt_port(a, len, 76, 208);
	uint32_t flags = rd32(a + 112);
	puts("acpi: FADT revision ");
	putu(rd8(a + 8));
	puts(".");
	putu(len > 131 ? rd8(a + 131) : 0);
	puts(" SCI ");
	putu(rd16(a + 46));
	puts(" SMI_CMD ");
	puthex(rd32(a + 48));
	puts(" PM1a_EVT ");
	puthex(pm1a_evt);
	puts(" PM1a_CNT ");
	puthex(pm1a_cnt);
	puts(" PM_TMR ");
	puthex(pm_tmr);
	puts(flags & (1u << 8) ? " (32-bit)" : " (24-bit)");
	puts(" flags ");
	puthex(flags);
	puts(" IAPC_BOOT_ARCH ");
	puthex(rd16(a + 109));
	puts("\n");
	if (len >= 129 && flags & (1u << 10)) {
		puts("acpi: FADT reset register space ");
		putu(rd8(a + 116));
		puts(" address ");
		puthex(rd32(a + 120));
		puts(" value ");
		puthex(rd8(a + 128));
		puts("\n");
	}
	acpi.pm1a_cnt = pm1a_cnt;
	acpi.pm_tmr = rd8(a + 91) >= 4 ? pm_tmr : 0;
	acpi.tmr32 = (flags >> 8) & 1;
	if (pm1a_cnt) {
		puts("acpi: PM1a_CNT reads ");
		puthex(inw((uint16_t)pm1a_cnt));
		puts(inw((uint16_t)pm1a_cnt) & SCI_EN ? " (SCI_EN set)\n" : " (SCI_EN clear)\n");
	}
	uint32_t facs = len >= 140 && rd32(a + 132) ? rd32(a + 132) : rd32(a + 36);
	if (facs) {
		if (mem_is(facs, "FACS", 4) && rd32(facs + 4) >= 64) {
			puts("acpi: FACS at ");
			puthex(facs);
			puts(" length ");
			putu(rd32(facs + 4));
			puts(" version ");
			putu(rd8(facs + 32));
			puts("\n");
		} else {
			puts("acpi: no FACS at ");
			puthex(facs);
			puts("\n");
			acpi_fail("FACS");
		}
	}
	uint32_t dsdt = len >= 148 && rd32(a + 140) ? rd32(a + 140) : rd32(a + 40);
	uint32_t dlen = acpi_table(dsdt, "DSDT");
	if (dlen)
		acpi_dsdt(dsdt, dlen);
}

static void acpi_pm_timer(void)
{
	if (!acpi.pm_tmr) {
		puts("acpi: no PM timer\n");
		return;
	}
	uint32_t mask = acpi.tmr32 ? 0xFFFFFFFFu : 0xFFFFFFu;
	uint32_t first = inl((uint16_t)acpi.pm_tmr) & mask;
	uint64_t t0 = rdtsc();
	uint32_t now = first;
	for (uint32_t i = 0; i < (1u << 28); i++) {
		now = inl((uint16_t)acpi.pm_tmr) & mask;
		if (((now - first) & mask) >= PM_TICKS_1MS)
			break;
	}
	uint64_t t1 = rdtsc();
	if (((now - first) & mask) < PM_TICKS_1MS) {
		puts("acpi: PM timer does not count\n");
		acpi_fail("PM timer");
		return;
	}
	puts("acpi: PM timer counts: ");
	putu((now - first) & mask);
	puts(" ticks in ");
	putu((uint32_t)(t1 - t0));
	puts(" TSC cycles\n");
}

static void acpi_walk(void)
{
	uint32_t ebda = (uint32_t)rd16(0x40E) << 4;
	uint32_t rsdp = 0;
	if (ebda >= 0x400 && ebda < 0xA0000)
		rsdp = scan_rsdp(ebda, ebda + 1024);
	if (!rsdp)
		rsdp = scan_rsdp(0xE0000, 0x100000);
	if (!rsdp) {
		puts("acpi: no RSDP\n");
		acpi_fail("RSDP");
		goto done;
	}
	uint32_t rev = rd8(rsdp + 15);
	puts("acpi: RSDP at ");
	puthex(rsdp);
	puts(" revision ");
	putu(rev);
	puts(" OEM ");
	put_chars(rsdp + 9, 6);
	puts("\n");
	int x = rev >= 2 && rd32(rsdp + 24) && !rd32(rsdp + 28);
	uint32_t root = x ? rd32(rsdp + 24) : rd32(rsdp + 16);
	uint32_t rlen = acpi_table(root, x ? "XSDT" : "RSDT");
	if (!rlen)
		goto done;
	uint32_t step = x ? 8 : 4;
	int have_madt = 0, have_fadt = 0;
	for (uint32_t e = root + ACPI_HEADER; e + step <= root + rlen; e += step) {
		uint32_t t = rd32(e);
		if (x && rd32(e + 4)) {
			puts("acpi: table above 4 GiB\n");
			acpi_fail("table address");
			continue;
		}
		uint32_t tlen = acpi_table(t, NULL);
		if (!tlen)
			continue;
		if (mem_is(t, "APIC", 4)) {
			have_madt = 1;
			acpi_madt(t, tlen);
		} else if (mem_is(t, "FACP", 4)) {
			have_fadt = 1;
			acpi_fadt(t, tlen);
		}
	}
	if (!have_madt)
		acpi_fail("MADT");
	if (!have_fadt)
		acpi_fail("FADT");
	puts("acpi: MADT lists ");
	putu(acpi.cpus);
	puts(" enabled CPUs\n");
	acpi_pm_timer();
done:
	if (acpi.failed) {
		puts("acpi: failed (");
		puts(acpi.why);
		puts(")\n");
	} else {
		puts("acpi: ok\n");
	}
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
	if (acpi.pm1a_cnt && acpi.have_s5 && !acpi.failed) {
		uint32_t value = acpi.slp_typ_s5 << 10 | SLP_EN;
		puts("acpi: S5 power-off: PM1a_CNT ");
		puthex(acpi.pm1a_cnt);
		puts(" = ");
		puthex(value);
		puts("\n");
		outw((uint16_t)acpi.pm1a_cnt, (uint16_t)value);
	}
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
		if (mb_flags & MB_INFO_CMDLINE) {
			/* "<kernel path> <arguments>", as QEMU and GRUB write it */
			copy_str(mb_cmdline, (const char *)mbi->cmdline, CMDLINE_MAX);
			char *c = mb_cmdline;
			while (is_space(*c))
				c++;
			mb_path = c;
			while (*c && !is_space(*c))
				c++;
			if (*c) {
				*c++ = 0;
				while (is_space(*c))
					c++;
			}
			mb_args = c;
		}
	}
	const char *cmdline = fw_cmdline[0] ? fw_cmdline : mb_args;

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
		puts("multiboot kernel: ");
		puts(mb_path);
		puts("\nmultiboot cmdline: ");
		puts(mb_args);
		puts("\n");
	}
	if (mb_flags & MB_INFO_MEMORY) {
		puts("multiboot mem_upper=");
		putu(mem_upper);
		puts(" KiB\n");
	}

	uint32_t runs;
	if (cmdline_opt(cmdline, "cpuid=", &runs))
		cpuid_bench(runs);
	if (cmdline_flag(cmdline, "acpi=")) {
		acpi_walk();
		if (acpi.failed)
			ok = 0;
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

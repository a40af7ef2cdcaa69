// SPDX-License-Identifier: GPL-2.0
/*
 * keel_fuzz_guest: a hostile-guest fuzzer. Domains of 1 to 4 vCPUs run, each on its own
 * thread, random instruction bytes and crafted attacks in real, 32-bit protected and 64-bit
 * long mode: wild memory accesses (RAM, ROM, MMIO, outside the map), RDMSR/WRMSR with random
 * indexes and values, IN/OUT/INS/OUTS on random ports, MOV to and from CR0/CR3/CR4/CR8,
 * XSETBV, exceptions, INT n, triple faults, `cli; jmp .`, HLT with IF clear, VMCALL/VMMCALL
 * with random registers, VMX/SVM instructions, and more. Every exit is served (port and MMIO
 * reads answered with random data, hypercalls with random results) and the vCPU runs again; a
 * periodic SIGALRM bounds every run (KEEL_VCPU_RUN returns EINTR). A run that never returns is
 * the host-harming bug this hunts: a watchdog thread reports it, naming the seed and the case.
 * Meanwhile a canary domain on another thread checksums its memory over and over and must get
 * the right value every time: the host and the other domains are unaffected.
 *
 * TAP; runs inside the test VM as root with keel.ko loaded. See --help.
 */
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "guest.h"
#include "fuzz.h"

struct fuzz_watchdog fuzz_wd;

static const char usage[] =
	"usage: keel_fuzz_guest [--seconds N] [--seed S] [--case C] [--no-known-wedges]\n"
	"                       [--hang-seconds H] [--run-ms M] [--verbose]\n"
	"\n"
	"Runs hostile guests in Keel domains for N seconds (default 90): each case is a domain of\n"
	"1 to 4 vCPUs in real, 32-bit or 64-bit mode running random instruction bytes and crafted\n"
	"attacks (MSRs, ports, control registers, XSETBV, exceptions, triple faults, spins with\n"
	"interrupts off, hypercalls, wild memory accesses), every exit served, every run bounded by\n"
	"a SIGALRM; a canary domain checksums its memory meanwhile. Prints TAP and the figures\n"
	"(cases, exits by kind, errors by errno, runs ended by a signal, seed, time).\n"
	"\n"
	"  --seconds N         how long to fuzz (default 90)\n"
	"  --seed S            the seed every case derives from (default: from the clock; printed)\n"
	"  --case C            run only case C of the seed (replays a finding), then the checks\n"
	"  --no-known-wedges   leave out the guests known to wedge a host CPU under QEMU until\n"
	"                      Keel works around them (EFER.LME set by WRMSR outside long mode)\n"
	"  --hang-seconds H    a run that has not returned after H s is a hang (default 20)\n"
	"  --run-ms M          the SIGALRM period that bounds each run (default 20)\n"
	"  --verbose           print every case\n"
	"  --help              this text\n"
	"\n"
	"Exit status: 0 when every test passed, 1 when one failed, 3 on a hung run.\n";

/* --- Options and figures. ---------------------------------------------------------------- */

/* The test VM's QEMU (an AMD CPU) has bugs of its own that random guests reach. */
static bool under_qemu;

static uint64_t opt_seconds = 90, opt_seed, opt_case = UINT64_MAX, opt_hang = 20, opt_run_ms = 20;
static bool opt_known_wedges = true, opt_verbose;

static struct fuzz_counts counts;
static _Atomic uint64_t nr_cases, nr_runs, nr_bad_exits, nr_bad_errors;
static _Atomic uint64_t canary_rounds, canary_wrong;
static _Atomic bool stop_canary;
static uint64_t t_start;
static char bad_example[256];
static pthread_mutex_t bad_lock = PTHREAD_MUTEX_INITIALIZER;

static void report_figures(void)
{
	printf("# seed %llu, %llu cases, %llu runs, %llu s\n", (ull)opt_seed,
	       (ull)atomic_load(&nr_cases), (ull)atomic_load(&nr_runs),
	       (ull)((fuzz_now_ns() - t_start) / 1000000000ULL));
	print_counts(&counts);
	printf("# canary: %llu rounds, %llu wrong\n", (ull)atomic_load(&canary_rounds),
	       (ull)atomic_load(&canary_wrong));
	fflush(stdout);
}

static void note_bad(_Atomic uint64_t *counter, uint64_t kase, const char *fmt, ...)
{
	va_list ap;

	atomic_fetch_add(counter, 1);
	pthread_mutex_lock(&bad_lock);
	if (!bad_example[0]) {
		int n = snprintf(bad_example, sizeof(bad_example), "case %llu: ", (ull)kase);
		va_start(ap, fmt);
		vsnprintf(bad_example + n, sizeof(bad_example) - n, fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&bad_lock);
}

/* --- The guests' memory map. -------------------------------------------------------------- */

#define RAM_SIZE    SZ_2M
#define ROM_GPA     0x400000ULL
#define ROM_SIZE    SZ_64K
#define MMIO_GPA    0x800000ULL
#define MMIO_SIZE   SZ_64K
#define APIC_GPA    0xfee00000ULL
#define CODE_BASE   0x10000ULL   /* vCPU i's code at CODE_BASE + i * CODE_STRIDE */
#define CODE_STRIDE 0x2000ULL
#define CODE_MAX    0x1000
#define STACK_TOP   0x8000ULL    /* vCPU i's stack below STACK_TOP + i * 0x800 */
#define DATA_GPA    0x9000ULL    /* INS/OUTS buffers */
#define PT_GPA      0x100000ULL  /* long mode: PML4, PDPT, 4 PDs: the low 4 GiB, 2 MiB pages */
#define GDT_GPA     0x106000ULL
#define MAX_VCPUS   4

enum { MODE_REAL, MODE_PROT32, MODE_LONG, NR_MODES };
static const char *const mode_names[] = { "real", "prot32", "long64" };

static bool in_mmio(uint64_t gpa)
{
	return (gpa >= MMIO_GPA && gpa < MMIO_GPA + MMIO_SIZE) ||
	       (gpa >= APIC_GPA && gpa < APIC_GPA + SZ_4K);
}

/* --- Emitting guest code. ----------------------------------------------------------------- */

struct code {
	uint8_t b[CODE_MAX];
	size_t n;
	int mode;
};

static void emit(struct code *c, int n, ...)
{
	va_list ap;

	va_start(ap, n);
	for (int i = 0; i < n; i++) {
		int v = va_arg(ap, int);

		if (c->n < CODE_MAX)
			c->b[c->n++] = v;
	}
	va_end(ap);
}

static void emit_le(struct code *c, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		emit(c, 1, (int)((v >> (8 * i)) & 0xff));
}

enum { EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI };

/* mov $imm, %reg: 32 bits (zero-extended in long mode), 64 with `wide` in long mode. */
static void mov_imm(struct code *c, int reg, uint64_t imm, bool wide)
{
	if (c->mode == MODE_LONG && wide) {
		emit(c, 2, 0x48, 0xb8 + reg);
		emit_le(c, imm, 8);
		return;
	}
	if (c->mode == MODE_REAL)
		emit(c, 1, 0x66);
	emit(c, 1, 0xb8 + reg);
	emit_le(c, imm, 4);
}

/* An operand-size prefix for a 16-bit operation outside real mode. */
static void op16(struct code *c)
{
	if (c->mode != MODE_REAL)
		emit(c, 1, 0x66);
}

/* Prefixes for a 32-bit operand and address in real mode (nothing elsewhere). */
static void op32_addr32(struct code *c)
{
	if (c->mode == MODE_REAL)
		emit(c, 2, 0x67, 0x66);
}

static const uint32_t msrs[] = {
	0x10, 0x1b, 0x3a, 0x48, 0x49, 0x8b, 0xfe, 0x174, 0x175, 0x176, 0x179, 0x1a0, 0x1d9,
	0x277, 0x2ff, 0x480, 0x481, 0x482, 0x485, 0x48b, 0x48d, 0x491, 0x6e0, 0x802, 0x80b,
	0x830, 0x838, 0xc0000080, 0xc0000081, 0xc0000082, 0xc0000084, 0xc0000100,
	0xc0000101, 0xc0000102, 0xc0000103, 0xc0010010, 0xc0010114, 0xc0010117, 0xc0010140,
	0xc0011029, 0x40000000, 0x40000200, 0x4b564d00,
};

static uint32_t rnd_msr(struct rng *r)
{
	if (one_in(r, 4))
		return (uint32_t)rnd_interesting(r);
	return msrs[rnd(r, sizeof(msrs) / sizeof(msrs[0]))];
}

static uint64_t rnd_addr(struct rng *r)
{
	static const uint64_t where[] = {
		0x0, DATA_GPA, RAM_SIZE - 4, RAM_SIZE, ROM_GPA, ROM_GPA + ROM_SIZE - 2, MMIO_GPA,
		MMIO_GPA + 0x7ff, MMIO_GPA + MMIO_SIZE - 1, APIC_GPA, APIC_GPA + 0x300,
		0xfec00000, 0xfffffff0, 0x10000000, 0x7ffffffc, PT_GPA, GDT_GPA, CODE_BASE,
	};

	if (one_in(r, 3))
		return rnd_interesting(r);
	return where[rnd(r, sizeof(where) / sizeof(where[0]))] + rnd(r, 16);
}

/* Sets eax/ecx/edx/ebx/esi/edi to random values. */
static void random_gprs(struct code *c, struct rng *r)
{
	for (int reg = EAX; reg <= EDI; reg++)
		if (reg != ESP && reg != EBP && one_in(r, 2))
			mov_imm(c, reg, rnd_interesting(r), one_in(r, 2));
}

/* One crafted attack. */
static void emit_attack(struct code *c, struct rng *r)
{
	int cr;

	switch (rnd(r, 24)) {
	case 0: /* RDMSR */
		mov_imm(c, ECX, rnd_msr(r), false);
		emit(c, 2, 0x0f, 0x32);
		break;
	case 1: { /* WRMSR */
		uint32_t msr = rnd_msr(r);
		uint64_t v = rnd_interesting(r);

		/* Known: EFER.LME outside long mode wedges a host CPU under QEMU. */
		if (!opt_known_wedges && msr == 0xc0000080 && c->mode != MODE_LONG)
			v &= ~X86_EFER_LME;
		mov_imm(c, ECX, msr, false);
		mov_imm(c, EAX, (uint32_t)v, false);
		mov_imm(c, EDX, v >> 32, false);
		emit(c, 2, 0x0f, 0x30);
		break;
	}
	case 2: { /* IN/OUT */
		static const uint8_t ops[] = { 0xe4, 0xe5, 0xe6, 0xe7, 0xec, 0xed, 0xee, 0xef };
		uint8_t op = ops[rnd(r, 8)];

		if (one_in(r, 3))
			emit(c, 1, 0x66);
		mov_imm(c, EAX, rng_next(r), false);
		if (op >= 0xec) {
			op16(c);
			emit(c, 1, 0xba);
			emit_le(c, one_in(r, 4) ? rnd(r, 0x10000) : 0xcf8 + rnd(r, 8), 2);
			emit(c, 1, op);
		} else {
			emit(c, 2, op, (int)rnd(r, 256));
		}
		break;
	}
	case 3: /* INS/OUTS, sometimes with REP */
		mov_imm(c, ECX, one_in(r, 4) ? rnd_interesting(r) : rnd(r, 16), false);
		mov_imm(c, EDI, one_in(r, 3) ? rnd_addr(r) : DATA_GPA, false);
		mov_imm(c, ESI, one_in(r, 3) ? rnd_addr(r) : DATA_GPA, false);
		op16(c);
		emit(c, 1, 0xba);
		emit_le(c, rnd(r, 0x10000), 2);
		if (one_in(r, 2))
			emit(c, 1, 0xf3);
		if (one_in(r, 3))
			emit(c, 1, 0x66);
		emit(c, 1, 0x6c + (int)rnd(r, 4));
		break;
	case 4: /* MOV to a control register */
	case 5:
		cr = (int[]){ 0, 3, 4, 8, 2 }[rnd(r, 5)];
		if (cr == 8 && c->mode != MODE_LONG)
			cr = 0;
		if (cr == 0 && one_in(r, 2)) {
			/* Flip one bit of CR0 rather than load a random value. */
			emit(c, 3, 0x0f, 0x20, 0xc0);
			op32_addr32(c);
			emit(c, 1, 0x35);
			emit_le(c, 1ULL << rnd(r, 32), 4);
		} else {
			mov_imm(c, EAX, rnd_interesting(r), true);
		}
		if (cr == 8)
			emit(c, 1, 0x44);
		emit(c, 3, 0x0f, 0x22, 0xc0 | ((cr & 7) << 3));
		break;
	case 6: /* MOV from a control or debug register */
		cr = (int[]){ 0, 2, 3, 4, 8 }[rnd(r, 5)];
		if (cr == 8 && c->mode == MODE_LONG)
			emit(c, 1, 0x44);
		else if (cr == 8)
			cr = 4;
		if (one_in(r, 3))
			emit(c, 3, 0x0f, 0x21, 0xc0 | ((int)rnd(r, 8) << 3));
		else
			emit(c, 3, 0x0f, 0x20, 0xc0 | ((cr & 7) << 3));
		break;
	case 7: /* XSETBV, XGETBV */
		mov_imm(c, ECX, one_in(r, 2) ? 0 : rnd_interesting(r), false);
		mov_imm(c, EAX, one_in(r, 2) ? rnd(r, 8) : rnd_interesting(r), false);
		mov_imm(c, EDX, one_in(r, 2) ? 0 : rng_next(r), false);
		emit(c, 3, 0x0f, 0x01, one_in(r, 4) ? 0xd0 : 0xd1);
		break;
	case 8: /* exceptions */
		switch (rnd(r, 6)) {
		case 0: emit(c, 2, 0xcd, (int)rnd(r, 256)); break;          /* INT n */
		case 1: emit(c, 1, 0xcc); break;                            /* INT3 */
		case 2: emit(c, 2, 0x0f, 0x0b); break;                      /* UD2 */
		case 3: emit(c, 4, 0x31, 0xc9, 0xf7, 0xf1); break;          /* DIV by 0 */
		case 4: emit(c, 1, 0xf1); break;                            /* INT1 */
		default: emit(c, 1, c->mode == MODE_LONG ? 0xcc : 0xce); break; /* INTO */
		}
		break;
	case 9: /* a triple fault for sure: an IDT with limit 0 and an exception */
		mov_imm(c, EAX, DATA_GPA + 0x800, false);
		op32_addr32(c);
		emit(c, 3, 0x0f, 0x01, 0x18); /* lidt (%eax): zeroed RAM, limit 0 */
		emit(c, 1, 0xcc);
		break;
	case 10: /* spin with interrupts off */
		emit(c, 3, 0xfa, 0xeb, 0xfe);
		break;
	case 11: /* HLT with IF clear, or set */
		emit(c, 2, one_in(r, 2) ? 0xfa : 0xfb, 0xf4);
		break;
	case 12: /* VMCALL/VMMCALL with random registers */
	case 13:
		random_gprs(c, r);
		mov_imm(c, EAX, one_in(r, 2) ? rnd(r, 64) : rnd_interesting(r), one_in(r, 2));
		emit(c, 3, 0x0f, 0x01, one_in(r, 2) ? 0xc1 : 0xd9);
		break;
	case 14: /* a wild read or write */
	case 15:
		mov_imm(c, EAX, rnd_addr(r), c->mode == MODE_LONG && one_in(r, 4));
		mov_imm(c, ECX, rng_next(r), false);
		op32_addr32(c);
		if (c->mode == MODE_LONG && one_in(r, 2))
			emit(c, 1, 0x48);
		emit(c, 2, one_in(r, 2) ? 0x89 : 0x8b, 0x08);
		break;
	case 16: /* CPUID */
		mov_imm(c, EAX, one_in(r, 2) ? rnd(r, 0x20) | (rnd(r, 2) ? 0x80000000 : 0)
					       : (uint32_t)rnd_interesting(r), false);
		mov_imm(c, ECX, rnd(r, 4), false);
		emit(c, 2, 0x0f, 0xa2);
		break;
	case 17: { /* VMX and SVM instructions, with %eax at some memory */
		static const uint8_t insns[][4] = {
			{ 3, 0x01, 0xd8 }, { 3, 0x01, 0xda }, { 3, 0x01, 0xdb }, { 3, 0x01, 0xdc },
			{ 3, 0x01, 0xdd }, { 3, 0x01, 0xde }, { 3, 0x01, 0xdf }, { 3, 0x01, 0xc2 },
			{ 3, 0x01, 0xc3 }, { 3, 0x01, 0xc4 }, { 3, 0xc7, 0x30 }, { 3, 0x78, 0xc1 },
			{ 3, 0x79, 0xc1 },
		};
		const uint8_t *i = insns[rnd(r, sizeof(insns) / sizeof(insns[0]))];

		mov_imm(c, EAX, one_in(r, 2) ? DATA_GPA : rnd_addr(r), false);
		if (one_in(r, 3))
			emit(c, 1, one_in(r, 2) ? 0xf3 : 0x66); /* VMXON, VMCLEAR */
		emit(c, 3, 0x0f, i[1], i[2]);
		break;
	}
	case 18: { /* privileged and odd instructions */
		static const uint8_t insns[][4] = {
			{ 2, 0x0f, 0x09 }, { 2, 0x0f, 0x08 }, { 2, 0x0f, 0x31 }, { 3, 0x0f, 0x01, 0xf9 },
			{ 2, 0x0f, 0x33 }, { 3, 0x0f, 0x01, 0xc8 }, { 3, 0x0f, 0x01, 0xc9 },
			{ 2, 0x0f, 0x06 }, { 2, 0x0f, 0xaa }, { 2, 0x0f, 0x34 }, { 2, 0x0f, 0x05 },
			{ 1, 0xcf }, { 3, 0x0f, 0xc7, 0xf0 }, { 3, 0x0f, 0x01, 0xca },
			{ 3, 0x0f, 0x01, 0xcb }, { 3, 0x0f, 0x01, 0xee }, { 3, 0x0f, 0x01, 0xef },
			{ 3, 0x0f, 0x01, 0xd4 }, { 3, 0x0f, 0x01, 0xd5 }, { 2, 0x0f, 0x07 },
			{ 2, 0x0f, 0x35 }, { 3, 0x0f, 0x00, 0xd8 },
		};
		const uint8_t *i = insns[rnd(r, sizeof(insns) / sizeof(insns[0]))];

		random_gprs(c, r);
		for (int k = 1; k <= i[0]; k++)
			emit(c, 1, i[k]);
		break;
	}
	case 19: /* LGDT/LIDT/LLDT/LTR/INVLPG/XSAVE/XRSTOR/FXRSTOR at some memory */
		mov_imm(c, EAX, one_in(r, 2) ? DATA_GPA : rnd_addr(r), false);
		op32_addr32(c);
		switch (rnd(r, 7)) {
		case 0: emit(c, 3, 0x0f, 0x01, 0x10); break;
		case 1: emit(c, 3, 0x0f, 0x01, 0x18); break;
		case 2: emit(c, 3, 0x0f, 0x01, 0x38); break;
		case 3: emit(c, 3, 0x0f, 0xae, 0x20); break;
		case 4: emit(c, 3, 0x0f, 0xae, 0x28); break;
		case 5: emit(c, 3, 0x0f, 0xae, 0x08); break;
		default: emit(c, 3, 0x0f, 0x00, one_in(r, 2) ? 0x10 : 0x18); break;
		}
		break;
	case 20: /* POPF with random flags (TF, NT, AC, IOPL, IF...) */
		mov_imm(c, EAX, rnd_interesting(r) | 2, false);
		if (c->mode == MODE_REAL)
			emit(c, 1, 0x66);
		emit(c, 2, 0x50, 0x9d);
		break;
	case 21: { /* MOV to a debug register */
		uint64_t v = rnd_interesting(r);
		int dr = rnd(r, 8);

		/* QEMU crashes on a data breakpoint whose range wraps past 2^64 - 1 (it fails to
		 * insert the watchpoint, then removes the NULL one): such addresses are left out. */
		if (under_qemu && dr < 4 && v >= ~7ULL)
			v &= ~0xfULL;
		mov_imm(c, EAX, v, true);
		emit(c, 3, 0x0f, 0x23, 0xc0 | (dr << 3));
		break;
	}
	case 22: /* a far jump or a segment load with a random selector */
		mov_imm(c, EAX, rnd(r, 0x10000), false);
		emit(c, 2, 0x8e, 0xc0 | ((int)rnd(r, 6) << 3)); /* mov %ax, %es..%gs */
		if (one_in(r, 2)) {
			emit(c, 1, 0xea);
			emit_le(c, rng_next(r), c->mode == MODE_REAL ? 2 : 4);
			emit_le(c, rnd(r, 0x40), 2);
		}
		break;
	default: /* random bytes */
		for (uint64_t k = 1 + rnd(r, 24); k; k--)
			emit(c, 1, (int)rnd(r, 256));
		break;
	}
}

/*
 * Under QEMU, a MOV to a segment register with the reserved register number (8e /6, 8e /7)
 * crashes QEMU itself (selftests/qemu_seg_reserved.c): the register number is changed. Not
 * Keel's to fix (a CPU's translation of code is beyond any hypervisor's reach); Bochs is
 * unaffected. A guest can still write the instruction to memory and run it (seen: real-mode
 * code that wrote 8e 32 into the zeroed memory it was running through): scripts/test then
 * recognizes the crash by the last block QEMU translated and runs the VM again.
 *
 * Not filtered, and counted as ENTRY_FAILURE exits under QEMU: a MOV to CR3 or CR4 with
 * reserved bits set, which QEMU's TCG ends with #VMEXIT(VMEXIT_INVALID) where the processor
 * raises #GP (domain_vcpu_state's guest_cr3_reserved_bits_fault); the guest only ends its own
 * run.
 */
static void filter_emulator_bugs(struct code *c, bool qemu)
{
	if (!qemu)
		return;
	for (size_t i = 0; i + 1 < c->n; i++) {
		if (c->b[i] == 0x8e && ((c->b[i + 1] >> 3) & 7) >= 6)
			c->b[i + 1] &= ~0x30;
		/* MOV to DR4-DR7 (DR4/DR5 alias DR6/DR7 while CR4.DE is clear) becomes a MOV from.
		 * It stopped QEMU for good (a real-mode data breakpoint at 0: repro_qemu_dr7_real)
		 * until Keel intercepted #DB; since then, without it, three of four runs (seeds 3,
		 * 11 and 424242; seed 1 passed) crashed QEMU on the reserved MOV to a segment
		 * register above (why breakpoints make that likelier is not known; seed 424242
		 * with the filter passes). */
		if (c->b[i] == 0x0f && i + 2 < c->n && c->b[i + 1] == 0x23 &&
		    ((c->b[i + 2] >> 3) & 7) >= 4)
			c->b[i + 1] = 0x21;
	}
}

static void build_code(struct code *c, struct rng *r, int mode)
{
	memset(c, 0, sizeof(*c));
	c->mode = mode;
	if (one_in(r, 8)) {
		/* Random bytes only. */
		c->n = 16 + rnd(r, CODE_MAX - 16);
		rnd_fill(r, c->b, c->n);
	} else {
		for (uint64_t n = 1 + rnd(r, 12); n && c->n < CODE_MAX - 64; n--)
			emit_attack(c, r);
		/* A HLT between rounds, then back to the start (short or near jump). */
		emit(c, 1, 0xf4);
		if (c->n < 120) {
			emit(c, 2, 0xeb, (int)(uint8_t)(-(int)c->n - 2));
		} else {
			/* A near jump: rel16 in real mode, rel32 elsewhere. */
			int bytes = c->mode == MODE_REAL ? 2 : 4;
			int32_t rel = -(int32_t)c->n - 1 - bytes;

			emit(c, 1, 0xe9);
			emit_le(c, (uint32_t)rel, bytes);
		}
	}
	filter_emulator_bugs(c, under_qemu);
}

/* --- Modes. ------------------------------------------------------------------------------ */

static void write_long_mode_tables(struct keel_vm *vm)
{
	uint64_t *pml4 = gpa_hva(vm, PT_GPA, SZ_4K), *pdpt = gpa_hva(vm, PT_GPA + SZ_4K, SZ_4K);
	uint64_t *gdt = gpa_hva(vm, GDT_GPA, 64);

	pml4[0] = (PT_GPA + SZ_4K) | 3;
	for (int i = 0; i < 4; i++) {
		uint64_t *pd = gpa_hva(vm, PT_GPA + (2 + i) * SZ_4K, SZ_4K);

		pdpt[i] = (PT_GPA + (2 + i) * SZ_4K) | 3;
		for (int j = 0; j < 512; j++)
			pd[j] = ((uint64_t)i << 30) + ((uint64_t)j << 21) + 0x83;
	}
	gdt[1] = 0x00af9b000000ffffULL; /* 64-bit code */
	gdt[2] = 0x00cf93000000ffffULL; /* data */
	gdt[3] = 0x00008b000000ffffULL; /* TSS (busy) */
}

static void setup_mode(struct keel_vm *vm, struct keel_vcpu *vcpu, int mode, struct rng *r)
{
	uint64_t code = CODE_BASE + vcpu->id * CODE_STRIDE;
	struct keel_sregs s;
	struct keel_regs regs;

	if (mode == MODE_REAL) {
		vcpu_setup_real(vcpu, code, 0);
	} else {
		vcpu_setup_prot32(vcpu, code);
		if (mode == MODE_LONG) {
			vcpu_get_sregs(vcpu, &s);
			s.cs.attrib = (s.cs.attrib & ~KEEL_SEG_DB) | KEEL_SEG_L;
			s.gdt.base = GDT_GPA;
			s.gdt.limit = 4 * 8 - 1;
			s.cr0 |= X86_CR0_PG;
			s.cr3 = PT_GPA;
			s.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
			s.efer = X86_EFER_LME | X86_EFER_LMA;
			vcpu_set_sregs(vcpu, &s);
		}
	}
	/* Random general registers, a stack, random flags now and then. */
	vcpu_get_regs(vcpu, &regs);
	regs.rax = rnd_interesting(r);
	regs.rbx = rnd_interesting(r);
	regs.rcx = rnd_interesting(r);
	regs.rdx = rnd_interesting(r);
	regs.rsi = rnd_interesting(r);
	regs.rdi = rnd_interesting(r);
	regs.rsp = STACK_TOP + vcpu->id * 0x800;
	if (mode == MODE_LONG)
		regs.r8 = rnd_interesting(r), regs.r10 = rnd_interesting(r);
	if (one_in(r, 6))
		regs.rflags |= X86_RFLAGS_IF;
	if (one_in(r, 20))
		regs.rflags |= 1 << 8; /* TF */
	vcpu_set_regs(vcpu, &regs);
}

/* --- One case: a domain, its vCPUs on threads. ------------------------------------------- */

struct vcpu_job {
	struct keel_vcpu *vcpu;
	uint64_t kase;
	int mode;
	struct rng rng;
	uint64_t deadline;
	pthread_t tid;
};

static bool exit_well_formed(struct keel_vcpu *vcpu, const struct keel_exit *e, uint64_t kase)
{
	const char *why = NULL;

	if (e->vcpu != vcpu->id)
		why = "wrong vCPU id";
	else if (e->reason == KEEL_EXIT_NONE || e->reason > KEEL_EXIT_UNHANDLED ||
		 e->reason == KEEL_EXIT_INTR)
		why = "bad reason";
	else if (e->reason == KEEL_EXIT_IO &&
		 ((e->io.size != 1 && e->io.size != 2 && e->io.size != 4) || e->io.direction > 1))
		why = "bad I/O exit";
	else if (e->reason == KEEL_EXIT_MMIO &&
		 ((e->mmio.size != 1 && e->mmio.size != 2 && e->mmio.size != 4 && e->mmio.size != 8) ||
		  e->mmio.direction > 1 || !in_mmio(e->mmio.gpa)))
		why = "bad MMIO exit";
	else if (e->reason == KEEL_EXIT_MEMORY_FAULT && (in_mmio(e->fault.gpa) || !e->fault.access))
		why = "bad memory fault";
	if (why)
		note_bad(&nr_bad_exits, kase, "%s: %s", why, keel_exit_str(e));
	return !why;
}

static void *vcpu_job_fn(void *arg)
{
	struct vcpu_job *j = arg;
	struct keel_vcpu *vcpu = j->vcpu;
	struct fuzz_slot *slot = fuzz_slot_get();
	struct fuzz_timer timer = { 0 };
	uint32_t last = KEEL_EXIT_NONE, repeats = 0;

	fuzz_timer_init(&timer);
	for (int runs = 0; runs < 200 && fuzz_now_ns() < j->deadline; runs++) {
		struct keel_exit *e = &vcpu->run.exit;
		int ret, err;

		fuzz_run_enter(slot, j->kase, "%s vCPU %u", mode_names[j->mode], vcpu->id);
		fuzz_timer_arm(&timer, opt_run_ms * 1000);
		ret = __vcpu_run(vcpu);
		err = errno;
		fuzz_timer_arm(&timer, 0);
		fuzz_run_leave(slot);
		atomic_fetch_add(&nr_runs, 1);
		if (ret < 0 && err == EINTR) {
			atomic_fetch_add(&counts.intr, 1);
			continue;
		}
		if (ret < 0) {
			count_errno(&counts, err);
			note_bad(&nr_bad_errors, j->kase, "vCPU %u (%s): KEEL_VCPU_RUN failed: %s",
				 vcpu->id, mode_names[j->mode], strerror(err));
			break;
		}
		count_exit(&counts, e->reason);
		if (!exit_well_formed(vcpu, e, j->kase))
			break;
		if (opt_verbose)
			printf("#   case %llu: %s\n", (ull)j->kase, keel_exit_str(e));
		if (opt_verbose && e->reason == KEEL_EXIT_ENTRY_FAILURE) {
			struct keel_sregs s;
			struct keel_regs regs;

			vcpu_get_sregs(vcpu, &s);
			vcpu_get_regs(vcpu, &regs);
			printf("#     state: rip %#llx rflags %#llx cr0 %#llx cr3 %#llx cr4 %#llx efer %#llx cs %#x/%#llx/%#x ss %#x tr %#x\n",
			       (ull)regs.rip, (ull)regs.rflags, (ull)s.cr0, (ull)s.cr3, (ull)s.cr4,
			       (ull)s.efer, s.cs.selector, (ull)s.cs.base, s.cs.attrib, s.ss.attrib,
			       s.tr.attrib);
		}
		/* Answer with random data; the kernel must cut it to the access size. */
		switch (e->reason) {
		case KEEL_EXIT_IO:
			e->io.data = rnd_interesting(&j->rng);
			break;
		case KEEL_EXIT_MMIO:
			e->mmio.data = rnd_interesting(&j->rng);
			break;
		case KEEL_EXIT_HYPERCALL:
			e->hypercall.ret = rnd_interesting(&j->rng);
			break;
		}
		/* The same exit again and again (a fault, a failed entry, a shutdown) ends it. */
		repeats = e->reason == last ? repeats + 1 : 0;
		last = e->reason;
		if (e->reason != KEEL_EXIT_HLT && e->reason != KEEL_EXIT_IO &&
		    e->reason != KEEL_EXIT_MMIO && e->reason != KEEL_EXIT_HYPERCALL && repeats >= 2)
			break;
	}
	fuzz_timer_destroy(&timer);
	return NULL;
}

static void run_case(uint64_t kase)
{
	struct rng r = rng_case(opt_seed, kase);
	uint32_t nr = 1 + rnd(&r, MAX_VCPUS);
	struct vcpu_job jobs[MAX_VCPUS];
	char name[KEEL_NAME_LEN];
	struct keel_vm *vm;
	bool tables = false;

	snprintf(name, sizeof(name), "fuzz-%llu", (ull)kase);
	vm = vm_create(name, nr, RAM_SIZE);
	vm_add_range(vm, ROM_GPA, ROM_SIZE, KEEL_RANGE_ROM);
	vm_add_range(vm, MMIO_GPA, MMIO_SIZE, KEEL_RANGE_MMIO);
	vm_add_range(vm, APIC_GPA, SZ_4K, KEEL_RANGE_MMIO);
	/* Some garbage in RAM and ROM for wild jumps to land on. */
	rnd_fill(&r, (uint8_t *)vm->ram + 0x40000, 0x1000);
	rnd_fill(&r, vm->regions[1].hva, 0x1000);

	for (uint32_t i = 0; i < nr; i++) {
		struct vcpu_job *j = &jobs[i];
		struct code c;

		j->vcpu = vm->vcpus[i];
		j->kase = kase;
		j->mode = rnd(&r, NR_MODES);
		if (j->mode == MODE_LONG && !tables) {
			write_long_mode_tables(vm);
			tables = true;
		}
		build_code(&c, &r, j->mode);
		vm_write(vm, CODE_BASE + i * CODE_STRIDE, c.b, c.n);
		setup_mode(vm, j->vcpu, j->mode, &r);
		j->rng = rng_case(opt_seed ^ 0x5a5a5a5a, kase * MAX_VCPUS + i);
		j->deadline = fuzz_now_ns() + (100 + rnd(&r, 400)) * 1000000ULL;
		if (opt_verbose) {
			printf("# case %llu: vCPU %u of %u, %s, %zu code bytes:", (ull)kase, i, nr,
			       mode_names[j->mode], c.n);
			for (size_t k = 0; k < c.n; k++)
				printf("%s%02x", k % 32 ? "" : "\n#   ", c.b[k]);
			printf("\n");
		}
	}
	for (uint32_t i = 0; i < nr; i++)
		KEEL_ASSERT(pthread_create(&jobs[i].tid, NULL, vcpu_job_fn, &jobs[i]) == 0,
			    "pthread_create");
	for (uint32_t i = 0; i < nr; i++)
		pthread_join(jobs[i].tid, NULL);
	vm_destroy(vm);
	atomic_fetch_add(&nr_cases, 1);
}

/* --- The canary: a 32-bit guest that checksums 64 KiB of its memory and reports it with an
 * OUT to CANARY_PORT, over and over. ------------------------------------------------------ */

#define CANARY_PORT  0x5a5
#define CANARY_DATA  0x10000
#define CANARY_WORDS 16384

asm(".pushsection .rodata\n"
    ".code32\n"
    "canary_start:\n"
    "	xor %eax, %eax\n"
    "	mov $" KEEL_STR(CANARY_DATA) ", %esi\n"
    "	mov $" KEEL_STR(CANARY_WORDS) ", %ecx\n"
    "1:	rol $5, %eax\n"
    "	add (%esi), %eax\n"
    "	add $4, %esi\n"
    "	dec %ecx\n"
    "	jnz 1b\n"
    "	mov $" KEEL_STR(CANARY_PORT) ", %edx\n"
    "	out %eax, %dx\n"
    "	jmp canary_start\n"
    "canary_end:\n"
    ".code64\n"
    ".popsection\n");
extern const uint8_t canary_start[], canary_end[];

static void *canary_fn(void *arg)
{
	struct keel_vm *vm = vm_create("fuzz-canary", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct fuzz_slot *slot = fuzz_slot_get();
	struct fuzz_timer timer = { 0 };
	struct rng r = rng_case(opt_seed, UINT64_MAX);
	uint32_t *data = (uint32_t *)((uint8_t *)vm->ram + CANARY_DATA), want = 0;

	(void)arg;
	rnd_fill(&r, data, CANARY_WORDS * 4);
	for (int i = 0; i < CANARY_WORDS; i++)
		want = ((want << 5) | (want >> 27)) + data[i];
	vm_write(vm, 0x1000, canary_start, canary_end - canary_start);
	vcpu_setup_prot32(vcpu, 0x1000);
	fuzz_timer_init(&timer);
	while (!atomic_load(&stop_canary)) {
		struct keel_exit *e = &vcpu->run.exit;
		int ret, err;

		fuzz_run_enter(slot, UINT64_MAX, "the canary, not a case");
		fuzz_timer_arm(&timer, opt_run_ms * 1000);
		ret = __vcpu_run(vcpu);
		err = errno;
		fuzz_timer_arm(&timer, 0);
		fuzz_run_leave(slot);
		if (ret < 0 && err == EINTR)
			continue;
		if (ret == 0 && e->reason == KEEL_EXIT_IO && e->io.port == CANARY_PORT &&
		    e->io.direction == KEEL_IO_OUT && e->io.size == 4) {
			if ((uint32_t)e->io.data == want) {
				atomic_fetch_add(&canary_rounds, 1);
				continue;
			}
		}
		atomic_fetch_add(&canary_wrong, 1);
		printf("# canary: %s (run %d, %s), checksum %#x expected\n", keel_exit_str(e), ret,
		       ret ? strerror(err) : "ok", want);
		{
			struct keel_regs g;
			struct keel_sregs sg;

			vcpu_get_regs(vcpu, &g);
			vcpu_get_sregs(vcpu, &sg);
			printf("# canary state: rip %#llx rax %#llx rcx %#llx rsi %#llx rdx %#llx rsp %#llx rflags %#llx cr0 %#llx cs %#x/%#llx idt %#llx/%#x, after %llu rounds\n",
			       (ull)g.rip, (ull)g.rax, (ull)g.rcx, (ull)g.rsi, (ull)g.rdx, (ull)g.rsp,
			       (ull)g.rflags, (ull)sg.cr0, sg.cs.attrib, (ull)sg.cs.base,
			       (ull)sg.idt.base, sg.idt.limit, (ull)atomic_load(&canary_rounds));
		}
		if (ret < 0 || e->reason != KEEL_EXIT_IO)
			break;
	}
	fuzz_timer_destroy(&timer);
	vm_destroy(vm);
	return NULL;
}

/* --- After the fuzzing: a good domain still works. ---------------------------------------- */

asm(".pushsection .rodata\n"
    ".code16\n"
    "good_start:\n"
    "	mov $0x4b, %al\n"
    "	out %al, $0xe9\n"
    "	hlt\n"
    "good_end:\n"
    ".code64\n"
    ".popsection\n");
extern const uint8_t good_start[], good_end[];

static const char *good_domain_runs(void)
{
	struct keel_vm *vm = vm_create("fuzz-after", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct fuzz_timer timer = { 0 };
	const char *why = NULL;
	int ret;

	vm_write(vm, 0x1000, good_start, good_end - good_start);
	vcpu_setup_real(vcpu, 0x1000, 0);
	fuzz_timer_init(&timer);
	fuzz_timer_arm(&timer, 1000000);
	ret = __vcpu_run(vcpu);
	if (ret || vcpu->run.exit.reason != KEEL_EXIT_IO || vcpu->run.exit.io.data != 0x4b)
		why = "no OUT of 0x4b to port 0xe9";
	else if (__vcpu_run(vcpu) || vcpu->run.exit.reason != KEEL_EXIT_HLT)
		why = "no HLT after the OUT";
	fuzz_timer_arm(&timer, 0);
	fuzz_timer_destroy(&timer);
	if (why)
		printf("# good domain: %s; last: %s (%s)\n", why, keel_exit_str(&vcpu->run.exit),
		       ret ? strerror(errno) : "ok");
	vm_destroy(vm);
	return why;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "seconds", required_argument, NULL, 's' },
		{ "seed", required_argument, NULL, 'S' },
		{ "case", required_argument, NULL, 'c' },
		{ "no-known-wedges", no_argument, NULL, 'w' },
		{ "hang-seconds", required_argument, NULL, 'H' },
		{ "run-ms", required_argument, NULL, 'r' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	pthread_t canary;
	uint64_t end, kase;
	bool ok;
	int o;

	opt_seed = fuzz_default_seed();
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 's': opt_seconds = fuzz_number("--seconds", optarg); break;
		case 'S': opt_seed = fuzz_number("--seed", optarg); break;
		case 'c': opt_case = fuzz_number("--case", optarg); break;
		case 'w': opt_known_wedges = false; break;
		case 'H': opt_hang = fuzz_number("--hang-seconds", optarg); break;
		case 'r': opt_run_ms = fuzz_number("--run-ms", optarg) ?: 1; break;
		case 'v': opt_verbose = true; break;
		case 'h': fputs(usage, stdout); return 0;
		default: fputs(usage, stderr); return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "unexpected argument '%s'\n%s", argv[optind], usage);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("TAP version 13\n1..4\n");
	printf("# keel_fuzz_guest: seed %llu, %llu s%s%s\n", (ull)opt_seed, (ull)opt_seconds,
	       opt_case != UINT64_MAX ? ", one case" : "",
	       opt_known_wedges ? "" : ", known wedges left out");
	if (keel_dev_fd() < 0) {
		printf("# %s: %s\n", KEEL_DEV, strerror(errno));
		for (int i = 1; i <= 4; i++)
			printf("not ok %d fuzz.guest # keel.ko is not usable\n", i);
		return 1;
	}
	{
		char v[64];

		/* The test VM's QEMU emulates an AMD CPU; its Bochs, an Intel one. */
		under_qemu = cpuinfo_line("vendor_id", v, sizeof(v)) && strstr(v, "AuthenticAMD");
	}
	fuzz_signals_init();
	t_start = fuzz_now_ns();
	fuzz_watchdog_start(opt_seed, opt_hang, "fuzz.guest_no_hung_run", 1, report_figures);
	KEEL_ASSERT(pthread_create(&canary, NULL, canary_fn, NULL) == 0, "pthread_create");

	end = t_start + opt_seconds * 1000000000ULL;
	if (opt_case != UINT64_MAX)
		run_case(opt_case);
	else
		for (kase = 0; fuzz_now_ns() < end; kase++)
			run_case(kase);

	/* Let the canary finish a round or two beside nothing, then stop it. */
	usleep(200000);
	atomic_store(&stop_canary, true);
	pthread_join(canary, NULL);
	fuzz_watchdog_stop();
	report_figures();

	printf("ok 1 fuzz.guest_no_hung_run # %llu cases, %llu runs, seed %llu\n",
	       (ull)atomic_load(&nr_cases), (ull)atomic_load(&nr_runs), (ull)opt_seed);
	ok = atomic_load(&canary_rounds) > 0 && !atomic_load(&canary_wrong);
	printf("%sok 2 fuzz.guest_canary_correct # %llu rounds, %llu wrong\n", ok ? "" : "not ",
	       (ull)atomic_load(&canary_rounds), (ull)atomic_load(&canary_wrong));
	if (bad_example[0])
		printf("# first: %s\n", bad_example);
	o = !ok;
	ok = !atomic_load(&nr_bad_exits) && !atomic_load(&nr_bad_errors);
	printf("%sok 3 fuzz.guest_exits_well_formed # %llu malformed exits, %llu runs failed other than EINTR, seed %llu\n",
	       ok ? "" : "not ", (ull)atomic_load(&nr_bad_exits), (ull)atomic_load(&nr_bad_errors),
	       (ull)opt_seed);
	o |= !ok;
	ok = !good_domain_runs();
	printf("%sok 4 fuzz.guest_dev_still_works\n", ok ? "" : "not ");
	o |= !ok;
	return o;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * keel_domain_test: guest domains through /dev/keel. Real-mode, 32-bit protected-mode and
 * long-mode guests (lib/x86.h), their exits (I/O, MMIO, hypercalls, memory faults,
 * shutdown, signals), the guest-physical map, isolation between domains, SMP guests, pausing,
 * the argument checks of every domain and vCPU ioctl, and domain lifetime.
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "guest.h"

/* ---------------------------------------------------------------------------------------
 * Guest code: real-mode and 32-bit blobs (copied into guest RAM), long-mode C functions. */

/* I/O ports and hypercall results the blobs and the host agree on (literals: the blobs
 * stringify them). */
#define PORT_OUT      0x510
#define PORT_IN       0x511
#define PORT_ECHO8    0x80
#define PORT_IN32     0x82
#define PORT_ECHO32   0x84
#define PORT_RESET    0x512
#define COUNTER_GPA   0x500
#define HC32_RESULTS  0x3000
#define XEN_VERSION_4_19 ((4ULL << 16) | 19)
#define PVH_MAGIC     0x336ec578U

asm(".pushsection .rodata\n"
    ".code16\n"
    /* OUT a word to a port, then HLT. */
    "blob_real_out_start:\n"
    "	mov $0x1234, %ax\n"
    "	mov $" KEEL_STR(PORT_OUT) ", %dx\n"
    "blob_real_out_out:\n"
    "	out %ax, %dx\n"
    "blob_real_out_hlt:\n"
    "	hlt\n"
    "blob_real_out_end:\n"
    /* IN a byte and a dword, echo each with an OUT, HLT. */
    "blob_real_in_start:\n"
    "	mov $" KEEL_STR(PORT_IN) ", %dx\n"
    "	in %dx, %al\n"
    "	out %al, $" KEEL_STR(PORT_ECHO8) "\n"
    "	in $" KEEL_STR(PORT_IN32) ", %eax\n"
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "	hlt\n"
    "blob_real_in_end:\n"
    /* The reset vector's 16 bytes (at f000:fff0). */
    "blob_reset_start:\n"
    "	mov $0x4321, %ax\n"
    "	mov $" KEEL_STR(PORT_RESET) ", %dx\n"
    "	out %ax, %dx\n"
    "	hlt\n"
    "blob_reset_end:\n"
    /* HLT only. */
    "blob_real_hlt_start:\n"
    "	hlt\n"
    "blob_real_hlt_end:\n"
    /* A word stored to memory, HLT. */
    "blob_real_store_start:\n"
    "	movw $0xbeef, " KEEL_STR(COUNTER_GPA) "\n"
    "	hlt\n"
    "blob_real_store_end:\n"
    /* Spins until the host moves RIP to the HLT. */
    "blob_real_spin_start:\n"
    "	jmp blob_real_spin_start\n"
    "blob_real_spin_hlt:\n"
    "	hlt\n"
    "blob_real_spin_end:\n"
    /* Increments a dword counter in memory forever. */
    "blob_real_count_start:\n"
    "	addl $1, " KEEL_STR(COUNTER_GPA) "\n"
    "	jmp blob_real_count_start\n"
    "blob_real_count_end:\n"

    ".code32\n"
    /* PVH-like entry: EBX points at a start-info block {magic, value, out[3]}. */
    "blob_pvh_start:\n"
    "	mov (%ebx), %eax\n"
    "	mov 4(%ebx), %ecx\n"
    "	lea 1(%ecx,%ecx,2), %edx\n" /* 3 * value + 1 */
    "	mov %edx, 8(%ebx)\n"
    "	not %eax\n"
    "	mov %eax, 12(%ebx)\n"
    "	mov $" KEEL_STR(KEEL_HC_TEST) ", %eax\n"
    "	mov $0x5151, %esi\n"
    "	mov $0x7171, %edi\n"
    "	.byte 0x0f, 0x01, 0xc1\n" /* vmcall */
    "	mov %eax, 16(%ebx)\n"
    "blob_pvh_hlt:\n"
    "	hlt\n"
    "blob_pvh_end:\n"
    /* 32-bit hypercalls: an unknown number with VMCALL and with VMMCALL, then xen_version
     * with both; each result stored at HC32_RESULTS. */
    "blob_hc32_start:\n"
    "	mov $" KEEL_STR(KEEL_HC_TEST) ", %eax\n"
    "	.byte 0x0f, 0x01, 0xc1\n" /* vmcall */
    "	mov %eax, " KEEL_STR(HC32_RESULTS) "\n"
    "	mov $" KEEL_STR(KEEL_HC_TEST) " + 1, %eax\n"
    "	.byte 0x0f, 0x01, 0xd9\n" /* vmmcall */
    "	mov %eax, " KEEL_STR(HC32_RESULTS) " + 4\n"
    "	mov $" KEEL_STR(KEEL_HC_XEN_VERSION) ", %eax\n"
    "	xor %ebx, %ebx\n"
    "	.byte 0x0f, 0x01, 0xc1\n"
    "	mov %eax, " KEEL_STR(HC32_RESULTS) " + 8\n"
    "	mov $" KEEL_STR(KEEL_HC_XEN_VERSION) ", %eax\n"
    "	xor %ebx, %ebx\n"
    "	.byte 0x0f, 0x01, 0xd9\n"
    "	mov %eax, " KEEL_STR(HC32_RESULTS) " + 12\n"
    "	hlt\n"
    "blob_hc32_end:\n"
    /* At CPL 3 (IOPL 3): hypercalls, each result reported with an OUT. */
    "blob_cpl3_start:\n"
    "	mov $" KEEL_STR(KEEL_HC_TEST) ", %eax\n"
    "	.byte 0x0f, 0x01, 0xc1\n" /* vmcall */
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "	mov $" KEEL_STR(KEEL_HC_XEN_VERSION) ", %eax\n"
    "	xor %ebx, %ebx\n"
    "	.byte 0x0f, 0x01, 0xd9\n" /* vmmcall */
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "1:	jmp 1b\n"
    "blob_cpl3_end:\n"
    /* An invalid opcode with no IDT. */
    "blob_ud2_start:\n"
    "	ud2\n"
    "blob_ud2_end:\n"
    /* Real mode: count in BX, report each step with an OUT, forever. */
    ".code16\n"
    "blob_real_step_start:\n"
    "	mov $" KEEL_STR(PORT_OUT) ", %dx\n"
    "1:	inc %bx\n"
    "	out %al, %dx\n"
    "	jmp 1b\n"
    "blob_real_step_end:\n"
    ".code64\n"
    ".popsection\n");

#define BLOB(name) extern const uint8_t blob_##name##_start[], blob_##name##_end[]
BLOB(real_out);
BLOB(real_step);
BLOB(real_in);
BLOB(reset);
BLOB(real_hlt);
BLOB(real_store);
BLOB(real_spin);
BLOB(real_count);
BLOB(pvh);
BLOB(hc32);
BLOB(cpl3);
BLOB(ud2);
extern const uint8_t blob_real_out_out[], blob_real_out_hlt[], blob_real_spin_hlt[];
extern const uint8_t blob_pvh_hlt[];

#define BLOB_SIZE(name) ((size_t)(blob_##name##_end - blob_##name##_start))
/* The offset of a label inside its blob. */
#define BLOB_OFF(name, label) ((uint64_t)(blob_##name##_##label - blob_##name##_start))
/* Copies a blob into guest memory at gpa. */
#define LOAD_BLOB(vm, gpa, name) vm_write((vm), (gpa), blob_##name##_start, BLOB_SIZE(name))

/* Where the small real-mode and 32-bit guests have their code. */
#define CODE_GPA 0x1000ULL

static GUEST_CODE void guest_sync_values(uint64_t n)
{
	for (uint64_t i = 1; i <= n; i++)
		GUEST_SYNC(i * 0x1111);
	GUEST_ASSERT(n == 5);
	GUEST_ASSERT_EQ(n * 3, 15);
	GUEST_DONE();
}

/*
 * Sets XMM7 to (seed, ~seed), reports it with GUEST_SYNC three times and checks after each
 * run that XMM7 still holds it (the host changes its own XMM7 in between). One asm block per
 * round, so the compiler cannot use XMM7 around the hypercall.
 */
static GUEST_CODE void guest_keeps_xmm7(uint64_t seed)
{
	uint64_t v[2] = { seed, ~seed };

	for (uint64_t i = 0; i < 3; i++) {
		uint64_t w[2], rax = KEEL_HC_SYNC, rdi = i;

		__asm__ volatile("movdqu %[v], %%xmm7\n\t"
				 ".byte 0x0f, 0x01, 0xc1\n\t" /* VMCALL */
				 "movdqu %%xmm7, %[w]"
				 : [w] "=m"(w), "+a"(rax), "+D"(rdi)
				 : [v] "m"(v)
				 : "rsi", "rdx", "r8", "r10", "xmm7", "memory");
		GUEST_ASSERT_EQ(w[0], v[0]);
		GUEST_ASSERT_EQ(w[1], v[1]);
	}
	GUEST_DONE();
}

/* Returns without GUEST_DONE(): the library's return address reports it. */
static GUEST_CODE void guest_returns(uint64_t a)
{
	GUEST_SYNC(a + 1);
}

/* Each reports the line of the assertion that then fails. */
static GUEST_CODE void guest_assert_fails(uint64_t x)
{
	GUEST_SYNC(__LINE__ + 1);
	GUEST_ASSERT(x == 42);
	GUEST_DONE();
}

static GUEST_CODE void guest_assert_eq_fails(uint64_t x)
{
	GUEST_SYNC(__LINE__ + 1);
	GUEST_ASSERT_EQ(x + 1, 42);
	GUEST_DONE();
}

/* Fills [base, base + size) with seed ^ address, one qword at a time. */
static GUEST_CODE void guest_fill(uint64_t base, uint64_t size, uint64_t seed)
{
	volatile uint64_t *p = (volatile uint64_t *)base;

	for (uint64_t i = 0; i < size / 8; i++)
		p[i] = seed ^ (base + i * 8);
	GUEST_DONE();
}

/* Checks the ROM the host filled (qword i == seed + i), then writes to it at `write_off`. */
static GUEST_CODE void guest_rom(uint64_t rom, uint64_t size, uint64_t seed, uint64_t write_off)
{
	volatile uint64_t *p = (volatile uint64_t *)rom;

	for (uint64_t i = 0; i < size / 8; i++)
		GUEST_ASSERT_EQ(p[i], seed + i);
	GUEST_SYNC(size);
	*(volatile uint64_t *)(rom + write_off) = 0x5a5a5a5a5a5a5a5aULL;
	GUEST_ASSERT(!"the write to ROM went through");
}

static GUEST_CODE void guest_read_at(uint64_t gpa)
{
	(void)*(volatile uint64_t *)gpa;
	GUEST_ASSERT(!"the read went through");
}

static GUEST_CODE void guest_write_at(uint64_t gpa)
{
	*(volatile uint64_t *)gpa = 0x1122334455667788ULL;
	GUEST_ASSERT(!"the write went through");
}

#define MMIO_W8  0x11
#define MMIO_W16 0x2233
#define MMIO_W32 0x44556677U
#define MMIO_W64 0x8899aabbccddeeffULL
#define MMIO_R8  0x5a
#define MMIO_R16 0xbeef
#define MMIO_R32 0xdeadbeefU
#define MMIO_R64 0x0123456789abcdefULL

static GUEST_CODE void guest_mmio(uint64_t base)
{
	*(volatile uint8_t *)(base + 0x0) = MMIO_W8;
	*(volatile uint16_t *)(base + 0x2) = MMIO_W16;
	*(volatile uint32_t *)(base + 0x4) = MMIO_W32;
	*(volatile uint64_t *)(base + 0x8) = MMIO_W64;
	GUEST_ASSERT_EQ(*(volatile uint8_t *)(base + 0x10), MMIO_R8);
	GUEST_ASSERT_EQ(*(volatile uint16_t *)(base + 0x12), MMIO_R16);
	GUEST_ASSERT_EQ(*(volatile uint32_t *)(base + 0x14), MMIO_R32);
	GUEST_ASSERT_EQ(*(volatile uint64_t *)(base + 0x18), MMIO_R64);
	GUEST_DONE();
}

#define HC_ARG(i) (0x1111111111111111ULL * ((i) + 1) + 0xa0)
#define HC_RET1   0x123456789abcdef0ULL
#define HC_RET2   0xfedcba9876543210ULL

static GUEST_CODE void guest_hypercalls64(void)
{
	/* Handled by Keel: no exit. */
	GUEST_ASSERT_EQ(guest_vmcall(KEEL_HC_XEN_VERSION, XENVER_version, 0, 0, 0, 0),
			XEN_VERSION_4_19);
	GUEST_ASSERT_EQ(guest_vmmcall(KEEL_HC_XEN_VERSION, XENVER_version, 0, 0, 0, 0),
			XEN_VERSION_4_19);
	/* Unknown: Dom0 answers. */
	GUEST_ASSERT_EQ(guest_vmcall(KEEL_HC_TEST, HC_ARG(0), HC_ARG(1), HC_ARG(2), HC_ARG(3),
				     HC_ARG(4)), HC_RET1);
	GUEST_ASSERT_EQ(guest_vmmcall(KEEL_HC_TEST + 1, HC_ARG(0), HC_ARG(1), HC_ARG(2), HC_ARG(3),
				      HC_ARG(4)), HC_RET2);
	GUEST_DONE();
}

#define TAG_MASK (0xffffULL << 48)
#define TAG_A    (0xaaaaULL << 48)
#define TAG_B    (0xbbbbULL << 48)

/* Fills its RAM with `mine | address`, reports, scans it for `other`'s tag, reports, then
 * reads at `beyond` (when not 0). */
static GUEST_CODE void guest_isolation(uint64_t base, uint64_t size, uint64_t mine,
				       uint64_t other, uint64_t beyond)
{
	volatile uint64_t *p = (volatile uint64_t *)base;
	uint64_t foreign = 0, own = 0;

	for (uint64_t i = 0; i < size / 8; i++)
		p[i] = mine | (base + i * 8);
	GUEST_SYNC(1);
	for (uint64_t i = 0; i < size / 8; i++) {
		uint64_t v = p[i];

		if ((v & TAG_MASK) == other)
			foreign++;
		if (v == (mine | (base + i * 8)))
			own++;
	}
	GUEST_ASSERT_EQ(foreign, 0);
	GUEST_ASSERT_EQ(own, size / 8);
	GUEST_SYNC(2);
	if (beyond)
		(void)*(volatile uint64_t *)beyond;
	GUEST_DONE();
}

static GUEST_CODE void guest_xadd(uint64_t counter, uint64_t n)
{
	uint64_t *c = (uint64_t *)counter;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t one = 1;

		__asm__ volatile("lock xaddq %0, %1" : "+r"(one), "+m"(*c) : : "memory");
	}
	GUEST_DONE();
}

/* ---------------------------------------------------------------------------------------
 * Host helpers. */

FIXTURE(domain) {
	int dev;
};

FIXTURE_SETUP(domain)
{
	self->dev = keel_dev_fd();
	if (self->dev < 0)
		SKIP(return, "%s: %s: keel.ko is not loaded", KEEL_DEV, strerror(errno));
}

FIXTURE_TEARDOWN(domain)
{
}

#define ASSERT_EXIT(vcpu, r)                                                                 \
	ASSERT_EQ(r, (vcpu)->run.exit.reason)                                                \
		TH_LOG("expected a %s exit, got: %s", keel_exit_reason_name(r),              \
		       keel_exit_str(&(vcpu)->run.exit))

#define EXPECT_EXIT(vcpu, r)                                                                 \
	EXPECT_EQ(r, (vcpu)->run.exit.reason)                                                \
		TH_LOG("expected a %s exit, got: %s", keel_exit_reason_name(r),              \
		       keel_exit_str(&(vcpu)->run.exit))

/* `call` fails with `err`. */
#define EXPECT_ERRNO(err, call)                                                              \
	do {                                                                                 \
		long __r;                                                                    \
		int __e;                                                                     \
		errno = 0;                                                                   \
		__r = (long)(call);                                                          \
		__e = errno;                                                                 \
		EXPECT_EQ(-1, __r) TH_LOG("%s returned %ld, expected an error", #call, __r); \
		EXPECT_EQ(err, __e)                                                          \
			TH_LOG("%s: errno %s, expected %s", #call, strerrorname_np(__e) ?: "0", \
			       strerrorname_np(err));                                        \
	} while (0)

/* The domain's KEEL_DOMAIN_INFO is still `before`. */
#define EXPECT_INFO_UNCHANGED(vm, before)                                                    \
	do {                                                                                 \
		struct keel_domain_info __now;                                               \
		vm_info((vm), &__now);                                                       \
		EXPECT_EQ(0, memcmp(&(before), &__now, sizeof(__now)))                       \
			TH_LOG("domain info changed: state %#x -> %#x, nr_vcpus %u -> %u, "  \
			       "memory_used %#llx -> %#llx, nr_ranges %u -> %u",             \
			       (before).state, __now.state, (before).nr_vcpus, __now.nr_vcpus, \
			       (ull)(before).memory_used, (ull)__now.memory_used,            \
			       (before).nr_ranges, __now.nr_ranges);                         \
	} while (0)

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000ULL + ts.tv_nsec / 1000000;
}

/* Polls `cond` for up to `ms` milliseconds; its last value. */
#define WAIT_FOR(cond, ms)                                                                   \
	({                                                                                   \
		uint64_t __end = now_ms() + (ms);                                            \
		bool __ok;                                                                   \
		while (!(__ok = (cond)) && now_ms() < __end)                                 \
			usleep(1000);                                                        \
		__ok;                                                                        \
	})

static uint64_t running_mask(struct keel_vm *vm)
{
	struct keel_domain_info info;

	vm_info(vm, &info);
	return info.running_mask;
}

static uint32_t domain_state(struct keel_vm *vm)
{
	struct keel_domain_info info;

	vm_info(vm, &info);
	return info.state;
}

static void noop_handler(int sig)
{
	(void)sig;
}

/* SIGUSR1 with a handler that does nothing and no SA_RESTART: it interrupts KEEL_VCPU_RUN. */
static void install_sigusr1(void)
{
	struct sigaction sa = { .sa_handler = noop_handler };

	sigemptyset(&sa.sa_mask);
	KEEL_ASSERT(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction: %s", strerror(errno));
}

/* A thread that runs a vCPU once (one KEEL_VCPU_RUN). */
struct vcpu_thread {
	struct keel_vcpu *vcpu;
	pthread_t tid;
	int ret;
	int err;
	int done;
};

static void *run_once_fn(void *arg)
{
	struct vcpu_thread *t = arg;

	t->ret = __vcpu_run(t->vcpu);
	t->err = errno;
	__atomic_store_n(&t->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static void vcpu_thread_start(struct vcpu_thread *t, struct keel_vcpu *vcpu,
			      void *(*fn)(void *))
{
	t->vcpu = vcpu;
	t->done = 0;
	KEEL_ASSERT(pthread_create(&t->tid, NULL, fn, t) == 0, "pthread_create");
}

static bool vcpu_thread_done(struct vcpu_thread *t)
{
	return __atomic_load_n(&t->done, __ATOMIC_SEQ_CST);
}

/* Joins a thread that has finished (or will within `ms`); false if it did not. */
static bool vcpu_thread_join(struct vcpu_thread *t, uint64_t ms)
{
	if (!WAIT_FOR(vcpu_thread_done(t), ms))
		return false;
	pthread_join(t->tid, NULL);
	return true;
}

static bool pin_thread(pthread_t tid, int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return pthread_setaffinity_np(tid, sizeof(set), &set) == 0;
}

/* A kB value of /proc/meminfo, -1 when absent. */
static long meminfo_kb(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		size_t n = strlen(key);

		if (!strncmp(line, key, n) && line[n] == ':') {
			v = strtol(line + n + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

/* A real-mode domain: RAM [0, ram_size), `blob` at CODE_GPA, every vCPU at its start. */
static struct keel_vm *real_vm(const char *name, uint32_t nr_vcpus, uint64_t ram_size,
			       const uint8_t *start, const uint8_t *end)
{
	struct keel_vm *vm = vm_create(name, nr_vcpus, ram_size);

	vm_write(vm, CODE_GPA, start, end - start);
	for (uint32_t i = 0; i < nr_vcpus; i++)
		vcpu_setup_real(vm->vcpus[i], CODE_GPA, 0);
	return vm;
}

#define REAL_VM(name, nr, ram, blob) \
	real_vm(name, nr, ram, blob_##blob##_start, blob_##blob##_end)

/* ---------------------------------------------------------------------------------------
 * 1. Real mode. */

TEST_F(domain, real_mode_out_then_hlt)
{
	struct keel_vm *vm = REAL_VM("real-out", 1, SZ_64K, real_out);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_regs regs;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(0, vcpu->run.exit.vcpu);
	EXPECT_EQ(PORT_OUT, vcpu->run.exit.io.port);
	EXPECT_EQ(2, vcpu->run.exit.io.size);
	EXPECT_EQ(KEEL_IO_OUT, vcpu->run.exit.io.direction);
	EXPECT_EQ(0x1234, vcpu->run.exit.io.data);
	EXPECT_EQ(BLOB_OFF(real_out, out), vcpu->run.exit.rip);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(BLOB_OFF(real_out, hlt), vcpu->run.exit.rip);
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(BLOB_OFF(real_out, hlt) + 1, regs.rip) TH_LOG("RIP is not past the HLT");
	EXPECT_EQ(0x1234, regs.rax & 0xffff);
	EXPECT_EQ(PORT_OUT, regs.rdx & 0xffff);
	vm_destroy(vm);
}

TEST_F(domain, real_mode_in_completes_on_next_run)
{
	struct keel_vm *vm = REAL_VM("real-in", 1, SZ_64K, real_in);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_regs regs;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_IN, vcpu->run.exit.io.port);
	EXPECT_EQ(1, vcpu->run.exit.io.size);
	EXPECT_EQ(KEEL_IO_IN, vcpu->run.exit.io.direction);
	vcpu->run.exit.io.data = 0xab;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_ECHO8, vcpu->run.exit.io.port);
	EXPECT_EQ(KEEL_IO_OUT, vcpu->run.exit.io.direction);
	EXPECT_EQ(1, vcpu->run.exit.io.size);
	EXPECT_EQ(0xab, vcpu->run.exit.io.data);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_IN32, vcpu->run.exit.io.port);
	EXPECT_EQ(4, vcpu->run.exit.io.size);
	EXPECT_EQ(KEEL_IO_IN, vcpu->run.exit.io.direction);
	vcpu->run.exit.io.data = 0xdeadbeef;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_ECHO32, vcpu->run.exit.io.port);
	EXPECT_EQ(4, vcpu->run.exit.io.size);
	EXPECT_EQ(0xdeadbeef, vcpu->run.exit.io.data);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(0xdeadbeef, regs.rax & 0xffffffff);
	vm_destroy(vm);
}

/* A new vCPU starts at f000:fff0 with CS base 0xffff0000: the top of the 4 GiB space. */
TEST_F(domain, real_mode_reset_vector)
{
	struct keel_vm *vm = vm_create("reset-vector", 1, 0);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint8_t *rom = vm_add_range(vm, 0xfffff000, SZ_4K, KEEL_RANGE_ROM);
	struct keel_sregs sregs;
	struct keel_regs regs;

	ASSERT_LE(BLOB_SIZE(reset), 16);
	memset(rom, 0xf4, SZ_4K); /* hlt */
	memcpy(rom + 0xff0, blob_reset_start, BLOB_SIZE(reset));
	vcpu_get_sregs(vcpu, &sregs);
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(0xf000, sregs.cs.selector);
	EXPECT_EQ(0xffff0000, sregs.cs.base);
	EXPECT_EQ(0xfff0, regs.rip);
	EXPECT_EQ(0, sregs.cr0 & X86_CR0_PE);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_RESET, vcpu->run.exit.io.port);
	EXPECT_EQ(2, vcpu->run.exit.io.size);
	EXPECT_EQ(0x4321, vcpu->run.exit.io.data);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * 2. 32-bit protected mode (the PVH entry). */

TEST_F(domain, prot32_pvh_entry)
{
	const uint64_t info_gpa = 0x6000;
	struct keel_vm *vm = vm_create("pvh", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint32_t *info = gpa_hva(vm, info_gpa, 20);
	struct keel_exit *e = &vcpu->run.exit;
	struct keel_sregs sregs;
	struct keel_regs regs;

	LOAD_BLOB(vm, CODE_GPA, pvh);
	info[0] = PVH_MAGIC;
	info[1] = 0x1000;
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_get_regs(vcpu, &regs);
	regs.rbx = info_gpa;
	vcpu_set_regs(vcpu, &regs);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HYPERCALL);
	EXPECT_EQ(KEEL_HC_TEST, e->hypercall.nr);
	EXPECT_EQ(0, e->hypercall.longmode);
	EXPECT_EQ(info_gpa, e->hypercall.args[0]); /* ebx */
	EXPECT_EQ(0x1000, e->hypercall.args[1]);   /* ecx */
	EXPECT_EQ(0x3001, e->hypercall.args[2]);   /* edx */
	EXPECT_EQ(0x5151, e->hypercall.args[3]);   /* esi */
	EXPECT_EQ(0x7171, e->hypercall.args[4]);   /* edi */
	e->hypercall.ret = 0x600dcafe;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(CODE_GPA + BLOB_OFF(pvh, hlt), e->rip);
	/* Memory, through the mapping. */
	EXPECT_EQ(PVH_MAGIC, info[0]);
	EXPECT_EQ(0x3001, info[2]);
	EXPECT_EQ(~PVH_MAGIC, info[3]);
	EXPECT_EQ(0x600dcafe, info[4]);
	/* Registers. */
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(0x600dcafe, regs.rax & 0xffffffff);
	EXPECT_EQ(info_gpa, regs.rbx);
	EXPECT_EQ(0x1000, regs.rcx);
	EXPECT_EQ(0x3001, regs.rdx);
	EXPECT_EQ(0x5151, regs.rsi);
	EXPECT_EQ(0x7171, regs.rdi);
	EXPECT_EQ(CODE_GPA + BLOB_OFF(pvh, hlt) + 1, regs.rip);
	vcpu_get_sregs(vcpu, &sregs);
	EXPECT_TRUE(sregs.cr0 & X86_CR0_PE);
	EXPECT_FALSE(sregs.cr0 & X86_CR0_PG);
	EXPECT_EQ(KEEL_SEL_CODE, sregs.cs.selector);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * 3, 4. Long mode with C guest code and its reports. */

TEST_F(domain, long_mode_sync_assert_done)
{
	struct keel_vm *vm = vm_create("long-sync", 2, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0], *ret = vm->vcpus[1];
	struct keel_ucall uc;

	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_sync_values), 0);
	vcpu_args_set(vcpu, 1, 5ULL);
	vcpu_setup_long64(vm, ret, GUEST_FN(guest_returns), 0);
	vcpu_args_set(ret, 1, 41ULL);

	for (uint64_t i = 1; i <= 5; i++) {
		ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
		EXPECT_EQ(i * 0x1111, uc.args[0]);
		EXPECT_EQ(1, vcpu->run.exit.hypercall.longmode);
	}
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, &uc));
	/* Run again, it reports again. */
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, &uc));

	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(ret, &uc));
	EXPECT_EQ(42, uc.args[0]);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(ret, &uc));
	vm_destroy(vm);
}

/*
 * KEEL_VCPU_RUN issued from one asm block that sets the host's XMM7 first and reads it after:
 * the guest's FPU/SSE state must not leak into Dom0's, whatever Linux does with the FPU
 * around the ioctl.
 */
static long run_with_host_xmm7(struct keel_vcpu *vcpu, const uint64_t in[2], uint64_t out[2])
{
	long ret = SYS_ioctl;

	__asm__ volatile("movdqu %[in], %%xmm7\n\t"
			 "syscall\n\t"
			 "movdqu %%xmm7, %[out]"
			 : "+a"(ret), [out] "=m"(*(uint64_t(*)[2])out)
			 : "D"((long)vcpu->fd), "S"((long)KEEL_VCPU_RUN), "d"(&vcpu->run),
			   [in] "m"(*(const uint64_t(*)[2])in)
			 : "rcx", "r11", "xmm7", "memory");
	return ret;
}

/* Each vCPU keeps its own SSE state across runs, and Dom0 keeps its own. */
TEST_F(domain, fpu_state_is_per_vcpu)
{
	struct keel_vm *vm = vm_create("fpu", 2, SZ_1M);
	struct keel_ucall uc;

	for (int i = 0; i < 2; i++) {
		vcpu_setup_long64(vm, vm->vcpus[i], GUEST_FN(guest_keeps_xmm7), 0);
		vcpu_args_set(vm->vcpus[i], 1, 0x1111111111111111ULL * (i + 1));
	}
	/* Interleaved: vCPU 0, vCPU 1, vCPU 0, ... on this thread, with a different host XMM7
	 * each time. */
	for (int round = 0; round < 4; round++) {
		for (int i = 0; i < 2; i++) {
			struct keel_vcpu *vcpu = vm->vcpus[i];
			uint64_t host[2] = { 0xabcd000000000000ULL | round << 4 | i, 0x5a5a5a5a5a5a5a5aULL };
			uint64_t after[2];

			ASSERT_EQ(0, run_with_host_xmm7(vcpu, host, after)) TH_LOG("vCPU %d", i);
			EXPECT_EQ(host[0], after[0]) TH_LOG("Dom0's XMM7 changed by vCPU %d's run", i);
			EXPECT_EQ(host[1], after[1]);
			ASSERT_EQ(round < 3 ? UCALL_SYNC : UCALL_DONE, vcpu_get_ucall(vcpu, &uc))
				TH_LOG("vCPU %d round %d: %s", i, round, keel_exit_str(&vcpu->run.exit));
			if (round < 3)
				EXPECT_EQ(round, uc.args[0]);
		}
	}
	vm_destroy(vm);
}

TEST_F(domain, long_mode_failed_assert_is_decoded)
{
	struct keel_vm *vm = vm_create("long-assert", 2, SZ_1M);
	struct keel_vcpu *a = vm->vcpus[0], *b = vm->vcpus[1];
	struct keel_ucall uc;
	uint64_t line;

	vcpu_setup_long64(vm, a, GUEST_FN(guest_assert_fails), 0);
	vcpu_args_set(a, 1, 41ULL);
	vcpu_setup_long64(vm, b, GUEST_FN(guest_assert_eq_fails), 0);
	vcpu_args_set(b, 1, 7ULL);

	ASSERT_EQ(UCALL_SYNC, vcpu_run_ucall(a, &uc));
	line = uc.args[0];
	ASSERT_EQ(UCALL_ASSERT, vcpu_run_ucall(a, &uc)) TH_LOG("%s", keel_exit_str(&a->run.exit));
	EXPECT_STREQ(__FILE__, uc.file);
	EXPECT_EQ(line, uc.line);
	EXPECT_STREQ("x == 42", uc.expr);
	EXPECT_FALSE(uc.has_values);
	/* It does not go on. */
	ASSERT_EQ(UCALL_ASSERT, vcpu_run_ucall(a, &uc));
	EXPECT_EQ(line, uc.line);

	ASSERT_EQ(UCALL_SYNC, vcpu_run_ucall(b, &uc));
	line = uc.args[0];
	ASSERT_EQ(UCALL_ASSERT, vcpu_run_ucall(b, &uc)) TH_LOG("%s", keel_exit_str(&b->run.exit));
	EXPECT_STREQ(__FILE__, uc.file);
	EXPECT_EQ(line, uc.line);
	EXPECT_STREQ("x + 1 == 42", uc.expr);
	EXPECT_TRUE(uc.has_values);
	EXPECT_EQ(8, uc.values[0]);
	EXPECT_EQ(42, uc.values[1]);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * 5. Memory inside the map. */

TEST_F(domain, ram_written_by_guest_seen_by_host)
{
	const uint64_t size = SZ_2M, seed = 0x5eed5eed00000000ULL;
	struct keel_vm *vm = vm_create("ram-pattern", 1, size);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint64_t *ram = vm->ram, bad = 0, first_bad = 0;

	memset(ram, 0xcc, size);
	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_fill), 0);
	vcpu_args_set(vcpu, 3, 0ULL, size, seed);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, NULL));
	for (uint64_t i = 0; i < size / 8; i++) {
		if (ram[i] != (seed ^ (i * 8))) {
			if (!bad++)
				first_bad = i * 8;
		}
	}
	EXPECT_EQ(0, bad) TH_LOG("%llu qwords differ, the first at gpa %#llx: %#llx",
				 (ull)bad, (ull)first_bad, (ull)ram[first_bad / 8]);
	vm_destroy(vm);
}

TEST_F(domain, rom_readable_write_faults)
{
	const uint64_t rom_gpa = 0x10000000, size = SZ_64K, seed = 0x0badf00d00000000ULL;
	const uint64_t write_off = 0x128;
	struct keel_vm *vm = vm_create("rom", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint64_t *rom = vm_add_range(vm, rom_gpa, size, KEEL_RANGE_ROM);
	struct keel_ucall uc;

	for (uint64_t i = 0; i < size / 8; i++)
		rom[i] = seed + i;
	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_rom), 0);
	vcpu_args_set(vcpu, 4, rom_gpa, size, seed, write_off);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
	EXPECT_EQ(size, uc.args[0]);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_MEMORY_FAULT);
	EXPECT_EQ(rom_gpa + write_off, vcpu->run.exit.fault.gpa);
	EXPECT_EQ(KEEL_ACCESS_WRITE, vcpu->run.exit.fault.access);
	/* Not written; and the write faults again when run again. */
	EXPECT_EQ(seed + write_off / 8, rom[write_off / 8]);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_MEMORY_FAULT);
	EXPECT_EQ(rom_gpa + write_off, vcpu->run.exit.fault.gpa);
	EXPECT_EQ(seed + write_off / 8, rom[write_off / 8]);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * 6. Outside the map. */

TEST_F(domain, unmapped_access_faults)
{
	const struct {
		void (*fn)(uint64_t);
		uint64_t gpa;
		uint32_t access;
	} cases[] = {
		{ guest_read_at, 0x20000040, KEEL_ACCESS_READ },
		{ guest_write_at, 0x20001080, KEEL_ACCESS_WRITE },
		/* Just past the RAM, in the same 2 MiB page. */
		{ guest_read_at, SZ_1M + 8, KEEL_ACCESS_READ },
		{ guest_write_at, SZ_1M + 0x10, KEEL_ACCESS_WRITE },
	};
	const uint32_t n = ARRAY_SIZE(cases);
	struct keel_vm *vm = vm_create("unmapped", n, SZ_1M);

	for (uint32_t i = 0; i < n; i++) {
		vcpu_setup_long64(vm, vm->vcpus[i], GUEST_FN(cases[i].fn), 0);
		vcpu_args_set(vm->vcpus[i], 1, cases[i].gpa);
	}
	for (uint32_t i = 0; i < n; i++) {
		struct keel_vcpu *vcpu = vm->vcpus[i];

		vcpu_run(vcpu);
		EXPECT_EXIT(vcpu, KEEL_EXIT_MEMORY_FAULT);
		EXPECT_EQ(i, vcpu->run.exit.vcpu);
		EXPECT_EQ(cases[i].gpa, vcpu->run.exit.fault.gpa)
			TH_LOG("case %u: %s", i, keel_exit_str(&vcpu->run.exit));
		EXPECT_EQ(cases[i].access, vcpu->run.exit.fault.access)
			TH_LOG("case %u: %s", i, keel_exit_str(&vcpu->run.exit));
	}
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * 7. MMIO. */

TEST_F(domain, mmio_exits_and_completes)
{
	const uint64_t mmio = 0xc0000000;
	const struct {
		uint64_t off;
		uint8_t size;
		uint8_t dir;
		uint64_t data;
	} expect[] = {
		{ 0x0, 1, KEEL_IO_OUT, MMIO_W8 },
		{ 0x2, 2, KEEL_IO_OUT, MMIO_W16 },
		{ 0x4, 4, KEEL_IO_OUT, MMIO_W32 },
		{ 0x8, 8, KEEL_IO_OUT, MMIO_W64 },
		{ 0x10, 1, KEEL_IO_IN, MMIO_R8 },
		{ 0x12, 2, KEEL_IO_IN, MMIO_R16 },
		{ 0x14, 4, KEEL_IO_IN, MMIO_R32 },
		{ 0x18, 8, KEEL_IO_IN, MMIO_R64 },
	};
	struct keel_vm *vm = vm_create("mmio", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_exit *e = &vcpu->run.exit;

	vm_add_range(vm, mmio, SZ_4K, KEEL_RANGE_MMIO);
	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_mmio), 0);
	vcpu_args_set(vcpu, 1, mmio);
	for (size_t i = 0; i < ARRAY_SIZE(expect); i++) {
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_MMIO);
		EXPECT_EQ(mmio + expect[i].off, e->mmio.gpa) TH_LOG("access %zu", i);
		EXPECT_EQ(expect[i].size, e->mmio.size) TH_LOG("access %zu", i);
		EXPECT_EQ(expect[i].dir, e->mmio.direction) TH_LOG("access %zu", i);
		if (expect[i].dir == KEEL_IO_OUT) {
			EXPECT_EQ(expect[i].data, e->mmio.data) TH_LOG("access %zu", i);
		} else {
			e->mmio.data = expect[i].data;
		}
	}
	/* The guest checked every value it read. */
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, NULL));
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * 8. Hypercalls. */

TEST_F(domain, hypercalls_64bit)
{
	struct keel_vm *vm = vm_create("hc64", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_exit *e = &vcpu->run.exit;

	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_hypercalls64), 0);
	for (int call = 0; call < 2; call++) {
		/* xen_version is answered inside: the first exit is the unknown number. */
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_HYPERCALL);
		EXPECT_EQ(KEEL_HC_TEST + call, e->hypercall.nr)
			TH_LOG("%s", keel_exit_str(e));
		EXPECT_EQ(1, e->hypercall.longmode);
		for (int i = 0; i < 5; i++) {
			EXPECT_EQ(HC_ARG(i), e->hypercall.args[i])
				TH_LOG("%s call, argument %d", call ? "VMMCALL" : "VMCALL", i);
		}
		e->hypercall.ret = call ? HC_RET2 : HC_RET1;
	}
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, NULL));
	vm_destroy(vm);
}

TEST_F(domain, hypercalls_32bit)
{
	struct keel_vm *vm = vm_create("hc32", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_exit *e = &vcpu->run.exit;
	uint32_t *results = gpa_hva(vm, HC32_RESULTS, 16);
	const uint64_t args[5] = { 0x0b0b0b0b, 0x0c0c0c0c, 0x0d0d0d0d, 0x05050505, 0x0d1d1d1d };
	struct keel_regs regs;

	LOAD_BLOB(vm, CODE_GPA, hc32);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_get_regs(vcpu, &regs);
	/* Bits 63:32 are not the 32-bit caller's: they must not show in the arguments. */
	regs.rbx = 0xdead000000000000ULL | args[0];
	regs.rcx = 0xdead000100000000ULL | args[1];
	regs.rdx = 0xdead000200000000ULL | args[2];
	regs.rsi = 0xdead000300000000ULL | args[3];
	regs.rdi = 0xdead000400000000ULL | args[4];
	/* And the 64-bit convention's registers must not be read. */
	regs.r10 = 0xa10a10a1;
	regs.r8 = 0x8888;
	vcpu_set_regs(vcpu, &regs);

	for (int call = 0; call < 2; call++) {
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_HYPERCALL);
		EXPECT_EQ(KEEL_HC_TEST + call, e->hypercall.nr) TH_LOG("%s", keel_exit_str(e));
		EXPECT_EQ(0, e->hypercall.longmode);
		for (int i = 0; i < 5; i++) {
			EXPECT_EQ(args[i], e->hypercall.args[i])
				TH_LOG("%s call, argument %d: %s", call ? "VMMCALL" : "VMCALL", i,
				       keel_exit_str(e));
		}
		e->hypercall.ret = 0xcafe0001 + call;
	}
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(0xcafe0001, results[0]);
	EXPECT_EQ(0xcafe0002, results[1]);
	EXPECT_EQ(XEN_VERSION_4_19, results[2]) TH_LOG("xen_version with VMCALL");
	EXPECT_EQ(XEN_VERSION_4_19, results[3]) TH_LOG("xen_version with VMMCALL");
	vm_destroy(vm);
}

/* A hypercall from CPL 3 gets -EPERM (-1) without an exit. */
TEST_F(domain, hypercall_from_cpl3_is_refused)
{
	struct keel_vm *vm = vm_create("hc-cpl3", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs s;
	struct keel_regs regs;

	LOAD_BLOB(vm, CODE_GPA, cpl3);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_get_sregs(vcpu, &s);
	s.cs.selector = KEEL_SEL_CODE | 3;
	s.cs.attrib |= KEEL_SEG_DPL(3);
	s.ds.selector = s.es.selector = s.fs.selector = s.gs.selector = s.ss.selector =
		KEEL_SEL_DATA | 3;
	s.ds.attrib |= KEEL_SEG_DPL(3);
	s.es.attrib |= KEEL_SEG_DPL(3);
	s.fs.attrib |= KEEL_SEG_DPL(3);
	s.gs.attrib |= KEEL_SEG_DPL(3);
	s.ss.attrib |= KEEL_SEG_DPL(3);
	vcpu_set_sregs(vcpu, &s);
	vcpu_get_regs(vcpu, &regs);
	regs.rflags = X86_RFLAGS_FIXED | X86_RFLAGS_IOPL3; /* OUT allowed at CPL 3 */
	vcpu_set_regs(vcpu, &regs);

	for (int call = 0; call < 2; call++) {
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
		EXPECT_EQ(PORT_ECHO32, vcpu->run.exit.io.port);
		EXPECT_EQ(0xffffffff, vcpu->run.exit.io.data)
			TH_LOG("%s from CPL 3 returned %#llx, expected -1 (-EPERM)",
			       call ? "xen_version with VMMCALL" : "an unknown VMCALL",
			       (ull)vcpu->run.exit.io.data);
	}
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * 9. Isolation. */

TEST_F(domain, domains_are_isolated)
{
	const uint64_t size_a = SZ_1M, size_b = SZ_2M, beyond = SZ_1M + SZ_1M / 2;
	struct keel_vm *a = vm_create("iso-a", 1, size_a);
	struct keel_vm *b = vm_create("iso-b", 1, size_b);
	struct keel_vcpu *va = a->vcpus[0], *vb = b->vcpus[0];
	struct keel_ucall uc;
	uint64_t *ram;
	uint64_t bad;

	vcpu_setup_long64(a, va, GUEST_FN(guest_isolation), 0);
	vcpu_args_set(va, 5, 0ULL, size_a, TAG_A, TAG_B, beyond);
	vcpu_setup_long64(b, vb, GUEST_FN(guest_isolation), 0);
	vcpu_args_set(vb, 5, 0ULL, size_b, TAG_B, TAG_A, 0ULL);

	/* Both fill, then both scan. */
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(va, &uc));
	ASSERT_EQ(1, uc.args[0]);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vb, &uc));
	ASSERT_EQ(1, uc.args[0]);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(va, &uc));
	ASSERT_EQ(2, uc.args[0]);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vb, &uc));
	ASSERT_EQ(2, uc.args[0]);

	/* The host sees each domain's own pattern. */
	ram = a->ram;
	bad = 0;
	for (uint64_t i = 0; i < size_a / 8; i++)
		bad += ram[i] != (TAG_A | (i * 8));
	EXPECT_EQ(0, bad);
	ram = b->ram;
	bad = 0;
	for (uint64_t i = 0; i < size_b / 8; i++)
		bad += ram[i] != (TAG_B | (i * 8));
	EXPECT_EQ(0, bad);

	/* A's read past its RAM, where B has RAM, faults. */
	vcpu_run(va);
	ASSERT_EXIT(va, KEEL_EXIT_MEMORY_FAULT);
	EXPECT_EQ(beyond, va->run.exit.fault.gpa);
	EXPECT_EQ(KEEL_ACCESS_READ, va->run.exit.fault.access);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vb, &uc));
	vm_destroy(a);
	vm_destroy(b);
}

/* ---------------------------------------------------------------------------------------
 * 10. SMP. */

#define XADD_N 100000ULL

struct smp_thread {
	struct keel_vcpu *vcpu;
	pthread_barrier_t *barrier;
	pthread_t tid;
	uint64_t cmd;
};

static void *smp_fn(void *arg)
{
	struct smp_thread *t = arg;

	pthread_barrier_wait(t->barrier);
	t->cmd = vcpu_run_report(t->vcpu, NULL);
	return NULL;
}

TEST_F(domain, smp_lock_xadd)
{
	const uint64_t counter_gpa = 0x1000;
	struct keel_vm *vm = vm_create("smp", 2, SZ_64K);
	struct smp_thread t[2];
	pthread_barrier_t barrier;
	volatile uint64_t *counter = gpa_hva(vm, counter_gpa, 8);

	pthread_barrier_init(&barrier, NULL, 2);
	for (int i = 0; i < 2; i++) {
		vcpu_setup_long64(vm, vm->vcpus[i], GUEST_FN(guest_xadd), 0);
		vcpu_args_set(vm->vcpus[i], 2, counter_gpa, XADD_N);
	}
	for (int i = 0; i < 2; i++) {
		t[i].vcpu = vm->vcpus[i];
		t[i].barrier = &barrier;
		t[i].cmd = UCALL_NONE;
		ASSERT_EQ(0, pthread_create(&t[i].tid, NULL, smp_fn, &t[i]));
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(t[i].tid, NULL);
		EXPECT_EQ(UCALL_DONE, t[i].cmd);
	}
	EXPECT_EQ(2 * XADD_N, *counter);
	pthread_barrier_destroy(&barrier);
	vm_destroy(vm);
}

/* Two domains with two vCPUs each, all four running at once on their own threads: each
 * domain's counter sees exactly its own vCPUs' increments. */
TEST_F(domain, domains_run_at_once)
{
	const uint64_t counter_gpa = 0x1000;
	struct keel_vm *vm[2] = { vm_create("par-a", 2, SZ_64K), vm_create("par-b", 2, SZ_64K) };
	struct smp_thread t[4];
	pthread_barrier_t barrier;

	pthread_barrier_init(&barrier, NULL, 4);
	for (int i = 0; i < 4; i++) {
		struct keel_vcpu *vcpu = vm[i / 2]->vcpus[i % 2];

		vcpu_setup_long64(vm[i / 2], vcpu, GUEST_FN(guest_xadd), 0);
		vcpu_args_set(vcpu, 2, counter_gpa, XADD_N);
		t[i].vcpu = vcpu;
		t[i].barrier = &barrier;
		t[i].cmd = UCALL_NONE;
	}
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(0, pthread_create(&t[i].tid, NULL, smp_fn, &t[i]));
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i].tid, NULL);
		EXPECT_EQ(UCALL_DONE, t[i].cmd) TH_LOG("thread %d", i);
	}
	for (int d = 0; d < 2; d++) {
		volatile uint64_t *counter = gpa_hva(vm[d], counter_gpa, 8);

		EXPECT_EQ(2 * XADD_N, *counter) TH_LOG("domain %d", d);
	}
	pthread_barrier_destroy(&barrier);
	vm_destroy(vm[0]);
	vm_destroy(vm[1]);
}

/* ---------------------------------------------------------------------------------------
 * 11. Triple fault. (The spinning guest and signals are at the end of the file.) */

TEST_F(domain, triple_fault_is_shutdown)
{
	struct keel_vm *vm = vm_create("triple-fault", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];

	LOAD_BLOB(vm, CODE_GPA, ud2);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_SHUTDOWN);
	EXPECT_EQ(KEEL_SHUTDOWN_TRIPLE_FAULT, vcpu->run.exit.shutdown.kind);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * 12. Pause and unpause. (Progress while paused is at the end of the file.) */

/* A signal interrupts a run that waits for an unpause. */
TEST_F(domain, paused_run_is_interruptible)
{
	struct keel_vm *vm = REAL_VM("pause-intr", 1, SZ_64K, real_hlt);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct vcpu_thread t;

	install_sigusr1();
	vm_pause(vm);
	vcpu_thread_start(&t, vcpu, run_once_fn);
	usleep(100000);
	EXPECT_FALSE(vcpu_thread_done(&t))
		TH_LOG("ran while paused: %s", keel_exit_str(&vcpu->run.exit));
	EXPECT_EQ(0, running_mask(vm));
	ASSERT_EQ(0, pthread_kill(t.tid, SIGUSR1));
	ASSERT_TRUE(vcpu_thread_join(&t, 5000)) TH_LOG("the signal did not end the wait");
	EXPECT_EQ(-1, t.ret);
	EXPECT_EQ(EINTR, t.err);
	EXPECT_EXIT(vcpu, KEEL_EXIT_INTR);
	vm_unpause(vm);
	vcpu_run(vcpu);
	EXPECT_EXIT(vcpu, KEEL_EXIT_HLT);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * 13. Bad arguments: each fails with its errno and changes nothing. */

static int create_raw(struct keel_domain_create *c)
{
	int fd = __keel_create_domain(c);

	if (fd >= 0)
		close(fd);
	return fd < 0 ? -1 : 0;
}

TEST_F(domain, create_domain_bad_args)
{
	struct keel_domain_create good = { .max_vcpus = 1, .memory_size = SZ_1M, .name = "good" };
	struct keel_domain_create c;
	uint32_t count = keel_domain_count();

#define TRY_CREATE(err, field_change)                                                        \
	do {                                                                                 \
		c = good;                                                                    \
		field_change;                                                                \
		EXPECT_ERRNO(err, __keel_create_domain(&c));                                 \
	} while (0)

	TRY_CREATE(EINVAL, c.flags = 1);
	TRY_CREATE(EINVAL, c.flags = 0x80000000);
	TRY_CREATE(EINVAL, c.pad = 1);
	TRY_CREATE(EINVAL, c.domid = 7);
	TRY_CREATE(EINVAL, c.max_vcpus = 0);
	TRY_CREATE(EINVAL, c.max_vcpus = KEEL_MAX_VCPUS + 1);
	TRY_CREATE(EINVAL, c.max_vcpus = 0xffffffff);
	TRY_CREATE(EINVAL, c.memory_size = SZ_1M + 1);
	TRY_CREATE(EINVAL, c.memory_size = 2048);
	TRY_CREATE(EINVAL, c.memory_size = KEEL_MAX_DOMAIN_MEMORY + KEEL_PAGE_SIZE);
	TRY_CREATE(EINVAL, c.memory_size = ~0ULL & ~(KEEL_PAGE_SIZE - 1));
	TRY_CREATE(EINVAL, memset(c.name, 0, sizeof(c.name)));
	TRY_CREATE(EINVAL, memset(c.name, 'a', sizeof(c.name)));
	TRY_CREATE(EINVAL, strcpy(c.name, "tab\there"));
	TRY_CREATE(EINVAL, strcpy(c.name, "bell\a"));
	TRY_CREATE(EINVAL, strcpy(c.name, "del\x7f"));
	TRY_CREATE(EINVAL, strcpy(c.name, "caf\xc3\xa9"));
	EXPECT_EQ(count, keel_domain_count());

	/* The limits themselves are fine. */
	c = good;
	c.max_vcpus = KEEL_MAX_VCPUS;
	EXPECT_EQ(0, create_raw(&c)) TH_LOG("max_vcpus %u: %s", c.max_vcpus, strerror(errno));
	c = good;
	c.memory_size = KEEL_MAX_DOMAIN_MEMORY;
	EXPECT_EQ(0, create_raw(&c)) TH_LOG("memory_size 64 GiB: %s", strerror(errno));
	c = good;
	memset(c.name, '~', KEEL_NAME_LEN - 1);
	c.name[KEEL_NAME_LEN - 1] = 0;
	EXPECT_EQ(0, create_raw(&c)) TH_LOG("a 31-character name: %s", strerror(errno));
	c = good;
	strcpy(c.name, " ");
	EXPECT_EQ(0, create_raw(&c)) TH_LOG("the name ' ': %s", strerror(errno));
	EXPECT_EQ(count, keel_domain_count());
#undef TRY_CREATE
}

TEST_F(domain, add_range_bad_args)
{
	struct keel_vm *vm = vm_create_empty("range-args", 1, SZ_1M);
	struct keel_domain_info before;
	struct keel_mem_range r;

	vm_add_range(vm, 0, SZ_64K, KEEL_RANGE_RAM);
	vm_info(vm, &before);

#define TRY_RANGE(err, g, s, k, f)                                                           \
	do {                                                                                 \
		r = (struct keel_mem_range){ .gpa = (g), .size = (s), .kind = (k), .flags = (f) }; \
		EXPECT_ERRNO(err, ioctl(vm->fd, KEEL_DOMAIN_ADD_RANGE, &r));                 \
		EXPECT_INFO_UNCHANGED(vm, before);                                           \
	} while (0)

	TRY_RANGE(EINVAL, SZ_1G, SZ_4K, 0, 0);
	TRY_RANGE(EINVAL, SZ_1G, SZ_4K, 4, 0);
	TRY_RANGE(EINVAL, SZ_1G, SZ_4K, 0xffffffff, 0);
	TRY_RANGE(EINVAL, SZ_1G, SZ_4K, KEEL_RANGE_MMIO, 1);
	TRY_RANGE(EINVAL, SZ_1G, SZ_4K, KEEL_RANGE_RAM, 0x80000000);
	TRY_RANGE(EINVAL, SZ_1G, 0, KEEL_RANGE_MMIO, 0);
	TRY_RANGE(EINVAL, SZ_1G, 0, KEEL_RANGE_RAM, 0);
	TRY_RANGE(EINVAL, SZ_1G + 0x800, SZ_4K, KEEL_RANGE_MMIO, 0);
	TRY_RANGE(EINVAL, SZ_1G + 1, SZ_4K, KEEL_RANGE_RAM, 0);
	TRY_RANGE(EINVAL, SZ_1G, SZ_4K + 0x800, KEEL_RANGE_MMIO, 0);
	TRY_RANGE(EINVAL, SZ_1G, 1, KEEL_RANGE_RAM, 0);
	TRY_RANGE(EINVAL, KEEL_MAX_GPA - SZ_4K, 2 * SZ_4K, KEEL_RANGE_MMIO, 0);
	TRY_RANGE(EINVAL, KEEL_MAX_GPA, SZ_4K, KEEL_RANGE_MMIO, 0);
	TRY_RANGE(EINVAL, 0ULL - SZ_4K, 2 * SZ_4K, KEEL_RANGE_MMIO, 0);
	TRY_RANGE(EINVAL, SZ_4K, 0ULL - SZ_4K, KEEL_RANGE_MMIO, 0);
	/* Overlaps with the RAM at [0, 64 KiB). */
	TRY_RANGE(EEXIST, 0, SZ_64K, KEEL_RANGE_RAM, 0);
	TRY_RANGE(EEXIST, 0x8000, SZ_64K, KEEL_RANGE_MMIO, 0);
	TRY_RANGE(EEXIST, SZ_64K - SZ_4K, SZ_4K, KEEL_RANGE_ROM, 0);
	TRY_RANGE(EEXIST, 0x4000, SZ_4K, KEEL_RANGE_MMIO, 0);
	TRY_RANGE(EEXIST, 0, SZ_1G, KEEL_RANGE_MMIO, 0);
	/* RAM and ROM past memory_size (1 MiB, 64 KiB used). */
	TRY_RANGE(ENOSPC, SZ_1M, SZ_1M, KEEL_RANGE_RAM, 0);
	TRY_RANGE(ENOSPC, SZ_1M, SZ_1M - SZ_64K + SZ_4K, KEEL_RANGE_ROM, 0);
	/* The last page below KEEL_MAX_GPA and what fills memory_size exactly are fine. */
	EXPECT_EQ(0, __keel_add_range(vm->fd, KEEL_MAX_GPA - SZ_4K, SZ_4K, KEEL_RANGE_MMIO));
	EXPECT_EQ(0, __keel_add_range(vm->fd, SZ_1M, SZ_1M - SZ_64K, KEEL_RANGE_ROM));
	vm_info(vm, &before);
	EXPECT_EQ(SZ_1M, before.memory_used);
	EXPECT_EQ(3, before.nr_ranges);
	TRY_RANGE(ENOSPC, SZ_1G, SZ_4K, KEEL_RANGE_RAM, 0);
	/* MMIO does not count against memory_size; up to 64 ranges. */
	for (uint32_t i = before.nr_ranges; i < KEEL_MAX_RANGES; i++) {
		ASSERT_EQ(0, __keel_add_range(vm->fd, SZ_1G + i * SZ_64K, SZ_4K, KEEL_RANGE_MMIO))
			TH_LOG("range %u: %s", i, strerror(errno));
	}
	vm_info(vm, &before);
	EXPECT_EQ(KEEL_MAX_RANGES, before.nr_ranges);
	TRY_RANGE(ENOSPC, 2 * SZ_1G, SZ_4K, KEEL_RANGE_MMIO, 0);
#undef TRY_RANGE
	vm_destroy(vm);
}

TEST_F(domain, add_range_after_run_is_ebusy)
{
	struct keel_vm *vm = REAL_VM("range-busy", 1, SZ_64K, real_hlt);
	struct keel_domain_info before;

	EXPECT_EQ(0, __keel_add_range(vm->fd, SZ_1M, SZ_4K, KEEL_RANGE_MMIO));
	vcpu_run(vm->vcpus[0]);
	ASSERT_EXIT(vm->vcpus[0], KEEL_EXIT_HLT);
	vm_info(vm, &before);
	EXPECT_ERRNO(EBUSY, __keel_add_range(vm->fd, 2 * SZ_1M, SZ_4K, KEEL_RANGE_MMIO));
	EXPECT_ERRNO(EBUSY, __keel_add_range(vm->fd, SZ_64K, SZ_4K, KEEL_RANGE_RAM));
	EXPECT_INFO_UNCHANGED(vm, before);
	vm_destroy(vm);
}

TEST_F(domain, create_vcpu_bad_args)
{
	struct keel_vm *vm = vm_create_empty("vcpu-args", 2, SZ_1M);
	struct keel_domain_info before;
	struct keel_vcpu_create c;
	int fd;

	vm_info(vm, &before);
	c = (struct keel_vcpu_create){ .flags = 1, .id = 0 };
	EXPECT_ERRNO(EINVAL, ioctl(vm->fd, KEEL_DOMAIN_CREATE_VCPU, &c));
	EXPECT_ERRNO(EINVAL, __keel_create_vcpu(vm->fd, 2));
	EXPECT_ERRNO(EINVAL, __keel_create_vcpu(vm->fd, KEEL_MAX_VCPUS));
	EXPECT_ERRNO(EINVAL, __keel_create_vcpu(vm->fd, 0xffffffff));
	EXPECT_INFO_UNCHANGED(vm, before);

	fd = __keel_create_vcpu(vm->fd, 1);
	ASSERT_LE(0, fd) TH_LOG("vCPU 1: %s", strerror(errno));
	vm_info(vm, &before);
	EXPECT_EQ(2, before.vcpu_mask);
	EXPECT_ERRNO(EEXIST, __keel_create_vcpu(vm->fd, 1));
	EXPECT_INFO_UNCHANGED(vm, before);
	close(fd);
	vm_destroy(vm);
}

TEST_F(domain, mmap_bad_args)
{
	struct keel_vm *vm = vm_create_empty("mmap-args", 1, SZ_1M);
	struct keel_domain_info before;
	volatile uint16_t *word;
	void *p;

	vm_add_range(vm, 0, SZ_64K, KEEL_RANGE_RAM);
	vm_add_range(vm, SZ_1M, SZ_64K, KEEL_RANGE_ROM);
	vm_add_range(vm, 2 * SZ_1M, SZ_64K, KEEL_RANGE_MMIO);
	vm_vcpu_add(vm, 0);
	vm_info(vm, &before);

#define TRY_MMAP(err, len, gpa)                                                              \
	do {                                                                                 \
		errno = 0;                                                                   \
		p = mmap(NULL, (len), PROT_READ | PROT_WRITE, MAP_SHARED, vm->fd, (gpa));    \
		EXPECT_EQ(MAP_FAILED, p) TH_LOG("mmap of %#llx bytes at %#llx succeeded",     \
						(ull)(len), (ull)(gpa));                     \
		EXPECT_EQ(err, errno) TH_LOG("mmap of %#llx bytes at %#llx: %s", (ull)(len), \
					     (ull)(gpa), strerror(errno));                   \
		if (p != MAP_FAILED)                                                         \
			munmap(p, (len));                                                    \
		EXPECT_INFO_UNCHANGED(vm, before);                                           \
	} while (0)

	TRY_MMAP(EINVAL, SZ_4K, SZ_64K);          /* a hole */
	TRY_MMAP(EINVAL, 2 * SZ_64K, 0);          /* RAM and past its end */
	TRY_MMAP(EINVAL, SZ_4K, SZ_1M - SZ_4K);  /* the page below the ROM */
	TRY_MMAP(EINVAL, SZ_64K + SZ_4K, SZ_1M); /* ROM and past its end */
	TRY_MMAP(EINVAL, SZ_4K, 2 * SZ_1M);       /* MMIO */
	TRY_MMAP(EINVAL, SZ_4K, 4 * SZ_1G);       /* far away */

	/* Inside a range, at an offset, is fine. */
	p = mmap(NULL, SZ_4K, PROT_READ | PROT_WRITE, MAP_SHARED, vm->fd, SZ_1M + 3 * SZ_4K);
	EXPECT_NE(MAP_FAILED, p) TH_LOG("mmap inside the ROM: %s", strerror(errno));
	if (p != MAP_FAILED)
		munmap(p, SZ_4K);

	/* After the first run, no new mapping; the old ones stay valid. */
	LOAD_BLOB(vm, CODE_GPA, real_store);
	vcpu_setup_real(vm->vcpus[0], CODE_GPA, 0);
	vcpu_run(vm->vcpus[0]);
	ASSERT_EXIT(vm->vcpus[0], KEEL_EXIT_HLT);
	word = gpa_hva(vm, COUNTER_GPA, 2);
	EXPECT_EQ(0xbeef, *word);
	vm_info(vm, &before);
	TRY_MMAP(EBUSY, SZ_4K, 0);
	TRY_MMAP(EBUSY, SZ_4K, SZ_1M);
#undef TRY_MMAP
	vm_destroy(vm);
}

TEST_F(domain, wrong_fd_and_unknown_ioctls_are_enotty)
{
	struct keel_vm *vm = REAL_VM("enotty", 1, SZ_64K, real_hlt);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_domain_info before, info;
	struct keel_mem_range range = { .gpa = SZ_1M, .size = SZ_4K, .kind = KEEL_RANGE_MMIO };
	struct keel_vcpu_create vc = { .id = 0 };
	struct keel_domain_create dc = { .max_vcpus = 1, .memory_size = SZ_1M, .name = "x" };
	struct keel_domain_list list = { .count = 0, .buffer = (uint64_t)(uintptr_t)&info };
	struct keel_version version = { 0 };
	struct keel_regs regs;
	struct keel_sregs sregs;
	struct keel_run run = { 0 };
	uint32_t count = keel_domain_count();

	vm_info(vm, &before);
	/* Domain ioctls on the vCPU. */
	EXPECT_ERRNO(ENOTTY, ioctl(vcpu->fd, KEEL_DOMAIN_ADD_RANGE, &range));
	EXPECT_ERRNO(ENOTTY, ioctl(vcpu->fd, KEEL_DOMAIN_CREATE_VCPU, &vc));
	EXPECT_ERRNO(ENOTTY, ioctl(vcpu->fd, KEEL_DOMAIN_PAUSE));
	EXPECT_ERRNO(ENOTTY, ioctl(vcpu->fd, KEEL_DOMAIN_UNPAUSE));
	EXPECT_ERRNO(ENOTTY, ioctl(vcpu->fd, KEEL_DOMAIN_INFO, &info));
	/* vCPU ioctls on the domain. */
	EXPECT_ERRNO(ENOTTY, ioctl(vm->fd, KEEL_VCPU_GET_REGS, &regs));
	EXPECT_ERRNO(ENOTTY, ioctl(vm->fd, KEEL_VCPU_SET_REGS, &regs));
	EXPECT_ERRNO(ENOTTY, ioctl(vm->fd, KEEL_VCPU_GET_SREGS, &sregs));
	EXPECT_ERRNO(ENOTTY, ioctl(vm->fd, KEEL_VCPU_SET_SREGS, &sregs));
	EXPECT_ERRNO(ENOTTY, ioctl(vm->fd, KEEL_VCPU_RUN, &run));
	/* /dev/keel's ioctls on either. */
	EXPECT_ERRNO(ENOTTY, ioctl(vm->fd, KEEL_CREATE_DOMAIN, &dc));
	EXPECT_ERRNO(ENOTTY, ioctl(vcpu->fd, KEEL_CREATE_DOMAIN, &dc));
	EXPECT_ERRNO(ENOTTY, ioctl(vm->fd, KEEL_LIST_DOMAINS, &list));
	EXPECT_ERRNO(ENOTTY, ioctl(vcpu->fd, KEEL_GET_VERSION, &version));
	/* Unknown numbers, and known numbers with the wrong size. */
	EXPECT_ERRNO(ENOTTY, ioctl(vm->fd, _IO(KEEL_IOCTL_TYPE, 0x7f)));
	EXPECT_ERRNO(ENOTTY, ioctl(vcpu->fd, _IO(KEEL_IOCTL_TYPE, 0x7f)));
	EXPECT_ERRNO(ENOTTY, ioctl(vm->fd, _IOR(KEEL_IOCTL_TYPE, 0x14, uint64_t), &info));
	EXPECT_ERRNO(ENOTTY, ioctl(vcpu->fd, _IOWR(KEEL_IOCTL_TYPE, 0x24, uint64_t), &run));
	EXPECT_ERRNO(ENOTTY, ioctl(keel_dev_fd(), _IO(KEEL_IOCTL_TYPE, 0x7f)));
	EXPECT_INFO_UNCHANGED(vm, before);
	EXPECT_EQ(0, before.state & KEEL_DOMAIN_STARTED);
	EXPECT_EQ(count, keel_domain_count());
	vm_destroy(vm);
}

TEST_F(domain, set_sregs_bad_args)
{
	struct keel_vm *vm = REAL_VM("sregs-args", 1, SZ_64K, real_hlt);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_domain_info before;
	struct keel_sregs good, s, now;

	vcpu_get_sregs(vcpu, &good);
	vm_info(vm, &before);
	for (int i = 0; i < 4; i++) {
		s = good;
		s.reserved[i] = 1;
		EXPECT_ERRNO(EINVAL, __vcpu_set_sregs(vcpu, &s));
	}
	for (int i = 0; i < 3; i++) {
		s = good;
		s.gdt.pad[i] = 1;
		EXPECT_ERRNO(EINVAL, __vcpu_set_sregs(vcpu, &s));
		s = good;
		s.idt.pad[i] = 0x8000;
		EXPECT_ERRNO(EINVAL, __vcpu_set_sregs(vcpu, &s));
	}
	/* A bad call with other changes changes nothing either. */
	s = good;
	s.cr0 |= X86_CR0_PE;
	s.cs.base = 0x12340;
	s.reserved[3] = 1;
	EXPECT_ERRNO(EINVAL, __vcpu_set_sregs(vcpu, &s));
	vcpu_get_sregs(vcpu, &now);
	EXPECT_EQ(0, memcmp(&good, &now, sizeof(now))) TH_LOG("the sregs changed");
	EXPECT_INFO_UNCHANGED(vm, before);
	/* The vCPU still runs as set up. */
	vcpu_run(vcpu);
	EXPECT_EXIT(vcpu, KEEL_EXIT_HLT);
	vm_destroy(vm);
}

TEST_F(domain, run_bad_args)
{
	struct keel_vm *vm = REAL_VM("run-args", 1, SZ_64K, real_hlt);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_domain_info before;
	struct keel_regs regs;

	vm_info(vm, &before);
	vcpu->run.flags = 1;
	EXPECT_ERRNO(EINVAL, __vcpu_run(vcpu));
	vcpu->run.flags = 0x80000000;
	EXPECT_ERRNO(EINVAL, __vcpu_run(vcpu));
	vcpu->run.flags = 0;
	vcpu->run.pad = 1;
	EXPECT_ERRNO(EINVAL, __vcpu_run(vcpu));
	vcpu->run.pad = 0;
	/* Refused before it started anything. */
	EXPECT_INFO_UNCHANGED(vm, before);
	EXPECT_EQ(0, before.state & KEEL_DOMAIN_STARTED);
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(0, regs.rip);
	EXPECT_ERRNO(EINVAL, __keel_unpause(vm->fd));
	EXPECT_INFO_UNCHANGED(vm, before);
	vcpu_run(vcpu);
	EXPECT_EXIT(vcpu, KEEL_EXIT_HLT);
	vm_destroy(vm);
}

TEST_F(domain, list_domains_bad_args)
{
	struct keel_domain_info info;
	struct keel_domain_list list = { .count = 1, .buffer = (uint64_t)(uintptr_t)&info };

	list.flags = 1;
	EXPECT_ERRNO(EINVAL, __keel_list_domains(&list));
	list.flags = 0;
	list.pad = 1;
	EXPECT_ERRNO(EINVAL, __keel_list_domains(&list));
}

/* ---------------------------------------------------------------------------------------
 * 15. Create/destroy cycles leak nothing. */

TEST_F_TIMEOUT(domain, create_destroy_cycles, 300)
{
	uint32_t count = keel_domain_count();
	long avail0 = 0, avail1;

	/*
	 * 10 warm-up cycles first: the first domains of a fresh boot grow the slab caches and the
	 * per-CPU page lists by several MiB, which a leak check must not count. A leaked vCPU
	 * state (2 x 64 KiB a cycle) or RAM chunk would still cost far more than 8 MiB.
	 */
	for (int i = -10; i < 100; i++) {
		if (i == 0) {
			avail0 = meminfo_kb("MemAvailable");
			ASSERT_LT(0, avail0);
		}
		struct keel_vm *vm = REAL_VM("cycle", 2, SZ_2M, real_hlt);

		for (int v = 0; v < 2; v++) {
			vcpu_run(vm->vcpus[v]);
			ASSERT_EQ(KEEL_EXIT_HLT, vm->vcpus[v]->run.exit.reason)
				TH_LOG("cycle %d, vCPU %d: %s", i, v,
				       keel_exit_str(&vm->vcpus[v]->run.exit));
		}
		vm_destroy(vm);
	}
	EXPECT_EQ(count, keel_domain_count());
	avail1 = meminfo_kb("MemAvailable");
	EXPECT_GT(8 * 1024, avail0 - avail1)
		TH_LOG("MemAvailable dropped from %ld kB to %ld kB", avail0, avail1);
}

/* ---------------------------------------------------------------------------------------
 * 16. KEEL_LIST_DOMAINS and KEEL_DOMAIN_INFO. */

/* The live domains; *n set to their number. */
static struct keel_domain_info *list_all(uint32_t *n)
{
	uint32_t room = keel_domain_count() + 8;
	struct keel_domain_info *all = calloc(room, sizeof(*all));
	struct keel_domain_list list = { .count = room, .buffer = (uint64_t)(uintptr_t)all };

	KEEL_ASSERT(all, "out of memory");
	KEEL_ASSERT(__keel_list_domains(&list) == 0, "KEEL_LIST_DOMAINS: %s", strerror(errno));
	KEEL_ASSERT(list.count == list.total, "count %u, total %u", list.count, list.total);
	*n = list.count;
	return all;
}

static struct keel_domain_info *find_domid(struct keel_domain_info *all, uint32_t n,
					   uint32_t domid)
{
	for (uint32_t i = 0; i < n; i++)
		if (all[i].domid == domid)
			return &all[i];
	return NULL;
}

TEST_F(domain, list_and_info)
{
	const uint64_t memory_size = 4 * SZ_1M;
	struct keel_vm *vm = vm_create_empty("info-test", 3, memory_size);
	struct keel_vm *other = vm_create_empty("info-other", 1, SZ_1M);
	struct keel_domain_info info, one, *all, *e;
	struct keel_domain_list list;
	uint32_t n, domid = vm->domid;

	EXPECT_LT(vm->domid, other->domid) TH_LOG("domids %u, %u", vm->domid, other->domid);
	vm_add_range(vm, 0, SZ_1M, KEEL_RANGE_RAM);
	vm_add_range(vm, SZ_1M, SZ_64K, KEEL_RANGE_ROM);
	vm_add_range(vm, 0xfee00000, SZ_4K, KEEL_RANGE_MMIO);
	vm_vcpu_add(vm, 0);
	vm_vcpu_add(vm, 2);

	memset(&info, 0xa5, sizeof(info));
	vm_info(vm, &info);
	EXPECT_EQ(vm->domid, info.domid);
	EXPECT_EQ(0, info.state);
	EXPECT_EQ(3, info.max_vcpus);
	EXPECT_EQ(2, info.nr_vcpus);
	EXPECT_EQ(memory_size, info.memory_size);
	EXPECT_EQ(SZ_1M + SZ_64K, info.memory_used);
	EXPECT_EQ(3, info.nr_ranges);
	EXPECT_EQ(0, info.pad);
	EXPECT_EQ(0x5, info.vcpu_mask);
	EXPECT_EQ(0, info.running_mask);
	EXPECT_STREQ("info-test", info.name);
	for (size_t i = strlen("info-test"); i < KEEL_NAME_LEN; i++) {
		EXPECT_EQ(0, info.name[i]);
	}

	/* The list: in domid order, this domain's entry as KEEL_DOMAIN_INFO has it. */
	all = list_all(&n);
	EXPECT_LE(2, n);
	for (uint32_t i = 1; i < n; i++) {
		EXPECT_LT(all[i - 1].domid, all[i].domid);
	}
	e = find_domid(all, n, vm->domid);
	ASSERT_NE(NULL, e);
	EXPECT_EQ(0, memcmp(&info, e, sizeof(info)));
	e = find_domid(all, n, other->domid);
	ASSERT_NE(NULL, e);
	EXPECT_STREQ("info-other", e->name);
	EXPECT_EQ(1, e->max_vcpus);
	EXPECT_EQ(0, e->nr_vcpus);
	EXPECT_EQ(0, e->memory_used);
	free(all);

	/* count 0: only the total; count 1: one entry, the first. */
	list = (struct keel_domain_list){ .count = 0, .buffer = (uint64_t)(uintptr_t)&one };
	ASSERT_EQ(0, __keel_list_domains(&list));
	EXPECT_EQ(0, list.count);
	EXPECT_EQ(n, list.total);
	memset(&one, 0, sizeof(one));
	list = (struct keel_domain_list){ .count = 1, .buffer = (uint64_t)(uintptr_t)&one };
	ASSERT_EQ(0, __keel_list_domains(&list));
	EXPECT_EQ(1, list.count);
	EXPECT_EQ(n, list.total);
	EXPECT_NE(0, one.name[0]);

	/* After a run: STARTED, nothing running. */
	LOAD_BLOB(vm, CODE_GPA, real_hlt);
	vcpu_setup_real(vm->vcpus[0], CODE_GPA, 0);
	vcpu_run(vm->vcpus[0]);
	ASSERT_EXIT(vm->vcpus[0], KEEL_EXIT_HLT);
	vm_info(vm, &info);
	EXPECT_EQ(KEEL_DOMAIN_STARTED, info.state);
	EXPECT_EQ(0, info.running_mask);
	EXPECT_EQ(SZ_1M + SZ_64K, info.memory_used);
	ASSERT_TRUE(keel_find_domain("info-test", &one));
	EXPECT_EQ(KEEL_DOMAIN_STARTED, one.state);
	vm_pause(vm);
	vm_info(vm, &info);
	EXPECT_EQ(KEEL_DOMAIN_STARTED | KEEL_DOMAIN_PAUSED, info.state);
	vm_unpause(vm);

	vm_destroy(vm);
	vm_destroy(other);
	all = list_all(&n);
	EXPECT_EQ(NULL, find_domid(all, n, domid));
	free(all);
}

/* ---------------------------------------------------------------------------------------
 * Running on any CPU, and states the hardware refuses. */

/* The thread running a vCPU moves between CPUs between runs: the guest goes on where it was. */
TEST_F(domain, vcpu_moves_between_cpus)
{
	struct keel_vm *vm;
	struct keel_vcpu *vcpu;
	struct keel_regs regs;
	cpu_set_t all;
	uint64_t base;

	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		SKIP(return, "one CPU online: nothing to move between");
	ASSERT_EQ(0, sched_getaffinity(0, sizeof(all), &all));
	vm = REAL_VM("migrate", 1, SZ_64K, real_step);
	vcpu = vm->vcpus[0];
	vcpu_get_regs(vcpu, &regs);
	base = regs.rbx & 0xffff;
	for (int i = 1; i <= 20; i++) {
		int cpu = i % 2;

		ASSERT_TRUE(pin_thread(pthread_self(), cpu));
		ASSERT_EQ(cpu, sched_getcpu());
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
		vcpu_get_regs(vcpu, &regs);
		ASSERT_EQ((base + i) & 0xffff, regs.rbx & 0xffff)
			TH_LOG("run %d, on CPU %d: the guest lost its place", i, cpu);
	}
	ASSERT_EQ(0, sched_setaffinity(0, sizeof(all), &all));
	vm_destroy(vm);
}

/* A state the hardware refuses ends the run with its reason; a valid one runs again. */
TEST_F(domain, invalid_state_is_entry_failure)
{
	struct keel_vm *vm = REAL_VM("bad-state", 1, SZ_64K, real_hlt);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs good, bad;

	vcpu_get_sregs(vcpu, &good);
	bad = good;
	/*
	 * Paging with EFER.LME but without PAE or LMA, and CR0.NW without CD: VMX's entry checks
	 * (EFER.LME must match the IA-32e mode control when CR0.PG is set) and SVM's VMRUN checks
	 * (NW without CD) both refuse it.
	 */
	bad.cr0 = X86_CR0_PE | X86_CR0_PG | X86_CR0_ET | X86_CR0_NE | (1ULL << 29);
	bad.cr4 = 0;
	bad.efer = X86_EFER_LME;
	vcpu_set_sregs(vcpu, &bad);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_ENTRY_FAILURE);
	EXPECT_NE(0, vcpu->run.exit.fail.hw_reason);

	vcpu_set_sregs(vcpu, &good);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * Guests that never exit by themselves: a hypervisor that fails to take the CPU back from
 * them wedges the machine, so these run last, after everything else has reported.
 *
 * 11. A spinning guest, preemption and signals. */

TEST_F(domain, spinning_guest_is_preempted_and_interrupted)
{
	struct keel_vm *vm = REAL_VM("spin", 1, SZ_64K, real_spin);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct vcpu_thread t;
	struct timespec cpu0, cpu1;
	clockid_t clock;
	struct keel_regs regs;
	uint64_t start, elapsed;
	bool pinned;

	install_sigusr1();
	vcpu_thread_start(&t, vcpu, run_once_fn);
	/* Both threads on one CPU: the main thread runs only if the guest is preempted. */
	pinned = pin_thread(t.tid, 0) && pin_thread(pthread_self(), 0);
	ASSERT_TRUE(WAIT_FOR(running_mask(vm) & 1, 5000)) TH_LOG("the vCPU never ran");

	ASSERT_EQ(0, pthread_getcpuclockid(t.tid, &clock));
	clock_gettime(clock, &cpu0);
	start = now_ms();
	for (int i = 0; i < 20; i++)
		usleep(5000);
	elapsed = now_ms() - start;
	clock_gettime(clock, &cpu1);
	EXPECT_LT(elapsed, 2000) TH_LOG("20 sleeps of 5 ms took %llu ms (pinned: %d)",
					(ull)elapsed, pinned);
	EXPECT_FALSE(vcpu_thread_done(&t))
		TH_LOG("the run ended: %s", keel_exit_str(&vcpu->run.exit));
	/* The guest had the CPU meanwhile. */
	EXPECT_LT(cpu0.tv_sec * 1000000000LL + cpu0.tv_nsec + 10000000LL,
		  cpu1.tv_sec * 1000000000LL + cpu1.tv_nsec);

	ASSERT_EQ(0, pthread_kill(t.tid, SIGUSR1));
	ASSERT_TRUE(vcpu_thread_join(&t, 5000)) TH_LOG("the signal did not end the run");
	EXPECT_EQ(-1, t.ret);
	EXPECT_EQ(EINTR, t.err) TH_LOG("errno %s", strerrorname_np(t.err));
	EXPECT_EXIT(vcpu, KEEL_EXIT_INTR);

	/* It can run again: move it to the HLT. */
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(0, regs.rip) TH_LOG("rip %#llx, not the jmp", (ull)regs.rip);
	regs.rip = BLOB_OFF(real_spin, hlt);
	vcpu_set_regs(vcpu, &regs);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(BLOB_OFF(real_spin, hlt), vcpu->run.exit.rip);
	vm_destroy(vm);
}

/* 12. Progress stops while paused. */

TEST_F(domain, pause_stops_progress)
{
	struct keel_vm *vm = REAL_VM("pause", 1, SZ_64K, real_count);
	volatile uint32_t *counter = gpa_hva(vm, COUNTER_GPA, 4);
	struct vcpu_thread t;
	uint32_t c1, c2;

	install_sigusr1();
	EXPECT_EQ(0, domain_state(vm) & KEEL_DOMAIN_PAUSED);
	vcpu_thread_start(&t, vm->vcpus[0], run_once_fn);
	ASSERT_TRUE(WAIT_FOR(*counter > 1000, 5000)) TH_LOG("the guest makes no progress");

	vm_pause(vm);
	EXPECT_TRUE(domain_state(vm) & KEEL_DOMAIN_PAUSED);
	/* The vCPU leaves the guest and waits inside KEEL_VCPU_RUN. */
	ASSERT_TRUE(WAIT_FOR(running_mask(vm) == 0, 2000)) TH_LOG("the vCPU stays in the guest");
	c1 = *counter;
	usleep(200000);
	c2 = *counter;
	EXPECT_EQ(c1, c2) TH_LOG("the counter moved while paused");
	EXPECT_FALSE(vcpu_thread_done(&t)) TH_LOG("the run ended: %s",
						  keel_exit_str(&vm->vcpus[0]->run.exit));

	/* Pauses nest. */
	vm_pause(vm);
	vm_unpause(vm);
	EXPECT_TRUE(domain_state(vm) & KEEL_DOMAIN_PAUSED);
	usleep(50000);
	EXPECT_EQ(c2, *counter);

	vm_unpause(vm);
	EXPECT_EQ(0, domain_state(vm) & KEEL_DOMAIN_PAUSED);
	EXPECT_TRUE(WAIT_FOR(*counter > c2 + 1000, 5000)) TH_LOG("no progress after unpause");
	EXPECT_ERRNO(EINVAL, __keel_unpause(vm->fd));

	ASSERT_EQ(0, pthread_kill(t.tid, SIGUSR1));
	ASSERT_TRUE(vcpu_thread_join(&t, 5000)) TH_LOG("the signal did not end the run");
	EXPECT_EQ(EINTR, t.err);
	vm_destroy(vm);
}

/* 14. Destroying a domain whose vCPUs are running. */

static void *run_forever_fn(void *arg)
{
	struct keel_vcpu *vcpu = arg;

	for (;;)
		__vcpu_run(vcpu);
	return NULL;
}

TEST_F(domain, destroy_while_running)
{
	struct keel_domain_info info = { 0 };
	struct keel_vm *vm;
	char name[KEEL_NAME_LEN];
	int status;
	pid_t pid;

	snprintf(name, sizeof(name), "doomed-%d", getpid());
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		pthread_t tid[2];

		vm = REAL_VM(name, 2, SZ_64K, real_spin);
		for (int i = 0; i < 2; i++)
			if (pthread_create(&tid[i], NULL, run_forever_fn, vm->vcpus[i]))
				_exit(2);
		for (;;)
			pause();
	}
	EXPECT_TRUE(WAIT_FOR(keel_find_domain(name, &info) && info.running_mask == 3, 10000))
		TH_LOG("the child's vCPUs never ran together (running_mask %#llx)",
		       (ull)info.running_mask);
	ASSERT_EQ(0, kill(pid, SIGKILL));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
		TH_LOG("the child ended with status %#x", status);
	EXPECT_TRUE(WAIT_FOR(!keel_find_domain(name, NULL), 5000))
		TH_LOG("'%s' is still listed", name);

	vm = REAL_VM("after-destroy", 1, SZ_64K, real_out);
	vcpu_run(vm->vcpus[0]);
	EXPECT_EXIT(vm->vcpus[0], KEEL_EXIT_IO);
	vcpu_run(vm->vcpus[0]);
	EXPECT_EXIT(vm->vcpus[0], KEEL_EXIT_HLT);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

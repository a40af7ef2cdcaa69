// SPDX-License-Identifier: GPL-2.0
/*
 * xen_bench: what Xen's guest ABI costs a DomU under Keel, in Dom0's CLOCK_MONOTONIC (under
 * QEMU with -icount shift=0 that is instructions: 1 ns each, every CPU's counted). A benchmark
 * (prints figures; not a test): scripts/bench-xen runs it in the test VM.
 *
 * A Xen domain (KEEL_CREATE_DOMAIN_XEN) with one long-mode vCPU (selftests/lib guest code)
 * that installs the hypercall page and places shared_info, then times, between two ucalls:
 *   cpuid      CPUID leaf 0, answered in root mode: the baseline cost of an exit
 *   xen_version  xen_version(XENVER_version) through the hypercall page, answered in root mode
 *              (the null hypercall)
 *   evtchn_send  event_channel_op(EVTCHNOP_send) on an IPI port bound to itself, answered by
 *              the run loop (the vCPU's thread in the kernel); the guest clears the port's
 *              pending bits each time so that every send raises it afresh
 *   pingpong   a round trip DomU -> Dom0 -> DomU: the guest sends on a port bound to Dom0
 *              (KEEL_DOMAIN_EVTCHN_BIND with KEEL_EVTCHN_ALLOC and an eventfd), then blocks
 *              (SCHEDOP_block) until its callback vector (HVM_PARAM_CALLBACK_IRQ type vector,
 *              an IDT handler that clears the pending bits and counts) reports Dom0's
 *              KEEL_DOMAIN_EVTCHN_NOTIFY; Dom0's thread waits on the eventfd (read) and
 *              notifies. Run with Dom0's thread on the vCPU's CPU and on another one.
 * Each line: "xen_bench NAME N TOTAL_NS NS_PER_ITERATION" (the loop's own few instructions
 * included; the ucalls around it are one exit each, not counted per iteration).
 *
 * usage: xen_bench [-n N] [-p N] [-c CPU] [-o CPU]
 *   -n  iterations of the hypercall loops (default 20000)
 *   -p  ping-pong round trips (default 5000)
 *   -c  the CPU the vCPU's thread runs on (default: the last)
 *   -o  the CPU of Dom0's thread in the cross-CPU ping-pong (default: 0; -1 skips that run)
 */
#include <cpuid.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "guest.h"

/* Xen's numbers. */
#define HC_MEMORY_OP        12
#define HC_XEN_VERSION      17
#define HC_SCHED_OP         29
#define HC_EVENT_CHANNEL_OP 32
#define HC_HVM_OP           34
#define XENMEM_add_to_physmap 7
#define XENMAPSPACE_shared_info 0
#define DOMID_SELF          0x7ff0
#define SCHEDOP_block       1
#define EVTCHNOP_send       4
#define EVTCHNOP_bind_ipi   7
#define HVMOP_set_param     0
#define HVM_PARAM_CALLBACK_IRQ 0
#define XEN_MSR_HCPAGE      0x40000000

/* Guest-physical (identity-mapped) pages in the domain's RAM. The upcall handler below uses
 * SHINFO and COUNT as literals. */
#define HC_PAGE 0x10000ULL
#define SHINFO  0x11000ULL
#define IDT     0x12000ULL
#define ARGS    0x13000ULL
#define COUNT   0x14000ULL /* u64: upcalls taken */
#define VECTOR  0xf3
#define RAM     SZ_1M

/* The callback vector's handler: vCPU 0's evtchn_upcall_pending (shared_info + 0) and
 * evtchn_pending_sel (+ 8), the first word of evtchn_pending (+ 2048: every port here is
 * below 64), then the count. No EOI: the callback vector is not the local APIC's. */
asm(".pushsection .text\n"
    ".globl xb_upcall\n"
    "xb_upcall:\n"
    "	movb $0, 0x11000\n"
    "	movq $0, 0x11008\n"
    "	movq $0, 0x11800\n"
    "	incq 0x14000\n"
    "	iretq\n"
    ".popsection\n");
extern const char xb_upcall[];

/* ---------------------------------------------------------------------------------------
 * Guest code (long mode). */

GUEST_INLINE uint64_t hc2(uint64_t nr, uint64_t a0, uint64_t a1)
{
	uint64_t (*stub)(uint64_t, uint64_t) = (void *)(HC_PAGE + 32 * nr);

	return stub(a0, a1);
}

GUEST_INLINE void guest_wrmsr(uint32_t msr, uint64_t value)
{
	__asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32))
			 : "memory");
}

/* The hypercall page, and shared_info at SHINFO. */
GUEST_INLINE void guest_xen_setup(void)
{
	volatile uint64_t *a = (volatile uint64_t *)ARGS;

	guest_wrmsr(XEN_MSR_HCPAGE, HC_PAGE);
	/* xen_add_to_physmap: domid u16, size u16, space u32, idx u64, gpfn u64. */
	a[0] = DOMID_SELF | ((uint64_t)XENMAPSPACE_shared_info << 32);
	a[1] = 0;
	a[2] = SHINFO >> 12;
	GUEST_ASSERT_EQ(hc2(HC_MEMORY_OP, XENMEM_add_to_physmap, ARGS), 0);
}

/* Clears port's pending bits, as an upcall handler would. */
GUEST_INLINE void guest_clear_pending(void)
{
	*(volatile uint8_t *)SHINFO = 0;
	*(volatile uint64_t *)(SHINFO + 8) = 0;
	*(volatile uint64_t *)(SHINFO + 2048) = 0;
}

static GUEST_CODE void guest_calls(uint64_t n)
{
	volatile uint32_t *a = (volatile uint32_t *)ARGS;
	unsigned int r0, r1, r2, r3;
	uint32_t port;

	guest_xen_setup();
	a[0] = 0; /* evtchn_bind_ipi: vcpu 0 */
	GUEST_ASSERT_EQ(hc2(HC_EVENT_CHANNEL_OP, EVTCHNOP_bind_ipi, ARGS), 0);
	port = a[1];
	GUEST_ASSERT(port > 0 && port < 64);

	GUEST_SYNC(1);
	for (uint64_t i = 0; i < n; i++)
		__cpuid_count(0, 0, r0, r1, r2, r3);
	GUEST_SYNC(2);
	for (uint64_t i = 0; i < n; i++)
		hc2(HC_XEN_VERSION, 0, 0);
	GUEST_SYNC(3);
	for (uint64_t i = 0; i < n; i++) {
		guest_clear_pending();
		a[0] = port;
		hc2(HC_EVENT_CHANNEL_OP, EVTCHNOP_send, ARGS);
	}
	GUEST_SYNC(4);
	(void)r0; (void)r1; (void)r2; (void)r3;
}

static GUEST_CODE void guest_pingpong(uint64_t port, uint64_t n)
{
	volatile uint64_t *idt = (volatile uint64_t *)IDT;
	volatile uint64_t *count = (volatile uint64_t *)COUNT;
	volatile uint64_t *p = (volatile uint64_t *)ARGS;
	volatile uint32_t *send = (volatile uint32_t *)(ARGS + 64);
	uint64_t h = (uint64_t)xb_upcall;
	struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idtr = { 16 * 256 - 1, IDT };

	guest_xen_setup();
	/* An interrupt gate for VECTOR: selector 0x08, present, DPL 0, type 0xe. */
	idt[2 * VECTOR] = (h & 0xffff) | ((uint64_t)KEEL_SEL_CODE << 16) | (0x8eULL << 40) |
			  ((h >> 16 & 0xffff) << 48);
	idt[2 * VECTOR + 1] = h >> 32;
	__asm__ volatile("lidt %0" ::"m"(idtr) : "memory");
	/* xen_hvm_param: domid u16, pad, index u32, value u64. */
	p[0] = DOMID_SELF | ((uint64_t)HVM_PARAM_CALLBACK_IRQ << 32);
	p[1] = (2ULL << 56) | VECTOR;
	GUEST_ASSERT_EQ(hc2(HC_HVM_OP, HVMOP_set_param, ARGS), 0);
	*count = 0;

	__asm__ volatile("cli" ::: "memory");
	GUEST_SYNC(1);
	for (uint64_t i = 0; i < n; i++) {
		send[0] = port;
		hc2(HC_EVENT_CHANNEL_OP, EVTCHNOP_send, ARGS + 64);
		/* Interrupts off until blocked (block returns once an upcall is pending, whatever
		 * IF), then on for the one instruction after STI's shadow: no wakeup is lost. */
		while (*count == i) {
			hc2(HC_SCHED_OP, SCHEDOP_block, 0);
			__asm__ volatile("sti; nop; cli" ::: "memory");
		}
	}
	GUEST_SYNC(2);
}

/* ---------------------------------------------------------------------------------------
 * Host side. */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set)) {
		perror("sched_setaffinity");
		exit(1);
	}
}

static struct keel_vm *xen_vm(const char *name)
{
	struct keel_domain_create c = {
		.flags = KEEL_CREATE_DOMAIN_XEN, .max_vcpus = 1, .memory_size = RAM + KEEL_SYS_RESERVE,
	};
	struct keel_vm *vm = calloc(1, sizeof(*vm));

	KEEL_ASSERT(vm, "out of memory");
	strcpy(c.name, name);
	vm->fd = __keel_create_domain(&c);
	KEEL_ASSERT(vm->fd >= 0, "KEEL_CREATE_DOMAIN(XEN) failed: %s", keel_errstr());
	vm->domid = c.domid;
	strcpy(vm->name, name);
	vm->max_vcpus = 1;
	vm->memory_size = c.memory_size;
	vm->ram = vm_add_range(vm, 0, RAM, KEEL_RANGE_RAM);
	vm->ram_size = RAM;
	vm_vcpu_add(vm, 0);
	return vm;
}

/* Runs to the next GUEST_SYNC(expect); returns the time then. */
static uint64_t run_to(struct keel_vcpu *vcpu, uint64_t expect)
{
	struct keel_ucall uc;
	uint64_t cmd = vcpu_run_report(vcpu, &uc);

	KEEL_ASSERT(cmd == UCALL_SYNC && uc.args[0] == expect, "expected GUEST_SYNC(%llu), got %llu",
		    (ull)expect, (ull)cmd);
	return now_ns();
}

static void report(const char *name, uint64_t n, uint64_t ns)
{
	printf("xen_bench %s %llu %llu %.1f\n", name, (ull)n, (ull)ns, (double)ns / n);
	fflush(stdout);
}

static void bench_calls(uint64_t n)
{
	struct keel_vm *vm = xen_vm("xen-bench-calls");
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint64_t t1, t2, t3, t4;

	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_calls), 0);
	vcpu_args_set(vcpu, 1, n);
	t1 = run_to(vcpu, 1);
	t2 = run_to(vcpu, 2);
	t3 = run_to(vcpu, 3);
	t4 = run_to(vcpu, 4);
	report("cpuid", n, t2 - t1);
	report("xen_version", n, t3 - t2);
	report("evtchn_send", n, t4 - t3);
	vm_destroy(vm);
}

struct responder {
	int efd, domfd, cpu;
	uint32_t port;
	uint64_t n;
};

static void *respond(void *arg)
{
	struct responder *r = arg;
	struct keel_evtchn_port p = { .port = r->port };
	uint64_t v;

	pin(r->cpu);
	for (uint64_t i = 0; i < r->n;) {
		KEEL_ASSERT(read(r->efd, &v, sizeof(v)) == sizeof(v), "eventfd read: %s", keel_errstr());
		/* One notify per send (the guest sends only after the last answer). */
		for (; v && i < r->n; v--, i++)
			KEEL_ASSERT(ioctl(r->domfd, KEEL_DOMAIN_EVTCHN_NOTIFY, &p) == 0,
				    "KEEL_DOMAIN_EVTCHN_NOTIFY: %s", keel_errstr());
	}
	return NULL;
}

static void bench_pingpong(const char *name, uint64_t n, int dom0_cpu)
{
	struct keel_vm *vm = xen_vm("xen-bench-pp");
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_evtchn_bind b = { .flags = KEEL_EVTCHN_ALLOC };
	struct responder r;
	pthread_t tid;
	uint64_t t1, t2;

	b.eventfd = eventfd(0, EFD_CLOEXEC);
	KEEL_ASSERT(b.eventfd >= 0, "eventfd: %s", keel_errstr());
	KEEL_ASSERT(ioctl(vm->fd, KEEL_DOMAIN_EVTCHN_BIND, &b) == 0, "KEEL_DOMAIN_EVTCHN_BIND: %s",
		    keel_errstr());
	KEEL_ASSERT(b.port > 0 && b.port < 64, "port %u", b.port);
	r = (struct responder){ .efd = b.eventfd, .domfd = vm->fd, .cpu = dom0_cpu, .port = b.port,
				.n = n };
	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_pingpong), 0);
	vcpu_args_set(vcpu, 2, (uint64_t)b.port, n);
	KEEL_ASSERT(pthread_create(&tid, NULL, respond, &r) == 0, "pthread_create");
	t1 = run_to(vcpu, 1);
	t2 = run_to(vcpu, 2);
	pthread_join(tid, NULL);
	KEEL_ASSERT(*(uint64_t *)gpa_hva(vm, COUNT, 8) == n, "%llu upcalls for %llu round trips",
		    (ull)*(uint64_t *)gpa_hva(vm, COUNT, 8), (ull)n);
	report(name, n, t2 - t1);
	close(b.eventfd);
	vm_destroy(vm);
}

int main(int argc, char **argv)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t n = 20000, np = 5000;
	int cpu = ncpu - 1, other = 0, opt;

	while ((opt = getopt(argc, argv, "n:p:c:o:")) != -1) {
		switch (opt) {
		case 'n': n = strtoull(optarg, NULL, 0); break;
		case 'p': np = strtoull(optarg, NULL, 0); break;
		case 'c': cpu = atoi(optarg); break;
		case 'o': other = atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-n N] [-p N] [-c CPU] [-o CPU|-1]\n", argv[0]);
			return 2;
		}
	}
	if (keel_dev_fd() < 0) {
		perror(KEEL_DEV);
		return 1;
	}
	pin(cpu);
	bench_calls(n);
	bench_pingpong("pingpong_same_cpu", np, cpu);
	if (other >= 0 && other != cpu)
		bench_pingpong("pingpong_other_cpu", np, other);
	return 0;
}

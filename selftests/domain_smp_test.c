// SPDX-License-Identifier: GPL-2.0
/*
 * domain_smp_test: guests with several vCPUs running at once, each on its own
 * thread: one domain's vCPUs share a counter (LOCK XADD), two such domains run at once, and
 * root mode counts a domain's exits across its vCPUs (debugfs domain_exits).
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mount.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "domain_test.h"

/* ---------------------------------------------------------------------------------------
 * Guest code: long-mode C functions. */

static GUEST_CODE void guest_xadd(uint64_t counter, uint64_t n)
{
	uint64_t *c = (uint64_t *)counter;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t one = 1;

		__asm__ volatile("lock xaddq %0, %1" : "+r"(one), "+m"(*c) : : "memory");
	}
	GUEST_DONE();
}

static GUEST_CODE void guest_cpuids(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		uint32_t a = 0, b, c = 0, d;

		__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
	}
	GUEST_DONE();
}

/* ---------------------------------------------------------------------------------------
 * Host helpers. */

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

/* ---------------------------------------------------------------------------------------
 * SMP. */

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

/* Root mode counts a domain's exits in the object its vCPUs share, under a root-mode lock:
 * two vCPUs running CPUID at once on two CPUs lose no count, and another domain's exits are
 * not counted there. */
TEST_F(domain, exits_counted_across_vcpus)
{
	const uint64_t n = 5000;
	struct keel_vm *vm = vm_create("exits", 2, SZ_64K);
	struct keel_vm *other = vm_create("exits-other", 1, SZ_64K);
	struct smp_thread t[2];
	pthread_barrier_t barrier;

	if (access(DOMAIN_EXITS, R_OK) && mount("none", "/sys/kernel/debug", "debugfs", 0, NULL) &&
	    errno != EBUSY)
		SKIP(return, "cannot mount debugfs");
	ASSERT_EQ(0, domain_exits(vm->domid, "cpuid")) TH_LOG("a new domain has no exits");
	vcpu_setup_long64(other, other->vcpus[0], GUEST_FN(guest_cpuids), 0);
	vcpu_args_set(other->vcpus[0], 1, 7);
	EXPECT_EQ(UCALL_DONE, vcpu_run_report(other->vcpus[0], NULL));
	pthread_barrier_init(&barrier, NULL, 2);
	for (int i = 0; i < 2; i++) {
		vcpu_setup_long64(vm, vm->vcpus[i], GUEST_FN(guest_cpuids), 0);
		vcpu_args_set(vm->vcpus[i], 1, n);
		t[i].vcpu = vm->vcpus[i];
		t[i].barrier = &barrier;
		t[i].cmd = UCALL_NONE;
	}
	for (int i = 0; i < 2; i++) {
		ASSERT_EQ(0, pthread_create(&t[i].tid, NULL, smp_fn, &t[i]));
		/* One vCPU per CPU where there are two: both count at once. */
		pin_thread(t[i].tid, i);
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(t[i].tid, NULL);
		EXPECT_EQ(UCALL_DONE, t[i].cmd) TH_LOG("thread %d", i);
	}
	EXPECT_EQ((long long)(2 * n), domain_exits(vm->domid, "cpuid"));
	EXPECT_EQ(7, domain_exits(other->domid, "cpuid"));
	pthread_barrier_destroy(&barrier);
	vm_destroy(other);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

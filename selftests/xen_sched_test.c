// SPDX-License-Identifier: GPL-2.0
/*
 * xen_sched_test: sched_op as Keel serves it: SCHEDOP_yield returns 0 and the guest goes on;
 * SCHEDOP_shutdown ends the run with KEEL_EXIT_SHUTDOWN, kind KEEL_SHUTDOWN_XEN and Xen's
 * reason, the hypercall completed (running the vCPU again goes on after it, as a cancelled
 * suspend does); a reason past SHUTDOWN_MAX is -EINVAL and a bad pointer -EFAULT, with the run
 * going on. Long-mode guests in C. Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <stdint.h>
#include <string.h>

#include "kselftest_harness.h"
#include "domain_test.h"

#define HC_SCHED_OP       29
#define SCHEDOP_yield     0
#define SCHEDOP_shutdown  2
#define EFAULT 14
#define EINVAL 22
#define ARG    0x20000ULL

GUEST_INLINE int64_t sched_op(uint64_t cmd, uint64_t arg)
{
	return (int64_t)guest_vmmcall(HC_SCHED_OP, cmd, arg, 0, 0, 0);
}

/* Yields, then shuts down with each reason in turn, reporting each return value. */
static GUEST_CODE void guest_sched(void)
{
	volatile uint32_t *reason = (volatile uint32_t *)ARG;

	for (int i = 0; i < 100; i++)
		GUEST_ASSERT_EQ(sched_op(SCHEDOP_yield, 0), 0);
	for (uint32_t r = 0; r <= 5; r++) {
		*reason = r;
		GUEST_SYNC(sched_op(SCHEDOP_shutdown, ARG));
	}
	*reason = 6;
	GUEST_ASSERT_EQ(sched_op(SCHEDOP_shutdown, ARG), -EINVAL);
	GUEST_ASSERT_EQ(sched_op(SCHEDOP_shutdown, 1ULL << 40), -EFAULT);
	GUEST_ASSERT_EQ(sched_op(SCHEDOP_shutdown, 0xdead000000000000ULL), -EFAULT);
}

TEST_F(domain, sched_op_yield_and_shutdown)
{
	struct keel_vm *vm = vm_create("xen-sched", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_ucall uc;

	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_sched), 0);
	for (uint32_t r = 0; r <= 5; r++) {
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_SHUTDOWN);
		EXPECT_EQ(KEEL_SHUTDOWN_XEN, vcpu->run.exit.shutdown.kind);
		EXPECT_EQ(r, vcpu->run.exit.shutdown.reason);
		/* The hypercall returned 0: the guest reports it. */
		ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
		EXPECT_EQ(0, uc.args[0]);
	}
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, &uc));
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

// SPDX-License-Identifier: GPL-2.0
/*
 * xen_shinfo_test: shared_info and vcpu_info of a Xen PVH domain. add_to_physmap of
 * XENMAPSPACE_shared_info places it at a RAM gfn (zeroed: no stale event bits), every vCPU's
 * slot then has a valid pvclock record (even version, nonzero multiplier) and the wallclock is
 * set; VCPUOP_register_vcpu_info moves a vCPU's vcpu_info (with its record; events then go
 * there), once; the errors (bad gfn, index, offset, alignment, vCPU, pointer). Time computed
 * in the guest from the pvclock record is monotonic across many reads and between two vCPUs
 * (the second started by INIT/SIPI from the first), and shared_info's wallclock plus system
 * time is within 2 s of Dom0's CLOCK_REALTIME. Long-mode guests in C. Runs inside the test
 * VM, as root, after keel.ko is loaded.
 */
#include <stdint.h>
#include <string.h>

#include "kselftest_harness.h"
#include "domain_test.h"
#include "xen.h"

#define SHINFO     0x10000ULL
#define VINFO_PAGE 0x11000ULL
#define SCRATCH    0x20000ULL
#define SHARED     0x30000ULL /* the two vCPUs' handshake */
#define OUTSIDE_RAM_GFN (0x200000ULL >> 12) /* RAM is the first 1 MiB */
#define READS      2000
#define ROUNDS     20
#define SPINS      200000000ULL

/* ---------------------------------------------------------------------------------------
 * Guest code (long mode). */

GUEST_INLINE int64_t register_vcpu_info(uint32_t vcpu, uint64_t mfn, uint32_t offset,
					uint32_t rsvd)
{
	volatile struct vcpu_register_vcpu_info *r =
		(volatile struct vcpu_register_vcpu_info *)SCRATCH;

	r->mfn = mfn;
	r->offset = offset;
	r->rsvd = rsvd;
	return xen_hc(HC_vcpu_op, VCPUOP_register_vcpu_info, vcpu, SCRATCH);
}

/* A valid record: even version (not being updated), a multiplier. */
GUEST_INLINE void assert_record(uint64_t vi)
{
	volatile struct vcpu_time_info *t = (volatile struct vcpu_time_info *)(vi + VI_TIME);

	GUEST_ASSERT(t->version != 0);
	GUEST_ASSERT_EQ(t->version & 1, 0);
	GUEST_ASSERT(t->tsc_to_system_mul != 0);
}

static GUEST_CODE void guest_shared_info(void)
{
	volatile uint64_t *page = (volatile uint64_t *)SHINFO;
	uint64_t prev, now, first;

	/* Errors before it is placed. */
	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_shared_info, 0, OUTSIDE_RAM_GFN, SCRATCH),
			-XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_shared_info, 1, SHINFO >> 12, SCRATCH),
			-XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_hc(HC_memory_op, XENMEM_add_to_physmap, 1ULL << 40, 0), -XEN_EFAULT);
	GUEST_ASSERT_EQ(xen_hc(HC_memory_op, XENMEM_add_to_physmap, 0xdead000000000000ULL, 0),
			-XEN_EFAULT);

	/* Junk in the page first: placing it must leave no stale event bit. */
	for (int i = 0; i < 512; i++)
		page[i] = ~0ULL;
	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_shared_info, 0, SHINFO >> 12, SCRATCH), 0);
	for (int i = 0; i < 64; i++)
		GUEST_ASSERT_EQ(page[SI_EVTCHN_PENDING / 8 + i], 0);
	GUEST_ASSERT_EQ(*(volatile uint8_t *)(SHINFO + VI_UPCALL_PENDING), 0);
	GUEST_ASSERT_EQ(*(volatile uint64_t *)(SHINFO + VI_PENDING_SEL), 0);
	assert_record(SHINFO);
	GUEST_ASSERT_EQ(*(volatile uint32_t *)(SHINFO + SI_WC_VERSION) & 1, 0);

	/* Monotonic, and moving. System time counts from the domain's creation: seconds. */
	first = prev = pvclock_read(SHINFO);
	GUEST_ASSERT(first < 120ULL * 1000000000ULL);
	for (int i = 0; i < READS; i++) {
		now = pvclock_read(SHINFO);
		GUEST_ASSERT(now >= prev);
		prev = now;
	}
	GUEST_ASSERT(prev > first);

	/* The wallclock: wc_sec_hi:wc_sec, wc_nsec at system time 0, plus system time. */
	{
		volatile uint32_t *wc = (volatile uint32_t *)SHINFO;
		uint64_t sec = ((uint64_t)wc[SI_WC_SEC_HI / 4] << 32) | wc[SI_WC_SEC / 4];
		uint32_t nsec = wc[SI_WC_NSEC / 4];

		GUEST_ASSERT(nsec < 1000000000U);
		GUEST_SYNC(sec * 1000000000ULL + nsec + pvclock_read(SHINFO));
	}
}

static GUEST_CODE void guest_register_vcpu_info(void)
{
	uint64_t vi = VINFO_PAGE + 128;
	volatile uint64_t *junk = (volatile uint64_t *)VINFO_PAGE;
	uint64_t before, after;
	uint32_t port;

	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_shared_info, 0, SHINFO >> 12, SCRATCH), 0);
	for (int i = 0; i < 512; i++)
		junk[i] = ~0ULL;

	/* Errors: each leaves the vcpu_info where it was. */
	GUEST_ASSERT_EQ(xen_hc(HC_vcpu_op, VCPUOP_register_vcpu_info, 0, 1ULL << 40), -XEN_EFAULT);
	GUEST_ASSERT_EQ(register_vcpu_info(5, VINFO_PAGE >> 12, 128, 0), -XEN_ENOENT);
	GUEST_ASSERT_EQ(register_vcpu_info(0, VINFO_PAGE >> 12, 4096 - 64 + 8, 0), -XEN_EINVAL);
	GUEST_ASSERT_EQ(register_vcpu_info(0, VINFO_PAGE >> 12, 4096, 0), -XEN_EINVAL);
	GUEST_ASSERT_EQ(register_vcpu_info(0, VINFO_PAGE >> 12, 132, 0), -XEN_EINVAL);
	GUEST_ASSERT_EQ(register_vcpu_info(0, VINFO_PAGE >> 12, 128, 1), -XEN_EINVAL);
	GUEST_ASSERT_EQ(register_vcpu_info(0, OUTSIDE_RAM_GFN, 128, 0), -XEN_EINVAL);
	GUEST_ASSERT_EQ(register_vcpu_info(0, 1ULL << 52, 128, 0), -XEN_EINVAL);
	GUEST_ASSERT_EQ(junk[16], ~0ULL);

	before = pvclock_read(SHINFO);
	GUEST_ASSERT_EQ(register_vcpu_info(0, VINFO_PAGE >> 12, 128, 0), 0);
	/* The new place has the record, and the flags of the old slot (none pending). */
	assert_record(vi);
	GUEST_ASSERT_EQ(*(volatile uint8_t *)(vi + VI_UPCALL_PENDING), 0);
	GUEST_ASSERT_EQ(*(volatile uint64_t *)(vi + VI_PENDING_SEL), 0);
	after = pvclock_read(vi);
	GUEST_ASSERT(after >= before);
	/* Once only. */
	GUEST_ASSERT_EQ(register_vcpu_info(0, VINFO_PAGE >> 12, 256, 0), -XEN_EINVAL);

	/* Events now mark the new vcpu_info, not shared_info's slot 0. */
	GUEST_ASSERT_EQ(xen_bind_ipi(0, &port, SCRATCH), 0);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, port, SCRATCH), 0);
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, port));
	GUEST_ASSERT_EQ(*(volatile uint8_t *)(vi + VI_UPCALL_PENDING), 1);
	GUEST_ASSERT(test_bit64(vi + VI_PENDING_SEL, port / 64));
	GUEST_ASSERT_EQ(*(volatile uint8_t *)(SHINFO + VI_UPCALL_PENDING), 0);
	GUEST_ASSERT_EQ(*(volatile uint64_t *)(SHINFO + VI_PENDING_SEL), 0);
}

/* The handshake: vCPU 0 reads its clock and hands the value over; vCPU 1 reads its own clock
 * (its slot's record, its TSC), which must not be earlier, and hands it back; and so on. */
#define TURN  ((volatile uint64_t *)(SHARED + 0x00))
#define T_BSP ((volatile uint64_t *)(SHARED + 0x08))
#define T_AP  ((volatile uint64_t *)(SHARED + 0x10))

static GUEST_CODE void guest_clock_ap(uint64_t slot)
{
	uint64_t vi = SHINFO + slot * XEN_VCPU_INFO_SIZE;

	assert_record(vi);
	for (uint64_t i = 1; i <= ROUNDS; i++) {
		uint64_t t;

		GUEST_ASSERT(spin_until_eq(TURN, 2 * i - 1, SPINS));
		t = pvclock_read(vi);
		GUEST_ASSERT(t >= *T_BSP);
		*T_AP = t;
		*TURN = 2 * i;
	}
}

static GUEST_CODE void guest_clock_bsp(void)
{
	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_shared_info, 0, SHINFO >> 12, SCRATCH), 0);
	*TURN = 0;
	apic_start_ap(1);
	for (uint64_t i = 1; i <= ROUNDS; i++) {
		uint64_t a = pvclock_read(SHINFO), b, c;

		*T_BSP = a;
		*TURN = 2 * i - 1;
		GUEST_ASSERT(spin_until_eq(TURN, 2 * i, SPINS));
		b = *T_AP;
		c = pvclock_read(SHINFO);
		GUEST_ASSERT(b >= a);
		GUEST_ASSERT(c >= b);
	}
}

/* ---------------------------------------------------------------------------------------
 * Tests. */

TEST_F(domain, shared_info_pvclock_and_wallclock)
{
	struct keel_vm *vm = vm_create_xen("xen-shinfo", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_ucall uc;
	int64_t diff;

	xen_setup_vcpu0(vm, guest_shared_info);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
	diff = (int64_t)(uc.args[0] - now_ns(CLOCK_REALTIME));
	EXPECT_LT(diff < 0 ? -diff : diff, 2000000000LL)
		TH_LOG("guest wallclock %llu ns, Dom0's %lld ns apart", (ull)uc.args[0],
		       (long long)diff);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, &uc));
	vm_destroy(vm);
}

TEST_F(domain, register_vcpu_info)
{
	struct keel_vm *vm = vm_create_xen("xen-vcpuinfo", 1, SZ_1M);
	struct keel_ucall uc;

	xen_setup_vcpu0(vm, guest_register_vcpu_info);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc));
	vm_destroy(vm);
}

TEST_F(domain, pvclock_monotonic_across_vcpus)
{
	struct keel_vm *vm = vm_create_xen("xen-clock-smp", 2, SZ_1M);
	struct xen_runner ap;
	struct keel_ucall uc;

	xen_setup_vcpu0(vm, guest_clock_bsp);
	xen_setup_ap(vm, guest_clock_ap, 1);
	xen_runner_start(&ap, vm->vcpus[1], true);
	ASSERT_TRUE(xen_wait_running(vm, 1, 2000));
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc));
	xen_runner_join(&ap);
	EXPECT_TRUE(ap.real_seen);
	EXPECT_EQ(XEN_AP_VECTOR << 8, ap.real_cs);
	EXPECT_EQ(0, ap.real_longmode);
	EXPECT_TRUE(ap.done) TH_LOG("vCPU 1's run ended: reason %u, errno %d", ap.last_reason,
				    ap.err);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

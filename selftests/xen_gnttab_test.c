// SPDX-License-Identifier: GPL-2.0
/*
 * xen_gnttab_test: a Xen PVH domain's own grant table and memory reservation.
 * GNTTABOP_query_size (frames in use, max_nr_frames > 0, GNTST_bad_domain for another
 * domain), GNTTABOP_set_version (1 works, 2 is -EINVAL and reports version 1), count != 1
 * -EINVAL, unknown ops -ENOSYS; add_to_physmap(XENMAPSPACE_grant_table, idx) places frame idx
 * at a RAM gfn (zeroed; query_size counts it), idx past max_nr_frames, the status-frame flag
 * and a gfn outside RAM are -EINVAL; XENMEM_decrease_reservation returns how many extents it
 * took (stopping at the first that is not RAM). Runs inside the test VM, as root, after
 * keel.ko is loaded.
 */
#include <stdint.h>
#include <sys/ioctl.h>
#include <string.h>

#include "kselftest_harness.h"
#include "domain_test.h"
#include "xen.h"

#define SCRATCH  0x20000ULL
#define EXTENTS  0x21000ULL
#define GNT0     0x40000ULL
#define GNT1     0x41000ULL
#define OUTSIDE_RAM_GFN (0x200000ULL >> 12)

/* ---------------------------------------------------------------------------------------
 * Guest code (long mode). */

GUEST_INLINE int64_t query_size(uint16_t dom, volatile struct gnttab_query_size **out)
{
	volatile struct gnttab_query_size *q = (volatile struct gnttab_query_size *)SCRATCH;

	q->dom = dom;
	q->nr_frames = 0xdead;
	q->max_nr_frames = 0xdead;
	q->status = 0x55;
	*out = q;
	return xen_hc(HC_grant_table_op, GNTTABOP_query_size, SCRATCH, 1);
}

GUEST_INLINE int64_t set_version(uint32_t version, uint32_t *out)
{
	volatile uint32_t *v = (volatile uint32_t *)SCRATCH;
	int64_t r;

	*v = version;
	r = xen_hc(HC_grant_table_op, GNTTABOP_set_version, SCRATCH, 1);
	*out = *v;
	return r;
}

GUEST_INLINE int64_t reservation(uint32_t op, uint64_t nr, uint32_t order)
{
	volatile struct xen_memory_reservation *r =
		(volatile struct xen_memory_reservation *)SCRATCH;

	r->extent_start = EXTENTS;
	r->nr_extents = nr;
	r->extent_order = order;
	r->mem_flags = 0;
	r->domid = DOMID_SELF;
	return xen_hc(HC_memory_op, op, SCRATCH, 0);
}

GUEST_INLINE int64_t decrease(uint64_t nr, uint32_t order)
{
	return reservation(XENMEM_decrease_reservation, nr, order);
}

static GUEST_CODE void guest_gnttab(void)
{
	volatile struct gnttab_query_size *q;
	volatile uint64_t *frame = (volatile uint64_t *)GNT0;
	uint32_t max, v;

	GUEST_ASSERT_EQ(query_size(DOMID_SELF, &q), 0);
	GUEST_ASSERT_EQ(q->status, GNTST_okay);
	GUEST_ASSERT_EQ(q->nr_frames, 0);
	max = q->max_nr_frames;
	GUEST_ASSERT(max > 0 && max < 0xdead);
	GUEST_ASSERT_EQ(query_size(0x7000, &q), 0); /* no such domain */
	GUEST_ASSERT_EQ(q->status, GNTST_bad_domain);
	GUEST_ASSERT_EQ(xen_hc(HC_grant_table_op, GNTTABOP_query_size, SCRATCH, 2), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_hc(HC_grant_table_op, GNTTABOP_query_size, 1ULL << 40, 1),
			-XEN_EFAULT);

	GUEST_ASSERT_EQ(set_version(1, &v), 0);
	GUEST_ASSERT_EQ(v, 1);
	GUEST_ASSERT_EQ(set_version(2, &v), -XEN_EINVAL);
	GUEST_ASSERT_EQ(v, 1);
	GUEST_ASSERT_EQ(xen_hc(HC_grant_table_op, 99, SCRATCH, 1), -XEN_ENOSYS);

	/* Frames: placed (and zeroed) at RAM gfns, counted; bad ones refused. */
	for (int i = 0; i < 512; i++)
		frame[i] = ~0ULL;
	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_grant_table, 0, GNT0 >> 12, SCRATCH), 0);
	for (int i = 0; i < 512; i++)
		GUEST_ASSERT_EQ(frame[i], 0);
	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_grant_table, max - 1, GNT1 >> 12, SCRATCH),
			0);
	GUEST_ASSERT_EQ(query_size(DOMID_SELF, &q), 0);
	GUEST_ASSERT_EQ(q->nr_frames, 2);
	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_grant_table, max, GNT1 >> 12, SCRATCH),
			-XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_grant_table, XENMAPIDX_grant_table_status,
					   GNT1 >> 12, SCRATCH),
			-XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_grant_table, 1, OUTSIDE_RAM_GFN, SCRATCH),
			-XEN_EINVAL);
	GUEST_ASSERT_EQ(query_size(DOMID_SELF, &q), 0);
	GUEST_ASSERT_EQ(q->nr_frames, 2);
}

static GUEST_CODE void guest_decrease_reservation(void)
{
	volatile uint64_t *e = (volatile uint64_t *)EXTENTS;
	volatile uint64_t *page = (volatile uint64_t *)(0x52ULL << 12);

	page[7] = 0x1234;
	e[0] = 0x50;
	e[1] = 0x51;
	e[2] = 0x52;
	GUEST_ASSERT_EQ(decrease(3, 0), 3);
	GUEST_SYNC(1); /* Dom0 checks the domain's memory went down. */
	GUEST_ASSERT_EQ(decrease(0, 0), 0);
	/* Given back already: nothing more to give. */
	GUEST_ASSERT_EQ(decrease(1, 0), 0);
	/* Stops at the first extent that is not RAM. */
	e[0] = 0x53;
	e[1] = 0x54;
	e[2] = OUTSIDE_RAM_GFN;
	GUEST_ASSERT_EQ(decrease(3, 0), 2);
	/* Populated again: new zeroed pages; a hole outside RAM is not populated. */
	e[0] = 0x50;
	e[1] = 0x51;
	e[2] = 0x52;
	e[3] = 0x53;
	e[4] = 0x54;
	GUEST_ASSERT_EQ(reservation(XENMEM_populate_physmap, 5, 0), 5);
	GUEST_ASSERT_EQ(page[7], 0);
	page[7] = 0x5678;
	GUEST_ASSERT_EQ(page[7], 0x5678);
	e[0] = OUTSIDE_RAM_GFN;
	GUEST_ASSERT_EQ(reservation(XENMEM_populate_physmap, 1, 0), 0);
	/* A backed page is populated already: done, unchanged. */
	e[0] = 0x52;
	GUEST_ASSERT_EQ(reservation(XENMEM_populate_physmap, 1, 0), 1);
	GUEST_ASSERT_EQ(page[7], 0x5678);
	GUEST_SYNC(2); /* Dom0 checks the memory came back. */
	/* Orders other than 0, increase_reservation, another domain, bad pointers. */
	GUEST_ASSERT_EQ(decrease(1, 1), -XEN_EINVAL);
	GUEST_ASSERT_EQ(reservation(XENMEM_increase_reservation, 1, 0), -XEN_ENOSYS);
	{
		volatile struct xen_memory_reservation *r =
			(volatile struct xen_memory_reservation *)SCRATCH;

		r->extent_order = 0;
		r->domid = 0;
		GUEST_ASSERT_EQ(xen_hc(HC_memory_op, XENMEM_decrease_reservation, SCRATCH, 0),
				-XEN_EPERM);
	}
	GUEST_ASSERT_EQ(xen_hc(HC_memory_op, XENMEM_decrease_reservation, 1ULL << 40, 0),
			-XEN_EFAULT);
}

/* ---------------------------------------------------------------------------------------
 * Tests. */

TEST_F(domain, grant_table)
{
	struct keel_vm *vm = vm_create_xen("xen-gnttab", 1, SZ_1M);

	xen_setup_vcpu0(vm, guest_gnttab);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	vm_destroy(vm);
}

/* The domain's memory as the module counts it (KEEL_DOMAIN_INFO's memory_used). */
static uint64_t memory_used(struct keel_vm *vm)
{
	struct keel_domain_info info = { 0 };

	if (ioctl(vm->fd, KEEL_DOMAIN_INFO, &info))
		return 0;
	return info.memory_used;
}

TEST_F(domain, decrease_reservation)
{
	struct keel_vm *vm = vm_create_xen("xen-decrease", 1, SZ_1M);
	struct keel_ucall uc;
	uint64_t before;

	xen_setup_vcpu0(vm, guest_decrease_reservation);
	before = memory_used(vm);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));
	EXPECT_EQ(1, uc.args[0]);
	EXPECT_EQ(before - 3 * 4096, memory_used(vm));
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));
	EXPECT_EQ(2, uc.args[0]);
	EXPECT_EQ(before, memory_used(vm));
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc));
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

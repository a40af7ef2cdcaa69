// SPDX-License-Identifier: GPL-2.0
/*
 * xen_grant_dom0_test: Dom0's use of pages a DomU granted (KEEL_DOMAIN_GRANT_COPY and
 * KEEL_DOMAIN_GRANT_MAP), with Xen's rules. The guest sets up its grant table and grants
 * pages to domain 0 (read-write, read-only), to another domain, not at all, or a frame outside
 * its RAM; Dom0 then copies in and out (each segment's GNTST status: general_error for no
 * grant, another grantee, a write to a read-only grant or a frame outside RAM; bad_gntref past
 * the table; bad_copy_arg past the page; EINVAL for bad flags, EFAULT for a bad buffer) and
 * maps (EACCES / ENOENT and nothing kept when any reference is refused; a read-only map cannot
 * be written or made writable). While a page is mapped the entry carries GTF_reading (and
 * GTF_writing) and the guest cannot end its access; after munmap and close it can. Runs
 * inside the test VM, as root, after keel.ko is loaded.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "domain_test.h"
#include "xen.h"

#define SCRATCH  0x20000ULL
#define GNT0     0x40000ULL
#define PAGE_A   0x50000ULL /* granted read-write to Dom0 */
#define PAGE_B   0x51000ULL /* granted read-only to Dom0 */
#define OUTSIDE_RAM_GFN (0x200000ULL >> 12)

#define GTF_permit_access 1
#define GTF_readonly      (1 << 2)
#define GTF_reading       (1 << 3)
#define GTF_writing       (1 << 4)

enum { REF_RW = 8, REF_RO, REF_OTHER_DOM, REF_NONE, REF_OUTSIDE, REF_PAST_TABLE = 600 };

struct gnt_entry {
	uint16_t flags;
	uint16_t domid;
	uint32_t frame;
};

/* ---------------------------------------------------------------------------------------
 * Guest code (long mode). */

GUEST_INLINE void grant(uint32_t ref, uint16_t domid, uint64_t gfn, uint16_t flags)
{
	volatile struct gnt_entry *e = (volatile struct gnt_entry *)GNT0 + ref;

	e->domid = domid;
	e->frame = gfn;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	e->flags = flags;
}

/* The frontend's way to end access (Linux's gnttab_end_foreign_access_ref_v1): succeeds only
 * while the backend has neither GTF_reading nor GTF_writing set. */
GUEST_INLINE int end_access(uint32_t ref)
{
	volatile struct gnt_entry *e = (volatile struct gnt_entry *)GNT0 + ref;
	uint16_t flags = e->flags;

	if (flags & (GTF_reading | GTF_writing))
		return 0;
	return __atomic_compare_exchange_n(&e->flags, &flags, 0, 0, __ATOMIC_SEQ_CST,
					   __ATOMIC_SEQ_CST);
}

static GUEST_CODE void guest_grants(void)
{
	volatile uint8_t *a = (volatile uint8_t *)PAGE_A;
	volatile uint8_t *b = (volatile uint8_t *)PAGE_B;

	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_grant_table, 0, GNT0 >> 12, SCRATCH), 0);
	for (int i = 0; i < 4096; i++) {
		a[i] = 'a';
		b[i] = 'b';
	}
	grant(REF_RW, 0, PAGE_A >> 12, GTF_permit_access);
	grant(REF_RO, 0, PAGE_B >> 12, GTF_permit_access | GTF_readonly);
	grant(REF_OTHER_DOM, 5, PAGE_A >> 12, GTF_permit_access);
	grant(REF_OUTSIDE, 0, OUTSIDE_RAM_GFN, GTF_permit_access);
	/* Dom0 copies, then maps REF_RW writable and REF_RO read-only. */
	GUEST_SYNC(1);
	GUEST_ASSERT_EQ(((volatile struct gnt_entry *)GNT0)[REF_RW].flags,
			GTF_permit_access | GTF_reading | GTF_writing);
	GUEST_ASSERT_EQ(((volatile struct gnt_entry *)GNT0)[REF_RO].flags,
			GTF_permit_access | GTF_readonly | GTF_reading);
	GUEST_ASSERT_EQ(end_access(REF_RW), 0);
	GUEST_ASSERT_EQ(end_access(REF_RO), 0);
	/* Dom0's writes through its mapping are in the page. */
	GUEST_ASSERT_EQ(a[100], 'M');
	a[200] = 'g';
	/* Dom0 unmaps and closes. */
	GUEST_SYNC(2);
	GUEST_ASSERT_EQ(((volatile struct gnt_entry *)GNT0)[REF_RW].flags, GTF_permit_access);
	GUEST_ASSERT_EQ(end_access(REF_RW), 1);
	GUEST_ASSERT_EQ(end_access(REF_RO), 1);
	/* Access ended: Dom0 gets nothing more. */
	GUEST_SYNC(3);
}

/* ---------------------------------------------------------------------------------------
 * Tests. */

static struct keel_grant_copy_seg seg(uint32_t ref, uint16_t off, uint16_t len, void *buf,
				      uint32_t flags)
{
	return (struct keel_grant_copy_seg){ .ref = ref, .offset = off, .len = len,
					     .buf = (uint64_t)(uintptr_t)buf, .flags = flags,
					     .status = 0x55 };
}

static int copy(struct keel_vm *vm, struct keel_grant_copy_seg *s, uint32_t n)
{
	struct keel_grant_copy c = { .count = n, .segs = (uint64_t)(uintptr_t)s };

	return ioctl(vm->fd, KEEL_DOMAIN_GRANT_COPY, &c);
}

static int map(struct keel_vm *vm, const uint32_t *refs, uint32_t n, uint32_t flags)
{
	struct keel_grant_map m = { .count = n, .flags = flags,
				    .refs = (uint64_t)(uintptr_t)refs };

	return ioctl(vm->fd, KEEL_DOMAIN_GRANT_MAP, &m);
}

static uint16_t entry_flags(struct keel_vm *vm, uint32_t ref)
{
	return ((volatile struct gnt_entry *)((char *)vm->ram + GNT0))[ref].flags;
}

TEST_F(domain, copy_follows_the_grants)
{
	struct keel_vm *vm = vm_create_xen("xen-gnt-copy", 1, SZ_1M);
	struct keel_grant_copy_seg s[8];
	static char in[4096], out[4096];
	struct keel_ucall uc;

	xen_setup_vcpu0(vm, guest_grants);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));

	/* Read-write grant: both ways, within the page. */
	memset(out, 'x', sizeof(out));
	s[0] = seg(REF_RW, 0, 4096, in, 0);
	s[1] = seg(REF_RW, 10, 5, out, KEEL_GRANT_TO_GUEST);
	s[2] = seg(REF_RO, 4000, 96, in + 4000, 0);
	ASSERT_EQ(0, copy(vm, s, 3));
	EXPECT_EQ(0, s[0].status);
	EXPECT_EQ(0, s[1].status);
	EXPECT_EQ(0, s[2].status);
	EXPECT_EQ('a', in[0]);
	EXPECT_EQ('a', in[3999]);
	EXPECT_EQ('b', in[4000]);
	EXPECT_EQ(0, memcmp((char *)vm->ram + PAGE_A + 10, "xxxxx", 5));
	EXPECT_EQ('a', ((char *)vm->ram)[PAGE_A + 15]);
	/* No use left behind: the flags are as the guest set them. */
	EXPECT_EQ(GTF_permit_access, entry_flags(vm, REF_RW));

	/* Refused, each with Xen's status; the page is untouched. */
	s[0] = seg(REF_RO, 0, 8, out, KEEL_GRANT_TO_GUEST);
	s[1] = seg(REF_OTHER_DOM, 0, 8, in, 0);
	s[2] = seg(REF_NONE, 0, 8, in, 0);
	s[3] = seg(REF_OUTSIDE, 0, 8, in, 0);
	s[4] = seg(REF_PAST_TABLE, 0, 8, in, 0);
	s[5] = seg(REF_RW, 4090, 7, in, 0);
	s[6] = seg(0xffffffff, 0, 8, in, 0);
	ASSERT_EQ(0, copy(vm, s, 7));
	EXPECT_EQ(-1, s[0].status) TH_LOG("a write to a read-only grant");
	EXPECT_EQ(-1, s[1].status) TH_LOG("granted to another domain");
	EXPECT_EQ(-1, s[2].status) TH_LOG("no grant");
	EXPECT_EQ(-1, s[3].status) TH_LOG("a frame outside RAM");
	EXPECT_EQ(-3, s[4].status) TH_LOG("past the table");
	EXPECT_EQ(-10, s[5].status) TH_LOG("past the page");
	EXPECT_EQ(-3, s[6].status);
	EXPECT_EQ('b', ((char *)vm->ram)[PAGE_B]);
	EXPECT_EQ(GTF_permit_access | GTF_readonly, entry_flags(vm, REF_RO));

	/* Bad arguments. */
	s[0] = seg(REF_RW, 0, 8, in, 0x80);
	EXPECT_ERRNO(EINVAL, copy(vm, s, 1));
	s[0] = seg(REF_RW, 0, 8, (void *)8, 0);
	EXPECT_ERRNO(EFAULT, copy(vm, s, 1));
	EXPECT_EQ(GTF_permit_access, entry_flags(vm, REF_RW));
	EXPECT_ERRNO(EINVAL, copy(vm, s, 0));
	EXPECT_ERRNO(EINVAL, copy(vm, s, KEEL_MAX_GRANT_COPY + 1));
	EXPECT_ERRNO(EFAULT, copy(vm, (void *)8, 1));
	vm_destroy(vm);
}

TEST_F(domain, map_follows_the_grants)
{
	struct keel_vm *vm = vm_create_xen("xen-gnt-map", 1, SZ_1M);
	uint32_t refs[2];
	struct keel_ucall uc;
	int rw, ro;
	char *p, *q;

	xen_setup_vcpu0(vm, guest_grants);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));

	/* Refused maps keep nothing. */
	refs[0] = REF_RW;
	refs[1] = REF_RO;
	EXPECT_ERRNO(EACCES, map(vm, refs, 2, KEEL_GRANT_MAP_WRITABLE));
	refs[1] = REF_NONE;
	EXPECT_ERRNO(EACCES, map(vm, refs, 2, 0));
	refs[1] = REF_OTHER_DOM;
	EXPECT_ERRNO(EACCES, map(vm, refs, 2, 0));
	refs[1] = REF_PAST_TABLE;
	EXPECT_ERRNO(ENOENT, map(vm, refs, 2, 0));
	EXPECT_ERRNO(EINVAL, map(vm, refs, 0, 0));
	EXPECT_ERRNO(EINVAL, map(vm, refs, 1, 2));
	EXPECT_EQ(GTF_permit_access, entry_flags(vm, REF_RW));

	/* A writable map of REF_RW, a read-only one of REF_RO. */
	refs[0] = REF_RW;
	rw = map(vm, refs, 1, KEEL_GRANT_MAP_WRITABLE);
	ASSERT_LE(0, rw);
	refs[0] = REF_RO;
	ro = map(vm, refs, 1, 0);
	ASSERT_LE(0, ro);
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
	ASSERT_NE(MAP_FAILED, p);
	EXPECT_EQ(MAP_FAILED, mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ro, 0));
	EXPECT_EQ(MAP_FAILED, mmap(NULL, 8192, PROT_READ, MAP_SHARED, ro, 0)) TH_LOG("too long");
	EXPECT_EQ(MAP_FAILED, mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, ro, 0));
	q = mmap(NULL, 4096, PROT_READ, MAP_SHARED, ro, 0);
	ASSERT_NE(MAP_FAILED, q);
	EXPECT_NE(0, mprotect(q, 4096, PROT_READ | PROT_WRITE)) TH_LOG("made writable");
	EXPECT_EQ('a', p[0]);
	EXPECT_EQ('b', q[4095]);
	p[100] = 'M';

	/* The guest sees the flags and cannot end access. */
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));
	EXPECT_EQ(2, uc.args[0]);
	EXPECT_EQ('g', p[200]) TH_LOG("the guest's write through the mapping");
	/* The fd closed first, the mapping later: the grant stays in use until both. */
	close(rw);
	EXPECT_EQ(GTF_permit_access | GTF_reading | GTF_writing, entry_flags(vm, REF_RW));
	EXPECT_EQ(0, munmap(p, 4096));
	EXPECT_EQ(0, munmap(q, 4096));
	close(ro);
	EXPECT_EQ(GTF_permit_access, entry_flags(vm, REF_RW));
	EXPECT_EQ(GTF_permit_access | GTF_readonly, entry_flags(vm, REF_RO));

	/* The guest ended access: nothing more for Dom0. */
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));
	EXPECT_EQ(3, uc.args[0]);
	refs[0] = REF_RW;
	EXPECT_ERRNO(EACCES, map(vm, refs, 1, 0));
	{
		struct keel_grant_copy_seg s = seg(REF_RW, 0, 8, refs, 0);

		ASSERT_EQ(0, copy(vm, &s, 1));
		EXPECT_EQ(-1, s.status);
	}
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc));
	vm_destroy(vm);
}

/* A map outlives its domain: the pages stay readable until it goes. */
TEST_F(domain, map_outlives_the_domain)
{
	struct keel_vm *vm = vm_create_xen("xen-gnt-late", 1, SZ_1M);
	uint32_t ref = REF_RW;
	struct keel_ucall uc;
	char *p;
	int fd;

	xen_setup_vcpu0(vm, guest_grants);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));
	fd = map(vm, &ref, 1, KEEL_GRANT_MAP_WRITABLE);
	ASSERT_LE(0, fd);
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	ASSERT_NE(MAP_FAILED, p);
	close(fd);
	vm_destroy(vm);
	EXPECT_EQ('a', p[0]);
	p[1] = 'z';
	EXPECT_EQ(0, munmap(p, 4096));
}

TEST_HARNESS_MAIN

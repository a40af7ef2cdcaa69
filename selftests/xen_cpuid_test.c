// SPDX-License-Identifier: GPL-2.0
/*
 * xen_cpuid_test: what a DomU finds of Xen before it makes its first hypercall: Xen's CPUID
 * leaves at 0x40000000 ("XenVMMXenVMM", the version, the hypercall-page MSR, its vCPU and
 * domain ids), the hypercall page it installs through that MSR, and xen_version's sub-ops with
 * their errors (a bad pointer is -EFAULT, an unknown command -ENOSYS). Long-mode guests in C.
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <cpuid.h>
#include <stdint.h>
#include <string.h>

#include "kselftest_harness.h"
#include "domain_test.h"

#define XEN_BASE      0x40000000U
#define HC_XEN_VERSION 17
#define XENVER_version      0
#define XENVER_extraversion 1
#define XENVER_get_features 6
#define XENVER_pagesize     7
#define XENVER_commandline  9
#define XENFEAT_auto_translated_physmap 2
#define EPERM  1
#define EFAULT 14
#define EINVAL 22
#define ENOSYS 38

/* Guest-physical (= guest-virtual: identity-mapped) pages in the domain's RAM. */
#define HC_PAGE 0x10000ULL
#define BUF     0x20000ULL

/* ---------------------------------------------------------------------------------------
 * Guest code (long mode). */

GUEST_INLINE void guest_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}

GUEST_INLINE void guest_wrmsr(uint32_t msr, uint64_t value)
{
	__asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32))
			 : "memory");
}

GUEST_INLINE int64_t xen_version(uint64_t cmd, uint64_t arg)
{
	return (int64_t)guest_vmcall(HC_XEN_VERSION, cmd, arg, 0, 0, 0);
}

/* The leaves, as the vCPU `id` of domain `domid` sees them. */
static GUEST_CODE void guest_leaves(uint64_t id, uint64_t domid)
{
	uint32_t r[4];

	guest_cpuid(XEN_BASE, 0, r);
	GUEST_ASSERT_EQ(r[1], 0x566e6558); /* "XenV" */
	GUEST_ASSERT_EQ(r[2], 0x65584d4d); /* "MMXe" */
	GUEST_ASSERT_EQ(r[3], 0x4d4d566e); /* "nVMM" */
	GUEST_ASSERT(r[0] >= XEN_BASE + 4);
	guest_cpuid(XEN_BASE + 1, 0, r);
	GUEST_ASSERT_EQ(r[0], (4 << 16) | 19);
	guest_cpuid(XEN_BASE + 2, 0, r);
	GUEST_ASSERT_EQ(r[0], 1);        /* one hypercall page */
	GUEST_ASSERT_EQ(r[1], XEN_BASE); /* installed through MSR 0x40000000 */
	guest_cpuid(XEN_BASE + 4, 0, r);
	GUEST_ASSERT(r[0] & (1 << 3)); /* VCPU_ID_PRESENT */
	GUEST_ASSERT(r[0] & (1 << 4)); /* DOMID_PRESENT */
	GUEST_ASSERT_EQ(r[1], id);
	GUEST_ASSERT_EQ(r[2], domid);
	/* No other hypervisor's signature above Xen's. */
	guest_cpuid(XEN_BASE + 0x100, 0, r);
	GUEST_ASSERT_EQ(r[0] | r[1] | r[2] | r[3], 0);
}

/* The hypercall page: xen_version through its stub. */
static GUEST_CODE void guest_hypercall_page(void)
{
	int64_t (*call)(uint64_t, uint64_t) = (void *)(HC_PAGE + 32 * HC_XEN_VERSION);

	guest_wrmsr(XEN_BASE, HC_PAGE);
	GUEST_ASSERT_EQ(call(XENVER_version, 0), (4 << 16) | 19);
	GUEST_ASSERT_EQ(call(XENVER_pagesize, 0), 4096);
}

/* A hypercall page at the top of the address space: #GP (no IDT here: a triple fault). */
static GUEST_CODE void guest_hypercall_page_wraps(void)
{
	guest_wrmsr(XEN_BASE, 0xfffffffffffff000ULL);
	GUEST_DONE();
}

/* xen_version's sub-ops and their errors. */
static GUEST_CODE void guest_xen_version(void)
{
	volatile char *buf = (volatile char *)BUF;
	volatile uint32_t *feat = (volatile uint32_t *)(BUF + 0x100);

	buf[0] = 'x';
	GUEST_ASSERT_EQ(xen_version(XENVER_extraversion, BUF), 0);
	GUEST_ASSERT_EQ(buf[0], '.');
	GUEST_ASSERT_EQ(buf[15], 0);
	/* An argument across a page boundary. */
	GUEST_ASSERT_EQ(xen_version(XENVER_extraversion, BUF + 0xff8), 0);
	GUEST_ASSERT_EQ(buf[0xff8], '.');
	feat[0] = 0;
	feat[1] = 0;
	GUEST_ASSERT_EQ(xen_version(XENVER_get_features, BUF + 0x100), 0);
	GUEST_ASSERT(feat[1] & (1 << XENFEAT_auto_translated_physmap));
	feat[0] = 1;
	GUEST_ASSERT_EQ(xen_version(XENVER_get_features, BUF + 0x100), -EINVAL);
	/* Bad pointers: not canonical, not mapped, not RAM. */
	GUEST_ASSERT_EQ(xen_version(XENVER_extraversion, 0xdead000000000000ULL), -EFAULT);
	GUEST_ASSERT_EQ(xen_version(XENVER_extraversion, 1ULL << 40), -EFAULT);
	GUEST_ASSERT_EQ(xen_version(XENVER_extraversion, 0xfff00000ULL), -EFAULT);
	GUEST_ASSERT_EQ(xen_version(XENVER_commandline, BUF), -EPERM);
	GUEST_ASSERT_EQ(xen_version(99, BUF), -ENOSYS);
}

/* ---------------------------------------------------------------------------------------
 * Tests. */

TEST_F(domain, xen_leaves_on_each_vcpu)
{
	struct keel_vm *vm = vm_create("xen-leaves", 2, SZ_1M);
	struct keel_domain_info info;
	struct keel_ucall uc;

	vm_info(vm, &info);
	for (uint32_t i = 0; i < 2; i++) {
		vcpu_setup_long64(vm, vm->vcpus[i], GUEST_FN(guest_leaves), 0);
		vcpu_args_set(vm->vcpus[i], 2, (uint64_t)i, (uint64_t)info.domid);
		ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[i], &uc));
	}
	vm_destroy(vm);
}

TEST_F(domain, hypercall_page)
{
	struct keel_vm *vm = vm_create("xen-hcpage", 1, SZ_1M);
	uint8_t *page = gpa_hva(vm, HC_PAGE, SZ_4K);
	struct keel_ucall uc;

	vcpu_setup_long64(vm, vm->vcpus[0], GUEST_FN(guest_hypercall_page), 0);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc));
	/* Stub 17: mov $17, %eax; vmcall or vmmcall; ret. */
	EXPECT_EQ(0xb8, page[32 * 17]);
	EXPECT_EQ(17, page[32 * 17 + 1]);
	EXPECT_EQ(0xc3, page[32 * 17 + 8]);
	vm_destroy(vm);
}

TEST_F(domain, hypercall_page_outside_memory_faults)
{
	struct keel_vm *vm = vm_create("xen-hcpage-bad", 1, SZ_1M);

	vcpu_setup_long64(vm, vm->vcpus[0], GUEST_FN(guest_hypercall_page_wraps), 0);
	vcpu_run(vm->vcpus[0]);
	EXPECT_EXIT(vm->vcpus[0], KEEL_EXIT_SHUTDOWN);
	vm_destroy(vm);
}

TEST_F(domain, xen_version_subops)
{
	struct keel_vm *vm = vm_create("xen-version", 1, SZ_1M);
	struct keel_ucall uc;

	vcpu_setup_long64(vm, vm->vcpus[0], GUEST_FN(guest_xen_version), 0);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc));
	EXPECT_EQ(0, memcmp(gpa_hva(vm, BUF, 8), ".0-keel", 8));
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

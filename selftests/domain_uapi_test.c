// SPDX-License-Identifier: GPL-2.0
/*
 * domain_uapi_test: the domain and vCPU ioctls as an API: the argument checks
 * of each (a bad call fails with its errno and changes nothing), ioctls on the wrong file
 * (ENOTTY), KEEL_LIST_DOMAINS and KEEL_DOMAIN_INFO.
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <stdint.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "domain_test.h"

/* ---------------------------------------------------------------------------------------
 * Guest code: a real-mode blob (copied into guest RAM). */

asm(".pushsection .rodata\n"
    ".code16\n"
    /* A word stored to memory, HLT. */
    "blob_real_store_start:\n"
    "	movw $0xbeef, " KEEL_STR(COUNTER_GPA) "\n"
    "	hlt\n"
    "blob_real_store_end:\n"
    ".code64\n"
    ".popsection\n");

BLOB(real_store);

/* ---------------------------------------------------------------------------------------
 * Host helpers. */

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

/* ---------------------------------------------------------------------------------------
 * Bad arguments: each fails with its errno and changes nothing. */

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

	/* Flags: KEEL_CREATE_DOMAIN_XEN is the only one (bit 0). */
	TRY_CREATE(EINVAL, c.flags = KEEL_CREATE_DOMAIN_XEN << 1);
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

/* A vCPU whose fd cannot be made (EMFILE: no fd number left) leaves the domain as it was:
 * the id stays free and can be created once an fd is. */
TEST_F(domain, create_vcpu_emfile_leaves_the_domain_unchanged)
{
	struct keel_vm *vm = vm_create_empty("vcpu-emfile", 2, SZ_1M);
	struct keel_domain_info before;
	struct rlimit old, lim;
	int low, fd;

	vm_info(vm, &before);
	low = dup(0);
	ASSERT_LE(0, low);
	close(low); /* the lowest free fd number: none is free at or above the limit */
	ASSERT_EQ(0, getrlimit(RLIMIT_NOFILE, &old));
	lim = old;
	lim.rlim_cur = low;
	ASSERT_EQ(0, setrlimit(RLIMIT_NOFILE, &lim));
	fd = __keel_create_vcpu(vm->fd, 1);
	int err = errno;

	ASSERT_EQ(0, setrlimit(RLIMIT_NOFILE, &old));
	EXPECT_EQ(-1, fd);
	EXPECT_EQ(EMFILE, err) TH_LOG("errno %s", strerrorname_np(err));
	EXPECT_INFO_UNCHANGED(vm, before);
	fd = __keel_create_vcpu(vm->fd, 1);
	ASSERT_LE(0, fd) TH_LOG("vCPU 1 after the failed call: %s", strerror(errno));
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
 * KEEL_LIST_DOMAINS and KEEL_DOMAIN_INFO. */

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

TEST_HARNESS_MAIN

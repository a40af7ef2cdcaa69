/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/guest.h - a KVM-selftests-style library for Keel domains: create a domain with RAM and
 * vCPUs, reach its memory, run its vCPUs, describe their exits. The one header a domain test
 * includes; it brings in lib/x86.h (CPU modes and page tables: put a vCPU in real, 32-bit
 * protected or 64-bit long mode, with guest code living in the test binary) and lib/ucall.h
 * (how the guest code reports to the host: GUEST_SYNC, GUEST_ASSERT, GUEST_DONE).
 *
 * Raw calls (`__keel_*`, `__vcpu_*`) return what the ioctl returns, errno set on failure, for
 * the tests that check errors. Everything else asserts: on failure it prints the ioctl's name,
 * the error and the arguments, then aborts the test (KVM's TEST_ASSERT model: the library is
 * usable from helper threads and from code that has no harness `_metadata`; the harness
 * reports the abort as a failed test).
 */
#ifndef KEEL_GUEST_H
#define KEEL_GUEST_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#include <linux/keel.h>

#include "util.h"
#include "ucall.h"
#include "x86.h"

/* A guest-physical range the library added, with its host mapping (RAM, ROM). */
struct keel_region {
	uint64_t gpa;
	uint64_t size;
	uint32_t kind;  /* KEEL_RANGE_* */
	void *hva;      /* MAP_SHARED mapping of the domain fd at offset gpa; NULL for MMIO */
};

struct keel_vcpu {
	struct keel_vm *vm;
	uint32_t id;
	int fd;
	/* Passed to every KEEL_VCPU_RUN: run.exit is the last exit, and where a test puts the
	 * completion (io.data, mmio.data, hypercall.ret) before running again. */
	struct keel_run run;
};

struct keel_vm {
	int fd;
	uint32_t domid;
	char name[KEEL_NAME_LEN];
	uint32_t max_vcpus;
	uint64_t memory_size;
	uint64_t ram_size;  /* the RAM range at gpa 0 vm_create() adds */
	void *ram;          /* its host mapping */
	struct keel_vcpu *vcpus[KEEL_MAX_VCPUS];
	struct keel_region regions[KEEL_MAX_RANGES];
	uint32_t nr_regions;

	/* Long mode, set up by the first vcpu_setup_long64(). */
	bool long_mode;
	void *sys;             /* host mapping of the system range at KEEL_SYS_GPA */
	uint64_t sys_size;
	uint64_t image_va;     /* the image's 2 MiB-aligned virtual window ... */
	uint64_t image_size;   /* ... mapped onto KEEL_SYS_GPA */
	uint64_t tables_gpa;   /* page tables, GDT, TSS, stacks (after the image copy) */
	uint64_t pml4_gpa;
	uint64_t next_table_gpa;
	uint64_t gdt_gpa;
	uint64_t tss_gpa;
	uint64_t stacks_gpa;
};

/* /dev/keel, opened once per process (close-on-exec); -1 with errno when it can't be. */
int keel_dev_fd(void);

/* --- Raw calls: the ioctl's result, errno set on failure. -------------------------------- */

static inline int __keel_create_domain(struct keel_domain_create *create)
{
	int dev = keel_dev_fd();

	return dev < 0 ? -1 : ioctl(dev, KEEL_CREATE_DOMAIN, create);
}

static inline int __keel_list_domains(struct keel_domain_list *list)
{
	int dev = keel_dev_fd();

	return dev < 0 ? -1 : ioctl(dev, KEEL_LIST_DOMAINS, list);
}

static inline int __keel_add_range(int domfd, uint64_t gpa, uint64_t size, uint32_t kind)
{
	struct keel_mem_range range = { .gpa = gpa, .size = size, .kind = kind };

	return ioctl(domfd, KEEL_DOMAIN_ADD_RANGE, &range);
}

static inline int __keel_create_vcpu(int domfd, uint32_t id)
{
	struct keel_vcpu_create create = { .id = id };

	return ioctl(domfd, KEEL_DOMAIN_CREATE_VCPU, &create);
}

static inline int __keel_domain_info(int domfd, struct keel_domain_info *info)
{
	return ioctl(domfd, KEEL_DOMAIN_INFO, info);
}

static inline int __keel_pause(int domfd)
{
	return ioctl(domfd, KEEL_DOMAIN_PAUSE);
}

static inline int __keel_unpause(int domfd)
{
	return ioctl(domfd, KEEL_DOMAIN_UNPAUSE);
}

static inline int __vcpu_get_regs(struct keel_vcpu *vcpu, struct keel_regs *regs)
{
	return ioctl(vcpu->fd, KEEL_VCPU_GET_REGS, regs);
}

static inline int __vcpu_set_regs(struct keel_vcpu *vcpu, const struct keel_regs *regs)
{
	return ioctl(vcpu->fd, KEEL_VCPU_SET_REGS, regs);
}

static inline int __vcpu_get_sregs(struct keel_vcpu *vcpu, struct keel_sregs *sregs)
{
	return ioctl(vcpu->fd, KEEL_VCPU_GET_SREGS, sregs);
}

static inline int __vcpu_set_sregs(struct keel_vcpu *vcpu, const struct keel_sregs *sregs)
{
	return ioctl(vcpu->fd, KEEL_VCPU_SET_SREGS, sregs);
}

/* One KEEL_VCPU_RUN with vcpu->run as it is (the completion of the last exit included). */
static inline int __vcpu_run(struct keel_vcpu *vcpu)
{
	return ioctl(vcpu->fd, KEEL_VCPU_RUN, &vcpu->run);
}

/* --- Asserting calls: they succeed or abort the test, naming the ioctl. ------------------ */

/* A domain with max_vcpus = nr_vcpus (vCPUs 0..nr_vcpus-1 created), one RAM range of
 * ram_size bytes at gpa 0 mapped at vm->ram, and memory_size = ram_size + KEEL_SYS_RESERVE
 * (room for the long-mode system range). */
struct keel_vm *vm_create(const char *name, uint32_t nr_vcpus, uint64_t ram_size);
/* A domain with nothing in it: no range, no vCPU. */
struct keel_vm *vm_create_empty(const char *name, uint32_t max_vcpus, uint64_t memory_size);
/* The same with KEEL_CREATE_DOMAIN flags (e.g. KEEL_CREATE_DOMAIN_XEN); the forms above pass 0. */
struct keel_vm *vm_create_flags(const char *name, uint32_t nr_vcpus, uint64_t ram_size,
				uint32_t flags);
struct keel_vm *vm_create_empty_flags(const char *name, uint32_t max_vcpus, uint64_t memory_size,
				      uint32_t flags);
/* A Xen PVH domain (KEEL_CREATE_DOMAIN_XEN), otherwise as vm_create(). */
static inline struct keel_vm *vm_create_xen(const char *name, uint32_t nr_vcpus, uint64_t ram_size)
{
	return vm_create_flags(name, nr_vcpus, ram_size, KEEL_CREATE_DOMAIN_XEN);
}
/* Closes the vCPUs and the domain, unmaps its memory. */
void vm_destroy(struct keel_vm *vm);

/* Adds a range; RAM and ROM are mapped (MAP_SHARED, before the first run), the mapping is
 * returned; NULL for MMIO. */
void *vm_add_range(struct keel_vm *vm, uint64_t gpa, uint64_t size, uint32_t kind);
struct keel_vcpu *vm_vcpu_add(struct keel_vm *vm, uint32_t id);
void vm_info(struct keel_vm *vm, struct keel_domain_info *info);
void vm_pause(struct keel_vm *vm);
void vm_unpause(struct keel_vm *vm);

/* The host address of guest-physical `gpa`, which must lie in a mapped RAM/ROM range with
 * `len` bytes after it; the _try form returns NULL instead of failing. */
void *gpa_hva(struct keel_vm *vm, uint64_t gpa, uint64_t len);
void *gpa_hva_try(struct keel_vm *vm, uint64_t gpa, uint64_t len);
void vm_write(struct keel_vm *vm, uint64_t gpa, const void *src, size_t len);
void vm_read(struct keel_vm *vm, uint64_t gpa, void *dst, size_t len);

void vcpu_get_regs(struct keel_vcpu *vcpu, struct keel_regs *regs);
void vcpu_set_regs(struct keel_vcpu *vcpu, const struct keel_regs *regs);
void vcpu_get_sregs(struct keel_vcpu *vcpu, struct keel_sregs *sregs);
void vcpu_set_sregs(struct keel_vcpu *vcpu, const struct keel_sregs *sregs);

/* Runs once; the ioctl must succeed. Returns the exit (&vcpu->run.exit). */
struct keel_exit *vcpu_run(struct keel_vcpu *vcpu);

/* KEEL_EXIT_* as a name; an exit described in one line (a per-thread buffer). */
const char *keel_exit_reason_name(uint32_t reason);
const char *keel_exit_str(const struct keel_exit *exit);

/* The number of live domains (KEEL_LIST_DOMAINS total); finds a live domain by name. */
uint32_t keel_domain_count(void);
bool keel_find_domain(const char *name, struct keel_domain_info *info);

#endif /* KEEL_GUEST_H */

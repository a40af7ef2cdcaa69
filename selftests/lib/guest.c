// SPDX-License-Identifier: GPL-2.0
/*
 * lib/guest.c - the host side of lib/guest.h: /dev/keel, domains, their memory, vCPUs and
 * their runs, and exits described for humans. The modes and page tables are in lib/x86.c,
 * the guest's reports in lib/ucall.c.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "guest.h"

int keel_dev_fd(void)
{
	static int fd = -1;

	if (fd < 0)
		fd = open(KEEL_DEV, O_RDWR | O_CLOEXEC);
	return fd;
}

const char *keel_exit_reason_name(uint32_t reason)
{
	static const char *const names[] = {
		[KEEL_EXIT_NONE] = "NONE",
		[KEEL_EXIT_HLT] = "HLT",
		[KEEL_EXIT_IO] = "IO",
		[KEEL_EXIT_MMIO] = "MMIO",
		[KEEL_EXIT_HYPERCALL] = "HYPERCALL",
		[KEEL_EXIT_SHUTDOWN] = "SHUTDOWN",
		[KEEL_EXIT_MEMORY_FAULT] = "MEMORY_FAULT",
		[KEEL_EXIT_ENTRY_FAILURE] = "ENTRY_FAILURE",
		[KEEL_EXIT_INTR] = "INTR",
		[KEEL_EXIT_UNHANDLED] = "UNHANDLED",
	};

	if (reason < sizeof(names) / sizeof(names[0]) && names[reason])
		return names[reason];
	return "unknown";
}

const char *keel_exit_str(const struct keel_exit *e)
{
	static __thread char buf[512];
	int n = snprintf(buf, sizeof(buf), "vCPU %u, %s (%u) at rip %#llx", e->vcpu,
			 keel_exit_reason_name(e->reason), e->reason, (ull)e->rip);
	char *p = buf + n;
	size_t left = sizeof(buf) - n;

	switch (e->reason) {
	case KEEL_EXIT_IO:
		snprintf(p, left, ": %s port %#x, size %u, data %#llx",
			 e->io.direction == KEEL_IO_IN ? "IN" : "OUT", e->io.port, e->io.size,
			 (ull)e->io.data);
		break;
	case KEEL_EXIT_MMIO:
		snprintf(p, left, ": %s gpa %#llx, size %u, data %#llx",
			 e->mmio.direction == KEEL_IO_IN ? "read" : "write", (ull)e->mmio.gpa,
			 e->mmio.size, (ull)e->mmio.data);
		break;
	case KEEL_EXIT_HYPERCALL:
		snprintf(p, left, ": nr %#llx (%#llx, %#llx, %#llx, %#llx, %#llx), %s caller",
			 (ull)e->hypercall.nr, (ull)e->hypercall.args[0], (ull)e->hypercall.args[1],
			 (ull)e->hypercall.args[2], (ull)e->hypercall.args[3],
			 (ull)e->hypercall.args[4], e->hypercall.longmode ? "64-bit" : "32-bit");
		break;
	case KEEL_EXIT_SHUTDOWN:
		snprintf(p, left, ": kind %u reason %u", e->shutdown.kind, e->shutdown.reason);
		break;
	case KEEL_EXIT_MEMORY_FAULT:
		snprintf(p, left, ": gpa %#llx, access %#x%s%s%s", (ull)e->fault.gpa, e->fault.access,
			 e->fault.access & KEEL_ACCESS_READ ? " read" : "",
			 e->fault.access & KEEL_ACCESS_WRITE ? " write" : "",
			 e->fault.access & KEEL_ACCESS_EXEC ? " exec" : "");
		break;
	case KEEL_EXIT_ENTRY_FAILURE:
	case KEEL_EXIT_UNHANDLED:
		snprintf(p, left, ": hardware reason %#llx, qualification %#llx",
			 (ull)e->fail.hw_reason, (ull)e->fail.qualification);
		break;
	}
	return buf;
}

/* --- Domains ----------------------------------------------------------------------------- */

struct keel_vm *vm_create_empty(const char *name, uint32_t max_vcpus, uint64_t memory_size)
{
	return vm_create_empty_flags(name, max_vcpus, memory_size, 0);
}

struct keel_vm *vm_create_empty_flags(const char *name, uint32_t max_vcpus, uint64_t memory_size,
				      uint32_t flags)
{
	struct keel_domain_create create = { .flags = flags, .max_vcpus = max_vcpus,
					     .memory_size = memory_size };
	struct keel_vm *vm = calloc(1, sizeof(*vm));

	KEEL_ASSERT(vm, "out of memory");
	KEEL_ASSERT(strlen(name) < KEEL_NAME_LEN, "domain name '%s' is too long", name);
	strcpy(create.name, name);
	vm->fd = __keel_create_domain(&create);
	KEEL_ASSERT(vm->fd >= 0,
		    "KEEL_CREATE_DOMAIN('%s', flags %#x, max_vcpus %u, memory_size %#llx) failed: %s",
		    name, flags, max_vcpus, (ull)memory_size, keel_errstr());
	vm->domid = create.domid;
	strcpy(vm->name, name);
	vm->max_vcpus = max_vcpus;
	vm->memory_size = memory_size;
	return vm;
}

struct keel_vm *vm_create(const char *name, uint32_t nr_vcpus, uint64_t ram_size)
{
	return vm_create_flags(name, nr_vcpus, ram_size, 0);
}

struct keel_vm *vm_create_flags(const char *name, uint32_t nr_vcpus, uint64_t ram_size,
				uint32_t flags)
{
	struct keel_vm *vm = vm_create_empty_flags(name, nr_vcpus, ram_size + KEEL_SYS_RESERVE,
						   flags);

	if (ram_size) {
		vm->ram = vm_add_range(vm, 0, ram_size, KEEL_RANGE_RAM);
		vm->ram_size = ram_size;
	}
	for (uint32_t id = 0; id < nr_vcpus; id++)
		vm_vcpu_add(vm, id);
	return vm;
}

void vm_destroy(struct keel_vm *vm)
{
	if (!vm)
		return;
	for (uint32_t id = 0; id < KEEL_MAX_VCPUS; id++) {
		if (!vm->vcpus[id])
			continue;
		close(vm->vcpus[id]->fd);
		free(vm->vcpus[id]);
	}
	for (uint32_t i = 0; i < vm->nr_regions; i++)
		if (vm->regions[i].hva)
			munmap(vm->regions[i].hva, vm->regions[i].size);
	close(vm->fd);
	free(vm);
}

void *vm_add_range(struct keel_vm *vm, uint64_t gpa, uint64_t size, uint32_t kind)
{
	struct keel_region *region;
	void *hva = NULL;

	KEEL_ASSERT(vm->nr_regions < KEEL_MAX_RANGES, "'%s' has %u ranges already", vm->name,
		    vm->nr_regions);
	if (vm->long_mode)
		vm_check_not_under_image(vm, gpa, size);
	KEEL_ASSERT(__keel_add_range(vm->fd, gpa, size, kind) == 0,
		    "KEEL_DOMAIN_ADD_RANGE('%s', gpa %#llx, size %#llx, kind %u) failed: %s", vm->name,
		    (ull)gpa, (ull)size, kind, keel_errstr());
	if (kind != KEEL_RANGE_MMIO) {
		hva = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->fd, gpa);
		KEEL_ASSERT(hva != MAP_FAILED,
			    "mmap of '%s' at gpa %#llx (%#llx bytes, MAP_SHARED) failed: %s", vm->name,
			    (ull)gpa, (ull)size, keel_errstr());
	}
	region = &vm->regions[vm->nr_regions++];
	region->gpa = gpa;
	region->size = size;
	region->kind = kind;
	region->hva = hva;
	return hva;
}

struct keel_vcpu *vm_vcpu_add(struct keel_vm *vm, uint32_t id)
{
	struct keel_vcpu *vcpu;
	int fd;

	KEEL_ASSERT(id < KEEL_MAX_VCPUS && !vm->vcpus[id], "vCPU id %u of '%s'", id, vm->name);
	fd = __keel_create_vcpu(vm->fd, id);
	KEEL_ASSERT(fd >= 0, "KEEL_DOMAIN_CREATE_VCPU('%s', id %u) failed: %s", vm->name, id, keel_errstr());
	vcpu = calloc(1, sizeof(*vcpu));
	KEEL_ASSERT(vcpu, "out of memory");
	vcpu->vm = vm;
	vcpu->id = id;
	vcpu->fd = fd;
	vm->vcpus[id] = vcpu;
	return vcpu;
}

void vm_info(struct keel_vm *vm, struct keel_domain_info *info)
{
	KEEL_ASSERT(__keel_domain_info(vm->fd, info) == 0, "KEEL_DOMAIN_INFO('%s') failed: %s",
		    vm->name, keel_errstr());
}

void vm_pause(struct keel_vm *vm)
{
	KEEL_ASSERT(__keel_pause(vm->fd) == 0, "KEEL_DOMAIN_PAUSE('%s') failed: %s", vm->name, keel_errstr());
}

void vm_unpause(struct keel_vm *vm)
{
	KEEL_ASSERT(__keel_unpause(vm->fd) == 0, "KEEL_DOMAIN_UNPAUSE('%s') failed: %s", vm->name,
		    keel_errstr());
}

uint32_t keel_domain_count(void)
{
	struct keel_domain_info dummy;
	struct keel_domain_list list = { .count = 0, .buffer = (uint64_t)(uintptr_t)&dummy };

	KEEL_ASSERT(__keel_list_domains(&list) == 0, "KEEL_LIST_DOMAINS failed: %s", keel_errstr());
	return list.total;
}

bool keel_find_domain(const char *name, struct keel_domain_info *info)
{
	uint32_t room = keel_domain_count() + 16;
	struct keel_domain_info *all = calloc(room, sizeof(*all));
	struct keel_domain_list list = { .count = room, .buffer = (uint64_t)(uintptr_t)all };
	bool found = false;

	KEEL_ASSERT(all, "out of memory");
	KEEL_ASSERT(__keel_list_domains(&list) == 0, "KEEL_LIST_DOMAINS failed: %s", keel_errstr());
	for (uint32_t i = 0; i < list.count && !found; i++) {
		if (strncmp(all[i].name, name, KEEL_NAME_LEN))
			continue;
		if (info)
			*info = all[i];
		found = true;
	}
	free(all);
	return found;
}

/* --- Guest memory ------------------------------------------------------------------------ */

void *gpa_hva_try(struct keel_vm *vm, uint64_t gpa, uint64_t len)
{
	if (!len)
		len = 1;
	for (uint32_t i = 0; i < vm->nr_regions; i++) {
		struct keel_region *r = &vm->regions[i];

		if (r->hva && gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa))
			return (char *)r->hva + (gpa - r->gpa);
	}
	return NULL;
}

void *gpa_hva(struct keel_vm *vm, uint64_t gpa, uint64_t len)
{
	void *hva = gpa_hva_try(vm, gpa, len);

	KEEL_ASSERT(hva, "gpa %#llx (%#llx bytes) is not in a mapped RAM/ROM range of '%s'",
		    (ull)gpa, (ull)len, vm->name);
	return hva;
}

void vm_write(struct keel_vm *vm, uint64_t gpa, const void *src, size_t len)
{
	memcpy(gpa_hva(vm, gpa, len), src, len);
}

void vm_read(struct keel_vm *vm, uint64_t gpa, void *dst, size_t len)
{
	memcpy(dst, gpa_hva(vm, gpa, len), len);
}

/* --- vCPU state -------------------------------------------------------------------------- */

void vcpu_get_regs(struct keel_vcpu *vcpu, struct keel_regs *regs)
{
	KEEL_ASSERT(__vcpu_get_regs(vcpu, regs) == 0, "KEEL_VCPU_GET_REGS('%s', vCPU %u) failed: %s",
		    vcpu->vm->name, vcpu->id, keel_errstr());
}

void vcpu_set_regs(struct keel_vcpu *vcpu, const struct keel_regs *regs)
{
	KEEL_ASSERT(__vcpu_set_regs(vcpu, regs) == 0, "KEEL_VCPU_SET_REGS('%s', vCPU %u) failed: %s",
		    vcpu->vm->name, vcpu->id, keel_errstr());
}

void vcpu_get_sregs(struct keel_vcpu *vcpu, struct keel_sregs *sregs)
{
	KEEL_ASSERT(__vcpu_get_sregs(vcpu, sregs) == 0,
		    "KEEL_VCPU_GET_SREGS('%s', vCPU %u) failed: %s", vcpu->vm->name, vcpu->id, keel_errstr());
}

void vcpu_set_sregs(struct keel_vcpu *vcpu, const struct keel_sregs *sregs)
{
	KEEL_ASSERT(__vcpu_set_sregs(vcpu, sregs) == 0,
		    "KEEL_VCPU_SET_SREGS('%s', vCPU %u) failed: %s", vcpu->vm->name, vcpu->id, keel_errstr());
}

/* --- Running ----------------------------------------------------------------------------- */

struct keel_exit *vcpu_run(struct keel_vcpu *vcpu)
{
	int r = __vcpu_run(vcpu);

	KEEL_ASSERT(r == 0, "KEEL_VCPU_RUN('%s', vCPU %u) failed: %s; exit: %s", vcpu->vm->name,
		    vcpu->id, keel_errstr(), keel_exit_str(&vcpu->run.exit));
	return &vcpu->run.exit;
}

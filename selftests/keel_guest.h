/* SPDX-License-Identifier: GPL-2.0 */
/*
 * keel_guest.h - a KVM-selftests-style library for Keel domains: create a domain with RAM and
 * vCPUs, put a vCPU in real, 32-bit protected or 64-bit long mode, run it, and talk with the
 * guest code, which lives in the test binary.
 *
 * Host side
 * ---------
 * Raw calls (`__keel_*`, `__vcpu_*`) return what the ioctl returns, errno set on failure, for
 * the tests that check errors. Everything else asserts: on failure it prints the ioctl's name,
 * the error and the arguments, then aborts the test (KVM's TEST_ASSERT model: the library is
 * usable from helper threads and from code that has no harness `_metadata`; the harness
 * reports the abort as a failed test).
 *
 * Guest code
 * ----------
 * - Real and 32-bit protected mode: small assembly blobs in the test binary (top-level asm,
 *   `name_start`/`name_end` labels), copied into guest RAM with vm_write().
 * - Long mode: C functions of the test binary, run by the guest at the same virtual addresses
 *   they have in the test process. The first vcpu_setup_long64() of a domain adds a "system"
 *   RAM range at KEEL_SYS_GPA holding a copy of the binary's loaded image (its PT_LOAD
 *   segments, from dl_iterate_phdr), the page tables, a GDT, a TSS and one stack per vCPU.
 *   The page tables (2 MiB pages) map the image's virtual addresses (0x400000.. for our static,
 *   non-PIE binaries) onto that copy, and identity-map the rest of the low 4 GiB of
 *   guest-physical space (RAM, ROM, MMIO, holes: VA == GPA), so guest code reaches any test
 *   range by its GPA. The 2 MiB slots the image occupies are the only exception, so RAM
 *   meant for long-mode guests stays below 4 MiB (the library checks it).
 *   Guest functions must not call libc or make system calls, must not use TLS, and only see
 *   globals as they were when the image was copied (use sync_global_to_guest() after that).
 *   Mark them GUEST_CODE. A guest function that returns reports UCALL_DONE.
 *
 * Guest -> host reports ("ucalls")
 * --------------------------------
 * A hypercall with a number in a private range (KEEL_UCALL_BASE + n) that Keel does not
 * handle, so the run ends with KEEL_EXIT_HYPERCALL; Xen's convention: 64-bit guests pass the
 * number in rax and arguments in rdi, rsi, rdx, r10, r8; 32-bit guests in eax and ebx, ecx,
 * edx, esi, edi. GUEST_SYNC(v), GUEST_DONE(), GUEST_ASSERT(cond), GUEST_ASSERT_EQ(a, b).
 * vcpu_run_report() runs a vCPU and fails the test on a failed GUEST_ASSERT, printing
 * "file:line: expression"; vcpu_run_ucall() only decodes.
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

#ifndef KEEL_DEV
#define KEEL_DEV "/dev/keel"
#endif

#define SZ_4K  0x1000ULL
#define SZ_64K 0x10000ULL
#define SZ_1M  0x100000ULL
#define SZ_2M  0x200000ULL
#define SZ_4M  0x400000ULL
#define SZ_1G  0x40000000ULL

#define KEEL_STR_(x) #x
#define KEEL_STR(x) KEEL_STR_(x)

/* Architectural bits the mode helpers use (SDM vol. 3, 2.5 and 4.1). */
#define X86_CR0_PE (1ULL << 0)
#define X86_CR0_MP (1ULL << 1)
#define X86_CR0_ET (1ULL << 4)
#define X86_CR0_NE (1ULL << 5)
#define X86_CR0_PG (1ULL << 31)
#define X86_CR4_PAE        (1ULL << 5)
#define X86_CR4_OSFXSR     (1ULL << 9)
#define X86_CR4_OSXMMEXCPT (1ULL << 10)
#define X86_EFER_LME (1ULL << 8)
#define X86_EFER_LMA (1ULL << 10)
#define X86_RFLAGS_FIXED (1ULL << 1)
#define X86_RFLAGS_IOPL3 (3ULL << 12)

/* Where the long-mode support state lives in guest-physical (and, identity-mapped, virtual)
 * space, and how much of memory_size vm_create() keeps for it on top of the RAM. */
#define KEEL_SYS_GPA     0x80000000ULL
#define KEEL_SYS_RESERVE (16 * SZ_1M)
/* The part of guest-virtual space the long-mode page tables identity-map. */
#define KEEL_IDENTITY_LIMIT (4 * SZ_1G)

/* Selectors of the GDT the long-mode setup writes (and the 32-bit setup loads). */
#define KEEL_SEL_CODE 0x08
#define KEEL_SEL_DATA 0x10
#define KEEL_SEL_TSS  0x18

/*
 * Hypercall numbers. Keel handles Xen's own numbers (e.g. __HYPERVISOR_xen_version, 17) and
 * exits to Dom0 on any other; 0x4b00.. ('K') is private to these tests. Literal numbers so the
 * assembly blobs can stringify them.
 */
#define KEEL_HC_XEN_VERSION   17
#define XENVER_version        0
#define KEEL_UCALL_BASE       0x4b00
#define KEEL_HC_SYNC          0x4b01 /* GUEST_SYNC: args[0] = value */
#define KEEL_HC_ASSERT        0x4b02 /* GUEST_ASSERT: file, line, expression */
#define KEEL_HC_DONE          0x4b03 /* GUEST_DONE */
#define KEEL_HC_ASSERT_VALUES 0x4b04 /* GUEST_ASSERT_EQ: file, line, expression, left, right */
#define KEEL_HC_TEST          0x4b10 /* free for tests: never decoded as a ucall */

enum keel_ucall_cmd {
	UCALL_NONE,   /* the exit is not a ucall */
	UCALL_SYNC,
	UCALL_ASSERT,
	UCALL_DONE,
};

struct keel_ucall {
	uint64_t cmd;       /* UCALL_* */
	uint64_t args[5];   /* the hypercall's raw arguments */
	/* UCALL_ASSERT, read from the guest's memory: */
	char file[256];
	unsigned int line;
	char expr[256];
	bool has_values;    /* GUEST_ASSERT_EQ: values[] are the two sides */
	uint64_t values[2];
};

/* ---------------------------------------------------------------------------------------
 * Guest side: everything below until the host part runs inside the guest. */

#ifdef __has_attribute
#if __has_attribute(no_stack_protector)
#define __guest_no_stack_protector __attribute__((no_stack_protector))
#endif
#endif
#ifndef __guest_no_stack_protector
#define __guest_no_stack_protector __attribute__((optimize("no-stack-protector")))
#endif

/* For guest entry points: a real function at a stable address, no stack-protector canary
 * (it would read %fs:0x28, i.e. the host's TLS, which the guest does not have). */
#define GUEST_CODE __attribute__((noinline, used)) __guest_no_stack_protector
/* For small guest helpers: always inlined into the guest function using them. */
#define GUEST_INLINE static inline __attribute__((always_inline)) __guest_no_stack_protector

#define __GUEST_HYPERCALL(insn, nr, a0, a1, a2, a3, a4)                                      \
	({                                                                                   \
		register uint64_t __r10 __asm__("r10") = (a3);                               \
		register uint64_t __r8 __asm__("r8") = (a4);                                 \
		uint64_t __rax = (nr), __rdi = (a0), __rsi = (a1), __rdx = (a2);             \
		__asm__ volatile(insn                                                        \
				 : "+a"(__rax), "+D"(__rdi), "+S"(__rsi), "+d"(__rdx),      \
				   "+r"(__r10), "+r"(__r8)                                   \
				 :                                                           \
				 : "memory");                                                \
		__rax;                                                                       \
	})

/* A 64-bit hypercall with Intel's VMCALL (0f 01 c1); Keel takes it on AMD too. */
GUEST_INLINE uint64_t guest_vmcall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2,
				   uint64_t a3, uint64_t a4)
{
	return __GUEST_HYPERCALL(".byte 0x0f, 0x01, 0xc1", nr, a0, a1, a2, a3, a4);
}

/* The same with AMD's VMMCALL (0f 01 d9); Keel takes it on Intel too. */
GUEST_INLINE uint64_t guest_vmmcall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2,
				    uint64_t a3, uint64_t a4)
{
	return __GUEST_HYPERCALL(".byte 0x0f, 0x01, 0xd9", nr, a0, a1, a2, a3, a4);
}

GUEST_INLINE void guest_pause(void)
{
	__asm__ volatile("pause" ::: "memory");
}

/* Reports `value` to the host; the run ends with UCALL_SYNC. */
#define GUEST_SYNC(value) ((void)guest_vmcall(KEEL_HC_SYNC, (uint64_t)(value), 0, 0, 0, 0))

/* Reports the end of the guest's work; run again, it reports it again. */
#define GUEST_DONE()                                                                         \
	do {                                                                                 \
		for (;;)                                                                     \
			guest_vmcall(KEEL_HC_DONE, 0, 0, 0, 0, 0);                           \
	} while (0)

/* On failure reports __FILE__, __LINE__ and the expression (their addresses: the strings are
 * in the image, which the guest maps at the same addresses) and never goes on. */
#define GUEST_ASSERT(cond)                                                                   \
	do {                                                                                 \
		if (!(cond))                                                                 \
			for (;;)                                                             \
				guest_vmcall(KEEL_HC_ASSERT, (uint64_t)__FILE__, __LINE__,   \
					     (uint64_t)#cond, 0, 0);                         \
	} while (0)

/* As GUEST_ASSERT(a == b), also reporting both values. */
#define GUEST_ASSERT_EQ(a, b)                                                                \
	do {                                                                                 \
		uint64_t __left = (uint64_t)(a), __right = (uint64_t)(b);                    \
		if (__left != __right)                                                       \
			for (;;)                                                             \
				guest_vmcall(KEEL_HC_ASSERT_VALUES, (uint64_t)__FILE__,      \
					     __LINE__, (uint64_t)(#a " == " #b), __left,     \
					     __right);                                       \
	} while (0)

/* ---------------------------------------------------------------------------------------
 * Host side. */

struct keel_vm;

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
/* The host address of a long-mode guest-virtual address (image or identity map). */
void *gva_hva(struct keel_vm *vm, uint64_t gva, uint64_t len);
void *gva_hva_try(struct keel_vm *vm, uint64_t gva, uint64_t len);

/* Copies a global of the test binary into the guest's copy of the image (or back). */
#define sync_global_to_guest(vm, g)                                                          \
	memcpy(gva_hva((vm), (uint64_t)(uintptr_t)&(g), sizeof(g)), &(g), sizeof(g))
#define sync_global_from_guest(vm, g)                                                        \
	memcpy(&(g), gva_hva((vm), (uint64_t)(uintptr_t)&(g), sizeof(g)), sizeof(g))

void vcpu_get_regs(struct keel_vcpu *vcpu, struct keel_regs *regs);
void vcpu_set_regs(struct keel_vcpu *vcpu, const struct keel_regs *regs);
void vcpu_get_sregs(struct keel_vcpu *vcpu, struct keel_sregs *sregs);
void vcpu_set_sregs(struct keel_vcpu *vcpu, const struct keel_sregs *sregs);
/* Sets the first `n` integer arguments of a long-mode entry (rdi, rsi, rdx, rcx, r8, r9). */
void vcpu_args_set(struct keel_vcpu *vcpu, unsigned int n, ...);

/*
 * Mode setup (segments, control registers, RIP, RSP, RFLAGS = 0x2; other GPRs zero).
 *
 * vcpu_setup_real: real mode, CS = cs_base_gpa >> 4 (base cs_base_gpa), IP = ip; DS, ES, FS,
 *   GS, SS have base 0; limits 64 KiB; TR a busy 16-bit TSS; IDTR the real-mode IVT at 0.
 * vcpu_setup_prot32: the Xen PVH entry state: CR0.PE, no paging, flat 4 GiB 32-bit code
 *   (selector 0x08) and data (0x10) segments, a busy 32-bit TSS (0x18), no IDT (IDTR limit 0:
 *   any exception ends in a triple fault), EIP = entry.
 * vcpu_setup_long64: 64-bit mode with the library's page tables, GDT and TSS (see the top of
 *   this file), no IDT; RIP = entry (a GUEST_CODE function), RSP = stack - 8 where [stack - 8]
 *   holds a return address that reports UCALL_DONE; stack 0 = the vCPU's own 16 KiB stack in
 *   the system range. Must be called before the domain's first run.
 */
void vcpu_setup_real(struct keel_vcpu *vcpu, uint64_t cs_base_gpa, uint16_t ip);
void vcpu_setup_prot32(struct keel_vcpu *vcpu, uint32_t entry);
void vcpu_setup_long64(struct keel_vm *vm, struct keel_vcpu *vcpu, uint64_t entry, uint64_t stack);

/* A guest function's address for vcpu_setup_long64(). */
#define GUEST_FN(fn) ((uint64_t)(uintptr_t)(fn))

/* Runs once; the ioctl must succeed. Returns the exit (&vcpu->run.exit). */
struct keel_exit *vcpu_run(struct keel_vcpu *vcpu);

/* Decodes the last exit as a ucall (UCALL_NONE when it is none), without judging it. */
uint64_t vcpu_get_ucall(struct keel_vcpu *vcpu, struct keel_ucall *uc);
/* vcpu_run() + vcpu_get_ucall(). */
uint64_t vcpu_run_ucall(struct keel_vcpu *vcpu, struct keel_ucall *uc);
/* vcpu_run() that fails the test on a failed GUEST_ASSERT ("file:line: expression") and on any
 * exit that is not a ucall. Returns UCALL_SYNC or UCALL_DONE; `uc` may be NULL. */
uint64_t vcpu_run_report(struct keel_vcpu *vcpu, struct keel_ucall *uc);

/* KEEL_EXIT_* as a name; an exit described in one line (a per-thread buffer). */
const char *keel_exit_reason_name(uint32_t reason);
const char *keel_exit_str(const struct keel_exit *exit);

/* The number of live domains (KEEL_LIST_DOMAINS total); finds a live domain by name. */
uint32_t keel_domain_count(void);
bool keel_find_domain(const char *name, struct keel_domain_info *info);

/* Fails the test: prints "# file:line: message" and aborts (usable anywhere). */
void __keel_die(const char *file, int line, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 3, 4)));
#define KEEL_ASSERT(cond, fmt, ...)                                                          \
	do {                                                                                 \
		if (!(cond))                                                                 \
			__keel_die(__FILE__, __LINE__, "%s: " fmt, #cond, ##__VA_ARGS__);   \
	} while (0)

#endif /* KEEL_GUEST_H */

/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/x86.h - CPU modes and page tables for the guests of Keel's domain tests: put a vCPU in
 * real, 32-bit protected or 64-bit long mode; the long-mode image, page tables, GDT and TSS.
 *
 * Guest code lives in the test binary:
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
 *   Mark them GUEST_CODE (lib/ucall.h). A guest function that returns reports UCALL_DONE.
 */
#ifndef KEEL_X86_H
#define KEEL_X86_H

#include <stdint.h>
#include <string.h>

#include "util.h"

struct keel_vm;
struct keel_vcpu;

/* Architectural bits the mode helpers use (SDM vol. 3, 2.5 and 4.1). */
#define X86_CR0_PE (1ULL << 0)
#define X86_CR0_MP (1ULL << 1)
#define X86_CR0_ET (1ULL << 4)
#define X86_CR0_NE (1ULL << 5)
#define X86_CR0_NW (1ULL << 29)
#define X86_CR0_PG (1ULL << 31)
#define X86_CR4_PAE        (1ULL << 5)
#define X86_CR4_OSFXSR     (1ULL << 9)
#define X86_CR4_OSXMMEXCPT (1ULL << 10)
#define X86_EFER_LME (1ULL << 8)
#define X86_EFER_LMA (1ULL << 10)
#define X86_RFLAGS_FIXED (1ULL << 1)
#define X86_RFLAGS_IF    (1ULL << 9)
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

/*
 * What a vCPU that enters long mode by itself (e.g. one that INIT/SIPI started in real mode)
 * needs to use the library's setup: CR3 (below 4 GiB), and its stack (vCPU `id`'s own, as
 * vcpu_setup_long64 would give it: [stack] holds a return address that reports UCALL_DONE).
 * The domain's long-mode setup must exist (a vcpu_setup_long64() before).
 */
struct keel_long64_boot {
	uint64_t cr3;
	uint64_t stack;
};
void vm_long64_boot(struct keel_vm *vm, uint32_t id, struct keel_long64_boot *boot);

/* A guest function's address for vcpu_setup_long64(). */
#define GUEST_FN(fn) ((uint64_t)(uintptr_t)(fn))

/* Sets the first `n` integer arguments of a long-mode entry (rdi, rsi, rdx, rcx, r8, r9). */
void vcpu_args_set(struct keel_vcpu *vcpu, unsigned int n, ...);

/* The host address of a long-mode guest-virtual address (image or identity map); the _try
 * form returns NULL instead of failing. */
void *gva_hva(struct keel_vm *vm, uint64_t gva, uint64_t len);
void *gva_hva_try(struct keel_vm *vm, uint64_t gva, uint64_t len);

/* Copies a global of the test binary into the guest's copy of the image (or back). */
#define sync_global_to_guest(vm, g)                                                          \
	memcpy(gva_hva((vm), (uint64_t)(uintptr_t)&(g), sizeof(g)), &(g), sizeof(g))
#define sync_global_from_guest(vm, g)                                                        \
	memcpy(&(g), gva_hva((vm), (uint64_t)(uintptr_t)&(g), sizeof(g)), sizeof(g))

/* For lib/guest.c: fails the test if a range at [gpa, gpa + size) lies under the image's
 * guest-virtual window of a long-mode domain (guest code could not reach it at VA == GPA). */
void vm_check_not_under_image(struct keel_vm *vm, uint64_t gpa, uint64_t size);

#endif /* KEEL_X86_H */

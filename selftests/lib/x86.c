// SPDX-License-Identifier: GPL-2.0
/*
 * lib/x86.c - the host side of lib/x86.h: a vCPU's real, 32-bit protected and long mode, and
 * for long mode the copy of the test binary's image, the page tables, the GDT and the TSS.
 */
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "guest.h"

/*
 * Layout of the system range at KEEL_SYS_GPA (identity-mapped, so these are also the guest's
 * virtual addresses):
 *   [0, image_size)               the test binary's image, at the offsets it has from image_va
 *   tables_gpa + TABLE_POOL_OFF   page tables, PML4 first (TABLE_POOL_PAGES pages)
 *   tables_gpa + GDT_OFF          the GDT: null, 64-bit code, data, 64-bit TSS (16 bytes)
 *   tables_gpa + TSS_OFF          the TSS (no I/O bitmap, no stacks: nothing uses them)
 *   tables_gpa + STACKS_OFF       one STACK_SIZE stack per vCPU id
 */
#define TABLES_SIZE      SZ_2M
#define TABLE_POOL_OFF   0x0ULL
#define TABLE_POOL_PAGES 64
#define GDT_OFF          0x40000ULL
#define TSS_OFF          0x41000ULL
#define STACKS_OFF       0x100000ULL
#define STACK_SIZE       0x4000ULL
#define GDT_ENTRIES      5 /* the TSS descriptor takes two */
#define TSS_SIZE         104

/* Page-table entry bits (SDM vol. 3, 4.5). */
#define PTE_P    (1ULL << 0)
#define PTE_RW   (1ULL << 1)
#define PTE_PS   (1ULL << 7)
#define PTE_ADDR 0x000ffffffffff000ULL

/* --- Guest-virtual addresses of a long-mode domain --------------------------------------- */

static bool overlaps(uint64_t a, uint64_t a_size, uint64_t b, uint64_t b_size)
{
	return a < b + b_size && b < a + a_size;
}

/* A range the long-mode guest could not reach by its address: the image's window hides it. */
void vm_check_not_under_image(struct keel_vm *vm, uint64_t gpa, uint64_t size)
{
	KEEL_ASSERT(!overlaps(gpa, size, vm->image_va, vm->image_size),
		    "the range at gpa %#llx (%#llx bytes) of '%s' lies under the guest-virtual window of the test binary (%#llx-%#llx): long-mode guest code could not reach it at VA == GPA",
		    (ull)gpa, (ull)size, vm->name, (ull)vm->image_va,
		    (ull)(vm->image_va + vm->image_size));
}

void *gva_hva_try(struct keel_vm *vm, uint64_t gva, uint64_t len)
{
	if (!len)
		len = 1;
	if (vm->long_mode && gva >= vm->image_va && gva - vm->image_va < vm->image_size) {
		if (len > vm->image_size - (gva - vm->image_va))
			return NULL;
		return (char *)vm->sys + (gva - vm->image_va);
	}
	if (gva >= KEEL_IDENTITY_LIMIT)
		return NULL;
	return gpa_hva_try(vm, gva, len);
}

void *gva_hva(struct keel_vm *vm, uint64_t gva, uint64_t len)
{
	void *hva = gva_hva_try(vm, gva, len);

	KEEL_ASSERT(hva, "guest VA %#llx (%#llx bytes) of '%s' maps no RAM/ROM", (ull)gva,
		    (ull)len, vm->name);
	return hva;
}

/* --- The long-mode image and page tables ------------------------------------------------- */

struct image {
	uint64_t bias;
	const ElfW(Phdr) *phdr;
	unsigned int phnum;
};

static int image_cb(struct dl_phdr_info *info, size_t size, void *data)
{
	struct image *img = data;

	img->bias = info->dlpi_addr;
	img->phdr = info->dlpi_phdr;
	img->phnum = info->dlpi_phnum;
	return 1; /* the first object is the executable itself */
}

static uint64_t pt_alloc(struct keel_vm *vm)
{
	uint64_t gpa = vm->next_table_gpa;

	KEEL_ASSERT(gpa < vm->tables_gpa + TABLE_POOL_OFF + TABLE_POOL_PAGES * SZ_4K,
		    "page-table pool of '%s' exhausted", vm->name);
	vm->next_table_gpa += SZ_4K;
	memset(gpa_hva(vm, gpa, SZ_4K), 0, SZ_4K);
	return gpa;
}

/* The table an entry points to, made on the way when absent. */
static uint64_t *pt_next(struct keel_vm *vm, uint64_t *entry)
{
	if (!(*entry & PTE_P))
		*entry = pt_alloc(vm) | PTE_P | PTE_RW;
	return gpa_hva(vm, *entry & PTE_ADDR, SZ_4K);
}

/* Maps the 2 MiB page at `va` onto `gpa`; false (and nothing done) if `va` is mapped already. */
static bool pt_map_2m(struct keel_vm *vm, uint64_t va, uint64_t gpa)
{
	uint64_t *pml4 = gpa_hva(vm, vm->pml4_gpa, SZ_4K);
	uint64_t *pdpt = pt_next(vm, &pml4[(va >> 39) & 511]);
	uint64_t *pd = pt_next(vm, &pdpt[(va >> 30) & 511]);
	uint64_t *pde = &pd[(va >> 21) & 511];

	KEEL_ASSERT(!(va & (SZ_2M - 1)) && !(gpa & (SZ_2M - 1)) && va < (1ULL << 47),
		    "va %#llx, gpa %#llx", (ull)va, (ull)gpa);
	if (*pde & PTE_P)
		return false;
	*pde = gpa | PTE_P | PTE_RW | PTE_PS;
	return true;
}

static void write_gdt_and_tss(struct keel_vm *vm)
{
	uint64_t *gdt = gpa_hva(vm, vm->gdt_gpa, GDT_ENTRIES * 8);
	uint8_t *tss = gpa_hva(vm, vm->tss_gpa, TSS_SIZE);
	uint64_t base = vm->tss_gpa, limit = TSS_SIZE - 1;

	gdt[0] = 0;
	gdt[KEEL_SEL_CODE / 8] = 0x00af9b000000ffffULL; /* 64-bit code: G, L, P, type 0xb */
	gdt[KEEL_SEL_DATA / 8] = 0x00cf93000000ffffULL; /* data: G, DB, P, type 0x3 */
	/* A busy 64-bit TSS (type 0xb), 16 bytes (SDM vol. 3, 8.2.3). */
	gdt[KEEL_SEL_TSS / 8] = (limit & 0xffff) | (base & 0xffffff) << 16 | 0x8bULL << 40 |
				((limit >> 16) & 0xf) << 48 | ((base >> 24) & 0xff) << 56;
	gdt[KEEL_SEL_TSS / 8 + 1] = base >> 32;
	memset(tss, 0, TSS_SIZE);
	/* The I/O map base at the TSS limit: no I/O permission bitmap. */
	tss[102] = TSS_SIZE & 0xff;
	tss[103] = TSS_SIZE >> 8;
}

static void vm_setup_long_mode(struct keel_vm *vm)
{
	struct image img = { 0 };
	uint64_t lo = UINT64_MAX, hi = 0;

	dl_iterate_phdr(image_cb, &img);
	KEEL_ASSERT(img.phdr, "dl_iterate_phdr found no program headers");
	for (unsigned int i = 0; i < img.phnum; i++) {
		const ElfW(Phdr) *ph = &img.phdr[i];

		if (ph->p_type != PT_LOAD || !ph->p_memsz)
			continue;
		if (img.bias + ph->p_vaddr < lo)
			lo = img.bias + ph->p_vaddr;
		if (img.bias + ph->p_vaddr + ph->p_memsz > hi)
			hi = img.bias + ph->p_vaddr + ph->p_memsz;
	}
	KEEL_ASSERT(lo < hi, "the test binary has no PT_LOAD segment");
	vm->image_va = ALIGN_DOWN(lo, SZ_2M);
	vm->image_size = ALIGN_UP(hi, SZ_2M) - vm->image_va;
	vm->sys_size = vm->image_size + TABLES_SIZE;
	KEEL_ASSERT(vm->sys_size <= KEEL_SYS_RESERVE,
		    "the image (%#llx-%#llx) needs %#llx bytes of system range, more than KEEL_SYS_RESERVE",
		    (ull)lo, (ull)hi, (ull)vm->sys_size);
	KEEL_ASSERT(!overlaps(vm->image_va, vm->image_size, KEEL_SYS_GPA, vm->sys_size),
		    "the image's window %#llx-%#llx hides the system range", (ull)vm->image_va,
		    (ull)(vm->image_va + vm->image_size));
	for (uint32_t i = 0; i < vm->nr_regions; i++)
		vm_check_not_under_image(vm, vm->regions[i].gpa, vm->regions[i].size);

	vm->sys = vm_add_range(vm, KEEL_SYS_GPA, vm->sys_size, KEEL_RANGE_RAM);

	/* The loaded segments only: the gaps between them may be unmapped in this process. */
	for (unsigned int i = 0; i < img.phnum; i++) {
		const ElfW(Phdr) *ph = &img.phdr[i];
		uint64_t va = img.bias + ph->p_vaddr;

		if (ph->p_type != PT_LOAD || !ph->p_memsz)
			continue;
		memcpy((char *)vm->sys + (va - vm->image_va), (const void *)(uintptr_t)va,
		       ph->p_memsz);
	}

	vm->tables_gpa = KEEL_SYS_GPA + vm->image_size;
	vm->pml4_gpa = vm->tables_gpa + TABLE_POOL_OFF;
	vm->next_table_gpa = vm->pml4_gpa + SZ_4K;
	vm->gdt_gpa = vm->tables_gpa + GDT_OFF;
	vm->tss_gpa = vm->tables_gpa + TSS_OFF;
	vm->stacks_gpa = vm->tables_gpa + STACKS_OFF;
	memset(gpa_hva(vm, vm->pml4_gpa, SZ_4K), 0, SZ_4K);

	/* The image first, then VA == GPA for the rest of the low 4 GiB. */
	for (uint64_t off = 0; off < vm->image_size; off += SZ_2M)
		pt_map_2m(vm, vm->image_va + off, KEEL_SYS_GPA + off);
	for (uint64_t gpa = 0; gpa < KEEL_IDENTITY_LIMIT; gpa += SZ_2M)
		pt_map_2m(vm, gpa, gpa);

	write_gdt_and_tss(vm);
	vm->long_mode = true;
}

void vm_long64_boot(struct keel_vm *vm, uint32_t id, struct keel_long64_boot *boot)
{
	KEEL_ASSERT(vm->long_mode, "'%s' has no long-mode setup yet (vcpu_setup_long64 first)",
		    vm->name);
	KEEL_ASSERT(id < vm->max_vcpus, "vCPU %u of '%s'", id, vm->name);
	boot->cr3 = vm->pml4_gpa;
	boot->stack = vm->stacks_gpa + (id + 1) * STACK_SIZE;
	*(uint64_t *)gva_hva(vm, boot->stack - 8, 8) = (uint64_t)(uintptr_t)keel_guest_return;
	boot->stack -= 8;
}

/* --- vCPU state -------------------------------------------------------------------------- */

void vcpu_args_set(struct keel_vcpu *vcpu, unsigned int n, ...)
{
	struct keel_regs regs;
	__u64 *slots[] = { &regs.rdi, &regs.rsi, &regs.rdx, &regs.rcx, &regs.r8, &regs.r9 };
	va_list ap;

	KEEL_ASSERT(n <= 6, "%u arguments", n);
	vcpu_get_regs(vcpu, &regs);
	va_start(ap, n);
	for (unsigned int i = 0; i < n; i++)
		*slots[i] = va_arg(ap, uint64_t);
	va_end(ap);
	vcpu_set_regs(vcpu, &regs);
}

static struct keel_segment segment(uint64_t base, uint32_t limit, uint16_t selector,
				   uint16_t attrib)
{
	return (struct keel_segment){
		.base = base, .limit = limit, .selector = selector, .attrib = attrib,
	};
}

static void set_entry_regs(struct keel_vcpu *vcpu, uint64_t rip, uint64_t rsp)
{
	struct keel_regs regs = { .rip = rip, .rsp = rsp, .rflags = X86_RFLAGS_FIXED };

	vcpu_set_regs(vcpu, &regs);
}

void vcpu_setup_real(struct keel_vcpu *vcpu, uint64_t cs_base_gpa, uint16_t ip)
{
	const uint16_t code = KEEL_SEG_TYPE(0xb) | KEEL_SEG_S | KEEL_SEG_P;
	const uint16_t data = KEEL_SEG_TYPE(0x3) | KEEL_SEG_S | KEEL_SEG_P;
	struct keel_sregs s = { 0 };

	KEEL_ASSERT(!(cs_base_gpa & 0xf) && cs_base_gpa < SZ_1M,
		    "real-mode CS base %#llx: a multiple of 16 below 1 MiB", (ull)cs_base_gpa);
	s.cs = segment(cs_base_gpa, 0xffff, cs_base_gpa >> 4, code);
	s.ds = s.es = s.fs = s.gs = s.ss = segment(0, 0xffff, 0, data);
	/* The hardware wants a usable TR even in real mode: a busy 16-bit TSS. */
	s.tr = segment(0, 0xffff, 0, KEEL_SEG_TYPE(0x3) | KEEL_SEG_P);
	s.ldt = segment(0, 0, 0, 0);
	s.gdt.base = 0;
	s.gdt.limit = 0xffff;
	s.idt.base = 0;
	s.idt.limit = 0x3ff; /* the real-mode interrupt vector table */
	s.cr0 = X86_CR0_ET | X86_CR0_NE;
	vcpu_set_sregs(vcpu, &s);
	set_entry_regs(vcpu, ip, 0);
}

void vcpu_setup_prot32(struct keel_vcpu *vcpu, uint32_t entry)
{
	const uint16_t code = KEEL_SEG_TYPE(0xb) | KEEL_SEG_S | KEEL_SEG_P | KEEL_SEG_DB | KEEL_SEG_G;
	const uint16_t data = KEEL_SEG_TYPE(0x3) | KEEL_SEG_S | KEEL_SEG_P | KEEL_SEG_DB | KEEL_SEG_G;
	struct keel_sregs s = { 0 };

	s.cs = segment(0, 0xffffffff, KEEL_SEL_CODE, code);
	s.ds = s.es = s.fs = s.gs = s.ss = segment(0, 0xffffffff, KEEL_SEL_DATA, data);
	s.tr = segment(0, TSS_SIZE - 1, KEEL_SEL_TSS, KEEL_SEG_TYPE(0xb) | KEEL_SEG_P);
	s.ldt = segment(0, 0, 0, 0);
	/* No GDT or IDT: PVH guests load their own; an exception before that triple-faults. */
	s.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE;
	vcpu_set_sregs(vcpu, &s);
	set_entry_regs(vcpu, entry, 0);
}

void vcpu_setup_long64(struct keel_vm *vm, struct keel_vcpu *vcpu, uint64_t entry, uint64_t stack)
{
	const uint16_t code = KEEL_SEG_TYPE(0xb) | KEEL_SEG_S | KEEL_SEG_P | KEEL_SEG_L | KEEL_SEG_G;
	const uint16_t data = KEEL_SEG_TYPE(0x3) | KEEL_SEG_S | KEEL_SEG_P | KEEL_SEG_DB | KEEL_SEG_G;
	struct keel_sregs s = { 0 };

	KEEL_ASSERT(vcpu->vm == vm, "vCPU %u is not a vCPU of '%s'", vcpu->id, vm->name);
	if (!vm->long_mode)
		vm_setup_long_mode(vm);

	s.cs = segment(0, 0xffffffff, KEEL_SEL_CODE, code);
	s.ds = s.es = s.fs = s.gs = s.ss = segment(0, 0xffffffff, KEEL_SEL_DATA, data);
	s.tr = segment(vm->tss_gpa, TSS_SIZE - 1, KEEL_SEL_TSS, KEEL_SEG_TYPE(0xb) | KEEL_SEG_P);
	s.ldt = segment(0, 0, 0, 0);
	s.gdt.base = vm->gdt_gpa;
	s.gdt.limit = GDT_ENTRIES * 8 - 1;
	s.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
	s.cr3 = vm->pml4_gpa;
	/* OSFXSR/OSXMMEXCPT: compiled C may use SSE. */
	s.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
	s.efer = X86_EFER_LME | X86_EFER_LMA;
	vcpu_set_sregs(vcpu, &s);

	if (!stack)
		stack = vm->stacks_gpa + (vcpu->id + 1) * STACK_SIZE;
	KEEL_ASSERT(!(stack & 15), "stack top %#llx is not 16-byte aligned", (ull)stack);
	/* As after a CALL: (rsp + 8) is 16-byte aligned, [rsp] is the return address. */
	*(uint64_t *)gva_hva(vm, stack - 8, 8) = (uint64_t)(uintptr_t)keel_guest_return;
	set_entry_regs(vcpu, entry, stack - 8);
}

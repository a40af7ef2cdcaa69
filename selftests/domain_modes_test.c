// SPDX-License-Identifier: GPL-2.0
/*
 * domain_modes_test: the modes a vCPU starts in: the reset state (real mode at
 * the reset vector), the Xen PVH entry (32-bit protected mode), and long mode with C guest
 * code that reports through ucalls (GUEST_SYNC, GUEST_ASSERT, GUEST_DONE, a guest function
 * that returns); and 32-bit protected mode with rings: an exception at CPL 3 switches to
 * the ring-0 stack of the TSS.
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <stdint.h>
#include <string.h>

#include "kselftest_harness.h"
#include "domain_test.h"

/* ---------------------------------------------------------------------------------------
 * Guest code: real-mode and 32-bit blobs (copied into guest RAM), long-mode C functions. */

/* I/O ports and hypercall results the blobs and the host agree on (literals: the blobs
 * stringify them). */
#define PORT_RESET    0x512
#define PVH_MAGIC     0x336ec578U

asm(".pushsection .rodata\n"
    ".code16\n"
    /* The reset vector's 16 bytes (at f000:fff0). */
    "blob_reset_start:\n"
    "	mov $0x4321, %ax\n"
    "	mov $" KEEL_STR(PORT_RESET) ", %dx\n"
    "	out %ax, %dx\n"
    "	hlt\n"
    "blob_reset_end:\n"
    ".code32\n"
    /* PVH-like entry: EBX points at a start-info block {magic, value, out[3]}. */
    "blob_pvh_start:\n"
    "	mov (%ebx), %eax\n"
    "	mov 4(%ebx), %ecx\n"
    "	lea 1(%ecx,%ecx,2), %edx\n" /* 3 * value + 1 */
    "	mov %edx, 8(%ebx)\n"
    "	not %eax\n"
    "	mov %eax, 12(%ebx)\n"
    "	mov $" KEEL_STR(KEEL_HC_TEST) ", %eax\n"
    "	mov $0x5151, %esi\n"
    "	mov $0x7171, %edi\n"
    "	.byte 0x0f, 0x01, 0xc1\n" /* vmcall */
    "	mov %eax, 16(%ebx)\n"
    "blob_pvh_hlt:\n"
    "	hlt\n"
    "blob_pvh_end:\n"
    ".code64\n"
    ".popsection\n");

BLOB(reset);
BLOB(pvh);
extern const uint8_t blob_pvh_hlt[];

static GUEST_CODE void guest_sync_values(uint64_t n)
{
	for (uint64_t i = 1; i <= n; i++)
		GUEST_SYNC(i * 0x1111);
	GUEST_ASSERT(n == 5);
	GUEST_ASSERT_EQ(n * 3, 15);
	GUEST_DONE();
}

/* Returns without GUEST_DONE(): the library's return address reports it. */
static GUEST_CODE void guest_returns(uint64_t a)
{
	GUEST_SYNC(a + 1);
}

/* Each reports the line of the assertion that then fails. */
static GUEST_CODE void guest_assert_fails(uint64_t x)
{
	GUEST_SYNC(__LINE__ + 1);
	GUEST_ASSERT(x == 42);
	GUEST_DONE();
}

static GUEST_CODE void guest_assert_eq_fails(uint64_t x)
{
	GUEST_SYNC(__LINE__ + 1);
	GUEST_ASSERT_EQ(x + 1, 42);
	GUEST_DONE();
}

/* ---------------------------------------------------------------------------------------
 * Real mode: the reset vector. */

/* A new vCPU starts at f000:fff0 with CS base 0xffff0000: the top of the 4 GiB space. */
TEST_F(domain, real_mode_reset_vector)
{
	struct keel_vm *vm = vm_create("reset-vector", 1, 0);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint8_t *rom = vm_add_range(vm, 0xfffff000, SZ_4K, KEEL_RANGE_ROM);
	struct keel_sregs sregs;
	struct keel_regs regs;

	ASSERT_LE(BLOB_SIZE(reset), 16);
	memset(rom, 0xf4, SZ_4K); /* hlt */
	memcpy(rom + 0xff0, blob_reset_start, BLOB_SIZE(reset));
	vcpu_get_sregs(vcpu, &sregs);
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(0xf000, sregs.cs.selector);
	EXPECT_EQ(0xffff0000, sregs.cs.base);
	EXPECT_EQ(0xfff0, regs.rip);
	EXPECT_EQ(0, sregs.cr0 & X86_CR0_PE);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_RESET, vcpu->run.exit.io.port);
	EXPECT_EQ(2, vcpu->run.exit.io.size);
	EXPECT_EQ(0x4321, vcpu->run.exit.io.data);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * 32-bit protected mode (the PVH entry). */

TEST_F(domain, prot32_pvh_entry)
{
	const uint64_t info_gpa = 0x6000;
	struct keel_vm *vm = vm_create("pvh", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint32_t *info = gpa_hva(vm, info_gpa, 20);
	struct keel_exit *e = &vcpu->run.exit;
	struct keel_sregs sregs;
	struct keel_regs regs;

	LOAD_BLOB(vm, CODE_GPA, pvh);
	info[0] = PVH_MAGIC;
	info[1] = 0x1000;
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_get_regs(vcpu, &regs);
	regs.rbx = info_gpa;
	vcpu_set_regs(vcpu, &regs);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HYPERCALL);
	EXPECT_EQ(KEEL_HC_TEST, e->hypercall.nr);
	EXPECT_EQ(0, e->hypercall.longmode);
	EXPECT_EQ(info_gpa, e->hypercall.args[0]); /* ebx */
	EXPECT_EQ(0x1000, e->hypercall.args[1]);   /* ecx */
	EXPECT_EQ(0x3001, e->hypercall.args[2]);   /* edx */
	EXPECT_EQ(0x5151, e->hypercall.args[3]);   /* esi */
	EXPECT_EQ(0x7171, e->hypercall.args[4]);   /* edi */
	e->hypercall.ret = 0x600dcafe;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(CODE_GPA + BLOB_OFF(pvh, hlt), e->rip);
	/* Memory, through the mapping. */
	EXPECT_EQ(PVH_MAGIC, info[0]);
	EXPECT_EQ(0x3001, info[2]);
	EXPECT_EQ(~PVH_MAGIC, info[3]);
	EXPECT_EQ(0x600dcafe, info[4]);
	/* Registers. */
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(0x600dcafe, regs.rax & 0xffffffff);
	EXPECT_EQ(info_gpa, regs.rbx);
	EXPECT_EQ(0x1000, regs.rcx);
	EXPECT_EQ(0x3001, regs.rdx);
	EXPECT_EQ(0x5151, regs.rsi);
	EXPECT_EQ(0x7171, regs.rdi);
	EXPECT_EQ(CODE_GPA + BLOB_OFF(pvh, hlt) + 1, regs.rip);
	vcpu_get_sregs(vcpu, &sregs);
	EXPECT_TRUE(sregs.cr0 & X86_CR0_PE);
	EXPECT_FALSE(sregs.cr0 & X86_CR0_PG);
	EXPECT_EQ(KEEL_SEL_CODE, sregs.cs.selector);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * Long mode with C guest code and its reports. */

/* A 32-bit guest IRETs to ring 3 and takes #UD there: the CPU switches to the ring-0 stack the
 * TSS names (TR as Keel's PVH-style entry sets it: a busy 32-bit TSS) and the handler runs.
 * (QEMU's TCG aborted the whole emulator on a busy type in the cached TR; on SVM Keel gives the
 * VMCB the available type, and the vCPU state keeps the busy one.) */
TEST_F(domain, ring3_exception_takes_the_tss_stack)
{
	/* push $0x23 (SS); push $0x9000 (ESP); push $2 (EFLAGS); push $0x1b (CS);
	 * push $0x1020 (EIP); iret. At 0x1020: ud2. The #UD handler at 0x3000: hlt. */
	static const uint8_t code[] = { 0x6a, 0x23, 0x68, 0x00, 0x90, 0, 0, 0x6a, 0x02, 0x6a, 0x1b,
					0x68, 0x20, 0x10, 0, 0, 0xcf };
	static const uint8_t ud2[] = { 0x0f, 0x0b }, hlt[] = { 0xf4 };
	const uint64_t gdt[] = {
		0,
		0x00cf9b000000ffffULL, /* 0x08: code, DPL 0 */
		0x00cf93000000ffffULL, /* 0x10: data, DPL 0 */
		0x00cffb000000ffffULL, /* 0x18: code, DPL 3 */
		0x00cff3000000ffffULL, /* 0x20: data, DPL 3 */
		0x00008b0009000067ULL, /* 0x28: the TSS at 0x900, busy */
	};
	const uint32_t esp0 = 0x7000, ss0 = KEEL_SEL_DATA;
	struct keel_vm *vm = vm_create("tss-ring3", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs s;
	struct keel_regs regs;
	uint32_t frame[5];

	vm_write(vm, 0x800, gdt, sizeof(gdt));
	vm_write(vm, 0x904, &esp0, 4);
	vm_write(vm, 0x908, &ss0, 4);
	for (int v = 0; v < 32; v++) {
		/* A 32-bit interrupt gate, DPL 0, to 0x08:0x3000. */
		const uint64_t gate = 0x00008e0000083000ULL;

		vm_write(vm, 0x2000 + 8 * v, &gate, 8);
	}
	vm_write(vm, 0x1000, code, sizeof(code));
	vm_write(vm, 0x1020, ud2, sizeof(ud2));
	vm_write(vm, 0x3000, hlt, sizeof(hlt));
	vcpu_setup_prot32(vcpu, 0x1000);
	vcpu_get_sregs(vcpu, &s);
	s.gdt.base = 0x800;
	s.gdt.limit = sizeof(gdt) - 1;
	s.idt.base = 0x2000;
	s.idt.limit = 32 * 8 - 1;
	s.tr.base = 0x900;
	s.tr.limit = 0x67;
	s.tr.selector = 0x28;
	vcpu_set_sregs(vcpu, &s);
	vcpu_get_regs(vcpu, &regs);
	regs.rsp = 0x8000;
	vcpu_set_regs(vcpu, &regs);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(0x3000, vcpu->run.exit.rip);
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(esp0 - sizeof(frame), regs.rsp) TH_LOG("not on the TSS's ring-0 stack");
	memcpy(frame, gpa_hva(vm, esp0 - sizeof(frame), sizeof(frame)), sizeof(frame));
	EXPECT_EQ(0x1020, frame[0]) TH_LOG("EIP of the ud2");
	EXPECT_EQ(0x1b, frame[1]);
	EXPECT_EQ(0x9000, frame[3]) TH_LOG("ring 3's ESP");
	EXPECT_EQ(0x23, frame[4]);
	vcpu_get_sregs(vcpu, &s);
	EXPECT_EQ(0xb, s.tr.attrib & 0xf) TH_LOG("TR is reported busy");
	vm_destroy(vm);
}

TEST_F(domain, long_mode_sync_assert_done)
{
	struct keel_vm *vm = vm_create("long-sync", 2, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0], *ret = vm->vcpus[1];
	struct keel_ucall uc;

	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_sync_values), 0);
	vcpu_args_set(vcpu, 1, 5ULL);
	vcpu_setup_long64(vm, ret, GUEST_FN(guest_returns), 0);
	vcpu_args_set(ret, 1, 41ULL);

	for (uint64_t i = 1; i <= 5; i++) {
		ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
		EXPECT_EQ(i * 0x1111, uc.args[0]);
		EXPECT_EQ(1, vcpu->run.exit.hypercall.longmode);
	}
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, &uc));
	/* Run again, it reports again. */
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, &uc));

	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(ret, &uc));
	EXPECT_EQ(42, uc.args[0]);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(ret, &uc));
	vm_destroy(vm);
}

TEST_F(domain, long_mode_failed_assert_is_decoded)
{
	struct keel_vm *vm = vm_create("long-assert", 2, SZ_1M);
	struct keel_vcpu *a = vm->vcpus[0], *b = vm->vcpus[1];
	struct keel_ucall uc;
	uint64_t line;

	vcpu_setup_long64(vm, a, GUEST_FN(guest_assert_fails), 0);
	vcpu_args_set(a, 1, 41ULL);
	vcpu_setup_long64(vm, b, GUEST_FN(guest_assert_eq_fails), 0);
	vcpu_args_set(b, 1, 7ULL);

	ASSERT_EQ(UCALL_SYNC, vcpu_run_ucall(a, &uc));
	line = uc.args[0];
	ASSERT_EQ(UCALL_ASSERT, vcpu_run_ucall(a, &uc)) TH_LOG("%s", keel_exit_str(&a->run.exit));
	EXPECT_STREQ(__FILE__, uc.file);
	EXPECT_EQ(line, uc.line);
	EXPECT_STREQ("x == 42", uc.expr);
	EXPECT_FALSE(uc.has_values);
	/* It does not go on. */
	ASSERT_EQ(UCALL_ASSERT, vcpu_run_ucall(a, &uc));
	EXPECT_EQ(line, uc.line);

	ASSERT_EQ(UCALL_SYNC, vcpu_run_ucall(b, &uc));
	line = uc.args[0];
	ASSERT_EQ(UCALL_ASSERT, vcpu_run_ucall(b, &uc)) TH_LOG("%s", keel_exit_str(&b->run.exit));
	EXPECT_STREQ(__FILE__, uc.file);
	EXPECT_EQ(line, uc.line);
	EXPECT_STREQ("x + 1 == 42", uc.expr);
	EXPECT_TRUE(uc.has_values);
	EXPECT_EQ(8, uc.values[0]);
	EXPECT_EQ(42, uc.values[1]);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

// SPDX-License-Identifier: GPL-2.0
/*
 * domain_modes_test: the modes a vCPU starts in: the reset state (real mode at
 * the reset vector), the Xen PVH entry (32-bit protected mode), and long mode with C guest
 * code that reports through ucalls (GUEST_SYNC, GUEST_ASSERT, GUEST_DONE, a guest function
 * that returns).
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

// SPDX-License-Identifier: GPL-2.0
/*
 * domain_exits_test: the exits a guest makes to Dom0, and their completion: I/O
 * (from real-mode guests; an IN completes on the next run) and HLT, MMIO, hypercalls (64- and
 * 32-bit callers, VMCALL and VMMCALL, refused at CPL 3), and a triple fault (shutdown); the
 * exceptions root mode intercepts and gives back to the guest (#DB from a single step and
 * from ICEBP, #AC), and an #AC delivery loop that must not keep the host's CPU.
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/time.h>

#include "kselftest_harness.h"
#include "domain_test.h"

/* ---------------------------------------------------------------------------------------
 * Guest code: real-mode and 32-bit blobs (copied into guest RAM), long-mode C functions. */

/* I/O ports and hypercall results the blobs and the host agree on (literals: the blobs
 * stringify them). */
#define PORT_IN       0x511
#define PORT_ECHO8    0x80
#define PORT_IN32     0x82
#define PORT_ECHO32   0x84
#define HC32_RESULTS  0x3000
/* The #AC guest's tables, data and what it reports when no #AC came. */
#define AC_GDT        0x2000
#define AC_IDT        0x2800
#define AC_DATA       0x3000
#define AC_MISSING    0xac0ff
#define XEN_VERSION_4_19 ((4ULL << 16) | 19)

asm(".pushsection .rodata\n"
    ".code16\n"
    /* IN a byte and a dword, echo each with an OUT, HLT. */
    "blob_real_in_start:\n"
    "	mov $" KEEL_STR(PORT_IN) ", %dx\n"
    "	in %dx, %al\n"
    "	out %al, $" KEEL_STR(PORT_ECHO8) "\n"
    "	in $" KEEL_STR(PORT_IN32) ", %eax\n"
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "	hlt\n"
    "blob_real_in_end:\n"
    /* RDMSR of an MSR Keel refuses: #GP, delivered through the IVT to the handler, which
     * reports with an OUT. */
    "blob_real_gp_start:\n"
    "	mov $0x3a, %ecx\n"
    "blob_real_gp_rdmsr:\n"
    "	rdmsr\n"
    "	hlt\n"
    "blob_real_gp_handler:\n"
    "	out %al, $" KEEL_STR(PORT_ECHO8) "\n"
    "	hlt\n"
    "blob_real_gp_end:\n"
    ".code32\n"
    /* 32-bit hypercalls: an unknown number with VMCALL and with VMMCALL, then xen_version
     * with both; each result stored at HC32_RESULTS. */
    "blob_hc32_start:\n"
    "	mov $" KEEL_STR(KEEL_HC_TEST) ", %eax\n"
    "	.byte 0x0f, 0x01, 0xc1\n" /* vmcall */
    "	mov %eax, " KEEL_STR(HC32_RESULTS) "\n"
    "	mov $" KEEL_STR(KEEL_HC_TEST) " + 1, %eax\n"
    "	.byte 0x0f, 0x01, 0xd9\n" /* vmmcall */
    "	mov %eax, " KEEL_STR(HC32_RESULTS) " + 4\n"
    "	mov $" KEEL_STR(KEEL_HC_XEN_VERSION) ", %eax\n"
    "	xor %ebx, %ebx\n"
    "	.byte 0x0f, 0x01, 0xc1\n"
    "	mov %eax, " KEEL_STR(HC32_RESULTS) " + 8\n"
    "	mov $" KEEL_STR(KEEL_HC_XEN_VERSION) ", %eax\n"
    "	xor %ebx, %ebx\n"
    "	.byte 0x0f, 0x01, 0xd9\n"
    "	mov %eax, " KEEL_STR(HC32_RESULTS) " + 12\n"
    "	hlt\n"
    "blob_hc32_end:\n"
    /* At CPL 3 (IOPL 3): hypercalls, each result reported with an OUT. */
    "blob_cpl3_start:\n"
    "	mov $" KEEL_STR(KEEL_HC_TEST) ", %eax\n"
    "	.byte 0x0f, 0x01, 0xc1\n" /* vmcall */
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "	mov $" KEEL_STR(KEEL_HC_XEN_VERSION) ", %eax\n"
    "	xor %ebx, %ebx\n"
    "	.byte 0x0f, 0x01, 0xd9\n" /* vmmcall */
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "1:	jmp 1b\n"
    "blob_cpl3_end:\n"
    /* #DB: POPF sets TF, and the instruction after it traps; or an ICEBP (INT1); or DR7.GD
     * set and a debug register read (a fault). The handler (IVT vector 1) reports DR6 (a
     * debug register read that faults again unless the delivery cleared GD) and the frame's
     * IP. */
    ".code16\n"
    "blob_real_db_start:\n"
    "	pushf\n"
    "	pop %ax\n"
    "	or $0x100, %ax\n"
    "	push %ax\n"
    "	popf\n"
    "	nop\n"
    "blob_real_db_stepped:\n"
    "	hlt\n"
    "blob_real_db_icebp:\n"
    "	.byte 0xf1\n"
    "blob_real_db_after_icebp:\n"
    "	hlt\n"
    /* Single steps over instructions root mode completes: CPUID (served in root mode), then
     * an OUT (served by the test, completed at the next run). */
    "blob_real_db_over:\n"
    "	pushf\n"
    "	pop %ax\n"
    "	or $0x100, %ax\n"
    "	push %ax\n"
    "	popf\n"
    "	cpuid\n"
    "blob_real_db_after_cpuid:\n"
    "	hlt\n"
    "blob_real_db_over_out:\n"
    "	pushf\n"
    "	pop %ax\n"
    "	or $0x100, %ax\n"
    "	push %ax\n"
    "	popf\n"
    "	out %al, $" KEEL_STR(PORT_ECHO8) "\n"
    "blob_real_db_after_out:\n"
    "	hlt\n"
    "blob_real_db_over_in:\n"
    "	pushf\n"
    "	pop %ax\n"
    "	or $0x100, %ax\n"
    "	push %ax\n"
    "	popf\n"
    "	in $" KEEL_STR(PORT_ECHO8) ", %al\n"
    "blob_real_db_after_in:\n"
    "	hlt\n"
    "blob_real_db_gd:\n"
    "	mov $0x2400, %eax\n"
    "	mov %eax, %dr7\n"
    "blob_real_db_gd_read:\n"
    "	mov %dr0, %eax\n"
    "	hlt\n"
    "blob_real_db_handler:\n"
    "	mov %dr6, %eax\n"
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "	pop %ax\n"
    "	movzwl %ax, %eax\n"
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "	hlt\n"
    "blob_real_db_end:\n"
    ".code32\n"
    /* At CPL 3 with CR0.AM and EFLAGS.AC: a misaligned load raises #AC, whose handler (at
     * CPL 3 too, through the IDT) reports the error code and the frame's EIP; without an
     * #AC the load completes and the blob reports AC_MISSING. */
    "blob_ac_start:\n"
    "	mov " KEEL_STR(AC_DATA) " + 1, %eax\n"
    "	mov $" KEEL_STR(AC_MISSING) ", %eax\n"
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "1:	jmp 1b\n"
    "blob_ac_handler:\n"
    "	pop %eax\n"
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "	pop %eax\n"
    "	out %eax, $" KEEL_STR(PORT_ECHO32) "\n"
    "1:	jmp 1b\n"
    "blob_ac_end:\n"
    /* A store to a page the guest did not map raises #PF, whose delivery pushes its frame
     * on a stack in an MMIO range. */
    "blob_pf_mmio_stack_start:\n"
    "	mov $0x400000, %ebx\n"
    "	mov %eax, (%ebx)\n"
    "	hlt\n"
    "blob_pf_mmio_stack_handler:\n"
    "	hlt\n"
    "blob_pf_mmio_stack_end:\n"
    /* An invalid opcode with no IDT. */
    "blob_ud2_start:\n"
    "	ud2\n"
    "blob_ud2_end:\n"
    ".code64\n"
    ".popsection\n");

BLOB(real_in);
BLOB(real_gp);
extern const uint8_t blob_real_gp_rdmsr[], blob_real_gp_handler[];
BLOB(hc32);
BLOB(cpl3);
BLOB(ud2);
BLOB(real_db);
extern const uint8_t blob_real_db_stepped[], blob_real_db_icebp[], blob_real_db_after_icebp[],
	blob_real_db_gd[], blob_real_db_gd_read[], blob_real_db_handler[],
	blob_real_db_over[], blob_real_db_after_cpuid[], blob_real_db_over_out[],
	blob_real_db_after_out[], blob_real_db_over_in[], blob_real_db_after_in[];
BLOB(ac);
extern const uint8_t blob_ac_handler[];
BLOB(pf_mmio_stack);
extern const uint8_t blob_pf_mmio_stack_handler[];

#define MMIO_W8  0x11
#define MMIO_W16 0x2233
#define MMIO_W32 0x44556677U
#define MMIO_W64 0x8899aabbccddeeffULL
#define MMIO_R8  0x5a
#define MMIO_R16 0xbeef
#define MMIO_R32 0xdeadbeefU
#define MMIO_R64 0x0123456789abcdefULL

static GUEST_CODE void guest_mmio(uint64_t base)
{
	*(volatile uint8_t *)(base + 0x0) = MMIO_W8;
	*(volatile uint16_t *)(base + 0x2) = MMIO_W16;
	*(volatile uint32_t *)(base + 0x4) = MMIO_W32;
	*(volatile uint64_t *)(base + 0x8) = MMIO_W64;
	GUEST_ASSERT_EQ(*(volatile uint8_t *)(base + 0x10), MMIO_R8);
	GUEST_ASSERT_EQ(*(volatile uint16_t *)(base + 0x12), MMIO_R16);
	GUEST_ASSERT_EQ(*(volatile uint32_t *)(base + 0x14), MMIO_R32);
	GUEST_ASSERT_EQ(*(volatile uint64_t *)(base + 0x18), MMIO_R64);
	GUEST_DONE();
}

#define HC_ARG(i) (0x1111111111111111ULL * ((i) + 1) + 0xa0)
#define HC_RET1   0x123456789abcdef0ULL
#define HC_RET2   0xfedcba9876543210ULL

static GUEST_CODE void guest_hypercalls64(void)
{
	/* Handled by Keel: no exit. */
	GUEST_ASSERT_EQ(guest_vmcall(KEEL_HC_XEN_VERSION, XENVER_version, 0, 0, 0, 0),
			XEN_VERSION_4_19);
	GUEST_ASSERT_EQ(guest_vmmcall(KEEL_HC_XEN_VERSION, XENVER_version, 0, 0, 0, 0),
			XEN_VERSION_4_19);
	/* Unknown: Dom0 answers. */
	GUEST_ASSERT_EQ(guest_vmcall(KEEL_HC_TEST, HC_ARG(0), HC_ARG(1), HC_ARG(2), HC_ARG(3),
				     HC_ARG(4)), HC_RET1);
	GUEST_ASSERT_EQ(guest_vmmcall(KEEL_HC_TEST + 1, HC_ARG(0), HC_ARG(1), HC_ARG(2), HC_ARG(3),
				      HC_ARG(4)), HC_RET2);
	GUEST_DONE();
}

/* ---------------------------------------------------------------------------------------
 * I/O and HLT, from real mode. */

TEST_F(domain, real_mode_out_then_hlt)
{
	struct keel_vm *vm = REAL_VM("real-out", 1, SZ_64K, real_out);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_regs regs;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(0, vcpu->run.exit.vcpu);
	EXPECT_EQ(PORT_OUT, vcpu->run.exit.io.port);
	EXPECT_EQ(2, vcpu->run.exit.io.size);
	EXPECT_EQ(KEEL_IO_OUT, vcpu->run.exit.io.direction);
	EXPECT_EQ(0x1234, vcpu->run.exit.io.data);
	EXPECT_EQ(BLOB_OFF(real_out, out), vcpu->run.exit.rip);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(BLOB_OFF(real_out, hlt), vcpu->run.exit.rip);
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(BLOB_OFF(real_out, hlt) + 1, regs.rip) TH_LOG("RIP is not past the HLT");
	EXPECT_EQ(0x1234, regs.rax & 0xffff);
	EXPECT_EQ(PORT_OUT, regs.rdx & 0xffff);
	vm_destroy(vm);
}

/* A #GP Keel raises in a real-mode guest (here for an MSR it refuses) is delivered through
 * the IVT without an error code, as real mode has none: the frame is IP, CS, FLAGS (VMX
 * refuses to enter with an error code in real mode: the run failed forever). */
TEST_F(domain, real_mode_gp_has_no_error_code)
{
	struct keel_vm *vm = REAL_VM("real-gp", 1, SZ_64K, real_gp);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	const uint16_t ivt[2] = { BLOB_OFF(real_gp, handler), CODE_GPA >> 4 };
	const uint64_t sp = 0x8000;
	struct keel_regs regs;
	uint16_t frame[3];

	vm_write(vm, 13 * 4, ivt, sizeof(ivt));
	vcpu_get_regs(vcpu, &regs);
	regs.rsp = sp;
	vcpu_set_regs(vcpu, &regs);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_ECHO8, vcpu->run.exit.io.port);
	EXPECT_EQ(BLOB_OFF(real_gp, handler), vcpu->run.exit.rip);
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(sp - 6, regs.rsp & 0xffff) TH_LOG("the frame is not IP, CS, FLAGS");
	memcpy(frame, gpa_hva(vm, sp - 6, sizeof(frame)), sizeof(frame));
	EXPECT_EQ(BLOB_OFF(real_gp, rdmsr), frame[0]);
	EXPECT_EQ(CODE_GPA >> 4, frame[1]);
	vm_destroy(vm);
}

TEST_F(domain, real_mode_in_completes_on_next_run)
{
	struct keel_vm *vm = REAL_VM("real-in", 1, SZ_64K, real_in);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_regs regs;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_IN, vcpu->run.exit.io.port);
	EXPECT_EQ(1, vcpu->run.exit.io.size);
	EXPECT_EQ(KEEL_IO_IN, vcpu->run.exit.io.direction);
	vcpu->run.exit.io.data = 0xab;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_ECHO8, vcpu->run.exit.io.port);
	EXPECT_EQ(KEEL_IO_OUT, vcpu->run.exit.io.direction);
	EXPECT_EQ(1, vcpu->run.exit.io.size);
	EXPECT_EQ(0xab, vcpu->run.exit.io.data);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_IN32, vcpu->run.exit.io.port);
	EXPECT_EQ(4, vcpu->run.exit.io.size);
	EXPECT_EQ(KEEL_IO_IN, vcpu->run.exit.io.direction);
	vcpu->run.exit.io.data = 0xdeadbeef;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_ECHO32, vcpu->run.exit.io.port);
	EXPECT_EQ(4, vcpu->run.exit.io.size);
	EXPECT_EQ(0xdeadbeef, vcpu->run.exit.io.data);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(0xdeadbeef, regs.rax & 0xffffffff);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * MMIO. */

TEST_F(domain, mmio_exits_and_completes)
{
	const uint64_t mmio = 0xc0000000;
	const struct {
		uint64_t off;
		uint8_t size;
		uint8_t dir;
		uint64_t data;
	} expect[] = {
		{ 0x0, 1, KEEL_IO_OUT, MMIO_W8 },
		{ 0x2, 2, KEEL_IO_OUT, MMIO_W16 },
		{ 0x4, 4, KEEL_IO_OUT, MMIO_W32 },
		{ 0x8, 8, KEEL_IO_OUT, MMIO_W64 },
		{ 0x10, 1, KEEL_IO_IN, MMIO_R8 },
		{ 0x12, 2, KEEL_IO_IN, MMIO_R16 },
		{ 0x14, 4, KEEL_IO_IN, MMIO_R32 },
		{ 0x18, 8, KEEL_IO_IN, MMIO_R64 },
	};
	struct keel_vm *vm = vm_create("mmio", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_exit *e = &vcpu->run.exit;

	vm_add_range(vm, mmio, SZ_4K, KEEL_RANGE_MMIO);
	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_mmio), 0);
	vcpu_args_set(vcpu, 1, mmio);
	for (size_t i = 0; i < ARRAY_SIZE(expect); i++) {
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_MMIO);
		EXPECT_EQ(mmio + expect[i].off, e->mmio.gpa) TH_LOG("access %zu", i);
		EXPECT_EQ(expect[i].size, e->mmio.size) TH_LOG("access %zu", i);
		EXPECT_EQ(expect[i].dir, e->mmio.direction) TH_LOG("access %zu", i);
		if (expect[i].dir == KEEL_IO_OUT) {
			EXPECT_EQ(expect[i].data, e->mmio.data) TH_LOG("access %zu", i);
		} else {
			e->mmio.data = expect[i].data;
		}
	}
	/* The guest checked every value it read. */
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, NULL));
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * Hypercalls. */

TEST_F(domain, hypercalls_64bit)
{
	struct keel_vm *vm = vm_create("hc64", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_exit *e = &vcpu->run.exit;

	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_hypercalls64), 0);
	for (int call = 0; call < 2; call++) {
		/* xen_version is answered inside: the first exit is the unknown number. */
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_HYPERCALL);
		EXPECT_EQ(KEEL_HC_TEST + call, e->hypercall.nr)
			TH_LOG("%s", keel_exit_str(e));
		EXPECT_EQ(1, e->hypercall.longmode);
		for (int i = 0; i < 5; i++) {
			EXPECT_EQ(HC_ARG(i), e->hypercall.args[i])
				TH_LOG("%s call, argument %d", call ? "VMMCALL" : "VMCALL", i);
		}
		e->hypercall.ret = call ? HC_RET2 : HC_RET1;
	}
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, NULL));
	vm_destroy(vm);
}

TEST_F(domain, hypercalls_32bit)
{
	struct keel_vm *vm = vm_create("hc32", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_exit *e = &vcpu->run.exit;
	uint32_t *results = gpa_hva(vm, HC32_RESULTS, 16);
	const uint64_t args[5] = { 0x0b0b0b0b, 0x0c0c0c0c, 0x0d0d0d0d, 0x05050505, 0x0d1d1d1d };
	struct keel_regs regs;

	LOAD_BLOB(vm, CODE_GPA, hc32);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_get_regs(vcpu, &regs);
	/* Bits 63:32 are not the 32-bit caller's: they must not show in the arguments. */
	regs.rbx = 0xdead000000000000ULL | args[0];
	regs.rcx = 0xdead000100000000ULL | args[1];
	regs.rdx = 0xdead000200000000ULL | args[2];
	regs.rsi = 0xdead000300000000ULL | args[3];
	regs.rdi = 0xdead000400000000ULL | args[4];
	/* And the 64-bit convention's registers must not be read. */
	regs.r10 = 0xa10a10a1;
	regs.r8 = 0x8888;
	vcpu_set_regs(vcpu, &regs);

	for (int call = 0; call < 2; call++) {
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_HYPERCALL);
		EXPECT_EQ(KEEL_HC_TEST + call, e->hypercall.nr) TH_LOG("%s", keel_exit_str(e));
		EXPECT_EQ(0, e->hypercall.longmode);
		for (int i = 0; i < 5; i++) {
			EXPECT_EQ(args[i], e->hypercall.args[i])
				TH_LOG("%s call, argument %d: %s", call ? "VMMCALL" : "VMCALL", i,
				       keel_exit_str(e));
		}
		e->hypercall.ret = 0xcafe0001 + call;
	}
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(0xcafe0001, results[0]);
	EXPECT_EQ(0xcafe0002, results[1]);
	EXPECT_EQ(XEN_VERSION_4_19, results[2]) TH_LOG("xen_version with VMCALL");
	EXPECT_EQ(XEN_VERSION_4_19, results[3]) TH_LOG("xen_version with VMMCALL");
	vm_destroy(vm);
}

/* The flat 32-bit segments of vcpu_setup_prot32() at CPL 3: DPL 3, RPL 3. */
static void segments_at_cpl3(struct keel_sregs *s)
{
	struct keel_segment *data[] = { &s->ds, &s->es, &s->fs, &s->gs, &s->ss };

	s->cs.selector = KEEL_SEL_CODE | 3;
	s->cs.attrib |= KEEL_SEG_DPL(3);
	for (size_t i = 0; i < ARRAY_SIZE(data); i++) {
		data[i]->selector = KEEL_SEL_DATA | 3;
		data[i]->attrib |= KEEL_SEG_DPL(3);
	}
}

/* A hypercall from CPL 3 gets -EPERM (-1) without an exit. */
TEST_F(domain, hypercall_from_cpl3_is_refused)
{
	struct keel_vm *vm = vm_create("hc-cpl3", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs s;
	struct keel_regs regs;

	LOAD_BLOB(vm, CODE_GPA, cpl3);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_get_sregs(vcpu, &s);
	segments_at_cpl3(&s);
	vcpu_set_sregs(vcpu, &s);
	vcpu_get_regs(vcpu, &regs);
	regs.rflags = X86_RFLAGS_FIXED | X86_RFLAGS_IOPL3; /* OUT allowed at CPL 3 */
	vcpu_set_regs(vcpu, &regs);

	for (int call = 0; call < 2; call++) {
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
		EXPECT_EQ(PORT_ECHO32, vcpu->run.exit.io.port);
		EXPECT_EQ(0xffffffff, vcpu->run.exit.io.data)
			TH_LOG("%s from CPL 3 returned %#llx, expected -1 (-EPERM)",
			       call ? "xen_version with VMMCALL" : "an unknown VMCALL",
			       (ull)vcpu->run.exit.io.data);
	}
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * Exceptions root mode intercepts (#DB, #AC: so that no guest can loop the processor in their
 * delivery) and gives back to the guest as the processor would have. Each is an exit that
 * root mode counts (debugfs domain_exits), which shows it was intercepted. */

/* A real-mode guest of the #DB blob at `start`, its handler in the IVT. */
static struct keel_vm *db_vm(const char *name, uint64_t start)
{
	struct keel_vm *vm = REAL_VM(name, 1, SZ_64K, real_db);
	const uint16_t ivt[2] = { BLOB_OFF(real_db, handler), CODE_GPA >> 4 };
	struct keel_regs regs;

	vm_write(vm, 1 * 4, ivt, sizeof(ivt));
	vcpu_get_regs(vm->vcpus[0], &regs);
	regs.rip = start;
	regs.rsp = 0x8000;
	vcpu_set_regs(vm->vcpus[0], &regs);
	return vm;
}

/* Runs the #DB guest to its handler's two reports: DR6 and the IP the frame returns to. */
static void run_to_db_reports(struct __test_metadata *_metadata, struct keel_vcpu *vcpu,
			      uint32_t *dr6, uint32_t *ip)
{
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	ASSERT_EQ(PORT_ECHO32, vcpu->run.exit.io.port);
	*dr6 = vcpu->run.exit.io.data;
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	*ip = vcpu->run.exit.io.data;
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
}

TEST_F(domain, single_step_db_is_intercepted_and_delivered)
{
	struct keel_vm *vm = db_vm("db-step", 0);
	uint32_t dr6, ip;

	run_to_db_reports(_metadata, vm->vcpus[0], &dr6, &ip);
	EXPECT_EQ(BLOB_OFF(real_db, stepped), ip) TH_LOG("the trap's frame is not past the NOP");
	EXPECT_EQ(1u << 14, dr6 & ((1u << 14) | 0xf)) TH_LOG("DR6 %#x: BS alone expected", dr6);
	EXPECT_LE(1, domain_exits(vm->domid, "exception")) TH_LOG("the #DB was not intercepted");
	vm_destroy(vm);
}

/* A single step over an instruction root mode completes traps right after it, as on the
 * CPU: after CPUID (served in root mode), and after an OUT and an IN that Dom0 served (the
 * trap comes at the next run; the IN completes then, with the guest's DR6 in place, not
 * Dom0's). Without it the step went on past the next instruction. */
TEST_F(domain, single_step_over_completed_instructions)
{
	struct keel_vm *vm = db_vm("db-over", BLOB_OFF(real_db, over));
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_regs regs;
	uint32_t dr6, ip;

	run_to_db_reports(_metadata, vcpu, &dr6, &ip);
	EXPECT_EQ(BLOB_OFF(real_db, after_cpuid), ip) TH_LOG("the trap is not right after CPUID");
	EXPECT_NE(0, dr6 & (1u << 14)) TH_LOG("DR6 %#x: BS expected", dr6);

	vcpu_get_regs(vcpu, &regs);
	regs.rip = BLOB_OFF(real_db, over_out);
	regs.rsp = 0x8000;
	vcpu_set_regs(vcpu, &regs);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(PORT_ECHO8, vcpu->run.exit.io.port);
	run_to_db_reports(_metadata, vcpu, &dr6, &ip);
	EXPECT_EQ(BLOB_OFF(real_db, after_out), ip) TH_LOG("the trap is not right after the OUT");
	EXPECT_NE(0, dr6 & (1u << 14)) TH_LOG("DR6 %#x: BS expected", dr6);

	vm_destroy(vm);

	/* A new guest, whose DR6 has no BS yet (the processor never clears it). */
	vm = db_vm("db-in", BLOB_OFF(real_db, over_in));
	vcpu = vm->vcpus[0];
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(KEEL_IO_IN, vcpu->run.exit.io.direction);
	vcpu->run.exit.io.data = 0x5a;
	run_to_db_reports(_metadata, vcpu, &dr6, &ip);
	EXPECT_EQ(BLOB_OFF(real_db, after_in), ip) TH_LOG("the trap is not right after the IN");
	EXPECT_NE(0, dr6 & (1u << 14)) TH_LOG("DR6 %#x: BS expected", dr6);
	vm_destroy(vm);
}

/* ICEBP's #DB returns past the instruction (VMX reports it as a privileged software
 * exception, which Keel completes before delivering; QEMU's SVM delivers it without the
 * exception intercept, so the exit is not asserted). */
TEST_F(domain, icebp_db_is_intercepted_and_returns_past_it)
{
	struct keel_vm *vm = db_vm("db-icebp", BLOB_OFF(real_db, icebp));
	uint32_t dr6, ip;

	run_to_db_reports(_metadata, vm->vcpus[0], &dr6, &ip);
	EXPECT_EQ(BLOB_OFF(real_db, after_icebp), ip) TH_LOG("the frame is not past the ICEBP");
	EXPECT_EQ(0, dr6 & ((1u << 14) | 0xf)) TH_LOG("DR6 %#x: no condition expected", dr6);
	vm_destroy(vm);
}

static void noop_handler(int sig)
{
	(void)sig;
}

/* Arms (ms > 0) or disarms a one-shot SIGALRM that interrupts a run. */
static void run_alarm(struct __test_metadata *_metadata, unsigned int ms)
{
	struct sigaction sa = { .sa_handler = noop_handler };
	const struct itimerval t = { .it_value = { .tv_sec = ms / 1000,
						   .tv_usec = (ms % 1000) * 1000 } };

	sigemptyset(&sa.sa_mask);
	ASSERT_EQ(0, sigaction(SIGALRM, &sa, NULL));
	ASSERT_EQ(0, setitimer(ITIMER_REAL, &t, NULL));
}

/* DR7.GD: a debug register access raises a #DB (BD) before it runs, and the delivery clears
 * GD, so the handler can read DR6 (a GD left set makes that read fault again, forever). */
TEST_F(domain, general_detect_db_clears_gd)
{
	struct keel_vm *vm = db_vm("db-gd", BLOB_OFF(real_db, gd));
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint32_t dr6;
	int ret;

	run_alarm(_metadata, 2000);
	ret = __vcpu_run(vcpu);
	run_alarm(_metadata, 0);
	ASSERT_EQ(0, ret) TH_LOG("the run did not end in 2 s: the handler's DR6 read looped");
	if (vcpu->run.exit.reason == KEEL_EXIT_HLT)
		SKIP(goto out, "the emulator does not implement DR7.GD");
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	dr6 = vcpu->run.exit.io.data;
	EXPECT_NE(0, dr6 & (1u << 13)) TH_LOG("DR6 %#x: BD expected", dr6);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(BLOB_OFF(real_db, gd_read), vcpu->run.exit.io.data)
		TH_LOG("the fault's frame is not the debug register read");
	EXPECT_LE(1, domain_exits(vm->domid, "exception")) TH_LOG("the #DB was not intercepted");
out:
	vm_destroy(vm);
}

/* The #AC guest at CPL 3: a GDT of ring-3 flat segments, an IDT whose vector 17 is a ring-3
 * interrupt gate to the handler (no stack switch), CR0.AM and EFLAGS.AC, and `sp`. */
static struct keel_vm *ac_vm(const char *name, uint32_t sp)
{
	struct keel_vm *vm = vm_create(name, 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	const uint64_t gdt[3] = { 0, 0x00cffb000000ffffULL, 0x00cff3000000ffffULL };
	const uint32_t handler = CODE_GPA + BLOB_OFF(ac, handler);
	const uint32_t gate[2] = { (KEEL_SEL_CODE | 3) << 16 | (handler & 0xffff),
				   (handler & 0xffff0000) | 0xee00 };
	struct keel_sregs s;
	struct keel_regs regs;

	LOAD_BLOB(vm, CODE_GPA, ac);
	vm_write(vm, AC_GDT, gdt, sizeof(gdt));
	vm_write(vm, AC_IDT + 17 * 8, gate, sizeof(gate));
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_get_sregs(vcpu, &s);
	segments_at_cpl3(&s);
	s.gdt.base = AC_GDT;
	s.gdt.limit = sizeof(gdt) - 1;
	s.idt.base = AC_IDT;
	s.idt.limit = 18 * 8 - 1;
	s.cr0 |= 1ULL << 18; /* AM */
	vcpu_set_sregs(vcpu, &s);
	vcpu_get_regs(vcpu, &regs);
	regs.rflags = X86_RFLAGS_FIXED | X86_RFLAGS_IOPL3 | (1ULL << 18); /* AC */
	regs.rsp = sp;
	vcpu_set_regs(vcpu, &regs);
	return vm;
}

TEST_F(domain, ac_is_intercepted_and_delivered)
{
	struct keel_vm *vm = ac_vm("ac", 0x8000);
	struct keel_vcpu *vcpu = vm->vcpus[0];

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	if (vcpu->run.exit.io.data == AC_MISSING)
		SKIP(goto out, "the emulator raises no #AC (QEMU's TCG checks no alignment)");
	EXPECT_EQ(0, vcpu->run.exit.io.data) TH_LOG("#AC's error code is 0");
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(CODE_GPA, vcpu->run.exit.io.data) TH_LOG("the frame is not the faulting load");
	EXPECT_LE(1, domain_exits(vm->domid, "exception")) TH_LOG("the #AC was not intercepted");
out:
	vm_destroy(vm);
}

/*
 * A misaligned stack at CPL 3 with alignment checks on: delivering the #AC pushes its frame
 * there and raises another #AC, and so on forever. On hardware the processor loops in the
 * delivery (CVE-2015-5307) and a host interrupt never gets in; intercepted, each delivery is
 * an exit, and the run still ends on its timer signal.
 */
TEST_F(domain, ac_delivery_loop_is_interrupted)
{
	struct keel_vm *vm = ac_vm("ac-loop", 0x8001);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	long long exits;
	int ret, err;

	run_alarm(_metadata, 200);
	ret = __vcpu_run(vcpu);
	err = errno;
	if (ret == 0 && vcpu->run.exit.reason == KEEL_EXIT_IO &&
	    vcpu->run.exit.io.data == AC_MISSING)
		SKIP(goto out, "the emulator raises no #AC (QEMU's TCG checks no alignment)");
	EXPECT_EQ(-1, ret) TH_LOG("the run ended: %s", keel_exit_str(&vcpu->run.exit));
	EXPECT_EQ(EINTR, err) TH_LOG("errno %s", strerrorname_np(err));
	exits = domain_exits(vm->domid, "exception");
	EXPECT_LE(100, exits) TH_LOG("%lld exception exits: not a delivery loop", exits);
out:
	run_alarm(_metadata, 0);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * An access made by an event's delivery (here a #PF frame's push on a stack in MMIO) is not
 * the instruction's at RIP: the run ends as unhandled (KVM: an internal error). Emulating the
 * store at RIP against the stack's address instead gave Dom0 a bogus MMIO write and moved
 * the guest past the store while the #GP was delivered again. */

TEST_F(domain, fault_during_event_delivery_is_unhandled)
{
	const uint64_t mmio = 0x100000;
	struct keel_vm *vm = vm_create("deliver-mmio", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	const uint64_t gdt[2] = { 0, 0x00cf9b000000ffffULL };
	const uint32_t handler = CODE_GPA + BLOB_OFF(pf_mmio_stack, handler);
	const uint32_t gate[2] = { KEEL_SEL_CODE << 16 | (handler & 0xffff),
				   (handler & 0xffff0000) | 0x8e00 };
	const uint32_t pde = 0x83; /* [0, 4 MiB) identity-mapped by a 4 MiB page; no more */
	struct keel_sregs s;
	struct keel_regs regs;

	vm_add_range(vm, mmio, SZ_4K, KEEL_RANGE_MMIO);
	LOAD_BLOB(vm, CODE_GPA, pf_mmio_stack);
	vm_write(vm, AC_GDT, gdt, sizeof(gdt));
	vm_write(vm, AC_IDT + 14 * 8, gate, sizeof(gate));
	vm_write(vm, AC_DATA, &pde, sizeof(pde));
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_get_sregs(vcpu, &s);
	s.gdt.base = AC_GDT;
	s.gdt.limit = sizeof(gdt) - 1;
	s.idt.base = AC_IDT;
	s.idt.limit = 15 * 8 - 1;
	s.cr0 |= X86_CR0_PG;
	s.cr3 = AC_DATA;
	s.cr4 |= 1ULL << 4; /* PSE */
	vcpu_set_sregs(vcpu, &s);
	vcpu_get_regs(vcpu, &regs);
	regs.rsp = mmio + 0x100;
	vcpu_set_regs(vcpu, &regs);

	vcpu_run(vcpu);
	EXPECT_EXIT(vcpu, KEEL_EXIT_UNHANDLED);
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(CODE_GPA + 5, regs.rip) TH_LOG("RIP moved past the store");
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * Triple fault. */

TEST_F(domain, triple_fault_is_shutdown)
{
	struct keel_vm *vm = vm_create("triple-fault", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];

	LOAD_BLOB(vm, CODE_GPA, ud2);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_SHUTDOWN);
	EXPECT_EQ(KEEL_SHUTDOWN_TRIPLE_FAULT, vcpu->run.exit.shutdown.kind);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

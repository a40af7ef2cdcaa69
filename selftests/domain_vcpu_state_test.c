// SPDX-License-Identifier: GPL-2.0
/*
 * domain_vcpu_state_test: a vCPU's state: its FPU/SSE state is its own (and Dom0's
 * stays Dom0's), the guest goes on where it was when the thread running it moves between CPUs,
 * the architecture's rules on the state (SET_SREGS/SET_REGS refuse an invalid one; the guest's
 * own control-register and EFER writes follow the CPU's #GP rules), and a refused entry ends
 * the run (KEEL_EXIT_ENTRY_FAILURE) while the next one enters.
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <cpuid.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "domain_test.h"

/* ---------------------------------------------------------------------------------------
 * Guest code: a real-mode blob (copied into guest RAM), a long-mode C function. */

asm(".pushsection .rodata\n"
    ".code16\n"
    /* Real mode: count in BX, report each step with an OUT, forever. */
    "blob_real_step_start:\n"
    "	mov $" KEEL_STR(PORT_OUT) ", %dx\n"
    "1:	inc %bx\n"
    "	out %al, %dx\n"
    "	jmp 1b\n"
    "blob_real_step_end:\n"
    ".code64\n"
    ".popsection\n");

BLOB(real_step);

/*
 * Sets XMM7 to (seed, ~seed), reports it with GUEST_SYNC three times and checks after each
 * run that XMM7 still holds it (the host changes its own XMM7 in between). One asm block per
 * round, so the compiler cannot use XMM7 around the hypercall.
 */
static GUEST_CODE void guest_keeps_xmm7(uint64_t seed)
{
	uint64_t v[2] = { seed, ~seed };

	for (uint64_t i = 0; i < 3; i++) {
		uint64_t w[2], rax = KEEL_HC_SYNC, rdi = i;

		__asm__ volatile("movdqu %[v], %%xmm7\n\t"
				 ".byte 0x0f, 0x01, 0xc1\n\t" /* VMCALL */
				 "movdqu %%xmm7, %[w]"
				 : [w] "=m"(w), "+a"(rax), "+D"(rdi)
				 : [v] "m"(v)
				 : "rsi", "rdx", "r8", "r10", "xmm7", "memory");
		GUEST_ASSERT_EQ(w[0], v[0]);
		GUEST_ASSERT_EQ(w[1], v[1]);
	}
	GUEST_DONE();
}

/* ---------------------------------------------------------------------------------------
 * FPU/SSE state. */

/*
 * KEEL_VCPU_RUN issued from one asm block that sets the host's XMM7 first and reads it after:
 * the guest's FPU/SSE state must not leak into Dom0's, whatever Linux does with the FPU
 * around the ioctl.
 */
static long run_with_host_xmm7(struct keel_vcpu *vcpu, const uint64_t in[2], uint64_t out[2])
{
	long ret = SYS_ioctl;

	__asm__ volatile("movdqu %[in], %%xmm7\n\t"
			 "syscall\n\t"
			 "movdqu %%xmm7, %[out]"
			 : "+a"(ret), [out] "=m"(*(uint64_t(*)[2])out)
			 : "D"((long)vcpu->fd), "S"((long)KEEL_VCPU_RUN), "d"(&vcpu->run),
			   [in] "m"(*(const uint64_t(*)[2])in)
			 : "rcx", "r11", "xmm7", "memory");
	return ret;
}

/* Each vCPU keeps its own SSE state across runs, and Dom0 keeps its own. */
TEST_F(domain, fpu_state_is_per_vcpu)
{
	struct keel_vm *vm = vm_create("fpu", 2, SZ_1M);
	struct keel_ucall uc;

	for (int i = 0; i < 2; i++) {
		vcpu_setup_long64(vm, vm->vcpus[i], GUEST_FN(guest_keeps_xmm7), 0);
		vcpu_args_set(vm->vcpus[i], 1, 0x1111111111111111ULL * (i + 1));
	}
	/* Interleaved: vCPU 0, vCPU 1, vCPU 0, ... on this thread, with a different host XMM7
	 * each time. */
	for (int round = 0; round < 4; round++) {
		for (int i = 0; i < 2; i++) {
			struct keel_vcpu *vcpu = vm->vcpus[i];
			uint64_t host[2] = { 0xabcd000000000000ULL | round << 4 | i, 0x5a5a5a5a5a5a5a5aULL };
			uint64_t after[2];

			ASSERT_EQ(0, run_with_host_xmm7(vcpu, host, after)) TH_LOG("vCPU %d", i);
			EXPECT_EQ(host[0], after[0]) TH_LOG("Dom0's XMM7 changed by vCPU %d's run", i);
			EXPECT_EQ(host[1], after[1]);
			ASSERT_EQ(round < 3 ? UCALL_SYNC : UCALL_DONE, vcpu_get_ucall(vcpu, &uc))
				TH_LOG("vCPU %d round %d: %s", i, round, keel_exit_str(&vcpu->run.exit));
			if (round < 3)
				EXPECT_EQ(round, uc.args[0]);
		}
	}
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * Running on any CPU, and states the hardware refuses. */

/* The thread running a vCPU moves between CPUs between runs: the guest goes on where it was. */
TEST_F(domain, vcpu_moves_between_cpus)
{
	struct keel_vm *vm;
	struct keel_vcpu *vcpu;
	struct keel_regs regs;
	cpu_set_t all;
	uint64_t base;

	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		SKIP(return, "one CPU online: nothing to move between");
	ASSERT_EQ(0, sched_getaffinity(0, sizeof(all), &all));
	vm = REAL_VM("migrate", 1, SZ_64K, real_step);
	vcpu = vm->vcpus[0];
	vcpu_get_regs(vcpu, &regs);
	base = regs.rbx & 0xffff;
	for (int i = 1; i <= 20; i++) {
		int cpu = i % 2;

		ASSERT_TRUE(pin_thread(pthread_self(), cpu));
		ASSERT_EQ(cpu, sched_getcpu());
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
		vcpu_get_regs(vcpu, &regs);
		ASSERT_EQ((base + i) & 0xffff, regs.rbx & 0xffff)
			TH_LOG("run %d, on CPU %d: the guest lost its place", i, cpu);
	}
	ASSERT_EQ(0, sched_setaffinity(0, sizeof(all), &all));
	vm_destroy(vm);
}

/* A state the hardware refuses ends the run with its reason; a valid one runs again. */
/* ---------------------------------------------------------------------------------------
 * The architecture's rules on a vCPU's state (keel_core::state): KEEL_VCPU_SET_SREGS and
 * SET_REGS refuse what a CPU could not be in, and the guest's own MOV to CR0/CR4 and WRMSR
 * to EFER follow the CPU's #GP rules. Each of ../shared/repro/sregs-case.c's host-harming
 * states is here. */

/* Each case changes a valid 32-bit flat state into one the architecture does not allow. */
static void bad_lma_16(struct keel_sregs *s)
{
	/* EFER.LMA without paging, in a 16-bit segment (sregs-case lme-lma-16). */
	s->cr0 = X86_CR0_ET;
	s->efer = X86_EFER_LME | X86_EFER_LMA;
	s->cs.attrib &= ~(KEEL_SEG_DB | KEEL_SEG_G);
	s->cs.limit = 0xffff;
}
static void bad_lma_pe(struct keel_sregs *s) { s->efer = X86_EFER_LME | X86_EFER_LMA; }
static void bad_nw(struct keel_sregs *s) { s->cr0 |= X86_CR0_NW; }
static void bad_pg_no_pe(struct keel_sregs *s) { s->cr0 = X86_CR0_PG | X86_CR0_ET; }
static void bad_lme_pg_no_pae(struct keel_sregs *s)
{
	s->cr0 |= X86_CR0_PG;
	s->efer = X86_EFER_LME | X86_EFER_LMA;
}
static void bad_lme_pg_no_lma(struct keel_sregs *s)
{
	s->cr0 |= X86_CR0_PG;
	s->cr4 = X86_CR4_PAE;
	s->efer = X86_EFER_LME;
}
static void bad_cs_l(struct keel_sregs *s) { s->cs.attrib = (s->cs.attrib & ~KEEL_SEG_DB) | KEEL_SEG_L; }
static void bad_cr0_high(struct keel_sregs *s) { s->cr0 |= 1ULL << 32; }
static void bad_cr4_vmxe(struct keel_sregs *s) { s->cr4 |= 1ULL << 13; }
static void bad_efer_svme(struct keel_sregs *s) { s->efer |= 1ULL << 12; }
static void bad_cr3_high(struct keel_sregs *s) { s->cr3 = 1ULL << 63; }
static void bad_tr_available(struct keel_sregs *s) { s->tr.attrib = KEEL_SEG_TYPE(0x9) | KEEL_SEG_P; }
static void bad_tr_unusable(struct keel_sregs *s) { s->tr.attrib = 0; }
static void bad_cs_data(struct keel_sregs *s) { s->cs.attrib = (s->cs.attrib & ~0xf) | 0x2; }
static void bad_ss_code(struct keel_sregs *s) { s->ss.attrib = s->cs.attrib; }
static void bad_ds_granularity(struct keel_sregs *s) { s->ds.attrib &= ~KEEL_SEG_G; }
static void bad_ldt_type(struct keel_sregs *s) { s->ldt.attrib = KEEL_SEG_TYPE(0x9) | KEEL_SEG_P; }
static void bad_gdt_base(struct keel_sregs *s) { s->gdt.base = 1ULL << 50; }
static void bad_fs_base(struct keel_sregs *s) { s->fs.base = 1ULL << 60; }

static const struct {
	const char *name;
	void (*make)(struct keel_sregs *s);
} bad_sregs[] = {
	{ "EFER.LMA without paging, 16-bit CS", bad_lma_16 },
	{ "EFER.LMA without paging, protected mode", bad_lma_pe },
	{ "CR0.NW without CD", bad_nw },
	{ "CR0.PG without PE", bad_pg_no_pe },
	{ "long mode without CR4.PAE", bad_lme_pg_no_pae },
	{ "LME and PG without LMA", bad_lme_pg_no_lma },
	{ "CS.L outside long mode", bad_cs_l },
	{ "CR0 bit 32", bad_cr0_high },
	{ "CR4.VMXE", bad_cr4_vmxe },
	{ "EFER.SVME", bad_efer_svme },
	{ "CR3 beyond the address width", bad_cr3_high },
	{ "TR an available TSS", bad_tr_available },
	{ "TR unusable", bad_tr_unusable },
	{ "CS a data segment", bad_cs_data },
	{ "SS a code segment", bad_ss_code },
	{ "DS limit above 1 MiB without G", bad_ds_granularity },
	{ "LDTR not an LDT", bad_ldt_type },
	{ "GDTR base not canonical", bad_gdt_base },
	{ "FS base not canonical", bad_fs_base },
};

static bool sregs_equal(const struct keel_sregs *a, const struct keel_sregs *b)
{
	return !memcmp(a, b, sizeof(*a));
}

TEST_F(domain, set_sregs_refuses_invalid_states)
{
	struct keel_vm *vm = vm_create("bad-sregs", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs good, bad, now;
	struct keel_regs regs, regs_now;

	LOAD_BLOB(vm, CODE_GPA, real_hlt);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_get_sregs(vcpu, &good);
	for (size_t i = 0; i < ARRAY_SIZE(bad_sregs); i++) {
		bad = good;
		bad_sregs[i].make(&bad);
		errno = 0;
		EXPECT_EQ(-1, __vcpu_set_sregs(vcpu, &bad))
			TH_LOG("%s was accepted", bad_sregs[i].name);
		EXPECT_EQ(EINVAL, errno) TH_LOG("%s: errno %s", bad_sregs[i].name,
						strerrorname_np(errno) ?: "0");
		vcpu_get_sregs(vcpu, &now);
		EXPECT_TRUE(sregs_equal(&good, &now))
			TH_LOG("the refused state (%s) changed the vCPU", bad_sregs[i].name);
	}

	/* SET_REGS: RFLAGS' reserved bits, and RIP above 4 GiB outside 64-bit mode. */
	vcpu_get_regs(vcpu, &regs);
	struct keel_regs r = regs;
	r.rflags |= 1ULL << 15;
	EXPECT_ERRNO(EINVAL, __vcpu_set_regs(vcpu, &r));
	r = regs;
	r.rflags |= 1ULL << 17; /* VM: virtual-8086 mode needs real-mode-like segments */
	EXPECT_ERRNO(EINVAL, __vcpu_set_regs(vcpu, &r));
	r = regs;
	r.rip = 1ULL << 32;
	EXPECT_ERRNO(EINVAL, __vcpu_set_regs(vcpu, &r));
	vcpu_get_regs(vcpu, &regs_now);
	EXPECT_EQ(0, memcmp(&regs, &regs_now, sizeof(regs))) TH_LOG("a refused SET_REGS changed the vCPU");

	/* The vCPU runs on, unharmed. */
	vcpu_run(vcpu);
	EXPECT_EXIT(vcpu, KEEL_EXIT_HLT);
	vm_destroy(vm);
}

/* Real mode with EFER.LME set is legal (paging is off): it runs, and stays what was set
 * (sregs-case lme-real; under QEMU it left the host CPU without paging at the next exit). */
TEST_F(domain, real_mode_with_lme_runs)
{
	struct keel_vm *vm = REAL_VM("lme-real", 1, SZ_64K, real_hlt);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs s;
	struct keel_regs regs;

	vcpu_get_sregs(vcpu, &s);
	s.efer = X86_EFER_LME;
	vcpu_set_sregs(vcpu, &s);
	for (int i = 0; i < 3; i++) {
		vcpu_get_regs(vcpu, &regs);
		regs.rip = 0;
		vcpu_set_regs(vcpu, &regs);
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	}
	vcpu_get_sregs(vcpu, &s);
	EXPECT_EQ(X86_EFER_LME, s.efer);
	EXPECT_EQ(0, s.cr0 & X86_CR0_PG);
	vm_destroy(vm);
}

#define MSR_EFER_STR "0xc0000080"
#define PT_GPA       0x10000 /* PML4; the PDPT and PD follow */

asm(".pushsection .rodata\n"
    ".code16\n"
    /* Real mode: EFER.LME by WRMSR, HLT (sregs-case guest-wrmsr-lme). */
    "blob_real_lme_start:\n"
    "	mov $" MSR_EFER_STR ", %ecx\n"
    "	rdmsr\n"
    "	or $0x100, %eax\n"
    "	wrmsr\n"
    "	hlt\n"
    "blob_real_lme_end:\n"
    ".code32\n"
    /* Protected mode to long mode the way the SDM describes (10.8.5), but with LME first:
     * EFER.LME, HLT, then CR3, CR4.PAE, CR0.PG, HLT. */
    "blob_to_long_start:\n"
    "	mov $" MSR_EFER_STR ", %ecx\n"
    "	rdmsr\n"
    "	or $0x100, %eax\n"
    "	wrmsr\n"
    "	hlt\n"
    "	mov $" KEEL_STR(PT_GPA) ", %eax\n"
    "	mov %eax, %cr3\n"
    "	mov %cr4, %eax\n"
    "	or $0x20, %eax\n"
    "	mov %eax, %cr4\n"
    "	mov %cr0, %eax\n"
    "	or $0x80000000, %eax\n"
    "	mov %eax, %cr0\n"
    "blob_to_long_hlt:\n"
    "	hlt\n"
    "blob_to_long_end:\n"
    /* EFER.LME, then CR0.PG without CR4.PAE: #GP (no IDT: a triple fault). */
    "blob_pg_no_pae_start:\n"
    "	mov $" MSR_EFER_STR ", %ecx\n"
    "	rdmsr\n"
    "	or $0x100, %eax\n"
    "	wrmsr\n"
    "	mov %cr0, %eax\n"
    "	or $0x80000000, %eax\n"
    "	mov %eax, %cr0\n"
    "	hlt\n"
    "blob_pg_no_pae_end:\n"
    /* PAE paging (no long mode) entered by the guest, then a jump through a mapping that is
     * not the identity: linear 0x40000000 -> physical 0. */
    "blob_pae_start:\n"
    "	mov $" KEEL_STR(PT_GPA) ", %eax\n"
    "	mov %eax, %cr3\n"
    "	mov %cr4, %eax\n"
    "	or $0x20, %eax\n"
    "	mov %eax, %cr4\n"
    "	mov %cr0, %eax\n"
    "	or $0x80000000, %eax\n"
    "	mov %eax, %cr0\n"
    "	mov $(0x40000000 + " KEEL_STR(CODE_GPA) " + blob_pae_high - blob_pae_start), %eax\n"
    "	jmp *%eax\n"
    "blob_pae_high:\n"
    "	hlt\n"
    "blob_pae_end:\n"
    /* The debug registers: breakpoint addresses in DR0-DR3, DR7 with all of them enabled as
     * write watchpoints (on the code, which nothing writes), HLT. */
    "blob_drs_start:\n"
    "	mov $0x1000, %eax\n"
    "	mov %eax, %dr0\n"
    "	mov %eax, %dr1\n"
    "	mov %eax, %dr2\n"
    "	mov %eax, %dr3\n"
    "	mov $0x111104ff, %eax\n"
    "	mov %eax, %dr7\n"
    "	hlt\n"
    "blob_drs_end:\n"
    /* DR7 set, HLT, then DR7 read back and written to port 0x84. */
    "blob_dr7_start:\n"
    "	mov $0x111104ff, %eax\n"
    "	mov %eax, %dr7\n"
    "	hlt\n"
    "	mov %dr7, %eax\n"
    "	out %eax, $0x84\n"
    "	hlt\n"
    "blob_dr7_end:\n"
    /* CR0.NW without CD: #GP (no IDT: a triple fault) (intctl-case guest). */
    "blob_nw_start:\n"
    "	mov %cr0, %eax\n"
    "	and $0xbfffffff, %eax\n"
    "	or $0x20000000, %eax\n"
    "	mov %eax, %cr0\n"
    "	hlt\n"
    "blob_nw_end:\n"
    ".code64\n"
    ".popsection\n");

BLOB(real_lme);
BLOB(to_long);
BLOB(pg_no_pae);
BLOB(nw);
BLOB(pae);
BLOB(drs);
BLOB(dr7);
extern const uint8_t blob_pae_high[];
extern const uint8_t blob_to_long_hlt[];

/* A real-mode guest sets EFER.LME itself: the run returns on its HLT, with LME set. */
TEST_F(domain, real_mode_guest_sets_lme)
{
	struct keel_vm *vm = REAL_VM("wrmsr-lme", 1, SZ_64K, real_lme);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs s;

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	vcpu_get_sregs(vcpu, &s);
	EXPECT_EQ(X86_EFER_LME, s.efer);
	vm_destroy(vm);
}

/* A 32-bit guest enters long mode itself, LME before PAE: each step is what a CPU does. */
TEST_F(domain, guest_enters_long_mode_itself)
{
	struct keel_vm *vm = vm_create("to-long", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint64_t *pt = gpa_hva(vm, PT_GPA, 3 * SZ_4K);
	struct keel_sregs s;

	/* Identity-map the first 2 MiB. */
	pt[0] = (PT_GPA + 0x1000) | 3;
	pt[512] = (PT_GPA + 0x2000) | 3;
	pt[1024] = 0x83;
	LOAD_BLOB(vm, CODE_GPA, to_long);
	vcpu_setup_prot32(vcpu, CODE_GPA);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	vcpu_get_sregs(vcpu, &s);
	EXPECT_EQ(X86_EFER_LME, s.efer) TH_LOG("EFER %#llx after WRMSR", (ull)s.efer);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(CODE_GPA + BLOB_OFF(to_long, hlt), vcpu->run.exit.rip);
	vcpu_get_sregs(vcpu, &s);
	EXPECT_EQ(X86_EFER_LME | X86_EFER_LMA, s.efer);
	EXPECT_TRUE(s.cr0 & X86_CR0_PG);
	EXPECT_TRUE(s.cr4 & X86_CR4_PAE);
	EXPECT_EQ(PT_GPA, s.cr3);
	/* Compatibility mode: the 32-bit code segment runs on. */
	EXPECT_FALSE(s.cs.attrib & KEEL_SEG_L);
	vm_destroy(vm);
}

/* CR0.PG with EFER.LME but without CR4.PAE raises #GP, as on a CPU: the guest (no IDT)
 * triple-faults and paging stays off. */
TEST_F(domain, paging_with_lme_without_pae_faults)
{
	struct keel_vm *vm = vm_create("pg-no-pae", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs s;

	LOAD_BLOB(vm, CODE_GPA, pg_no_pae);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_SHUTDOWN);
	vcpu_get_sregs(vcpu, &s);
	EXPECT_FALSE(s.cr0 & X86_CR0_PG);
	EXPECT_EQ(X86_EFER_LME, s.efer);
	vm_destroy(vm);
}

/* A 32-bit guest turns on PAE paging itself: with EPT, VMX takes the four PDPTEs from the
 * VMCS at entry, so Keel loads them from the guest's memory when it completes the MOV to CR0
 * (stale ones made the first fetch fault). */
TEST_F(domain, guest_enters_pae_paging_itself)
{
	struct keel_vm *vm = vm_create("pae", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint64_t *pdpt = gpa_hva(vm, PT_GPA, SZ_4K);
	uint64_t *pd_low = gpa_hva(vm, PT_GPA + 0x1000, SZ_4K);
	uint64_t *pd_high = gpa_hva(vm, PT_GPA + 0x2000, SZ_4K);
	struct keel_sregs s;

	/* PDPTEs: present, nothing else (R/W is reserved in them). 2 MiB pages. */
	pdpt[0] = (PT_GPA + 0x1000) | 1;
	pdpt[1] = (PT_GPA + 0x2000) | 1;
	pd_low[0] = 0x83;
	pd_high[0] = 0x83;
	LOAD_BLOB(vm, CODE_GPA, pae);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(0x40000000 + CODE_GPA + BLOB_OFF(pae, high), vcpu->run.exit.rip);
	vcpu_get_sregs(vcpu, &s);
	EXPECT_TRUE(s.cr0 & X86_CR0_PG);
	EXPECT_TRUE(s.cr4 & X86_CR4_PAE);
	EXPECT_EQ(0, s.efer);
	vm_destroy(vm);
}

/* Dom0's hardware breakpoints survive a DomU run: no VM entry or exit switches DR0-DR3 (nor,
 * on VMX, DR6), so Keel does, around each run; a guest that writes them must not move Dom0's
 * breakpoints. A write watchpoint on a variable counts the writes before and after runs of a
 * guest that points every breakpoint elsewhere. */
static volatile uint32_t watched;

TEST_F(domain, dom0_breakpoints_survive_domu_runs)
{
	struct perf_event_attr attr = {
		.type = PERF_TYPE_BREAKPOINT,
		.size = sizeof(attr),
		.bp_type = HW_BREAKPOINT_W,
		.bp_addr = (uintptr_t)&watched,
		.bp_len = HW_BREAKPOINT_LEN_4,
		.exclude_kernel = 1,
		.exclude_hv = 1,
	};
	struct keel_vm *vm = vm_create("drs", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint64_t count = 0;
	int fd;

	LOAD_BLOB(vm, CODE_GPA, drs);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	fd = syscall(__NR_perf_event_open, &attr, 0, -1, -1, 0);
	if (fd < 0)
		SKIP(goto out, "no hardware breakpoint: %s", strerror(errno));
	ASSERT_TRUE(pin_thread(pthread_self(), 0));
	watched++;
	ASSERT_EQ(sizeof(count), read(fd, &count, sizeof(count)));
	if (count != 1)
		SKIP(goto close, "the CPU delivered %llu of 1 data breakpoints before any DomU ran",
		     (ull)count);
	for (int i = 0; i < 5; i++) {
		struct keel_regs regs;

		vcpu_get_regs(vcpu, &regs);
		regs.rip = CODE_GPA;
		vcpu_set_regs(vcpu, &regs);
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
		watched++;
	}
	ASSERT_EQ(sizeof(count), read(fd, &count, sizeof(count)));
	EXPECT_EQ(6, count) TH_LOG("Dom0's watchpoint fired %llu times for 6 writes", (ull)count);
close:
	close(fd);
out:
	vm_destroy(vm);
}

/* The guest's DR7 is its own across Dom0's changes to the vCPU's state (SET_REGS reloads the
 * state: on SVM that reset DR7 to 0x400). */
TEST_F(domain, guest_dr7_survives_set_regs)
{
	struct keel_vm *vm = vm_create("dr7", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_regs regs;

	LOAD_BLOB(vm, CODE_GPA, dr7);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	vcpu_get_regs(vcpu, &regs);
	vcpu_set_regs(vcpu, &regs);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_IO);
	EXPECT_EQ(0x84, vcpu->run.exit.io.port);
	EXPECT_EQ(0x111104ff, vcpu->run.exit.io.data);
	vm_destroy(vm);
}

/* CR0.NW without CR0.CD raises #GP, as on a CPU (QEMU's TCG lets the MOV through and its
 * next VMRUN refuses the state: Keel checks the write itself on SVM). */
TEST_F(domain, guest_nw_without_cd_faults)
{
	struct keel_vm *vm = vm_create("nw", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs s;

	LOAD_BLOB(vm, CODE_GPA, nw);
	vcpu_setup_prot32(vcpu, CODE_GPA);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_SHUTDOWN);
	vcpu_get_sregs(vcpu, &s);
	EXPECT_FALSE(s.cr0 & X86_CR0_NW);
	vm_destroy(vm);
}

/* A MOV to CR3 with a reserved bit (60: above any MAXPHYADDR) set: #GP, CR3 unchanged (no
 * IDT: a triple fault). Keel does not intercept CR3 writes: the processor checks them. */
static GUEST_CODE void guest_cr3_reserved(void)
{
	uint64_t cr3;

	__asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3 | 1ULL << 60) : "memory");
	__asm__ volatile("hlt");
}

static bool host_is_amd(void)
{
	unsigned int a, b, c, d;

	__cpuid(0, a, b, c, d);
	return b == 0x68747541; /* "Auth" */
}

TEST_F(domain, guest_cr3_reserved_bits_fault)
{
	struct keel_vm *vm = vm_create("cr3-rsvd", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs s;

	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_cr3_reserved), 0);
	vcpu_run(vcpu);
	/* QEMU's TCG ends a nested guest's MOV to CR3 with reserved bits (and to CR4 with
	 * reserved bits) with #VMEXIT(VMEXIT_INVALID), as if a VMRUN had failed, where the
	 * processor raises #GP (helper_write_crN in target/i386/tcg/system/misc_helper.c).
	 * The guest only ends its own run. */
	if (host_is_amd() && vcpu->run.exit.reason == KEEL_EXIT_ENTRY_FAILURE)
		SKIP(goto out, "QEMU's TCG ends the guest with VMEXIT_INVALID instead of #GP");
	ASSERT_EXIT(vcpu, KEEL_EXIT_SHUTDOWN);
	vcpu_get_sregs(vcpu, &s);
	EXPECT_EQ(0, s.cr3 >> 52) TH_LOG("CR3 took the reserved bit: %#llx", (unsigned long long)s.cr3);
out:
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * A refused entry (forced through debugfs fail_entries: Keel enters no invalid state) ends
 * the run with KEEL_EXIT_ENTRY_FAILURE; the next run enters. */

TEST_F(domain, refused_entry_is_reported)
{
	struct keel_vm *vm = REAL_VM("refused", 1, SZ_64K, real_hlt);
	struct keel_vcpu *vcpu = vm->vcpus[0];

	if (!force_entry_failures(1))
		SKIP(goto out, "cannot write %s", FAIL_ENTRIES);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_ENTRY_FAILURE);
	EXPECT_NE(0, vcpu->run.exit.fail.hw_reason);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
out:
	force_entry_failures(0);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

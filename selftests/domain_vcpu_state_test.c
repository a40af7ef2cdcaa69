// SPDX-License-Identifier: GPL-2.0
/*
 * domain_vcpu_state_test: a vCPU's state: its FPU/SSE state is its own (and Dom0's
 * stays Dom0's), the guest goes on where it was when the thread running it moves between CPUs,
 * and a state the hardware refuses ends the run (KEEL_EXIT_ENTRY_FAILURE) while a valid one
 * runs again.
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
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
TEST_F(domain, invalid_state_is_entry_failure)
{
	struct keel_vm *vm = REAL_VM("bad-state", 1, SZ_64K, real_hlt);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_sregs good, bad;

	vcpu_get_sregs(vcpu, &good);
	bad = good;
	/*
	 * Paging with EFER.LME but without PAE or LMA, and CR0.NW without CD: VMX's entry checks
	 * (EFER.LME must match the IA-32e mode control when CR0.PG is set) and SVM's VMRUN checks
	 * (NW without CD) both refuse it.
	 */
	bad.cr0 = X86_CR0_PE | X86_CR0_PG | X86_CR0_ET | X86_CR0_NE | (1ULL << 29);
	bad.cr4 = 0;
	bad.efer = X86_EFER_LME;
	vcpu_set_sregs(vcpu, &bad);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_ENTRY_FAILURE);
	EXPECT_NE(0, vcpu->run.exit.fail.hw_reason);

	vcpu_set_sregs(vcpu, &good);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/ucall.h - guest -> host reports ("ucalls") for Keel's domain tests, KVM-selftests style.
 *
 * A ucall is a hypercall with a number in a private range (KEEL_UCALL_BASE + n) that Keel
 * does not handle, so the run ends with KEEL_EXIT_HYPERCALL; Xen's convention: 64-bit guests
 * pass the number in rax and arguments in rdi, rsi, rdx, r10, r8; 32-bit guests in eax and
 * ebx, ecx, edx, esi, edi. GUEST_SYNC(v), GUEST_DONE(), GUEST_ASSERT(cond),
 * GUEST_ASSERT_EQ(a, b). vcpu_run_report() runs a vCPU and fails the test on a failed
 * GUEST_ASSERT, printing "file:line: expression"; vcpu_run_ucall() only decodes.
 *
 * The guest side (GUEST_CODE functions, the GUEST_* macros) runs in long mode at the virtual
 * addresses the test binary has (lib/x86.h): the assertion strings are read from the guest's
 * copy of the image.
 */
#ifndef KEEL_UCALL_H
#define KEEL_UCALL_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

struct keel_vcpu;

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

/*
 * Where a long-mode guest function returns to (vcpu_setup_long64() puts its address at the
 * top of the stack): it reports UCALL_DONE, again whenever it is run again. In .text, so it is
 * part of the image the guest maps.
 */
extern const char keel_guest_return[];

/* ---------------------------------------------------------------------------------------
 * Host side. */

/* Decodes the last exit as a ucall (UCALL_NONE when it is none), without judging it. */
uint64_t vcpu_get_ucall(struct keel_vcpu *vcpu, struct keel_ucall *uc);
/* vcpu_run() + vcpu_get_ucall(). */
uint64_t vcpu_run_ucall(struct keel_vcpu *vcpu, struct keel_ucall *uc);
/* vcpu_run() that fails the test on a failed GUEST_ASSERT ("file:line: expression") and on any
 * exit that is not a ucall. Returns UCALL_SYNC or UCALL_DONE; `uc` may be NULL. */
uint64_t vcpu_run_report(struct keel_vcpu *vcpu, struct keel_ucall *uc);

#endif /* KEEL_UCALL_H */

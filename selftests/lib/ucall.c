// SPDX-License-Identifier: GPL-2.0
/*
 * lib/ucall.c - the host side of lib/ucall.h: the guest's return stub and the decoding of the
 * guest's reports.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guest.h"

asm(".pushsection .text\n"
    ".globl keel_guest_return\n"
    ".type keel_guest_return, @function\n"
    "keel_guest_return:\n"
    "	mov $" KEEL_STR(KEEL_HC_DONE) ", %eax\n"
    "	.byte 0x0f, 0x01, 0xc1\n" /* vmcall */
    "	jmp keel_guest_return\n"
    ".size keel_guest_return, . - keel_guest_return\n"
    ".popsection\n");

/* A NUL-terminated string at a guest-virtual address, as far as it is readable. */
static void copy_guest_string(struct keel_vm *vm, uint64_t gva, char *buf, size_t len)
{
	for (size_t i = 0; i < len - 1; i++) {
		const char *c = gva_hva_try(vm, gva + i, 1);

		if (!c) {
			snprintf(buf, len, "<unreadable guest string at %#llx>", (ull)gva);
			return;
		}
		buf[i] = *c;
		if (!*c)
			return;
	}
	buf[len - 1] = 0;
}

uint64_t vcpu_get_ucall(struct keel_vcpu *vcpu, struct keel_ucall *uc)
{
	const struct keel_exit *e = &vcpu->run.exit;
	struct keel_ucall scratch;

	if (!uc)
		uc = &scratch;
	memset(uc, 0, sizeof(*uc));
	if (e->reason != KEEL_EXIT_HYPERCALL)
		return UCALL_NONE;
	memcpy(uc->args, e->hypercall.args, sizeof(uc->args));
	switch (e->hypercall.nr) {
	case KEEL_HC_SYNC:
		uc->cmd = UCALL_SYNC;
		break;
	case KEEL_HC_DONE:
		uc->cmd = UCALL_DONE;
		break;
	case KEEL_HC_ASSERT_VALUES:
		uc->has_values = true;
		uc->values[0] = uc->args[3];
		uc->values[1] = uc->args[4];
		/* fall through */
	case KEEL_HC_ASSERT:
		uc->cmd = UCALL_ASSERT;
		copy_guest_string(vcpu->vm, uc->args[0], uc->file, sizeof(uc->file));
		uc->line = uc->args[1];
		copy_guest_string(vcpu->vm, uc->args[2], uc->expr, sizeof(uc->expr));
		break;
	}
	return uc->cmd;
}

uint64_t vcpu_run_ucall(struct keel_vcpu *vcpu, struct keel_ucall *uc)
{
	vcpu_run(vcpu);
	return vcpu_get_ucall(vcpu, uc);
}

uint64_t vcpu_run_report(struct keel_vcpu *vcpu, struct keel_ucall *uc)
{
	struct keel_ucall scratch;
	uint64_t cmd;

	if (!uc)
		uc = &scratch;
	cmd = vcpu_run_ucall(vcpu, uc);
	if (cmd == UCALL_ASSERT) {
		fflush(stdout);
		fprintf(stderr, "# guest assertion failed on vCPU %u of '%s':\n# %s:%u: %s\n",
			vcpu->id, vcpu->vm->name, uc->file, uc->line, uc->expr);
		if (uc->has_values)
			fprintf(stderr, "#   left %#llx (%lld), right %#llx (%lld)\n",
				(ull)uc->values[0], (long long)uc->values[0], (ull)uc->values[1],
				(long long)uc->values[1]);
		abort();
	}
	KEEL_ASSERT(cmd != UCALL_NONE, "'%s': expected a report from the guest, got an exit: %s",
		    vcpu->vm->name, keel_exit_str(&vcpu->run.exit));
	return cmd;
}

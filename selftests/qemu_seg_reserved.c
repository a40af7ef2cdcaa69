// SPDX-License-Identifier: GPL-2.0
/*
 * qemu_seg_reserved: a real-mode guest that executes `mov %di, %seg7` (8E FF: MOV to a segment
 * register with a reserved number, #UD on a CPU), then HLT. QEMU 10's x86 translator crashes
 * on it (SIGSEGV in tcg_optimize): scripts/test runs it under `run-vm --last-blocks` to check
 * that such a crash names the instruction (scripts/qemu-plugins/known-crash), which is how the
 * test command tells a known QEMU bug that a hostile guest reached from a failure of Keel's.
 * Prints "survived" when the emulator runs it (Bochs; a QEMU without the bug).
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "guest.h"
#include "x86.h"

#define CODE_GPA 0x12000

static const unsigned char code[] = {
	0x8e, 0xff, /* mov %di, %seg7 */
	0xf4,       /* hlt */
};

int main(void)
{
	struct keel_vm *vm = vm_create("seg7", 1, 0x100000);
	struct keel_vcpu *vcpu = vm->vcpus[0];

	vm_write(vm, CODE_GPA, code, sizeof(code));
	vcpu_setup_real(vcpu, CODE_GPA, 0);
	/* The run ends at the HLT, or in an exit for the #UD; either way the emulator lived. */
	alarm(5);
	printf("exit: %s\nsurvived\n", keel_exit_str(vcpu_run(vcpu)));
	vm_destroy(vm);
	return 0;
}

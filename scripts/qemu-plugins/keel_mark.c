// SPDX-License-Identifier: GPL-2.0
/*
 * keel_mark clear|dump: the marker instruction of scripts/qemu-plugins/insn_profile.c, for
 * scripts in a VM run with that plugin (elsewhere it only loads a number into a register).
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "clear"))
		asm volatile("movabs $0x4b45454c00000001, %%rax" ::: "rax");
	else if (argc == 2 && !strcmp(argv[1], "dump"))
		asm volatile("movabs $0x4b45454c00000002, %%rax" ::: "rax");
	else {
		fprintf(stderr, "usage: keel_mark clear|dump\n");
		return 2;
	}
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * A QEMU TCG plugin for Keel's benchmarks: counts the instructions each translated block
 * executes, on every CPU, and writes the counts when the guest asks. Under -icount the
 * clock counts instructions, so these counts are where a benchmark's time went, Dom0,
 * root mode and a nested DomU alike (the DomU's code runs in the same emulated CPUs).
 *
 * The guest asks with a marker instruction, `movabs $0x4b45454c0000000N, %rax` ("KEEL" and
 * a command N; scripts/qemu-plugins/keel_mark.c): N=1 clears the counts, N=2 writes them to
 * OUT.K (K = 0, 1, ... in order) and clears them. Each line of OUT.K is
 *   count vaddr paddr insns
 * for a block that ran since the last clear: instructions executed, the block's virtual
 * address, where its code is in the machine (qemu_plugin_insn_haddr, which tells the copy of
 * the kernel that the DomU runs from Dom0's, both at the same virtual addresses) and its
 * length in instructions (count / insns: the times it ran).
 *
 * For -icount (one thread runs every CPU): the counters and the list of blocks take no lock.
 *
 * usage: -plugin scripts/qemu-plugins/insn_profile.so,out=PREFIX
 *
 * Built by profile.sh (gcc -shared -fPIC).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_api.h"

EXPORT int qemu_plugin_version = 3;

/* One translation of a block; a block translated again gets another (the report adds). */
struct block {
	uint64_t vaddr, paddr, hits;
	uint32_t insns;
};

static struct block **blocks;
static size_t nblocks, capblocks;
static const char *out = "insn-profile";
static unsigned dumps;

static void ran(unsigned int vcpu, void *data)
{
	(void)vcpu;
	((struct block *)data)->hits++;
}

static void clear(void)
{
	for (size_t i = 0; i < nblocks; i++)
		blocks[i]->hits = 0;
}

static void dump(void)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s.%u", out, dumps++);
	FILE *f = fopen(path, "w");
	if (!f) {
		qemu_plugin_outs("insn_profile: cannot write the profile\n");
		return;
	}
	for (size_t i = 0; i < nblocks; i++) {
		struct block *b = blocks[i];
		if (b->hits)
			fprintf(f, "%" PRIu64 " %" PRIx64 " %" PRIx64 " %" PRIu32 "\n",
				b->hits * b->insns, b->vaddr, b->paddr, b->insns);
	}
	fclose(f);
	clear();
}

static void marker(unsigned int vcpu, void *data)
{
	(void)vcpu;
	if ((uintptr_t)data == 1)
		clear();
	else if ((uintptr_t)data == 2)
		dump();
}

static void translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	(void)id;
	size_t n = qemu_plugin_tb_n_insns(tb);
	struct block *b = calloc(1, sizeof(*b));
	if (!b || n == 0)
		abort();
	b->vaddr = qemu_plugin_tb_vaddr(tb);
	b->paddr = (uintptr_t)qemu_plugin_insn_haddr(qemu_plugin_tb_get_insn(tb, 0));
	b->insns = n;
	if (nblocks == capblocks) {
		capblocks = capblocks ? capblocks * 2 : 65536;
		blocks = realloc(blocks, capblocks * sizeof(*blocks));
		if (!blocks)
			abort();
	}
	blocks[nblocks++] = b;
	qemu_plugin_register_vcpu_tb_exec_cb(tb, ran, CB_NO_REGS, b);
	for (size_t i = 0; i < n; i++) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
		uint8_t code[10];
		/* movabs $0x4b45454c0000000N, %rax: REX.W B8 and an 8-byte immediate. */
		if (qemu_plugin_insn_data(insn, code, sizeof(code)) == sizeof(code) &&
		    code[0] == 0x48 && code[1] == 0xb8 && !memcmp(code + 6, "LEEK", 4) &&
		    code[3] == 0 && code[4] == 0 && code[5] == 0 && code[2] >= 1 && code[2] <= 2)
			qemu_plugin_register_vcpu_insn_exec_cb(insn, marker, CB_NO_REGS,
							       (void *)(uintptr_t)code[2]);
	}
}

static void at_exit(qemu_plugin_id_t id, void *data)
{
	(void)id;
	(void)data;
	dump();
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
			       char **argv)
{
	(void)info;
	for (int i = 0; i < argc; i++) {
		if (!strncmp(argv[i], "out=", 4))
			out = argv[i] + 4;
		else
			return -1;
	}
	qemu_plugin_register_vcpu_tb_trans_cb(id, translated);
	qemu_plugin_register_atexit_cb(id, at_exit, NULL);
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * A QEMU TCG plugin for run-vm --last-blocks: keeps the guest code of the last blocks QEMU
 * translated (the instructions' bytes, each block's address) in a file mapped shared, so that
 * when QEMU itself crashes the file still says what it was translating. A translation
 * writes the file before QEMU optimizes and compiles the block, where its own bugs in an
 * instruction's translation crash it.
 *
 * For single-threaded TCG (run-vm --tcg-single): with a thread per CPU, two translations at
 * once could share a slot.
 *
 * usage: -plugin last_blocks.so,out=FILE
 * FILE then holds SLOTS text slots, each NUL-padded: "seq N vaddr X insns K: HEX HEX ...\n"
 * (one HEX per instruction, its bytes); the slot with the highest N is the last block.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "plugin_api.h"

EXPORT int qemu_plugin_version = 3;

#define SLOT 4096
#define SLOTS 8

static char *slots;
static uint64_t seq;

static void translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	(void)id;
	char *p = slots + (seq % SLOTS) * SLOT;
	size_t n = qemu_plugin_tb_n_insns(tb), o;

	o = (size_t)snprintf(p, SLOT, "seq %" PRIu64 " vaddr %" PRIx64 " insns %zu:", seq,
			     qemu_plugin_tb_vaddr(tb), n);
	/* Room for the longest instruction (15 bytes: 31 characters) and the newline. */
	for (size_t i = 0; i < n && o + 34 < SLOT; i++) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
		uint8_t b[16];
		size_t len = qemu_plugin_insn_size(insn);

		if (len > sizeof(b))
			len = sizeof(b);
		len = qemu_plugin_insn_data(insn, b, len);
		p[o++] = ' ';
		for (size_t k = 0; k < len; k++)
			o += (size_t)snprintf(p + o, SLOT - o, "%02x", b[k]);
	}
	p[o++] = '\n';
	memset(p + o, 0, SLOT - o);
	seq++;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
			       char **argv)
{
	(void)info;
	if (argc != 1 || strncmp(argv[0], "out=", 4))
		return -1;
	int fd = open(argv[0] + 4, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return -1;
	if (ftruncate(fd, SLOT * SLOTS)) {
		close(fd);
		return -1;
	}
	slots = mmap(NULL, SLOT * SLOTS, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (slots == MAP_FAILED)
		return -1;
	qemu_plugin_register_vcpu_tb_trans_cb(id, translated);
	return 0;
}

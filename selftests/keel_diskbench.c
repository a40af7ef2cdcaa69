// SPDX-License-Identifier: GPL-2.0
/*
 * keel_diskbench: the fio-style jobs of scripts/bench-disk, run the same way on a DomU's PV
 * disk and on its image file in Dom0. Static, no libc beyond what the initramfs needs.
 *
 * usage: keel_diskbench [--job JOB] [--size MIB] [--rand-ops N] [--depth QD] PATH
 *   JOB: all (the default: the three below, in this order), seqwrite, seqread or randread
 *   seqwrite  1 MiB writes, one at a time, over the first MIB MiB of PATH, then fsync
 *   seqread   1 MiB reads, one at a time, over the same range
 *   randread  4 KiB reads at random 4 KiB-aligned offsets of that range, QD in flight
 *             (Linux AIO), N of them
 * PATH is opened with O_DIRECT (the page cache bypassed, as a DomU's requests reach its
 * backend) unless it refuses it (tmpfs): then buffered, and it says so. Prints, per job:
 *   diskbench JOB bytes=B us=T mibps=M iops=I direct=0|1
 * Exit status: 0, or 1 with a message when PATH cannot be used or an I/O fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024 * 1024)
#define BLOCK 4096
#define MAX_DEPTH 256

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void report(const char *job, uint64_t bytes, uint64_t ops, uint64_t us, int direct)
{
	if (!us)
		us = 1;
	printf("diskbench %s bytes=%llu us=%llu mibps=%llu.%02llu iops=%llu direct=%d\n", job,
	       (unsigned long long)bytes, (unsigned long long)us,
	       (unsigned long long)(bytes * 1000000 / us / MIB),
	       (unsigned long long)(bytes * 100000000 / us / MIB % 100),
	       (unsigned long long)(ops * 1000000 / us), direct);
	fflush(stdout);
}

static int fail(const char *what)
{
	fprintf(stderr, "keel_diskbench: %s: %s\n", what, strerror(errno));
	return 1;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

int main(int argc, char **argv)
{
	unsigned long size_mib = 64, rand_ops = 4096, depth = 32;
	const char *path = NULL, *job = "all";
	struct iocb cbs[MAX_DEPTH], *ptrs[MAX_DEPTH];
	struct io_event events[MAX_DEPTH];
	aio_context_t ctx = 0;
	uint64_t seed = 0x9e3779b97f4a7c15ULL, t0, bytes, issued = 0, done = 0;
	unsigned long blocks, free_slots[MAX_DEPTH], nfree = 0;
	char *buf, *small;
	int fd, direct = 1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--job") && i + 1 < argc)
			job = argv[++i];
		else if (!strcmp(argv[i], "--size") && i + 1 < argc)
			size_mib = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--rand-ops") && i + 1 < argc)
			rand_ops = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--depth") && i + 1 < argc)
			depth = strtoul(argv[++i], NULL, 0);
		else if (argv[i][0] != '-' && !path)
			path = argv[i];
		else {
			fprintf(stderr, "usage: keel_diskbench [--job all|seqwrite|seqread|randread] "
					"[--size MIB] [--rand-ops N] [--depth QD] PATH\n");
			return 2;
		}
	}
	if (strcmp(job, "all") && strcmp(job, "seqwrite") && strcmp(job, "seqread") &&
	    strcmp(job, "randread")) {
		fprintf(stderr, "keel_diskbench: no job '%s'\n", job);
		return 2;
	}
	if (!path || !size_mib || !rand_ops || !depth || depth > MAX_DEPTH) {
		fprintf(stderr, "keel_diskbench: a PATH, a size, a count and a depth of 1 to %d\n",
			MAX_DEPTH);
		return 2;
	}
	fd = open(path, O_RDWR | O_DIRECT);
	if (fd < 0 && errno == EINVAL) {
		direct = 0;
		fd = open(path, O_RDWR);
	}
	if (fd < 0)
		return fail(path);
	if (posix_memalign((void **)&buf, BLOCK, MIB) ||
	    posix_memalign((void **)&small, BLOCK, (size_t)depth * BLOCK))
		return fail("memory");
	for (size_t i = 0; i < MIB; i++)
		buf[i] = (char)(i * 131 + 7);

	bytes = (uint64_t)size_mib * MIB;
	if (!strcmp(job, "all") || !strcmp(job, "seqwrite")) {
		t0 = now_us();
		for (uint64_t off = 0; off < bytes; off += MIB)
			if (pwrite(fd, buf, MIB, (off_t)off) != MIB)
				return fail("seqwrite");
		if (fsync(fd))
			return fail("fsync");
		report("seqwrite", bytes, size_mib, now_us() - t0, direct);
	}
	if (!strcmp(job, "all") || !strcmp(job, "seqread")) {
		t0 = now_us();
		for (uint64_t off = 0; off < bytes; off += MIB)
			if (pread(fd, buf, MIB, (off_t)off) != MIB)
				return fail("seqread");
		report("seqread", bytes, size_mib, now_us() - t0, direct);
	}
	if (strcmp(job, "all") && strcmp(job, "randread")) {
		close(fd);
		return 0;
	}

	if (syscall(SYS_io_setup, depth, &ctx))
		return fail("io_setup");
	blocks = size_mib * (MIB / BLOCK);
	for (unsigned long i = 0; i < depth; i++)
		free_slots[nfree++] = i;
	t0 = now_us();
	while (done < rand_ops) {
		int n = 0, got;

		/* Fill the queue back to the depth: each free slot gets a new read. */
		while (nfree && issued < rand_ops) {
			unsigned long slot = free_slots[--nfree];

			memset(&cbs[slot], 0, sizeof(cbs[slot]));
			cbs[slot].aio_fildes = fd;
			cbs[slot].aio_lio_opcode = IOCB_CMD_PREAD;
			cbs[slot].aio_buf = (uint64_t)(uintptr_t)(small + slot * BLOCK);
			cbs[slot].aio_nbytes = BLOCK;
			cbs[slot].aio_offset = (int64_t)(xorshift(&seed) % blocks) * BLOCK;
			ptrs[n++] = &cbs[slot];
			issued++;
		}
		if (n && syscall(SYS_io_submit, ctx, n, ptrs) != n)
			return fail("io_submit");
		got = syscall(SYS_io_getevents, ctx, 1, depth, events, NULL);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			return fail("io_getevents");
		}
		for (int i = 0; i < got; i++) {
			if (events[i].res != BLOCK) {
				errno = events[i].res < 0 ? (int)-events[i].res : EIO;
				return fail("randread");
			}
			free_slots[nfree++] = (struct iocb *)(uintptr_t)events[i].obj - cbs;
		}
		done += got;
	}
	report("randread", rand_ops * BLOCK, rand_ops, now_us() - t0, direct);
	syscall(SYS_io_destroy, ctx);
	close(fd);
	return 0;
}

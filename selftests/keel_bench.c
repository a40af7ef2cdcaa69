// SPDX-License-Identifier: GPL-2.0
/*
 * keel_bench: a fixed Dom0 workload, timed. Prints "<name> <nanoseconds>" per part and a total.
 * Under QEMU with -icount, guest time counts instructions, so the figures repeat run to run;
 * scripts/bench-launch runs it before and after insmod keel.ko.
 *
 * Parts: a CPU-bound loop, fork/exec of /bin/true, file I/O on a tmpfs, and CPUID (which exits
 * to Keel when it is loaded: the worst case for Dom0).
 */
#include <cpuid.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static volatile uint64_t sink;

static void cpu_loop(void)
{
	uint64_t x = 1;

	for (long i = 0; i < 20000000; i++)
		x = x * 6364136223846793005ull + 1442695040888963407ull;
	sink = x;
}

static void fork_exec(void)
{
	for (int i = 0; i < 200; i++) {
		pid_t pid = fork();

		if (pid == 0) {
			execl("/bin/true", "true", NULL);
			_exit(127);
		}
		waitpid(pid, NULL, 0);
	}
}

static void file_io(void)
{
	static char buf[1 << 16];
	int fd;

	mkdir("/tmp/bench", 0700);
	mount("tmpfs", "/tmp/bench", "tmpfs", 0, "size=64m");
	memset(buf, 0x5a, sizeof(buf));
	for (int round = 0; round < 8; round++) {
		fd = open("/tmp/bench/f", O_CREAT | O_RDWR | O_TRUNC, 0600);
		for (int i = 0; i < 256; i++)
			if (write(fd, buf, sizeof(buf)) != sizeof(buf))
				exit(1);
		lseek(fd, 0, SEEK_SET);
		while (read(fd, buf, sizeof(buf)) > 0)
			;
		close(fd);
	}
	umount("/tmp/bench");
}

static void cpuid_loop(void)
{
	unsigned int a, b, c, d;

	for (int i = 0; i < 20000; i++)
		__cpuid_count(0, 0, a, b, c, d);
	sink = a;
}

int main(int argc, char **argv)
{
	struct { const char *name; void (*fn)(void); } parts[] = {
		{ "cpu_loop", cpu_loop }, { "fork_exec", fork_exec },
		{ "file_io", file_io }, { "cpuid", cpuid_loop },
	};
	uint64_t total = 0;

	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		uint64_t t0, dt;
		int wanted = argc < 2;

		for (int a = 1; a < argc; a++)
			wanted |= !strcmp(argv[a], parts[i].name);
		if (!wanted)
			continue;
		t0 = now_ns();

		parts[i].fn();
		dt = now_ns() - t0;
		total += dt;
		printf("%s %llu\n", parts[i].name, (unsigned long long)dt);
	}
	printf("total %llu\n", (unsigned long long)total);
	return 0;
}

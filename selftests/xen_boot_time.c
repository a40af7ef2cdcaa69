// SPDX-License-Identifier: GPL-2.0
/*
 * xen_boot_time: times a DomU's launch in Dom0's CLOCK_MONOTONIC (virtual time under QEMU's
 * -icount): runs COMMAND (e.g. `keelctl create CFG`), then watches LOG (keel-domd's console
 * log) with inotify and prints, for each PATTERN in turn, when a line containing it first
 * appeared, counted from just before COMMAND started:
 *   command-ns N          COMMAND returned
 *   at-ns PATTERN N       PATTERN appeared in LOG
 * A benchmark helper (scripts/bench-domu-boot, scripts/bench-xen). Sleeps in inotify between
 * the log's writes, so that its own work stays out of the figure as far as it can; where the
 * kernel has no inotify (the test kernel: CONFIG_INOTIFY_USER is off) it reads the log every
 * -i milliseconds (default 2): each figure is then late by up to that, and the reads cost
 * Dom0 a few thousand instructions each. Exit status: 0 once every pattern was seen, 1 on a
 * timeout or COMMAND's failure.
 *
 * usage: xen_boot_time [-t SECONDS] [-i MS] LOG PATTERN... -- COMMAND [ARG...]
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
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

int main(int argc, char **argv)
{
	int timeout_s = 600, interval_ms = 2, opt, npat = 0, next = 0, ino, fd = -1;
	char *log, *dir, **pat, **cmd = NULL;
	static char buf[1 << 20];
	size_t len = 0, scanned = 0, maxpat = 0;
	uint64_t t0, deadline;
	pid_t pid;
	int status;

	while ((opt = getopt(argc, argv, "+t:i:")) != -1) {
		if (opt == 't')
			timeout_s = atoi(optarg);
		else if (opt == 'i' && atoi(optarg) > 0)
			interval_ms = atoi(optarg);
		else
			goto usage;
	}
	if (optind + 2 > argc)
		goto usage;
	log = argv[optind++];
	pat = &argv[optind];
	for (; optind < argc && strcmp(argv[optind], "--"); optind++)
		npat++;
	if (optind + 1 >= argc || !npat)
		goto usage;
	cmd = &argv[optind + 1];
	for (int i = 0; i < npat; i++)
		if (strlen(pat[i]) > maxpat)
			maxpat = strlen(pat[i]);

	dir = dirname(strdup(log));
	mkdir(dir, 0755);
	ino = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (ino >= 0 && inotify_add_watch(ino, dir, IN_CREATE | IN_MODIFY) < 0) {
		perror("inotify_add_watch");
		return 1;
	}
	t0 = now_ns();
	pid = fork();
	if (pid == 0) {
		close(ino);
		execvp(cmd[0], cmd);
		perror(cmd[0]);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "xen_boot_time: %s failed\n", cmd[0]);
		return 1;
	}
	printf("command-ns %llu\n", (unsigned long long)(now_ns() - t0));
	fflush(stdout);
	deadline = now_ns() + (uint64_t)timeout_s * 1000000000u;
	for (;;) {
		struct pollfd p = { .fd = ino, .events = POLLIN };
		char ev[4096];
		uint64_t t;

		if (fd < 0)
			fd = open(log, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			ssize_t r;

			while (len < sizeof(buf) - 1 &&
			       (r = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
				len += r;
			buf[len] = 0;
		}
		t = now_ns();
		/* Patterns in order: each one's first appearance after the previous one's (only the
		 * new part of the log, and what a line across the last read may have begun). */
		while (next < npat && strstr(buf + scanned, pat[next])) {
			printf("at-ns %s %llu\n", pat[next], (unsigned long long)(t - t0));
			fflush(stdout);
			next++;
		}
		if (next == npat)
			return 0;
		scanned = len > maxpat ? len - maxpat : 0;
		if (t >= deadline) {
			fprintf(stderr, "xen_boot_time: no '%s' in %s after %d s\n", pat[next], log,
				timeout_s);
			return 1;
		}
		if (ino < 0) {
			struct timespec ts = { 0, interval_ms * 1000000L };

			nanosleep(&ts, NULL);
			continue;
		}
		if (poll(&p, 1, 1000) < 0 && errno != EINTR) {
			perror("poll");
			return 1;
		}
		while (read(ino, ev, sizeof(ev)) > 0)
			;
	}
usage:
	fprintf(stderr, "usage: %s [-t SECONDS] LOG PATTERN... -- COMMAND [ARG...]\n", argv[0]);
	return 2;
}

/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/util.h - helpers shared by all of Keel's selftests: raw ioctl wrappers beside asserting
 * ones, sizes, a test-failing assertion usable anywhere (KEEL_ASSERT), and /proc/cpuinfo
 * queries. Include after kselftest_harness.h (keel_ioctl() uses its ASSERT_EQ).
 */
#ifndef KEEL_UTIL_H
#define KEEL_UTIL_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>

#include <linux/keel.h>

#define KEEL_DEV "/dev/keel"

typedef unsigned long long ull;

#define SZ_4K  0x1000ULL
#define SZ_64K 0x10000ULL
#define SZ_1M  0x100000ULL
#define SZ_2M  0x200000ULL
#define SZ_4M  0x400000ULL
#define SZ_1G  0x40000000ULL

#define ALIGN_DOWN(x, a) ((x) & ~((a) - 1))
#define ALIGN_UP(x, a)   ALIGN_DOWN((x) + (a) - 1, (a))

#define KEEL_STR_(x) #x
#define KEEL_STR(x) KEEL_STR_(x)

/* Fails the test: prints "# file:line: message" and aborts (usable anywhere: from helper
 * threads and from code that has no harness `_metadata`; the harness reports the abort as a
 * failed test). */
static inline __attribute__((noreturn, format(printf, 3, 4)))
void __keel_die(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "# %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

#define KEEL_ASSERT(cond, fmt, ...)                                                          \
	do {                                                                                 \
		if (!(cond))                                                                 \
			__keel_die(__FILE__, __LINE__, "%s: " fmt, #cond, ##__VA_ARGS__);   \
	} while (0)

/* "EINVAL (Invalid argument)" for the current errno (a per-thread buffer). */
static inline const char *keel_errstr(void)
{
	static __thread char buf[128];
	int e = errno;

	snprintf(buf, sizeof(buf), "%s (%s)", strerrorname_np(e) ?: "?", strerror(e));
	return buf;
}

/* The raw call: returns ioctl's result, errno set on failure. */
static inline int __keel_ioctl(int fd, unsigned long cmd, void *arg)
{
	return ioctl(fd, cmd, arg);
}

/* The asserting call: fails the current test, naming the command, unless it succeeds. */
#define keel_ioctl(fd, cmd, arg)                                                        \
	do {                                                                            \
		int __r = __keel_ioctl((fd), (cmd), (arg));                             \
		ASSERT_EQ(0, __r) TH_LOG("%s failed: %s", #cmd, strerror(errno));      \
	} while (0)

/* Finds the first /proc/cpuinfo line whose key is `key`; copies its value into buf. */
static inline bool cpuinfo_line(const char *key, char *buf, size_t len)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[4096];
	bool found = false;

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':');
		size_t klen;

		if (!colon)
			continue;
		klen = colon - line;
		while (klen && (line[klen - 1] == ' ' || line[klen - 1] == '\t'))
			klen--;
		if (klen == strlen(key) && !strncmp(line, key, klen)) {
			snprintf(buf, len, " %s", colon + 1);
			buf[strcspn(buf, "\n")] = ' ';
			found = true;
		}
	}
	fclose(f);
	return found;
}

static inline bool cpuinfo_has_line(const char *key)
{
	char buf[4096];

	return cpuinfo_line(key, buf, sizeof(buf));
}

/* Whether the space-separated list on line `key` holds the word `flag`. */
static inline bool cpuinfo_has_flag(const char *key, const char *flag)
{
	char buf[4096], word[128];

	if (!cpuinfo_line(key, buf, sizeof(buf)))
		return false;
	snprintf(word, sizeof(word), " %s ", flag);
	return strstr(buf, word) != NULL;
}

/* How many /proc/cpuinfo lines have key `key`. */
static inline int cpuinfo_count(const char *key)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[4096];
	int n = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)) && strchr(" \t:", line[strlen(key)]))
			n++;
	fclose(f);
	return n;
}

#endif

/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by Keel's selftests: raw ioctl wrappers beside asserting ones, and
 * /proc/cpuinfo queries. Include after kselftest_harness.h.
 */
#ifndef KEEL_UTIL_H
#define KEEL_UTIL_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>

#include <linux/keel.h>

#define KEEL_DEV "/dev/keel"

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

/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/domain_test.h - what the domain tests (domain_*_test.c) share: the `domain` fixture
 * (it skips when keel.ko is not loaded), assertions on exits and errnos, the two small
 * real-mode guests several of them run (HLT; OUT then HLT) and a helper to start them.
 * Include it after kselftest_harness.h, in the one test file of a binary: it defines the
 * fixture and that guest code.
 */
#ifndef KEEL_DOMAIN_TEST_H
#define KEEL_DOMAIN_TEST_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "guest.h"

/* ---------------------------------------------------------------------------------------
 * Guest code shared by several tests: real-mode blobs, copied into guest RAM. */

/* The I/O port and memory the blobs and the host agree on (literals: the blobs stringify
 * them). */
#define PORT_OUT      0x510
#define COUNTER_GPA   0x500

asm(".pushsection .rodata\n"
    ".code16\n"
    /* OUT a word to a port, then HLT. */
    "blob_real_out_start:\n"
    "	mov $0x1234, %ax\n"
    "	mov $" KEEL_STR(PORT_OUT) ", %dx\n"
    "blob_real_out_out:\n"
    "	out %ax, %dx\n"
    "blob_real_out_hlt:\n"
    "	hlt\n"
    "blob_real_out_end:\n"
    /* HLT only. */
    "blob_real_hlt_start:\n"
    "	hlt\n"
    "blob_real_hlt_end:\n"
    ".code64\n"
    ".popsection\n");

#define BLOB(name) extern const uint8_t blob_##name##_start[], blob_##name##_end[]
BLOB(real_out);
BLOB(real_hlt);
extern const uint8_t blob_real_out_out[], blob_real_out_hlt[];

#define BLOB_SIZE(name) ((size_t)(blob_##name##_end - blob_##name##_start))
/* The offset of a label inside its blob. */
#define BLOB_OFF(name, label) ((uint64_t)(blob_##name##_##label - blob_##name##_start))
/* Copies a blob into guest memory at gpa. */
#define LOAD_BLOB(vm, gpa, name) vm_write((vm), (gpa), blob_##name##_start, BLOB_SIZE(name))

/* Where the small real-mode and 32-bit guests have their code. */
#define CODE_GPA 0x1000ULL

/* ---------------------------------------------------------------------------------------
 * Host helpers. */

FIXTURE(domain) {
	int dev;
};

FIXTURE_SETUP(domain)
{
	self->dev = keel_dev_fd();
	if (self->dev < 0)
		SKIP(return, "%s: %s: keel.ko is not loaded", KEEL_DEV, strerror(errno));
}

FIXTURE_TEARDOWN(domain)
{
}

#define ASSERT_EXIT(vcpu, r)                                                                 \
	ASSERT_EQ(r, (vcpu)->run.exit.reason)                                                \
		TH_LOG("expected a %s exit, got: %s", keel_exit_reason_name(r),              \
		       keel_exit_str(&(vcpu)->run.exit))

#define EXPECT_EXIT(vcpu, r)                                                                 \
	EXPECT_EQ(r, (vcpu)->run.exit.reason)                                                \
		TH_LOG("expected a %s exit, got: %s", keel_exit_reason_name(r),              \
		       keel_exit_str(&(vcpu)->run.exit))

/* `call` fails with `err`. */
#define EXPECT_ERRNO(err, call)                                                              \
	do {                                                                                 \
		long __r;                                                                    \
		int __e;                                                                     \
		errno = 0;                                                                   \
		__r = (long)(call);                                                          \
		__e = errno;                                                                 \
		EXPECT_EQ(-1, __r) TH_LOG("%s returned %ld, expected an error", #call, __r); \
		EXPECT_EQ(err, __e)                                                          \
			TH_LOG("%s: errno %s, expected %s", #call, strerrorname_np(__e) ?: "0", \
			       strerrorname_np(err));                                        \
	} while (0)

/* Pins a thread to one CPU; false if it cannot be. */
static inline bool pin_thread(pthread_t tid, int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return pthread_setaffinity_np(tid, sizeof(set), &set) == 0;
}

/* debugfs fail_entries (testing only): the hardware refuses the next N DomU entries. */
#define FAIL_ENTRIES "/sys/kernel/debug/keel/fail_entries"
/* debugfs domain_exits: the exits root mode counted, per domain and kind. */
#define DOMAIN_EXITS "/sys/kernel/debug/keel/domain_exits"

/* Mounts debugfs unless `path` in it is already there; false when it cannot be. */
static inline bool debugfs_has(const char *path)
{
	return !access(path, F_OK) || !mount("none", "/sys/kernel/debug", "debugfs", 0, NULL) ||
	       errno == EBUSY;
}

/* The `kind` exits root mode counted for domain `domid` (debugfs domain_exits: lines of
 * "domid kind count"); 0 when the domain has none of that kind, -1 when the file is not
 * readable. */
static inline long long domain_exits(uint32_t domid, const char *kind)
{
	char line[128], k[32];
	unsigned int id;
	long long n, found = 0;
	FILE *f;

	if (!debugfs_has(DOMAIN_EXITS) || !(f = fopen(DOMAIN_EXITS, "r")))
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%u %31s %lld", &id, k, &n) == 3 && id == domid && !strcmp(k, kind))
			found = n;
	fclose(f);
	return found;
}

/* Makes the hardware refuse the next n DomU entries (Keel itself enters no invalid state, so
 * this is how the entry-failure path is reached); false when debugfs cannot be written. */
static inline bool force_entry_failures(unsigned int n)
{
	char buf[16];
	int fd, len;
	bool ok;

	if (!debugfs_has(FAIL_ENTRIES))
		return false;
	fd = open(FAIL_ENTRIES, O_WRONLY);
	if (fd < 0)
		return false;
	len = snprintf(buf, sizeof(buf), "%u", n);
	ok = write(fd, buf, len) == len;
	close(fd);
	return ok;
}

/* A real-mode domain: RAM [0, ram_size), `blob` at CODE_GPA, every vCPU at its start. */
static inline struct keel_vm *real_vm(const char *name, uint32_t nr_vcpus, uint64_t ram_size,
				      const uint8_t *start, const uint8_t *end)
{
	struct keel_vm *vm = vm_create(name, nr_vcpus, ram_size);

	vm_write(vm, CODE_GPA, start, end - start);
	for (uint32_t i = 0; i < nr_vcpus; i++)
		vcpu_setup_real(vm->vcpus[i], CODE_GPA, 0);
	return vm;
}

#define REAL_VM(name, nr, ram, blob) \
	real_vm(name, nr, ram, blob_##blob##_start, blob_##blob##_end)

#endif /* KEEL_DOMAIN_TEST_H */

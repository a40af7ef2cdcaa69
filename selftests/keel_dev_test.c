// SPDX-License-Identifier: GPL-2.0
/*
 * keel_dev_test: /dev/keel, its version and capability ioctls, and how it rejects bad calls.
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "util.h"

TEST(device_node_is_root_only)
{
	struct stat st;

	ASSERT_EQ(0, stat(KEEL_DEV, &st)) TH_LOG("stat %s: %s", KEEL_DEV, strerror(errno));
	EXPECT_TRUE(S_ISCHR(st.st_mode));
	EXPECT_EQ(0600, st.st_mode & 07777) TH_LOG("mode is %o", st.st_mode & 07777);
	EXPECT_EQ(0, st.st_uid);
	EXPECT_EQ(0, st.st_gid);
	/* A misc device: major 10. */
	EXPECT_EQ(10, major(st.st_rdev));
}

TEST(non_root_is_refused)
{
	int status;
	pid_t pid = fork();

	ASSERT_LE(0, pid);
	if (pid == 0) {
		/* Become "nobody" for good, then try to open the device. */
		if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534))
			_exit(2);
		/* Nobody can open an ordinary device node: the refusal below is /dev/keel's own. */
		if (open("/dev/null", O_RDWR) < 0)
			_exit(3);
		int fd = open(KEEL_DEV, O_RDWR);
		_exit(fd < 0 && errno == EACCES ? 0 : 1);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFEXITED(status));
	EXPECT_EQ(0, WEXITSTATUS(status)) TH_LOG("child status %d (1: opened or wrong errno, 2: setuid failed, 3: /dev/null refused too)", WEXITSTATUS(status));
}

FIXTURE(dev) {
	int fd;
};

FIXTURE_SETUP(dev)
{
	self->fd = open(KEEL_DEV, O_RDWR | O_CLOEXEC);
	ASSERT_LE(0, self->fd) TH_LOG("open %s: %s", KEEL_DEV, strerror(errno));
}

FIXTURE_TEARDOWN(dev)
{
	if (self->fd >= 0)
		close(self->fd);
}

TEST_F(dev, version)
{
	struct keel_version v;

	memset(&v, 0xff, sizeof(v));
	v.flags = 0;
	keel_ioctl(self->fd, KEEL_GET_VERSION, &v);
	EXPECT_EQ(KEEL_ABI_VERSION, v.abi_version);
	EXPECT_EQ(0, v.flags);
	EXPECT_EQ(0, v.pad);
	/* 0.0.0 would mean the version was never filled in. */
	EXPECT_NE(0, v.major + v.minor + v.patch);
}

TEST_F(dev, version_rejects_nonzero_flags)
{
	struct keel_version v = { .flags = 1 };

	EXPECT_EQ(-1, __keel_ioctl(self->fd, KEEL_GET_VERSION, &v));
	EXPECT_EQ(EINVAL, errno);
}

/* Keel hides VMX/SVM from Linux while it runs, so the vendor comes from vendor_id. */
TEST_F(dev, caps_vendor_matches_cpuinfo)
{
	struct keel_caps c = { 0 };
	bool intel = cpuinfo_has_flag("vendor_id", "GenuineIntel");
	bool amd = cpuinfo_has_flag("vendor_id", "AuthenticAMD");

	keel_ioctl(self->fd, KEEL_GET_CAPS, &c);
	ASSERT_TRUE(intel || amd) TH_LOG("vendor_id is neither GenuineIntel nor AuthenticAMD");
	EXPECT_EQ(intel ? KEEL_VENDOR_VMX : KEEL_VENDOR_SVM, c.vendor);
	EXPECT_NE(0, c.revision);
}

TEST_F(dev, caps_online_cpus)
{
	struct keel_caps c = { 0 };

	keel_ioctl(self->fd, KEEL_GET_CAPS, &c);
	EXPECT_EQ(sysconf(_SC_NPROCESSORS_ONLN), c.online_cpus);
	EXPECT_EQ(cpuinfo_count("processor"), c.online_cpus);
}

/* Each capability bit against the flag Linux shows for the same feature. */
struct cap_flag {
	__u64 cap;
	const char *line;
	const char *flag;
};

static const struct cap_flag vmx_flags[] = {
	{ KEEL_CAP_SLAT, "vmx flags", "ept" },
	{ KEEL_CAP_SLAT_1G, "vmx flags", "ept_1gb" },
	{ KEEL_CAP_TAGGED_TLB, "vmx flags", "vpid" },
	{ KEEL_CAP_UNRESTRICTED_GUEST, "vmx flags", "unrestricted_guest" },
	{ KEEL_CAP_PREEMPTION_TIMER, "vmx flags", "preemption_timer" },
};

static const struct cap_flag svm_flags[] = {
	{ KEEL_CAP_SLAT, "flags", "npt" },
	{ KEEL_CAP_NRIP_SAVE, "flags", "nrip_save" },
	{ KEEL_CAP_VMCB_CLEAN, "flags", "vmcb_clean" },
	{ KEEL_CAP_DECODE_ASSISTS, "flags", "decodeassists" },
	{ KEEL_CAP_FLUSH_BY_ASID, "flags", "flushbyasid" },
};

TEST_F(dev, caps_agree_with_cpuinfo)
{
	struct keel_caps c = { 0 };
	const struct cap_flag *t;
	bool linux_has[8];
	size_t n;

	keel_ioctl(self->fd, KEEL_GET_CAPS, &c);
	if (c.vendor == KEEL_VENDOR_VMX) {
		t = vmx_flags;
		n = sizeof(vmx_flags) / sizeof(vmx_flags[0]);
	} else {
		t = svm_flags;
		n = sizeof(svm_flags) / sizeof(svm_flags[0]);
	}
	for (size_t i = 0; i < n; i++)
		linux_has[i] = cpuinfo_has_flag(t[i].line, t[i].flag);
	if (c.vendor == KEEL_VENDOR_VMX && !cpuinfo_has_line("vmx flags")) {
		/* Linux drops its "vmx flags" line with the VMX feature bit, which Keel clears
		 * while it owns VMX: read the line with Keel unloaded, then load it again. */
		bool has_line;

		close(self->fd);
		self->fd = -1;
		ASSERT_EQ(0, system("rmmod keel")) TH_LOG("cannot unload keel to read 'vmx flags'");
		has_line = cpuinfo_has_line("vmx flags");
		for (size_t i = 0; i < n; i++)
			linux_has[i] = cpuinfo_has_flag(t[i].line, t[i].flag);
		/* With the options the VM loaded it with (see tap.sh's load_keel). */
		ASSERT_EQ(0, system("insmod /lib/modules/keel.ko $(cat /etc/keel.options 2>/dev/null)"))
			TH_LOG("cannot load keel again");
		self->fd = open(KEEL_DEV, O_RDWR | O_CLOEXEC);
		ASSERT_LE(0, self->fd) TH_LOG("open %s: %s", KEEL_DEV, strerror(errno));
		ASSERT_TRUE(has_line) TH_LOG("no 'vmx flags' in /proc/cpuinfo even without Keel");
	}
	for (size_t i = 0; i < n; i++) {
		bool keel_has = (c.caps & t[i].cap) != 0;

		EXPECT_EQ(linux_has[i], keel_has)
			TH_LOG("%s: /proc/cpuinfo says %d, keel says %d (caps %#llx)", t[i].flag,
			       linux_has[i], keel_has, (unsigned long long)c.caps);
	}
	/* A tagged TLB comes with tags to hand out, and only then. */
	EXPECT_EQ(!!(c.caps & KEEL_CAP_TAGGED_TLB), c.nr_tags != 0);
}

TEST_F(dev, caps_belong_to_vendor)
{
	struct keel_caps c = { 0 };
	__u64 svm_only = KEEL_CAP_NRIP_SAVE | KEEL_CAP_VMCB_CLEAN | KEEL_CAP_DECODE_ASSISTS | KEEL_CAP_FLUSH_BY_ASID;

	keel_ioctl(self->fd, KEEL_GET_CAPS, &c);
	if (c.vendor == KEEL_VENDOR_VMX) {
		EXPECT_EQ(0, c.caps & svm_only);
	} else {
		EXPECT_EQ(0, c.caps & KEEL_CAP_PREEMPTION_TIMER);
	}
	/* 2M/1G second-level pages only exist with second-level paging. */
	if (!(c.caps & KEEL_CAP_SLAT)) {
		EXPECT_EQ(0, c.caps & (KEEL_CAP_SLAT_2M | KEEL_CAP_SLAT_1G));
	}
}

TEST_F(dev, caps_clears_reserved_fields)
{
	struct keel_caps c;

	memset(&c, 0xa5, sizeof(c));
	c.flags = 0;
	keel_ioctl(self->fd, KEEL_GET_CAPS, &c);
	EXPECT_EQ(0, c.pad);
	for (int i = 0; i < 4; i++)
		EXPECT_EQ(0, c.reserved[i]);
}

TEST_F(dev, caps_rejects_nonzero_flags)
{
	struct keel_caps c = { .flags = 0x80000000u };

	EXPECT_EQ(-1, __keel_ioctl(self->fd, KEEL_GET_CAPS, &c));
	EXPECT_EQ(EINVAL, errno);
}

TEST_F(dev, unknown_ioctl_is_enotty)
{
	char buf[64] = { 0 };

	EXPECT_EQ(-1, ioctl(self->fd, _IO(KEEL_IOCTL_TYPE, 0x7f)));
	EXPECT_EQ(ENOTTY, errno);
	/* A known number with the wrong size is a different command. */
	EXPECT_EQ(-1, ioctl(self->fd, _IOWR(KEEL_IOCTL_TYPE, 0x01, char[8]), buf));
	EXPECT_EQ(ENOTTY, errno);
	/* Another driver's ioctl. */
	EXPECT_EQ(-1, ioctl(self->fd, TCGETS, buf));
	EXPECT_EQ(ENOTTY, errno);
}

TEST_F(dev, bad_pointer_is_efault)
{
	EXPECT_EQ(-1, ioctl(self->fd, KEEL_GET_VERSION, NULL));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-1, ioctl(self->fd, KEEL_GET_CAPS, (void *)1));
	EXPECT_EQ(EFAULT, errno);
	/* A kernel address is not a user pointer. */
	EXPECT_EQ(-1, ioctl(self->fd, KEEL_GET_CAPS, (void *)0xffffffff81000000ul));
	EXPECT_EQ(EFAULT, errno);
}

TEST_F(dev, read_only_open_works_for_queries)
{
	int fd = open(KEEL_DEV, O_RDONLY);
	struct keel_version v = { 0 };

	ASSERT_LE(0, fd);
	EXPECT_EQ(0, __keel_ioctl(fd, KEEL_GET_VERSION, &v));
	close(fd);
}

TEST_HARNESS_MAIN

// SPDX-License-Identifier: GPL-2.0
/*
 * keel_launch_test: Linux running as Dom0 on Keel. Runs with keel.ko loaded.
 *
 * Dom0 must see Keel's CPUID leaves on every CPU and not the extension Keel owns, its exits
 * must be counted, VMX/SVM instructions must fault in it as on a CPU without them, a single
 * step over an instruction Keel serves must stop right after it, an ordinary workload must
 * run unharmed, and rmmod must hand back what Dom0 had loaded (its LDT, its breakpoints).
 */
#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <asm/ldt.h>
#include <linux/hw_breakpoint.h>
#include <linux/perf_event.h>
#include <setjmp.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/klog.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "util.h"

#define STATS "/sys/kernel/debug/keel/stats"

static void cpuid_count(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}

/* Pins the calling thread to `cpu`; false if the CPU is not usable. */
static bool pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set) == 0;
}

static int nr_cpus(void)
{
	return sysconf(_SC_NPROCESSORS_CONF);
}

TEST(keel_leaf_on_every_cpu)
{
	struct keel_version v = { 0 };
	int fd = open(KEEL_DEV, O_RDONLY), seen = 0;

	ASSERT_LE(0, fd);
	keel_ioctl(fd, KEEL_GET_VERSION, &v);
	close(fd);
	for (int cpu = 0; cpu < nr_cpus(); cpu++) {
		uint32_t r[4];
		char sig[13] = { 0 };

		if (!pin(cpu))
			continue;
		seen++;
		cpuid_count(0x40000000, 0, r);
		memcpy(sig, &r[1], 4);
		memcpy(sig + 4, &r[2], 4);
		memcpy(sig + 8, &r[3], 4);
		EXPECT_STREQ("KeelKeelKeel", sig) TH_LOG("CPU %d", cpu);
		EXPECT_LE(0x40000001u, r[0]) TH_LOG("CPU %d: max leaf %#x", cpu, r[0]);
		cpuid_count(0x40000001, 0, r);
		EXPECT_EQ((uint32_t)(v.major << 16 | v.minor << 8 | v.patch), r[0]) TH_LOG("CPU %d", cpu);
		EXPECT_EQ(KEEL_ABI_VERSION, r[1]) TH_LOG("CPU %d", cpu);
		/* The rest of the range reads as zero. */
		cpuid_count(0x40000002, 0, r);
		EXPECT_EQ(0, r[0] | r[1] | r[2] | r[3]) TH_LOG("CPU %d", cpu);
	}
	EXPECT_EQ(sysconf(_SC_NPROCESSORS_ONLN), seen);
}

TEST(extension_hidden_on_every_cpu)
{
	for (int cpu = 0; cpu < nr_cpus(); cpu++) {
		uint32_t r[4];

		if (!pin(cpu))
			continue;
		cpuid_count(1, 0, r);
		EXPECT_EQ(0, r[2] & (1u << 5)) TH_LOG("CPU %d: CPUID.1:ECX.VMX is visible", cpu);
		EXPECT_NE(0, r[2] & (1u << 31)) TH_LOG("CPU %d: hypervisor bit clear", cpu);
		cpuid_count(0x80000001, 0, r);
		EXPECT_EQ(0, r[2] & (1u << 2)) TH_LOG("CPU %d: CPUID.80000001h:ECX.SVM is visible", cpu);
	}
	EXPECT_FALSE(cpuinfo_has_flag("flags", "vmx"));
	EXPECT_FALSE(cpuinfo_has_flag("flags", "svm"));
}

/*
 * The MSRs Keel owns read as on a CPU whose extension is off: EFER.SVME clear on AMD (the
 * hardware keeps it set), IA32_FEATURE_CONTROL locked without VMX on Intel.
 */
TEST(dom0_msr_view_hides_the_extension)
{
	bool intel = cpuinfo_has_flag("vendor_id", "GenuineIntel");

	for (int cpu = 0; cpu < nr_cpus(); cpu++) {
		char path[64];
		uint64_t v = 0;
		int fd;

		snprintf(path, sizeof(path), "/dev/cpu/%d/msr", cpu);
		fd = open(path, O_RDONLY);
		if (fd < 0 && errno == ENOENT && cpu == 0)
			SKIP(return, "no %s (CONFIG_X86_MSR off)", path);
		if (fd < 0)
			continue;
		if (intel) {
			ASSERT_EQ(8, pread(fd, &v, 8, 0x3a)) TH_LOG("CPU %d: IA32_FEATURE_CONTROL", cpu);
			EXPECT_EQ(1, v & 7) TH_LOG("CPU %d: IA32_FEATURE_CONTROL = %#llx", cpu, (unsigned long long)v);
		} else {
			ASSERT_EQ(8, pread(fd, &v, 8, 0xc0000080)) TH_LOG("CPU %d: EFER", cpu);
			EXPECT_EQ(0, v & (1 << 12)) TH_LOG("CPU %d: EFER = %#llx shows SVME", cpu, (unsigned long long)v);
			EXPECT_EQ(1 << 10, v & (1 << 10)) TH_LOG("CPU %d: EFER = %#llx lacks LMA", cpu, (unsigned long long)v);
		}
		close(fd);
	}
}

/*
 * The msr driver's policy for writes to MSRs it does not know (/sys/module/msr/parameters/
 * allow_writes). Its default warns in the kernel log, which the console prints in the middle
 * of the test's output (it once cut an "ok N" line in two, and the TAP count lost the test):
 * the write test sets it "on" and puts back what it read. Returns the previous value ("" when
 * there is no such parameter).
 */
static const char *msr_allow_writes(const char *value)
{
	static char prev[16];
	const char *path = "/sys/module/msr/parameters/allow_writes";
	FILE *f = fopen(path, "r");

	prev[0] = 0;
	if (!f)
		return prev;
	if (!fgets(prev, sizeof(prev), f))
		prev[0] = 0;
	fclose(f);
	prev[strcspn(prev, "\n")] = 0;
	f = fopen(path, "w");
	if (f) {
		fputs(value, f);
		fclose(f);
	}
	return prev;
}

/*
 * Dom0's writes of those MSRs change only its view: on AMD, EFER written back without SVME
 * reads back so while Keel stays beneath (the hardware keeps SVME); written with SVME, Dom0
 * sees SVME set, and clearing it again restores the first view. On Intel,
 * IA32_FEATURE_CONTROL is locked: a write fails, as on the hardware. On every CPU.
 */
TEST(dom0_msr_writes_change_only_its_view)
{
	bool intel = cpuinfo_has_flag("vendor_id", "GenuineIntel");
	char policy[16];

	snprintf(policy, sizeof(policy), "%s", msr_allow_writes("on"));

	for (int cpu = 0; cpu < nr_cpus(); cpu++) {
		char path[64];
		uint64_t v = 0, back = 0, svme;
		uint32_t r[4];
		int fd;

		snprintf(path, sizeof(path), "/dev/cpu/%d/msr", cpu);
		fd = open(path, O_RDWR);
		if (fd < 0 && errno == ENOENT && cpu == 0)
			SKIP(return, "no %s (CONFIG_X86_MSR off)", path);
		if (fd < 0 || !pin(cpu))
			continue;
		if (intel) {
			ASSERT_EQ(8, pread(fd, &v, 8, 0x3a));
			v |= 1 << 2; /* VMX outside SMX */
			EXPECT_EQ(-1, pwrite(fd, &v, 8, 0x3a)) TH_LOG("CPU %d: FEATURE_CONTROL written", cpu);
			EXPECT_EQ(EIO, errno);
		} else {
			ASSERT_EQ(8, pread(fd, &v, 8, 0xc0000080)) TH_LOG("CPU %d: EFER", cpu);
			svme = v | (1 << 12);
			EXPECT_EQ(8, pwrite(fd, &v, 8, 0xc0000080)) TH_LOG("CPU %d: EFER write", cpu);
			ASSERT_EQ(8, pread(fd, &back, 8, 0xc0000080));
			EXPECT_EQ(v, back) TH_LOG("CPU %d: EFER %#llx after writing %#llx", cpu,
						  (unsigned long long)back, (unsigned long long)v);
			EXPECT_EQ(8, pwrite(fd, &svme, 8, 0xc0000080)) TH_LOG("CPU %d: EFER.SVME write", cpu);
			ASSERT_EQ(8, pread(fd, &back, 8, 0xc0000080));
			EXPECT_EQ(svme, back) TH_LOG("CPU %d: EFER %#llx after setting SVME", cpu,
						     (unsigned long long)back);
			EXPECT_EQ(8, pwrite(fd, &v, 8, 0xc0000080));
			ASSERT_EQ(8, pread(fd, &back, 8, 0xc0000080));
			EXPECT_EQ(v, back) TH_LOG("CPU %d: EFER %#llx after clearing SVME", cpu,
						  (unsigned long long)back);
		}
		close(fd);
		/* Keel is still beneath this CPU. */
		cpuid_count(0x40000000, 0, r);
		EXPECT_EQ(0x6c65654b, r[1]) TH_LOG("CPU %d: Keel leaf gone", cpu);
	}
	if (policy[0])
		msr_allow_writes(policy);
}

/* Sum of the `kind` counter of `cpu` in debugfs; -1 if absent. */
static long long stat_of(int cpu, const char *kind)
{
	FILE *f = fopen(STATS, "r");
	char line[256], k[64];
	long long n, total = -1;
	int c;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%d %63s %lld", &c, k, &n) == 3 && c == cpu && !strcmp(k, kind))
			total = n;
	fclose(f);
	return total;
}

static void ensure_debugfs(struct __test_metadata *_metadata)
{
	if (access(STATS, R_OK) && mount("none", "/sys/kernel/debug", "debugfs", 0, NULL) && errno != EBUSY)
		SKIP(return, "cannot mount debugfs");
}

TEST(exit_counters_move)
{
	ensure_debugfs(_metadata);
	ASSERT_EQ(0, access(STATS, R_OK)) TH_LOG(STATS " missing");
	for (int cpu = 0; cpu < nr_cpus(); cpu++) {
		long long before, after;
		uint32_t r[4];

		if (!pin(cpu))
			continue;
		before = stat_of(cpu, "cpuid");
		ASSERT_LE(0, before) TH_LOG("no cpuid counter for CPU %d", cpu);
		for (int i = 0; i < 1000; i++)
			cpuid_count(0, 0, r);
		after = stat_of(cpu, "cpuid");
		EXPECT_LE(before + 1000, after) TH_LOG("CPU %d: %lld -> %lld", cpu, before, after);
	}
}

#define DOM0_INSN "/sys/kernel/debug/keel/dom0_insn"

/* Writes `what` to the dom0_insn knob; returns 0 or the errno. */
static int dom0_insn(const char *what)
{
	int fd = open(DOM0_INSN, O_WRONLY), err = 0;

	if (fd < 0)
		return errno;
	if (write(fd, what, strlen(what)) < 0)
		err = errno;
	close(fd);
	return err;
}

static uint64_t xgetbv0(void)
{
	uint32_t lo, hi;

	asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return (uint64_t)hi << 32 | lo;
}

/*
 * XSETBV and INVD from Dom0's kernel (through the testing-only dom0_insn knob), on every CPU:
 * each exits to Keel and is counted; XSETBV of XCR0's own value succeeds and keeps it, XSETBV
 * without x87 state gets #GP as on hardware and leaves XCR0 alone, and INVD (done as WBINVD)
 * returns.
 */
TEST(dom0_xsetbv_and_invd_are_handled)
{
	uint32_t r[4];
	bool xsave;

	ensure_debugfs(_metadata);
	ASSERT_EQ(0, access(DOM0_INSN, W_OK)) TH_LOG(DOM0_INSN " missing");
	cpuid_count(1, 0, r);
	xsave = r[2] & (1u << 27); /* OSXSAVE */
	EXPECT_EQ(EINVAL, dom0_insn("nonsense"));
	for (int cpu = 0; cpu < nr_cpus(); cpu++) {
		long long x0, i0;

		if (!pin(cpu))
			continue;
		x0 = stat_of(cpu, "xsetbv");
		i0 = stat_of(cpu, "invd");
		ASSERT_LE(0, x0) TH_LOG("no xsetbv counter for CPU %d", cpu);
		ASSERT_LE(0, i0) TH_LOG("no invd counter for CPU %d", cpu);
		EXPECT_EQ(0, dom0_insn("invd")) TH_LOG("CPU %d", cpu);
		EXPECT_EQ(i0 + 1, stat_of(cpu, "invd")) TH_LOG("CPU %d", cpu);
		if (!xsave)
			continue;
		uint64_t xcr0 = xgetbv0();

		EXPECT_EQ(0, dom0_insn("xsetbv")) TH_LOG("CPU %d", cpu);
		EXPECT_EQ(xcr0, xgetbv0());
		EXPECT_EQ(EIO, dom0_insn("xsetbv-bad")) TH_LOG("CPU %d: no #GP", cpu);
		EXPECT_EQ(xcr0, xgetbv0());
		EXPECT_EQ(x0 + 2, stat_of(cpu, "xsetbv")) TH_LOG("CPU %d", cpu);
	}
	if (!xsave)
		SKIP(return, "INVD handled; XSETBV untested: this CPU model has no XSAVE");
}

/*
 * The vendor's VMXON or VMRUN from Dom0's kernel (CPL 0, through the dom0_insn knob) exits to
 * Keel, is counted and gets #UD, as on a CPU without the extension; Dom0 goes on.
 */
TEST(virt_insns_fault_in_dom0_kernel_mode)
{
	ensure_debugfs(_metadata);
	ASSERT_EQ(0, access(DOM0_INSN, W_OK)) TH_LOG(DOM0_INSN " missing");
	for (int cpu = 0; cpu < nr_cpus(); cpu++) {
		long long before;

		if (!pin(cpu))
			continue;
		before = stat_of(cpu, "virt_insn");
		ASSERT_LE(0, before) TH_LOG("no virt_insn counter for CPU %d", cpu);
		EXPECT_EQ(EIO, dom0_insn("virt")) TH_LOG("CPU %d: no #UD", cpu);
		EXPECT_EQ(before + 1, stat_of(cpu, "virt_insn")) TH_LOG("CPU %d", cpu);
	}
}

/* The kernel log (all of it the ring holds) as a string the caller frees; NULL on failure. */
static char *kernel_log(void)
{
	int size = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0), n;
	char *buf;

	if (size <= 0 || !(buf = malloc(size + 1)))
		return NULL;
	n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, size);
	if (n < 0) {
		free(buf);
		return NULL;
	}
	buf[n] = 0;
	return buf;
}

/* The console's log level (the first field of /proc/sys/kernel/printk), or -1. */
static int console_loglevel(void)
{
	FILE *f = fopen("/proc/sys/kernel/printk", "r");
	int level = -1;

	if (f) {
		if (fscanf(f, "%d", &level) != 1)
			level = -1;
		fclose(f);
	}
	return level;
}

/* Sets the console's log level: records below it are printed on the console. */
static void set_console_loglevel(int level)
{
	klogctl(8 /* SYSLOG_ACTION_CONSOLE_LEVEL */, NULL, level);
}

/* How many times `needle` occurs in the kernel log; -1 if it cannot be read. */
static int log_count(const char *needle)
{
	char *log = kernel_log(), *p;
	int n = 0;

	if (!log)
		return -1;
	for (p = log; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	free(log);
	return n;
}

/* Whether the kernel log after the last `start` holds each of the `n` strings in `what`. */
static bool log_after_last_has(const char *start, const char *const *what, int n)
{
	char *log = kernel_log(), *p, *last = NULL;
	bool all = true;

	if (!log)
		return false;
	for (p = log; (p = strstr(p, start)); p += strlen(start))
		last = p;
	for (int i = 0; i < n; i++)
		all &= last && strstr(last, what[i]);
	free(log);
	return all;
}

/*
 * An exit Keel has no handler for (WBINVD, intercepted for this test only through the
 * dom0_insn knob) is counted as "other", logged with the exit and a dump of Dom0's state, and
 * answered with #UD; Dom0 goes on. On every CPU.
 */
TEST(unexpected_dom0_exit_is_dumped_and_faults)
{
	ensure_debugfs(_metadata);
	ASSERT_EQ(0, access(DOM0_INSN, W_OK)) TH_LOG(DOM0_INSN " missing");
	ASSERT_LE(0, log_count("keel")) TH_LOG("cannot read the kernel log: %s", strerror(errno));
	/*
	 * The test VM loads keel.ko with log_port, so root mode writes each dump to the serial
	 * console too, where scripts/test looks for it. Keep the console from printing the kernel
	 * log's copy of one CPU's dump meanwhile (the console prints later, in a thread), which
	 * would interleave with the next CPU's: the level is checked when a record is printed.
	 */
	int console_level = console_loglevel();

	ASSERT_LT(0, console_level) TH_LOG("cannot read /proc/sys/kernel/printk");

	set_console_loglevel(1);
	for (int cpu = 0; cpu < nr_cpus(); cpu++) {
		const char *dump[] = { " rip=", " cr3=", " rax=" };
		char exit_line[64], dump_line[64];
		long long before;
		int logged, dumped, err;
		uint32_t r[4];

		if (!pin(cpu))
			continue;
		snprintf(exit_line, sizeof(exit_line), "CPU %d: unexpected Dom0 exit other", cpu);
		snprintf(dump_line, sizeof(dump_line), "CPU %d: unexpected exit: exit ", cpu);
		before = stat_of(cpu, "other");
		EXPECT_LE(0, before) TH_LOG("no 'other' counter for CPU %d", cpu);
		if (before < 0)
			break;
		logged = log_count(exit_line);
		dumped = log_count(dump_line);
		err = dom0_insn("unexpected");
		if (err == EOPNOTSUPP) {
			set_console_loglevel(console_level);
			SKIP(return, "this CPU cannot intercept WBINVD");
		}
		EXPECT_EQ(EIO, err) TH_LOG("CPU %d: WBINVD did not fault (%s)", cpu, strerror(err));
		/* Reading the counters drains root mode's log into the kernel log. */
		EXPECT_EQ(before + 1, stat_of(cpu, "other")) TH_LOG("CPU %d", cpu);
		EXPECT_EQ(logged + 1, log_count(exit_line)) TH_LOG("CPU %d: no '%s' line", cpu, exit_line);
		EXPECT_EQ(dumped + 1, log_count(dump_line)) TH_LOG("CPU %d: no '%s' line", cpu, dump_line);
		EXPECT_TRUE(log_after_last_has(dump_line, dump, 3))
			TH_LOG("CPU %d: the dump lacks RIP, CR3 or the GPRs", cpu);
		/* Dom0 runs on beneath Keel. */
		cpuid_count(0x40000000, 0, r);
		EXPECT_EQ(0x6c65654b, r[1]) TH_LOG("CPU %d: Keel leaf gone", cpu);
	}
	usleep(200 * 1000); /* the console thread passes the dumps while the level is low */
	set_console_loglevel(console_level);
}

/* Runs `fn` in a child; returns the signal that killed it, or 0. */
static int run_child(void (*fn)(void))
{
	int status;
	pid_t pid = fork();

	if (pid == 0) {
		fn();
		_exit(0);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

static void do_vmcall(void) { asm volatile("vmcall" ::: "memory"); }
static void do_vmmcall(void) { asm volatile("vmmcall" ::: "memory"); }
static void do_vmxon(void) { uint64_t pa = 0; asm volatile("vmxon %0" :: "m"(pa) : "memory", "cc"); }
static void do_vmrun(void) { asm volatile("vmrun" :: "a"(0UL) : "memory"); }
static void do_keel_hypercall(void) { asm volatile("vmcall; vmmcall" :: "a"(0x4b45454c00000001UL) : "memory"); }

/*
 * In user mode these fault as on a CPU without the extension, and Dom0 goes on. Only the
 * instructions of the CPU's own vendor are tried (besides the two hypercall instructions):
 * QEMU's TCG does not fault on VMXON on an AMD CPU, which is an emulator quirk, not Keel's.
 */
TEST(virt_insns_fault_in_dom0_user_mode)
{
	bool intel = cpuinfo_has_flag("vendor_id", "GenuineIntel");
	struct { const char *name; void (*fn)(void); } t[] = {
		{ "vmcall", do_vmcall }, { "vmmcall", do_vmmcall },
		{ "keel hypercall", do_keel_hypercall },
		intel ? (typeof(t[0])){ "vmxon", do_vmxon } : (typeof(t[0])){ "vmrun", do_vmrun },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		int sig = run_child(t[i].fn);

		EXPECT_TRUE(sig == SIGILL || sig == SIGSEGV)
			TH_LOG("%s: child ended with signal %d, expected SIGILL or SIGSEGV", t[i].name, sig);
	}
}

/* A CPUID and where it ends, for the single-step test. */
asm(".pushsection .text\n"
    "step_cpuid:\n"
    "	cpuid\n"
    "step_cpuid_end:\n"
    "	nop\n"
    "	int3\n"
    ".popsection\n");
extern const char step_cpuid[], step_cpuid_end[];

/*
 * A debugger's single step over a CPUID in Dom0 (which Keel serves in root mode) stops right
 * after it, with the trap reported as a single step, as on a CPU without Keel (the step went
 * on past the next instruction when root mode completed the CPUID without raising it).
 */
TEST(dom0_single_step_over_cpuid)
{
	struct user_regs_struct regs;
	int status;
	pid_t pid = fork();

	ASSERT_LE(0, pid);
	if (pid == 0) {
		ptrace(PTRACE_TRACEME, 0, NULL, NULL);
		raise(SIGSTOP);
		_exit(1);
	}
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSTOPPED(status));
	ASSERT_EQ(0, ptrace(PTRACE_GETREGS, pid, NULL, &regs));
	regs.rip = (uintptr_t)step_cpuid;
	regs.rax = 0;
	ASSERT_EQ(0, ptrace(PTRACE_SETREGS, pid, NULL, &regs));
	ASSERT_EQ(0, ptrace(PTRACE_SINGLESTEP, pid, NULL, NULL));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	ASSERT_TRUE(WIFSTOPPED(status) && WSTOPSIG(status) == SIGTRAP)
		TH_LOG("status %#x after the step", status);
	ASSERT_EQ(0, ptrace(PTRACE_GETREGS, pid, NULL, &regs));
	EXPECT_EQ((uintptr_t)step_cpuid_end, regs.rip)
		TH_LOG("the step stopped at %#llx, not right after the CPUID (%p)",
		       (unsigned long long)regs.rip, step_cpuid_end);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
}

TEST(dom0_fork_exec)
{
	for (int i = 0; i < 300; i++) {
		int status;
		pid_t pid = fork();

		if (pid == 0) {
			execl("/bin/true", "true", NULL);
			_exit(127);
		}
		ASSERT_LT(0, pid);
		ASSERT_EQ(pid, waitpid(pid, &status, 0));
		ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) TH_LOG("run %d", i);
	}
}

TEST(dom0_tmpfs_io)
{
	const char *dir = "/tmp/keel-io";
	size_t len = 8 << 20;
	unsigned char *buf = malloc(len), *back = malloc(len);
	char path[64];
	int fd;

	ASSERT_TRUE(buf && back);
	mkdir(dir, 0700);
	ASSERT_EQ(0, mount("tmpfs", dir, "tmpfs", 0, "size=32m"));
	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)(i * 2654435761u >> 13);
	snprintf(path, sizeof(path), "%s/data", dir);
	fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
	ASSERT_LE(0, fd);
	ASSERT_EQ((ssize_t)len, write(fd, buf, len));
	ASSERT_EQ(0, fsync(fd));
	ASSERT_EQ(0, lseek(fd, 0, SEEK_SET));
	ASSERT_EQ((ssize_t)len, read(fd, back, len));
	EXPECT_EQ(0, memcmp(buf, back, len));
	close(fd);
	EXPECT_EQ(0, umount(dir));
	free(buf);
	free(back);
}

/*
 * rmmod hands each CPU back with what Dom0 had loaded: a VM exit leaves LDTR unusable and DR7
 * at 0x400 (SDM 28.5), so leaving VMX must load them again. A process with an LDT spins on
 * one CPU, with a per-CPU write watchpoint there (installed once, not at each context switch),
 * while rmmod runs on another; the CPU is handed back under it (the hotplug thread preempts it
 * and gives it back the same mm, so Linux reloads neither). After: loading a segment register
 * from its LDT must work, and the watchpoint must still count.
 */
static volatile uint32_t watched_by_cpu;
static sigjmp_buf ldt_fault;

static void on_segv(int sig)
{
	(void)sig;
	siglongjmp(ldt_fault, 1);
}

/* Loads GS from LDT entry 0 (selector 7), then the null selector again; false if it faulted. */
static bool ldt_loads(void)
{
	struct sigaction sa = { .sa_handler = on_segv }, old;
	bool ok = false;

	sigaction(SIGSEGV, &sa, &old);
	if (!sigsetjmp(ldt_fault, 1)) {
		__asm__ volatile("mov %0, %%gs\n\tmov %1, %%gs" : : "r"(7), "r"(0));
		ok = true;
	}
	sigaction(SIGSEGV, &old, NULL);
	return ok;
}

/* The two last CPUs this thread may run on; false if it has fewer. */
static bool two_cpus(int cpus[2])
{
	cpu_set_t set;
	int n = 0;

	if (sched_getaffinity(0, sizeof(set), &set))
		return false;
	for (int cpu = CPU_SETSIZE - 1; cpu >= 0 && n < 2; cpu--)
		if (CPU_ISSET(cpu, &set))
			cpus[n++] = cpu;
	return n == 2;
}

/* Unloads keel.ko from `other` while this thread spins on its CPU without a system call that
 * could switch the CPU to another mm; true if rmmod succeeded. keel.ko is loaded again after
 * the caller's checks (reload). */
static bool unload_beside(int other)
{
	int status;
	pid_t pid = fork(), done;

	if (pid < 0)
		return false;
	if (pid == 0) {
		pin(other);
		execlp("rmmod", "rmmod", "keel", NULL);
		_exit(127);
	}
	while ((done = waitpid(pid, &status, WNOHANG)) == 0)
		;
	return done == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int reload(void)
{
	return system("insmod /lib/modules/keel.ko $(cat /etc/keel.options 2>/dev/null)");
}

TEST(dom0_ldt_survives_unload)
{
	struct user_desc d = { .entry_number = 0, .limit = 0xfffff, .seg_32bit = 1,
			       .limit_in_pages = 1, .useable = 1 };
	bool unloaded, loads;
	int cpus[2];

	if (!two_cpus(cpus))
		SKIP(return, "needs two CPUs");
	ASSERT_TRUE(pin(cpus[0]));
	if (syscall(SYS_modify_ldt, 1, &d, sizeof(d))) {
		ASSERT_EQ(ENOSYS, errno) TH_LOG("modify_ldt: %s", strerror(errno));
		SKIP(return, "no LDT: the kernel lacks CONFIG_MODIFY_LDT_SYSCALL");
	}
	ASSERT_TRUE(ldt_loads()) TH_LOG("the LDT does not load with Keel beneath");
	unloaded = unload_beside(cpus[1]);
	loads = ldt_loads();
	ASSERT_EQ(0, reload()) TH_LOG("insmod after the test failed");
	ASSERT_TRUE(unloaded) TH_LOG("rmmod failed");
	EXPECT_TRUE(loads) TH_LOG("loading a segment from the LDT faulted after rmmod");
}

TEST(dom0_breakpoints_survive_unload)
{
	struct perf_event_attr attr = {
		.type = PERF_TYPE_BREAKPOINT,
		.size = sizeof(attr),
		.bp_type = HW_BREAKPOINT_W,
		.bp_addr = (uintptr_t)&watched_by_cpu,
		.bp_len = HW_BREAKPOINT_LEN_4,
		.exclude_kernel = 1,
		.exclude_hv = 1,
	};
	uint64_t count = 0;
	bool unloaded;
	int cpus[2], fd;
	ssize_t got;

	if (!two_cpus(cpus))
		SKIP(return, "needs two CPUs");
	ASSERT_TRUE(pin(cpus[0]));
	/* A per-CPU watchpoint: Linux writes DR7 when it installs it, not at context switches. */
	fd = syscall(__NR_perf_event_open, &attr, -1, cpus[0], -1, 0);
	if (fd < 0)
		SKIP(return, "no hardware breakpoint: %s", strerror(errno));
	watched_by_cpu++;
	ASSERT_EQ(sizeof(count), read(fd, &count, sizeof(count)));
	if (count != 1) {
		close(fd);
		SKIP(return, "the CPU delivered %llu of 1 data breakpoints", (unsigned long long)count);
	}
	unloaded = unload_beside(cpus[1]);
	watched_by_cpu++;
	got = read(fd, &count, sizeof(count));
	close(fd);
	/* keel.ko back before any assertion can end the test. */
	ASSERT_EQ(0, reload()) TH_LOG("insmod after the test failed");
	ASSERT_EQ(sizeof(count), got);
	ASSERT_TRUE(unloaded) TH_LOG("rmmod failed");
	EXPECT_EQ(2, count) TH_LOG("the watchpoint counted %llu of 2 writes across rmmod",
				   (unsigned long long)count);
}

TEST_HARNESS_MAIN

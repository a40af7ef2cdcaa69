// SPDX-License-Identifier: GPL-2.0
/*
 * domain_lifecycle_test: a domain's life: create/destroy cycles that leak nothing,
 * pause and unpause, a spinning guest that is preempted and interrupted by a signal, and
 * destroying a domain while its vCPUs run.
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kselftest_harness.h"
#include "domain_test.h"

/* ---------------------------------------------------------------------------------------
 * Guest code: real-mode blobs (copied into guest RAM). */

asm(".pushsection .rodata\n"
    ".code16\n"
    /* Spins until the host moves RIP to the HLT. */
    "blob_real_spin_start:\n"
    "	jmp blob_real_spin_start\n"
    "blob_real_spin_hlt:\n"
    "	hlt\n"
    "blob_real_spin_end:\n"
    /* With interrupts off, exits that root mode serves by itself, forever: CPUID, and an
     * invalid opcode whose handler (IVT vector 6) drops the frame and runs it again. */
    "blob_real_cpuid_storm_start:\n"
    "	cli\n"
    "1:	xor %eax, %eax\n"
    "	cpuid\n"
    "	jmp 1b\n"
    "blob_real_cpuid_storm_end:\n"
    "blob_real_ud_storm_start:\n"
    "	cli\n"
    "blob_real_ud_storm_ud:\n"
    "	ud2\n"
    "blob_real_ud_storm_handler:\n"
    "	add $6, %sp\n"
    "	jmp blob_real_ud_storm_ud\n"
    "blob_real_ud_storm_end:\n"
    /* Increments a dword counter in memory forever. */
    "blob_real_count_start:\n"
    "	addl $1, " KEEL_STR(COUNTER_GPA) "\n"
    "	jmp blob_real_count_start\n"
    "blob_real_count_end:\n"
    ".code64\n"
    ".popsection\n");

BLOB(real_spin);
BLOB(real_count);
BLOB(real_cpuid_storm);
BLOB(real_ud_storm);
extern const uint8_t blob_real_spin_hlt[], blob_real_ud_storm_handler[];

/* ---------------------------------------------------------------------------------------
 * Host helpers. */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000ULL + ts.tv_nsec / 1000000;
}

/* Polls `cond` for up to `ms` milliseconds; its last value. */
#define WAIT_FOR(cond, ms)                                                                   \
	({                                                                                   \
		uint64_t __end = now_ms() + (ms);                                            \
		bool __ok;                                                                   \
		while (!(__ok = (cond)) && now_ms() < __end)                                 \
			usleep(1000);                                                        \
		__ok;                                                                        \
	})

static uint64_t running_mask(struct keel_vm *vm)
{
	struct keel_domain_info info;

	vm_info(vm, &info);
	return info.running_mask;
}

static uint32_t domain_state(struct keel_vm *vm)
{
	struct keel_domain_info info;

	vm_info(vm, &info);
	return info.state;
}

static void noop_handler(int sig)
{
	(void)sig;
}

/* SIGUSR1 with a handler that does nothing and no SA_RESTART: it interrupts KEEL_VCPU_RUN. */
static void install_sigusr1(void)
{
	struct sigaction sa = { .sa_handler = noop_handler };

	sigemptyset(&sa.sa_mask);
	KEEL_ASSERT(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction: %s", strerror(errno));
}

/* A thread that runs a vCPU once (one KEEL_VCPU_RUN). */
struct vcpu_thread {
	struct keel_vcpu *vcpu;
	pthread_t tid;
	int ret;
	int err;
	int done;
};

static void *run_once_fn(void *arg)
{
	struct vcpu_thread *t = arg;

	t->ret = __vcpu_run(t->vcpu);
	t->err = errno;
	__atomic_store_n(&t->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static void vcpu_thread_start(struct vcpu_thread *t, struct keel_vcpu *vcpu,
			      void *(*fn)(void *))
{
	t->vcpu = vcpu;
	t->done = 0;
	KEEL_ASSERT(pthread_create(&t->tid, NULL, fn, t) == 0, "pthread_create");
}

static bool vcpu_thread_done(struct vcpu_thread *t)
{
	return __atomic_load_n(&t->done, __ATOMIC_SEQ_CST);
}

/* Joins a thread that has finished (or will within `ms`); false if it did not. */
static bool vcpu_thread_join(struct vcpu_thread *t, uint64_t ms)
{
	if (!WAIT_FOR(vcpu_thread_done(t), ms))
		return false;
	pthread_join(t->tid, NULL);
	return true;
}

/* A kB value of /proc/meminfo, -1 when absent. */
static long meminfo_kb(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		size_t n = strlen(key);

		if (!strncmp(line, key, n) && line[n] == ':') {
			v = strtol(line + n + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

/* ---------------------------------------------------------------------------------------
 * Create/destroy cycles leak nothing. */

TEST_F_TIMEOUT(domain, create_destroy_cycles, 300)
{
	uint32_t count = keel_domain_count();
	long avail0 = 0, avail1;

	/*
	 * 10 warm-up cycles first: the first domains of a fresh boot grow the slab caches and the
	 * per-CPU page lists by several MiB, which a leak check must not count. A leaked vCPU
	 * state (2 x 64 KiB a cycle) or RAM chunk would still cost far more than 8 MiB.
	 */
	for (int i = -10; i < 100; i++) {
		if (i == 0) {
			avail0 = meminfo_kb("MemAvailable");
			ASSERT_LT(0, avail0);
		}
		struct keel_vm *vm = REAL_VM("cycle", 2, SZ_2M, real_hlt);

		for (int v = 0; v < 2; v++) {
			vcpu_run(vm->vcpus[v]);
			ASSERT_EQ(KEEL_EXIT_HLT, vm->vcpus[v]->run.exit.reason)
				TH_LOG("cycle %d, vCPU %d: %s", i, v,
				       keel_exit_str(&vm->vcpus[v]->run.exit));
		}
		vm_destroy(vm);
	}
	EXPECT_EQ(count, keel_domain_count());
	avail1 = meminfo_kb("MemAvailable");
	EXPECT_GT(8 * 1024, avail0 - avail1)
		TH_LOG("MemAvailable dropped from %ld kB to %ld kB", avail0, avail1);
}

/* ---------------------------------------------------------------------------------------
 * Pause and unpause. */

/* A signal interrupts a run that waits for an unpause. */
TEST_F(domain, paused_run_is_interruptible)
{
	struct keel_vm *vm = REAL_VM("pause-intr", 1, SZ_64K, real_hlt);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct vcpu_thread t;

	install_sigusr1();
	vm_pause(vm);
	vcpu_thread_start(&t, vcpu, run_once_fn);
	usleep(100000);
	EXPECT_FALSE(vcpu_thread_done(&t))
		TH_LOG("ran while paused: %s", keel_exit_str(&vcpu->run.exit));
	EXPECT_EQ(0, running_mask(vm));
	ASSERT_EQ(0, pthread_kill(t.tid, SIGUSR1));
	ASSERT_TRUE(vcpu_thread_join(&t, 5000)) TH_LOG("the signal did not end the wait");
	EXPECT_EQ(-1, t.ret);
	EXPECT_EQ(EINTR, t.err);
	EXPECT_EXIT(vcpu, KEEL_EXIT_INTR);
	vm_unpause(vm);
	vcpu_run(vcpu);
	EXPECT_EXIT(vcpu, KEEL_EXIT_HLT);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * Guests that never exit by themselves: a hypervisor that fails to take the CPU back from
 * them wedges the machine, so these run last (here, and run_all.sh runs this file after the
 * other C tests), after everything else has reported.
 *
 * A spinning guest, preemption and signals. */

/*
 * Runs the vCPU on a thread pinned to CPU 0 beside this one, for 100 ms of sleeps: the guest
 * must be preempted (the sleeps end in time), must have had the CPU meanwhile, and a signal
 * must end its run.
 */
static void preempted_and_interrupted(struct __test_metadata *_metadata, struct keel_vm *vm)
{
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct vcpu_thread t;
	struct timespec cpu0, cpu1;
	clockid_t clock;
	uint64_t start, elapsed;
	bool pinned;

	install_sigusr1();
	vcpu_thread_start(&t, vcpu, run_once_fn);
	/* Both threads on one CPU: the main thread runs only if the guest is preempted. */
	pinned = pin_thread(t.tid, 0) && pin_thread(pthread_self(), 0);
	ASSERT_TRUE(WAIT_FOR(running_mask(vm) & 1, 5000)) TH_LOG("the vCPU never ran");

	ASSERT_EQ(0, pthread_getcpuclockid(t.tid, &clock));
	clock_gettime(clock, &cpu0);
	start = now_ms();
	for (int i = 0; i < 20; i++)
		usleep(5000);
	elapsed = now_ms() - start;
	clock_gettime(clock, &cpu1);
	EXPECT_LT(elapsed, 2000) TH_LOG("20 sleeps of 5 ms took %llu ms (pinned: %d)",
					(ull)elapsed, pinned);
	EXPECT_FALSE(vcpu_thread_done(&t))
		TH_LOG("the run ended: %s", keel_exit_str(&vcpu->run.exit));
	/* The guest had the CPU meanwhile. */
	EXPECT_LT(cpu0.tv_sec * 1000000000LL + cpu0.tv_nsec + 10000000LL,
		  cpu1.tv_sec * 1000000000LL + cpu1.tv_nsec);

	ASSERT_EQ(0, pthread_kill(t.tid, SIGUSR1));
	ASSERT_TRUE(vcpu_thread_join(&t, 5000)) TH_LOG("the signal did not end the run");
	EXPECT_EQ(-1, t.ret);
	EXPECT_EQ(EINTR, t.err) TH_LOG("errno %s", strerrorname_np(t.err));
	EXPECT_EXIT(vcpu, KEEL_EXIT_INTR);
}

TEST_F(domain, spinning_guest_is_preempted_and_interrupted)
{
	struct keel_vm *vm = REAL_VM("spin", 1, SZ_64K, real_spin);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_regs regs;

	preempted_and_interrupted(_metadata, vm);

	/* It can run again: move it to the HLT. */
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(0, regs.rip) TH_LOG("rip %#llx, not the jmp", (ull)regs.rip);
	regs.rip = BLOB_OFF(real_spin, hlt);
	vcpu_set_regs(vcpu, &regs);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_HLT);
	EXPECT_EQ(BLOB_OFF(real_spin, hlt), vcpu->run.exit.rip);
	vm_destroy(vm);
}

/*
 * A guest whose every exit root mode serves by itself, with interrupts off, is preempted and
 * interrupted as a spinning one is. (Bochs holds a host interrupt while a guest runs with IF
 * clear, and each entry started the VMX-preemption timer afresh: the exits came faster than
 * it expired, and the run kept the host CPU until an NMI, the RCU stall detector's.)
 */
TEST_F(domain, cpuid_storm_with_if_clear_is_preempted_and_interrupted)
{
	struct keel_vm *vm = REAL_VM("cpuid-storm", 1, SZ_64K, real_cpuid_storm);

	preempted_and_interrupted(_metadata, vm);
	vm_destroy(vm);
}

TEST_F(domain, ud_storm_with_if_clear_is_preempted_and_interrupted)
{
	struct keel_vm *vm = REAL_VM("ud-storm", 1, SZ_64K, real_ud_storm);
	const uint16_t ivt[2] = { BLOB_OFF(real_ud_storm, handler), CODE_GPA >> 4 };
	struct keel_regs regs;

	vm_write(vm, 6 * 4, ivt, sizeof(ivt));
	vcpu_get_regs(vm->vcpus[0], &regs);
	regs.rsp = 0x8000;
	vcpu_set_regs(vm->vcpus[0], &regs);
	preempted_and_interrupted(_metadata, vm);
	vcpu_get_regs(vm->vcpus[0], &regs);
	/* Stopped before or after a #UD's frame: the handler dropped every other one. */
	EXPECT_TRUE((regs.rsp & 0xffff) == 0x8000 || (regs.rsp & 0xffff) == 0x8000 - 6)
		TH_LOG("SP %#llx", (ull)regs.rsp);
	vm_destroy(vm);
}

/* A refused entry must not cost the host a CPU afterwards: after two refused entries (forced
 * through debugfs: Keel enters no invalid state), the same vCPU spins with interrupts off (real mode, IF
 * clear) and a signal still ends its run. (Under QEMU's SVM a failed VMRUN wrote int_ctl back
 * without V_INTR_MASKING, so host interrupts no longer left the guest: the run never
 * returned.) */
TEST_F(domain, failed_entry_then_spin_with_if_clear_is_interrupted)
{
	struct keel_vm *vm = REAL_VM("fail-spin", 1, SZ_64K, real_spin);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_regs regs;
	struct vcpu_thread t;

	install_sigusr1();
	vcpu_get_regs(vcpu, &regs);
	EXPECT_EQ(0, regs.rflags & X86_RFLAGS_IF) TH_LOG("the guest must spin with IF clear");
	/* Two refused entries (what a refused VMRUN writes back, QEMU's int_ctl = 0 included,
	 * must not outlive them). */
	if (!force_entry_failures(2))
		SKIP(goto out, "cannot write %s", FAIL_ENTRIES);
	for (int i = 0; i < 2; i++) {
		vcpu_run(vcpu);
		ASSERT_EXIT(vcpu, KEEL_EXIT_ENTRY_FAILURE);
	}
	vcpu_thread_start(&t, vcpu, run_once_fn);
	ASSERT_TRUE(WAIT_FOR(running_mask(vm) & 1, 5000)) TH_LOG("the vCPU never ran");
	usleep(100000);
	EXPECT_FALSE(vcpu_thread_done(&t))
		TH_LOG("the run ended: %s", keel_exit_str(&vcpu->run.exit));
	ASSERT_EQ(0, pthread_kill(t.tid, SIGUSR1));
	ASSERT_TRUE(vcpu_thread_join(&t, 5000)) TH_LOG("the signal did not end the run");
	EXPECT_EQ(-1, t.ret);
	EXPECT_EQ(EINTR, t.err) TH_LOG("errno %s", strerrorname_np(t.err));
	EXPECT_EXIT(vcpu, KEEL_EXIT_INTR);
out:
	force_entry_failures(0);
	vm_destroy(vm);
}

/* Progress stops while paused. */

TEST_F(domain, pause_stops_progress)
{
	struct keel_vm *vm = REAL_VM("pause", 1, SZ_64K, real_count);
	volatile uint32_t *counter = gpa_hva(vm, COUNTER_GPA, 4);
	struct vcpu_thread t;
	uint32_t c1, c2;

	install_sigusr1();
	EXPECT_EQ(0, domain_state(vm) & KEEL_DOMAIN_PAUSED);
	vcpu_thread_start(&t, vm->vcpus[0], run_once_fn);
	ASSERT_TRUE(WAIT_FOR(*counter > 1000, 5000)) TH_LOG("the guest makes no progress");

	vm_pause(vm);
	EXPECT_TRUE(domain_state(vm) & KEEL_DOMAIN_PAUSED);
	/* The vCPU leaves the guest and waits inside KEEL_VCPU_RUN. */
	ASSERT_TRUE(WAIT_FOR(running_mask(vm) == 0, 2000)) TH_LOG("the vCPU stays in the guest");
	c1 = *counter;
	usleep(200000);
	c2 = *counter;
	EXPECT_EQ(c1, c2) TH_LOG("the counter moved while paused");
	EXPECT_FALSE(vcpu_thread_done(&t)) TH_LOG("the run ended: %s",
						  keel_exit_str(&vm->vcpus[0]->run.exit));

	/* Pauses nest. */
	vm_pause(vm);
	vm_unpause(vm);
	EXPECT_TRUE(domain_state(vm) & KEEL_DOMAIN_PAUSED);
	usleep(50000);
	EXPECT_EQ(c2, *counter);

	vm_unpause(vm);
	EXPECT_EQ(0, domain_state(vm) & KEEL_DOMAIN_PAUSED);
	EXPECT_TRUE(WAIT_FOR(*counter > c2 + 1000, 5000)) TH_LOG("no progress after unpause");
	EXPECT_ERRNO(EINVAL, __keel_unpause(vm->fd));

	ASSERT_EQ(0, pthread_kill(t.tid, SIGUSR1));
	ASSERT_TRUE(vcpu_thread_join(&t, 5000)) TH_LOG("the signal did not end the run");
	EXPECT_EQ(EINTR, t.err);
	vm_destroy(vm);
}

/* Destroying a domain whose vCPUs are running. */

static void *run_forever_fn(void *arg)
{
	struct keel_vcpu *vcpu = arg;

	for (;;)
		__vcpu_run(vcpu);
	return NULL;
}

TEST_F(domain, destroy_while_running)
{
	struct keel_domain_info info = { 0 };
	struct keel_vm *vm;
	char name[KEEL_NAME_LEN];
	int status;
	pid_t pid;

	snprintf(name, sizeof(name), "doomed-%d", getpid());
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		pthread_t tid[2];

		vm = REAL_VM(name, 2, SZ_64K, real_spin);
		for (int i = 0; i < 2; i++)
			if (pthread_create(&tid[i], NULL, run_forever_fn, vm->vcpus[i]))
				_exit(2);
		for (;;)
			pause();
	}
	EXPECT_TRUE(WAIT_FOR(keel_find_domain(name, &info) && info.running_mask == 3, 10000))
		TH_LOG("the child's vCPUs never ran together (running_mask %#llx)",
		       (ull)info.running_mask);
	ASSERT_EQ(0, kill(pid, SIGKILL));
	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
		TH_LOG("the child ended with status %#x", status);
	EXPECT_TRUE(WAIT_FOR(!keel_find_domain(name, NULL), 5000))
		TH_LOG("'%s' is still listed", name);

	vm = REAL_VM("after-destroy", 1, SZ_64K, real_out);
	vcpu_run(vm->vcpus[0]);
	EXPECT_EXIT(vm->vcpus[0], KEEL_EXIT_IO);
	vcpu_run(vm->vcpus[0]);
	EXPECT_EXIT(vm->vcpus[0], KEEL_EXIT_HLT);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

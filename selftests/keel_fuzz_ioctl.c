// SPDX-License-Identifier: GPL-2.0
/*
 * keel_fuzz_ioctl: a random-ioctl fuzzer over /dev/keel, domain fds and vCPU fds. Each case
 * draws a few dozen operations from its own generator: every KEEL_* ioctl and random ones
 * (altered sizes and directions, random numbers of Keel's type, anything), with payloads that
 * are zero, all-ones, random, boundary values or valid, through NULL, unaligned, unmapped,
 * read-only, kernel and non-canonical pointers and structures that cross into an unmapped
 * page; domains and vCPUs created with random and boundary arguments up to the limits, ranges,
 * random and valid register states (small guests from selftests/lib in every mode), runs bounded
 * by a periodic SIGALRM, mmaps of domain memory with odd offsets, lengths and protections,
 * pauses, closes of fds while another thread is inside KEEL_VCPU_RUN, forks whose child uses
 * the inherited fds, and destroys. A run or child that never returns is reported by a
 * watchdog, naming the seed and the case.
 *
 * TAP; runs inside the test VM as root with keel.ko loaded. See --help.
 */
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "guest.h"
#include "fuzz.h"

struct fuzz_watchdog fuzz_wd;

static const char usage[] =
	"usage: keel_fuzz_ioctl [--seconds N] [--seed S] [--case C] [--no-known-wedges]\n"
	"                       [--hang-seconds H] [--verbose]\n"
	"\n"
	"Calls random ioctls on /dev/keel, domain fds and vCPU fds for N seconds (default 60):\n"
	"every KEEL_* ioctl and random ones, random and boundary payloads through good and bad\n"
	"pointers, domains and vCPUs up to the limits, random and valid vCPU states and runs (each\n"
	"bounded by a SIGALRM), mmaps with odd offsets and lengths, closes during runs, forks,\n"
	"destroys. Then checks that every domain went away with its fds and that a good domain\n"
	"still runs. Prints TAP and the figures (calls, exits by kind, errors by errno, runs ended\n"
	"by a signal, seed, time).\n"
	"\n"
	"  --seconds N         how long to fuzz (default 60)\n"
	"  --seed S            the seed every case derives from (default: from the clock; printed)\n"
	"  --case C            run only case C of the seed (replays a finding), then the checks\n"
	"  --no-known-wedges   leave out the vCPU states known to wedge a host CPU under QEMU until\n"
	"                      Keel refuses them (EFER.LMA without CR0.PG; EFER.LME without\n"
	"                      CR0.PG and CR4.PAE)\n"
	"  --hang-seconds H    a run (or a forked child) not done after H s is a hang (default 20)\n"
	"  --verbose           print every operation\n"
	"  --help              this text\n"
	"\n"
	"Exit status: 0 when every test passed, 1 when one failed, 3 on a hang.\n";

static uint64_t opt_seconds = 60, opt_seed, opt_case = UINT64_MAX, opt_hang = 20;
static bool opt_known_wedges = true, opt_verbose;

static struct fuzz_counts counts;
static _Atomic uint64_t nr_calls, nr_cases, nr_runs, nr_forks, nr_close_races, nr_ok;
static uint64_t t_start;

static void report_figures(void)
{
	printf("# seed %llu, %llu cases, %llu calls (%llu succeeded), %llu runs, %llu forks, %llu closes during a run, %llu s\n",
	       (ull)opt_seed, (ull)atomic_load(&nr_cases), (ull)atomic_load(&nr_calls),
	       (ull)atomic_load(&nr_ok), (ull)atomic_load(&nr_runs), (ull)atomic_load(&nr_forks),
	       (ull)atomic_load(&nr_close_races), (ull)((fuzz_now_ns() - t_start) / 1000000000ULL));
	print_counts(&counts);
	fflush(stdout);
}

/* --- The pool of objects a case works on. ------------------------------------------------- */

#define MAX_DOMAINS 12
#define MAX_MAPS    16

struct domain {
	int fd;             /* -1: free slot */
	uint32_t max_vcpus;
	int vcpu_fd[KEEL_MAX_VCPUS];
	struct keel_vm vm;  /* for the library's mode setup: fd and vcpus[] */
	struct keel_vcpu vcpus[KEEL_MAX_VCPUS];
};

struct map {
	void *addr;
	size_t len;
};

static struct domain domains[MAX_DOMAINS];
static struct map maps[MAX_MAPS];
static int dev_fd, null_fd;
static struct fuzz_slot *main_slot;
static struct fuzz_timer main_timer;

/* Argument buffers: two read-write pages, then an unmapped guard page, and a read-only page. */
static uint8_t *buf, *guard, *ro_page;

/* --- Calls. ------------------------------------------------------------------------------- */

/* Every ioctl goes through here: counted, bounded by a periodic SIGALRM (a run inside one must
 * end with EINTR), watched. */
static long fuzz_ioctl(uint64_t kase, int fd, unsigned long cmd, void *arg)
{
	long ret;
	int err;

	fuzz_run_enter(main_slot, kase, "ioctl(%d, %#lx, %p)", fd, cmd, arg);
	fuzz_timer_arm(&main_timer, 20000);
	ret = ioctl(fd, cmd, arg);
	err = errno;
	fuzz_timer_arm(&main_timer, 0);
	fuzz_run_leave(main_slot);
	atomic_fetch_add(&nr_calls, 1);
	if (cmd == KEEL_VCPU_RUN)
		atomic_fetch_add(&nr_runs, 1);
	if (ret < 0) {
		count_errno(&counts, err);
		if (err == EINTR && cmd == KEEL_VCPU_RUN)
			atomic_fetch_add(&counts.intr, 1);
	} else {
		atomic_fetch_add(&nr_ok, 1);
		if (cmd == KEEL_VCPU_RUN && arg == buf)
			count_exit(&counts, ((struct keel_run *)buf)->exit.reason);
	}
	if (opt_verbose)
		printf("#   case %llu: ioctl(%d, %#lx, %p) = %ld%s%s\n", (ull)kase, fd, cmd, arg,
		       ret, ret < 0 ? " " : "", ret < 0 ? strerrorname_np(err) ?: "?" : "");
	errno = err;
	return ret;
}

static const unsigned long keel_cmds[] = {
	KEEL_GET_VERSION, KEEL_GET_CAPS, KEEL_CREATE_DOMAIN, KEEL_LIST_DOMAINS,
	KEEL_DOMAIN_ADD_RANGE, KEEL_DOMAIN_CREATE_VCPU, KEEL_DOMAIN_PAUSE, KEEL_DOMAIN_UNPAUSE,
	KEEL_DOMAIN_INFO, KEEL_VCPU_GET_REGS, KEEL_VCPU_SET_REGS, KEEL_VCPU_GET_SREGS,
	KEEL_VCPU_SET_SREGS, KEEL_VCPU_RUN,
};
#define NR_KEEL_CMDS (sizeof(keel_cmds) / sizeof(keel_cmds[0]))

static unsigned long rnd_cmd(struct rng *r)
{
	unsigned long cmd = keel_cmds[rnd(r, NR_KEEL_CMDS)];

	switch (rnd(r, 8)) {
	case 0: /* another size */
		return (cmd & ~(_IOC_SIZEMASK << _IOC_SIZESHIFT)) |
		       (rnd_interesting(r) & _IOC_SIZEMASK) << _IOC_SIZESHIFT;
	case 1: /* another direction */
		return (cmd & ~(3UL << _IOC_DIRSHIFT)) | rnd(r, 4) << _IOC_DIRSHIFT;
	case 2: /* another number of Keel's type */
		return _IOC(rnd(r, 4), KEEL_IOCTL_TYPE, rnd(r, 256), rnd(r, 0x400));
	case 3: /* anything */
		return one_in(r, 2) ? (uint32_t)rng_next(r) : rng_next(r);
	case 4: /* generic ones the VFS or the driver might take */
		return (unsigned long[]){ FIONREAD, FIONBIO, FIOASYNC, FIOQSIZE, FIOCLEX,
					  0x5401 /* TCGETS */ }[rnd(r, 6)];
	default:
		return cmd;
	}
}

/* Known wedges (the uapi's invalid states Keel accepts, and QEMU's EFER.LME path): made
 * consistent unless --no-known-wedges is off. */
static void filter_sregs(struct keel_sregs *s)
{
	bool paging = (s->cr0 & X86_CR0_PG) && (s->cr0 & X86_CR0_PE) && (s->cr4 & X86_CR4_PAE);

	if (opt_known_wedges)
		return;
	if (!paging)
		s->efer &= ~(X86_EFER_LME | X86_EFER_LMA);
	else if (s->efer & X86_EFER_LME)
		s->efer |= X86_EFER_LMA;
	else
		s->efer &= ~X86_EFER_LMA;
}

/* A random argument: a pointer of some kind, its buffer filled some way. */
static void *rnd_arg(struct rng *r, unsigned long cmd)
{
	size_t size = _IOC_SIZE(cmd) ?: 64;

	switch (rnd(r, 12)) {
	case 0: return NULL;
	case 1: return guard;                          /* unmapped */
	case 2: return guard - (size > 1 ? size / 2 : 1); /* crosses into it */
	case 3: return ro_page;                        /* read-only */
	case 4: return (void *)0xffff888000000000ULL;  /* the kernel's */
	case 5: return (void *)(uintptr_t)rnd_interesting(r);
	case 6:
		rnd_fill(r, buf + 1, 2 * 4096 - 1);
		return buf + 1 + rnd(r, 7);            /* unaligned */
	case 7: memset(buf, 0, 2 * 4096); return buf;
	case 8: memset(buf, 0xff, 2 * 4096); return buf;
	default:
		rnd_fill(r, buf, 2 * 4096);
		/* Mostly-valid: flags and pads zero now and then. */
		if (one_in(r, 2))
			memset(buf, 0, 8);
		return buf;
	}
}

/* --- The pool. ---------------------------------------------------------------------------- */

static struct domain *rnd_domain(struct rng *r)
{
	for (int tries = 0; tries < 4; tries++) {
		struct domain *d = &domains[rnd(r, MAX_DOMAINS)];

		if (d->fd >= 0)
			return d;
	}
	return NULL;
}

static int rnd_vcpu(struct rng *r, struct domain **dp)
{
	struct domain *d = rnd_domain(r);

	*dp = d;
	if (!d)
		return -1;
	for (int tries = 0; tries < 4; tries++) {
		int id = rnd(r, d->max_vcpus);

		if (d->vcpu_fd[id] >= 0)
			return id;
	}
	return -1;
}

/* Any fd of ours, or a bad one (never 0, 1, 2: the console). */
static int rnd_fd(struct rng *r)
{
	struct domain *d;
	int id;

	switch (rnd(r, 8)) {
	case 0: return dev_fd;
	case 1: return null_fd;
	case 2: return -1;
	case 3: return 900 + rnd(r, 100); /* closed */
	case 4:
	case 5:
		d = rnd_domain(r);
		return d ? d->fd : dev_fd;
	default:
		id = rnd_vcpu(r, &d);
		return id >= 0 ? d->vcpu_fd[id] : dev_fd;
	}
}

static void domain_close(struct domain *d)
{
	for (int i = 0; i < KEEL_MAX_VCPUS; i++) {
		if (d->vcpu_fd[i] >= 0)
			close(d->vcpu_fd[i]);
		d->vcpu_fd[i] = -1;
	}
	close(d->fd);
	d->fd = -1;
}

static void close_all(void)
{
	for (int i = 0; i < MAX_DOMAINS; i++)
		if (domains[i].fd >= 0)
			domain_close(&domains[i]);
	for (int i = 0; i < MAX_MAPS; i++) {
		if (maps[i].addr)
			munmap(maps[i].addr, maps[i].len);
		maps[i].addr = NULL;
	}
}

static struct domain *domain_new(uint64_t kase, struct rng *r, bool valid)
{
	struct keel_domain_create c = { 0 };
	struct domain *d = NULL;
	int fd;

	for (int i = 0; i < MAX_DOMAINS && !d; i++)
		if (domains[i].fd < 0)
			d = &domains[i];
	if (!d) {
		d = &domains[rnd(r, MAX_DOMAINS)];
		domain_close(d);
	}
	c.max_vcpus = valid ? 1 + rnd(r, one_in(r, 8) ? KEEL_MAX_VCPUS : 4)
			    : (uint32_t)rnd_interesting(r);
	c.memory_size = valid ? (1 + rnd(r, 64)) * SZ_64K + KEEL_SYS_RESERVE : rnd_interesting(r);
	if (!valid && one_in(r, 4))
		c.flags = rnd_interesting(r), c.pad = rnd_interesting(r);
	if (valid || one_in(r, 2))
		snprintf(c.name, sizeof(c.name), "fz%llu-%u", (ull)kase, (unsigned)rnd(r, 1000));
	else
		rnd_fill(r, c.name, sizeof(c.name));
	fd = fuzz_ioctl(kase, dev_fd, KEEL_CREATE_DOMAIN, &c);
	if (fd < 0)
		return NULL;
	d->fd = fd;
	d->max_vcpus = c.max_vcpus;
	memset(&d->vm, 0, sizeof(d->vm));
	d->vm.fd = fd;
	d->vm.max_vcpus = c.max_vcpus;
	snprintf(d->vm.name, sizeof(d->vm.name), "%s", c.name);
	for (int i = 0; i < KEEL_MAX_VCPUS; i++)
		d->vcpu_fd[i] = -1;
	return d;
}

static int vcpu_new(uint64_t kase, struct rng *r, struct domain *d, bool valid)
{
	struct keel_vcpu_create c = { .id = valid ? rnd(r, d->max_vcpus) : rnd_interesting(r) };
	int fd;

	if (!valid && one_in(r, 4))
		c.flags = rnd_interesting(r);
	fd = fuzz_ioctl(kase, d->fd, KEEL_DOMAIN_CREATE_VCPU, &c);
	if (fd < 0)
		return -1;
	KEEL_ASSERT(c.id < d->max_vcpus && d->vcpu_fd[c.id] < 0,
		    "KEEL_DOMAIN_CREATE_VCPU made vCPU %u of a domain with max_vcpus %u%s", c.id,
		    d->max_vcpus, c.id < d->max_vcpus ? " twice" : "");
	d->vcpu_fd[c.id] = fd;
	d->vcpus[c.id] = (struct keel_vcpu){ .vm = &d->vm, .id = c.id, .fd = fd };
	d->vm.vcpus[c.id] = &d->vcpus[c.id];
	return c.id;
}

/* A guest blob for valid vCPUs: OUT, HLT, a VMCALL, then spin with interrupts off. */
asm(".pushsection .rodata\n"
    ".code16\n"
    "fz_real_start:\n"
    "	mov $0x55, %al\n"
    "	out %al, $0x80\n"
    "	hlt\n"
    "	cli\n"
    "	jmp .\n"
    "fz_real_end:\n"
    ".code32\n"
    "fz_prot_start:\n"
    "	mov $0x4b10, %eax\n"
    "	vmcall\n"
    "	movl $1, 0x800000\n"
    "	hlt\n"
    "	cli\n"
    "	jmp .\n"
    "fz_prot_end:\n"
    ".code64\n"
    ".popsection\n");
extern const uint8_t fz_real_start[], fz_real_end[], fz_prot_start[], fz_prot_end[];

/* Gives a vCPU a good state (the library's real or 32-bit mode) or a random one. */
static void vcpu_state(uint64_t kase, struct rng *r, struct domain *d, int id)
{
	struct keel_sregs s;
	struct keel_regs regs;

	switch (rnd(r, 4)) {
	case 0:
		vcpu_setup_real(&d->vcpus[id], 0x1000, 0);
		return;
	case 1:
		vcpu_setup_prot32(&d->vcpus[id], 0x2000);
		return;
	case 2: /* the current state, some fields changed */
		if (fuzz_ioctl(kase, d->vcpu_fd[id], KEEL_VCPU_GET_SREGS, &s))
			return;
		for (int n = 1 + rnd(r, 3); n; n--) {
			uint64_t v = rnd_interesting(r);

			switch (rnd(r, 9)) {
			case 0: s.cr0 ^= 1ULL << rnd(r, 64); break;
			case 1: s.cr4 ^= 1ULL << rnd(r, 64); break;
			case 2: s.efer ^= 1ULL << rnd(r, 64); break;
			case 3: s.cr3 = v; break;
			case 4: s.cs.attrib ^= 1 << rnd(r, 16); break;
			case 5: s.ss.attrib = v; s.ds.limit = v; break;
			case 6: s.tr.attrib = v; s.tr.base = v; break;
			case 7: s.gdt.limit = v; s.idt.base = v; break;
			default: s.cs.base = v; s.cs.limit = v >> 32; break;
			}
		}
		filter_sregs(&s);
		fuzz_ioctl(kase, d->vcpu_fd[id], KEEL_VCPU_SET_SREGS, &s);
		break;
	default: /* random registers */
		rnd_fill(r, &regs, sizeof(regs));
		if (one_in(r, 2))
			regs.rflags = 2 | (regs.rflags & 0x3f7fd5);
		fuzz_ioctl(kase, d->vcpu_fd[id], KEEL_VCPU_SET_REGS, &regs);
		break;
	}
}

/* Runs a vCPU a few times, answering every exit with random data. */
static void vcpu_runs(uint64_t kase, struct rng *r, int fd)
{
	struct keel_run *run = (struct keel_run *)buf;

	memset(run, 0, sizeof(*run));
	for (int n = 1 + rnd(r, 6); n; n--) {
		if (fuzz_ioctl(kase, fd, KEEL_VCPU_RUN, run) < 0 && errno != EINTR)
			return;
		run->exit.raw[2] = rnd_interesting(r); /* io.data, mmio.data */
		run->exit.hypercall.ret = rnd_interesting(r);
		if (one_in(r, 16))
			run->flags = rnd_interesting(r);
	}
}

/* --- Operations that need more than one call. --------------------------------------------- */

static sigjmp_buf touch_env;

static void touch_fault(int sig)
{
	siglongjmp(touch_env, sig);
}

static void op_mmap(uint64_t kase, struct rng *r)
{
	struct domain *d = rnd_domain(r);
	struct map *m = &maps[rnd(r, MAX_MAPS)];
	uint64_t off, len;
	int prot, flags;
	void *p;

	if (!d)
		return;
	if (m->addr)
		munmap(m->addr, m->len);
	m->addr = NULL;
	off = one_in(r, 2) ? rnd(r, 64) * SZ_4K : rnd_interesting(r);
	len = one_in(r, 2) ? (1 + rnd(r, 64)) * SZ_4K : rnd_interesting(r) & 0xffffffffULL;
	prot = (int[]){ PROT_READ | PROT_WRITE, PROT_READ, PROT_NONE, PROT_EXEC | PROT_READ,
			PROT_WRITE }[rnd(r, 5)];
	flags = one_in(r, 4) ? MAP_PRIVATE : MAP_SHARED;
	atomic_fetch_add(&nr_calls, 1);
	p = mmap(NULL, len, prot, flags, d->fd, off);
	if (p == MAP_FAILED) {
		count_errno(&counts, errno);
		return;
	}
	atomic_fetch_add(&nr_ok, 1);
	m->addr = p;
	m->len = len;
	/* Touch it: read (and write where allowed) a few pages, catching the faults. */
	if (prot & PROT_READ) {
		struct sigaction sa = { .sa_handler = touch_fault }, old_segv, old_bus;
		volatile uint8_t *q = p;
		int sig;

		sigemptyset(&sa.sa_mask);
		sigaction(SIGSEGV, &sa, &old_segv);
		sigaction(SIGBUS, &sa, &old_bus);
		sig = sigsetjmp(touch_env, 1);
		if (!sig) {
			for (int i = 0; i < 4; i++) {
				uint64_t at = rnd(r, len);

				(void)q[at];
				if (prot & PROT_WRITE)
					q[at] = 0xf4;
			}
		} else {
			count_errno(&counts, 0);
		}
		sigaction(SIGSEGV, &old_segv, NULL);
		sigaction(SIGBUS, &old_bus, NULL);
	}
	if (one_in(r, 2)) {
		munmap(m->addr, m->len);
		m->addr = NULL;
	}
}

/* Loads the test blobs into a domain's RAM through a mapping at 0 (when it has RAM there). */
static void load_blobs(struct domain *d)
{
	uint8_t *p = mmap(NULL, SZ_64K, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, 0);

	if (p == MAP_FAILED)
		return;
	memcpy(p + 0x1000, fz_real_start, fz_real_end - fz_real_start);
	memcpy(p + 0x2000, fz_prot_start, fz_prot_end - fz_prot_start);
	munmap(p, SZ_64K);
}

/* A good domain with RAM, an MMIO range, a few vCPUs in good states. */
static void op_good_domain(uint64_t kase, struct rng *r)
{
	struct domain *d = domain_new(kase, r, true);
	struct keel_mem_range range = { .gpa = 0, .size = SZ_64K, .kind = KEEL_RANGE_RAM };

	if (!d)
		return;
	fuzz_ioctl(kase, d->fd, KEEL_DOMAIN_ADD_RANGE, &range);
	range = (struct keel_mem_range){ .gpa = 0x800000, .size = SZ_4K, .kind = KEEL_RANGE_MMIO };
	fuzz_ioctl(kase, d->fd, KEEL_DOMAIN_ADD_RANGE, &range);
	load_blobs(d);
	for (int n = 1 + rnd(r, d->max_vcpus < 4 ? d->max_vcpus : 4); n; n--) {
		int id = vcpu_new(kase, r, d, true);

		if (id >= 0)
			(one_in(r, 2) ? vcpu_setup_real(&d->vcpus[id], 0x1000, 0)
				      : vcpu_setup_prot32(&d->vcpus[id], 0x2000));
	}
}

/* A long-mode domain of the library (its image, page tables, GDT) running a C guest. */
static void GUEST_CODE guest_long(uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		GUEST_SYNC(i);
	__asm__ volatile("cli; hlt");
}

static void op_long_mode(uint64_t kase, struct rng *r)
{
	struct keel_vm *vm = vm_create("fz-long", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];

	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_long), 0);
	vcpu_args_set(vcpu, 1, rnd(r, 5));
	for (int n = 0; n < 8; n++) {
		memcpy(buf, &vcpu->run, sizeof(vcpu->run));
		if (fuzz_ioctl(kase, vcpu->fd, KEEL_VCPU_RUN, buf) < 0 && errno != EINTR)
			break;
		memcpy(&vcpu->run, buf, sizeof(vcpu->run));
	}
	vm_destroy(vm);
}

/* Closes a vCPU's and its domain's fds (and unmaps its RAM) while a thread runs the vCPU. */
struct race {
	int fd;
	uint64_t kase;
	_Atomic bool stop;
	_Atomic int runs;
};

static void *race_fn(void *arg)
{
	struct race *rc = arg;
	struct fuzz_slot *slot = fuzz_slot_get();
	struct fuzz_timer timer = { 0 };
	struct keel_run run = { 0 };

	fuzz_timer_init(&timer);
	while (!atomic_load(&rc->stop)) {
		long ret;

		fuzz_run_enter(slot, rc->kase, "a run whose fds are closed");
		fuzz_timer_arm(&timer, 30000);
		ret = ioctl(rc->fd, KEEL_VCPU_RUN, &run);
		fuzz_timer_arm(&timer, 0);
		fuzz_run_leave(slot);
		atomic_fetch_add(&rc->runs, 1);
		if (ret < 0 && errno != EINTR)
			break;
	}
	fuzz_timer_destroy(&timer);
	return NULL;
}

static void op_close_during_run(uint64_t kase, struct rng *r)
{
	struct keel_vm *vm = vm_create("fz-race", 2, SZ_64K);
	struct race rc = { .fd = vm->vcpus[0]->fd, .kase = kase };
	pthread_t tid;
	int what = rnd(r, 4);

	vm_write(vm, 0x1000, fz_real_start, fz_real_end - fz_real_start);
	vcpu_setup_real(vm->vcpus[0], 0x1000, 5); /* cli; jmp . */
	KEEL_ASSERT(pthread_create(&tid, NULL, race_fn, &rc) == 0, "pthread_create");
	usleep(rnd(r, 20000));
	switch (what) {
	case 0: /* the domain fd first */
		close(vm->fd);
		vm->fd = open("/dev/null", O_RDONLY);
		break;
	case 1: /* the running vCPU's fd */
		close(vm->vcpus[0]->fd);
		vm->vcpus[0]->fd = open("/dev/null", O_RDONLY);
		break;
	case 2: /* the RAM mapping */
		munmap(vm->regions[0].hva, vm->regions[0].size);
		vm->regions[0].hva = NULL;
		break;
	default: /* the other vCPU's */
		close(vm->vcpus[1]->fd);
		vm->vcpus[1]->fd = open("/dev/null", O_RDONLY);
		break;
	}
	usleep(rnd(r, 20000));
	vm_destroy(vm); /* closes the rest while the thread may still be in its run */
	atomic_store(&rc.stop, true);
	pthread_join(tid, NULL);
	atomic_fetch_add(&nr_close_races, 1);
}

/* Forks; the child makes random calls on the inherited fds, then exits. */
static void random_call(uint64_t kase, struct rng *r);

static void op_fork(uint64_t kase, struct rng *r)
{
	uint64_t seed = rng_next(r), t0;
	int status;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return;
	if (pid == 0) {
		struct rng cr = { seed };

		/* The child's own timer and watchdog slot (the parent's are not inherited). */
		fuzz_timer_init(&main_timer);
		for (int n = 0; n < 16; n++)
			random_call(kase, &cr);
		_exit(0);
	}
	atomic_fetch_add(&nr_forks, 1);
	fuzz_run_enter(main_slot, kase, "a forked child (pid %d)", pid);
	t0 = fuzz_now_ns();
	while (waitpid(pid, &status, WNOHANG) == 0) {
		/* The watchdog reports a child that does not end; this only waits. */
		usleep(2000);
		(void)t0;
	}
	fuzz_run_leave(main_slot);
}

/* --- One operation. ----------------------------------------------------------------------- */

static void random_call(uint64_t kase, struct rng *r)
{
	unsigned long cmd = rnd_cmd(r);
	int fd = rnd_fd(r);
	void *arg = rnd_arg(r, cmd);
	long ret;

	if (cmd == KEEL_VCPU_SET_SREGS && (uint8_t *)arg >= buf && (uint8_t *)arg < buf + 8)
		filter_sregs(arg);
	ret = fuzz_ioctl(kase, fd, cmd, arg);
	/* A domain or vCPU made by chance: not tracked, closed (so that domains go away). */
	if (ret > 2 && (cmd == KEEL_CREATE_DOMAIN || cmd == KEEL_DOMAIN_CREATE_VCPU))
		close(ret);
}

static void one_op(uint64_t kase, struct rng *r)
{
	struct keel_mem_range range;
	struct keel_domain_list list;
	struct domain *d;
	int id;

	switch (rnd(r, 20)) {
	case 0: case 1: case 2: case 3: case 4:
		random_call(kase, r);
		break;
	case 5:
		domain_new(kase, r, !one_in(r, 3));
		break;
	case 6:
		op_good_domain(kase, r);
		break;
	case 7: /* a range */
		d = rnd_domain(r);
		if (!d)
			break;
		range.gpa = one_in(r, 2) ? rnd(r, 64) * SZ_64K : rnd_interesting(r);
		range.size = one_in(r, 2) ? (1 + rnd(r, 16)) * SZ_4K : rnd_interesting(r);
		range.kind = one_in(r, 4) ? rnd_interesting(r) : 1 + rnd(r, 3);
		range.flags = one_in(r, 8) ? rnd_interesting(r) : 0;
		fuzz_ioctl(kase, d->fd, KEEL_DOMAIN_ADD_RANGE, &range);
		break;
	case 8: /* a vCPU */
		d = rnd_domain(r);
		if (d && (id = vcpu_new(kase, r, d, !one_in(r, 3))) >= 0 && one_in(r, 2))
			vcpu_state(kase, r, d, id);
		break;
	case 9: case 10:
		id = rnd_vcpu(r, &d);
		if (id >= 0)
			vcpu_state(kase, r, d, id);
		break;
	case 11: case 12:
		id = rnd_vcpu(r, &d);
		if (id >= 0)
			vcpu_runs(kase, r, d->vcpu_fd[id]);
		break;
	case 13:
		op_mmap(kase, r);
		break;
	case 14: /* pause, unpause, info, list */
		d = rnd_domain(r);
		if (d)
			fuzz_ioctl(kase, d->fd, (unsigned long[]){ KEEL_DOMAIN_PAUSE,
				   KEEL_DOMAIN_UNPAUSE, KEEL_DOMAIN_INFO }[rnd(r, 3)], buf);
		list = (struct keel_domain_list){ .count = rnd(r, 4) ? rnd(r, 8) : rnd_interesting(r),
						  .buffer = (uintptr_t)(one_in(r, 3) ? guard - 64 : buf) };
		fuzz_ioctl(kase, dev_fd, KEEL_LIST_DOMAINS, &list);
		break;
	case 15: /* close a vCPU or destroy a domain */
		id = rnd_vcpu(r, &d);
		if (id >= 0 && one_in(r, 2)) {
			close(d->vcpu_fd[id]);
			d->vcpu_fd[id] = -1;
			d->vm.vcpus[id] = NULL;
		} else if (d) {
			domain_close(d);
		}
		break;
	case 16:
		if (one_in(r, 4))
			op_close_during_run(kase, r);
		break;
	case 17:
		if (one_in(r, 6))
			op_fork(kase, r);
		break;
	case 18: /* up to the limits: a domain with every vCPU, or many domains */
		if (!one_in(r, 8))
			break;
		d = domain_new(kase, r, true);
		if (!d)
			break;
		for (uint32_t i = 0; i < d->max_vcpus + 1; i++) {
			struct keel_vcpu_create c = { .id = i };
			int fd = fuzz_ioctl(kase, d->fd, KEEL_DOMAIN_CREATE_VCPU, &c);

			if (fd >= 0) {
				d->vcpu_fd[i] = fd;
				d->vcpus[i] = (struct keel_vcpu){ .vm = &d->vm, .id = i, .fd = fd };
				d->vm.vcpus[i] = &d->vcpus[i];
			}
		}
		break;
	default:
		if (one_in(r, 10))
			op_long_mode(kase, r);
		else
			random_call(kase, r);
		break;
	}
}

static void run_case(uint64_t kase)
{
	struct rng r = rng_case(opt_seed, kase);

	for (int n = 1 + rnd(&r, 48); n; n--)
		one_op(kase, &r);
	/* Now and then everything goes at once. */
	if (one_in(&r, 4))
		close_all();
	atomic_fetch_add(&nr_cases, 1);
}

/* --- After the fuzzing. ------------------------------------------------------------------- */

static const char *good_domain_runs(void)
{
	struct keel_vm *vm = vm_create("fz-after", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	const char *why = NULL;

	vm_write(vm, 0x1000, fz_real_start, fz_real_end - fz_real_start);
	vcpu_setup_real(vcpu, 0x1000, 0);
	if (fuzz_ioctl(0, vcpu->fd, KEEL_VCPU_RUN, &vcpu->run) ||
	    vcpu->run.exit.reason != KEEL_EXIT_IO || vcpu->run.exit.io.port != 0x80)
		why = "no OUT to port 0x80";
	else if (fuzz_ioctl(0, vcpu->fd, KEEL_VCPU_RUN, &vcpu->run) ||
		 vcpu->run.exit.reason != KEEL_EXIT_HLT)
		why = "no HLT after the OUT";
	if (why)
		printf("# good domain: %s; last: %s\n", why, keel_exit_str(&vcpu->run.exit));
	vm_destroy(vm);
	return why;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "seconds", required_argument, NULL, 's' },
		{ "seed", required_argument, NULL, 'S' },
		{ "case", required_argument, NULL, 'c' },
		{ "no-known-wedges", no_argument, NULL, 'w' },
		{ "hang-seconds", required_argument, NULL, 'H' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	uint32_t domains_before, domains_after;
	uint64_t end;
	int o, failed = 0;

	opt_seed = fuzz_default_seed();
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 's': opt_seconds = fuzz_number("--seconds", optarg); break;
		case 'S': opt_seed = fuzz_number("--seed", optarg); break;
		case 'c': opt_case = fuzz_number("--case", optarg); break;
		case 'w': opt_known_wedges = false; break;
		case 'H': opt_hang = fuzz_number("--hang-seconds", optarg); break;
		case 'v': opt_verbose = true; break;
		case 'h': fputs(usage, stdout); return 0;
		default: fputs(usage, stderr); return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "unexpected argument '%s'\n%s", argv[optind], usage);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("TAP version 13\n1..3\n");
	printf("# keel_fuzz_ioctl: seed %llu, %llu s%s%s\n", (ull)opt_seed, (ull)opt_seconds,
	       opt_case != UINT64_MAX ? ", one case" : "",
	       opt_known_wedges ? "" : ", known wedges left out");
	dev_fd = keel_dev_fd();
	null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (dev_fd < 0) {
		printf("# %s: %s\n", KEEL_DEV, strerror(errno));
		for (int i = 1; i <= 3; i++)
			printf("not ok %d fuzz.ioctl # keel.ko is not usable\n", i);
		return 1;
	}
	/* Room for a domain with every vCPU beside the others. */
	setrlimit(RLIMIT_NOFILE, &(struct rlimit){ 4096, 4096 });
	buf = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	KEEL_ASSERT(buf != MAP_FAILED, "mmap: %s", keel_errstr());
	guard = buf + 2 * 4096;
	ro_page = buf + 3 * 4096;
	munmap(guard, 4096);
	mprotect(ro_page, 4096, PROT_READ);
	for (int i = 0; i < MAX_DOMAINS; i++)
		domains[i].fd = -1;

	fuzz_signals_init();
	fuzz_timer_init(&main_timer);
	main_slot = fuzz_slot_get();
	domains_before = keel_domain_count();
	t_start = fuzz_now_ns();
	fuzz_watchdog_start(opt_seed, opt_hang, "fuzz.ioctl_random_calls", 1, report_figures);

	end = t_start + opt_seconds * 1000000000ULL;
	if (opt_case != UINT64_MAX) {
		run_case(opt_case);
	} else {
		for (uint64_t kase = 0; fuzz_now_ns() < end; kase++)
			run_case(kase);
	}
	close_all();
	fuzz_watchdog_stop();
	report_figures();
	printf("ok 1 fuzz.ioctl_random_calls # %llu calls, %llu cases, seed %llu\n",
	       (ull)atomic_load(&nr_calls), (ull)atomic_load(&nr_cases), (ull)opt_seed);

	/* Every domain went away with its last fd (a run's return comes first). */
	domains_after = keel_domain_count();
	for (int i = 0; i < 50 && domains_after != domains_before; i++) {
		usleep(100000);
		domains_after = keel_domain_count();
	}
	if (domains_after != domains_before)
		failed = 1;
	printf("%sok 2 fuzz.ioctl_domains_go_with_their_fds # %u live domains before, %u after\n",
	       domains_after == domains_before ? "" : "not ", domains_before, domains_after);
	o = !good_domain_runs();
	failed |= !o;
	printf("%sok 3 fuzz.ioctl_dev_still_works\n", o ? "" : "not ");
	return failed;
}

/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/fuzz.h - what Keel's two fuzzers (keel_fuzz_ioctl, keel_fuzz_guest) share: a seeded
 * random generator (every case draws from its own generator, derived from the seed and the
 * case number, so a finding replays with --seed and --case), bounded runs (a per-thread timer
 * sends SIGALRM to the running thread every few milliseconds, so KEEL_VCPU_RUN returns EINTR),
 * a watchdog thread that reports a run that never returns (the host-harming bug the fuzzers
 * hunt) naming the seed and the case, and counters printed at the end.
 */
#ifndef KEEL_FUZZ_H
#define KEEL_FUZZ_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#include <linux/keel.h>

#include "util.h"

/* --- Random numbers: splitmix64 (Vigna), one state per case. ----------------------------- */

struct rng {
	uint64_t s;
};

static inline uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* The generator of case `n` of a run with seed `seed`. */
static inline struct rng rng_case(uint64_t seed, uint64_t n)
{
	struct rng r = { seed ^ (n * 0xd1342543de82ef95ULL) };

	rng_next(&r);
	return r;
}

/* 0..n-1 (n > 0). */
static inline uint64_t rnd(struct rng *r, uint64_t n)
{
	return rng_next(r) % n;
}

/* True with probability 1/n. */
static inline bool one_in(struct rng *r, uint64_t n)
{
	return rnd(r, n) == 0;
}

static inline void rnd_fill(struct rng *r, void *buf, size_t len)
{
	uint8_t *p = buf;

	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)rng_next(r);
}

/* A value a fuzzer likes: zero, all-ones, powers of two and their neighbours, sign bits,
 * small numbers, or anything. */
static inline uint64_t rnd_interesting(struct rng *r)
{
	uint64_t b = 1ULL << rnd(r, 64);

	switch (rnd(r, 10)) {
	case 0: return 0;
	case 1: return ~0ULL;
	case 2: return b;
	case 3: return b - 1;
	case 4: return b + 1;
	case 5: return rnd(r, 256);
	case 6: return 0xffffffffULL;
	case 7: return (uint64_t)(int64_t)(int32_t)rng_next(r);
	default: return rng_next(r);
	}
}

/* --- Time. ------------------------------------------------------------------------------- */

static inline uint64_t fuzz_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* --- Bounded runs: a per-thread periodic SIGALRM while a run is in progress. --------------- */

static void fuzz_sigalrm(int sig)
{
	(void)sig;
}

/* Installs the (empty) SIGALRM handler, without SA_RESTART. Once per process. */
static inline void fuzz_signals_init(void)
{
	struct sigaction sa = { .sa_handler = fuzz_sigalrm };

	sigemptyset(&sa.sa_mask);
	KEEL_ASSERT(sigaction(SIGALRM, &sa, NULL) == 0, "sigaction: %s", keel_errstr());
}

struct fuzz_timer {
	timer_t id;
	bool ok;
};

/* A timer that signals the calling thread. */
static inline void fuzz_timer_init(struct fuzz_timer *t)
{
	struct sigevent sev = {
		.sigev_notify = SIGEV_THREAD_ID,
		.sigev_signo = SIGALRM,
	};

	sev._sigev_un._tid = syscall(SYS_gettid);
	KEEL_ASSERT(timer_create(CLOCK_MONOTONIC, &sev, &t->id) == 0, "timer_create: %s",
		    keel_errstr());
	t->ok = true;
}

/* Signals every `us` microseconds from `us` on (periodic: a signal that lands just before the
 * thread enters the run is followed by another); 0 stops it. */
static inline void fuzz_timer_arm(struct fuzz_timer *t, uint64_t us)
{
	struct itimerspec its = {
		.it_value = { us / 1000000, (us % 1000000) * 1000 },
		.it_interval = { us / 1000000, (us % 1000000) * 1000 },
	};

	timer_settime(t->id, 0, &its, NULL);
}

static inline void fuzz_timer_destroy(struct fuzz_timer *t)
{
	if (t->ok)
		timer_delete(t->id);
	t->ok = false;
}

/* --- The watchdog: every thread that enters a run says so in a slot. ----------------------- */

#define FUZZ_SLOTS 64

struct fuzz_slot {
	_Atomic uint64_t since; /* fuzz_now_ns() at the run's start; 0: not in a run */
	_Atomic uint64_t kase;  /* the case */
	char what[96];          /* what the thread is running */
};

struct fuzz_watchdog {
	struct fuzz_slot slots[FUZZ_SLOTS];
	_Atomic int next;
	uint64_t seed;
	uint64_t limit_ns;      /* a run longer than this is hung */
	const char *test_name;  /* the TAP test that fails */
	int tap_number;
	void (*report)(void);   /* prints the figures before the process exits */
	_Atomic bool stop;
	pthread_t tid;
};

extern struct fuzz_watchdog fuzz_wd;

static inline struct fuzz_slot *fuzz_slot_get(void)
{
	int i = atomic_fetch_add(&fuzz_wd.next, 1) % FUZZ_SLOTS;

	return &fuzz_wd.slots[i];
}

static inline void fuzz_run_enter(struct fuzz_slot *s, uint64_t kase, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(s->what, sizeof(s->what), fmt, ap);
	va_end(ap);
	atomic_store(&s->kase, kase);
	atomic_store(&s->since, fuzz_now_ns());
}

static inline void fuzz_run_leave(struct fuzz_slot *s)
{
	atomic_store(&s->since, 0);
}

static void *fuzz_watchdog_fn(void *arg)
{
	(void)arg;
	while (!atomic_load(&fuzz_wd.stop)) {
		for (int i = 0; i < FUZZ_SLOTS; i++) {
			struct fuzz_slot *s = &fuzz_wd.slots[i];
			uint64_t since = atomic_load(&s->since);
			/* Read after `since`: a run that starts meanwhile is not older than now. */
			uint64_t now = fuzz_now_ns();

			if (!since || since > now || now - since < fuzz_wd.limit_ns)
				continue;
			/* A run that never returns: report it and leave (the stuck thread cannot be
			 * killed; exiting is all a process can do). */
			printf("# HUNG: a run did not return in %llu s: seed %llu case %llu (%s); replay: --seed %llu --case %llu\n",
			       (ull)((now - since) / 1000000000ULL), (ull)fuzz_wd.seed,
			       (ull)atomic_load(&s->kase), s->what, (ull)fuzz_wd.seed,
			       (ull)atomic_load(&s->kase));
			if (fuzz_wd.report)
				fuzz_wd.report();
			printf("not ok %d %s # hung run, seed %llu case %llu\n", fuzz_wd.tap_number,
			       fuzz_wd.test_name, (ull)fuzz_wd.seed, (ull)atomic_load(&s->kase));
			fflush(stdout);
			_exit(3);
		}
		usleep(200000);
	}
	return NULL;
}

static inline void fuzz_watchdog_start(uint64_t seed, uint64_t limit_s, const char *test_name,
				       int tap_number, void (*report)(void))
{
	fuzz_wd.seed = seed;
	fuzz_wd.limit_ns = limit_s * 1000000000ULL;
	fuzz_wd.test_name = test_name;
	fuzz_wd.tap_number = tap_number;
	fuzz_wd.report = report;
	KEEL_ASSERT(pthread_create(&fuzz_wd.tid, NULL, fuzz_watchdog_fn, NULL) == 0,
		    "pthread_create");
}

static inline void fuzz_watchdog_stop(void)
{
	atomic_store(&fuzz_wd.stop, true);
	pthread_join(fuzz_wd.tid, NULL);
}

/* --- Counters. --------------------------------------------------------------------------- */

#define FUZZ_ERRNOS 160
#define FUZZ_EXITS  (KEEL_EXIT_UNHANDLED + 2) /* the last slot: a reason out of range */

struct fuzz_counts {
	_Atomic uint64_t errnos[FUZZ_ERRNOS]; /* failed calls by errno */
	_Atomic uint64_t exits[FUZZ_EXITS];   /* run exits by reason */
	_Atomic uint64_t intr;                /* runs ended by a signal (EINTR) */
};

static inline void count_errno(struct fuzz_counts *c, int e)
{
	atomic_fetch_add(&c->errnos[e >= 0 && e < FUZZ_ERRNOS ? e : 0], 1);
}

static inline void count_exit(struct fuzz_counts *c, uint32_t reason)
{
	atomic_fetch_add(&c->exits[reason < FUZZ_EXITS - 1 ? reason : FUZZ_EXITS - 1], 1);
}

static inline void print_counts(struct fuzz_counts *c)
{
	static const char *const names[FUZZ_EXITS] = {
		"NONE", "HLT", "IO", "MMIO", "HYPERCALL", "SHUTDOWN", "MEMORY_FAULT",
		"ENTRY_FAILURE", "INTR", "UNHANDLED", "out-of-range",
	};

	printf("# exits:");
	for (int i = 0; i < FUZZ_EXITS; i++)
		if (atomic_load(&c->exits[i]))
			printf(" %s %llu", names[i], (ull)atomic_load(&c->exits[i]));
	printf("\n# runs ended by a signal: %llu\n# errors:", (ull)atomic_load(&c->intr));
	for (int i = 0; i < FUZZ_ERRNOS; i++)
		if (atomic_load(&c->errnos[i]))
			printf(" %s %llu", i ? strerrorname_np(i) ?: "?" : "other",
			       (ull)atomic_load(&c->errnos[i]));
	printf("\n");
}

/* --- Command line. ----------------------------------------------------------------------- */

/* A seed from the clock, when none is given. */
static inline uint64_t fuzz_default_seed(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (ts.tv_sec * 1000003ULL) ^ ts.tv_nsec ^ ((uint64_t)getpid() << 20);
}

/* strtoull that fails the run on a bad number. */
static inline uint64_t fuzz_number(const char *opt, const char *s)
{
	char *end;
	uint64_t v;

	errno = 0;
	v = strtoull(s ? s : "", &end, 0);
	if (!s || !*s || *end || errno) {
		fprintf(stderr, "%s needs a number, not '%s' (see --help)\n", opt, s ? s : "");
		exit(2);
	}
	return v;
}

#endif /* KEEL_FUZZ_H */

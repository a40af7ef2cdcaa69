// SPDX-License-Identifier: GPL-2.0
/*
 * xen_timer_test: a Xen PVH vCPU's one-shot timer and blocking. VCPUOP_set_singleshot_timer
 * with VIRQ_TIMER bound raises the callback at the deadline and not before it (system time at
 * the handler's TSC >= the deadline); a past deadline fires at once, unless
 * VCPU_SSHOTTMR_future asks otherwise (-ETIME); stop_singleshot_timer and set_timer_op(0)
 * cancel it; set_timer_op arms it. SCHEDOP_block returns when the timer fires; SCHEDOP_poll on
 * a masked port returns when Dom0 raises that port (no callback: masked), and with a timeout
 * returns after it, and when another vCPU sends on it; bad poll arguments. vCPU 1's own timer
 * (VIRQ_TIMER bound for vCPU 1) wakes it from HLT. Hundreds of short timer rounds (in HLT,
 * and spinning with interrupts on) each bring exactly one callback, which finds
 * evtchn_upcall_pending set: Xen injects the callback vector only while it is. HLT with interrupts on sleeps until the timer, and the
 * vCPU's thread uses little CPU meanwhile. Runs inside the test VM, as root, after keel.ko is
 * loaded.
 */
#include <stdint.h>
#include <string.h>

#include "kselftest_harness.h"
#include "domain_test.h"
#include "xen.h"

#define SHINFO  0x10000ULL
#define SCRATCH 0x20000ULL
#define PORTS   0x21000ULL
#define VI0     SHINFO
#define IRQ0    XEN_IRQ(0)
#define MS      1000000ULL
/* How long the guest waits for something that must happen before failing (system time). */
#define PATIENCE (5000 * MS)
#define HLT_SLEEP (300 * MS)

/* ---------------------------------------------------------------------------------------
 * Guest code (long mode). */

GUEST_INLINE uint32_t setup_timer_events(void)
{
	uint64_t v = HVM_CALLBACK_VECTOR(XEN_CB_VECTOR);
	uint32_t port;

	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_shared_info, 0, SHINFO >> 12, SCRATCH), 0);
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_set_param, HVM_PARAM_CALLBACK_IRQ, &v, SCRATCH), 0);
	IRQ0->vcpu_info = VI0;
	GUEST_ASSERT_EQ(xen_bind_virq(VIRQ_TIMER, 0, &port, SCRATCH), 0);
	return port;
}

/* Interrupts on until the callback count passes `count` or system time `until`; the count. */
GUEST_INLINE uint64_t wait_callback(uint64_t count, uint64_t until)
{
	while (IRQ0->cb_count == count && pvclock_read(VI0) < until)
		irq_window();
	return IRQ0->cb_count;
}

/* How a test arms and cancels the one-shot timer. */
enum { BY_VCPU_OP, BY_SET_TIMER_OP };

/*
 * The one-shot timer armed 10 ms ahead and cancelled (`how`) never fires: no callback until
 * 30 ms past its deadline. An attempt whose cancel came back only after the deadline (the
 * vCPU did not run meanwhile: a loaded host) proves nothing; it is made again.
 */
GUEST_INLINE void cancelled_timer_stays_quiet(int how, uint32_t port)
{
	for (int attempt = 0; attempt < 10; attempt++) {
		uint64_t count = IRQ0->cb_count;
		uint64_t deadline = pvclock_read(VI0) + 10 * MS;

		if (how == BY_VCPU_OP) {
			GUEST_ASSERT_EQ(xen_singleshot(0, deadline, 0, SCRATCH), 0);
			GUEST_ASSERT_EQ(xen_hc(HC_vcpu_op, VCPUOP_stop_singleshot_timer, 0, 0), 0);
		} else {
			GUEST_ASSERT_EQ(xen_hc(HC_set_timer_op, deadline, 0, 0), 0);
			GUEST_ASSERT_EQ(xen_hc(HC_set_timer_op, 0, 0, 0), 0);
		}
		if (pvclock_read(VI0) < deadline) {
			GUEST_ASSERT_EQ(wait_callback(count, deadline + 30 * MS), count);
			return;
		}
		/* Too late to tell: let a callback that may come pass, and try again. */
		wait_callback(count, deadline + 30 * MS);
		xen_ack_port(SHINFO, VI0, port);
	}
	GUEST_ASSERT(!"the cancel never came back before the deadline");
}

static GUEST_CODE void guest_singleshot(void)
{
	uint32_t port = setup_timer_events();
	uint64_t now, deadline, fired, c;

	/* Fires at the deadline, not before. */
	now = pvclock_read(VI0);
	deadline = now + 20 * MS;
	GUEST_ASSERT_EQ(xen_singleshot(0, deadline, 0, SCRATCH), 0);
	GUEST_ASSERT_EQ(wait_callback(0, now + PATIENCE), 1);
	fired = pvclock_tsc(VI0, IRQ0->cb_tsc);
	GUEST_ASSERT(fired >= deadline);
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, port));
	GUEST_ASSERT_EQ(IRQ0->cb_upcall, 1);
	xen_ack_port(SHINFO, VI0, port);
	/* One shot: nothing more (not even a callback that finds no upcall pending). */
	now = pvclock_read(VI0);
	c = wait_callback(1, now + 30 * MS);
	GUEST_ASSERT_EQ(IRQ0->cb_spurious, 0);
	GUEST_ASSERT_EQ(c, 1);

	/* A deadline in the past fires at once... */
	now = pvclock_read(VI0);
	GUEST_ASSERT_EQ(xen_singleshot(0, now - MS, 0, SCRATCH), 0);
	GUEST_ASSERT_EQ(wait_callback(1, now + PATIENCE), 2);
	GUEST_SYNC(pvclock_tsc(VI0, IRQ0->cb_tsc) - now);
	xen_ack_port(SHINFO, VI0, port);
	/* ... unless the guest wants only future ones. */
	now = pvclock_read(VI0);
	GUEST_ASSERT_EQ(xen_singleshot(0, now - MS, VCPU_SSHOTTMR_future, SCRATCH), -XEN_ETIME);
	GUEST_ASSERT_EQ(xen_singleshot(0, now + 1000 * MS, VCPU_SSHOTTMR_future, SCRATCH), 0);
	GUEST_ASSERT_EQ(xen_hc(HC_vcpu_op, VCPUOP_stop_singleshot_timer, 0, 0), 0);
	/* Stopped: never fires. */
	cancelled_timer_stays_quiet(BY_VCPU_OP, port);

	/* set_timer_op: the same timer; 0 cancels. */
	cancelled_timer_stays_quiet(BY_SET_TIMER_OP, port);
	c = IRQ0->cb_count;
	now = pvclock_read(VI0);
	deadline = now + 10 * MS;
	GUEST_ASSERT_EQ(xen_hc(HC_set_timer_op, deadline, 0, 0), 0);
	GUEST_ASSERT_EQ(wait_callback(c, now + PATIENCE), c + 1);
	GUEST_ASSERT(pvclock_tsc(VI0, IRQ0->cb_tsc) >= deadline);
	xen_ack_port(SHINFO, VI0, port);
	GUEST_ASSERT_EQ(IRQ0->cb_spurious, 0);

	/* Errors: another vCPU's timer, a bad pointer, no such vCPU. */
	GUEST_ASSERT_EQ(xen_singleshot(1, now, 0, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_hc(HC_vcpu_op, VCPUOP_stop_singleshot_timer, 1, 0), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_singleshot(9, now, 0, SCRATCH), -XEN_ENOENT);
	GUEST_ASSERT_EQ(xen_hc(HC_vcpu_op, VCPUOP_set_singleshot_timer, 0, 1ULL << 40), -XEN_EFAULT);
}

static GUEST_CODE void guest_block(void)
{
	uint32_t port = setup_timer_events();
	uint64_t now, deadline, after;

	/* Interrupts off, as a PV idle loop would: block returns once the timer's event is
	 * pending; the callback follows when interrupts are on. */
	now = pvclock_read(VI0);
	deadline = now + 30 * MS;
	GUEST_ASSERT_EQ(xen_singleshot(0, deadline, 0, SCRATCH), 0);
	GUEST_ASSERT_EQ(xen_sched_op(SCHEDOP_block, 0), 0);
	after = pvclock_read(VI0);
	GUEST_ASSERT(after >= deadline);
	GUEST_ASSERT(after < now + PATIENCE);
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, port));
	GUEST_ASSERT_EQ(IRQ0->cb_count, 0);
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->cb_count, 1);
	xen_ack_port(SHINFO, VI0, port);
}

/* arg: a port Dom0 connected and will notify once the guest reported it is about to poll. */
static GUEST_CODE void guest_poll(uint64_t dport)
{
	volatile struct sched_poll *p = (volatile struct sched_poll *)SCRATCH;
	volatile uint32_t *ports = (volatile uint32_t *)PORTS;
	uint32_t timer_port = setup_timer_events();
	uint64_t now, after;

	(void)timer_port;
	set_bit64(SHINFO + SI_EVTCHN_MASK, dport);
	/* Errors first. */
	ports[0] = 5000;
	p->ports = PORTS;
	p->nr_ports = 1;
	p->timeout = 0;
	GUEST_ASSERT_EQ(xen_sched_op(SCHEDOP_poll, SCRATCH), -XEN_EINVAL);
	p->nr_ports = 129;
	GUEST_ASSERT_EQ(xen_sched_op(SCHEDOP_poll, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_sched_op(SCHEDOP_poll, 1ULL << 40), -XEN_EFAULT);
	p->nr_ports = 1;
	p->ports = 1ULL << 40;
	GUEST_ASSERT_EQ(xen_sched_op(SCHEDOP_poll, SCRATCH), -XEN_EFAULT);

	/* A timeout with nothing raised: returns after it. */
	ports[0] = dport;
	p->ports = PORTS;
	now = pvclock_read(VI0);
	p->timeout = now + 20 * MS;
	GUEST_ASSERT_EQ(xen_sched_op(SCHEDOP_poll, SCRATCH), 0);
	after = pvclock_read(VI0);
	GUEST_ASSERT(after >= now + 20 * MS);
	GUEST_ASSERT(!test_bit64(SHINFO + SI_EVTCHN_PENDING, dport));

	/* Dom0 raises the masked port: the poll returns, no callback. */
	GUEST_SYNC(0);
	now = pvclock_read(VI0);
	p->timeout = 0;
	GUEST_ASSERT_EQ(xen_sched_op(SCHEDOP_poll, SCRATCH), 0);
	after = pvclock_read(VI0);
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, dport));
	GUEST_ASSERT_EQ(*(volatile uint8_t *)(VI0 + VI_UPCALL_PENDING), 0);
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->cb_count, 0);
	/* Already pending: returns at once. */
	GUEST_ASSERT_EQ(xen_sched_op(SCHEDOP_poll, SCRATCH), 0);
	GUEST_SYNC(after - now);
}

static GUEST_CODE void guest_hlt(void)
{
	uint32_t port = setup_timer_events();
	uint64_t now, deadline, after;

	now = pvclock_read(VI0);
	deadline = now + HLT_SLEEP;
	GUEST_ASSERT_EQ(xen_singleshot(0, deadline, 0, SCRATCH), 0);
	GUEST_SYNC(0);
	__asm__ volatile("sti; hlt; cli" ::: "memory");
	after = pvclock_read(VI0);
	GUEST_SYNC(1);
	GUEST_ASSERT(after >= deadline);
	GUEST_ASSERT_EQ(IRQ0->cb_spurious, 0);
	GUEST_ASSERT_EQ(IRQ0->cb_count, 1);
	GUEST_ASSERT(pvclock_tsc(VI0, IRQ0->cb_tsc) >= deadline);
	xen_ack_port(SHINFO, VI0, port);
}

/* Two vCPUs: vCPU 1 (started by INIT/SIPI) sleeps in HLT on its own timer, then sends on an
 * IPI port of vCPU 0 that vCPU 0 masked and polls. */
#define SHARED   0x30000ULL
#define P_PORT   ((volatile uint64_t *)(SHARED + 0x00))
#define T_SEND   ((volatile uint64_t *)(SHARED + 0x08))
#define AP_DONE  ((volatile uint64_t *)(SHARED + 0x10))
#define VI1      (SHINFO + XEN_VCPU_INFO_SIZE)
#define SPINS    200000000ULL

static GUEST_CODE void guest_poll_ap(uint64_t unused)
{
	uint64_t now, deadline;
	uint32_t t1;

	(void)unused;
	XEN_IRQ(1)->vcpu_info = VI1;
	GUEST_ASSERT_EQ(xen_bind_virq(VIRQ_TIMER, 1, &t1, SCRATCH + 0x100), 0);
	now = pvclock_read(VI1);
	deadline = now + 20 * MS;
	GUEST_ASSERT_EQ(xen_singleshot(1, deadline, 0, SCRATCH + 0x100), 0);
	while (XEN_IRQ(1)->cb_count == 0 && pvclock_read(VI1) < now + PATIENCE)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	GUEST_ASSERT_EQ(XEN_IRQ(1)->cb_count, 1);
	GUEST_ASSERT(pvclock_tsc(VI1, XEN_IRQ(1)->cb_tsc) >= deadline);
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, t1));
	GUEST_ASSERT(test_bit64(VI1 + VI_PENDING_SEL, t1 / 64));
	xen_ack_port(SHINFO, VI1, t1);
	/* vCPU 0 had time to go to sleep in its poll. */
	now = pvclock_read(VI1);
	while (pvclock_read(VI1) < now + 30 * MS)
		guest_pause();
	*T_SEND = pvclock_read(VI1);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, *P_PORT, SCRATCH + 0x100), 0);
	*AP_DONE = 1;
}

static GUEST_CODE void guest_poll_bsp(void)
{
	volatile struct sched_poll *p = (volatile struct sched_poll *)SCRATCH;
	volatile uint32_t *ports = (volatile uint32_t *)PORTS;
	uint64_t now, after;
	uint32_t port;

	setup_timer_events();
	GUEST_ASSERT_EQ(xen_bind_ipi(0, &port, SCRATCH), 0);
	set_bit64(SHINFO + SI_EVTCHN_MASK, port);
	*P_PORT = port;
	apic_start_ap(1);
	now = pvclock_read(VI0);
	ports[0] = port;
	p->ports = PORTS;
	p->nr_ports = 1;
	p->timeout = now + PATIENCE;
	GUEST_ASSERT_EQ(xen_sched_op(SCHEDOP_poll, SCRATCH), 0);
	after = pvclock_read(VI0);
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, port));
	GUEST_ASSERT(after < now + PATIENCE);
	GUEST_ASSERT(after >= *T_SEND);
	GUEST_ASSERT_EQ(IRQ0->cb_count, 0);
	GUEST_ASSERT(spin_until_eq(AP_DONE, 1, SPINS));
}

/* Many short HLT sleeps on the timer: each wakes with exactly one callback, which finds
 * evtchn_upcall_pending set (Xen injects the vector only while it is). */
#define ROUNDS 300

static GUEST_CODE void guest_hlt_rounds(void)
{
	uint32_t port = setup_timer_events();

	for (uint64_t i = 1; i <= ROUNDS; i++) {
		uint64_t deadline = pvclock_read(VI0) + MS / 2;

		GUEST_ASSERT_EQ(xen_singleshot(0, deadline, 0, SCRATCH), 0);
		while (IRQ0->cb_count < i && pvclock_read(VI0) < deadline + PATIENCE)
			__asm__ volatile("sti; hlt; cli" ::: "memory");
		/* A callback that found no upcall pending: reports its round. */
		if (IRQ0->cb_spurious)
			GUEST_SYNC(i);
		GUEST_ASSERT_EQ(IRQ0->cb_count, i);
		xen_ack_port(SHINFO, VI0, port);
	}
}

/* The same, spinning with interrupts on instead of HLT. */
static GUEST_CODE void guest_spin_rounds(void)
{
	uint32_t port = setup_timer_events();

	for (uint64_t i = 1; i <= ROUNDS; i++) {
		uint64_t deadline = pvclock_read(VI0) + MS / 2;

		GUEST_ASSERT_EQ(xen_singleshot(0, deadline, 0, SCRATCH), 0);
		while (IRQ0->cb_count < i && pvclock_read(VI0) < deadline + PATIENCE)
			irq_window();
		if (IRQ0->cb_spurious)
			GUEST_SYNC(i);
		GUEST_ASSERT_EQ(IRQ0->cb_count, i);
		xen_ack_port(SHINFO, VI0, port);
	}
}

/* ---------------------------------------------------------------------------------------
 * Tests. */

TEST_F(domain, singleshot_timer)
{
	struct keel_vm *vm = vm_create_xen("xen-timer", 2, SZ_1M);
	struct keel_ucall uc;

	xen_setup_vcpu0(vm, guest_singleshot);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));
	/* "At once": well within the slowest emulator's reach. */
	EXPECT_LT(uc.args[0], 500 * MS) TH_LOG("a past deadline fired %llu ns later",
					       (ull)uc.args[0]);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc));
	vm_destroy(vm);
}

TEST_F(domain, sched_block_until_timer)
{
	struct keel_vm *vm = vm_create_xen("xen-block", 1, SZ_1M);

	xen_setup_vcpu0(vm, guest_block);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	vm_destroy(vm);
}

struct notifier {
	struct keel_vm *vm;
	uint32_t port;
	int delay_ms;
	int ret;
};

static void *notify_later(void *arg)
{
	struct notifier *n = arg;

	usleep(n->delay_ms * 1000);
	n->ret = xen_evtchn_notify(n->vm, n->port);
	return NULL;
}

TEST_F(domain, sched_poll_masked_port)
{
	struct keel_vm *vm = vm_create_xen("xen-poll", 1, SZ_1M);
	int efd = eventfd(0, EFD_NONBLOCK);
	struct notifier n = { .vm = vm, .delay_ms = 200, .ret = -1 };
	struct keel_ucall uc;
	pthread_t tid;

	ASSERT_LE(0, efd);
	ASSERT_EQ(0, xen_evtchn_bind(vm, KEEL_EVTCHN_ALLOC, 0, efd, &n.port));
	xen_setup_vcpu0(vm, guest_poll);
	vcpu_args_set(vm->vcpus[0], 1, (uint64_t)n.port);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));
	ASSERT_EQ(0, pthread_create(&tid, NULL, notify_later, &n));
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));
	pthread_join(tid, NULL);
	EXPECT_EQ(0, n.ret);
	/* It slept until the notify (most of the delay; the guest's clock, Dom0's sleep). */
	EXPECT_GT(uc.args[0], 50 * MS) TH_LOG("the poll returned after %llu ns", (ull)uc.args[0]);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc));
	vm_destroy(vm);
	close(efd);
}

TEST_F(domain, hlt_sleeps_until_timer)
{
	struct keel_vm *vm = vm_create_xen("xen-hlt", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint64_t wall, cpu;
	struct keel_ucall uc;

	xen_setup_vcpu0(vm, guest_hlt);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
	wall = now_ns(CLOCK_MONOTONIC);
	cpu = now_ns(CLOCK_THREAD_CPUTIME_ID);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
	wall = now_ns(CLOCK_MONOTONIC) - wall;
	cpu = now_ns(CLOCK_THREAD_CPUTIME_ID) - cpu;
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, &uc));
	TH_LOG("HLT: %llu ms wall, %llu ms CPU", (ull)(wall / MS), (ull)(cpu / MS));
	EXPECT_GE(wall, HLT_SLEEP * 9 / 10);
	EXPECT_LT(cpu, wall / 4);
	vm_destroy(vm);
}

static void run_rounds(struct __test_metadata *_metadata, const char *name, void *entry)
{
	struct keel_vm *vm = vm_create_xen(name, 1, SZ_1M);
	struct xen_irq_state *irq = gpa_hva(vm, XEN_IRQ_GPA(0), sizeof(*irq));
	struct keel_ucall uc;

	xen_setup_vcpu0(vm, entry);
	EXPECT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc))
		TH_LOG("a callback found evtchn_upcall_pending clear (a spurious injection) by round %llu of %d (the last at rip %#llx)",
		       (ull)uc.args[0], ROUNDS, (ull)irq->spurious_rip);
	vm_destroy(vm);
}

TEST_F(domain, hlt_timer_rounds_one_callback_each)
{
	run_rounds(_metadata, "xen-hlt-rounds", guest_hlt_rounds);
}

TEST_F(domain, spin_timer_rounds_one_callback_each)
{
	run_rounds(_metadata, "xen-spin-rounds", guest_spin_rounds);
}

TEST_F(domain, poll_woken_by_other_vcpu_and_ap_timer)
{
	struct keel_vm *vm = vm_create_xen("xen-poll-smp", 2, SZ_1M);
	struct xen_runner ap;

	xen_setup_vcpu0(vm, guest_poll_bsp);
	xen_setup_ap(vm, guest_poll_ap, 0);
	xen_runner_start(&ap, vm->vcpus[1], true);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	xen_runner_join(&ap);
	EXPECT_TRUE(ap.done) TH_LOG("vCPU 1's run ended: reason %u, errno %d", ap.last_reason,
				    ap.err);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

// SPDX-License-Identifier: GPL-2.0
/*
 * xen_evtchn_test: 2-level event channels of a Xen PVH domain, guest and Dom0 sides.
 * HVM_PARAM_CALLBACK_IRQ of type vector names the upcall vector; a send on an IPI port sets
 * the pending bit, the vCPU's selector bit and evtchn_upcall_pending and runs the guest's
 * handler (IDT) once interrupts are on (on another vCPU asleep in HLT: its own vcpu_info and
 * callback); a masked port raises nothing until EVTCHNOP_unmask; close, status, bind_vcpu,
 * alloc_unbound, bind_virq, and Xen's errno for every bad argument (ESRCH for a domain that
 * does not exist). Dom0's side: KEEL_DOMAIN_EVTCHN_BIND (with and without KEEL_EVTCHN_ALLOC)
 * signals an eventfd on the guest's sends, KEEL_DOMAIN_EVTCHN_NOTIFY raises the guest's
 * callback (waking it from HLT), and the bad arguments of those ioctls; HVM params between
 * Dom0 (SET/GET_PARAM) and the guest (get_param reads them, set_param of anything but
 * CALLBACK_IRQ is -EPERM). A send before STI; HLT brings exactly one callback per round,
 * hundreds of rounds. Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <stdint.h>
#include <string.h>

#include "kselftest_harness.h"
#include "domain_test.h"
#include "xen.h"

#define SHINFO  0x10000ULL
#define SCRATCH 0x20000ULL
#define VI0     SHINFO
#define IRQ0    XEN_IRQ(0)

#define STORE_PFN      0x5a5a5ULL
#define STORE_EVTCHN   7ULL
#define CONSOLE_PFN    0xc0c0cULL
#define CONSOLE_EVTCHN 9ULL

/* ---------------------------------------------------------------------------------------
 * Guest code (long mode). */

/* shared_info placed, the callback vector set, the handler told where vcpu_info is. */
GUEST_INLINE void setup_events(void)
{
	uint64_t v = HVM_CALLBACK_VECTOR(XEN_CB_VECTOR);

	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_shared_info, 0, SHINFO >> 12, SCRATCH), 0);
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_set_param, HVM_PARAM_CALLBACK_IRQ, &v, SCRATCH), 0);
	IRQ0->vcpu_info = VI0;
}

GUEST_INLINE uint32_t status_of(uint32_t port, uint32_t *vcpu, uint32_t *u0)
{
	volatile struct evtchn_status *s = (volatile struct evtchn_status *)SCRATCH;

	s->dom = DOMID_SELF;
	s->port = port;
	s->status = 0xffff;
	GUEST_ASSERT_EQ(xen_evtchn_op(EVTCHNOP_status, SCRATCH), 0);
	GUEST_ASSERT_EQ(s->port, port);
	if (vcpu)
		*vcpu = s->vcpu;
	if (u0)
		*u0 = s->u.virq;
	return s->status;
}

GUEST_INLINE int64_t alloc_unbound(uint16_t dom, uint16_t remote, uint32_t *port)
{
	volatile uint16_t *h = (volatile uint16_t *)SCRATCH;
	volatile uint32_t *w = (volatile uint32_t *)SCRATCH;
	int64_t r;

	h[0] = dom;
	h[1] = remote;
	w[1] = 0;
	r = xen_evtchn_op(EVTCHNOP_alloc_unbound, SCRATCH);
	*port = w[1];
	return r;
}

GUEST_INLINE int64_t bind_vcpu(uint32_t port, uint32_t vcpu)
{
	volatile uint32_t *w = (volatile uint32_t *)SCRATCH;

	w[0] = port;
	w[1] = vcpu;
	return xen_evtchn_op(EVTCHNOP_bind_vcpu, SCRATCH);
}

static GUEST_CODE void guest_callback_and_mask(void)
{
	volatile uint8_t *upcall = (volatile uint8_t *)(VI0 + VI_UPCALL_PENDING);
	uint64_t v;
	uint32_t port, vcpu;

	/* Before a callback is set: 0; a vector below 16 or an unknown type is -EINVAL. */
	v = 1;
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_get_param, HVM_PARAM_CALLBACK_IRQ, &v, SCRATCH), 0);
	GUEST_ASSERT_EQ(v, 0);
	v = HVM_CALLBACK_VECTOR(5);
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_set_param, HVM_PARAM_CALLBACK_IRQ, &v, SCRATCH),
			-XEN_EINVAL);
	v = (3ULL << 56) | XEN_CB_VECTOR;
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_set_param, HVM_PARAM_CALLBACK_IRQ, &v, SCRATCH),
			-XEN_EINVAL);
	setup_events();
	v = 0;
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_get_param, HVM_PARAM_CALLBACK_IRQ, &v, SCRATCH), 0);
	GUEST_ASSERT_EQ(v, HVM_CALLBACK_VECTOR(XEN_CB_VECTOR));

	/* An IPI port, sent with interrupts off: everything marked, the handler not run yet. */
	GUEST_ASSERT_EQ(xen_bind_ipi(0, &port, SCRATCH), 0);
	GUEST_ASSERT(port > 0);
	GUEST_ASSERT_EQ(status_of(port, &vcpu, NULL), EVTCHNSTAT_ipi);
	GUEST_ASSERT_EQ(vcpu, 0);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, port, SCRATCH), 0);
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, port));
	GUEST_ASSERT(test_bit64(VI0 + VI_PENDING_SEL, port / 64));
	GUEST_ASSERT_EQ(*upcall, 1);
	GUEST_ASSERT_EQ(IRQ0->cb_count, 0);
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->cb_count, 1);
	GUEST_ASSERT_EQ(IRQ0->cb_upcall, 1);
	GUEST_ASSERT_EQ(*upcall, 0);
	/* Taken once: nothing more while nothing is raised. */
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->cb_count, 1);
	xen_ack_port(SHINFO, VI0, port);

	/* A second send with interrupts on: the handler runs right after the call. */
	__asm__ volatile("sti" ::: "memory");
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, port, SCRATCH), 0);
	__asm__ volatile("nop; cli" ::: "memory");
	GUEST_ASSERT_EQ(IRQ0->cb_count, 2);
	xen_ack_port(SHINFO, VI0, port);

	/* Masked: pending, but no selector bit, no upcall, no callback. */
	set_bit64(SHINFO + SI_EVTCHN_MASK, port);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, port, SCRATCH), 0);
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, port));
	GUEST_ASSERT(!test_bit64(VI0 + VI_PENDING_SEL, port / 64));
	GUEST_ASSERT_EQ(*upcall, 0);
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->cb_count, 2);
	/* Unmask: delivered now. */
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_unmask, port, SCRATCH), 0);
	GUEST_ASSERT(!test_bit64(SHINFO + SI_EVTCHN_MASK, port));
	GUEST_ASSERT_EQ(*upcall, 1);
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->cb_count, 3);
	xen_ack_port(SHINFO, VI0, port);
	/* Unmasking a port that is not pending raises nothing. */
	set_bit64(SHINFO + SI_EVTCHN_MASK, port);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_unmask, port, SCRATCH), 0);
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->cb_count, 3);

	/* Closed: status closed, its pending bit cleared; send and close again -EINVAL. */
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, port, SCRATCH), 0);
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->cb_count, 4);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_close, port, SCRATCH), 0);
	GUEST_ASSERT(!test_bit64(SHINFO + SI_EVTCHN_PENDING, port));
	GUEST_ASSERT_EQ(status_of(port, NULL, NULL), EVTCHNSTAT_closed);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, port, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_close, port, SCRATCH), -XEN_EINVAL);
}

/* HVMOP_set_evtchn_upcall_vector: vCPU 0's upcalls come through its local APIC on its own
 * vector (an interrupt the handler EOIs), no longer as the callback; a vector below 16 is
 * -EINVAL, an unknown vCPU -ENOENT, a bad pointer -EFAULT. */
static GUEST_CODE void guest_upcall_vector(void)
{
	volatile uint8_t *upcall = (volatile uint8_t *)(VI0 + VI_UPCALL_PENDING);
	volatile uint32_t *op = (volatile uint32_t *)SCRATCH;
	const uint32_t vec = XEN_LAPIC_VECTOR0 + 3;
	uint32_t port;

	setup_events();
	apic_write(APIC_SVR, 0x1ff);
	op[0] = 0;
	op[1] = 0x0f;
	GUEST_ASSERT_EQ(xen_hc(HC_hvm_op, HVMOP_set_evtchn_upcall_vector, SCRATCH, 0), -XEN_EINVAL);
	op[0] = 1;
	op[1] = vec;
	GUEST_ASSERT_EQ(xen_hc(HC_hvm_op, HVMOP_set_evtchn_upcall_vector, SCRATCH, 0), -XEN_ENOENT);
	GUEST_ASSERT_EQ(xen_hc(HC_hvm_op, HVMOP_set_evtchn_upcall_vector, 1ULL << 40, 0),
			-XEN_EFAULT);
	op[0] = 0;
	GUEST_ASSERT_EQ(xen_hc(HC_hvm_op, HVMOP_set_evtchn_upcall_vector, SCRATCH, 0), 0);

	/* Sent with interrupts off: the upcall marked and the vector requested in the IRR. */
	GUEST_ASSERT_EQ(xen_bind_ipi(0, &port, SCRATCH), 0);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, port, SCRATCH), 0);
	GUEST_ASSERT_EQ(*upcall, 1);
	GUEST_ASSERT(apic_bit(APIC_IRR, vec));
	/* Taken once (the handler EOIs, as Linux's does before it takes the upcall): the upcall
	 * still pending asks for nothing more, it is an edge. */
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->lapic_count, 1);
	GUEST_ASSERT_EQ(IRQ0->cb_count, 0);
	GUEST_ASSERT_EQ(*upcall, 1);
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->lapic_count, 1);
	/* Taken and acknowledged: the next send is a new upcall, and a new interrupt. */
	*upcall = 0;
	xen_ack_port(SHINFO, VI0, port);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, port, SCRATCH), 0);
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->lapic_count, 2);
	GUEST_ASSERT_EQ(IRQ0->cb_count, 0);
	GUEST_DONE();
}

static GUEST_CODE void guest_ports_and_errors(void)
{
	uint32_t a, b, t, u0, vcpu;

	setup_events();
	/* alloc_unbound for Dom0: status unbound, remote 0; bind_vcpu moves it. */
	GUEST_ASSERT_EQ(alloc_unbound(DOMID_SELF, 0, &a), 0);
	GUEST_ASSERT(a > 0);
	GUEST_ASSERT_EQ(status_of(a, &vcpu, &u0), EVTCHNSTAT_unbound);
	GUEST_ASSERT_EQ(u0 & 0xffff, 0);
	GUEST_ASSERT_EQ(bind_vcpu(a, 1), 0);
	GUEST_ASSERT_EQ(status_of(a, &vcpu, NULL), EVTCHNSTAT_unbound);
	GUEST_ASSERT_EQ(vcpu, 1);
	GUEST_ASSERT_EQ(bind_vcpu(a, 2), -XEN_ENOENT);
	/* A send on an unbound port goes nowhere (success, as in Xen). */
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, a, SCRATCH), 0);
	GUEST_ASSERT(!test_bit64(SHINFO + SI_EVTCHN_PENDING, a));

	/* The lowest free port comes next. */
	GUEST_ASSERT_EQ(xen_bind_ipi(1, &b, SCRATCH), 0);
	GUEST_ASSERT_EQ(b, a + 1);
	GUEST_ASSERT_EQ(bind_vcpu(b, 0), -XEN_EINVAL); /* an IPI port stays on its vCPU */

	/* VIRQs: per-vCPU TIMER once per vCPU; global ones are Dom0's (EBUSY). */
	GUEST_ASSERT_EQ(xen_bind_virq(VIRQ_TIMER, 0, &t, SCRATCH), 0);
	GUEST_ASSERT_EQ(status_of(t, &vcpu, &u0), EVTCHNSTAT_virq);
	GUEST_ASSERT_EQ(u0, VIRQ_TIMER);
	GUEST_ASSERT_EQ(xen_bind_virq(VIRQ_TIMER, 0, &t, SCRATCH), -XEN_EEXIST);
	GUEST_ASSERT_EQ(xen_bind_virq(VIRQ_TIMER, 7, &t, SCRATCH), -XEN_ENOENT);
	GUEST_ASSERT_EQ(xen_bind_virq(NR_VIRQS, 0, &t, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_bind_virq(VIRQ_CONSOLE, 1, &t, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_bind_virq(VIRQ_CONSOLE, 0, &t, SCRATCH), -XEN_EBUSY);
	GUEST_ASSERT_EQ(bind_vcpu(t, 1), -XEN_EINVAL); /* a per-vCPU VIRQ */
	/* A VIRQ port cannot be sent on. */
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, t, SCRATCH), -XEN_EINVAL);

	/* Bad ports and vCPUs. */
	GUEST_ASSERT_EQ(xen_bind_ipi(2, &t, SCRATCH), -XEN_ENOENT);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, 0, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, 4096, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, 1000, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_close, 0, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_close, 1000, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_close, 5000, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_unmask, 5000, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(bind_vcpu(5000, 0), -XEN_EINVAL);
	GUEST_ASSERT_EQ(bind_vcpu(1000, 0), -XEN_EINVAL); /* free */
	GUEST_ASSERT_EQ(status_of(1000, NULL, NULL), EVTCHNSTAT_closed);
	{
		volatile struct evtchn_status *s = (volatile struct evtchn_status *)SCRATCH;

		s->dom = DOMID_SELF;
		s->port = 5000;
		GUEST_ASSERT_EQ(xen_evtchn_op(EVTCHNOP_status, SCRATCH), -XEN_EINVAL);
		/* Another domain's ports (Dom0's): not ours to see. */
		s->dom = 0;
		s->port = 1;
		GUEST_ASSERT_EQ(xen_evtchn_op(EVTCHNOP_status, SCRATCH), -XEN_EPERM);
	}
	GUEST_ASSERT_EQ(alloc_unbound(0, DOMID_SELF, &t), -XEN_EPERM);
	/* Pointers. */
	GUEST_ASSERT_EQ(xen_evtchn_op(EVTCHNOP_bind_ipi, 1ULL << 40), -XEN_EFAULT);
	GUEST_ASSERT_EQ(xen_evtchn_op(EVTCHNOP_send, 0xdead000000000000ULL), -XEN_EFAULT);
	GUEST_ASSERT_EQ(xen_evtchn_op(EVTCHNOP_status, 0xfff00000ULL), -XEN_EFAULT);
	/* FIFO event channels and unknown commands: not there. */
	GUEST_ASSERT_EQ(xen_evtchn_op(EVTCHNOP_init_control, SCRATCH), -XEN_ENOSYS);
	GUEST_ASSERT_EQ(xen_evtchn_op(99, SCRATCH), -XEN_ENOSYS);

	/* Closing the others: unbound, IPI. */
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_close, a, SCRATCH), 0);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_close, b, SCRATCH), 0);
	GUEST_ASSERT_EQ(status_of(a, NULL, NULL), EVTCHNSTAT_closed);
}

/* Xen's answers for a domain id that does not exist: ESRCH (resolved before the permission
 * check, xen/common/event_channel.c). */
static GUEST_CODE void guest_foreign_domid(void)
{
	volatile struct evtchn_status *s = (volatile struct evtchn_status *)SCRATCH;
	uint32_t t;

	setup_events();
	GUEST_ASSERT_EQ(alloc_unbound(0x7000, DOMID_SELF, &t), -XEN_ESRCH);
	s->dom = 0x7000;
	s->port = 1;
	GUEST_ASSERT_EQ(xen_evtchn_op(EVTCHNOP_status, SCRATCH), -XEN_ESRCH);
}

/* Dom0's ports: arg0 the port Dom0 allocated. Sends twice on it, reports; then a port the
 * guest allocates for Dom0, which Dom0 binds; then waits for Dom0's notify on the first. */
static GUEST_CODE void guest_dom0(uint64_t dport)
{
	uint32_t u, vcpu, remote;

	setup_events();
	GUEST_ASSERT_EQ(status_of(dport, &vcpu, &remote), EVTCHNSTAT_unbound);
	GUEST_ASSERT_EQ(remote & 0xffff, 0);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, dport, SCRATCH), 0);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, dport, SCRATCH), 0);
	/* A send to Dom0 raises nothing here. */
	GUEST_ASSERT(!test_bit64(SHINFO + SI_EVTCHN_PENDING, dport));
	GUEST_SYNC(1);

	GUEST_ASSERT_EQ(alloc_unbound(DOMID_SELF, 0, &u), 0);
	GUEST_SYNC(u);
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, u, SCRATCH), 0);
	GUEST_SYNC(2);

	/* Dom0 notified dport while this vCPU was out: pending, upcall, callback. */
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, dport));
	GUEST_ASSERT_EQ(*(volatile uint8_t *)(VI0 + VI_UPCALL_PENDING), 1);
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->cb_count, 1);
	xen_ack_port(SHINFO, VI0, dport);
	GUEST_SYNC(3);
	/* Unbound by Dom0 since: notifies no more (checked by the host); the port stays. */
	GUEST_ASSERT_EQ(status_of(dport, NULL, NULL), EVTCHNSTAT_unbound);
}

/* HVM params: Dom0's values read by the guest; the guest may set only its callback. */
static GUEST_CODE void guest_params(void)
{
	static const uint32_t idx[] = { HVM_PARAM_STORE_PFN, HVM_PARAM_STORE_EVTCHN,
					HVM_PARAM_CONSOLE_PFN, HVM_PARAM_CONSOLE_EVTCHN };
	static const uint64_t want[] = { STORE_PFN, STORE_EVTCHN, CONSOLE_PFN, CONSOLE_EVTCHN };
	uint64_t v;

	for (int i = 0; i < 4; i++) {
		v = 0;
		GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_get_param, idx[i], &v, SCRATCH), 0);
		GUEST_ASSERT_EQ(v, want[i]);
		v = 1;
		GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_set_param, idx[i], &v, SCRATCH), -XEN_EPERM);
	}
	v = 1;
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_set_param, 12, &v, SCRATCH), -XEN_EPERM);
	v = 0;
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_get_param, HVM_PARAM_STORE_PFN, &v, SCRATCH), 0);
	GUEST_ASSERT_EQ(v, STORE_PFN);
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_get_param, 99, &v, SCRATCH), -XEN_EINVAL);
	GUEST_ASSERT_EQ(xen_hc(HC_hvm_op, HVMOP_get_param, 1ULL << 40, 0), -XEN_EFAULT);
	/* Another domain's params. */
	{
		volatile struct xen_hvm_param *p = (volatile struct xen_hvm_param *)SCRATCH;

		p->domid = 0;
		p->index = HVM_PARAM_STORE_PFN;
		GUEST_ASSERT_EQ(xen_hc(HC_hvm_op, HVMOP_get_param, SCRATCH, 0), -XEN_EPERM);
	}
	GUEST_SYNC(0);
	/* Dom0 changed STORE_PFN after the first run. */
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_get_param, HVM_PARAM_STORE_PFN, &v, SCRATCH), 0);
	GUEST_ASSERT_EQ(v, STORE_PFN + 1);
}

/* Dom0's notify wakes a vCPU asleep in HLT (a backstop timer at +PATIENCE would end the sleep
 * otherwise: the test then fails instead of hanging). */
#define MS       1000000ULL
#define PATIENCE (5000 * MS)

static GUEST_CODE void guest_hlt_until_notify(uint64_t dport)
{
	uint64_t now;
	uint32_t tport;

	setup_events();
	GUEST_ASSERT_EQ(xen_bind_virq(VIRQ_TIMER, 0, &tport, SCRATCH), 0);
	now = pvclock_read(VI0);
	GUEST_ASSERT_EQ(xen_singleshot(0, now + PATIENCE, 0, SCRATCH), 0);
	GUEST_SYNC(0);
	__asm__ volatile("sti; hlt; cli" ::: "memory");
	GUEST_ASSERT_EQ(IRQ0->cb_count, 1);
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, dport));
	GUEST_ASSERT(!test_bit64(SHINFO + SI_EVTCHN_PENDING, tport));
	GUEST_ASSERT(pvclock_read(VI0) < now + PATIENCE);
	xen_ack_port(SHINFO, VI0, dport);
}

/* An IPI port bound to vCPU 1 (asleep in HLT), sent by vCPU 0: vCPU 1's vcpu_info and
 * callback, not vCPU 0's. */
#define SHARED   0x30000ULL
#define P_PORT   ((volatile uint64_t *)(SHARED + 0x00))
#define AP_READY ((volatile uint64_t *)(SHARED + 0x08))
#define AP_DONE  ((volatile uint64_t *)(SHARED + 0x10))
#define VI1      (SHINFO + XEN_VCPU_INFO_SIZE)
#define SPINS    200000000ULL

static GUEST_CODE void guest_ipi_ap(uint64_t unused)
{
	uint64_t now;
	uint32_t port = *P_PORT, tport;

	(void)unused;
	XEN_IRQ(1)->vcpu_info = VI1;
	GUEST_ASSERT_EQ(xen_bind_virq(VIRQ_TIMER, 1, &tport, SCRATCH + 0x100), 0);
	now = pvclock_read(VI1);
	GUEST_ASSERT_EQ(xen_singleshot(1, now + PATIENCE, 0, SCRATCH + 0x100), 0);
	*AP_READY = 1;
	while (XEN_IRQ(1)->cb_count == 0)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	GUEST_ASSERT(test_bit64(SHINFO + SI_EVTCHN_PENDING, port));
	GUEST_ASSERT(!test_bit64(SHINFO + SI_EVTCHN_PENDING, tport));
	GUEST_ASSERT(test_bit64(VI1 + VI_PENDING_SEL, port / 64));
	GUEST_ASSERT_EQ(XEN_IRQ(1)->cb_upcall, 1);
	xen_ack_port(SHINFO, VI1, port);
	*AP_DONE = 1;
}

static GUEST_CODE void guest_ipi_bsp(void)
{
	uint32_t port;
	uint64_t now;

	setup_events();
	GUEST_ASSERT_EQ(xen_bind_ipi(1, &port, SCRATCH), 0);
	*P_PORT = port;
	apic_start_ap(1);
	GUEST_ASSERT(spin_until_eq(AP_READY, 1, SPINS));
	now = pvclock_read(VI0);
	while (pvclock_read(VI0) < now + 20 * MS)
		guest_pause();
	GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, port, SCRATCH), 0);
	GUEST_ASSERT_EQ(*(volatile uint8_t *)(VI0 + VI_UPCALL_PENDING), 0);
	GUEST_ASSERT(spin_until_eq(AP_DONE, 1, SPINS));
	irq_window();
	GUEST_ASSERT_EQ(IRQ0->cb_count, 0);
}

/* An IPI port sent with interrupts off, then interrupts on (STI; HLT, or two short windows):
 * one callback per round, each finding evtchn_upcall_pending set; GUEST_SYNC(round) at the
 * first round that breaks this. */
#define ROUNDS 300

GUEST_INLINE void send_rounds(uint64_t rounds, bool hlt)
{
	uint32_t port;

	setup_events();
	GUEST_ASSERT_EQ(xen_bind_ipi(0, &port, SCRATCH), 0);
	for (uint64_t i = 1; i <= rounds; i++) {
		GUEST_ASSERT_EQ(xen_port_op(EVTCHNOP_send, port, SCRATCH), 0);
		if (hlt) {
			__asm__ volatile("sti; hlt; cli" ::: "memory");
		} else {
			irq_window();
			irq_window();
		}
		if (IRQ0->cb_count != i || IRQ0->cb_spurious)
			GUEST_SYNC(i);
		xen_ack_port(SHINFO, VI0, port);
	}
}

static GUEST_CODE void guest_send_hlt_rounds(void)
{
	send_rounds(ROUNDS, true);
}

/*
 * A callback handler for vCPU 0 that makes a hypercall Dom0 serves (vcpu_op VCPUOP_is_up for
 * vCPU 0) before it takes the upcall, as a guest's handler does when an exit interrupts it:
 * the run loop picks the callback again while evtchn_upcall_pending is still set, and the
 * entry after the handler's IRET must not inject it once the handler has cleared the byte
 * (Xen checks it at each entry). Counts as the library's handler does.
 */
asm(".pushsection .text\n"
    ".globl xen_cb_hypercall_handler\n"
    "xen_cb_hypercall_handler:\n"
    "	push %rax\n"
    "	push %rdi\n"
    "	push %rsi\n"
    "	push %rdx\n"
    "	mov $24, %eax\n"
    "	mov $3, %edi\n"
    "	xor %esi, %esi\n"
    "	xor %edx, %edx\n"
    "	.byte 0x0f, 0x01, 0xc1\n"
    "	mov 0x6018, %rdx\n"
    "	xor %eax, %eax\n"
    "	xchg %al, (%rdx)\n"
    "	mov %rax, 0x6010\n"
    "	test %eax, %eax\n"
    "	jnz 1f\n"
    "	mov 32(%rsp), %rax\n"
    "	mov %rax, 0x6038\n"
    "	lock incq 0x6030\n"
    "1:	lock incq 0x6000\n"
    "	pop %rdx\n"
    "	pop %rsi\n"
    "	pop %rdi\n"
    "	pop %rax\n"
    "	iretq\n"
    ".popsection\n");

extern const char xen_cb_hypercall_handler[];

#define HC_ROUNDS 20

static GUEST_CODE void guest_handler_hypercall_rounds(void)
{
	send_rounds(HC_ROUNDS, false);
}

/* ---------------------------------------------------------------------------------------
 * Tests. */

static struct keel_vm *events_vm(const char *name, uint32_t nr_vcpus, void *entry)
{
	struct keel_vm *vm = vm_create_xen(name, nr_vcpus, SZ_1M);

	xen_setup_vcpu0(vm, entry);
	return vm;
}

TEST_F(domain, callback_and_mask)
{
	struct keel_vm *vm = events_vm("xen-evtchn-cb", 1, guest_callback_and_mask);

	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	vm_destroy(vm);
}

TEST_F(domain, upcall_vector_through_lapic)
{
	/* One vCPU: vCPU 1 does not exist. */
	struct keel_vm *vm = events_vm("xen-evtchn-upvec", 1, guest_upcall_vector);

	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	vm_destroy(vm);
}

TEST_F(domain, ports_and_errors)
{
	/* Two vCPUs (the second never runs): bind_vcpu and bind_ipi have a vCPU 1. */
	struct keel_vm *vm = events_vm("xen-evtchn-ports", 2, guest_ports_and_errors);

	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	vm_destroy(vm);
}

TEST_F(domain, nonexistent_domid_is_esrch)
{
	struct keel_vm *vm = events_vm("xen-evtchn-esrch", 1, guest_foreign_domid);

	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	vm_destroy(vm);
}

TEST_F(domain, dom0_eventfd_and_notify)
{
	struct keel_vm *vm = events_vm("xen-evtchn-dom0", 1, guest_dom0);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	int efd = eventfd(0, EFD_NONBLOCK), efd2 = eventfd(0, EFD_NONBLOCK);
	uint32_t dport = 0, uport = 0;
	struct keel_ucall uc;

	ASSERT_LE(0, efd);
	ASSERT_LE(0, efd2);
	/* Allocated before the first run, as libxl does; a notify then raises nothing. */
	ASSERT_EQ(0, xen_evtchn_bind(vm, KEEL_EVTCHN_ALLOC, 0, efd, &dport));
	ASSERT_LT(0, dport);
	EXPECT_EQ(0, xen_evtchn_notify(vm, dport));
	vcpu_args_set(vcpu, 1, (uint64_t)dport);

	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
	EXPECT_EQ(2, eventfd_take(efd));
	EXPECT_EQ(0, eventfd_take(efd));

	/* The guest's own port for Dom0: bound without ALLOC. */
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
	uport = uc.args[0];
	EXPECT_ERRNO(EINVAL, xen_evtchn_bind(vm, 0, dport + 100, efd2, NULL)); /* not unbound */
	ASSERT_EQ(0, xen_evtchn_bind(vm, 0, uport, efd2, NULL));
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
	EXPECT_EQ(2, uc.args[0]);
	EXPECT_EQ(1, eventfd_take(efd2));
	EXPECT_EQ(0, eventfd_take(efd));

	/* Dom0 notifies while the vCPU is out. */
	ASSERT_EQ(0, xen_evtchn_notify(vm, dport));
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
	EXPECT_EQ(3, uc.args[0]);
	ASSERT_EQ(0, xen_evtchn_unbind(vm, dport));
	EXPECT_ERRNO(EINVAL, xen_evtchn_notify(vm, dport));
	EXPECT_ERRNO(EINVAL, xen_evtchn_unbind(vm, dport));
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, &uc));
	EXPECT_EQ(0, xen_evtchn_unbind(vm, uport));
	vm_destroy(vm);
	close(efd);
	close(efd2);
}

TEST_F(domain, dom0_ioctl_errors)
{
	struct keel_vm *vm = vm_create_xen("xen-evtchn-ioctl", 1, SZ_1M);
	struct keel_vm *bare = vm_create("xen-evtchn-bare", 1, SZ_1M);
	int efd = eventfd(0, EFD_NONBLOCK);
	struct keel_evtchn_bind b = { .flags = KEEL_EVTCHN_ALLOC, .eventfd = efd, .pad = 1 };
	struct keel_evtchn_port p = { .port = 1, .pad = 1 };
	struct keel_xen_param xp = { .index = KEEL_XEN_PARAM_STORE_PFN, .pad = 1 };
	uint32_t port;

	ASSERT_LE(0, efd);
	EXPECT_ERRNO(EINVAL, xen_evtchn_bind(vm, 2, 0, efd, NULL));
	EXPECT_ERRNO(EINVAL, xen_evtchn_bind(vm, KEEL_EVTCHN_ALLOC | 4, 0, efd, NULL));
	EXPECT_ERRNO(EINVAL, ioctl(vm->fd, KEEL_DOMAIN_EVTCHN_BIND, &b));
	EXPECT_ERRNO(EBADF, xen_evtchn_bind(vm, KEEL_EVTCHN_ALLOC, 0, -1, NULL));
	EXPECT_ERRNO(EINVAL, xen_evtchn_bind(vm, KEEL_EVTCHN_ALLOC, 0, self->dev, NULL));
	EXPECT_ERRNO(EINVAL, xen_evtchn_bind(vm, 0, 5, efd, NULL));  /* not the guest's */
	EXPECT_ERRNO(EINVAL, xen_evtchn_bind(vm, 0, 0, efd, NULL));  /* reserved */
	EXPECT_ERRNO(EINVAL, xen_evtchn_bind(vm, 0, 99999, efd, NULL));
	EXPECT_ERRNO(EINVAL, xen_evtchn_notify(vm, 1));
	EXPECT_ERRNO(EINVAL, xen_evtchn_unbind(vm, 1));
	ASSERT_EQ(0, xen_evtchn_bind(vm, KEEL_EVTCHN_ALLOC, 0, efd, &port));
	EXPECT_EQ(1, port); /* the lowest free port */
	p.port = port;
	EXPECT_ERRNO(EINVAL, ioctl(vm->fd, KEEL_DOMAIN_EVTCHN_NOTIFY, &p));
	EXPECT_ERRNO(EINVAL, ioctl(vm->fd, KEEL_DOMAIN_EVTCHN_UNBIND, &p));
	EXPECT_EQ(0, xen_evtchn_notify(vm, port));
	EXPECT_EQ(0, xen_evtchn_unbind(vm, port));

	/* Params: the four the toolstack sets, nothing else. */
	EXPECT_ERRNO(EINVAL, ioctl(vm->fd, KEEL_DOMAIN_SET_PARAM, &xp));
	EXPECT_ERRNO(EINVAL, ioctl(vm->fd, KEEL_DOMAIN_GET_PARAM, &xp));
	EXPECT_ERRNO(EINVAL, xen_set_param(vm, HVM_PARAM_CALLBACK_IRQ, 0));
	EXPECT_ERRNO(EINVAL, xen_set_param(vm, 5, 0));
	EXPECT_ERRNO(EINVAL, xen_set_param(vm, 99, 0));
	xp.pad = 0;
	xp.index = 0;
	EXPECT_ERRNO(EINVAL, ioctl(vm->fd, KEEL_DOMAIN_GET_PARAM, &xp));
	xp.index = KEEL_XEN_PARAM_CONSOLE_EVTCHN;
	xp.value = 77;
	EXPECT_EQ(0, ioctl(vm->fd, KEEL_DOMAIN_GET_PARAM, &xp));
	EXPECT_EQ(0, xp.value);

	/* A domain that is not Xen's has none of these. */
	EXPECT_ERRNO(ENOTTY, xen_set_param(bare, KEEL_XEN_PARAM_STORE_PFN, 1));
	EXPECT_ERRNO(ENOTTY, xen_evtchn_bind(bare, KEEL_EVTCHN_ALLOC, 0, efd, NULL));
	EXPECT_ERRNO(ENOTTY, xen_evtchn_notify(bare, 1));
	vm_destroy(bare);
	vm_destroy(vm);
	close(efd);
}

TEST_F(domain, hvm_params)
{
	struct keel_vm *vm = events_vm("xen-params", 1, guest_params);
	struct keel_xen_param xp = { .index = KEEL_XEN_PARAM_CONSOLE_PFN };

	ASSERT_EQ(0, xen_set_param(vm, KEEL_XEN_PARAM_STORE_PFN, STORE_PFN));
	ASSERT_EQ(0, xen_set_param(vm, KEEL_XEN_PARAM_STORE_EVTCHN, STORE_EVTCHN));
	ASSERT_EQ(0, xen_set_param(vm, KEEL_XEN_PARAM_CONSOLE_PFN, CONSOLE_PFN));
	ASSERT_EQ(0, xen_set_param(vm, KEEL_XEN_PARAM_CONSOLE_EVTCHN, CONSOLE_EVTCHN));
	ASSERT_EQ(0, ioctl(vm->fd, KEEL_DOMAIN_GET_PARAM, &xp));
	EXPECT_EQ(CONSOLE_PFN, xp.value);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], NULL));
	ASSERT_EQ(0, xen_set_param(vm, KEEL_XEN_PARAM_STORE_PFN, STORE_PFN + 1));
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	/* The guest's refused writes changed nothing. */
	ASSERT_EQ(0, ioctl(vm->fd, KEEL_DOMAIN_GET_PARAM, &xp));
	EXPECT_EQ(CONSOLE_PFN, xp.value);
	vm_destroy(vm);
}

struct notifier {
	struct keel_vm *vm;
	uint32_t port;
	int ret;
};

static void *notify_later(void *arg)
{
	struct notifier *n = arg;

	usleep(100 * 1000);
	n->ret = xen_evtchn_notify(n->vm, n->port);
	return NULL;
}

TEST_F(domain, dom0_notify_wakes_hlt)
{
	struct keel_vm *vm = events_vm("xen-evtchn-hlt", 1, guest_hlt_until_notify);
	int efd = eventfd(0, EFD_NONBLOCK);
	struct notifier n = { .vm = vm, .ret = -1 };
	pthread_t tid;

	ASSERT_LE(0, efd);
	ASSERT_EQ(0, xen_evtchn_bind(vm, KEEL_EVTCHN_ALLOC, 0, efd, &n.port));
	vcpu_args_set(vm->vcpus[0], 1, (uint64_t)n.port);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], NULL));
	ASSERT_EQ(0, pthread_create(&tid, NULL, notify_later, &n));
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	pthread_join(tid, NULL);
	EXPECT_EQ(0, n.ret);
	vm_destroy(vm);
	close(efd);
}

TEST_F(domain, ipi_port_wakes_other_vcpu)
{
	struct keel_vm *vm = events_vm("xen-evtchn-smp", 2, guest_ipi_bsp);
	struct xen_runner ap;

	xen_setup_ap(vm, guest_ipi_ap, 0);
	xen_runner_start(&ap, vm->vcpus[1], true);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	xen_runner_join(&ap);
	EXPECT_TRUE(ap.done) TH_LOG("vCPU 1's run ended: reason %u, errno %d", ap.last_reason,
				    ap.err);
	vm_destroy(vm);
}

TEST_F(domain, send_hlt_rounds_one_callback_each)
{
	struct keel_vm *vm = events_vm("xen-evtchn-rounds", 1, guest_send_hlt_rounds);
	struct xen_irq_state *irq = gpa_hva(vm, XEN_IRQ_GPA(0), sizeof(*irq));
	struct keel_ucall uc;

	EXPECT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc))
		TH_LOG("round %llu of %d: %llu callbacks, %llu spurious (the last at rip %#llx)",
		       (ull)uc.args[0], ROUNDS, (ull)irq->cb_count, (ull)irq->cb_spurious,
		       (ull)irq->spurious_rip);
	vm_destroy(vm);
}

TEST_F(domain, callback_not_repeated_after_handler_took_upcall)
{
	struct keel_vm *vm = events_vm("xen-evtchn-hc", 1, guest_handler_hypercall_rounds);
	struct xen_irq_state *irq = gpa_hva(vm, XEN_IRQ_GPA(0), sizeof(*irq));
	struct keel_ucall uc;

	xen_idt_gate(gpa_hva(vm, XEN_IDT_GPA(0), 4096), XEN_CB_VECTOR, xen_cb_hypercall_handler);
	EXPECT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc))
		TH_LOG("round %llu of %d: %llu callbacks, %llu found the upcall taken (the last at rip %#llx)",
		       (ull)uc.args[0], HC_ROUNDS, (ull)irq->cb_count, (ull)irq->cb_spurious,
		       (ull)irq->spurious_rip);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

// SPDX-License-Identifier: GPL-2.0
/*
 * xen_lapic_test: the local APIC a Xen PVH vCPU has (xAPIC MMIO at 0xFEE00000) and the rest
 * of its platform. ID and version registers; a self IPI (ICR shorthand self) is pending in IRR
 * while interrupts are off, then runs the guest's IDT handler, whose EOI clears it; a
 * software-disabled APIC drops it. vCPU 0's INIT/SIPI starts vCPU 1 (whose thread was already
 * asleep inside KEEL_VCPU_RUN) in real mode at the SIPI vector; VCPUOP_is_up follows it; a
 * fixed IPI to vCPU 1 and an all-but-self IPI wake its HLT and run its handler, not vCPU 0's.
 * HLT with interrupts off on every vCPU powers the domain off (KEEL_EXIT_SHUTDOWN,
 * KEEL_SHUTDOWN_XEN, poweroff) on the last one, while the other's thread sleeps until a
 * signal. Port I/O reads all-ones and a read of an unmapped hole too, with no exit to Dom0
 * (writes dropped), while a KEEL_RANGE_MMIO range still exits. The APIC timer (one-shot)
 * interrupts a vCPU asleep in HLT and one that runs. A self IPI before STI; HLT is taken
 * exactly once per round, hundreds of rounds. x2APIC: CPUID offers it; IA32_APIC_BASE reads
 * the xAPIC enabled (BSP on vCPU 0) and switches to x2APIC mode; the MSRs then read the
 * 32-bit ID, the version and the cluster LDR; a self IPI through SELF IPI and fixed IPIs and
 * INIT/SIPI through the 64-bit ICR (destination in the high half), EOI by MSR; every refused
 * access #GPs (x2APIC MSRs in xAPIC mode, EOI read, reserved bits, a read-only register,
 * x2APIC straight back to xAPIC), and disabling the APIC leaves them all refused. An interrupt
 * whose injecting entry the hardware refused is taken once at the next run, not left in
 * service. Runs inside
 * the test VM, as root, after keel.ko is loaded.
 */
#include <cpuid.h>
#include <stdint.h>
#include <string.h>

#include "kselftest_harness.h"
#include "domain_test.h"
#include "xen.h"

#define SHARED   0x30000ULL
#define AP_READY ((volatile uint64_t *)(SHARED + 0x00))
#define AP_CMD   ((volatile uint64_t *)(SHARED + 0x08))
#define SPINS    200000000ULL
#define HOLE     0xc0000000ULL
#define MMIO     0xd0000000ULL

#define VEC_SELF  XEN_LAPIC_VECTOR0
#define VEC_FIXED (XEN_LAPIC_VECTOR0 + 1)
#define VEC_ABS   (XEN_LAPIC_VECTOR0 + 2)

/* ---------------------------------------------------------------------------------------
 * Guest code (long mode). */

GUEST_INLINE int64_t is_up(uint32_t vcpu)
{
	return xen_hc(HC_vcpu_op, VCPUOP_is_up, vcpu, 0);
}

static GUEST_CODE void guest_ap(uint64_t unused)
{
	(void)unused;
	GUEST_ASSERT_EQ(apic_read(APIC_ID) >> 24, 1);
	apic_write(APIC_SVR, 0x1ff);
	*AP_READY = 1;
	/* Asleep in HLT until each IPI; the handler counts and EOIs. */
	while (XEN_IRQ(1)->lapic_count < 2)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 1);
	GUEST_ASSERT(spin_until_eq(AP_CMD, 1, SPINS));
	/* Down. */
	__asm__ volatile("cli; hlt" ::: "memory");
	GUEST_ASSERT(0);
}

static GUEST_CODE void guest_bsp(void)
{
	GUEST_ASSERT_EQ(apic_read(APIC_ID) >> 24, 0);
	GUEST_ASSERT_EQ(apic_read(APIC_VERSION), 0x00060014);

	/* Self IPI: pending while interrupts are off, taken and EOIed after. */
	apic_write(APIC_SVR, 0x1ff);
	apic_write(APIC_ICR_LOW, APIC_SH_SELF | APIC_DM_FIXED | VEC_SELF);
	GUEST_ASSERT(apic_bit(APIC_IRR, VEC_SELF));
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 0);
	irq_window();
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 1);
	GUEST_ASSERT(!apic_bit(APIC_IRR, VEC_SELF));
	GUEST_ASSERT(!apic_bit(APIC_ISR, VEC_SELF));
	/* Software-disabled: a fixed interrupt is dropped. */
	apic_write(APIC_SVR, 0xff);
	apic_write(APIC_ICR_LOW, APIC_SH_SELF | APIC_DM_FIXED | VEC_SELF);
	irq_window();
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 1);
	GUEST_ASSERT(!apic_bit(APIC_IRR, VEC_SELF));
	apic_write(APIC_SVR, 0x1ff);

	/* vCPU 1 waits for INIT/SIPI. */
	GUEST_ASSERT_EQ(is_up(0), 1);
	GUEST_ASSERT_EQ(is_up(1), 0);
	GUEST_ASSERT_EQ(is_up(2), -XEN_ENOENT);
	apic_start_ap(1);
	GUEST_ASSERT(spin_until_eq(AP_READY, 1, SPINS));
	GUEST_ASSERT_EQ(is_up(1), 1);

	/* A fixed IPI to APIC id 1, then one to all but self. */
	apic_icr(1, APIC_DM_FIXED | VEC_FIXED);
	GUEST_ASSERT(spin_until_eq(&XEN_IRQ(1)->lapic_count, 1, SPINS));
	apic_write(APIC_ICR_LOW, APIC_SH_ALL_BUT_SELF | APIC_DM_FIXED | VEC_ABS);
	GUEST_ASSERT(spin_until_eq(&XEN_IRQ(1)->lapic_count, 2, SPINS));
	irq_window();
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 1);

	/* vCPU 1 goes down first, then this one: the domain powers off here. */
	*AP_CMD = 1;
	for (uint64_t i = 0; is_up(1); i++)
		GUEST_ASSERT(i < 1000000);
	GUEST_SYNC(0);
	__asm__ volatile("cli; hlt" ::: "memory");
	GUEST_ASSERT(0);
}

GUEST_INLINE uint32_t inl(uint16_t port)
{
	uint32_t v;

	__asm__ volatile("inl %w1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

GUEST_INLINE uint16_t inw(uint16_t port)
{
	uint16_t v;

	__asm__ volatile("inw %w1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

GUEST_INLINE uint8_t inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %w1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static GUEST_CODE void guest_io_and_holes(void)
{
	/* Ports: all-ones whatever the size; writes vanish (no exit). */
	GUEST_ASSERT_EQ(inb(0x80), 0xff);
	GUEST_ASSERT_EQ(inw(0x510), 0xffff);
	GUEST_ASSERT_EQ(inl(0xcf8), 0xffffffff);
	__asm__ volatile("outl %0, %w1" ::"a"(0x80000000U), "Nd"((uint16_t)0xcf8));
	__asm__ volatile("outb %0, %w1" ::"a"((uint8_t)0x12), "Nd"((uint16_t)0x80));
	GUEST_ASSERT_EQ(inl(0xcf8), 0xffffffff);
	/* A hole: all-ones at every size, writes dropped. */
	GUEST_ASSERT_EQ(*(volatile uint8_t *)HOLE, 0xff);
	GUEST_ASSERT_EQ(*(volatile uint16_t *)(HOLE + 2), 0xffff);
	GUEST_ASSERT_EQ(*(volatile uint32_t *)(HOLE + 4), 0xffffffff);
	GUEST_ASSERT_EQ(*(volatile uint64_t *)(HOLE + 8), ~0ULL);
	*(volatile uint32_t *)HOLE = 0x1234;
	GUEST_ASSERT_EQ(*(volatile uint32_t *)HOLE, 0xffffffff);
	/* An MMIO range is Dom0's: the host answers. */
	GUEST_ASSERT_EQ(*(volatile uint32_t *)MMIO, 0xabcd1234);
}

/* The APIC timer (one-shot, divide by 1: it counts TSC ticks, Keel's bus clock). A Xen
 * one-shot timer at +PATIENCE is the backstop that ends the HLT if the APIC timer never
 * fires (the test then fails instead of hanging). */
#define APIC_LVT_TIMER  0x320
#define APIC_TIMER_INIT 0x380
#define APIC_TIMER_DIV  0x3e0
#define VEC_TIMER       (XEN_LAPIC_VECTOR0 + 3)
#define SHINFO          0x10000ULL
#define SCRATCH         0x20000ULL
#define MS              1000000ULL
#define PATIENCE        (1000 * MS)

static GUEST_CODE void guest_apic_timer(void)
{
	uint64_t v = HVM_CALLBACK_VECTOR(XEN_CB_VECTOR), now;
	uint32_t tport;

	GUEST_ASSERT_EQ(xen_add_to_physmap(XENMAPSPACE_shared_info, 0, SHINFO >> 12, SCRATCH), 0);
	GUEST_ASSERT_EQ(xen_hvm_param(HVMOP_set_param, HVM_PARAM_CALLBACK_IRQ, &v, SCRATCH), 0);
	XEN_IRQ(0)->vcpu_info = SHINFO;
	GUEST_ASSERT_EQ(xen_bind_virq(VIRQ_TIMER, 0, &tport, SCRATCH), 0);
	apic_write(APIC_SVR, 0x1ff);
	apic_write(APIC_TIMER_DIV, 0xb);
	apic_write(APIC_LVT_TIMER, VEC_TIMER);

	/* Asleep in HLT: the APIC timer wakes the vCPU. */
	now = pvclock_read(SHINFO);
	GUEST_ASSERT_EQ(xen_singleshot(0, now + PATIENCE, 0, SCRATCH), 0);
	apic_write(APIC_TIMER_INIT, 1000000);
	__asm__ volatile("sti; hlt; cli" ::: "memory");
	GUEST_SYNC(pvclock_read(SHINFO) - now);
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 1);
	GUEST_ASSERT_EQ(XEN_IRQ(0)->cb_count, 0);

	/* Running, touching no APIC register: delivered all the same. */
	GUEST_ASSERT_EQ(xen_hc(HC_vcpu_op, VCPUOP_stop_singleshot_timer, 0, 0), 0);
	now = pvclock_read(SHINFO);
	apic_write(APIC_TIMER_INIT, 1000000);
	while (XEN_IRQ(0)->lapic_count == 1 && pvclock_read(SHINFO) < now + PATIENCE)
		irq_window();
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 2);
}

/* A self IPI pending while interrupts are off, then STI; HLT: taken once per round (the
 * vCPU does not sleep: the interrupt is there). */
#define ROUNDS 300

static GUEST_CODE void guest_self_ipi_hlt_rounds(void)
{
	apic_write(APIC_SVR, 0x1ff);
	for (uint64_t i = 1; i <= ROUNDS; i++) {
		apic_write(APIC_ICR_LOW, APIC_SH_SELF | APIC_DM_FIXED | VEC_SELF);
		__asm__ volatile("sti; hlt; cli" ::: "memory");
		if (XEN_IRQ(0)->lapic_count != i)
			GUEST_SYNC(i);
		GUEST_ASSERT(!apic_bit(APIC_ISR, VEC_SELF));
	}
}

/* An interrupt pending when an entry is refused: a self IPI sent with interrupts off, then a
 * report made right after STI (so the run ends with the interrupt still pending and the guest
 * open to it); the test makes the hardware refuse the next entry, the one that injects it.
 * Run again, the guest takes it once, and it is not left in service (which would block its
 * priority class: a second one must still come). */
static GUEST_CODE void guest_refused_entry_keeps_irq(void)
{
	apic_write(APIC_SVR, 0x1ff);
	apic_write(APIC_ICR_LOW, APIC_SH_SELF | APIC_DM_FIXED | VEC_SELF);
	GUEST_ASSERT(apic_bit(APIC_IRR, VEC_SELF));
	/* GUEST_SYNC(1) in STI's shadow: no interrupt window before it. */
	__GUEST_HYPERCALL("sti; .byte 0x0f, 0x01, 0xc1", KEEL_HC_SYNC, 1, 0, 0, 0, 0);
	__asm__ volatile("cli" ::: "memory");
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 1);
	GUEST_ASSERT(!apic_bit(APIC_ISR, VEC_SELF));
	GUEST_ASSERT(!apic_bit(APIC_IRR, VEC_SELF));
	apic_write(APIC_ICR_LOW, APIC_SH_SELF | APIC_DM_FIXED | VEC_SELF);
	irq_window();
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 2);
	GUEST_DONE();
}

/* NMIs by the ICR (self): taken with interrupts off, at once; one the handler sends itself
 * waits until that handler's IRET (no NMI nests), then comes. */
static GUEST_CODE void guest_nmi_self(void)
{
	apic_write(APIC_SVR, 0x1ff);
	apic_write(APIC_ICR_LOW, APIC_SH_SELF | APIC_DM_NMI);
	GUEST_ASSERT_EQ(XEN_IRQ(0)->nmi_count, 1);
	XEN_IRQ(0)->nmi_resend = 2;
	apic_write(APIC_ICR_LOW, APIC_SH_SELF | APIC_DM_NMI);
	GUEST_ASSERT_EQ(XEN_IRQ(0)->nmi_count, 4);
	GUEST_ASSERT_EQ(XEN_IRQ(0)->nmi_nested, 0);
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 0);
	GUEST_DONE();
}

/* x2APIC mode, through the MSRs. */
#define MSR_APIC_BASE 0x1b
#define X2APIC_MSR(reg) (0x800 + ((reg) >> 4))
#define APIC_BASE_BSP  0x100ULL
#define APIC_BASE_EXTD 0x400ULL
#define APIC_BASE_EN   0x800ULL
#define APIC_SELF_IPI  0x3f0

GUEST_INLINE uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;

	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
	return ((uint64_t)hi << 32) | lo;
}

GUEST_INLINE void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" ::"c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}

/* Whether RDMSR (write false) or WRMSR of `msr` on vCPU `n` raises #GP (then skipped). */
GUEST_INLINE bool msr_gp(uint32_t n, uint32_t msr, bool write, uint64_t v)
{
	uint64_t before = XEN_IRQ(n)->gp_count;

	XEN_IRQ(n)->gp_expect = 1;
	if (write)
		wrmsr(msr, v);
	else
		(void)rdmsr(msr);
	XEN_IRQ(n)->gp_expect = 0;
	return XEN_IRQ(n)->gp_count == before + 1;
}

/* Bit `vector` of the 256-bit register array at `base` (APIC_IRR, APIC_ISR), by MSR. */
GUEST_INLINE bool x2apic_bit(uint32_t base, uint32_t vector)
{
	return (rdmsr(X2APIC_MSR(base + 0x10 * (vector / 32))) >> (vector % 32)) & 1;
}

GUEST_INLINE void x2apic_enable(uint32_t n)
{
	uint64_t base = 0xfee00000ULL | APIC_BASE_EN | (n ? 0 : APIC_BASE_BSP);

	GUEST_ASSERT_EQ(rdmsr(MSR_APIC_BASE), base);
	wrmsr(MSR_APIC_BASE, base | APIC_BASE_EXTD);
	GUEST_ASSERT_EQ(rdmsr(MSR_APIC_BASE), base | APIC_BASE_EXTD);
	XEN_IRQ(n)->x2apic = 1;
	/* The 32-bit ID; the logical ID: cluster (ID[19:4]) and bit ID[3:0]. */
	GUEST_ASSERT_EQ(rdmsr(X2APIC_MSR(APIC_ID)), n);
	GUEST_ASSERT_EQ(rdmsr(X2APIC_MSR(0xd0)), 1u << n);
	GUEST_ASSERT_EQ(rdmsr(X2APIC_MSR(APIC_VERSION)) & 0xff, 0x14);
	wrmsr(X2APIC_MSR(APIC_SVR), 0x1ff);
	/* The xAPIC page is gone: it reads all-ones like a hole. */
	GUEST_ASSERT_EQ(apic_read(APIC_ID), 0xffffffff);
}

static GUEST_CODE void guest_x2apic_ap(uint64_t unused)
{
	(void)unused;
	x2apic_enable(1);
	*AP_READY = 1;
	while (XEN_IRQ(1)->lapic_count < 1)
		__asm__ volatile("sti; hlt; cli" ::: "memory");
	GUEST_ASSERT(!x2apic_bit(APIC_ISR, VEC_FIXED));
	GUEST_ASSERT(spin_until_eq(AP_CMD, 1, SPINS));
	__asm__ volatile("cli; hlt" ::: "memory");
	GUEST_ASSERT(0);
}

static GUEST_CODE void guest_x2apic(void)
{
	uint32_t r[4];

	__cpuid_count(1, 0, r[0], r[1], r[2], r[3]);
	GUEST_ASSERT(r[2] & (1u << 21));
	/* xAPIC mode: the x2APIC MSRs are refused. */
	GUEST_ASSERT(msr_gp(0, X2APIC_MSR(APIC_ID), false, 0));
	GUEST_ASSERT(msr_gp(0, X2APIC_MSR(APIC_SVR), true, 0x1ff));
	/* EXTD without EN, and a moved base, are refused. */
	GUEST_ASSERT(msr_gp(0, MSR_APIC_BASE, true, 0xfee00000ULL | APIC_BASE_EXTD));
	GUEST_ASSERT(msr_gp(0, MSR_APIC_BASE, true, 0xfed00000ULL | APIC_BASE_EN));
	x2apic_enable(0);

	/* A self IPI by the SELF IPI register: pending while interrupts are off, then taken;
	 * the handler's EOI (by MSR) clears ISR. */
	wrmsr(X2APIC_MSR(APIC_SELF_IPI), VEC_SELF);
	GUEST_ASSERT(x2apic_bit(APIC_IRR, VEC_SELF));
	irq_window();
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 1);
	GUEST_ASSERT(!x2apic_bit(APIC_IRR, VEC_SELF));
	GUEST_ASSERT(!x2apic_bit(APIC_ISR, VEC_SELF));
	/* ... and by the ICR's self shorthand. */
	wrmsr(X2APIC_MSR(APIC_ICR_LOW), APIC_SH_SELF | APIC_DM_FIXED | VEC_SELF);
	irq_window();
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 2);

	/* Refused: reading EOI (write-only), a non-zero EOI, writing the ID, reserved bits of
	 * the ICR and of SVR, a register that is not there, the xAPIC-only ICR high. */
	GUEST_ASSERT(msr_gp(0, X2APIC_MSR(APIC_EOI), false, 0));
	GUEST_ASSERT(msr_gp(0, X2APIC_MSR(APIC_EOI), true, 1));
	GUEST_ASSERT(msr_gp(0, X2APIC_MSR(APIC_ID), true, 5));
	GUEST_ASSERT(msr_gp(0, X2APIC_MSR(APIC_ICR_LOW), true, 1u << 20 | VEC_SELF));
	GUEST_ASSERT(msr_gp(0, X2APIC_MSR(APIC_SVR), true, 1u << 20));
	GUEST_ASSERT(msr_gp(0, 0x801, false, 0));
	GUEST_ASSERT(msr_gp(0, X2APIC_MSR(APIC_ICR_HIGH), false, 0));
	/* x2APIC cannot go straight back to xAPIC. */
	GUEST_ASSERT(msr_gp(0, MSR_APIC_BASE, true, 0xfee00000ULL | APIC_BASE_EN | APIC_BASE_BSP));
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 2);

	/* INIT/SIPI and a fixed IPI to vCPU 1 through the 64-bit ICR. */
	wrmsr(X2APIC_MSR(APIC_ICR_LOW), (1ULL << 32) | APIC_DM_INIT | APIC_LEVEL_ASSERT);
	wrmsr(X2APIC_MSR(APIC_ICR_LOW), (1ULL << 32) | APIC_DM_SIPI | XEN_AP_VECTOR);
	GUEST_ASSERT(spin_until_eq(AP_READY, 1, SPINS));
	wrmsr(X2APIC_MSR(APIC_ICR_LOW), (1ULL << 32) | APIC_DM_FIXED | VEC_FIXED);
	GUEST_ASSERT(spin_until_eq(&XEN_IRQ(1)->lapic_count, 1, SPINS));
	GUEST_ASSERT_EQ(XEN_IRQ(0)->lapic_count, 2);

	/* Disabled: every x2APIC MSR is refused; enabling xAPIC mode again works. */
	wrmsr(MSR_APIC_BASE, 0xfee00000ULL | APIC_BASE_BSP);
	XEN_IRQ(0)->x2apic = 0;
	GUEST_ASSERT(msr_gp(0, X2APIC_MSR(APIC_ID), false, 0));
	wrmsr(MSR_APIC_BASE, 0xfee00000ULL | APIC_BASE_EN | APIC_BASE_BSP);
	GUEST_ASSERT_EQ(apic_read(APIC_ID) >> 24, 0);

	*AP_CMD = 1;
	for (uint64_t i = 0; is_up(1); i++)
		GUEST_ASSERT(i < 1000000);
	GUEST_DONE();
}

/* ---------------------------------------------------------------------------------------
 * Tests. */

TEST_F(domain, ipis_sipi_and_poweroff)
{
	struct keel_vm *vm = vm_create_xen("xen-lapic", 2, SZ_1M);
	struct keel_vcpu *bsp = vm->vcpus[0];
	struct keel_domain_info info;
	struct xen_runner ap;
	struct keel_ucall uc;

	xen_install_sigusr1();
	xen_setup_vcpu0(vm, guest_bsp);
	xen_setup_ap(vm, guest_ap, 0);
	xen_runner_start(&ap, vm->vcpus[1], true);
	/* vCPU 1's thread is inside KEEL_VCPU_RUN, asleep, before vCPU 0 starts it. */
	ASSERT_TRUE(xen_wait_running(vm, 1, 2000));
	usleep(20000);
	EXPECT_FALSE(ap.real_seen);

	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(bsp, &uc));
	vcpu_run(bsp);
	ASSERT_EXIT(bsp, KEEL_EXIT_SHUTDOWN);
	EXPECT_EQ(KEEL_SHUTDOWN_XEN, bsp->run.exit.shutdown.kind);
	EXPECT_EQ(KEEL_XEN_SHUTDOWN_POWEROFF, bsp->run.exit.shutdown.reason);

	/* vCPU 1 is down, its thread asleep in the run until a signal. */
	vm_info(vm, &info);
	EXPECT_TRUE(info.running_mask & 2);
	pthread_kill(ap.tid, SIGUSR1);
	xen_runner_join(&ap);
	EXPECT_EQ(EINTR, ap.err);
	EXPECT_EQ(KEEL_EXIT_INTR, ap.last_reason);
	EXPECT_TRUE(ap.real_seen);
	EXPECT_EQ(XEN_AP_VECTOR << 8, ap.real_cs) TH_LOG("vCPU 1 started with CS %#llx",
							 (ull)ap.real_cs);
	EXPECT_EQ(0, ap.real_longmode);
	EXPECT_FALSE(ap.done);
	vm_destroy(vm);
}

TEST_F(domain, lone_vcpu_hlt_without_interrupts_powers_off)
{
	struct keel_vm *vm = vm_create_xen("xen-lapic-off", 2, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];

	/* vCPU 1 never started: vCPU 0's HLT with IF=0 is the last one down. */
	vm_write(vm, CODE_GPA, blob_real_hlt_start, BLOB_SIZE(real_hlt));
	vcpu_setup_real(vcpu, CODE_GPA, 0);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_SHUTDOWN);
	EXPECT_EQ(KEEL_SHUTDOWN_XEN, vcpu->run.exit.shutdown.kind);
	EXPECT_EQ(KEEL_XEN_SHUTDOWN_POWEROFF, vcpu->run.exit.shutdown.reason);
	vm_destroy(vm);
}

TEST_F(domain, port_io_and_holes_read_all_ones)
{
	struct keel_vm *vm = vm_create_xen("xen-holes", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_ucall uc;

	vm_add_range(vm, MMIO, SZ_4K, KEEL_RANGE_MMIO);
	xen_setup_vcpu0(vm, guest_io_and_holes);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_MMIO);
	EXPECT_EQ(MMIO, vcpu->run.exit.mmio.gpa);
	EXPECT_EQ(KEEL_IO_IN, vcpu->run.exit.mmio.direction);
	EXPECT_EQ(4, vcpu->run.exit.mmio.size);
	vcpu->run.exit.mmio.data = 0xabcd1234;
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, &uc));
	vm_destroy(vm);
}

TEST_F(domain, apic_timer_one_shot)
{
	struct keel_vm *vm = vm_create_xen("xen-apic-timer", 1, SZ_1M);
	struct keel_ucall uc;

	xen_setup_vcpu0(vm, guest_apic_timer);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vm->vcpus[0], &uc));
	TH_LOG("the HLT ended after %llu us", (ull)(uc.args[0] / 1000));
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc));
	vm_destroy(vm);
}

TEST_F(domain, self_ipi_hlt_rounds_once_each)
{
	struct keel_vm *vm = vm_create_xen("xen-ipi-rounds", 1, SZ_1M);
	struct keel_ucall uc;

	xen_setup_vcpu0(vm, guest_self_ipi_hlt_rounds);
	EXPECT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], &uc))
		TH_LOG("round %llu of %d: the interrupt count is off (%llu)", (ull)uc.args[0],
		       ROUNDS, (ull)((struct xen_irq_state *)gpa_hva(vm, XEN_IRQ_GPA(0), 64))->lapic_count);
	vm_destroy(vm);
}

TEST_F(domain, refused_entry_keeps_the_interrupt_pending)
{
	struct keel_vm *vm = vm_create_xen("xen-refused-irq", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct keel_ucall uc;

	xen_setup_vcpu0(vm, guest_refused_entry_keeps_irq);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
	ASSERT_EQ(1, uc.args[0]);
	if (!force_entry_failures(1))
		SKIP(goto out, "cannot write %s", FAIL_ENTRIES);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_ENTRY_FAILURE);
	EXPECT_EQ(UCALL_DONE, vcpu_run_report(vcpu, &uc))
		TH_LOG("after the refused entry: %llu interrupts taken",
		       (ull)((struct xen_irq_state *)gpa_hva(vm, XEN_IRQ_GPA(0), 64))->lapic_count);
out:
	force_entry_failures(0);
	vm_destroy(vm);
}

TEST_F(domain, nmi_self_not_nested)
{
	struct keel_vm *vm = vm_create_xen("xen-nmi", 1, SZ_1M);

	xen_setup_vcpu0(vm, guest_nmi_self);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	vm_destroy(vm);
}

TEST_F(domain, x2apic_msrs_ipis_and_refusals)
{
	struct keel_vm *vm = vm_create_xen("xen-x2apic", 2, SZ_1M);
	struct xen_runner ap;

	xen_install_sigusr1();
	xen_setup_vcpu0(vm, guest_x2apic);
	xen_setup_ap(vm, guest_x2apic_ap, 0);
	xen_runner_start(&ap, vm->vcpus[1], true);
	ASSERT_TRUE(xen_wait_running(vm, 1, 2000));
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vm->vcpus[0], NULL));
	pthread_kill(ap.tid, SIGUSR1);
	xen_runner_join(&ap);
	EXPECT_EQ(EINTR, ap.err);
	EXPECT_FALSE(ap.done);
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

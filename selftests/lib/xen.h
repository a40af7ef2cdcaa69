/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lib/xen.h - what the Xen PVH domain tests (xen_*_test.c) share: Xen's ABI numbers and
 * layouts (from Xen's public headers), guest-side hypercall wrappers, the pvclock reading, the
 * local APIC's registers, interrupt handlers and an IDT, a trampoline that takes a vCPU which
 * INIT/SIPI started in real mode into the library's long mode, and host helpers (a vCPU run
 * on its own thread, the Dom0 ioctls). Include it after domain_test.h, in the one test file
 * of a binary: it defines guest code (top-level assembly).
 *
 * Guest memory the helpers use (the domain's RAM must cover the first 1 MiB):
 *   XEN_IDT_GPA(n)   vCPU n's IDT (n < 2)
 *   XEN_IRQ_GPA(n)   what vCPU n's handlers record (struct xen_irq_state)
 *   XEN_AP_GPA       the real-mode trampoline (SIPI vector XEN_AP_VECTOR)
 * The tests keep their own data at 0x10000 and up.
 *
 * Guest code takes interrupts: the Xen tests are built with -mno-red-zone.
 */
#ifndef KEEL_XEN_H
#define KEEL_XEN_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>

/* --- Xen's numbers (xen/include/public) ------------------------------------------------ */

#define HC_set_timer_op     15
#define HC_memory_op        12
#define HC_xen_version      17
#define HC_grant_table_op   20
#define HC_vcpu_op          24
#define HC_sched_op         29
#define HC_event_channel_op 32
#define HC_hvm_op           34

#define XEN_EPERM   1
#define XEN_ENOENT  2
#define XEN_ESRCH   3
#define XEN_EFAULT  14
#define XEN_EBUSY   16
#define XEN_EEXIST  17
#define XEN_EINVAL  22
#define XEN_ENOSYS  38
#define XEN_ETIME   62

#define DOMID_SELF 0x7ff0

#define XENMEM_increase_reservation 0
#define XENMEM_decrease_reservation 1
#define XENMEM_populate_physmap     6
#define XENMEM_add_to_physmap       7
#define XENMAPSPACE_shared_info     0
#define XENMAPSPACE_grant_table     1
#define XENMAPIDX_grant_table_status 0x80000000ULL

#define HVMOP_set_param 0
#define HVMOP_get_param 1
#define HVMOP_set_evtchn_upcall_vector 23
#define HVM_PARAM_CALLBACK_IRQ  0
#define HVM_PARAM_STORE_PFN     1
#define HVM_PARAM_STORE_EVTCHN  2
#define HVM_PARAM_CONSOLE_PFN   17
#define HVM_PARAM_CONSOLE_EVTCHN 18
#define HVM_CALLBACK_VECTOR(v) ((2ULL << 56) | (v))

#define VCPUOP_is_up                 3
#define VCPUOP_set_singleshot_timer  8
#define VCPUOP_stop_singleshot_timer 9
#define VCPUOP_register_vcpu_info    10
#define VCPU_SSHOTTMR_future         1

#define SCHEDOP_yield 0
#define SCHEDOP_block 1
#define SCHEDOP_poll  3

#define EVTCHNOP_bind_virq     1
#define EVTCHNOP_close         3
#define EVTCHNOP_send          4
#define EVTCHNOP_status        5
#define EVTCHNOP_alloc_unbound 6
#define EVTCHNOP_bind_ipi      7
#define EVTCHNOP_bind_vcpu     8
#define EVTCHNOP_unmask        9
#define EVTCHNOP_init_control  11
#define EVTCHNSTAT_closed      0
#define EVTCHNSTAT_unbound     1
#define EVTCHNSTAT_virq        4
#define EVTCHNSTAT_ipi         5
#define VIRQ_TIMER   0
#define VIRQ_CONSOLE 2
#define NR_VIRQS     24

#define GNTTABOP_query_size  6
#define GNTTABOP_set_version 8
#define GNTST_okay           0
#define GNTST_bad_domain     (-2)

/* 64-bit shared_info and vcpu_info (xen/include/public/xen.h, arch-x86/xen.h). */
#define XEN_VCPU_INFO_SIZE      64
#define VI_UPCALL_PENDING       0
#define VI_UPCALL_MASK          1
#define VI_PENDING_SEL          8
#define VI_TIME                 32
#define SI_EVTCHN_PENDING       2048
#define SI_EVTCHN_MASK          2560
#define SI_WC_VERSION           3072
#define SI_WC_SEC               3076
#define SI_WC_NSEC              3080
#define SI_WC_SEC_HI            3084

struct vcpu_time_info {
	uint32_t version;
	uint32_t pad0;
	uint64_t tsc_timestamp;
	uint64_t system_time;
	uint32_t tsc_to_system_mul;
	int8_t tsc_shift;
	uint8_t flags;
	uint8_t pad1[2];
};

struct xen_add_to_physmap {
	uint16_t domid;
	uint16_t size;
	uint32_t space;
	uint64_t idx;
	uint64_t gpfn;
};

struct xen_hvm_param {
	uint16_t domid;
	uint8_t pad[2];
	uint32_t index;
	uint64_t value;
};

struct vcpu_register_vcpu_info {
	uint64_t mfn;
	uint32_t offset;
	uint32_t rsvd;
};

struct vcpu_set_singleshot_timer {
	uint64_t timeout_abs_ns;
	uint32_t flags;
	uint32_t pad;
};

struct evtchn_status {
	uint16_t dom;
	uint16_t pad;
	uint32_t port;
	uint32_t status;
	uint32_t vcpu;
	union {
		struct { uint16_t dom; } unbound;
		struct { uint16_t dom; uint16_t pad; uint32_t port; } interdomain;
		uint32_t virq;
	} u;
};

struct sched_poll {
	uint64_t ports;
	uint32_t nr_ports;
	uint32_t pad;
	uint64_t timeout;
};

struct gnttab_query_size {
	uint16_t dom;
	uint16_t pad;
	uint32_t nr_frames;
	uint32_t max_nr_frames;
	int16_t status;
	uint16_t pad2;
};

struct xen_memory_reservation {
	uint64_t extent_start;
	uint64_t nr_extents;
	uint32_t extent_order;
	uint32_t mem_flags;
	uint16_t domid;
	uint8_t pad[6];
};

/* --- The local APIC (xAPIC MMIO) -------------------------------------------------------- */

#define APIC_BASE      0xfee00000ULL
#define APIC_ID        0x020
#define APIC_VERSION   0x030
#define APIC_EOI       0x0b0
#define APIC_SVR       0x0f0
#define APIC_ISR       0x100
#define APIC_IRR       0x200
#define APIC_ICR_LOW   0x300
#define APIC_ICR_HIGH  0x310
#define APIC_DM_FIXED  0x000
#define APIC_DM_NMI    0x400
#define APIC_DM_INIT   0x500
#define APIC_DM_SIPI   0x600
#define APIC_LEVEL_ASSERT (1 << 14)
#define APIC_SH_SELF   (1 << 18)
#define APIC_SH_ALL_BUT_SELF (3 << 18)

/* --- Guest memory the helpers use ------------------------------------------------------- */

#define XEN_IDT_GPA(n)  (0x3000ULL + (n) * 0x1000ULL)
#define XEN_IRQ_GPA(n)  (0x6000ULL + (n) * 0x100ULL)
#define XEN_AP_GPA      0x8000ULL
#define XEN_AP_VECTOR   (XEN_AP_GPA >> 12)

/* The vectors the IDT routes: the Xen callback (as Linux's HYPERVISOR_CALLBACK_VECTOR) and
 * the ones the tests send through the local APIC. */
#define XEN_CB_VECTOR     0xf3
#define XEN_LAPIC_VECTOR0 0x40
#define XEN_LAPIC_VECTORS 4

/* Written by vCPU n's handlers (literal offsets below: the assembly uses them). */
struct xen_irq_state {
	uint64_t cb_count;     /* 0x00: Xen callbacks taken */
	uint64_t cb_tsc;       /* 0x08: TSC at the last one */
	uint64_t cb_upcall;    /* 0x10: evtchn_upcall_pending as the last one found it (cleared) */
	uint64_t vcpu_info;    /* 0x18: the vcpu_info's address (the guest sets it; 0: none) */
	uint64_t lapic_count;  /* 0x20: local APIC interrupts taken (each EOIed) */
	uint64_t lapic_tsc;    /* 0x28: TSC at the last one */
	uint64_t cb_spurious;  /* 0x30: callbacks that found evtchn_upcall_pending clear */
	uint64_t spurious_rip; /* 0x38: the RIP the last of those interrupted */
	uint64_t nmi_count;    /* 0x40: NMIs taken */
	uint64_t nmi_nested;   /* 0x48: NMIs that came while the handler of another ran */
	uint64_t nmi_in;       /* 0x50: the NMI handler runs */
	uint64_t nmi_resend;   /* 0x58: the handler sends itself that many more NMIs (self IPI) */
	uint64_t x2apic;       /* 0x60: the guest set it: the APIC handler EOIs by MSR (x2APIC) */
	uint64_t gp_expect;    /* 0x68: the guest set it: the next #GP skips its 2-byte
				*       instruction (RDMSR/WRMSR), counts and clears this */
	uint64_t gp_count;     /* 0x70: #GPs skipped that way */
};

#define XEN_IRQ(n) ((volatile struct xen_irq_state *)XEN_IRQ_GPA(n))

/*
 * The handlers (vCPU 0 and 1: each its own state). The callback handler takes the upcall as
 * Linux's does (clears evtchn_upcall_pending, which otherwise injects the vector again); the
 * bitmaps are left to the test. Exceptions report through hypercall XEN_HC_EXCEPTION (not a
 * ucall: the test fails showing the exit, with RIP and the error code/RIP in the arguments).
 */
#define XEN_HC_EXCEPTION 0x4b20
/* The NMI handler's self NMI (APIC_SH_SELF | APIC_DM_NMI), as one literal for the assembly. */
#define APIC_SH_SELF_NMI 0x40400

asm(".pushsection .text\n"
    ".macro XEN_HANDLERS cpu\n"
    ".globl xen_cb_handler_\\cpu\n"
    "xen_cb_handler_\\cpu:\n"
    "	push %rax\n"
    "	push %rdx\n"
    "	rdtsc\n"
    "	shl $32, %rdx\n"
    "	or %rdx, %rax\n"
    "	mov %rax, 0x6008 + \\cpu * 0x100\n"
    "	mov 0x6018 + \\cpu * 0x100, %rdx\n"
    "	test %rdx, %rdx\n"
    "	jz 1f\n"
    "	xor %eax, %eax\n"
    "	xchg %al, (%rdx)\n"
    "	mov %rax, 0x6010 + \\cpu * 0x100\n"
    "	test %eax, %eax\n"
    "	jnz 1f\n"
    "	mov 16(%rsp), %rax\n"
    "	mov %rax, 0x6038 + \\cpu * 0x100\n"
    "	lock incq 0x6030 + \\cpu * 0x100\n"
    "1:	lock incq 0x6000 + \\cpu * 0x100\n"
    "	pop %rdx\n"
    "	pop %rax\n"
    "	iretq\n"
    ".globl xen_lapic_handler_\\cpu\n"
    "xen_lapic_handler_\\cpu:\n"
    "	push %rax\n"
    "	push %rdx\n"
    "	rdtsc\n"
    "	shl $32, %rdx\n"
    "	or %rdx, %rax\n"
    "	mov %rax, 0x6028 + \\cpu * 0x100\n"
    "	lock incq 0x6020 + \\cpu * 0x100\n"
    "	cmpq $0, 0x6060 + \\cpu * 0x100\n"
    "	jne 3f\n"
    "	mov $0xfee000b0, %eax\n"
    "	movl $0, (%rax)\n"
    "	jmp 4f\n"
    "3:	push %rcx\n"
    "	mov $0x80b, %ecx\n"
    "	xor %eax, %eax\n"
    "	xor %edx, %edx\n"
    "	wrmsr\n"
    "	pop %rcx\n"
    "4:	pop %rdx\n"
    "	pop %rax\n"
    "	iretq\n"
    ".globl xen_gp_handler_\\cpu\n"
    "xen_gp_handler_\\cpu:\n"
    "	cmpq $0, 0x6068 + \\cpu * 0x100\n"
    "	je xen_exc_handler\n"
    "	movq $0, 0x6068 + \\cpu * 0x100\n"
    "	lock incq 0x6070 + \\cpu * 0x100\n"
    "	addq $2, 8(%rsp)\n"
    "	add $8, %rsp\n"
    "	iretq\n"
    ".globl xen_nmi_handler_\\cpu\n"
    "xen_nmi_handler_\\cpu:\n"
    "	push %rax\n"
    "	cmpq $0, 0x6050 + \\cpu * 0x100\n"
    "	je 1f\n"
    "	lock incq 0x6048 + \\cpu * 0x100\n"
    "1:	movq $1, 0x6050 + \\cpu * 0x100\n"
    "	lock incq 0x6040 + \\cpu * 0x100\n"
    "	cmpq $0, 0x6058 + \\cpu * 0x100\n"
    "	je 2f\n"
    "	decq 0x6058 + \\cpu * 0x100\n"
    "	mov $0xfee00300, %eax\n"
    "	movl $" KEEL_STR(APIC_SH_SELF_NMI) ", (%rax)\n"
    "2:	movq $0, 0x6050 + \\cpu * 0x100\n"
    "	pop %rax\n"
    "	iretq\n"
    ".endm\n"
    "XEN_HANDLERS 0\n"
    "XEN_HANDLERS 1\n"
    ".globl xen_exc_handler\n"
    "xen_exc_handler:\n"
    "	mov $" KEEL_STR(XEN_HC_EXCEPTION) ", %eax\n"
    "	mov (%rsp), %rdi\n"
    "	mov 8(%rsp), %rsi\n"
    "	.byte 0x0f, 0x01, 0xc1\n"
    "	jmp xen_exc_handler\n"
    ".popsection\n");

extern const char xen_cb_handler_0[], xen_cb_handler_1[], xen_lapic_handler_0[],
	xen_lapic_handler_1[], xen_nmi_handler_0[], xen_nmi_handler_1[], xen_gp_handler_0[],
	xen_gp_handler_1[], xen_exc_handler[];

/*
 * The AP trampoline, copied to XEN_AP_GPA: real mode (CS = XEN_AP_VECTOR << 8, as SIPI left
 * it) reports its CS with GUEST_SYNC, then goes through 32-bit protected mode into long mode
 * with the library's page tables, loads the IDT and calls params.entry(params.arg) on the
 * vCPU's own stack (a return reports UCALL_DONE). Its GDT: 0x08 64-bit code, 0x10 data, 0x18
 * 32-bit code.
 */
asm(".pushsection .rodata\n"
    ".globl xen_ap_start, xen_ap_params, xen_ap_end\n"
    ".code16\n"
    "xen_ap_start:\n"
    "	cli\n"
    "	xor %ax, %ax\n"
    "	mov %ax, %ds\n"
    "	mov $" KEEL_STR(KEEL_HC_SYNC) ", %eax\n"
    "	xor %ebx, %ebx\n"
    "	mov %cs, %bx\n"
    "	.byte 0x0f, 0x01, 0xc1\n"
    "	lgdtl " KEEL_STR(XEN_AP_GPA) " + xen_ap_gdtr - xen_ap_start\n"
    "	mov %cr0, %eax\n"
    "	and $0x9fffffff, %eax\n"
    "	or $0x31, %eax\n"
    "	mov %eax, %cr0\n"
    "	ljmpl $0x18, $" KEEL_STR(XEN_AP_GPA) " + xen_ap_32 - xen_ap_start\n"
    ".code32\n"
    "xen_ap_32:\n"
    "	mov $0x10, %eax\n"
    "	mov %eax, %ds\n"
    "	mov %eax, %es\n"
    "	mov %eax, %ss\n"
    "	mov %cr4, %eax\n"
    "	or $0x620, %eax\n"
    "	mov %eax, %cr4\n"
    "	mov " KEEL_STR(XEN_AP_GPA) " + xen_ap_params - xen_ap_start, %eax\n"
    "	mov %eax, %cr3\n"
    "	mov $0xc0000080, %ecx\n"
    "	rdmsr\n"
    "	or $0x100, %eax\n"
    "	wrmsr\n"
    "	mov %cr0, %eax\n"
    "	or $0x80000000, %eax\n"
    "	mov %eax, %cr0\n"
    "	ljmp $0x08, $" KEEL_STR(XEN_AP_GPA) " + xen_ap_64 - xen_ap_start\n"
    ".code64\n"
    "xen_ap_64:\n"
    "	xor %eax, %eax\n"
    "	mov %eax, %fs\n"
    "	mov %eax, %gs\n"
    "	lidt " KEEL_STR(XEN_AP_GPA) " + xen_ap_params + 32 - xen_ap_start\n"
    "	mov " KEEL_STR(XEN_AP_GPA) " + xen_ap_params + 8 - xen_ap_start, %rsp\n"
    "	mov " KEEL_STR(XEN_AP_GPA) " + xen_ap_params + 24 - xen_ap_start, %rdi\n"
    "	jmp *" KEEL_STR(XEN_AP_GPA) " + xen_ap_params + 16 - xen_ap_start\n"
    ".balign 16\n"
    "xen_ap_gdt:\n"
    "	.quad 0, 0x00af9b000000ffff, 0x00cf93000000ffff, 0x00cf9b000000ffff\n"
    "xen_ap_gdtr:\n"
    "	.word 31\n"
    "	.long " KEEL_STR(XEN_AP_GPA) " + xen_ap_gdt - xen_ap_start\n"
    ".balign 16\n"
    "xen_ap_params:\n"
    "	.fill 48, 1, 0\n"
    "xen_ap_end:\n"
    ".popsection\n");

extern const uint8_t xen_ap_start[], xen_ap_params[], xen_ap_end[];

struct xen_ap_params {
	uint64_t cr3;    /* 0 */
	uint64_t stack;  /* 8 */
	uint64_t entry;  /* 16 */
	uint64_t arg;    /* 24 */
	uint16_t idt_limit; /* 32: lidt's operand */
	uint64_t idt_base;
} __attribute__((packed));

/* --- Guest side ------------------------------------------------------------------------- */

GUEST_INLINE int64_t xen_hc(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2)
{
	return (int64_t)guest_vmcall(nr, a0, a1, a2, 0, 0);
}

GUEST_INLINE uint64_t guest_rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi) :: "memory");
	return ((uint64_t)hi << 32) | lo;
}

/* System time (ns) at `tsc` by a pvclock record (Xen's vcpu_time_info arithmetic). Also used
 * by the host on TSC values the guest recorded. */
static inline __attribute__((always_inline)) __guest_no_stack_protector uint64_t
pvclock_at(uint64_t tsc_timestamp, uint64_t system_time, uint32_t mul, int8_t shift, uint64_t tsc)
{
	uint64_t delta = tsc - tsc_timestamp;

	if (shift < 0)
		delta >>= -shift;
	else
		delta <<= shift;
	return system_time + (uint64_t)(((unsigned __int128)delta * mul) >> 32);
}

/* Reads system time through the vcpu_info at `vi` (retrying while the record changes). */
GUEST_INLINE uint64_t pvclock_read(uint64_t vi)
{
	volatile struct vcpu_time_info *t = (volatile struct vcpu_time_info *)(vi + VI_TIME);
	uint32_t version;
	uint64_t ns;

	do {
		version = t->version;
		__asm__ volatile("" ::: "memory");
		ns = pvclock_at(t->tsc_timestamp, t->system_time, t->tsc_to_system_mul,
				t->tsc_shift, guest_rdtsc());
		__asm__ volatile("" ::: "memory");
	} while ((version & 1) || version != t->version);
	return ns;
}

/* System time at a TSC the handlers recorded, by the vcpu_info's record. */
GUEST_INLINE uint64_t pvclock_tsc(uint64_t vi, uint64_t tsc)
{
	volatile struct vcpu_time_info *t = (volatile struct vcpu_time_info *)(vi + VI_TIME);

	return pvclock_at(t->tsc_timestamp, t->system_time, t->tsc_to_system_mul, t->tsc_shift,
			  tsc);
}

GUEST_INLINE int64_t xen_add_to_physmap(uint32_t space, uint64_t idx, uint64_t gpfn,
					uint64_t scratch)
{
	volatile struct xen_add_to_physmap *a = (volatile struct xen_add_to_physmap *)scratch;

	a->domid = DOMID_SELF;
	a->size = 0;
	a->space = space;
	a->idx = idx;
	a->gpfn = gpfn;
	return xen_hc(HC_memory_op, XENMEM_add_to_physmap, scratch, 0);
}

GUEST_INLINE int64_t xen_hvm_param(uint32_t op, uint32_t index, uint64_t *value,
				   uint64_t scratch)
{
	volatile struct xen_hvm_param *p = (volatile struct xen_hvm_param *)scratch;
	int64_t r;

	p->domid = DOMID_SELF;
	p->index = index;
	p->value = *value;
	r = xen_hc(HC_hvm_op, op, scratch, 0);
	*value = p->value;
	return r;
}

/* event_channel_op on a struct of up to 6 words at `scratch`: words[] in, out. */
GUEST_INLINE int64_t xen_evtchn_op(uint32_t cmd, uint64_t scratch)
{
	return xen_hc(HC_event_channel_op, cmd, scratch, 0);
}

/* Ports by the simple structs: {u32 a; u32 port} (bind_ipi, with a = vcpu), {u32 port}. */
GUEST_INLINE int64_t xen_bind_ipi(uint32_t vcpu, uint32_t *port, uint64_t scratch)
{
	volatile uint32_t *w = (volatile uint32_t *)scratch;
	int64_t r;

	w[0] = vcpu;
	w[1] = 0;
	r = xen_evtchn_op(EVTCHNOP_bind_ipi, scratch);
	*port = w[1];
	return r;
}

GUEST_INLINE int64_t xen_bind_virq(uint32_t virq, uint32_t vcpu, uint32_t *port,
				   uint64_t scratch)
{
	volatile uint32_t *w = (volatile uint32_t *)scratch;
	int64_t r;

	w[0] = virq;
	w[1] = vcpu;
	w[2] = 0;
	r = xen_evtchn_op(EVTCHNOP_bind_virq, scratch);
	*port = w[2];
	return r;
}

GUEST_INLINE int64_t xen_port_op(uint32_t cmd, uint32_t port, uint64_t scratch)
{
	*(volatile uint32_t *)scratch = port;
	return xen_evtchn_op(cmd, scratch);
}

GUEST_INLINE int64_t xen_sched_op(uint32_t cmd, uint64_t arg)
{
	return xen_hc(HC_sched_op, cmd, arg, 0);
}

GUEST_INLINE int64_t xen_singleshot(uint32_t vcpu, uint64_t deadline, uint32_t flags,
				    uint64_t scratch)
{
	volatile struct vcpu_set_singleshot_timer *t =
		(volatile struct vcpu_set_singleshot_timer *)scratch;

	t->timeout_abs_ns = deadline;
	t->flags = flags;
	t->pad = 0;
	return xen_hc(HC_vcpu_op, VCPUOP_set_singleshot_timer, vcpu, scratch);
}

GUEST_INLINE bool test_bit64(uint64_t base, uint32_t bit)
{
	return (((volatile uint64_t *)base)[bit / 64] >> (bit % 64)) & 1;
}

GUEST_INLINE void set_bit64(uint64_t base, uint32_t bit)
{
	__atomic_fetch_or(&((uint64_t *)base)[bit / 64], 1ULL << (bit % 64), __ATOMIC_SEQ_CST);
}

GUEST_INLINE void clear_bit64(uint64_t base, uint32_t bit)
{
	__atomic_fetch_and(&((uint64_t *)base)[bit / 64], ~(1ULL << (bit % 64)), __ATOMIC_SEQ_CST);
}

/* What an upcall handler does after the callback: takes the selector word and the port's
 * pending bit. */
GUEST_INLINE void xen_ack_port(uint64_t shinfo, uint64_t vi, uint32_t port)
{
	__atomic_exchange_n((uint64_t *)(vi + VI_PENDING_SEL), 0, __ATOMIC_SEQ_CST);
	clear_bit64(shinfo + SI_EVTCHN_PENDING, port);
}

/* Interrupts on for a moment: a pending one is taken (after the STI shadow). */
GUEST_INLINE void irq_window(void)
{
	__asm__ volatile("sti; nop; nop; cli" ::: "memory");
}

GUEST_INLINE uint32_t apic_read(uint32_t reg)
{
	return *(volatile uint32_t *)(APIC_BASE + reg);
}

GUEST_INLINE void apic_write(uint32_t reg, uint32_t value)
{
	*(volatile uint32_t *)(APIC_BASE + reg) = value;
}

/* Bit `vector` of the 256-bit APIC register array at `base` (APIC_IRR, APIC_ISR). */
GUEST_INLINE bool apic_bit(uint32_t base, uint32_t vector)
{
	return (apic_read(base + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

GUEST_INLINE void apic_icr(uint32_t dest, uint32_t low)
{
	apic_write(APIC_ICR_HIGH, dest << 24);
	apic_write(APIC_ICR_LOW, low);
}

/* INIT then SIPI to the APIC id `dest`, which starts it at XEN_AP_GPA. */
GUEST_INLINE void apic_start_ap(uint32_t dest)
{
	apic_icr(dest, APIC_DM_INIT | APIC_LEVEL_ASSERT);
	apic_icr(dest, APIC_DM_SIPI | XEN_AP_VECTOR);
}

/* Spins until *p == v or `spins` rounds passed; whether it got there. */
GUEST_INLINE bool spin_until_eq(volatile uint64_t *p, uint64_t v, uint64_t spins)
{
	while (*p != v) {
		if (!spins--)
			return false;
		guest_pause();
	}
	return true;
}

/* --- Host side -------------------------------------------------------------------------- */

/* Points `vector` of the IDT at `idt` to `handler` (a 64-bit interrupt gate). */
static inline void xen_idt_gate(uint64_t *idt, int vector, const void *handler)
{
	uint64_t a = (uint64_t)(uintptr_t)handler;

	idt[2 * vector] = (a & 0xffff) | ((uint64_t)KEEL_SEL_CODE << 16) | (0x8eULL << 40) |
			  (((a >> 16) & 0xffff) << 48);
	idt[2 * vector + 1] = a >> 32;
}

/* vCPU n's IDT at XEN_IDT_GPA(n): the callback, the APIC vectors, NMIs, exceptions 0-31. */
static inline void xen_write_idt(struct keel_vm *vm, uint32_t n)
{
	uint64_t *idt = gpa_hva(vm, XEN_IDT_GPA(n), 4096);
	const char *cb = n ? xen_cb_handler_1 : xen_cb_handler_0;
	const char *lapic = n ? xen_lapic_handler_1 : xen_lapic_handler_0;
	const char *nmi = n ? xen_nmi_handler_1 : xen_nmi_handler_0;
	const char *gp = n ? xen_gp_handler_1 : xen_gp_handler_0;

	memset(idt, 0, 4096);
	for (int v = 0; v < 256; v++) {
		const char *h = v == 2 ? nmi :
				v == 13 ? gp :
				v < 32 ? xen_exc_handler :
				v == XEN_CB_VECTOR ? cb :
				(v >= XEN_LAPIC_VECTOR0 && v < XEN_LAPIC_VECTOR0 + XEN_LAPIC_VECTORS) ?
				lapic : NULL;

		if (h)
			xen_idt_gate(idt, v, h);
	}
	memset(gpa_hva(vm, XEN_IRQ_GPA(n), sizeof(struct xen_irq_state)), 0,
	       sizeof(struct xen_irq_state));
}

/* vCPU 0 in long mode at `entry` with its IDT loaded. */
static inline void xen_setup_vcpu0(struct keel_vm *vm, void *entry)
{
	struct keel_sregs s;

	vcpu_setup_long64(vm, vm->vcpus[0], GUEST_FN(entry), 0);
	xen_write_idt(vm, 0);
	vcpu_get_sregs(vm->vcpus[0], &s);
	s.idt.base = XEN_IDT_GPA(0);
	s.idt.limit = 4095;
	vcpu_set_sregs(vm->vcpus[0], &s);
}

/* The trampoline for vCPU 1 (after xen_setup_vcpu0): a SIPI to it runs entry(arg) in long
 * mode. */
static inline void xen_setup_ap(struct keel_vm *vm, void *entry, uint64_t arg)
{
	struct keel_long64_boot boot;
	struct xen_ap_params p = { 0 };

	vm_long64_boot(vm, 1, &boot);
	xen_write_idt(vm, 1);
	vm_write(vm, XEN_AP_GPA, xen_ap_start, xen_ap_end - xen_ap_start);
	p.cr3 = boot.cr3;
	p.stack = boot.stack;
	p.entry = GUEST_FN(entry);
	p.arg = arg;
	p.idt_limit = 4095;
	p.idt_base = XEN_IDT_GPA(1);
	vm_write(vm, XEN_AP_GPA + (xen_ap_params - xen_ap_start), &p, sizeof(p));
}

static inline uint64_t now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* Whether vCPU `id` is inside KEEL_VCPU_RUN, waiting up to `ms`. */
static inline bool xen_wait_running(struct keel_vm *vm, uint32_t id, int ms)
{
	struct keel_domain_info info;

	for (int i = 0; i <= ms; i++) {
		vm_info(vm, &info);
		if (info.running_mask & (1ULL << id))
			return true;
		usleep(1000);
	}
	return false;
}

/* SIGUSR1 without SA_RESTART: a run it interrupts returns EINTR. */
static void xen_sigusr1(int sig)
{
	(void)sig;
}

static inline void xen_install_sigusr1(void)
{
	struct sigaction sa = { .sa_handler = xen_sigusr1 };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
}

/*
 * A vCPU run on its own thread until it reports UCALL_DONE or its run ends otherwise (an exit
 * that is not a ucall, e.g. KEEL_EXIT_SHUTDOWN, or an error such as EINTR). A failed
 * GUEST_ASSERT aborts the test. With `ap` the first report must be the trampoline's real-mode
 * one (its CS), recorded apart.
 */
struct xen_runner {
	struct keel_vcpu *vcpu;
	bool ap;
	pthread_t tid;
	uint64_t real_cs;        /* the trampoline's report: CS in real mode */
	uint32_t real_longmode;  /* exit.hypercall.longmode of that report */
	bool real_seen;
	uint64_t syncs[16];      /* the GUEST_SYNC values after it */
	unsigned int nr_syncs;
	bool done;               /* UCALL_DONE */
	uint32_t last_reason;    /* the exit that ended it otherwise */
	int err;                 /* errno of a failed KEEL_VCPU_RUN */
	uint64_t wall_ns, cpu_ns; /* the thread's wall and CPU time */
};

static void *xen_runner_thread(void *arg)
{
	struct xen_runner *r = arg;
	struct keel_ucall uc;
	uint64_t w0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_THREAD_CPUTIME_ID);

	for (;;) {
		if (__vcpu_run(r->vcpu)) {
			r->err = errno;
			r->last_reason = r->vcpu->run.exit.reason;
			break;
		}
		switch (vcpu_get_ucall(r->vcpu, &uc)) {
		case UCALL_ASSERT:
			fflush(stdout);
			fprintf(stderr, "# guest assertion failed on vCPU %u of '%s':\n# %s:%u: %s\n",
				r->vcpu->id, r->vcpu->vm->name, uc.file, uc.line, uc.expr);
			if (uc.has_values)
				fprintf(stderr, "#   left %#llx (%lld), right %#llx (%lld)\n",
					(ull)uc.values[0], (long long)uc.values[0],
					(ull)uc.values[1], (long long)uc.values[1]);
			abort();
		case UCALL_SYNC:
			if (r->ap && !r->real_seen) {
				r->real_seen = true;
				r->real_cs = uc.args[0];
				r->real_longmode = r->vcpu->run.exit.hypercall.longmode;
			} else if (r->nr_syncs < 16) {
				r->syncs[r->nr_syncs++] = uc.args[0];
			}
			continue;
		case UCALL_DONE:
			r->done = true;
			break;
		default:
			r->last_reason = r->vcpu->run.exit.reason;
			if (r->last_reason != KEEL_EXIT_SHUTDOWN)
				fprintf(stderr, "# vCPU %u: %s\n", r->vcpu->id,
					keel_exit_str(&r->vcpu->run.exit));
			break;
		}
		break;
	}
	r->wall_ns = now_ns(CLOCK_MONOTONIC) - w0;
	r->cpu_ns = now_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
	return NULL;
}

static inline void xen_runner_start(struct xen_runner *r, struct keel_vcpu *vcpu, bool ap)
{
	memset(r, 0, sizeof(*r));
	r->vcpu = vcpu;
	r->ap = ap;
	KEEL_ASSERT(!pthread_create(&r->tid, NULL, xen_runner_thread, r), "pthread_create");
}

static inline void xen_runner_join(struct xen_runner *r)
{
	pthread_join(r->tid, NULL);
}

/* Dom0's ioctls. */
static inline int xen_set_param(struct keel_vm *vm, uint32_t index, uint64_t value)
{
	struct keel_xen_param p = { .index = index, .value = value };

	return ioctl(vm->fd, KEEL_DOMAIN_SET_PARAM, &p);
}

static inline int xen_evtchn_bind(struct keel_vm *vm, uint32_t flags, uint32_t port, int efd,
				  uint32_t *out)
{
	struct keel_evtchn_bind b = { .flags = flags, .port = port, .eventfd = efd };
	int r = ioctl(vm->fd, KEEL_DOMAIN_EVTCHN_BIND, &b);

	if (out)
		*out = b.port;
	return r;
}

static inline int xen_evtchn_notify(struct keel_vm *vm, uint32_t port)
{
	struct keel_evtchn_port p = { .port = port };

	return ioctl(vm->fd, KEEL_DOMAIN_EVTCHN_NOTIFY, &p);
}

static inline int xen_evtchn_unbind(struct keel_vm *vm, uint32_t port)
{
	struct keel_evtchn_port p = { .port = port };

	return ioctl(vm->fd, KEEL_DOMAIN_EVTCHN_UNBIND, &p);
}

/* The eventfd's counter (read, so reset), 0 when it is not readable. */
static inline uint64_t eventfd_take(int efd)
{
	uint64_t v = 0;

	if (read(efd, &v, sizeof(v)) != sizeof(v))
		return 0;
	return v;
}

#endif /* KEEL_XEN_H */

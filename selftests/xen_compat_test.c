// SPDX-License-Identifier: GPL-2.0
/*
 * xen_compat_test: a 32-bit PVH guest (protected mode, paging off) speaks Xen's compat ABI:
 * its hypercalls pass the i386 layouts (4-byte handles, xen_ulong_t and xen_pfn_t, uint64_t
 * aligned to 4), and the domain's shared_info, vcpu_info and runstate area take the 32-bit
 * layout, latched from the mode of the vCPU that installs the hypercall page or sets the
 * callback (Xen's hvm_latch_shinfo_size). The guest is a table-driven hypercall runner in
 * 32-bit assembly: it installs the hypercall page, calls each row through it (number in EAX,
 * arguments in EBX, ECX, EDX, ESI, EDI) and stores EAX, then halts with interrupts off (the
 * domain powers off). The host fills the table and the argument structures, then checks
 * every result and what Keel wrote in guest memory: the wallclock and pvclock at the 32-bit
 * offsets, an event's pending bit and 32-bit selector word, a runstate area of 44 bytes, a
 * grant frame list of 4-byte gfns, a compat memory reservation, a registered vcpu_info that
 * keeps the 32-bit selector word, the 1024-port limit of 32-bit event channels, and a poll
 * whose timeout lies at the compat offset. Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "kselftest_harness.h"
#include "domain_test.h"
#include "xen.h"

#define HC32_CODE    0x1000ULL
#define HC32_PAGE    0x2000ULL
#define HC32_TABLE   0x3000ULL
#define HC32_ARGS    0x4000ULL
#define HC32_STACK   0x9000ULL
#define HC32_SHINFO  0x10000ULL
#define HC32_GRANT   0x11000ULL
#define HC32_VINFO   0x12000ULL
#define HC32_RUNST   0x13000ULL
#define HC32_BALLOON 0x20000ULL

/* The 32-bit shared_info and vcpu_info (Xen's compat layout: arch-x86/xen-x86_32.h). */
#define SI32_EVTCHN_PENDING 2048  /* after 32 vcpu_infos of 64 bytes */
#define SI32_WC_VERSION     (2048 + 2 * 128)
#define SI32_WC_SEC         (SI32_WC_VERSION + 4)
#define VI32_PENDING_SEL    4     /* 8 at 64 bits */
#define VI32_TIME           32    /* as at 64 bits (x86_32's arch_vcpu_info is 24 bytes) */
#define RUNSTATE32_SIZE     44

#define XENVER_get_features       6
#define XENFEAT_hvm_callback_vector 8
#define HVM_PARAM_CALLBACK_IRQ   0
#define VCPUOP_register_runstate_memory_area 5
#define EVTCHNOP_status_          5
#define GNTTABOP_setup_table     2
#define SSHOTTMR_future          1

/* The runner (32-bit code, copied to HC32_CODE): rows of 7 dwords (number, five arguments,
 * result) from HC32_TABLE until a number of ~0. */
asm(".pushsection .rodata\n"
    ".globl blob_hc32_start, blob_hc32_end\n"
    ".code32\n"
    "blob_hc32_start:\n"
    "	mov $0x40000000, %ecx\n"
    "	mov $" KEEL_STR(HC32_PAGE) ", %eax\n"
    "	xor %edx, %edx\n"
    "	wrmsr\n"
    "	mov $" KEEL_STR(HC32_TABLE) ", %ebp\n"
    "1:	mov (%ebp), %eax\n"
    "	cmp $0xffffffff, %eax\n"
    "	je 2f\n"
    "	mov 4(%ebp), %ebx\n"
    "	mov 8(%ebp), %ecx\n"
    "	mov 12(%ebp), %edx\n"
    "	mov 16(%ebp), %esi\n"
    "	mov 20(%ebp), %edi\n"
    "	shl $5, %eax\n"
    "	add $" KEEL_STR(HC32_PAGE) ", %eax\n"
    "	call *%eax\n"
    "	mov %eax, 24(%ebp)\n"
    "	add $28, %ebp\n"
    "	jmp 1b\n"
    "2:	cli\n"
    "	hlt\n"
    "	jmp 2b\n"
    "blob_hc32_end:\n"
    ".code64\n"
    ".popsection\n");
BLOB(hc32);

struct hc32_row {
	uint32_t nr, a[5];
	int32_t ret;
};

struct hc32 {
	struct keel_vm *vm;
	unsigned int rows;
	uint64_t args;        /* the next free byte at HC32_ARGS */
};

/* Copies `len` bytes of an argument structure into guest memory; returns its address. */
static uint32_t hc32_arg(struct hc32 *h, const void *p, size_t len)
{
	uint64_t at = h->args;

	vm_write(h->vm, at, p, len);
	h->args = (at + len + 15) & ~15ULL;
	return (uint32_t)at;
}

/* Adds a row; returns its index. */
static unsigned int hc32_call(struct hc32 *h, uint32_t nr, uint32_t a0, uint32_t a1, uint32_t a2)
{
	struct hc32_row r = { .nr = nr, .a = { a0, a1, a2 }, .ret = 0x5a5a5a5a };

	vm_write(h->vm, HC32_TABLE + h->rows * sizeof(r), &r, sizeof(r));
	return h->rows++;
}

static int32_t hc32_ret(struct hc32 *h, unsigned int row)
{
	struct hc32_row r;

	vm_read(h->vm, HC32_TABLE + row * sizeof(r), &r, sizeof(r));
	return r.ret;
}

static void le16(uint8_t *b, uint16_t v) { memcpy(b, &v, 2); }
static void le32(uint8_t *b, uint32_t v) { memcpy(b, &v, 4); }
static void le64(uint8_t *b, uint64_t v) { memcpy(b, &v, 8); }

static uint32_t rd32(struct keel_vm *vm, uint64_t gpa)
{
	uint32_t v;

	vm_read(vm, gpa, &v, 4);
	return v;
}

static uint64_t rd64(struct keel_vm *vm, uint64_t gpa)
{
	uint64_t v;

	vm_read(vm, gpa, &v, 8);
	return v;
}

TEST_F(domain, compat_abi_of_a_32bit_guest)
{
	struct keel_vm *vm = vm_create_xen("xen-compat", 1, SZ_1M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	struct hc32 h = { .vm = vm, .args = HC32_ARGS };
	struct keel_domain_info before, after;
	struct keel_regs regs;
	uint8_t b[64];
	uint32_t feat, resv, gfns, frames, vinfo_bad, vinfo, runst, ipi, setup;
	unsigned int r_feat, r_shinfo, r_cb, r_ipi, r_send, r_runst, r_poll, r_timer, r_gframe,
		r_setup, r_dec, r_pop, r_status, r_vinfo_bad, r_vinfo;
	uint64_t pattern = 0xaaaaaaaaaaaaaaaaULL;
	uint32_t end = ~0u;

	LOAD_BLOB(vm, HC32_CODE, hc32);
	vcpu_setup_prot32(vcpu, HC32_CODE);
	vcpu_get_regs(vcpu, &regs);
	regs.rsp = HC32_STACK;
	vcpu_set_regs(vcpu, &regs);

	/* xen_version(get_features, {submap_idx 0, submap}): same layout at both widths. */
	memset(b, 0, 8);
	feat = hc32_arg(&h, b, 8);
	r_feat = hc32_call(&h, HC_xen_version, XENVER_get_features, feat, 0);

	/* add_to_physmap, compat: domid, size, space, idx (4), gpfn (4): 16 bytes. */
	memset(b, 0, 16);
	le16(b, DOMID_SELF);
	le32(b + 4, XENMAPSPACE_shared_info);
	le32(b + 8, 0);
	le32(b + 12, HC32_SHINFO >> 12);
	r_shinfo = hc32_call(&h, HC_memory_op, XENMEM_add_to_physmap, hc32_arg(&h, b, 16), 0);

	/* The callback vector (0xf3): xen_hvm_param is the same at both widths. */
	memset(b, 0, 16);
	le16(b, DOMID_SELF);
	le32(b + 4, HVM_PARAM_CALLBACK_IRQ);
	le64(b + 8, (2ULL << 56) | XEN_CB_VECTOR);
	r_cb = hc32_call(&h, HC_hvm_op, HVMOP_set_param, hc32_arg(&h, b, 16), 0);

	/* An IPI port of vCPU 0, then a send on it (interrupts stay off: nothing is taken). */
	memset(b, 0, 8);
	ipi = hc32_arg(&h, b, 8);
	r_ipi = hc32_call(&h, HC_event_channel_op, EVTCHNOP_bind_ipi, ipi, 0);
	/* The port lands at ipi + 4; EVTCHNOP_send reads it there. */
	r_send = hc32_call(&h, HC_event_channel_op, EVTCHNOP_send, ipi + 4, 0);

	/* The runstate area (its handle is 8 bytes at both widths), filled with a pattern. */
	for (int i = 0; i < 8; i++)
		vm_write(vm, HC32_RUNST + 8 * i, &pattern, 8);
	memset(b, 0, 8);
	le32(b, HC32_RUNST);
	runst = hc32_arg(&h, b, 8);
	r_runst = hc32_call(&h, HC_vcpu_op, VCPUOP_register_runstate_memory_area, 0, runst);

	/* A poll, compat: ports handle (4), nr_ports (4), timeout (8, at offset 8), on port 1
	 * with a timeout in the past: 0 at once (read as 64-bit, the handle would take in
	 * nr_ports and fault). It blocks and unblocks the vCPU: the runstate area is written. */
	le32(b, 1);
	uint32_t ports = hc32_arg(&h, b, 4);
	memset(b, 0, 16);
	le32(b, ports);
	le32(b + 4, 1);
	le64(b + 8, 1);
	r_poll = hc32_call(&h, HC_sched_op, SCHEDOP_poll, hc32_arg(&h, b, 16), 0);

	/* A single-shot timer in the past with SSHOTTMR_future: 12 bytes at 32 bits. */
	memset(b, 0, 12);
	le64(b, 1);
	le32(b + 8, SSHOTTMR_future);
	r_timer = hc32_call(&h, HC_vcpu_op, VCPUOP_set_singleshot_timer, 0, hc32_arg(&h, b, 12));

	/* A grant frame, then setup_table, compat: dom, nr_frames, status (at 8), frame_list
	 * handle (4, at 12); the list gets one 4-byte gfn. */
	memset(b, 0, 16);
	le16(b, DOMID_SELF);
	le32(b + 4, XENMAPSPACE_grant_table);
	le32(b + 8, 0);
	le32(b + 12, HC32_GRANT >> 12);
	r_gframe = hc32_call(&h, HC_memory_op, XENMEM_add_to_physmap, hc32_arg(&h, b, 16), 0);
	frames = hc32_arg(&h, &pattern, 8);
	memset(b, 0, 16);
	le16(b, DOMID_SELF);
	le32(b + 4, 1);
	le16(b + 8, 0x5a5a);
	le32(b + 12, frames);
	setup = hc32_arg(&h, b, 16);
	r_setup = hc32_call(&h, HC_grant_table_op, GNTTABOP_setup_table, setup, 1);

	/* decrease_reservation then populate_physmap of two pages, compat: extent_start handle
	 * (4), nr_extents (4), extent_order, mem_flags, domid: 20 bytes; 4-byte gfns. */
	le32(b, HC32_BALLOON >> 12);
	le32(b + 4, (HC32_BALLOON >> 12) + 1);
	gfns = hc32_arg(&h, b, 8);
	memset(b, 0, 20);
	le32(b, gfns);
	le32(b + 4, 2);
	le16(b + 16, DOMID_SELF);
	resv = hc32_arg(&h, b, 20);
	r_dec = hc32_call(&h, HC_memory_op, XENMEM_decrease_reservation, resv, 0);
	r_pop = hc32_call(&h, HC_memory_op, XENMEM_populate_physmap, resv, 0);

	/* Port 1500 is past the 1024 ports of 32-bit event channels. */
	memset(b, 0, 24);
	le16(b, DOMID_SELF);
	le32(b + 4, 1500);
	r_status = hc32_call(&h, HC_event_channel_op, EVTCHNOP_status_, hc32_arg(&h, b, 24), 0);

	/* register_vcpu_info {mfn (8), offset, rsvd}, the same at both widths: a vcpu_info is
	 * 64 bytes at both, so offset 4040 does not fit and 4032 does. */
	memset(b, 0, 16);
	le64(b, HC32_VINFO >> 12);
	le32(b + 8, 4040);
	vinfo_bad = hc32_arg(&h, b, 16);
	r_vinfo_bad = hc32_call(&h, HC_vcpu_op, VCPUOP_register_vcpu_info, 0, vinfo_bad);
	le32(b + 8, 4032);
	vinfo = hc32_arg(&h, b, 16);
	r_vinfo = hc32_call(&h, HC_vcpu_op, VCPUOP_register_vcpu_info, 0, vinfo);

	vm_write(vm, HC32_TABLE + h.rows * sizeof(struct hc32_row), &end, 4);
	vm_info(vm, &before);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_SHUTDOWN);
	EXPECT_EQ(KEEL_SHUTDOWN_XEN, vcpu->run.exit.shutdown.kind);
	vm_info(vm, &after);

	EXPECT_EQ(0, hc32_ret(&h, r_feat));
	EXPECT_TRUE(rd32(vm, feat + 4) & (1u << XENFEAT_hvm_callback_vector));
	EXPECT_EQ(0, hc32_ret(&h, r_shinfo));
	EXPECT_EQ(0, hc32_ret(&h, r_cb));

	/* The wallclock and vCPU 0's pvclock at the 32-bit offsets. */
	uint32_t wc_sec = rd32(vm, HC32_SHINFO + SI32_WC_SEC), now = (uint32_t)time(NULL);

	EXPECT_EQ(0, rd32(vm, HC32_SHINFO + SI32_WC_VERSION) & 1);
	EXPECT_NE(0, rd32(vm, HC32_SHINFO + SI32_WC_VERSION));
	EXPECT_TRUE(wc_sec <= now && wc_sec + 600 >= now) TH_LOG("wc_sec %u, now %u", wc_sec, now);

	/* The IPI port: pending bit in the 32-bit bitmap, selector bit in the 4-byte word at
	 * offset 4 of vCPU 0's slot, which then moved to the registered vcpu_info. */
	EXPECT_EQ(0, hc32_ret(&h, r_ipi));
	uint32_t port = rd32(vm, ipi + 4);
	ASSERT_GT(port, 0u);
	ASSERT_LT(port, 32u);
	EXPECT_EQ(0, hc32_ret(&h, r_send));
	EXPECT_TRUE(rd32(vm, HC32_SHINFO + SI32_EVTCHN_PENDING) & (1u << port));
	EXPECT_TRUE(rd32(vm, HC32_SHINFO + VI32_PENDING_SEL) & 1);
	EXPECT_EQ(0, rd32(vm, HC32_SHINFO + 8));

	/* The runstate area: 44 bytes written (the pattern stays from byte 44), the entry time
	 * at offset 4. */
	EXPECT_EQ(0, hc32_ret(&h, r_runst));
	uint64_t entry = rd64(vm, HC32_RUNST + 4) & ~(1ULL << 63);
	EXPECT_NE(0, entry);
	EXPECT_LT(entry, 1ULL << 62);
	EXPECT_EQ(0xaaaaaaaau, rd32(vm, HC32_RUNST + RUNSTATE32_SIZE));

	EXPECT_EQ(0, hc32_ret(&h, r_poll));
	EXPECT_EQ(-XEN_ETIME, hc32_ret(&h, r_timer));

	/* setup_table: status 0 at offset 8, one 4-byte gfn (the pattern stays after it). */
	EXPECT_EQ(0, hc32_ret(&h, r_gframe));
	EXPECT_EQ(0, hc32_ret(&h, r_setup));
	vm_read(vm, setup + 8, b, 2);
	EXPECT_EQ(0, b[0] | b[1] << 8);
	EXPECT_EQ(HC32_GRANT >> 12, rd32(vm, frames));
	EXPECT_EQ(0xaaaaaaaau, rd32(vm, frames + 4));

	EXPECT_EQ(2, hc32_ret(&h, r_dec));
	EXPECT_EQ(2, hc32_ret(&h, r_pop));
	EXPECT_EQ(before.memory_used, after.memory_used);

	EXPECT_EQ(-XEN_EINVAL, hc32_ret(&h, r_status));

	EXPECT_EQ(-XEN_EINVAL, hc32_ret(&h, r_vinfo_bad));
	EXPECT_EQ(0, hc32_ret(&h, r_vinfo));
	/* The registered vcpu_info: the old slot's selector (the IPI's word) and a pvclock
	 * record (even version, a multiplier) at the 32-bit offset. */
	EXPECT_TRUE(rd32(vm, HC32_VINFO + 4032 + VI32_PENDING_SEL) & 1);
	EXPECT_EQ(0, rd32(vm, HC32_VINFO + 4032 + VI32_TIME) & 1);
	EXPECT_NE(0, rd32(vm, HC32_VINFO + 4032 + VI32_TIME + 24));
	vm_destroy(vm);
}

TEST_HARNESS_MAIN

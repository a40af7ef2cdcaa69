// SPDX-License-Identifier: GPL-2.0
/*
 * domain_memory_test: a domain's guest-physical map: RAM the guest writes and the
 * host sees, ROM the guest reads but cannot write, accesses outside the map (memory faults),
 * and isolation between domains.
 * Runs inside the test VM, as root, after keel.ko is loaded.
 */
#include <stdint.h>
#include <string.h>

#include "kselftest_harness.h"
#include "domain_test.h"

/* ---------------------------------------------------------------------------------------
 * Guest code: long-mode C functions. */

/* Fills [base, base + size) with seed ^ address, one qword at a time. */
static GUEST_CODE void guest_fill(uint64_t base, uint64_t size, uint64_t seed)
{
	volatile uint64_t *p = (volatile uint64_t *)base;

	for (uint64_t i = 0; i < size / 8; i++)
		p[i] = seed ^ (base + i * 8);
	GUEST_DONE();
}

/* Checks the ROM the host filled (qword i == seed + i), then writes to it at `write_off`. */
static GUEST_CODE void guest_rom(uint64_t rom, uint64_t size, uint64_t seed, uint64_t write_off)
{
	volatile uint64_t *p = (volatile uint64_t *)rom;

	for (uint64_t i = 0; i < size / 8; i++)
		GUEST_ASSERT_EQ(p[i], seed + i);
	GUEST_SYNC(size);
	*(volatile uint64_t *)(rom + write_off) = 0x5a5a5a5a5a5a5a5aULL;
	GUEST_ASSERT(!"the write to ROM went through");
}

static GUEST_CODE void guest_read_at(uint64_t gpa)
{
	(void)*(volatile uint64_t *)gpa;
	GUEST_ASSERT(!"the read went through");
}

static GUEST_CODE void guest_write_at(uint64_t gpa)
{
	*(volatile uint64_t *)gpa = 0x1122334455667788ULL;
	GUEST_ASSERT(!"the write went through");
}

#define TAG_MASK (0xffffULL << 48)
#define TAG_A    (0xaaaaULL << 48)
#define TAG_B    (0xbbbbULL << 48)

/* Fills its RAM with `mine | address`, reports, scans it for `other`'s tag, reports, then
 * reads at `beyond` (when not 0). */
static GUEST_CODE void guest_isolation(uint64_t base, uint64_t size, uint64_t mine,
				       uint64_t other, uint64_t beyond)
{
	volatile uint64_t *p = (volatile uint64_t *)base;
	uint64_t foreign = 0, own = 0;

	for (uint64_t i = 0; i < size / 8; i++)
		p[i] = mine | (base + i * 8);
	GUEST_SYNC(1);
	for (uint64_t i = 0; i < size / 8; i++) {
		uint64_t v = p[i];

		if ((v & TAG_MASK) == other)
			foreign++;
		if (v == (mine | (base + i * 8)))
			own++;
	}
	GUEST_ASSERT_EQ(foreign, 0);
	GUEST_ASSERT_EQ(own, size / 8);
	GUEST_SYNC(2);
	if (beyond)
		(void)*(volatile uint64_t *)beyond;
	GUEST_DONE();
}

/* ---------------------------------------------------------------------------------------
 * RAM and ROM inside the map. */

TEST_F(domain, ram_written_by_guest_seen_by_host)
{
	const uint64_t size = SZ_2M, seed = 0x5eed5eed00000000ULL;
	struct keel_vm *vm = vm_create("ram-pattern", 1, size);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint64_t *ram = vm->ram, bad = 0, first_bad = 0;

	memset(ram, 0xcc, size);
	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_fill), 0);
	vcpu_args_set(vcpu, 3, 0ULL, size, seed);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, NULL));
	for (uint64_t i = 0; i < size / 8; i++) {
		if (ram[i] != (seed ^ (i * 8))) {
			if (!bad++)
				first_bad = i * 8;
		}
	}
	EXPECT_EQ(0, bad) TH_LOG("%llu qwords differ, the first at gpa %#llx: %#llx",
				 (ull)bad, (ull)first_bad, (ull)ram[first_bad / 8]);
	vm_destroy(vm);
}

/* RAM the host mapped but never touched before the run: the module inserts a page at its first
 * touch, which comes after the run here, through the domain's live tables. */
TEST_F(domain, ram_first_touched_after_run_seen_by_host)
{
	const uint64_t gpa = 8 * SZ_1M, size = SZ_1M, seed = 0x7a7a000000000000ULL;
	struct keel_vm *vm = vm_create("ram-late", 1, SZ_2M);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint64_t *ram = vm_add_range(vm, gpa, size, KEEL_RANGE_RAM), bad = 0, first_bad = 0;

	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_fill), 0);
	vcpu_args_set(vcpu, 3, gpa, size, seed);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vcpu, NULL));
	for (uint64_t i = 0; i < size / 8; i++) {
		if (ram[i] != (seed ^ (gpa + i * 8))) {
			if (!bad++)
				first_bad = i * 8;
		}
	}
	EXPECT_EQ(0, bad) TH_LOG("%llu qwords differ, the first at gpa %#llx: %#llx",
				 (ull)bad, (ull)(gpa + first_bad), (ull)ram[first_bad / 8]);
	vm_destroy(vm);
}

TEST_F(domain, rom_readable_write_faults)
{
	const uint64_t rom_gpa = 0x10000000, size = SZ_64K, seed = 0x0badf00d00000000ULL;
	const uint64_t write_off = 0x128;
	struct keel_vm *vm = vm_create("rom", 1, SZ_64K);
	struct keel_vcpu *vcpu = vm->vcpus[0];
	uint64_t *rom = vm_add_range(vm, rom_gpa, size, KEEL_RANGE_ROM);
	struct keel_ucall uc;

	for (uint64_t i = 0; i < size / 8; i++)
		rom[i] = seed + i;
	vcpu_setup_long64(vm, vcpu, GUEST_FN(guest_rom), 0);
	vcpu_args_set(vcpu, 4, rom_gpa, size, seed, write_off);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vcpu, &uc));
	EXPECT_EQ(size, uc.args[0]);

	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_MEMORY_FAULT);
	EXPECT_EQ(rom_gpa + write_off, vcpu->run.exit.fault.gpa);
	EXPECT_EQ(KEEL_ACCESS_WRITE, vcpu->run.exit.fault.access);
	/* Not written; and the write faults again when run again. */
	EXPECT_EQ(seed + write_off / 8, rom[write_off / 8]);
	vcpu_run(vcpu);
	ASSERT_EXIT(vcpu, KEEL_EXIT_MEMORY_FAULT);
	EXPECT_EQ(rom_gpa + write_off, vcpu->run.exit.fault.gpa);
	EXPECT_EQ(seed + write_off / 8, rom[write_off / 8]);
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * Outside the map. */

TEST_F(domain, unmapped_access_faults)
{
	const struct {
		void (*fn)(uint64_t);
		uint64_t gpa;
		uint32_t access;
	} cases[] = {
		{ guest_read_at, 0x20000040, KEEL_ACCESS_READ },
		{ guest_write_at, 0x20001080, KEEL_ACCESS_WRITE },
		/* Just past the RAM, in the same 2 MiB page. */
		{ guest_read_at, SZ_1M + 8, KEEL_ACCESS_READ },
		{ guest_write_at, SZ_1M + 0x10, KEEL_ACCESS_WRITE },
	};
	const uint32_t n = ARRAY_SIZE(cases);
	struct keel_vm *vm = vm_create("unmapped", n, SZ_1M);

	for (uint32_t i = 0; i < n; i++) {
		vcpu_setup_long64(vm, vm->vcpus[i], GUEST_FN(cases[i].fn), 0);
		vcpu_args_set(vm->vcpus[i], 1, cases[i].gpa);
	}
	for (uint32_t i = 0; i < n; i++) {
		struct keel_vcpu *vcpu = vm->vcpus[i];

		vcpu_run(vcpu);
		EXPECT_EXIT(vcpu, KEEL_EXIT_MEMORY_FAULT);
		EXPECT_EQ(i, vcpu->run.exit.vcpu);
		EXPECT_EQ(cases[i].gpa, vcpu->run.exit.fault.gpa)
			TH_LOG("case %u: %s", i, keel_exit_str(&vcpu->run.exit));
		EXPECT_EQ(cases[i].access, vcpu->run.exit.fault.access)
			TH_LOG("case %u: %s", i, keel_exit_str(&vcpu->run.exit));
	}
	vm_destroy(vm);
}

/* ---------------------------------------------------------------------------------------
 * Isolation between domains. */

TEST_F(domain, domains_are_isolated)
{
	const uint64_t size_a = SZ_1M, size_b = SZ_2M, beyond = SZ_1M + SZ_1M / 2;
	struct keel_vm *a = vm_create("iso-a", 1, size_a);
	struct keel_vm *b = vm_create("iso-b", 1, size_b);
	struct keel_vcpu *va = a->vcpus[0], *vb = b->vcpus[0];
	struct keel_ucall uc;
	uint64_t *ram;
	uint64_t bad;

	vcpu_setup_long64(a, va, GUEST_FN(guest_isolation), 0);
	vcpu_args_set(va, 5, 0ULL, size_a, TAG_A, TAG_B, beyond);
	vcpu_setup_long64(b, vb, GUEST_FN(guest_isolation), 0);
	vcpu_args_set(vb, 5, 0ULL, size_b, TAG_B, TAG_A, 0ULL);

	/* Both fill, then both scan. */
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(va, &uc));
	ASSERT_EQ(1, uc.args[0]);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vb, &uc));
	ASSERT_EQ(1, uc.args[0]);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(va, &uc));
	ASSERT_EQ(2, uc.args[0]);
	ASSERT_EQ(UCALL_SYNC, vcpu_run_report(vb, &uc));
	ASSERT_EQ(2, uc.args[0]);

	/* The host sees each domain's own pattern. */
	ram = a->ram;
	bad = 0;
	for (uint64_t i = 0; i < size_a / 8; i++)
		bad += ram[i] != (TAG_A | (i * 8));
	EXPECT_EQ(0, bad);
	ram = b->ram;
	bad = 0;
	for (uint64_t i = 0; i < size_b / 8; i++)
		bad += ram[i] != (TAG_B | (i * 8));
	EXPECT_EQ(0, bad);

	/* A's read past its RAM, where B has RAM, faults. */
	vcpu_run(va);
	ASSERT_EXIT(va, KEEL_EXIT_MEMORY_FAULT);
	EXPECT_EQ(beyond, va->run.exit.fault.gpa);
	EXPECT_EQ(KEEL_ACCESS_READ, va->run.exit.fault.access);
	ASSERT_EQ(UCALL_DONE, vcpu_run_report(vb, &uc));
	vm_destroy(a);
	vm_destroy(b);
}

TEST_HARNESS_MAIN

// SPDX-License-Identifier: GPL-2.0
/*
 * qemu_seg_reserved: a real-mode guest that executes `mov %di, %seg7` (8E FF: MOV to a segment
 * register with a reserved number, #UD on a CPU), then HLT. QEMU 10's x86 translator crashes
 * on it (SIGSEGV in tcg_optimize): scripts/test runs it under `run-vm --last-blocks` to check
 * that such a crash names the instruction (scripts/qemu-plugins/known-crash), which is how the
 * test command tells a known QEMU bug that a hostile guest reached from a failure of Keel's.
 * Prints "survived" when the emulator runs it (Bochs; a QEMU without the bug).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/keel.h>

static const unsigned char code[] = {
	0x8e, 0xff, /* mov %di, %seg7 */
	0xf4,       /* hlt */
};

static void on_alarm(int sig)
{
	(void)sig;
}

int main(void)
{
	struct keel_domain_create dc = { .max_vcpus = 1, .memory_size = 0x100000, .name = "seg7" };
	struct keel_mem_range ram = { .gpa = 0, .size = 0x100000, .kind = KEEL_RANGE_RAM };
	struct keel_vcpu_create vc = { .id = 0 };
	struct sigaction sa = { .sa_handler = on_alarm };
	struct keel_sregs s;
	struct keel_regs regs;
	struct keel_run run;
	int dev, dom, vcpu;
	unsigned char *mem;

	dev = open("/dev/keel", O_RDWR);
	dom = dev < 0 ? -1 : ioctl(dev, KEEL_CREATE_DOMAIN, &dc);
	if (dom < 0 || ioctl(dom, KEEL_DOMAIN_ADD_RANGE, &ram)) {
		perror("domain");
		return 1;
	}
	mem = mmap(NULL, ram.size, PROT_READ | PROT_WRITE, MAP_SHARED, dom, 0);
	vcpu = ioctl(dom, KEEL_DOMAIN_CREATE_VCPU, &vc);
	if (mem == MAP_FAILED || vcpu < 0) {
		perror("memory/vcpu");
		return 1;
	}
	memset(mem, 0xf4, ram.size);
	memcpy(mem + 0x12000, code, sizeof(code));
	/* Real mode: CS base 0x12000, IP 0. */
	memset(&s, 0, sizeof(s));
	s.cs = (struct keel_segment){ 0x12000, 0xffff, 0x1200, KEEL_SEG_TYPE(0xb) | KEEL_SEG_S | KEEL_SEG_P };
	s.ds = s.es = s.fs = s.gs = s.ss =
		(struct keel_segment){ 0, 0xffff, 0, KEEL_SEG_TYPE(0x3) | KEEL_SEG_S | KEEL_SEG_P };
	s.tr = (struct keel_segment){ 0, 0xffff, 0, KEEL_SEG_TYPE(0x3) | KEEL_SEG_P };
	s.gdt.limit = 0xffff;
	s.idt.limit = 0x3ff;
	s.cr0 = 0x30; /* ET, NE */
	memset(&regs, 0, sizeof(regs));
	regs.rsp = 0x9000;
	regs.rflags = 2;
	if (ioctl(vcpu, KEEL_VCPU_SET_SREGS, &s) || ioctl(vcpu, KEEL_VCPU_SET_REGS, &regs)) {
		perror("state");
		return 1;
	}
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	memset(&run, 0, sizeof(run));
	alarm(1);
	int r = ioctl(vcpu, KEEL_VCPU_RUN, &run);
	alarm(0);
	printf("run: %d (%s), exit reason %u at rip %#llx\nsurvived\n", r, r ? strerror(errno) : "ok",
	       run.exit.reason, (unsigned long long)run.exit.rip);
	return 0;
}

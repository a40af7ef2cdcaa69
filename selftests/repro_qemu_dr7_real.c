// SPDX-License-Identifier: GPL-2.0
/*
 * repro_qemu_dr7_real: a finding of keel_fuzz_guest (seed 1796359006108040, case 17, vCPU 2),
 * cut down to its one vCPU. Under QEMU (AMD SVM, TCG) the whole emulator stops for good: no
 * more serial output, its monitor does not answer, SIGTERM is ignored (only SIGKILL ends it).
 * The real-mode guest writes DR5 (DR7 while CR4.DE is clear) = 0xec7b36d9, which enables a
 * read/write data breakpoint over [0, 8), then executes XSETBV with ECX = -1 (#GP). The IVT
 * at 0 is zero, so the handler runs at 0:0, whose `add %al, (%bx,%si)` touches the breakpoint
 * again, and so on. Bochs (VMX) runs it fine (the run ends with EINTR each second). Since Keel
 * intercepts #DB (each delivery is an exit, and the run loop sees the timer's signal), so does
 * QEMU: the run ends with EINTR each second there too; before, QEMU looped in the delivery.
 *
 * Not built by the Makefile: gcc -static -O2 -D_GNU_SOURCE -Iuapi -o repro_qemu_dr7_real
 * selftests/repro_qemu_dr7_real.c, then run it in the test VM (scripts/run-vm -f).
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
	0x66, 0xb8, 0xd9, 0x36, 0x7b, 0xec,             /* mov $0xec7b36d9, %eax */
	0x0f, 0x23, 0xe8,                               /* mov %eax, %dr5 */
	0x66, 0xb9, 0xff, 0xff, 0xff, 0xff,             /* mov $-1, %ecx */
	0x66, 0xb8, 0x01, 0x40, 0x00, 0x00,             /* mov $0x4001, %eax */
	0x66, 0xba, 0x00, 0x00, 0x00, 0x00,             /* mov $0, %edx */
	0x0f, 0x01, 0xd1,                               /* xsetbv: #GP */
	0xf4,                                           /* hlt */
};

static void on_alarm(int sig)
{
	(void)sig;
}

int main(void)
{
	struct keel_domain_create dc = { .max_vcpus = 1, .memory_size = 0x100000, .name = "dr7" };
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
	memcpy(mem + 0x12000, code, sizeof(code));
	/* Real mode as lib/x86.c's vcpu_setup_real(): CS base 0x12000, IP 0, IVT at 0. */
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
	for (int i = 0; i < 3; i++) {
		int r;

		alarm(1);
		r = ioctl(vcpu, KEEL_VCPU_RUN, &run);
		printf("run %d: %d (%s), exit reason %u at rip %#llx\n", i, r, r ? strerror(errno) : "ok",
		       run.exit.reason, (unsigned long long)run.exit.rip);
		fflush(stdout);
	}
	printf("returned: not reproduced\n");
	return 0;
}

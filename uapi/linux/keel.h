/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * keel.h - the /dev/keel ioctl interface of the Keel hypervisor.
 *
 * This header is the single source of truth for the interface: the kernel module and the
 * userspace tool both bind it with bindgen, and the selftests include it directly.
 *
 * Rules every structure here follows:
 *  - fixed-width types only, naturally aligned, with explicit padding so the layout is the
 *    same for every compiler and for 32-bit and 64-bit userspace;
 *  - fields a caller passes in that are not yet used ("flags", "pad") must be zero, or the
 *    ioctl fails with EINVAL; that keeps them free for later use;
 *  - a change that breaks the layout of an existing ioctl bumps KEEL_ABI_VERSION.
 */
#ifndef _UAPI_LINUX_KEEL_H
#define _UAPI_LINUX_KEEL_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* Bumped on every incompatible change of this interface. */
#define KEEL_ABI_VERSION 3

/* The ioctl type byte of /dev/keel. */
#define KEEL_IOCTL_TYPE 0xC7

/* Hardware virtualization vendors (struct keel_caps.vendor). */
#define KEEL_VENDOR_NONE 0
#define KEEL_VENDOR_VMX  1 /* Intel VT-x */
#define KEEL_VENDOR_SVM  2 /* AMD-V */

/* Capability bits (struct keel_caps.flags). */
#define KEEL_CAP_SLAT               (1ULL << 0) /* EPT (VMX) or NPT (SVM) usable by Keel */
#define KEEL_CAP_TAGGED_TLB         (1ULL << 1) /* VPID (VMX) or ASIDs (SVM) */
#define KEEL_CAP_UNRESTRICTED_GUEST (1ULL << 2) /* guests may run unpaged / in real mode */
#define KEEL_CAP_PREEMPTION_TIMER   (1ULL << 3) /* VMX-preemption timer */
#define KEEL_CAP_NRIP_SAVE          (1ULL << 4) /* SVM saves the next RIP on intercepts */
#define KEEL_CAP_SLAT_2M            (1ULL << 5) /* 2 MiB second-level pages */
#define KEEL_CAP_SLAT_1G            (1ULL << 6) /* 1 GiB second-level pages */
#define KEEL_CAP_VMCB_CLEAN         (1ULL << 7) /* SVM VMCB clean bits */
#define KEEL_CAP_DECODE_ASSISTS     (1ULL << 8) /* SVM decode assists */
#define KEEL_CAP_FLUSH_BY_ASID      (1ULL << 9) /* SVM TLB flush by ASID */

/* KEEL_GET_VERSION: the interface and module versions. */
struct keel_version {
	__u32 flags;       /* in: must be 0 */
	__u32 abi_version; /* out: KEEL_ABI_VERSION of the module */
	__u16 major;       /* out: module version */
	__u16 minor;
	__u16 patch;
	__u16 pad;         /* out: 0 */
};

/* KEEL_GET_CAPS: what the hardware offers Keel, as the module detected it at load. */
struct keel_caps {
	__u32 flags;       /* in: must be 0 */
	__u32 vendor;      /* out: KEEL_VENDOR_* */
	__u64 caps;        /* out: KEEL_CAP_* bits */
	__u32 nr_tags;     /* out: VPIDs (VMX) or ASIDs (SVM) available, 0 when none */
	__u32 revision;    /* out: VMCS revision id (VMX) or SVM revision (SVM) */
	__u32 online_cpus; /* out: CPUs online when the call was made */
	__u32 pad;         /* out: 0 */
	__u64 reserved[4]; /* out: 0 */
};

#define KEEL_GET_VERSION _IOWR(KEEL_IOCTL_TYPE, 0x00, struct keel_version)
#define KEEL_GET_CAPS    _IOWR(KEEL_IOCTL_TYPE, 0x01, struct keel_caps)

/*
 * Domains
 * =======
 *
 * KEEL_CREATE_DOMAIN on /dev/keel makes a domain and returns a new file descriptor for it (the
 * ioctl's return value, close-on-exec). The domain lives as long as that descriptor or one of
 * its vCPU descriptors is open: closing the last one destroys it and frees its memory, even
 * while another thread is still inside KEEL_VCPU_RUN (that run returns first).
 *
 * Before its first run, the builder lays out the domain's guest-physical map with
 * KEEL_DOMAIN_ADD_RANGE and may mmap() the domain fd to load it: the mmap offset is the
 * guest-physical address, and a mapping must lie inside one RAM or ROM range. Once any vCPU has
 * run, the map is fixed: KEEL_DOMAIN_ADD_RANGE and mmap() fail with EBUSY.
 *
 * Every call checks all of its arguments and, on error, leaves the domain as it was.
 */

#define KEEL_NAME_LEN          32          /* domain names, NUL included */
#define KEEL_MAX_VCPUS         64          /* per domain */
#define KEEL_MAX_RANGES        64          /* per domain */
#define KEEL_MAX_DOMAIN_MEMORY (64ULL << 30) /* RAM + ROM of one domain, bytes */
#define KEEL_MAX_GPA           (1ULL << 39) /* guest-physical addresses are below this */
#define KEEL_PAGE_SIZE         4096ULL      /* the unit of every address and size */

/* KEEL_CREATE_DOMAIN (on /dev/keel): returns the domain fd. */
#define KEEL_CREATE_DOMAIN_XEN (1U << 0) /* a Xen PVH domain (see "Xen PVH domains" below) */
struct keel_domain_create {
	__u32 flags;       /* in: 0 or KEEL_CREATE_DOMAIN_XEN */
	__u32 max_vcpus;   /* in: 1..KEEL_MAX_VCPUS */
	__u64 memory_size; /* in: most RAM + ROM the domain may have, bytes, a page multiple */
	char name[KEEL_NAME_LEN]; /* in: NUL-terminated, 1..31 printable ASCII characters */
	__u32 domid;       /* out: the domain's id, unique while the module is loaded */
	__u32 pad;         /* in: must be 0 */
};

/* The kinds of guest-physical range (struct keel_mem_range.kind). */
#define KEEL_RANGE_RAM  1 /* read, write, execute; memory the module allocates and zeroes */
#define KEEL_RANGE_ROM  2 /* read and execute; a write ends the run with KEEL_EXIT_MEMORY_FAULT */
#define KEEL_RANGE_MMIO 3 /* no memory: every access ends the run with KEEL_EXIT_MMIO */

/* KEEL_DOMAIN_ADD_RANGE (on a domain fd). Ranges may not overlap. RAM and ROM count against
 * the domain's memory_size (ENOSPC past it); ENOMEM when the host has not enough memory. */
struct keel_mem_range {
	__u64 gpa;   /* in: start, page aligned */
	__u64 size;  /* in: bytes, a nonzero page multiple; gpa + size <= KEEL_MAX_GPA */
	__u32 kind;  /* in: KEEL_RANGE_* */
	__u32 flags; /* in: must be 0 */
};

/* KEEL_DOMAIN_PAUSE / KEEL_DOMAIN_UNPAUSE (on a domain fd, no argument). A paused domain's
 * vCPUs leave the guest promptly; KEEL_VCPU_RUN then waits (interruptibly) until the domain is
 * unpaused. Pauses nest, as in Xen: each pause needs its unpause (EINVAL when not paused). */

/* KEEL_DOMAIN_CREATE_VCPU (on a domain fd): returns the vCPU fd. */
struct keel_vcpu_create {
	__u32 flags; /* in: must be 0 */
	__u32 id;    /* in: 0..max_vcpus-1, each id once (EEXIST) */
};

/* KEEL_DOMAIN_INFO (on a domain fd) and the entries of KEEL_LIST_DOMAINS. */
#define KEEL_DOMAIN_PAUSED  (1U << 0) /* state: paused */
#define KEEL_DOMAIN_STARTED (1U << 1) /* state: a vCPU has run; the map is fixed */
struct keel_domain_info {
	__u32 domid;
	__u32 state;        /* KEEL_DOMAIN_* bits */
	__u32 max_vcpus;
	__u32 nr_vcpus;     /* vCPUs created */
	__u64 memory_size;  /* the limit given at creation */
	__u64 memory_used;  /* bytes of RAM + ROM in the map */
	__u32 nr_ranges;
	__u32 pad;
	__u64 vcpu_mask;    /* bit i: vCPU i exists */
	__u64 running_mask; /* bit i: vCPU i is inside KEEL_VCPU_RUN */
	char name[KEEL_NAME_LEN];
	__u64 cpu_ns;       /* time the vCPUs spent in the guest, nanoseconds */
	__u32 flags;        /* the creation flags (KEEL_CREATE_DOMAIN_*) */
	__u32 pad2;
};

/* KEEL_LIST_DOMAINS (on /dev/keel): the live domains, in domid order. */
struct keel_domain_list {
	__u32 flags;  /* in: must be 0 */
	__u32 count;  /* in: entries the buffer holds; out: entries written */
	__u32 total;  /* out: live domains (may be more than count) */
	__u32 pad;    /* in: must be 0 */
	__u64 buffer; /* in: user pointer to count struct keel_domain_info */
};

/*
 * Xen PVH domains
 * ===============
 *
 * A domain created with KEEL_CREATE_DOMAIN_XEN speaks the guest side of Xen's PVH ABI, which
 * Keel serves in the kernel, the way Xen does for a PVH DomU:
 *  - CPUID leaves 0x40000000+ are Xen's; VMCALL/VMMCALL (or the hypercall page the guest asks
 *    for by the MSR they name) are Xen hypercalls: xen_version, memory_op, hvm_op, vcpu_op,
 *    set_timer_op, sched_op, event_channel_op (2-level), grant_table_op, console_io. An
 *    operation Keel does not serve gets -ENOSYS, as on Xen; only SCHEDOP_shutdown ends a run
 *    (KEEL_EXIT_SHUTDOWN, KEEL_SHUTDOWN_XEN). console_io writes go to the kernel log.
 *    Numbers from 64 up, which Xen does not define, end the run with KEEL_EXIT_HYPERCALL for
 *    the toolstack to answer (-ENOSYS is Xen's answer; the selftests report through them).
 *    A vCPU outside 64-bit mode passes Xen's compat (i386) argument layouts; shared_info,
 *    vcpu_info and runstate areas take the 32-bit layout when the vCPU that installs the
 *    hypercall page or sets HVM_PARAM_CALLBACK_IRQ is not in 64-bit mode (as on Xen).
 *  - each vCPU has a local APIC at 0xFEE00000 (xAPIC MMIO, or x2APIC MSRs once the guest
 *    switches to them through IA32_APIC_BASE; CPUID offers x2APIC); vCPU 0 starts where
 *    SET_SREGS and SET_REGS put it, the others wait in KEEL_VCPU_RUN for INIT and SIPI from
 *    another vCPU and then start in real mode at the SIPI's vector;
 *  - port I/O reads all-ones and drops writes; so do guest-physical addresses outside the
 *    map (KEEL_RANGE_MMIO ranges still exit with KEEL_EXIT_MMIO);
 *  - HLT and SCHEDOP_block sleep in the kernel until an event, a timer or a signal. HLT with
 *    interrupts off takes the vCPU down; when every vCPU is down, the run of the last one ends
 *    with KEEL_EXIT_SHUTDOWN, KEEL_SHUTDOWN_XEN, KEEL_XEN_SHUTDOWN_POWEROFF (Xen's rule).
 *
 * The toolstack gives the guest its XenStore and console rings through HVM params, which the
 * guest may read and not write: KEEL_DOMAIN_SET_PARAM / KEEL_DOMAIN_GET_PARAM with Xen's
 * numbers (HVM_PARAM_STORE_PFN 1, STORE_EVTCHN 2, CONSOLE_PFN 17, CONSOLE_EVTCHN 18). Any
 * other index is EINVAL. Both work before and after the first run.
 *
 * Dom0's side of event channels: Dom0 has no ports of its own. KEEL_DOMAIN_EVTCHN_BIND
 * connects a port of the DomU to Dom0: with KEEL_EVTCHN_ALLOC it allocates a new port in the
 * DomU, bound to Dom0 (what libxl does for the console and XenStore before the guest starts:
 * the guest learns the port from an HVM param or XenStore and uses it as it is); without it,
 * it binds a port the DomU allocated with EVTCHNOP_alloc_unbound for remote domain 0 (a PV
 * frontend's way; EINVAL if the port is not such a port). The module signals `eventfd` each
 * time the DomU sends on the port. KEEL_DOMAIN_EVTCHN_NOTIFY raises the DomU's port (the
 * guest's upcall, waking the vCPU the port is bound to); KEEL_DOMAIN_EVTCHN_UNBIND closes
 * Dom0's end (the DomU's port stays, unbound). The DomU's EVTCHNOP_close of the port, or its
 * EVTCHNOP_reset, drops Dom0's end too (NOTIFY and UNBIND then get EINVAL). Dom0 has no ports
 * of its own: a DomU's EVTCHNOP_bind_interdomain to domain 0 gets -EINVAL. Closing the domain
 * fd unbinds everything.
 */
/* The guest's memory map (XENMEM_memory_map answers with it; Xen's XENMEM_set_memory_map):
 * KEEL_DOMAIN_SET_MEMORY_MAP, before or after the first run, with 1..KEEL_MAX_E820 entries
 * (each a nonzero size, no wrap, type 1..5 (e820: RAM, reserved, ACPI, NVS, unusable)). Until
 * it is set, XENMEM_memory_map gets -ENOSYS. */
#define KEEL_MAX_E820 128
struct keel_e820_entry {
	__u64 addr;
	__u64 size;
	__u32 type;
	__u32 pad;   /* must be 0 */
};
struct keel_memory_map {
	__u32 nr_entries; /* in */
	__u32 pad;        /* in: must be 0 */
	__u64 entries;    /* in: user pointer to nr_entries struct keel_e820_entry */
};

#define KEEL_XEN_PARAM_STORE_PFN      1
#define KEEL_XEN_PARAM_STORE_EVTCHN   2
#define KEEL_XEN_PARAM_CONSOLE_PFN    17
#define KEEL_XEN_PARAM_CONSOLE_EVTCHN 18

struct keel_xen_param {
	__u32 index; /* in: KEEL_XEN_PARAM_* */
	__u32 pad;   /* in: must be 0 */
	__u64 value; /* in (SET) or out (GET) */
};

#define KEEL_EVTCHN_ALLOC (1U << 0)
struct keel_evtchn_bind {
	__u32 flags;   /* in: 0 or KEEL_EVTCHN_ALLOC */
	__u32 port;    /* in: the DomU's unbound port (without ALLOC); out: the DomU's port */
	__s32 eventfd; /* in: an eventfd signalled when the DomU sends on the port */
	__u32 pad;     /* in: must be 0 */
};

struct keel_evtchn_port {
	__u32 port;    /* in: a DomU port bound to Dom0 */
	__u32 pad;     /* in: must be 0 */
};

/*
 * Dom0's side of grant tables (Xen's grant copy and gntdev): a Dom0 backend reaches a DomU
 * page only if the DomU granted it to domain 0, checked against the grant table the DomU set
 * up (GNTTABOP_setup_table / XENMAPSPACE_grant_table), with Xen's rules: the entry's type is
 * GTF_permit_access, its domid 0, and a write needs no GTF_readonly. While Dom0 uses the page
 * the module keeps GTF_reading (and GTF_writing for writes) set in the entry, so the DomU
 * cannot end the access under it; the last use clears them.
 *
 * KEEL_DOMAIN_GRANT_COPY copies, for each of `count` segments, `len` bytes between the granted
 * page at `offset` and Dom0's buffer `buf` (KEEL_GRANT_TO_GUEST: from `buf` into the page, which
 * needs a writable grant). Each segment gets its own `status`: 0, or Xen's GNTST_* (-1
 * general_error: no such grant, another grantee, read-only; -3 bad_gntref: a reference beyond
 * the DomU's table; -10 bad_copy_arg: offset + len beyond the page). The ioctl fails with
 * EINVAL for a bad count, flags or pad, and with EFAULT when a `buf` cannot be read or
 * written (the segments from the batch of 32 that holds it on have no status; the module
 * takes and gives back each batch's grants at once).
 *
 * KEEL_DOMAIN_GRANT_MAP takes `count` references at once (all granted, or the ioctl fails
 * with EACCES, or ENOENT for a reference beyond the table, and nothing is kept) and returns a
 * new fd: mmap it at offset 0, `count` pages long, for the granted pages in order (PROT_WRITE
 * only with KEEL_GRANT_MAP_WRITABLE; a read-only map cannot be made writable by mprotect).
 * The grants stay in use until the fd is closed and every mapping of it unmapped; a domain
 * destroyed meanwhile keeps its memory until then, as Xen keeps a dying domain's granted pages.
 */
#define KEEL_GRANT_TO_GUEST     (1U << 0)
#define KEEL_GRANT_MAP_WRITABLE (1U << 0)
#define KEEL_MAX_GRANT_COPY     1024 /* segments per KEEL_DOMAIN_GRANT_COPY */
#define KEEL_MAX_GRANT_MAP      1024 /* pages per KEEL_DOMAIN_GRANT_MAP */
struct keel_grant_copy_seg {
	__u32 ref;     /* in: the DomU's grant reference */
	__u16 offset;  /* in: byte offset in the granted page */
	__u16 len;     /* in: bytes; offset + len <= 4096 */
	__u64 buf;     /* in: Dom0's side, a user address */
	__u32 flags;   /* in: 0 (page to buf) or KEEL_GRANT_TO_GUEST */
	__s16 status;  /* out: 0 or a GNTST_* value */
	__u16 pad;     /* in: must be 0 */
};
struct keel_grant_copy {
	__u32 count;   /* in: 1..KEEL_MAX_GRANT_COPY */
	__u32 pad;     /* in: must be 0 */
	__u64 segs;    /* in: user pointer to count struct keel_grant_copy_seg (status written) */
};
struct keel_grant_map {
	__u32 count;   /* in: 1..KEEL_MAX_GRANT_MAP */
	__u32 flags;   /* in: 0 (read-only) or KEEL_GRANT_MAP_WRITABLE */
	__u64 refs;    /* in: user pointer to count __u32 grant references */
};

/*
 * vCPU state
 * ==========
 *
 * A new vCPU starts as an x86 CPU after INIT: real mode at f000:fff0. KEEL_VCPU_SET_SREGS can
 * put it in 32-bit protected mode (the PVH entry: CR0.PE, flat 32-bit segments) or in 64-bit
 * long mode (CR0.PG|PE, CR4.PAE, EFER.LME|LMA, a 64-bit CS, CR3 pointing at page tables in the
 * guest's memory). Keel checks every state it is given against the architecture's rules, on
 * both vendors alike (what a CPU could be in: CR0/CR4/EFER combinations such as EFER.LMA only
 * with CR0.PG, CR4 bits the CPU has and Keel allows, CR3 within the address width, segment
 * caches a descriptor load could have made, a busy TSS in TR, RFLAGS' reserved bits, RIP
 * canonical in 64-bit mode): KEEL_VCPU_SET_SREGS and SET_REGS refuse an invalid one with
 * EINVAL and leave the vCPU as it was. Outside 64-bit mode RIP is EIP: SET_SREGS truncates
 * it, SET_REGS refuses a RIP above 4 GiB. The guest's own writes to CR0, CR3, CR4 and EFER
 * follow the CPU's #GP rules. KEEL_EXIT_ENTRY_FAILURE therefore only reports what the
 * hardware refuses beyond those rules (testing: debugfs keel/fail_entries forces it).
 */
struct keel_regs {
	__u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
	__u64 r8, r9, r10, r11, r12, r13, r14, r15;
	__u64 rip, rflags;
};

/* Segment attributes (struct keel_segment.attrib): the descriptor's access bits as SVM packs
 * them. KEEL_SEG_P clear marks the segment unusable (a null selector). */
#define KEEL_SEG_TYPE(t) ((t) & 0xf)  /* type, e.g. 0xb code execute/read accessed, 0x3 data */
#define KEEL_SEG_S    (1U << 4)       /* code or data (not system) */
#define KEEL_SEG_DPL(d) (((d) & 3) << 5)
#define KEEL_SEG_P    (1U << 7)       /* present */
#define KEEL_SEG_AVL  (1U << 8)
#define KEEL_SEG_L    (1U << 9)       /* 64-bit code */
#define KEEL_SEG_DB   (1U << 10)      /* 32-bit default size */
#define KEEL_SEG_G    (1U << 11)      /* limit in 4 KiB units */

struct keel_segment {
	__u64 base;
	__u32 limit;    /* in bytes (already scaled by G) */
	__u16 selector;
	__u16 attrib;   /* KEEL_SEG_* */
};

struct keel_dtable {
	__u64 base;
	__u16 limit;
	__u16 pad[3]; /* must be 0 */
};

struct keel_sregs {
	struct keel_segment cs, ds, es, fs, gs, ss, tr, ldt;
	struct keel_dtable gdt, idt;
	__u64 cr0, cr2, cr3, cr4, efer;
	__u64 reserved[4]; /* must be 0 */
};

/*
 * Running
 * =======
 *
 * KEEL_VCPU_RUN enters the guest on the calling thread and returns 0 when the guest exits for
 * something Dom0 must handle, described in run.exit. A pending signal makes it return EINTR
 * (with KEEL_EXIT_INTR) as soon as the guest is out; the host's interrupts and the scheduler
 * take the CPU from a guest that never exits by itself.
 *
 * Completing an exit: after KEEL_EXIT_IO with direction KEEL_IO_IN or KEEL_EXIT_MMIO with
 * KEEL_IO_IN, put the value read in exit.io.data / exit.mmio.data; after KEEL_EXIT_HYPERCALL,
 * put the result in exit.hypercall.ret; then call KEEL_VCPU_RUN again with the same struct.
 * The instruction completes (register written, RIP advanced) before the guest goes on.
 */
#define KEEL_EXIT_NONE          0
#define KEEL_EXIT_HLT           1  /* HLT with nothing to deliver; RIP is past it */
#define KEEL_EXIT_IO            2  /* IN/OUT on a port: exit.io */
#define KEEL_EXIT_MMIO          3  /* an access to a KEEL_RANGE_MMIO range: exit.mmio */
#define KEEL_EXIT_HYPERCALL     4  /* a hypercall Keel does not handle itself: exit.hypercall */
#define KEEL_EXIT_SHUTDOWN      5  /* a triple fault, or the guest's SCHEDOP_shutdown: exit.shutdown */
#define KEEL_EXIT_MEMORY_FAULT  6  /* an access outside the map or a write to ROM: exit.fault */
#define KEEL_EXIT_ENTRY_FAILURE 7  /* the hardware refused the guest state: exit.fail */
#define KEEL_EXIT_INTR          8  /* a signal is pending (the ioctl fails with EINTR) */
#define KEEL_EXIT_UNHANDLED     9  /* an exit Keel cannot handle: exit.fail has the hardware's code */

#define KEEL_IO_OUT 0
#define KEEL_IO_IN  1

/* Access kinds (exit.fault.access), as bits. */
#define KEEL_ACCESS_READ  (1U << 0)
#define KEEL_ACCESS_WRITE (1U << 1)
#define KEEL_ACCESS_EXEC  (1U << 2)

#define KEEL_SHUTDOWN_TRIPLE_FAULT 1
#define KEEL_SHUTDOWN_XEN          2  /* sched_op(SCHEDOP_shutdown): exit.shutdown.reason */

/* Xen's shutdown reasons (exit.shutdown.reason with KEEL_SHUTDOWN_XEN). The hypercall has
 * returned 0 when the exit is seen: running the vCPU again goes on after it. */
#define KEEL_XEN_SHUTDOWN_POWEROFF   0
#define KEEL_XEN_SHUTDOWN_REBOOT     1
#define KEEL_XEN_SHUTDOWN_SUSPEND    2
#define KEEL_XEN_SHUTDOWN_CRASH      3
#define KEEL_XEN_SHUTDOWN_WATCHDOG   4
#define KEEL_XEN_SHUTDOWN_SOFT_RESET 5

struct keel_exit_io {
	__u16 port;
	__u8  size;      /* 1, 2 or 4 bytes */
	__u8  direction; /* KEEL_IO_OUT or KEEL_IO_IN */
	__u32 pad;
	__u64 data;      /* OUT: the value written; IN: Dom0 puts the value read here */
};

struct keel_exit_mmio {
	__u64 gpa;
	__u8  size;      /* 1, 2, 4 or 8 bytes */
	__u8  direction; /* KEEL_IO_OUT (a write) or KEEL_IO_IN (a read) */
	__u8  pad[6];
	__u64 data;      /* write: the value written; read: Dom0 puts the value read here */
};

/* Hypercalls follow Xen's convention: 64-bit guests pass the number in rax and the arguments
 * in rdi, rsi, rdx, r10, r8; 32-bit guests in eax and ebx, ecx, edx, esi, edi. The result goes
 * to rax. VMCALL and VMMCALL both work on either vendor. */
struct keel_exit_hypercall {
	__u64 nr;
	__u64 args[5];
	__u64 ret;       /* Dom0 puts the result here (rax); 0 unless set */
	__u32 longmode;  /* 1: a 64-bit caller */
	__u32 pad;
};

struct keel_exit_fault {
	__u64 gpa;
	__u32 access;    /* KEEL_ACCESS_* */
	__u32 pad;
};

struct keel_exit_shutdown {
	__u32 kind;      /* KEEL_SHUTDOWN_* */
	__u32 reason;    /* KEEL_SHUTDOWN_XEN: KEEL_XEN_SHUTDOWN_*; else 0 */
};

struct keel_exit_fail {
	__u64 hw_reason;     /* VMX: the basic exit reason (entry failures have bit 31) and the
	                        VM-instruction error in bits 32-63; SVM: the exit code */
	__u64 qualification; /* VMX: the exit qualification; SVM: exitinfo1 */
};

struct keel_exit {
	__u32 reason; /* KEEL_EXIT_* */
	__u32 vcpu;   /* the vCPU's id */
	__u64 rip;    /* the guest's RIP at the exit */
	union {
		struct keel_exit_io io;
		struct keel_exit_mmio mmio;
		struct keel_exit_hypercall hypercall;
		struct keel_exit_fault fault;
		struct keel_exit_shutdown shutdown;
		struct keel_exit_fail fail;
		__u64 raw[12];
	};
};

struct keel_run {
	__u32 flags; /* in: must be 0 */
	__u32 pad;   /* in: must be 0 */
	struct keel_exit exit; /* out: why the run ended; in: the completion of the previous exit */
};

#define KEEL_CREATE_DOMAIN       _IOWR(KEEL_IOCTL_TYPE, 0x02, struct keel_domain_create)
#define KEEL_LIST_DOMAINS        _IOWR(KEEL_IOCTL_TYPE, 0x03, struct keel_domain_list)

#define KEEL_DOMAIN_ADD_RANGE    _IOW(KEEL_IOCTL_TYPE, 0x10, struct keel_mem_range)
#define KEEL_DOMAIN_CREATE_VCPU  _IOW(KEEL_IOCTL_TYPE, 0x11, struct keel_vcpu_create)
#define KEEL_DOMAIN_PAUSE        _IO(KEEL_IOCTL_TYPE, 0x12)
#define KEEL_DOMAIN_UNPAUSE      _IO(KEEL_IOCTL_TYPE, 0x13)
#define KEEL_DOMAIN_INFO         _IOR(KEEL_IOCTL_TYPE, 0x14, struct keel_domain_info)
#define KEEL_DOMAIN_SET_PARAM    _IOW(KEEL_IOCTL_TYPE, 0x15, struct keel_xen_param)
#define KEEL_DOMAIN_GET_PARAM    _IOWR(KEEL_IOCTL_TYPE, 0x16, struct keel_xen_param)
#define KEEL_DOMAIN_EVTCHN_BIND  _IOWR(KEEL_IOCTL_TYPE, 0x17, struct keel_evtchn_bind)
#define KEEL_DOMAIN_EVTCHN_NOTIFY _IOW(KEEL_IOCTL_TYPE, 0x18, struct keel_evtchn_port)
#define KEEL_DOMAIN_EVTCHN_UNBIND _IOW(KEEL_IOCTL_TYPE, 0x19, struct keel_evtchn_port)
#define KEEL_DOMAIN_SET_MEMORY_MAP _IOW(KEEL_IOCTL_TYPE, 0x1a, struct keel_memory_map)
#define KEEL_DOMAIN_GRANT_COPY   _IOW(KEEL_IOCTL_TYPE, 0x1b, struct keel_grant_copy)
#define KEEL_DOMAIN_GRANT_MAP    _IOW(KEEL_IOCTL_TYPE, 0x1c, struct keel_grant_map) /* returns an fd */

#define KEEL_VCPU_GET_REGS       _IOR(KEEL_IOCTL_TYPE, 0x20, struct keel_regs)
#define KEEL_VCPU_SET_REGS       _IOW(KEEL_IOCTL_TYPE, 0x21, struct keel_regs)
#define KEEL_VCPU_GET_SREGS      _IOR(KEEL_IOCTL_TYPE, 0x22, struct keel_sregs)
#define KEEL_VCPU_SET_SREGS      _IOW(KEEL_IOCTL_TYPE, 0x23, struct keel_sregs)
#define KEEL_VCPU_RUN            _IOWR(KEEL_IOCTL_TYPE, 0x24, struct keel_run)

#endif /* _UAPI_LINUX_KEEL_H */

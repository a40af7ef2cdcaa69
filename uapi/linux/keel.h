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
#define KEEL_ABI_VERSION 1

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

#endif /* _UAPI_LINUX_KEEL_H */

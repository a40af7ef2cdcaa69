// SPDX-License-Identifier: GPL-2.0
//! Probing the CPU's virtualization extension at load time.
//!
//! This runs in module init, in ordinary kernel context. It reads CPUID, the capability MSRs and
//! CR4/EFER on the current CPU and leaves the decoding and the "usable?" decision to the core
//! crate. Only MSRs that the architecture guarantees to exist, given CPUID and the other
//! capability MSRs, are read.

use kernel::prelude::*;

use crate::keel_core::caps::{self, Caps, Unusable};
use crate::root::x86;

/// CPUID leaf `leaf`, subleaf 0: (eax, ebx, ecx, edx).
fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let [a, b, c, d] = x86::cpuid(leaf, 0);
    (a, b, c, d)
}

/// The largest extended CPUID leaf.
fn max_extended_leaf() -> u32 {
    cpuid(0x8000_0000).0
}

/// Probes this CPU and decides whether Keel can use it.
///
/// Errors: `ENODEV` without VMX or SVM, `EOPNOTSUPP` when the firmware disabled it or a needed
/// feature is missing (KVM's choice for "disabled by bios"), `EBUSY` when another hypervisor
/// already has it on.
pub(crate) fn probe() -> Result<Caps> {
    let ecx_ext = if max_extended_leaf() >= 0x8000_0001 {
        cpuid(0x8000_0001).2
    } else {
        0
    };
    let vendor = caps::detect_vendor(cpuid(1).2, ecx_ext);
    let name = vendor.map_or("VMX/SVM", crate::vendor::name);
    let result = vendor.and_then(crate::vendor::probe);
    match result {
        Ok(caps) => {
            pr_info!(
                "{} usable: revision {:#x}, capabilities {:#x}, {} tags, {} CPUs online\n",
                name,
                caps.revision,
                caps.flags,
                caps.nr_tags,
                online_cpus()
            );
            Ok(caps)
        }
        Err(Unusable::Absent) => {
            pr_err!("this CPU has neither Intel VMX nor AMD SVM: Keel cannot load\n");
            Err(ENODEV)
        }
        Err(Unusable::DisabledByFirmware) => Err(EOPNOTSUPP),
        Err(Unusable::InUse) => {
            pr_err!("{} is already in use by another hypervisor (is kvm loaded? rmmod kvm_intel kvm_amd)\n", name);
            Err(EBUSY)
        }
        Err(Unusable::MissingFeature(what)) => {
            pr_err!("{} lacks a feature Keel needs: {}\n", name, what);
            Err(EOPNOTSUPP)
        }
    }
}

/// The number of online CPUs.
pub(crate) fn online_cpus() -> u32 {
    // SAFETY: `__cpu_online_mask` is the kernel's static online mask, valid for the kernel's
    // lifetime; `cpumask_weight` only reads it.
    unsafe {
        kernel::bindings::cpumask_weight(
            (&raw const kernel::bindings::__cpu_online_mask).cast_mut(),
        )
    }
}

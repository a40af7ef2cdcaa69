// SPDX-License-Identifier: GPL-2.0
//! Probing the CPU's virtualization extension at load time.
//!
//! This runs in module init, in ordinary kernel context. It reads CPUID, the capability MSRs and
//! CR4/EFER on the current CPU and leaves the decoding and the "usable?" decision to the core
//! crate. Only MSRs that the architecture guarantees to exist, given CPUID and the other
//! capability MSRs, are read.

use kernel::prelude::*;

use crate::keel_core::caps::{self, msr, Caps, SvmLeaf, Unusable, Vendor, VmxMsrs};
use crate::x86::{self, rdmsr, read_cr4};

/// CPUID leaf `leaf`, subleaf 0: (eax, ebx, ecx, edx).
fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let [a, b, c, d] = x86::cpuid(leaf, 0);
    (a, b, c, d)
}

/// The largest extended CPUID leaf.
fn max_extended_leaf() -> u32 {
    cpuid(0x8000_0000).0
}

/// Reads the VMX capability MSRs (SDM Vol. 3D, Appendix A). The caller checked CPUID.1:ECX.VMX.
fn read_vmx_msrs() -> VmxMsrs {
    // SAFETY: With CPUID.1:ECX.VMX set, IA32_VMX_BASIC exists (SDM A.1).
    let basic = unsafe { rdmsr(msr::IA32_VMX_BASIC) };
    let pin_msr = if VmxMsrs::has_true_ctls(basic) {
        msr::IA32_VMX_TRUE_PINBASED_CTLS
    } else {
        msr::IA32_VMX_PINBASED_CTLS
    };
    // SAFETY: The pin-based control MSR exists with VMX; its TRUE variant exists when
    // IA32_VMX_BASIC bit 55 is set, which `has_true_ctls` checked (SDM A.3.1).
    let pinbased = unsafe { rdmsr(pin_msr) };
    // SAFETY: IA32_VMX_PROCBASED_CTLS exists with VMX (SDM A.3.2).
    let procbased = unsafe { rdmsr(msr::IA32_VMX_PROCBASED_CTLS) };
    let procbased2 = VmxMsrs::has_procbased2(procbased).then(|| {
        // SAFETY: IA32_VMX_PROCBASED_CTLS2 exists when the primary controls allow "activate
        // secondary controls" (SDM A.3.3), which `has_procbased2` checked.
        unsafe { rdmsr(msr::IA32_VMX_PROCBASED_CTLS2) }
    });
    let ept_vpid_cap = procbased2
        .filter(|&p2| VmxMsrs::has_ept_vpid_cap(p2))
        .map(|_| {
            // SAFETY: IA32_VMX_EPT_VPID_CAP exists when the secondary controls allow EPT or
            // VPID (SDM A.10), which `has_ept_vpid_cap` checked.
            unsafe { rdmsr(msr::IA32_VMX_EPT_VPID_CAP) }
        });
    VmxMsrs {
        basic,
        pinbased,
        procbased,
        procbased2,
        ept_vpid_cap,
    }
}

fn probe_vmx() -> Result<Caps, Unusable> {
    // SAFETY: IA32_FEATURE_CONTROL exists when CPUID.1:ECX.VMX is set (SDM Vol. 4, Table 2-2).
    let feature_control = unsafe { rdmsr(msr::IA32_FEATURE_CONTROL) };
    caps::vmx_usable(feature_control, read_cr4()).inspect_err(|e| {
        if *e == Unusable::DisabledByFirmware {
            pr_err!("VMX is disabled by the firmware (IA32_FEATURE_CONTROL={:#x}): enable Intel VT-x in the firmware setup\n", feature_control);
        }
    })?;
    let m = read_vmx_msrs();
    pr_info!(
        "VMX MSRs: basic={:#x} pinbased={:#x} procbased={:#x} procbased2={:#x} ept_vpid_cap={:#x}\n",
        m.basic,
        m.pinbased,
        m.procbased,
        m.procbased2.unwrap_or(0),
        m.ept_vpid_cap.unwrap_or(0)
    );
    m.decode()
}

fn probe_svm() -> Result<Caps, Unusable> {
    // SAFETY: VM_CR exists when CPUID.8000_0001h:ECX.SVM is set (APM Vol. 2, 15.30.1), and EFER
    // exists on every x86-64 CPU.
    let (vm_cr, efer) = unsafe { (rdmsr(msr::VM_CR), rdmsr(msr::EFER)) };
    caps::svm_usable(vm_cr, efer).inspect_err(|e| {
        if *e == Unusable::DisabledByFirmware {
            pr_err!("SVM is disabled by the firmware (VM_CR={:#x}): enable AMD-V (SVM) in the firmware setup\n", vm_cr);
        }
    })?;
    if max_extended_leaf() < 0x8000_000a {
        return Err(Unusable::MissingFeature("CPUID leaf 0x8000000a"));
    }
    let (eax, ebx, _, edx) = cpuid(0x8000_000a);
    pr_info!(
        "SVM leaf 0x8000000a: eax={:#x} ebx={:#x} edx={:#x}\n",
        eax,
        ebx,
        edx
    );
    let caps = SvmLeaf { eax, ebx, edx }.decode()?;
    Ok(caps::svm_add_host_paging(caps, cpuid(0x8000_0001).3))
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
    let name = match vendor {
        Ok(Vendor::Vmx) => "VMX",
        Ok(Vendor::Svm) => "SVM",
        Err(_) => "VMX/SVM",
    };
    let result = vendor.and_then(|v| match v {
        Vendor::Vmx => probe_vmx(),
        Vendor::Svm => probe_svm(),
    });
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

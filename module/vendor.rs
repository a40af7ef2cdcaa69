// SPDX-License-Identifier: GPL-2.0
//! Every difference between Intel VMX and AMD SVM on the Linux side, in one place: each
//! function here is one `match` on the vendor. Root mode has its own split (`root/vmx/`,
//! `root/svm/`) behind `root::hal`.

use kernel::prelude::*;

use crate::keel_core::{
    arch::msr,
    caps::{self, Caps, SvmLeaf, Unusable, Vendor, VmxMsrs},
    hypercall::Call,
    slat::Format,
    state,
};
use crate::root::{self, x86, CpuState};
use crate::uapi;

/// The name the log uses.
pub(crate) fn name(vendor: Vendor) -> &'static str {
    match vendor {
        Vendor::Vmx => "VMX",
        Vendor::Svm => "SVM",
    }
}

/// The uapi's vendor number (`KEEL_VENDOR_*`).
pub(crate) fn uapi_number(vendor: Vendor) -> u32 {
    match vendor {
        Vendor::Vmx => uapi::KEEL_VENDOR_VMX,
        Vendor::Svm => uapi::KEEL_VENDOR_SVM,
    }
}

/// Probes this CPU's extension: whether Keel can use it, and what it offers (the decoding
/// and the decision are the core crate's).
pub(crate) fn probe(vendor: Vendor) -> core::result::Result<Caps, Unusable> {
    let mut caps = match vendor {
        Vendor::Vmx => probe_vmx(),
        Vendor::Svm => probe_svm(),
    }?;
    caps.limits = guest_limits(vendor);
    Ok(caps)
}

/// What a guest's state may hold on this CPU: the CR4 bits of its features that Keel lets
/// guests use (on VMX, also those IA32_VMX_CR4_FIXED1 allows in VMX operation) and the
/// physical-address width.
fn guest_limits(vendor: Vendor) -> state::Limits {
    let mut cr4 = state::cr4_supported(x86::cpuid);
    if vendor == Vendor::Vmx {
        // SAFETY: IA32_VMX_CR4_FIXED1 exists on every VMX CPU (SDM A.8); the caller probed VMX.
        cr4 &= unsafe { x86::rdmsr(msr::IA32_VMX_CR4_FIXED1) };
    }
    let phys_bits = if x86::cpuid(0x8000_0000, 0)[0] >= 0x8000_0008 {
        (x86::cpuid(0x8000_0008, 0)[0] & 0xff) as u8
    } else {
        36
    };
    state::Limits { cr4, phys_bits }
}

/// Reads the VMX capability MSRs (SDM Vol. 3D, Appendix A). The caller checked CPUID.1:ECX.VMX.
fn read_vmx_msrs() -> VmxMsrs {
    // SAFETY: With CPUID.1:ECX.VMX set, IA32_VMX_BASIC exists (SDM A.1).
    let basic = unsafe { x86::rdmsr(msr::IA32_VMX_BASIC) };
    let pin_msr = if VmxMsrs::has_true_ctls(basic) {
        msr::IA32_VMX_TRUE_PINBASED_CTLS
    } else {
        msr::IA32_VMX_PINBASED_CTLS
    };
    // SAFETY: The pin-based control MSR exists with VMX; its TRUE variant exists when
    // IA32_VMX_BASIC bit 55 is set, which `has_true_ctls` checked (SDM A.3.1).
    let pinbased = unsafe { x86::rdmsr(pin_msr) };
    // SAFETY: IA32_VMX_PROCBASED_CTLS exists with VMX (SDM A.3.2).
    let procbased = unsafe { x86::rdmsr(msr::IA32_VMX_PROCBASED_CTLS) };
    let procbased2 = VmxMsrs::has_procbased2(procbased).then(|| {
        // SAFETY: IA32_VMX_PROCBASED_CTLS2 exists when the primary controls allow "activate
        // secondary controls" (SDM A.3.3), which `has_procbased2` checked.
        unsafe { x86::rdmsr(msr::IA32_VMX_PROCBASED_CTLS2) }
    });
    let ept_vpid_cap = procbased2
        .filter(|&p2| VmxMsrs::has_ept_vpid_cap(p2))
        .map(|_| {
            // SAFETY: IA32_VMX_EPT_VPID_CAP exists when the secondary controls allow EPT or
            // VPID (SDM A.10), which `has_ept_vpid_cap` checked.
            unsafe { x86::rdmsr(msr::IA32_VMX_EPT_VPID_CAP) }
        });
    VmxMsrs {
        basic,
        pinbased,
        procbased,
        procbased2,
        ept_vpid_cap,
    }
}

/// Probes VMX on this CPU: usable (IA32_FEATURE_CONTROL, CR4.VMXE) and its capabilities.
fn probe_vmx() -> Result<Caps, Unusable> {
    // SAFETY: IA32_FEATURE_CONTROL exists when CPUID.1:ECX.VMX is set (SDM Vol. 4, Table 2-2).
    let feature_control = unsafe { x86::rdmsr(msr::IA32_FEATURE_CONTROL) };
    caps::vmx_usable(feature_control, x86::read_cr4()).inspect_err(|e| {
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

/// Probes SVM on this CPU: usable (VM_CR, EFER.SVME) and its capabilities.
fn probe_svm() -> Result<Caps, Unusable> {
    // SAFETY: VM_CR exists when CPUID.8000_0001h:ECX.SVM is set (APM Vol. 2, 15.30.1), and EFER
    // exists on every x86-64 CPU.
    let (vm_cr, efer) = unsafe { (x86::rdmsr(msr::VM_CR), x86::rdmsr(msr::EFER)) };
    caps::svm_usable(vm_cr, efer).inspect_err(|e| {
        if *e == Unusable::DisabledByFirmware {
            pr_err!("SVM is disabled by the firmware (VM_CR={:#x}): enable AMD-V (SVM) in the firmware setup\n", vm_cr);
        }
    })?;
    if x86::cpuid(0x8000_0000, 0)[0] < 0x8000_000a {
        return Err(Unusable::MissingFeature("CPUID leaf 0x8000000a"));
    }
    let [eax, ebx, _, edx] = x86::cpuid(0x8000_000a, 0);
    pr_info!(
        "SVM leaf 0x8000000a: eax={:#x} ebx={:#x} edx={:#x}\n",
        eax,
        ebx,
        edx
    );
    let caps = SvmLeaf { eax, ebx, edx }.decode()?;
    Ok(caps::svm_add_host_paging(
        caps,
        x86::cpuid(0x8000_0001, 0)[3],
    ))
}

/// Linux's x86 feature bit of the extension (`asm/cpufeatures.h`), which Keel clears while it
/// owns it: word 4 bit 5 is VMX, word 6 bit 2 is SVM.
pub(crate) fn feature_bit(vendor: Vendor) -> (usize, u32) {
    match vendor {
        Vendor::Vmx => (4, 5),
        Vendor::Svm => (6, 2),
    }
}

/// The second-level page-table format.
pub(crate) fn slat_format(vendor: Vendor) -> Format {
    match vendor {
        Vendor::Vmx => Format::Ept,
        Vendor::Svm => Format::Npt,
    }
}

/// Whether Keel can run domains on these capabilities: EPT/NPT and, on VMX, unrestricted
/// guest (domains start in real mode).
pub(crate) fn runs_domains(caps: &Caps) -> bool {
    use crate::keel_core::caps::flags;
    caps.has(flags::SLAT)
        && match caps.vendor {
            Vendor::Vmx => caps.has(flags::UNRESTRICTED_GUEST),
            Vendor::Svm => true,
        }
}

/// Makes one of Keel's own hypercalls on this CPU, with `arg` in RDI; returns RAX.
///
/// # Safety
///
/// This CPU runs beneath Keel, which handles the call and returns here with every register
/// but RAX unchanged (a Leave returns on bare metal), and `arg` is what `call` expects: for
/// Run, a vCPU state the caller holds for the call, with interrupts off.
pub(crate) unsafe fn hypercall(vendor: Vendor, call: Call, arg: u64) -> u64 {
    let mut rax = call.rax();
    // SAFETY: The caller's contract.
    unsafe {
        match vendor {
            Vendor::Vmx => core::arch::asm!("vmcall", inout("rax") rax, in("rdi") arg),
            Vendor::Svm => core::arch::asm!("vmmcall", inout("rax") rax, in("rdi") arg),
        }
    }
    rax
}

/// Slides Keel under this CPU (see `root::vmx::dom0::launch` and `root::svm::dom0::launch`);
/// a failure is logged.
///
/// # Safety
///
/// As for the vendors' `launch`: interrupts are off, `state` is this CPU's, zeroed but for
/// `info`, and `host_cr3` maps the kernel for as long as Keel is loaded.
pub(crate) unsafe fn launch(
    vendor: Vendor,
    state: &mut CpuState,
    host_cr3: u64,
    corrupt: bool,
    cpu: u32,
) -> Result {
    // SAFETY: The caller's contract.
    let result = unsafe {
        match vendor {
            Vendor::Vmx => root::vmx::dom0::launch(state, host_cr3, corrupt)
                .map_err(|e| pr_err!("CPU {}: VMX launch failed: {:?}\n", cpu, e)),
            Vendor::Svm => root::svm::dom0::launch(state, host_cr3, corrupt)
                .map_err(|e| pr_err!("CPU {}: SVM launch failed: {:?}\n", cpu, e)),
        }
    };
    result.map_err(|()| EIO)
}

/// Whether leaving the extension (or a failed first entry, which went through a VM exit)
/// clobbered TR's limit, which the caller must then reload: VM exits set it to 0x67 (SDM
/// 28.5.2); SVM's #VMEXIT restores the host's TR as it was.
pub(crate) fn leaving_clobbers_tr(vendor: Vendor) -> bool {
    match vendor {
        Vendor::Vmx => true,
        Vendor::Svm => false,
    }
}

/// Runs an instruction that may fault in Dom0, with an entry in the kernel's exception table
/// (Linux's layout: the instruction and the fixup as offsets from the entry, then type 1,
/// EX_TYPE_DEFAULT), so that an exception becomes a jump to label 3; evaluates to whether it
/// faulted.
macro_rules! insn_faulted {
    ($insn:literal $(, $($operands:tt)*)?) => {{
        let faulted: u32;
        core::arch::asm!(
            "xor {f:e}, {f:e}",
            concat!("2: ", $insn),
            "jmp 4f",
            "3: mov {f:e}, 1",
            "4:",
            ".pushsection __ex_table, \"aM\", @progbits, 12",
            ".balign 4",
            ".long 2b - .",
            ".long 3b - .",
            ".long 1",
            ".popsection",
            f = out(reg) faulted,
            $($($operands)*)?
        );
        faulted != 0
    }};
}
pub(crate) use insn_faulted;

/// Testing only: runs the vendor's VMXON or VMRUN in Dom0 with an operand no VMM accepts;
/// returns whether it faulted (Keel answers both with #UD).
///
/// # Safety
///
/// This CPU runs beneath Keel, with interrupts off.
pub(crate) unsafe fn virt_insn_faults(vendor: Vendor) -> bool {
    // Physical address 0 is never a valid VMXON region or VMCB of Keel's.
    let pa = 0u64;
    // SAFETY: The caller's contract: VMXON always exits in VMX non-root operation, and SVM
    // requires the VMRUN intercept; Keel raises #UD, which the exception-table entry catches.
    unsafe {
        match vendor {
            Vendor::Vmx => insn_faulted!("vmxon [{pa}]", pa = in(reg) &raw const pa),
            Vendor::Svm => insn_faulted!("vmrun rax", in("rax") pa),
        }
    }
}

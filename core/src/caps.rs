//! Decoding the hardware's virtualization capabilities.
//!
//! Intel reports VMX features in the VMX capability MSRs (SDM Vol. 3D, Appendix A); AMD reports
//! SVM features in CPUID leaf 0x8000_000A (APM Vol. 3, Appendix E.4.9). The module reads the raw
//! values on a CPU and hands them here; the decoding and the "can Keel use this CPU" decision
//! are plain functions so they can be tested with values read off real and emulated CPUs.

use super::arch::{cr4, efer, feature_control};

/// CPUID.1:ECX.VMX (SDM Vol. 2A, Table 3-10).
pub const CPUID_1_ECX_VMX: u32 = 1 << 5;
/// CPUID.8000_0001h:ECX.SVM (APM Vol. 3, E.4.2).
pub const CPUID_8000_0001_ECX_SVM: u32 = 1 << 2;
const VM_CR_SVMDIS: u64 = 1 << 4;

/// The virtualization extension a CPU offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// Intel VT-x.
    Vmx,
    /// AMD-V.
    Svm,
}

/// Why a CPU cannot host Keel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// The CPU has neither VMX nor SVM.
    Absent,
    /// The CPU has the extension but the firmware switched it off (IA32_FEATURE_CONTROL locked
    /// without VMX outside SMX, or VM_CR.SVMDIS set).
    DisabledByFirmware,
    /// Another hypervisor (KVM, say) already has VMX or SVM on (CR4.VMXE or EFER.SVME is set).
    InUse,
    /// The extension lacks a feature Keel cannot do without; the string names it.
    MissingFeature(&'static str),
}

/// Capability bits; the values are those of `KEEL_CAP_*` in `uapi/linux/keel.h` (the module
/// checks that at compile time).
pub mod flags {
    /// EPT or NPT usable by Keel (4-level walk, write-back paging structures).
    pub const SLAT: u64 = 1 << 0;
    /// VPID or ASIDs.
    pub const TAGGED_TLB: u64 = 1 << 1;
    /// Guests may run unpaged or in real mode.
    pub const UNRESTRICTED_GUEST: u64 = 1 << 2;
    /// The VMX-preemption timer.
    pub const PREEMPTION_TIMER: u64 = 1 << 3;
    /// SVM saves the next RIP on intercepts.
    pub const NRIP_SAVE: u64 = 1 << 4;
    /// 2 MiB second-level pages.
    pub const SLAT_2M: u64 = 1 << 5;
    /// 1 GiB second-level pages.
    pub const SLAT_1G: u64 = 1 << 6;
    /// SVM VMCB clean bits.
    pub const VMCB_CLEAN: u64 = 1 << 7;
    /// SVM decode assists.
    pub const DECODE_ASSISTS: u64 = 1 << 8;
    /// SVM flush by ASID.
    pub const FLUSH_BY_ASID: u64 = 1 << 9;
}

/// A CPU's virtualization capabilities, as Keel uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Which extension.
    pub vendor: Vendor,
    /// `flags::*` bits.
    pub flags: u64,
    /// VPIDs or ASIDs available to guests (0 when the CPU has none).
    pub nr_tags: u32,
    /// VMCS revision identifier (VMX) or SVM revision (SVM).
    pub revision: u32,
    /// Size in bytes of the VMXON region and of a VMCS (VMX); 4096 on SVM (VMCB, host-save area).
    pub region_size: u32,
    /// What a guest's state may hold on this CPU: the decoders give the least every x86-64
    /// CPU has; the prober widens it from CPUID (and VMX's CR4 fixed bits).
    pub limits: super::state::Limits,
}

/// The guest-state limits every x86-64 CPU allows.
pub const BASE_LIMITS: super::state::Limits = super::state::Limits {
    cr4: super::state::cr4_bits::BASE,
    phys_bits: 36,
};

impl Caps {
    /// Whether every bit of `f` is set.
    pub fn has(&self, f: u64) -> bool {
        self.flags & f == f
    }
}

/// Which extension the CPU offers, from CPUID.1:ECX and CPUID.8000_0001h:ECX.
pub fn detect_vendor(cpuid_1_ecx: u32, cpuid_8000_0001_ecx: u32) -> Result<Vendor, Unusable> {
    if cpuid_1_ecx & CPUID_1_ECX_VMX != 0 {
        Ok(Vendor::Vmx)
    } else if cpuid_8000_0001_ecx & CPUID_8000_0001_ECX_SVM != 0 {
        Ok(Vendor::Svm)
    } else {
        Err(Unusable::Absent)
    }
}

/// Whether VMX may be turned on, given IA32_FEATURE_CONTROL and CR4 (SDM Vol. 3C, 24.7).
///
/// An unlocked IA32_FEATURE_CONTROL is usable: whoever launches sets and locks it.
pub fn vmx_usable(feature_control: u64, cr4: u64) -> Result<(), Unusable> {
    if feature_control & feature_control::LOCKED != 0
        && feature_control & feature_control::VMX_OUTSIDE_SMX == 0
    {
        return Err(Unusable::DisabledByFirmware);
    }
    if cr4 & cr4::VMXE != 0 {
        return Err(Unusable::InUse);
    }
    Ok(())
}

/// Whether SVM may be turned on, given VM_CR and EFER (APM Vol. 2, 15.4).
pub fn svm_usable(vm_cr: u64, efer: u64) -> Result<(), Unusable> {
    if vm_cr & VM_CR_SVMDIS != 0 {
        return Err(Unusable::DisabledByFirmware);
    }
    if efer & efer::SVME != 0 {
        return Err(Unusable::InUse);
    }
    Ok(())
}

/// The raw VMX capability MSRs. Optional MSRs are `None` when the architecture says they do not
/// exist (see [`VmxMsrs::has_procbased2`], [`VmxMsrs::has_ept_vpid_cap`],
/// [`VmxMsrs::has_true_ctls`]): reading them would fault.
#[derive(Clone, Copy, Debug, Default)]
pub struct VmxMsrs {
    /// IA32_VMX_BASIC.
    pub basic: u64,
    /// IA32_VMX_PINBASED_CTLS, or IA32_VMX_TRUE_PINBASED_CTLS when the CPU has the true controls.
    pub pinbased: u64,
    /// IA32_VMX_PROCBASED_CTLS.
    pub procbased: u64,
    /// IA32_VMX_PROCBASED_CTLS2.
    pub procbased2: Option<u64>,
    /// IA32_VMX_EPT_VPID_CAP.
    pub ept_vpid_cap: Option<u64>,
}

const BASIC_TRUE_CTLS: u64 = 1 << 55;
const BASIC_MEMTYPE_SHIFT: u32 = 50;
const MEMTYPE_WB: u64 = 6;
const PIN_PREEMPTION_TIMER: u32 = 1 << 6;
const PROC_SECONDARY_CONTROLS: u32 = 1 << 31;
const PROC2_EPT: u32 = 1 << 1;
const PROC2_VPID: u32 = 1 << 5;
const PROC2_UNRESTRICTED_GUEST: u32 = 1 << 7;
const EPT_WALK_4: u64 = 1 << 6;
const EPT_MEMTYPE_WB: u64 = 1 << 14;
const EPT_2M: u64 = 1 << 16;
const EPT_1G: u64 = 1 << 17;
const EPT_INVEPT: u64 = 1 << 20;
const EPT_INVVPID: u64 = 1 << 32;

/// The allowed-1 settings of a VMX control MSR: bits 63:32 (SDM Vol. 3D, A.3).
fn allowed1(ctls: u64) -> u32 {
    (ctls >> 32) as u32
}

impl VmxMsrs {
    /// Whether IA32_VMX_TRUE_*_CTLS exist (IA32_VMX_BASIC bit 55).
    pub fn has_true_ctls(basic: u64) -> bool {
        basic & BASIC_TRUE_CTLS != 0
    }

    /// Whether IA32_VMX_PROCBASED_CTLS2 exists (allowed-1 bit 31 of the primary controls).
    pub fn has_procbased2(procbased: u64) -> bool {
        allowed1(procbased) & PROC_SECONDARY_CONTROLS != 0
    }

    /// Whether IA32_VMX_EPT_VPID_CAP exists (EPT or VPID may be enabled).
    pub fn has_ept_vpid_cap(procbased2: u64) -> bool {
        allowed1(procbased2) & (PROC2_EPT | PROC2_VPID) != 0
    }

    /// Decodes the MSRs into Keel's capability set.
    pub fn decode(&self) -> Result<Caps, Unusable> {
        if (self.basic >> BASIC_MEMTYPE_SHIFT) & 0xf != MEMTYPE_WB {
            return Err(Unusable::MissingFeature("write-back VMCS memory type"));
        }
        let proc2 = self.procbased2.map_or(0, allowed1);
        let ept = self.ept_vpid_cap.unwrap_or(0);
        let mut flags = 0;
        let ept_usable = proc2 & PROC2_EPT != 0
            && ept & (EPT_WALK_4 | EPT_MEMTYPE_WB | EPT_INVEPT)
                == (EPT_WALK_4 | EPT_MEMTYPE_WB | EPT_INVEPT);
        if ept_usable {
            flags |= flags::SLAT;
            if ept & EPT_2M != 0 {
                flags |= flags::SLAT_2M;
            }
            if ept & EPT_1G != 0 {
                flags |= flags::SLAT_1G;
            }
            // Unrestricted guest requires EPT (SDM Vol. 3C, 26.2.1.1).
            if proc2 & PROC2_UNRESTRICTED_GUEST != 0 {
                flags |= flags::UNRESTRICTED_GUEST;
            }
        }
        let vpid = proc2 & PROC2_VPID != 0 && ept & EPT_INVVPID != 0;
        if vpid {
            flags |= flags::TAGGED_TLB;
        }
        if allowed1(self.pinbased) & PIN_PREEMPTION_TIMER != 0 {
            flags |= flags::PREEMPTION_TIMER;
        }
        Ok(Caps {
            vendor: Vendor::Vmx,
            flags,
            // VPID 0 is the host's; guests get 1..=0xffff.
            nr_tags: if vpid { 0xffff } else { 0 },
            revision: (self.basic & 0x7fff_ffff) as u32,
            region_size: ((self.basic >> 32) & 0x1fff) as u32,
            limits: BASE_LIMITS,
        })
    }
}

/// The raw SVM feature leaf, CPUID 8000_000Ah (APM Vol. 3, E.4.9).
#[derive(Clone, Copy, Debug, Default)]
pub struct SvmLeaf {
    /// EAX: SVM revision in bits 7:0.
    pub eax: u32,
    /// EBX: number of ASIDs.
    pub ebx: u32,
    /// EDX: feature bits.
    pub edx: u32,
}

const SVM_NP: u32 = 1 << 0;
const SVM_NRIPS: u32 = 1 << 3;
const SVM_VMCB_CLEAN: u32 = 1 << 5;
const SVM_FLUSH_BY_ASID: u32 = 1 << 6;
const SVM_DECODE_ASSISTS: u32 = 1 << 7;

impl SvmLeaf {
    /// Decodes the leaf into Keel's capability set.
    pub fn decode(&self) -> Result<Caps, Unusable> {
        // SVM runs real-mode and unpaged guests natively, and every NPT supports 2 MiB pages
        // (APM Vol. 2, 15.25.1); 1 GiB NPT pages follow the host's 1 GiB page support, which
        // the caller adds.
        let mut flags = flags::UNRESTRICTED_GUEST;
        let map = [
            (SVM_NP, flags::SLAT | flags::SLAT_2M),
            (SVM_NRIPS, flags::NRIP_SAVE),
            (SVM_VMCB_CLEAN, flags::VMCB_CLEAN),
            (SVM_FLUSH_BY_ASID, flags::FLUSH_BY_ASID),
            (SVM_DECODE_ASSISTS, flags::DECODE_ASSISTS),
        ];
        for (bit, f) in map {
            if self.edx & bit != 0 {
                flags |= f;
            }
        }
        // ASID 0 is the host's.
        let nr_tags = self.ebx.saturating_sub(1);
        if nr_tags > 0 {
            flags |= flags::TAGGED_TLB;
        }
        Ok(Caps {
            vendor: Vendor::Svm,
            flags,
            nr_tags,
            revision: self.eax & 0xff,
            region_size: 4096,
            limits: BASE_LIMITS,
        })
    }
}

/// CPUID.8000_0001h:EDX.Page1GB: 1 GiB pages, which NPT inherits from the host's paging.
pub const CPUID_8000_0001_EDX_PAGE1GB: u32 = 1 << 26;

/// Adds what SVM inherits from the host's paging to `caps`.
pub fn svm_add_host_paging(mut caps: Caps, cpuid_8000_0001_edx: u32) -> Caps {
    if caps.has(flags::SLAT) && cpuid_8000_0001_edx & CPUID_8000_0001_EDX_PAGE1GB != 0 {
        caps.flags |= flags::SLAT_1G;
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read off Bochs 2.7 (`corei7_haswell_4770`) by keel.ko's load-time log line.
    fn bochs_haswell() -> VmxMsrs {
        VmxMsrs {
            basic: 0x00d8_1000_0000_002b,
            pinbased: 0x0000_007f_0000_0016,
            procbased: 0xf7f9_fffe_0401_e172,
            procbased2: Some(0x0004_7fff_0000_0000),
            ept_vpid_cap: Some(0x0000_0f01_0633_4141),
        }
    }

    #[test]
    fn vendor_from_cpuid() {
        assert_eq!(detect_vendor(CPUID_1_ECX_VMX, 0), Ok(Vendor::Vmx));
        assert_eq!(detect_vendor(0, CPUID_8000_0001_ECX_SVM), Ok(Vendor::Svm));
        assert_eq!(
            detect_vendor(!CPUID_1_ECX_VMX, !CPUID_8000_0001_ECX_SVM),
            Err(Unusable::Absent)
        );
    }

    #[test]
    fn vmx_feature_control() {
        // Locked with VMX outside SMX: usable.
        assert_eq!(vmx_usable(0x5, 0), Ok(()));
        // Locked without it: the firmware switched VMX off.
        assert_eq!(vmx_usable(0x1, 0), Err(Unusable::DisabledByFirmware));
        // Unlocked: the launcher may enable it.
        assert_eq!(vmx_usable(0x0, 0), Ok(()));
        // CR4.VMXE already on: KVM or another hypervisor has VMX.
        assert_eq!(vmx_usable(0x5, cr4::VMXE), Err(Unusable::InUse));
    }

    #[test]
    fn svm_vm_cr_and_efer() {
        assert_eq!(svm_usable(0, 0xd01), Ok(()));
        assert_eq!(
            svm_usable(VM_CR_SVMDIS, 0),
            Err(Unusable::DisabledByFirmware)
        );
        assert_eq!(svm_usable(0, efer::SVME | 0xd01), Err(Unusable::InUse));
    }

    #[test]
    fn optional_vmx_msrs() {
        let m = bochs_haswell();
        assert!(VmxMsrs::has_true_ctls(m.basic));
        assert!(VmxMsrs::has_procbased2(m.procbased));
        assert!(VmxMsrs::has_ept_vpid_cap(m.procbased2.unwrap()));
        assert!(!VmxMsrs::has_procbased2(0x0401_e172));
        assert!(!VmxMsrs::has_ept_vpid_cap(0));
    }

    #[test]
    fn vmx_haswell_decodes() {
        let caps = bochs_haswell().decode().unwrap();
        assert_eq!(caps.vendor, Vendor::Vmx);
        assert_eq!(caps.revision, 0x2b);
        assert_eq!(caps.region_size, 0x1000);
        assert!(caps.has(flags::SLAT_1G));
        assert_eq!(caps.nr_tags, 0xffff);
        for f in [
            flags::SLAT,
            flags::SLAT_2M,
            flags::TAGGED_TLB,
            flags::UNRESTRICTED_GUEST,
            flags::PREEMPTION_TIMER,
        ] {
            assert!(caps.has(f), "missing {f:#x} in {:#x}", caps.flags);
        }
        assert!(!caps.has(flags::NRIP_SAVE));
    }

    #[test]
    fn vmx_without_secondary_controls() {
        let mut m = bochs_haswell();
        m.procbased &= !((PROC_SECONDARY_CONTROLS as u64) << 32);
        m.procbased2 = None;
        m.ept_vpid_cap = None;
        let caps = m.decode().unwrap();
        assert_eq!(
            caps.flags & (flags::SLAT | flags::TAGGED_TLB | flags::UNRESTRICTED_GUEST),
            0
        );
        assert_eq!(caps.nr_tags, 0);
    }

    #[test]
    fn vmx_ept_needs_walk4_and_wb() {
        let mut m = bochs_haswell();
        m.ept_vpid_cap = Some(m.ept_vpid_cap.unwrap() & !EPT_MEMTYPE_WB);
        let caps = m.decode().unwrap();
        assert!(!caps.has(flags::SLAT));
        // Unrestricted guest needs EPT.
        assert!(!caps.has(flags::UNRESTRICTED_GUEST));
    }

    #[test]
    fn vmx_uncacheable_vmcs_is_refused() {
        let mut m = bochs_haswell();
        m.basic &= !(0xf << BASIC_MEMTYPE_SHIFT);
        assert!(matches!(m.decode(), Err(Unusable::MissingFeature(_))));
    }

    #[test]
    fn svm_qemu_tcg_decodes() {
        // Read off QEMU 10 TCG with `-cpu qemu64,+svm,+npt`: revision 1, 16 ASIDs, NPT only.
        let leaf = SvmLeaf {
            eax: 1,
            ebx: 0x10,
            edx: 0x1,
        };
        let caps = leaf.decode().unwrap();
        assert_eq!(caps.vendor, Vendor::Svm);
        assert_eq!(caps.revision, 1);
        assert_eq!(caps.nr_tags, 15);
        assert!(
            caps.has(flags::SLAT | flags::SLAT_2M | flags::TAGGED_TLB | flags::UNRESTRICTED_GUEST)
        );
        assert_eq!(
            caps.flags & (flags::NRIP_SAVE | flags::DECODE_ASSISTS | flags::VMCB_CLEAN),
            0
        );
        assert!(!caps.has(flags::SLAT_1G));
        assert!(svm_add_host_paging(caps, CPUID_8000_0001_EDX_PAGE1GB).has(flags::SLAT_1G));
    }

    #[test]
    fn svm_full_featured() {
        let leaf = SvmLeaf {
            eax: 1,
            ebx: 0x8000,
            edx: 0xff,
        };
        let caps = leaf.decode().unwrap();
        assert!(caps.has(
            flags::NRIP_SAVE | flags::VMCB_CLEAN | flags::DECODE_ASSISTS | flags::FLUSH_BY_ASID
        ));
        assert_eq!(caps.nr_tags, 0x7fff);
    }

    #[test]
    fn svm_without_npt_or_asids() {
        let caps = SvmLeaf {
            eax: 1,
            ebx: 1,
            edx: 0,
        }
        .decode()
        .unwrap();
        assert!(!caps.has(flags::SLAT));
        assert!(!caps.has(flags::TAGGED_TLB));
        assert_eq!(
            svm_add_host_paging(caps, CPUID_8000_0001_EDX_PAGE1GB).flags & flags::SLAT_1G,
            0
        );
    }
}

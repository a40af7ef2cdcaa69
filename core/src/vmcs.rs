//! VMX: VMCS field encodings, control bits and the decoding of exit information.
//!
//! Encodings are from the SDM Vol. 3D, Appendix B; control bits from Vol. 3C, chapter 25
//! ("VM-execution control fields") and chapter 26 ("VM-exit/VM-entry control fields"). Names
//! follow the SDM (and Linux's `asm/vmx.h`, which uses the same ones).

/// The width of a VMCS field, from bits 14:13 of its encoding (SDM B.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 16-bit field.
    W16,
    /// 64-bit field (full access).
    W64,
    /// 32-bit field.
    W32,
    /// Natural width (64 bits on an x86-64 host).
    Natural,
}

/// The width encoded in a field number.
pub const fn width(field: u32) -> Width {
    match (field >> 13) & 3 {
        0 => Width::W16,
        1 => Width::W64,
        2 => Width::W32,
        _ => Width::Natural,
    }
}

/// VMCS field encodings.
#[expect(
    missing_docs,
    reason = "the names are the SDM's; Appendix B documents each field"
)]
pub mod field {
    // 16-bit guest-state fields.
    pub const GUEST_ES_SELECTOR: u32 = 0x0800;
    pub const GUEST_CS_SELECTOR: u32 = 0x0802;
    pub const GUEST_SS_SELECTOR: u32 = 0x0804;
    pub const GUEST_DS_SELECTOR: u32 = 0x0806;
    pub const GUEST_FS_SELECTOR: u32 = 0x0808;
    pub const GUEST_GS_SELECTOR: u32 = 0x080a;
    pub const GUEST_LDTR_SELECTOR: u32 = 0x080c;
    pub const GUEST_TR_SELECTOR: u32 = 0x080e;
    // 16-bit host-state fields.
    pub const HOST_ES_SELECTOR: u32 = 0x0c00;
    pub const HOST_CS_SELECTOR: u32 = 0x0c02;
    pub const HOST_SS_SELECTOR: u32 = 0x0c04;
    pub const HOST_DS_SELECTOR: u32 = 0x0c06;
    pub const HOST_FS_SELECTOR: u32 = 0x0c08;
    pub const HOST_GS_SELECTOR: u32 = 0x0c0a;
    pub const HOST_TR_SELECTOR: u32 = 0x0c0c;
    // 64-bit control fields.
    pub const MSR_BITMAP: u32 = 0x2004;
    pub const EPT_POINTER: u32 = 0x201a;
    pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
    // 64-bit guest-state fields.
    pub const VMCS_LINK_POINTER: u32 = 0x2800;
    pub const GUEST_IA32_DEBUGCTL: u32 = 0x2802;
    pub const GUEST_IA32_PAT: u32 = 0x2804;
    pub const GUEST_IA32_EFER: u32 = 0x2806;
    // 64-bit host-state fields.
    pub const HOST_IA32_PAT: u32 = 0x2c00;
    pub const HOST_IA32_EFER: u32 = 0x2c02;
    // 32-bit control fields.
    pub const PIN_BASED_VM_EXEC_CONTROL: u32 = 0x4000;
    pub const CPU_BASED_VM_EXEC_CONTROL: u32 = 0x4002;
    pub const EXCEPTION_BITMAP: u32 = 0x4004;
    pub const PAGE_FAULT_ERROR_CODE_MASK: u32 = 0x4006;
    pub const PAGE_FAULT_ERROR_CODE_MATCH: u32 = 0x4008;
    pub const CR3_TARGET_COUNT: u32 = 0x400a;
    pub const VM_EXIT_CONTROLS: u32 = 0x400c;
    pub const VM_EXIT_MSR_STORE_COUNT: u32 = 0x400e;
    pub const VM_EXIT_MSR_LOAD_COUNT: u32 = 0x4010;
    pub const VM_ENTRY_CONTROLS: u32 = 0x4012;
    pub const VM_ENTRY_MSR_LOAD_COUNT: u32 = 0x4014;
    pub const VM_ENTRY_INTR_INFO_FIELD: u32 = 0x4016;
    pub const VM_ENTRY_EXCEPTION_ERROR_CODE: u32 = 0x4018;
    pub const VM_ENTRY_INSTRUCTION_LEN: u32 = 0x401a;
    pub const SECONDARY_VM_EXEC_CONTROL: u32 = 0x401e;
    // 32-bit read-only data fields.
    pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
    pub const VM_EXIT_REASON: u32 = 0x4402;
    pub const VM_EXIT_INTR_INFO: u32 = 0x4404;
    pub const IDT_VECTORING_INFO_FIELD: u32 = 0x4408;
    pub const IDT_VECTORING_ERROR_CODE: u32 = 0x440a;
    pub const VM_EXIT_INSTRUCTION_LEN: u32 = 0x440c;
    // 32-bit guest-state fields.
    pub const GUEST_ES_LIMIT: u32 = 0x4800;
    pub const GUEST_CS_LIMIT: u32 = 0x4802;
    pub const GUEST_SS_LIMIT: u32 = 0x4804;
    pub const GUEST_DS_LIMIT: u32 = 0x4806;
    pub const GUEST_FS_LIMIT: u32 = 0x4808;
    pub const GUEST_GS_LIMIT: u32 = 0x480a;
    pub const GUEST_LDTR_LIMIT: u32 = 0x480c;
    pub const GUEST_TR_LIMIT: u32 = 0x480e;
    pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
    pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
    pub const GUEST_ES_AR_BYTES: u32 = 0x4814;
    pub const GUEST_CS_AR_BYTES: u32 = 0x4816;
    pub const GUEST_SS_AR_BYTES: u32 = 0x4818;
    pub const GUEST_DS_AR_BYTES: u32 = 0x481a;
    pub const GUEST_FS_AR_BYTES: u32 = 0x481c;
    pub const GUEST_GS_AR_BYTES: u32 = 0x481e;
    pub const GUEST_LDTR_AR_BYTES: u32 = 0x4820;
    pub const GUEST_TR_AR_BYTES: u32 = 0x4822;
    pub const GUEST_INTERRUPTIBILITY_INFO: u32 = 0x4824;
    pub const GUEST_ACTIVITY_STATE: u32 = 0x4826;
    pub const GUEST_SYSENTER_CS: u32 = 0x482a;
    pub const VMX_PREEMPTION_TIMER_VALUE: u32 = 0x482e;
    // 32-bit host-state field.
    pub const HOST_IA32_SYSENTER_CS: u32 = 0x4c00;
    // Natural-width control fields.
    pub const CR0_GUEST_HOST_MASK: u32 = 0x6000;
    pub const CR4_GUEST_HOST_MASK: u32 = 0x6002;
    pub const CR0_READ_SHADOW: u32 = 0x6004;
    pub const CR4_READ_SHADOW: u32 = 0x6006;
    // Natural-width read-only data fields.
    pub const EXIT_QUALIFICATION: u32 = 0x6400;
    pub const GUEST_LINEAR_ADDRESS: u32 = 0x640a;
    // Natural-width guest-state fields.
    pub const GUEST_CR0: u32 = 0x6800;
    pub const GUEST_CR3: u32 = 0x6802;
    pub const GUEST_CR4: u32 = 0x6804;
    pub const GUEST_ES_BASE: u32 = 0x6806;
    pub const GUEST_CS_BASE: u32 = 0x6808;
    pub const GUEST_SS_BASE: u32 = 0x680a;
    pub const GUEST_DS_BASE: u32 = 0x680c;
    pub const GUEST_FS_BASE: u32 = 0x680e;
    pub const GUEST_GS_BASE: u32 = 0x6810;
    pub const GUEST_LDTR_BASE: u32 = 0x6812;
    pub const GUEST_TR_BASE: u32 = 0x6814;
    pub const GUEST_GDTR_BASE: u32 = 0x6816;
    pub const GUEST_IDTR_BASE: u32 = 0x6818;
    pub const GUEST_DR7: u32 = 0x681a;
    pub const GUEST_RSP: u32 = 0x681c;
    pub const GUEST_RIP: u32 = 0x681e;
    pub const GUEST_RFLAGS: u32 = 0x6820;
    pub const GUEST_PENDING_DBG_EXCEPTIONS: u32 = 0x6822;
    pub const GUEST_SYSENTER_ESP: u32 = 0x6824;
    pub const GUEST_SYSENTER_EIP: u32 = 0x6826;
    // Natural-width host-state fields.
    pub const HOST_CR0: u32 = 0x6c00;
    pub const HOST_CR3: u32 = 0x6c02;
    pub const HOST_CR4: u32 = 0x6c04;
    pub const HOST_FS_BASE: u32 = 0x6c06;
    pub const HOST_GS_BASE: u32 = 0x6c08;
    pub const HOST_TR_BASE: u32 = 0x6c0a;
    pub const HOST_GDTR_BASE: u32 = 0x6c0c;
    pub const HOST_IDTR_BASE: u32 = 0x6c0e;
    pub const HOST_IA32_SYSENTER_ESP: u32 = 0x6c10;
    pub const HOST_IA32_SYSENTER_EIP: u32 = 0x6c12;
    pub const HOST_RSP: u32 = 0x6c14;
    pub const HOST_RIP: u32 = 0x6c16;
}

/// Pin-based VM-execution controls (SDM Table 25-5).
pub mod pin_based {
    /// External interrupts cause VM exits.
    pub const EXT_INTR_EXITING: u32 = 1 << 0;
    /// NMIs cause VM exits.
    pub const NMI_EXITING: u32 = 1 << 3;
    /// The VMX-preemption timer counts down in the guest and exits at zero.
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
}

/// Primary processor-based VM-execution controls (SDM Table 25-6).
pub mod cpu_based {
    /// HLT exits.
    pub const HLT_EXITING: u32 = 1 << 7;
    /// MWAIT exits.
    pub const MWAIT_EXITING: u32 = 1 << 10;
    /// MOV to CR3 exits.
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    /// MOV from CR3 exits.
    pub const CR3_STORE_EXITING: u32 = 1 << 16;
    /// Every IN/OUT exits.
    pub const UNCOND_IO_EXITING: u32 = 1 << 24;
    /// MONITOR exits.
    pub const MONITOR_EXITING: u32 = 1 << 29;
    /// Use MSR bitmaps.
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    /// Activate secondary controls.
    pub const ACTIVATE_SECONDARY_CONTROLS: u32 = 1 << 31;
}

/// Secondary processor-based VM-execution controls (SDM Table 25-7).
pub mod secondary {
    /// Enable EPT.
    pub const ENABLE_EPT: u32 = 1 << 1;
    /// Unrestricted guest: real mode and unpaged protected mode run natively.
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    /// WBINVD exiting (testing only: Keel has no handler for the exit).
    pub const WBINVD_EXITING: u32 = 1 << 6;
    /// Enable RDTSCP (without it RDTSCP raises #UD in the guest).
    pub const ENABLE_RDTSCP: u32 = 1 << 3;
    /// Enable INVPCID (without it INVPCID raises #UD).
    pub const ENABLE_INVPCID: u32 = 1 << 12;
    /// Enable XSAVES/XRSTORS (without it they raise #UD).
    pub const ENABLE_XSAVES: u32 = 1 << 20;
    /// Enable user wait and pause (TPAUSE, UMONITOR, UMWAIT).
    pub const ENABLE_USR_WAIT_PAUSE: u32 = 1 << 26;
}

/// VM-exit controls (SDM Table 26-13).
pub mod exit_ctl {
    /// Save debug controls.
    pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    /// Host address-space size: the host is 64-bit.
    pub const HOST_ADDR_SPACE_SIZE: u32 = 1 << 9;
    /// Save IA32_PAT.
    pub const SAVE_IA32_PAT: u32 = 1 << 18;
    /// Load IA32_PAT.
    pub const LOAD_IA32_PAT: u32 = 1 << 19;
    /// Save IA32_EFER.
    pub const SAVE_IA32_EFER: u32 = 1 << 20;
    /// Load IA32_EFER.
    pub const LOAD_IA32_EFER: u32 = 1 << 21;
}

/// VM-entry controls (SDM Table 26-15).
pub mod entry_ctl {
    /// Load debug controls.
    pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    /// IA-32e mode guest.
    pub const IA32E_MODE: u32 = 1 << 9;
    /// Load IA32_PAT.
    pub const LOAD_IA32_PAT: u32 = 1 << 14;
    /// Load IA32_EFER.
    pub const LOAD_IA32_EFER: u32 = 1 << 15;
}

/// Applies a VMX capability MSR to the controls Keel wants (SDM A.3): bits the low half
/// reports must be 1 are set, bits the high half does not allow are cleared. Returns the value
/// and the wanted bits that the CPU does not allow.
pub const fn adjust_controls(wanted: u32, capability_msr: u64) -> (u32, u32) {
    let must_be_one = capability_msr as u32;
    let may_be_one = (capability_msr >> 32) as u32;
    ((wanted | must_be_one) & may_be_one, wanted & !may_be_one)
}

/// Interruption-information format of VM-entry event injection (SDM 26.8.3).
pub mod intr_info {
    /// The field is valid.
    pub const VALID: u32 = 1 << 31;
    /// Deliver an error code.
    pub const DELIVER_ERROR_CODE: u32 = 1 << 11;
    /// Type: hardware exception.
    pub const TYPE_HW_EXCEPTION: u32 = 3 << 8;
    /// Type: NMI.
    pub const TYPE_NMI: u32 = 2 << 8;
    /// The type bits.
    pub const TYPE_MASK: u32 = 7 << 8;
}

/// Guest interruptibility state bits (SDM 25.4.2).
pub mod interruptibility {
    /// Blocking by STI.
    pub const STI: u32 = 1 << 0;
    /// Blocking by MOV SS.
    pub const MOV_SS: u32 = 1 << 1;
}

/// Segment access rights in the VMCS format (SDM 25.4.1): descriptor bits 40..55 with bits
/// 8..11 cleared, and bit 16 "unusable".
pub mod ar {
    /// The segment is unusable (a null selector was loaded).
    pub const UNUSABLE: u32 = 1 << 16;
}

/// Converts the access rights that LAR returns (descriptor bits 32..63 masked with 0x00F0FF00)
/// to the VMCS format.
pub const fn ar_from_lar(lar: u32) -> u32 {
    (lar >> 8) & 0xf0ff
}

/// A decoded MOV-to/from-CR exit qualification (SDM Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccess {
    /// The control register number.
    pub cr: u8,
    /// 0 MOV to CR, 1 MOV from CR, 2 CLTS, 3 LMSW.
    pub access_type: u8,
    /// The general-purpose register operand (0 = RAX ... 15 = R15).
    pub gpr: u8,
}

impl CrAccess {
    /// Decodes an exit qualification.
    pub const fn decode(qualification: u64) -> Self {
        Self {
            cr: (qualification & 0xf) as u8,
            access_type: ((qualification >> 4) & 3) as u8,
            gpr: ((qualification >> 8) & 0xf) as u8,
        }
    }
}

/// VMX basic exit reasons Keel handles by number (SDM Appendix C).
#[expect(missing_docs, reason = "the names are the SDM's")]
pub mod reason {
    pub const TRIPLE_FAULT: u32 = 2;
    pub const INIT: u32 = 3;
    pub const CPUID: u32 = 10;
    pub const VMCALL: u32 = 18;
    pub const CR_ACCESS: u32 = 28;
    pub const RDMSR: u32 = 31;
    pub const WRMSR: u32 = 32;
    pub const XSETBV: u32 = 55;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_follow_the_encoding() {
        assert_eq!(width(field::GUEST_CS_SELECTOR), Width::W16);
        assert_eq!(width(field::GUEST_IA32_EFER), Width::W64);
        assert_eq!(width(field::VM_EXIT_REASON), Width::W32);
        assert_eq!(width(field::GUEST_RIP), Width::Natural);
        assert_eq!(width(field::HOST_RIP), Width::Natural);
    }

    #[test]
    fn adjust_sets_required_and_reports_unsupported() {
        // Bochs' IA32_VMX_TRUE_PROCBASED_CTLS-like value: bits 1, 4-6, 8, 13-16, 26 required.
        let msr = 0xfff9_fffe_0401_e172_u64;
        let (v, missing) = adjust_controls(cpu_based::USE_MSR_BITMAPS, msr);
        assert_eq!(v & 0x0401_e172, 0x0401_e172);
        assert_ne!(v & cpu_based::USE_MSR_BITMAPS, 0);
        assert_eq!(missing, 0);
        let (_, missing) = adjust_controls(1 << 0, msr);
        assert_eq!(missing, 1);
    }

    #[test]
    fn lar_access_rights_to_vmcs_format() {
        // A 64-bit code segment, DPL 0, present: LAR gives 0x00209b00.
        assert_eq!(ar_from_lar(0x0020_9b00), 0x209b);
        // Limit bits 19:16 in LAR's result are dropped.
        assert_eq!(ar_from_lar(0x00cf_9300), 0xc093);
    }

    #[test]
    fn cr_access_qualification() {
        // MOV CR4, RCX: CR 4, type 0, register 1.
        assert_eq!(
            CrAccess::decode(0x104),
            CrAccess {
                cr: 4,
                access_type: 0,
                gpr: 1
            }
        );
    }
}

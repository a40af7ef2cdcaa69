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

/// A VMCS field: its encoding, typed by the value its width holds (16, 32 or 64 bits; natural
/// width is 64 bits on an x86-64 host). The constructors check the width the encoding names
/// (SDM B.1) at compile time, so a field cannot be read or written with the wrong width.
pub struct Field<T> {
    encoding: u32,
    _value: core::marker::PhantomData<T>,
}

impl<T> Clone for Field<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Field<T> {}

impl<T> Field<T> {
    /// The field's encoding, the operand of VMREAD/VMWRITE.
    pub const fn encoding(self) -> u32 {
        self.encoding
    }
}

/// The value a field holds, converted from and to the 64-bit VMREAD/VMWRITE operand.
pub trait FieldValue: Copy {
    /// From VMREAD's operand (the upper bits beyond the field's width are zero).
    fn from_raw(raw: u64) -> Self;
    /// To VMWRITE's operand.
    fn to_raw(self) -> u64;
}

impl FieldValue for u16 {
    fn from_raw(raw: u64) -> Self {
        raw as u16
    }
    fn to_raw(self) -> u64 {
        self.into()
    }
}
impl FieldValue for u32 {
    fn from_raw(raw: u64) -> Self {
        raw as u32
    }
    fn to_raw(self) -> u64 {
        self.into()
    }
}
impl FieldValue for u64 {
    fn from_raw(raw: u64) -> Self {
        raw
    }
    fn to_raw(self) -> u64 {
        self
    }
}

const fn typed<T>(encoding: u32, w: Width) -> Field<T> {
    assert!(
        width(encoding) as u8 == w as u8,
        "the encoding names another width"
    );
    Field {
        encoding,
        _value: core::marker::PhantomData,
    }
}
const fn f16(encoding: u32) -> Field<u16> {
    typed(encoding, Width::W16)
}
const fn f32(encoding: u32) -> Field<u32> {
    typed(encoding, Width::W32)
}
const fn f64(encoding: u32) -> Field<u64> {
    typed(encoding, Width::W64)
}
const fn fnat(encoding: u32) -> Field<u64> {
    typed(encoding, Width::Natural)
}

/// VMCS field encodings.
#[expect(
    missing_docs,
    reason = "the names are the SDM's; Appendix B documents each field"
)]
pub mod field {
    use super::{f16, f32, f64, fnat, Field};

    // 16-bit guest-state fields.
    pub const GUEST_ES_SELECTOR: Field<u16> = f16(0x0800);
    pub const GUEST_CS_SELECTOR: Field<u16> = f16(0x0802);
    pub const GUEST_SS_SELECTOR: Field<u16> = f16(0x0804);
    pub const GUEST_DS_SELECTOR: Field<u16> = f16(0x0806);
    pub const GUEST_FS_SELECTOR: Field<u16> = f16(0x0808);
    pub const GUEST_GS_SELECTOR: Field<u16> = f16(0x080a);
    pub const GUEST_LDTR_SELECTOR: Field<u16> = f16(0x080c);
    pub const GUEST_TR_SELECTOR: Field<u16> = f16(0x080e);
    // 16-bit host-state fields.
    pub const HOST_ES_SELECTOR: Field<u16> = f16(0x0c00);
    pub const HOST_CS_SELECTOR: Field<u16> = f16(0x0c02);
    pub const HOST_SS_SELECTOR: Field<u16> = f16(0x0c04);
    pub const HOST_DS_SELECTOR: Field<u16> = f16(0x0c06);
    pub const HOST_FS_SELECTOR: Field<u16> = f16(0x0c08);
    pub const HOST_GS_SELECTOR: Field<u16> = f16(0x0c0a);
    pub const HOST_TR_SELECTOR: Field<u16> = f16(0x0c0c);
    // 64-bit control fields.
    pub const MSR_BITMAP: Field<u64> = f64(0x2004);
    pub const EPT_POINTER: Field<u64> = f64(0x201a);
    pub const GUEST_PHYSICAL_ADDRESS: Field<u64> = f64(0x2400);
    // 64-bit guest-state fields.
    pub const VMCS_LINK_POINTER: Field<u64> = f64(0x2800);
    pub const GUEST_IA32_DEBUGCTL: Field<u64> = f64(0x2802);
    pub const GUEST_IA32_PAT: Field<u64> = f64(0x2804);
    pub const GUEST_IA32_EFER: Field<u64> = f64(0x2806);
    pub const GUEST_PDPTE0: Field<u64> = f64(0x280a);
    pub const GUEST_PDPTE1: Field<u64> = f64(0x280c);
    pub const GUEST_PDPTE2: Field<u64> = f64(0x280e);
    pub const GUEST_PDPTE3: Field<u64> = f64(0x2810);
    // 64-bit host-state fields.
    pub const HOST_IA32_PAT: Field<u64> = f64(0x2c00);
    pub const HOST_IA32_EFER: Field<u64> = f64(0x2c02);
    // 32-bit control fields.
    pub const PIN_BASED_VM_EXEC_CONTROL: Field<u32> = f32(0x4000);
    pub const CPU_BASED_VM_EXEC_CONTROL: Field<u32> = f32(0x4002);
    pub const EXCEPTION_BITMAP: Field<u32> = f32(0x4004);
    pub const PAGE_FAULT_ERROR_CODE_MASK: Field<u32> = f32(0x4006);
    pub const PAGE_FAULT_ERROR_CODE_MATCH: Field<u32> = f32(0x4008);
    pub const CR3_TARGET_COUNT: Field<u32> = f32(0x400a);
    pub const VM_EXIT_CONTROLS: Field<u32> = f32(0x400c);
    pub const VM_EXIT_MSR_STORE_COUNT: Field<u32> = f32(0x400e);
    pub const VM_EXIT_MSR_LOAD_COUNT: Field<u32> = f32(0x4010);
    pub const VM_ENTRY_CONTROLS: Field<u32> = f32(0x4012);
    pub const VM_ENTRY_MSR_LOAD_COUNT: Field<u32> = f32(0x4014);
    pub const VM_ENTRY_INTR_INFO_FIELD: Field<u32> = f32(0x4016);
    pub const VM_ENTRY_EXCEPTION_ERROR_CODE: Field<u32> = f32(0x4018);
    pub const VM_ENTRY_INSTRUCTION_LEN: Field<u32> = f32(0x401a);
    pub const SECONDARY_VM_EXEC_CONTROL: Field<u32> = f32(0x401e);
    // 32-bit read-only data fields.
    pub const VM_INSTRUCTION_ERROR: Field<u32> = f32(0x4400);
    pub const VM_EXIT_REASON: Field<u32> = f32(0x4402);
    pub const VM_EXIT_INTR_INFO: Field<u32> = f32(0x4404);
    pub const VM_EXIT_INTR_ERROR_CODE: Field<u32> = f32(0x4406);
    pub const IDT_VECTORING_INFO_FIELD: Field<u32> = f32(0x4408);
    pub const IDT_VECTORING_ERROR_CODE: Field<u32> = f32(0x440a);
    pub const VM_EXIT_INSTRUCTION_LEN: Field<u32> = f32(0x440c);
    // 32-bit guest-state fields.
    pub const GUEST_ES_LIMIT: Field<u32> = f32(0x4800);
    pub const GUEST_CS_LIMIT: Field<u32> = f32(0x4802);
    pub const GUEST_SS_LIMIT: Field<u32> = f32(0x4804);
    pub const GUEST_DS_LIMIT: Field<u32> = f32(0x4806);
    pub const GUEST_FS_LIMIT: Field<u32> = f32(0x4808);
    pub const GUEST_GS_LIMIT: Field<u32> = f32(0x480a);
    pub const GUEST_LDTR_LIMIT: Field<u32> = f32(0x480c);
    pub const GUEST_TR_LIMIT: Field<u32> = f32(0x480e);
    pub const GUEST_GDTR_LIMIT: Field<u32> = f32(0x4810);
    pub const GUEST_IDTR_LIMIT: Field<u32> = f32(0x4812);
    pub const GUEST_ES_AR_BYTES: Field<u32> = f32(0x4814);
    pub const GUEST_CS_AR_BYTES: Field<u32> = f32(0x4816);
    pub const GUEST_SS_AR_BYTES: Field<u32> = f32(0x4818);
    pub const GUEST_DS_AR_BYTES: Field<u32> = f32(0x481a);
    pub const GUEST_FS_AR_BYTES: Field<u32> = f32(0x481c);
    pub const GUEST_GS_AR_BYTES: Field<u32> = f32(0x481e);
    pub const GUEST_LDTR_AR_BYTES: Field<u32> = f32(0x4820);
    pub const GUEST_TR_AR_BYTES: Field<u32> = f32(0x4822);
    pub const GUEST_INTERRUPTIBILITY_INFO: Field<u32> = f32(0x4824);
    pub const GUEST_ACTIVITY_STATE: Field<u32> = f32(0x4826);
    pub const GUEST_SYSENTER_CS: Field<u32> = f32(0x482a);
    pub const VMX_PREEMPTION_TIMER_VALUE: Field<u32> = f32(0x482e);
    // 32-bit host-state field.
    pub const HOST_IA32_SYSENTER_CS: Field<u32> = f32(0x4c00);
    // Natural-width control fields.
    pub const CR0_GUEST_HOST_MASK: Field<u64> = fnat(0x6000);
    pub const CR4_GUEST_HOST_MASK: Field<u64> = fnat(0x6002);
    pub const CR0_READ_SHADOW: Field<u64> = fnat(0x6004);
    pub const CR4_READ_SHADOW: Field<u64> = fnat(0x6006);
    // Natural-width read-only data fields.
    pub const EXIT_QUALIFICATION: Field<u64> = fnat(0x6400);
    pub const GUEST_LINEAR_ADDRESS: Field<u64> = fnat(0x640a);
    // Natural-width guest-state fields.
    pub const GUEST_CR0: Field<u64> = fnat(0x6800);
    pub const GUEST_CR3: Field<u64> = fnat(0x6802);
    pub const GUEST_CR4: Field<u64> = fnat(0x6804);
    pub const GUEST_ES_BASE: Field<u64> = fnat(0x6806);
    pub const GUEST_CS_BASE: Field<u64> = fnat(0x6808);
    pub const GUEST_SS_BASE: Field<u64> = fnat(0x680a);
    pub const GUEST_DS_BASE: Field<u64> = fnat(0x680c);
    pub const GUEST_FS_BASE: Field<u64> = fnat(0x680e);
    pub const GUEST_GS_BASE: Field<u64> = fnat(0x6810);
    pub const GUEST_LDTR_BASE: Field<u64> = fnat(0x6812);
    pub const GUEST_TR_BASE: Field<u64> = fnat(0x6814);
    pub const GUEST_GDTR_BASE: Field<u64> = fnat(0x6816);
    pub const GUEST_IDTR_BASE: Field<u64> = fnat(0x6818);
    pub const GUEST_DR7: Field<u64> = fnat(0x681a);
    pub const GUEST_RSP: Field<u64> = fnat(0x681c);
    pub const GUEST_RIP: Field<u64> = fnat(0x681e);
    pub const GUEST_RFLAGS: Field<u64> = fnat(0x6820);
    pub const GUEST_PENDING_DBG_EXCEPTIONS: Field<u64> = fnat(0x6822);
    pub const GUEST_SYSENTER_ESP: Field<u64> = fnat(0x6824);
    pub const GUEST_SYSENTER_EIP: Field<u64> = fnat(0x6826);
    // Natural-width host-state fields.
    pub const HOST_CR0: Field<u64> = fnat(0x6c00);
    pub const HOST_CR3: Field<u64> = fnat(0x6c02);
    pub const HOST_CR4: Field<u64> = fnat(0x6c04);
    pub const HOST_FS_BASE: Field<u64> = fnat(0x6c06);
    pub const HOST_GS_BASE: Field<u64> = fnat(0x6c08);
    pub const HOST_TR_BASE: Field<u64> = fnat(0x6c0a);
    pub const HOST_GDTR_BASE: Field<u64> = fnat(0x6c0c);
    pub const HOST_IDTR_BASE: Field<u64> = fnat(0x6c0e);
    pub const HOST_IA32_SYSENTER_ESP: Field<u64> = fnat(0x6c10);
    pub const HOST_IA32_SYSENTER_EIP: Field<u64> = fnat(0x6c12);
    pub const HOST_RSP: Field<u64> = fnat(0x6c14);
    pub const HOST_RIP: Field<u64> = fnat(0x6c16);
}

/// Pin-based VM-execution controls (SDM Table 25-5).
pub mod pin_based {
    /// External interrupts cause VM exits.
    pub const EXT_INTR_EXITING: u32 = 1 << 0;
    /// NMIs cause VM exits.
    pub const NMI_EXITING: u32 = 1 << 3;
    /// Virtual NMIs: the CPU tracks the guest's NMI blocking (injected NMI to IRET).
    pub const VIRTUAL_NMIS: u32 = 1 << 5;
    /// The VMX-preemption timer counts down in the guest and exits at zero.
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
}

/// Primary processor-based VM-execution controls (SDM Table 25-6).
pub mod cpu_based {
    /// Interrupt-window exiting: an exit as soon as the guest takes interrupts.
    pub const INTR_WINDOW_EXITING: u32 = 1 << 2;
    /// NMI-window exiting (with virtual NMIs): an exit as soon as the guest takes NMIs.
    pub const NMI_WINDOW_EXITING: u32 = 1 << 22;
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
    /// Type: external interrupt.
    pub const TYPE_EXT_INTR: u32 = 0;
    /// Type: privileged software exception (INT1, ICEBP).
    pub const TYPE_PRIV_SW_EXCEPTION: u32 = 5 << 8;
    /// The type bits.
    pub const TYPE_MASK: u32 = 7 << 8;
}

/// Guest interruptibility state bits (SDM 25.4.2).
pub mod interruptibility {
    /// Blocking by STI.
    pub const STI: u32 = 1 << 0;
    /// Blocking by MOV SS.
    pub const MOV_SS: u32 = 1 << 1;
    /// Blocking by NMI (virtual-NMI blocking with virtual NMIs).
    pub const NMI: u32 = 1 << 3;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_follow_the_encoding() {
        assert_eq!(width(field::GUEST_CS_SELECTOR.encoding()), Width::W16);
        assert_eq!(width(field::GUEST_IA32_EFER.encoding()), Width::W64);
        assert_eq!(width(field::VM_EXIT_REASON.encoding()), Width::W32);
        assert_eq!(width(field::GUEST_RIP.encoding()), Width::Natural);
        assert_eq!(width(field::HOST_RIP.encoding()), Width::Natural);
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
}

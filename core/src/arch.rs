//! Architectural constants of x86-64, defined once: control-register, EFER and RFLAGS bits,
//! MSR numbers, exception vectors. Names follow the SDM (Vol. 3A chapter 2, Vol. 4) and the APM
//! (Vol. 2 chapter 3 and 15); every other file takes them from here.

/// CR0 bits (SDM Vol. 3A, 2.5).
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Extension type: hardwired to 1 on every CPU since the Pentium.
    pub const ET: u64 = 1 << 4;
    /// Numeric error: native x87 error reporting; VMX requires it set.
    pub const NE: u64 = 1 << 5;
    /// Write protect: supervisor writes honour read-only pages.
    pub const WP: u64 = 1 << 16;
    /// Not write-through.
    pub const NW: u64 = 1 << 29;
    /// Cache disable.
    pub const CD: u64 = 1 << 30;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits (SDM Vol. 3A, 2.5).
pub mod cr4 {
    /// Page-size extensions.
    pub const PSE: u64 = 1 << 4;
    /// Physical-address extension.
    pub const PAE: u64 = 1 << 5;
    /// 5-level paging.
    pub const LA57: u64 = 1 << 12;
    /// VMX enable.
    pub const VMXE: u64 = 1 << 13;
    /// XSAVE and processor extended states enable.
    pub const OSXSAVE: u64 = 1 << 18;
    /// Protection keys for user-mode pages.
    pub const PKE: u64 = 1 << 22;
}

/// EFER bits (SDM Vol. 4, Table 2-2; APM Vol. 2, 3.1.7).
pub mod efer {
    /// System-call extensions.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active (read-only: the processor's).
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
    /// SVM enable (AMD).
    pub const SVME: u64 = 1 << 12;
}

/// RFLAGS bits (SDM Vol. 1, 3.4.3).
pub mod rflags {
    /// Carry (VMfailInvalid after a VMX instruction).
    pub const CF: u64 = 1 << 0;
    /// Bit 1: always set.
    pub const FIXED: u64 = 1 << 1;
    /// Zero (VMfailValid after a VMX instruction).
    pub const ZF: u64 = 1 << 6;
    /// Trap: single-step.
    pub const TF: u64 = 1 << 8;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// Resume: no instruction breakpoint for the next instruction.
    pub const RF: u64 = 1 << 16;
}

/// Code-segment attribute bits in the VMCB's packed format (APM Vol. 2, 15.5.1), which Keel
/// uses for segments everywhere (the uapi's too).
pub mod seg_attrib {
    /// L: a 64-bit code segment.
    pub const L: u16 = 1 << 9;
    /// D/B: default operand size 32.
    pub const DB: u16 = 1 << 10;
}

/// IA32_FEATURE_CONTROL bits (SDM Vol. 4, Table 2-2).
pub mod feature_control {
    /// Lock: the MSR cannot be written until reset.
    pub const LOCKED: u64 = 1 << 0;
    /// VMX allowed inside SMX operation.
    pub const VMX_INSIDE_SMX: u64 = 1 << 1;
    /// VMX allowed outside SMX operation.
    pub const VMX_OUTSIDE_SMX: u64 = 1 << 2;
}

/// MSR numbers (SDM Vol. 4; APM Vol. 2 for the SVM ones).
#[expect(
    missing_docs,
    reason = "the names are the manuals', which document each MSR"
)]
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_APIC_BASE: u32 = 0x1b;
    pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_DEBUGCTL: u32 = 0x1d9;
    /// IA32_DEBUGCTL.BTF: with RFLAGS.TF, single-step on branches only.
    pub const DEBUGCTL_BTF: u64 = 1 << 1;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    /// RDTSCP's and RDPID's value (the CPU number, for Linux).
    pub const TSC_AUX: u32 = 0xc000_0103;
    pub const MTRR_CAP: u32 = 0xfe;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// AMD's interrupt-pending message MSR (C1E), read by Linux on some AMD families.
    pub const AMD_INT_PENDING_MSG: u32 = 0xc001_0055;
    pub const IA32_VMX_BASIC: u32 = 0x480;
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
    pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
    pub const IA32_VMX_MISC: u32 = 0x485;
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
    pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
    /// The first x2APIC register MSR (the APIC's register at MMIO offset 0 would be here).
    pub const X2APIC_FIRST: u32 = 0x800;
    /// The last MSR of the range Keel's local APIC answers for (`X2APIC_FIRST` + 0xff).
    pub const X2APIC_LAST: u32 = 0x8ff;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const VM_CR: u32 = 0xc001_0114;
    pub const VM_HSAVE_PA: u32 = 0xc001_0117;
}

/// Exception and interrupt vectors (SDM Vol. 3A, 6.3.1).
pub mod vector {
    /// Debug.
    pub const DB: u8 = 1;
    /// NMI.
    pub const NMI: u8 = 2;
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// General protection.
    pub const GP: u8 = 13;
    /// Alignment check.
    pub const AC: u8 = 17;
}

/// DR6 bits (SDM Vol. 3B, 19.2.3).
pub mod dr6 {
    /// B0-B3: which breakpoint conditions were met.
    pub const TRAP_BITS: u64 = 0xf;
    /// BD: a debug-register access was detected (DR7.GD).
    pub const BD: u64 = 1 << 13;
    /// BS: single step.
    pub const BS: u64 = 1 << 14;
    /// RTM: clear when the #DB came inside an RTM region (active low).
    pub const RTM: u64 = 1 << 16;
    /// The bits that read as 1 when no debug condition sets them otherwise.
    pub const ACTIVE_LOW: u64 = 0xffff_0ff0;

    /// DR6 after a #DB whose conditions are `payload` (in the format of VMX's exit
    /// qualification and pending debug exceptions: B0-B3, BD, BS, and RTM set for a #DB in
    /// an RTM region), from DR6 before it: B0-B3 replaced, the other status bits kept (the
    /// processor never clears them), bit 12 clear.
    pub const fn after_debug(dr6: u64, payload: u64) -> u64 {
        let payload = payload & (TRAP_BITS | BD | BS | RTM);
        (((dr6 & !TRAP_BITS) | ACTIVE_LOW | payload) ^ (payload & ACTIVE_LOW))
            & !(1 << 12)
            & 0xffff_ffff
    }
}

#[cfg(test)]
mod tests {
    use super::dr6;

    #[test]
    fn dr6_after_debug() {
        // A single step from the reset value: BS set, the rest as it was.
        assert_eq!(dr6::after_debug(0xffff_0ff0, dr6::BS), 0xffff_4ff0);
        // A breakpoint replaces the last one's B0-B3 and keeps the sticky BS.
        assert_eq!(dr6::after_debug(0xffff_4ff1, 1 << 2), 0xffff_4ff4);
        // Inside an RTM region the active-low RTM bit reads 0; bit 12 and the upper half stay
        // clear whatever the payload or the old value says.
        assert_eq!(dr6::after_debug(0xffff_0ff0, dr6::RTM | 1), 0xfffe_0ff1);
        assert_eq!(
            dr6::after_debug(0xffff_ffff_ffff_ffff, 1 << 12 | 1 << 40),
            0xffff_eff0
        );
        // ICEBP: no condition, B0-B3 cleared.
        assert_eq!(dr6::after_debug(0xffff_0ff3, 0), 0xffff_0ff0);
    }
}

//! VM exits: the hardware's exit codes, decoded into one vendor-neutral kind.
//!
//! Intel reports a basic exit reason (SDM Vol. 3D, Appendix C); AMD an exit code (APM Vol. 2,
//! Appendix C). Both decode into [`ExitKind`], the unit of Keel's per-CPU exit counters and of
//! the exit handlers' dispatch, so that common code never names a vendor's number.

/// What caused a VM exit, vendor-neutral.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitKind {
    /// An exception or an NMI in the guest (VMX reason 0; SVM 0x40..=0x5f).
    Exception,
    /// An external interrupt.
    ExternalInterrupt,
    /// An NMI (SVM reports it apart from exceptions).
    Nmi,
    /// The guest triple-faulted (VMX) or shut down (SVM).
    TripleFault,
    /// INIT signal.
    Init,
    /// Startup IPI.
    Sipi,
    /// Interrupt or NMI window opened.
    Window,
    /// CPUID.
    Cpuid,
    /// HLT.
    Hlt,
    /// INVD.
    Invd,
    /// VMCALL or VMMCALL: a hypercall.
    Hypercall,
    /// Another VMX or SVM instruction (VMXON, VMRUN, ...).
    VirtInsn,
    /// A control-register access.
    CrAccess,
    /// A debug-register access.
    DrAccess,
    /// IN/OUT/INS/OUTS.
    Io,
    /// RDMSR.
    Rdmsr,
    /// WRMSR.
    Wrmsr,
    /// XSETBV.
    Xsetbv,
    /// An EPT violation or misconfiguration, or an NPT fault.
    SlatFault,
    /// The VMX-preemption timer expired.
    PreemptionTimer,
    /// VM entry failed (VMX reasons 33, 34, 41; SVM VMEXIT_INVALID).
    EntryFailure,
    /// Anything else.
    Other,
}

/// Number of [`ExitKind`] values, for counter arrays.
pub const EXIT_KINDS: usize = ExitKind::Other as usize + 1;

impl ExitKind {
    /// All kinds, in counter order.
    pub const ALL: [ExitKind; EXIT_KINDS] = [
        Self::Exception,
        Self::ExternalInterrupt,
        Self::Nmi,
        Self::TripleFault,
        Self::Init,
        Self::Sipi,
        Self::Window,
        Self::Cpuid,
        Self::Hlt,
        Self::Invd,
        Self::Hypercall,
        Self::VirtInsn,
        Self::CrAccess,
        Self::DrAccess,
        Self::Io,
        Self::Rdmsr,
        Self::Wrmsr,
        Self::Xsetbv,
        Self::SlatFault,
        Self::PreemptionTimer,
        Self::EntryFailure,
        Self::Other,
    ];

    /// The name counters are shown under (sysfs, `keelctl stats`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Exception => "exception",
            Self::ExternalInterrupt => "external_interrupt",
            Self::Nmi => "nmi",
            Self::TripleFault => "triple_fault",
            Self::Init => "init",
            Self::Sipi => "sipi",
            Self::Window => "window",
            Self::Cpuid => "cpuid",
            Self::Hlt => "hlt",
            Self::Invd => "invd",
            Self::Hypercall => "hypercall",
            Self::VirtInsn => "virt_insn",
            Self::CrAccess => "cr_access",
            Self::DrAccess => "dr_access",
            Self::Io => "io",
            Self::Rdmsr => "rdmsr",
            Self::Wrmsr => "wrmsr",
            Self::Xsetbv => "xsetbv",
            Self::SlatFault => "slat_fault",
            Self::PreemptionTimer => "preemption_timer",
            Self::EntryFailure => "entry_failure",
            Self::Other => "other",
        }
    }

    /// The encoding, without prefixes, of the instruction an exit of this kind intercepts on
    /// SVM, when there is a single one (VMMCALL for hypercalls: VMCALL does not exit on AMD).
    /// Without next-RIP save, Keel compares the bytes at RIP with it before decoding in full:
    /// when they match, the instruction is exactly this long.
    pub fn plain_encoding(self) -> Option<&'static [u8]> {
        Some(match self {
            Self::Cpuid => &[0x0f, 0xa2],
            Self::Invd => &[0x0f, 0x08],
            Self::Rdmsr => &[0x0f, 0x32],
            Self::Wrmsr => &[0x0f, 0x30],
            Self::Xsetbv => &[0x0f, 0x01, 0xd1],
            Self::Hypercall => &[0x0f, 0x01, 0xd9],
            _ => return None,
        })
    }

    /// Decodes a VMX exit reason (the VMCS field; bits 15:0 are the basic reason, bit 31 says
    /// VM entry failed).
    #[inline]
    pub fn from_vmx(exit_reason: u32) -> Self {
        if exit_reason & (1 << 31) != 0 {
            return Self::EntryFailure;
        }
        match exit_reason & 0xffff {
            0 => Self::Exception,
            1 => Self::ExternalInterrupt,
            2 => Self::TripleFault,
            3 => Self::Init,
            4 => Self::Sipi,
            7 | 8 => Self::Window,
            10 => Self::Cpuid,
            12 => Self::Hlt,
            13 => Self::Invd,
            18 => Self::Hypercall,
            // VMCLEAR..=VMXON, INVEPT, INVVPID, VMFUNC.
            19..=27 | 50 | 53 | 59 => Self::VirtInsn,
            28 => Self::CrAccess,
            29 => Self::DrAccess,
            30 => Self::Io,
            31 => Self::Rdmsr,
            32 => Self::Wrmsr,
            33 | 34 | 41 => Self::EntryFailure,
            48 | 49 => Self::SlatFault,
            52 => Self::PreemptionTimer,
            55 => Self::Xsetbv,
            _ => Self::Other,
        }
    }

    /// Decodes an SVM exit code (VMCB EXITCODE); EXITINFO1 tells RDMSR from WRMSR for the MSR
    /// intercept (0 read, 1 write; APM Vol. 2, 15.11).
    #[inline]
    pub fn from_svm(exit_code: u64, exit_info1: u64) -> Self {
        match exit_code {
            0x00..=0x1f | 0x65 | 0x90..=0x9f => Self::CrAccess,
            0x20..=0x3f => Self::DrAccess,
            0x40..=0x5f => Self::Exception,
            0x60 => Self::ExternalInterrupt,
            0x61 => Self::Nmi,
            0x63 => Self::Init,
            0x64 => Self::Window,
            0x72 => Self::Cpuid,
            0x76 => Self::Invd,
            0x78 => Self::Hlt,
            0x7b => Self::Io,
            0x7c if exit_info1 & 1 != 0 => Self::Wrmsr,
            0x7c => Self::Rdmsr,
            0x7f => Self::TripleFault,
            0x81 => Self::Hypercall,
            // VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, INVLPGA (0x7a).
            0x7a | 0x80 | 0x82..=0x86 => Self::VirtInsn,
            0x8d => Self::Xsetbv,
            0x400 => Self::SlatFault,
            // VMEXIT_INVALID is -1; QEMU's TCG stores it as a 32-bit -1.
            u64::MAX | 0xffff_ffff => Self::EntryFailure,
            _ => Self::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_encodings_decode_to_their_length() {
        use crate::insn::{decode, Mode};
        for kind in ExitKind::ALL {
            if let Some(bytes) = kind.plain_encoding() {
                let insn = decode(bytes, Mode::Bits64).unwrap();
                assert_eq!(insn.len, bytes.len(), "{}", kind.name());
            }
        }
    }

    #[test]
    fn all_is_in_counter_order_with_unique_names() {
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
            for other in &ExitKind::ALL[..i] {
                assert_ne!(k.name(), other.name());
            }
        }
    }

    #[test]
    fn vmx_reasons() {
        assert_eq!(ExitKind::from_vmx(10), ExitKind::Cpuid);
        assert_eq!(ExitKind::from_vmx(18), ExitKind::Hypercall);
        assert_eq!(ExitKind::from_vmx(27), ExitKind::VirtInsn); // VMXON
        assert_eq!(ExitKind::from_vmx(28), ExitKind::CrAccess);
        assert_eq!(ExitKind::from_vmx(31), ExitKind::Rdmsr);
        assert_eq!(ExitKind::from_vmx(32), ExitKind::Wrmsr);
        assert_eq!(ExitKind::from_vmx(48), ExitKind::SlatFault);
        assert_eq!(ExitKind::from_vmx(52), ExitKind::PreemptionTimer);
        assert_eq!(ExitKind::from_vmx(55), ExitKind::Xsetbv);
        // Entry failure: bit 31 with basic reason 33 (invalid guest state).
        assert_eq!(ExitKind::from_vmx((1 << 31) | 33), ExitKind::EntryFailure);
        assert_eq!(ExitKind::from_vmx(0xffff), ExitKind::Other);
        // WBINVD, which only the testing intercept makes exit: no handler, so Other.
        assert_eq!(ExitKind::from_vmx(54), ExitKind::Other);
    }

    #[test]
    fn svm_codes() {
        assert_eq!(ExitKind::from_svm(0x04, 0), ExitKind::CrAccess); // read CR4
        assert_eq!(ExitKind::from_svm(0x14, 0), ExitKind::CrAccess); // write CR4
        assert_eq!(ExitKind::from_svm(0x46, 0), ExitKind::Exception); // #UD
        assert_eq!(ExitKind::from_svm(0x61, 0), ExitKind::Nmi);
        assert_eq!(ExitKind::from_svm(0x72, 0), ExitKind::Cpuid);
        assert_eq!(ExitKind::from_svm(0x80, 0), ExitKind::VirtInsn); // VMRUN
        assert_eq!(ExitKind::from_svm(0x81, 0), ExitKind::Hypercall);
        assert_eq!(ExitKind::from_svm(0x8d, 0), ExitKind::Xsetbv);
        assert_eq!(ExitKind::from_svm(0x400, 0), ExitKind::SlatFault);
        assert_eq!(ExitKind::from_svm(u64::MAX, 0), ExitKind::EntryFailure);
        assert_eq!(ExitKind::from_svm(0xffff_ffff, 0), ExitKind::EntryFailure);
        assert_eq!(ExitKind::from_svm(0x7c, 0), ExitKind::Rdmsr);
        assert_eq!(ExitKind::from_svm(0x7c, 1), ExitKind::Wrmsr);
        assert_eq!(ExitKind::from_svm(0x89, 0), ExitKind::Other); // WBINVD
    }
}

//! SVM: the VMCB layout, intercept bits and the MSR permission map.
//!
//! Layout from the APM Vol. 2, Appendix B ("Layout of VMCB"); the field names follow Linux's
//! `asm/svm.h`. Reserved fields are named by their offset, and every field's offset is
//! asserted at compile time.

use core::mem::{offset_of, size_of};

/// A segment register in the VMCB save area.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmcbSeg {
    /// Selector.
    pub selector: u16,
    /// Attributes: descriptor bits 40..47 in 7:0 and 52..55 in 11:8.
    pub attrib: u16,
    /// Limit, expanded to bytes.
    pub limit: u32,
    /// Base.
    pub base: u64,
}

/// The VMCB control area (offsets 0x000-0x3ff).
#[repr(C)]
#[expect(missing_docs, reason = "the names are the APM's and Linux's")]
pub struct VmcbControl {
    pub intercept_cr: u32,            // 0x000
    pub intercept_dr: u32,            // 0x004
    pub intercept_exceptions: u32,    // 0x008
    pub intercept_misc1: u32,         // 0x00c
    pub intercept_misc2: u32,         // 0x010
    pub intercept_misc3: u32,         // 0x014
    pub _reserved_0x018: [u8; 0x24],  // 0x018
    pub pause_filter_thresh: u16,     // 0x03c
    pub pause_filter_count: u16,      // 0x03e
    pub iopm_base_pa: u64,            // 0x040
    pub msrpm_base_pa: u64,           // 0x048
    pub tsc_offset: u64,              // 0x050
    pub asid: u32,                    // 0x058
    pub tlb_ctl: u8,                  // 0x05c
    pub _reserved_0x05d: [u8; 3],     // 0x05d
    pub int_ctl: u32,                 // 0x060
    pub int_vector: u32,              // 0x064
    pub int_state: u32,               // 0x068
    pub _reserved_0x06c: u32,         // 0x06c
    pub exit_code: u64,               // 0x070
    pub exit_info_1: u64,             // 0x078
    pub exit_info_2: u64,             // 0x080
    pub exit_int_info: u32,           // 0x088
    pub exit_int_info_err: u32,       // 0x08c
    pub misc_ctl: u64,                // 0x090
    pub avic_vapic_bar: u64,          // 0x098
    pub ghcb_gpa: u64,                // 0x0a0
    pub event_inj: u32,               // 0x0a8
    pub event_inj_err: u32,           // 0x0ac
    pub nested_cr3: u64,              // 0x0b0
    pub misc_ctl2: u64,               // 0x0b8
    pub clean: u32,                   // 0x0c0
    pub _reserved_0x0c4: u32,         // 0x0c4
    pub next_rip: u64,                // 0x0c8
    pub insn_len: u8,                 // 0x0d0
    pub insn_bytes: [u8; 15],         // 0x0d1
    pub _reserved_0x0e0: [u8; 0x320], // 0x0e0
}

/// The VMCB state-save area (offsets 0x400-0x6e7 of the VMCB).
#[repr(C)]
#[expect(missing_docs, reason = "the names are the APM's and Linux's")]
pub struct VmcbSave {
    pub es: VmcbSeg,                  // 0x000
    pub cs: VmcbSeg,                  // 0x010
    pub ss: VmcbSeg,                  // 0x020
    pub ds: VmcbSeg,                  // 0x030
    pub fs: VmcbSeg,                  // 0x040
    pub gs: VmcbSeg,                  // 0x050
    pub gdtr: VmcbSeg,                // 0x060
    pub ldtr: VmcbSeg,                // 0x070
    pub idtr: VmcbSeg,                // 0x080
    pub tr: VmcbSeg,                  // 0x090
    pub _reserved_0x0a0: [u8; 42],    // 0x0a0
    pub vmpl: u8,                     // 0x0ca
    pub cpl: u8,                      // 0x0cb
    pub _reserved_0x0cc: [u8; 4],     // 0x0cc
    pub efer: u64,                    // 0x0d0
    pub _reserved_0x0d8: [u8; 112],   // 0x0d8
    pub cr4: u64,                     // 0x148
    pub cr3: u64,                     // 0x150
    pub cr0: u64,                     // 0x158
    pub dr7: u64,                     // 0x160
    pub dr6: u64,                     // 0x168
    pub rflags: u64,                  // 0x170
    pub rip: u64,                     // 0x178
    pub _reserved_0x180: [u8; 88],    // 0x180
    pub rsp: u64,                     // 0x1d8
    pub s_cet: u64,                   // 0x1e0
    pub ssp: u64,                     // 0x1e8
    pub isst_addr: u64,               // 0x1f0
    pub rax: u64,                     // 0x1f8
    pub star: u64,                    // 0x200
    pub lstar: u64,                   // 0x208
    pub cstar: u64,                   // 0x210
    pub sfmask: u64,                  // 0x218
    pub kernel_gs_base: u64,          // 0x220
    pub sysenter_cs: u64,             // 0x228
    pub sysenter_esp: u64,            // 0x230
    pub sysenter_eip: u64,            // 0x238
    pub cr2: u64,                     // 0x240
    pub _reserved_0x248: [u8; 32],    // 0x248
    pub g_pat: u64,                   // 0x268
    pub dbgctl: u64,                  // 0x270
    pub br_from: u64,                 // 0x278
    pub br_to: u64,                   // 0x280
    pub last_excp_from: u64,          // 0x288
    pub last_excp_to: u64,            // 0x290
    pub _reserved_0x298: [u8; 0x968], // 0x298, to the end of the 4 KiB page
}

/// A whole VMCB: one 4 KiB page.
#[repr(C, align(4096))]
pub struct Vmcb {
    /// Control area.
    pub control: VmcbControl,
    /// State-save area.
    pub save: VmcbSave,
}

const _: () = {
    assert!(size_of::<VmcbSeg>() == 16);
    assert!(size_of::<VmcbControl>() == 0x400);
    assert!(offset_of!(VmcbControl, pause_filter_thresh) == 0x03c);
    assert!(offset_of!(VmcbControl, iopm_base_pa) == 0x040);
    assert!(offset_of!(VmcbControl, asid) == 0x058);
    assert!(offset_of!(VmcbControl, int_ctl) == 0x060);
    assert!(offset_of!(VmcbControl, exit_code) == 0x070);
    assert!(offset_of!(VmcbControl, exit_int_info) == 0x088);
    assert!(offset_of!(VmcbControl, misc_ctl) == 0x090);
    assert!(offset_of!(VmcbControl, event_inj) == 0x0a8);
    assert!(offset_of!(VmcbControl, clean) == 0x0c0);
    assert!(offset_of!(VmcbControl, next_rip) == 0x0c8);
    assert!(offset_of!(VmcbControl, insn_bytes) == 0x0d1);
    assert!(offset_of!(VmcbSave, cpl) == 0x0cb);
    assert!(offset_of!(VmcbSave, efer) == 0x0d0);
    assert!(offset_of!(VmcbSave, cr4) == 0x148);
    assert!(offset_of!(VmcbSave, rip) == 0x178);
    assert!(offset_of!(VmcbSave, rsp) == 0x1d8);
    assert!(offset_of!(VmcbSave, rax) == 0x1f8);
    assert!(offset_of!(VmcbSave, cr2) == 0x240);
    assert!(offset_of!(VmcbSave, g_pat) == 0x268);
    assert!(offset_of!(VmcbSave, last_excp_to) == 0x290);
    assert!(offset_of!(Vmcb, save) == 0x400);
    assert!(size_of::<Vmcb>() == 4096);
};

/// Intercept bits of `intercept_misc1` (APM Table B-1, offset 0x0c).
pub mod misc1 {
    /// CPUID.
    pub const CPUID: u32 = 1 << 18;
    /// INVD.
    pub const INVD: u32 = 1 << 22;
    /// MSR accesses, filtered by the MSR permission map.
    pub const MSR_PROT: u32 = 1 << 28;
    /// Shutdown (a triple fault).
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// Intercept bits of `intercept_misc2` (APM Table B-1, offset 0x10).
pub mod misc2 {
    /// VMRUN (the processor requires this intercept).
    pub const VMRUN: u32 = 1 << 0;
    /// VMMCALL.
    pub const VMMCALL: u32 = 1 << 1;
    /// VMLOAD.
    pub const VMLOAD: u32 = 1 << 2;
    /// VMSAVE.
    pub const VMSAVE: u32 = 1 << 3;
    /// STGI.
    pub const STGI: u32 = 1 << 4;
    /// CLGI.
    pub const CLGI: u32 = 1 << 5;
    /// SKINIT.
    pub const SKINIT: u32 = 1 << 6;
    /// WBINVD (testing only: Keel has no handler for the exit).
    pub const WBINVD: u32 = 1 << 9;
    /// XSETBV.
    pub const XSETBV: u32 = 1 << 13;
}

/// TLB control: flush this guest's ASID on the next VMRUN.
pub const TLB_CONTROL_FLUSH_ASID: u8 = 3;
/// TLB control: flush the whole TLB on the next VMRUN.
pub const TLB_CONTROL_FLUSH_ALL: u8 = 1;

/// The EFER a VMCB holds for a guest whose architectural control registers are `ctl`, and
/// whether EFER.LME is held back from it. A guest may set EFER.LME while paging is off
/// (real or protected mode, with or without CR4.PAE); with PAE also clear, the VMCB gets LME
/// only once the guest sets PAE, and Keel (which intercepts MOV to CR0 and CR4 on SVM) applies
/// the architectural LME itself. QEMU's #VMEXIT reloads the host's CR0 before its CR4 and
/// EFER and silently drops the host's CR0.PG while the guest's EFER.LME is set and its
/// CR4.PAE clear (`cpu_x86_update_cr0`), leaving the host without paging; no VMCB Keel
/// enters has that combination. The architectural state is the same either way: with
/// paging off, LME has no effect until CR0.PG is set, which Keel emulates.
pub fn hardware_efer(ctl: &super::state::Ctl) -> (u64, bool) {
    use super::arch::{cr0, cr4, efer};
    let held = ctl.efer & efer::LME != 0 && ctl.cr0 & cr0::PG == 0 && ctl.cr4 & cr4::PAE == 0;
    let e = if held {
        ctl.efer & !efer::LME
    } else {
        ctl.efer
    };
    (e | efer::SVME, held)
}

/// Interrupt shadow bit of `int_state`.
pub const INT_STATE_SHADOW: u32 = 1 << 0;

/// Event injection (APM 15.20): valid, with an error code, type "exception".
pub mod event {
    /// The injection is valid.
    pub const VALID: u32 = 1 << 31;
    /// Push an error code.
    pub const ERROR_VALID: u32 = 1 << 11;
    /// Type 3: exception.
    pub const TYPE_EXCEPTION: u32 = 3 << 8;
}

/// SVM exit codes Keel handles by number (APM Appendix C).
#[expect(missing_docs, reason = "the names are the APM's")]
pub mod exit_code {
    pub const CPUID: u64 = 0x72;
    pub const INVD: u64 = 0x76;
    pub const MSR: u64 = 0x7c;
    pub const SHUTDOWN: u64 = 0x7f;
    pub const VMRUN: u64 = 0x80;
    pub const VMMCALL: u64 = 0x81;
    pub const XSETBV: u64 = 0x8d;
    pub const INVALID: u64 = u64::MAX;
}

/// Size of the MSR permission map: two 4 KiB pages.
pub const MSRPM_SIZE: usize = 8192;

/// Where an MSR's two permission bits (read, then write) are in the MSR permission map (APM
/// 15.11): the byte index and the bit of the read intercept in it. `None` for MSRs outside
/// the three ranges the map covers: accessing those always exits.
pub const fn msrpm_position(msr: u32) -> Option<(usize, u8)> {
    let (base, first) = match msr {
        0x0000_0000..=0x0000_1fff => (0x0000, 0x0000_0000),
        0xc000_0000..=0xc000_1fff => (0x0800, 0xc000_0000),
        0xc001_0000..=0xc001_1fff => (0x1000, 0xc001_0000),
        _ => return None,
    };
    let bit = (msr - first) as usize * 2;
    Some((base + bit / 8, (bit % 8) as u8))
}

/// Sets the read and/or write intercept of `msr` in an MSR permission map.
/// Returns false if the map does not cover the MSR.
pub fn msrpm_intercept(map: &mut [u8; MSRPM_SIZE], msr: u32, read: bool, write: bool) -> bool {
    let Some((byte, bit)) = msrpm_position(msr) else {
        return false;
    };
    if read {
        map[byte] |= 1 << bit;
    }
    if write {
        map[byte] |= 1 << (bit + 1);
    }
    true
}

/// Converts the attributes a descriptor holds (its bits 40..55, as LAR returns them in bits
/// 8..23) to the VMCB's packed format.
pub const fn attrib_from_lar(lar: u32) -> u16 {
    (((lar >> 8) & 0xff) | ((lar >> 12) & 0xf00)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msrpm_positions() {
        // EFER (0xc0000080): range 2, index 0x80 -> bit 0x100 -> byte 0x800 + 0x20.
        assert_eq!(msrpm_position(0xc000_0080), Some((0x820, 0)));
        // VM_HSAVE_PA (0xc0010117): range 3, index 0x117 -> bit 0x22e -> byte 0x1045, bit 6.
        assert_eq!(msrpm_position(0xc001_0117), Some((0x1045, 6)));
        assert_eq!(msrpm_position(0x0000_0003), Some((0, 6)));
        assert_eq!(msrpm_position(0x4000_0000), None);
        let mut map = [0u8; MSRPM_SIZE];
        assert!(msrpm_intercept(&mut map, 0xc001_0117, true, true));
        assert_eq!(map[0x1045], 0xc0);
        assert!(!msrpm_intercept(&mut map, 0x8000_0000, true, true));
    }

    #[test]
    fn lar_to_vmcb_attrib() {
        // 64-bit code, DPL 0: type 0xb, S, P; L in the flags nibble.
        assert_eq!(attrib_from_lar(0x0020_9b00), 0x029b);
        // Flat 32-bit data with G and D/B.
        assert_eq!(attrib_from_lar(0x00cf_9300), 0x0c93);
    }

    #[test]
    fn lme_is_held_back_only_without_paging_and_pae() {
        use crate::arch::{cr0, cr4, efer};
        use crate::state::Ctl;
        let real = Ctl {
            efer: efer::LME,
            ..Ctl::default()
        };
        assert_eq!(hardware_efer(&real), (efer::SVME, true));
        let pae = Ctl {
            cr4: cr4::PAE,
            ..real
        };
        assert_eq!(hardware_efer(&pae), (efer::LME | efer::SVME, false));
        let long = Ctl {
            cr0: cr0::PE | cr0::PG,
            efer: efer::LME | efer::LMA,
            ..pae
        };
        assert_eq!(
            hardware_efer(&long),
            (efer::LME | efer::LMA | efer::SVME, false)
        );
        assert_eq!(hardware_efer(&Ctl::default()), (efer::SVME, false));
    }
}

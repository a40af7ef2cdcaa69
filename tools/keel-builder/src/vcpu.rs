//! The boot vCPU's state at the PVH entry, as plain data.
//!
//! Xen's PVH entry (docs/misc/pvh.pandoc; the values from tools/libs/guest/xg_dom_x86.c
//! `vcpu_hvm`): 32-bit protected mode without paging, CR0 = PE|ET, CR4 = EFER = 0; CS a flat
//! 4 GiB execute/read code segment (attributes 0xc9b), DS/ES/SS flat read/write data
//! segments (0xc93), TR a busy 32-bit TSS at 0 with limit 0x67 (0x8b); EIP the
//! `XEN_ELFNOTE_PHYS32_ENTRY` value, EBX the start info's address, every other GPR 0, EFLAGS
//! 2 (only the reserved bit: IF clear). Xen leaves the selectors 0 and GDTR/IDTR empty: the
//! kernel loads its own GDT before it touches a segment register, and an early fault
//! triple-faults. FS, GS and LDTR are unusable (null). Xen also sets MTRRdefType to
//! write-back, enabled (0x806), which is MSR state and not part of this struct.
//!
//! Segment attributes are the descriptor's access bits packed as SVM packs them, which is
//! also the uapi's format (`KEEL_SEG_*` in uapi/linux/keel.h, struct keel_segment.attrib):
//! type in bits 0-3, S 4, DPL 5-6, P 7, AVL 8, L 9, D/B 10, G 11. Xen's "arbytes" use the same
//! packing.

/// CR0.PE: protected mode.
pub const CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (hardwired to 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// RFLAGS bit 1, always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Segment attributes of the PVH entry.
pub mod attrib {
    /// A flat 32-bit code segment: type 0xb (execute/read, accessed), S, P, D/B, G.
    pub const CODE32: u16 = 0xc9b;
    /// A flat 32-bit data segment: type 0x3 (read/write, accessed), S, P, D/B, G.
    pub const DATA32: u16 = 0xc93;
    /// A busy 32-bit TSS: type 0xb, P (a system segment: S clear).
    pub const TSS32_BUSY: u16 = 0x8b;
    /// An unusable segment (P clear).
    pub const UNUSABLE: u16 = 0;
}

/// A segment register's hidden state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by G).
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Attributes (see the module's doc).
    pub attrib: u16,
}

/// A descriptor-table register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    /// Base address.
    pub base: u64,
    /// Limit.
    pub limit: u16,
}

/// The boot vCPU's registers at the PVH entry. GPRs not listed are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// RIP: the PVH entry point.
    pub rip: u64,
    /// RBX: the guest-physical address of `hvm_start_info`.
    pub rbx: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CS.
    pub cs: Segment,
    /// DS.
    pub ds: Segment,
    /// ES.
    pub es: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// SS.
    pub ss: Segment,
    /// TR.
    pub tr: Segment,
    /// LDTR.
    pub ldt: Segment,
    /// GDTR.
    pub gdt: DescriptorTable,
    /// IDTR.
    pub idt: DescriptorTable,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl VcpuState {
    /// The PVH entry state: EIP = `entry`, EBX = `start_info`.
    pub fn pvh_entry(entry: u32, start_info: u32) -> Self {
        let flat = |attrib| Segment {
            base: 0,
            limit: u32::MAX,
            selector: 0,
            attrib,
        };
        let unusable = Segment::default();
        Self {
            rip: entry.into(),
            rbx: start_info.into(),
            rflags: RFLAGS_RESERVED,
            cs: flat(attrib::CODE32),
            ds: flat(attrib::DATA32),
            es: flat(attrib::DATA32),
            fs: unusable,
            gs: unusable,
            ss: flat(attrib::DATA32),
            tr: Segment {
                base: 0,
                limit: 0x67,
                selector: 0,
                attrib: attrib::TSS32_BUSY,
            },
            ldt: unusable,
            gdt: DescriptorTable::default(),
            idt: DescriptorTable::default(),
            cr0: CR0_PE | CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_entry_state_is_xens() {
        let s = VcpuState::pvh_entry(0x1afe570, 0x10_0000);
        assert_eq!((s.rip, s.rbx, s.rflags), (0x1afe570, 0x10_0000, 2));
        assert_eq!(s.cr0, 0x11);
        assert_eq!((s.cr4, s.efer, s.cr3), (0, 0, 0));
        assert_eq!(
            (s.cs.attrib, s.cs.base, s.cs.limit),
            (0xc9b, 0, 0xffff_ffff)
        );
        for d in [s.ds, s.es, s.ss] {
            assert_eq!((d.attrib, d.base, d.limit), (0xc93, 0, 0xffff_ffff));
        }
        assert_eq!((s.tr.attrib, s.tr.base, s.tr.limit), (0x8b, 0, 0x67));
        assert_eq!([s.fs.attrib, s.gs.attrib, s.ldt.attrib], [0; 3]);
    }
}

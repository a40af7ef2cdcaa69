//! The x86 state a bare guest starts in: the registers, the segment state, and the structures
//! that state points at in guest memory (a GDT with a TSS and, for 64-bit guests, identity page
//! tables).
//!
//! Guest memory layout (the low pages are free: flat images load at 1 MiB or 0x7c00):
//!
//! | address  | what                                              | modes          |
//! | -------- | ------------------------------------------------- | -------------- |
//! | `0x1000` | GDT: null, code64, code32, data, TSS (16 bytes)   | prot32, long64 |
//! | `0x1080` | the TSS (104 bytes, no I/O bitmap)                | prot32, long64 |
//! | `0x2000` | PML4                                              | long64         |
//! | `0x3000` | PDPT                                              | long64         |
//! | `0x4000` | page directories, one per GiB of RAM, 2 MiB pages | long64         |
//!
//! The segment state follows Xen's PVH entry for 32-bit guests (docs/misc/pvh.pandoc: CR0.PE,
//! flat 32-bit code and data, a busy 32-bit TSS in TR, ebx = the start info, here 0) and the
//! usual long-mode entry for 64-bit ones (SDM vol. 3, 10.8.5: CR4.PAE, EFER.LME|LMA, CR0.PG, a
//! code segment with L set). Segment attributes are the descriptor's access bits packed as SVM
//! packs them (`KEEL_SEG_*`), which is also how a GDT descriptor holds them at bits 40..56, so
//! the GDT and the segment registers are built from the same [`Segment`] values.
use std::ops::Range;

use keel_sys::{uapi, GuestAddress};
use serde::Serialize;

/// The mode the vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// 16-bit real mode, CS = 0 (a boot sector).
    Real,
    /// 32-bit protected mode, paging off (Xen's PVH entry).
    Prot32,
    /// 64-bit long mode on identity page tables.
    Long64,
}

impl Mode {
    /// The name the command line uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::Prot32 => "prot32",
            Self::Long64 => "long64",
        }
    }

    /// The highest address + 1 the initial instruction and stack pointers can hold.
    pub fn address_limit(self) -> u64 {
        match self {
            Self::Real => 1 << 16,
            Self::Prot32 => 1 << 32,
            Self::Long64 => u64::MAX,
        }
    }
}

/// The GDT's address.
pub const GDT_ADDR: u64 = 0x1000;
/// The TSS's address.
pub const TSS_ADDR: u64 = 0x1080;
/// The PML4's address.
pub const PML4_ADDR: u64 = 0x2000;
/// The PDPT's address.
pub const PDPT_ADDR: u64 = 0x3000;
/// The first page directory's address.
pub const PD_ADDR: u64 = 0x4000;

/// GDT selector of the 64-bit code segment.
pub const SEL_CODE64: u16 = 0x08;
/// GDT selector of the 32-bit code segment.
pub const SEL_CODE32: u16 = 0x10;
/// GDT selector of the data segment.
pub const SEL_DATA: u16 = 0x18;
/// GDT selector of the TSS (a 16-byte descriptor).
pub const SEL_TSS: u16 = 0x20;
/// Bytes of GDT: null, code64, code32, data, and the two halves of the TSS descriptor.
const GDT_SIZE: u64 = 6 * 8;
/// A TSS without an I/O permission bitmap (SDM vol. 3, 8.7 and 9.7).
const TSS_LIMIT: u32 = 0x67;

const PAGE: u64 = 4096;
const PAGE_2M: u64 = 2 << 20;
/// Page-table entry bits (SDM vol. 3, 5.5): present, writable, and for PDEs a 2 MiB page.
const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PS: u64 = 1 << 7;

// The control-register, EFER and RFLAGS bits are the core crate's (`keel_core::arch`): CR0
// PE, ET (hardwired on every CPU since the Pentium), NE (VMX requires it), PG; RFLAGS bit 1
// is always set and IF stays clear.
use keel_core::arch::{cr0, cr4, efer, rflags};

/// Segment attributes (`KEEL_SEG_*`).
const fn seg_type(t: u16) -> u16 {
    t & 0xf
}
const S: u16 = uapi::KEEL_SEG_S as u16;
const P: u16 = uapi::KEEL_SEG_P as u16;
const L: u16 = uapi::KEEL_SEG_L as u16;
const DB: u16 = uapi::KEEL_SEG_DB as u16;
const G: u16 = uapi::KEEL_SEG_G as u16;
/// Type 0xb: code, execute/read, accessed; or, with S clear, a busy 32/64-bit TSS.
const TYPE_CODE: u16 = seg_type(0xb);
const TYPE_BUSY_TSS: u16 = seg_type(0xb);
/// Type 0x3: data, read/write, accessed.
const TYPE_DATA: u16 = seg_type(0x3);

/// One segment: the hidden part of a segment register, and what its descriptor holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit in bytes (with G, the low 12 bits are ones).
    pub limit: u32,
    /// The selector that names it.
    pub selector: u16,
    /// `KEEL_SEG_*` attributes.
    pub attrib: u16,
}

impl Segment {
    const CODE64: Self = Self::flat(SEL_CODE64, TYPE_CODE | S | P | L | G);
    const CODE32: Self = Self::flat(SEL_CODE32, TYPE_CODE | S | P | DB | G);
    const DATA: Self = Self::flat(SEL_DATA, TYPE_DATA | S | P | DB | G);
    const TSS: Self = Self {
        base: TSS_ADDR,
        limit: TSS_LIMIT,
        selector: SEL_TSS,
        attrib: TYPE_BUSY_TSS | P,
    };
    const REAL_CODE: Self = Self::real(TYPE_CODE | S | P);
    const REAL_DATA: Self = Self::real(TYPE_DATA | S | P);
    /// Real mode has no TR of its own; the hardware still wants a usable busy TSS.
    const REAL_TSS: Self = Self::real(TYPE_BUSY_TSS | P);
    /// Unusable (P clear): the LDT.
    const UNUSABLE: Self = Self {
        base: 0,
        limit: 0,
        selector: 0,
        attrib: 0,
    };

    /// A flat 4 GiB segment.
    const fn flat(selector: u16, attrib: u16) -> Self {
        Self {
            base: 0,
            limit: u32::MAX,
            selector,
            attrib,
        }
    }

    /// A real-mode segment at 0: selector 0, 64 KiB.
    const fn real(attrib: u16) -> Self {
        Self {
            base: 0,
            limit: 0xffff,
            selector: 0,
            attrib,
        }
    }

    /// The segment's 8-byte GDT descriptor (SDM vol. 3, 3.4.5); a system segment's base above
    /// 4 GiB would need the 16-byte form's second half, which [`gdt`] adds.
    pub fn descriptor(&self) -> u64 {
        let limit = if self.attrib & G != 0 {
            u64::from(self.limit >> 12)
        } else {
            u64::from(self.limit)
        };
        let base = self.base;
        let attrib = u64::from(self.attrib);
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | ((attrib & 0xff) << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((attrib >> 8) & 0xf) << 52)
            | (((base >> 24) & 0xff) << 56)
    }

    fn to_uapi(self) -> uapi::keel_segment {
        uapi::keel_segment {
            base: self.base,
            limit: self.limit,
            selector: self.selector,
            attrib: self.attrib,
        }
    }
}

/// Bytes `bytes` to copy into guest memory at `gpa`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// Where.
    pub gpa: GuestAddress,
    /// What.
    pub bytes: Vec<u8>,
}

/// Page directories needed to map `memory` bytes with 2 MiB pages.
fn page_directories(memory: u64) -> u64 {
    memory.div_ceil(PAGE_2M).div_ceil(512)
}

/// The guest memory the boot structures of `mode` occupy (none in real mode).
pub fn reserved(mode: Mode, memory: u64) -> Option<Range<u64>> {
    match mode {
        Mode::Real => None,
        Mode::Prot32 => Some(GDT_ADDR..TSS_ADDR + u64::from(TSS_LIMIT) + 1),
        Mode::Long64 => Some(GDT_ADDR..PD_ADDR + page_directories(memory) * PAGE),
    }
}

/// The GDT: null, code64, code32, data, then the TSS's 16-byte descriptor (in 32-bit mode its
/// second half reads as a null descriptor).
pub fn gdt() -> Vec<u8> {
    let tss_high = Segment::TSS.base >> 32;
    let entries = [
        0,
        Segment::CODE64.descriptor(),
        Segment::CODE32.descriptor(),
        Segment::DATA.descriptor(),
        Segment::TSS.descriptor(),
        tss_high,
    ];
    debug_assert_eq!(entries.len() as u64 * 8, GDT_SIZE);
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// The TSS: all zero (no stacks to switch to: the guest runs at CPL 0 with interrupts off)
/// but the I/O map base, set past the limit so there is no I/O permission bitmap.
fn tss() -> Vec<u8> {
    let mut tss = vec![0u8; TSS_LIMIT as usize + 1];
    tss[102..104].copy_from_slice(&(TSS_LIMIT as u16 + 1).to_le_bytes());
    tss
}

/// Identity page tables for `memory` bytes: PML4, PDPT, then one page directory per GiB, each
/// entry a 2 MiB page (SDM vol. 3, 5.5.4).
pub fn page_tables(memory: u64) -> Vec<Blob> {
    let pds = page_directories(memory);
    let mut pml4 = vec![0u8; PAGE as usize];
    pml4[..8].copy_from_slice(&(PDPT_ADDR | PTE_P | PTE_RW).to_le_bytes());
    let mut pdpt = vec![0u8; PAGE as usize];
    for i in 0..pds {
        let pde = (PD_ADDR + i * PAGE) | PTE_P | PTE_RW;
        pdpt[i as usize * 8..][..8].copy_from_slice(&pde.to_le_bytes());
    }
    let pages = memory.div_ceil(PAGE_2M);
    let mut dirs = vec![0u8; (pds * PAGE) as usize];
    for page in 0..pages {
        let entry = (page * PAGE_2M) | PTE_P | PTE_RW | PTE_PS;
        dirs[page as usize * 8..][..8].copy_from_slice(&entry.to_le_bytes());
    }
    vec![
        Blob {
            gpa: GuestAddress(PML4_ADDR),
            bytes: pml4,
        },
        Blob {
            gpa: GuestAddress(PDPT_ADDR),
            bytes: pdpt,
        },
        Blob {
            gpa: GuestAddress(PD_ADDR),
            bytes: dirs,
        },
    ]
}

/// What to write into guest memory before the first run for `mode`.
pub fn boot_blobs(mode: Mode, memory: u64) -> Vec<Blob> {
    if mode == Mode::Real {
        return Vec::new();
    }
    let mut low = gdt();
    low.resize((TSS_ADDR - GDT_ADDR) as usize, 0);
    low.extend(tss());
    let mut blobs = vec![Blob {
        gpa: GuestAddress(GDT_ADDR),
        bytes: low,
    }];
    if mode == Mode::Long64 {
        blobs.extend(page_tables(memory));
    }
    blobs
}

/// The initial stack pointer: the top of RAM, within what the mode can address.
pub fn stack_top(mode: Mode, memory: u64) -> u64 {
    // 16 bytes below the mode's limit, so the value fits in SP / ESP and stays aligned.
    match mode {
        Mode::Long64 => memory,
        _ => memory.min(mode.address_limit() - 16),
    }
}

/// The general registers at the first entry: `entry` in RIP, the stack at the top of RAM,
/// RFLAGS with IF clear, everything else (ebx: no PVH start info) zero.
pub fn initial_regs(mode: Mode, entry: u64, memory: u64) -> uapi::keel_regs {
    uapi::keel_regs {
        rip: entry,
        rsp: stack_top(mode, memory),
        rflags: rflags::FIXED,
        rbx: 0,
        ..Default::default()
    }
}

/// The segment and control registers of `mode`, on top of the vCPU's reset state `reset`
/// (of which only CR2 survives).
pub fn initial_sregs(mode: Mode, reset: &uapi::keel_sregs) -> uapi::keel_sregs {
    let (code, data, tr) = match mode {
        Mode::Real => (Segment::REAL_CODE, Segment::REAL_DATA, Segment::REAL_TSS),
        Mode::Prot32 => (Segment::CODE32, Segment::DATA, Segment::TSS),
        Mode::Long64 => (Segment::CODE64, Segment::DATA, Segment::TSS),
    };
    let data = data.to_uapi();
    let (gdt, idt) = match mode {
        // The real-mode IVT at 0, as after reset.
        Mode::Real => ((0, 0xffff), (0, 0x3ff)),
        // No IDT: the guest runs with interrupts off, and an exception shuts it down.
        _ => ((GDT_ADDR, GDT_SIZE as u16 - 1), (0, 0)),
    };
    let (cr0, cr3, cr4, efer) = match mode {
        Mode::Real => (cr0::ET | cr0::NE, 0, 0, 0),
        Mode::Prot32 => (cr0::PE | cr0::ET | cr0::NE, 0, 0, 0),
        Mode::Long64 => (
            cr0::PE | cr0::ET | cr0::NE | cr0::PG,
            PML4_ADDR,
            cr4::PAE,
            efer::LME | efer::LMA,
        ),
    };
    uapi::keel_sregs {
        cs: code.to_uapi(),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: tr.to_uapi(),
        ldt: Segment::UNUSABLE.to_uapi(),
        gdt: uapi::keel_dtable {
            base: gdt.0,
            limit: gdt.1,
            pad: [0; 3],
        },
        idt: uapi::keel_dtable {
            base: idt.0,
            limit: idt.1,
            pad: [0; 3],
        },
        cr0,
        cr2: reset.cr2,
        cr3,
        cr4,
        efer,
        reserved: [0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    /// A descriptor read back into a segment, the way the CPU loads one.
    fn decode(desc: u64, selector: u16) -> Segment {
        let attrib = (((desc >> 40) & 0xff) | (((desc >> 52) & 0xf) << 8)) as u16;
        let mut limit = ((desc & 0xffff) | (((desc >> 48) & 0xf) << 16)) as u32;
        if attrib & G != 0 {
            limit = (limit << 12) | 0xfff;
        }
        let base = ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24);
        Segment {
            base,
            limit,
            selector,
            attrib,
        }
    }

    #[test]
    fn known_descriptors() {
        // The values every x86-64 boot GDT has.
        assert_eq!(Segment::CODE64.descriptor(), 0x00af_9b00_0000_ffff);
        assert_eq!(Segment::CODE32.descriptor(), 0x00cf_9b00_0000_ffff);
        assert_eq!(Segment::DATA.descriptor(), 0x00cf_9300_0000_ffff);
        assert_eq!(Segment::TSS.descriptor(), 0x0000_8b00_1080_0067);
    }

    #[test]
    fn gdt_matches_the_segment_registers() {
        let gdt = gdt();
        assert_eq!(gdt.len() as u64, GDT_SIZE);
        assert_eq!(u64_at(&gdt, 0), 0);
        for mode in [Mode::Prot32, Mode::Long64] {
            let s = initial_sregs(mode, &uapi::keel_sregs::default());
            for seg in [s.cs, s.ds, s.es, s.ss, s.fs, s.gs, s.tr] {
                let desc = u64_at(&gdt, usize::from(seg.selector));
                let back = decode(desc, seg.selector);
                assert_eq!(back.base, seg.base, "{mode:?} {seg:?}");
                assert_eq!(back.limit, seg.limit, "{mode:?} {seg:?}");
                // The CPU's view of a loaded descriptor: the same attributes.
                assert_eq!(back.attrib, seg.attrib, "{mode:?} {seg:?}");
            }
            assert_eq!(s.gdt.base, GDT_ADDR);
            assert_eq!(u64::from(s.gdt.limit) + 1, GDT_SIZE);
            // TR is a present busy TSS; the LDT is unusable.
            assert_eq!(s.tr.attrib, 0x8b);
            assert_eq!(s.ldt.attrib, 0);
        }
        // The TSS descriptor's upper half (base 63:32) is zero.
        assert_eq!(u64_at(&gdt, 0x28), 0);
    }

    #[test]
    fn long64_state() {
        let reset = uapi::keel_sregs {
            cr2: 0x1234,
            cr0: 0x6000_0010,
            ..Default::default()
        };
        let s = initial_sregs(Mode::Long64, &reset);
        assert_eq!(s.cs.attrib, 0xa9b); // L, G, present, code
        assert_eq!(s.cs.attrib & DB, 0); // L and D together are reserved
        assert_eq!(s.cs.selector, SEL_CODE64);
        assert_eq!(s.cr0, 0x8000_0031);
        assert_eq!(s.cr3, PML4_ADDR);
        assert_eq!(s.cr4, 0x20);
        assert_eq!(s.efer, 0x500);
        assert_eq!(s.cr2, 0x1234);
        assert_eq!(s.ds.limit, u32::MAX);
        let r = initial_regs(Mode::Long64, 0x10_0000, 16 << 20);
        assert_eq!((r.rip, r.rsp, r.rflags), (0x10_0000, 16 << 20, 2));
    }

    #[test]
    fn prot32_state_is_pvh() {
        let s = initial_sregs(Mode::Prot32, &uapi::keel_sregs::default());
        assert_eq!(s.cs.attrib, 0xc9b);
        assert_eq!(s.ss.attrib, 0xc93);
        assert_eq!((s.cs.base, s.cs.limit), (0, u32::MAX));
        assert_eq!(s.cr0 & (cr0::PE | cr0::PG), cr0::PE);
        assert_eq!((s.cr4, s.efer), (0, 0));
        assert_eq!(s.tr.limit, 0x67);
        let r = initial_regs(Mode::Prot32, 0x10_0000, 8 << 30);
        assert_eq!(r.rsp, 0xffff_fff0);
        assert_eq!(r.rbx, 0);
    }

    #[test]
    fn real_mode_state() {
        let s = initial_sregs(Mode::Real, &uapi::keel_sregs::default());
        assert_eq!((s.cs.selector, s.cs.base, s.cs.limit), (0, 0, 0xffff));
        assert_eq!(s.cs.attrib, 0x9b);
        assert_eq!(s.ds.attrib, 0x93);
        assert_eq!(s.cr0 & (cr0::PE | cr0::PG), 0);
        assert_eq!(s.tr.attrib, 0x8b);
        assert_eq!(s.ldt.attrib, 0);
        assert_eq!((s.idt.base, s.idt.limit), (0, 0x3ff));
        assert_eq!(initial_regs(Mode::Real, 0x7c00, 16 << 20).rsp, 0xfff0);
        assert_eq!(initial_regs(Mode::Real, 0x7c00, 0x8000).rsp, 0x8000);
        assert!(boot_blobs(Mode::Real, 16 << 20).is_empty());
    }

    #[test]
    fn identity_tables_for_16m() {
        let blobs = page_tables(16 << 20);
        let (pml4, pdpt, pd) = (&blobs[0], &blobs[1], &blobs[2]);
        assert_eq!(pml4.gpa, GuestAddress(PML4_ADDR));
        assert_eq!(u64_at(&pml4.bytes, 0), 0x3003);
        assert_eq!(u64_at(&pml4.bytes, 8), 0);
        assert_eq!(u64_at(&pdpt.bytes, 0), 0x4003);
        assert_eq!(u64_at(&pdpt.bytes, 8), 0);
        assert_eq!(pd.bytes.len(), 4096);
        for i in 0..8 {
            assert_eq!(u64_at(&pd.bytes, i * 8), (i as u64) << 21 | 0x83);
        }
        assert_eq!(u64_at(&pd.bytes, 8 * 8), 0);
        assert_eq!(reserved(Mode::Long64, 16 << 20), Some(0x1000..0x5000));
    }

    #[test]
    fn identity_tables_cover_odd_sizes_and_many_gib() {
        // 1 MiB still gets its one 2 MiB page; 3 GiB + 4 KiB needs four directories.
        let small = page_tables(1 << 20);
        assert_eq!(u64_at(&small[2].bytes, 0), 0x83);
        assert_eq!(u64_at(&small[2].bytes, 8), 0);
        let memory = (3 << 30) + 4096;
        let big = page_tables(memory);
        assert_eq!(big[2].bytes.len(), 4 * 4096);
        for i in 0..4 {
            assert_eq!(u64_at(&big[1].bytes, i * 8), (0x4000 + i as u64 * 4096) | 3);
        }
        assert_eq!(u64_at(&big[1].bytes, 4 * 8), 0);
        // The last entry maps the 2 MiB page holding the last 4 KiB.
        let last = 3 * 512;
        assert_eq!(u64_at(&big[2].bytes, last * 8), (3u64 << 30) | 0x83);
        assert_eq!(u64_at(&big[2].bytes, (last + 1) * 8), 0);
        assert_eq!(reserved(Mode::Long64, memory), Some(0x1000..0x8000));
        // The largest domain needs 64 directories: still below 1 MiB.
        assert_eq!(
            reserved(Mode::Long64, uapi::KEEL_MAX_DOMAIN_MEMORY),
            Some(0x1000..0x44000)
        );
    }

    #[test]
    fn low_blob_holds_gdt_and_tss() {
        let blobs = boot_blobs(Mode::Prot32, 16 << 20);
        assert_eq!(blobs.len(), 1);
        let low = &blobs[0];
        assert_eq!(low.gpa, GuestAddress(GDT_ADDR));
        assert_eq!(low.bytes.len() as u64, TSS_ADDR - GDT_ADDR + 0x68);
        assert_eq!(&low.bytes[..GDT_SIZE as usize], &gdt()[..]);
        let tss = &low.bytes[(TSS_ADDR - GDT_ADDR) as usize..];
        assert_eq!(u16::from_le_bytes([tss[102], tss[103]]), 0x68);
        assert_eq!(
            reserved(Mode::Prot32, 16 << 20),
            Some(GDT_ADDR..TSS_ADDR + 0x68)
        );
        assert_eq!(boot_blobs(Mode::Long64, 16 << 20).len(), 4);
    }
}

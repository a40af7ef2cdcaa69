//! Walking a guest's page tables in software.
//!
//! QEMU's SVM has no decode assists and no next-RIP save, so to skip an intercepted
//! instruction Keel reads its bytes at the guest's RIP; MMIO emulation reads them the same way.
//! The root-mode code runs on its own page tables, where a user-mode RIP of Dom0 is not mapped:
//! it translates the linear address through the guest's CR3 and reads physical memory. Every
//! paging mode is covered (SDM Vol. 3A, chapter 4): none, 32-bit (4.3), PAE (4.4) and 4- or
//! 5-level (4.5). The walk only reads; it sets no accessed bits and checks no permissions
//! beyond "present": the instruction was just fetched by the CPU, so it is executable. It does
//! report the rights it saw, for callers that need to check a data access.

use super::arch::{cr0, cr4, efer};

/// Page-table entry bits.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const PAGE_SIZE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
/// Physical-address bits 51:12 of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// How the guest translates linear addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// Paging disabled (CR0.PG = 0): linear addresses are physical (32 bits).
    Off,
    /// 32-bit paging (CR4.PAE = 0); `pse` is CR4.PSE, which enables 4 MiB pages.
    Bits32 {
        /// CR4.PSE: page-directory entries with PS set map 4 MiB pages.
        pse: bool,
    },
    /// PAE paging (CR4.PAE = 1 outside IA-32e mode).
    Pae,
    /// 4-level paging (IA-32e mode, CR4.LA57 = 0).
    Level4,
    /// 5-level paging (IA-32e mode, CR4.LA57 = 1).
    Level5,
}

impl PagingMode {
    /// The mode the guest's CR0, CR4 and EFER select. EFER.LMA must reflect whether the guest
    /// is in IA-32e mode (the VMCB's EFER does; under VMX, take LMA from the "IA-32e mode
    /// guest" entry control if the guest's EFER is not loaded from the VMCS).
    pub fn from_control_registers(cr0: u64, cr4: u64, efer: u64) -> Self {
        if cr0 & cr0::PG == 0 {
            Self::Off
        } else if cr4 & cr4::PAE == 0 {
            Self::Bits32 {
                pse: cr4 & cr4::PSE != 0,
            }
        } else if efer & efer::LMA == 0 {
            Self::Pae
        } else if cr4 & cr4::LA57 != 0 {
            Self::Level5
        } else {
            Self::Level4
        }
    }

    /// Whether linear addresses are 32 bits wide (the upper bits are dropped).
    fn is_32bit(self) -> bool {
        matches!(self, Self::Off | Self::Bits32 { .. } | Self::Pae)
    }
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address.
    pub pa: u64,
    /// The size of the page mapping it: 4 KiB, 2 MiB, 4 MiB or 1 GiB (4 KiB without paging).
    pub page_size: u64,
    /// R/W was set at every level.
    pub write: bool,
    /// U/S was set at every level.
    pub user: bool,
    /// No level had XD (bit 63) set. Bit 63 is XD only when EFER.NXE = 1 and reserved
    /// otherwise; this does not check which. Always true for 32-bit paging, which has no XD.
    pub exec: bool,
}

impl Translation {
    /// A translation with every right, narrowed by the entries of the walk.
    fn new(pa: u64, page_size: u64) -> Self {
        Self {
            pa,
            page_size,
            write: true,
            user: true,
            exec: true,
        }
    }

    /// Narrows the rights by those of a paging-structure entry (R/W, U/S, XD).
    fn limit_by(&mut self, entry: u64) {
        self.write &= entry & WRITABLE != 0;
        self.user &= entry & USER != 0;
        self.exec &= entry & NO_EXECUTE == 0;
    }
}

/// Translates the linear address `la` in paging mode `mode` through the page tables at `cr3`.
/// `read_phys` reads the 8 bytes at a physical address, which is always 8-byte aligned (the
/// 4-byte entries of 32-bit paging are taken from the aligned quadword that holds them), or
/// returns `None` when the address is not RAM. Returns `None` if a level is not present.
///
/// In 32-bit, PAE and no paging, bits 63:32 of `la` are ignored. For PAE paging the four
/// PDPTEs are read from memory, where the CPU uses the copies it loaded when CR3 was last
/// written (SDM Vol. 3A, 4.4.1): they differ only if the guest changed them without reloading
/// CR3.
pub fn walk(
    mode: PagingMode,
    cr3: u64,
    la: u64,
    mut read_phys: impl FnMut(u64) -> Option<u64>,
) -> Option<Translation> {
    let la = if mode.is_32bit() {
        la & 0xffff_ffff
    } else {
        la
    };
    match mode {
        PagingMode::Off => Some(Translation::new(la, 1 << 12)),
        PagingMode::Bits32 { pse } => walk_32bit(pse, cr3, la, read_phys),
        PagingMode::Pae => {
            // CR3 bits 31:5 locate the 32-byte PDPT; la bits 31:30 select one of 4 entries.
            let pdpte = read_phys((cr3 & 0xffff_ffe0) + ((la >> 30) & 3) * 8)?;
            if pdpte & PRESENT == 0 {
                return None;
            }
            // PDPTEs have no R/W, U/S or XD bits: the rights start at the page directory.
            walk_8byte_entries(pdpte & ADDR_MASK, 21, la, read_phys)
        }
        PagingMode::Level4 => walk_8byte_entries(cr3 & ADDR_MASK, 39, la, read_phys),
        PagingMode::Level5 => walk_8byte_entries(cr3 & ADDR_MASK, 48, la, read_phys),
    }
}

/// 32-bit paging (SDM Vol. 3A, 4.3): a page directory and page tables of 1024 4-byte entries.
fn walk_32bit(
    pse: bool,
    cr3: u64,
    la: u64,
    mut read_phys: impl FnMut(u64) -> Option<u64>,
) -> Option<Translation> {
    let mut read32 = |pa: u64| -> Option<u64> {
        let quad = read_phys(pa & !7)?;
        Some((quad >> ((pa & 4) * 8)) & 0xffff_ffff)
    };
    let pde = read32((cr3 & 0xffff_f000) + ((la >> 22) & 0x3ff) * 4)?;
    if pde & PRESENT == 0 {
        return None;
    }
    if pse && pde & PAGE_SIZE != 0 {
        // A 4 MiB page: address bits 31:22 in the PDE's bits 31:22 and, with PSE-36, bits
        // 39:32 in its bits 20:13 (bits above MAXPHYADDR must be zero).
        let base = (pde & 0xffc0_0000) | ((pde >> 13) & 0xff) << 32;
        let mut t = Translation::new(base | (la & 0x3f_ffff), 1 << 22);
        t.limit_by(pde);
        return Some(t);
    }
    let pte = read32((pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4)?;
    if pte & PRESENT == 0 {
        return None;
    }
    let mut t = Translation::new((pte & 0xffff_f000) | (la & 0xfff), 1 << 12);
    t.limit_by(pde);
    t.limit_by(pte);
    Some(t)
}

/// The walk shared by PAE, 4-level and 5-level paging: tables of 512 8-byte entries, starting
/// at `table`, whose entries are indexed by `la` bits `shift + 8 : shift`.
fn walk_8byte_entries(
    mut table: u64,
    mut shift: u32,
    la: u64,
    mut read_phys: impl FnMut(u64) -> Option<u64>,
) -> Option<Translation> {
    let mut rights = Translation::new(0, 0);
    loop {
        let index = (la >> shift) & 0x1ff;
        let entry = read_phys(table + index * 8)?;
        if entry & PRESENT == 0 {
            return None;
        }
        rights.limit_by(entry);
        // 1 GiB (shift 30) and 2 MiB (shift 21) pages end the walk early.
        if shift <= 30 && entry & PAGE_SIZE != 0 || shift == 12 {
            let page_mask = (1u64 << shift) - 1;
            let base = entry & ADDR_MASK & !page_mask;
            return Some(Translation {
                pa: base | (la & page_mask),
                page_size: 1 << shift,
                ..rights
            });
        }
        table = entry & ADDR_MASK;
        shift -= 9;
    }
}

/// Translates the linear address `la` through the page tables at `cr3` (4-level, or 5-level
/// when `la57`). `read_phys` reads the 8-byte entry at a physical address, or `None` when the
/// address is not RAM. Returns the physical address, or `None` if a level is not present.
///
/// This is [`walk`] for a guest in IA-32e mode (other modes need [`walk`]), without the
/// rights: it runs on every intercepted instruction of Dom0 on a CPU without next-RIP save,
/// so it is kept to a few instructions per level.
#[inline]
pub fn translate(
    cr3: u64,
    la57: bool,
    la: u64,
    mut read_phys: impl FnMut(u64) -> Option<u64>,
) -> Option<u64> {
    // Unrolled, with wrapping arithmetic: no loop counter and no overflow checks.
    let mut entry = |table: u64, shift: u32| -> Option<u64> {
        let e = read_phys(table.wrapping_add(((la >> shift) & 0x1ff) * 8))?;
        (e & PRESENT != 0).then_some(e)
    };
    let large = |e: u64, size: u64| (e & ADDR_MASK & !(size - 1)) | (la & (size - 1));
    let mut table = cr3 & ADDR_MASK;
    if la57 {
        table = entry(table, 48)? & ADDR_MASK;
    }
    table = entry(table, 39)? & ADDR_MASK;
    let pdpte = entry(table, 30)?;
    if pdpte & PAGE_SIZE != 0 {
        return Some(large(pdpte, 1 << 30));
    }
    let pde = entry(pdpte & ADDR_MASK, 21)?;
    if pde & PAGE_SIZE != 0 {
        return Some(large(pde, 1 << 21));
    }
    let pte = entry(pde & ADDR_MASK, 12)?;
    Some((pte & ADDR_MASK) | (la & 0xfff))
}

/// Reads up to `buf.len()` bytes at linear address `la` in paging mode `mode`, crossing into
/// the next page when needed; `read_qword` reads page-table entries as for [`walk`] and
/// `read_byte` reads one byte of physical memory. Returns the number of bytes read (fewer when
/// a page is not mapped). In the 32-bit modes the address wraps at 4 GiB, as the CPU's does.
pub fn read_linear_in(
    mode: PagingMode,
    cr3: u64,
    la: u64,
    buf: &mut [u8],
    mut read_qword: impl FnMut(u64) -> Option<u64>,
    mut read_byte: impl FnMut(u64) -> Option<u8>,
) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let addr = la.wrapping_add(done as u64);
        let Some(t) = walk(mode, cr3, addr, &mut read_qword) else {
            break;
        };
        let in_page = (0x1000 - (addr & 0xfff)) as usize;
        let n = in_page.min(buf.len() - done);
        for i in 0..n {
            match read_byte(t.pa + i as u64) {
                Some(b) => buf[done + i] = b,
                None => return done + i,
            }
        }
        done += n;
    }
    done
}

/// [`read_linear_in`] for a guest in IA-32e mode: 4-level paging, or 5-level when `la57`.
pub fn read_linear(
    cr3: u64,
    la57: bool,
    la: u64,
    buf: &mut [u8],
    read_qword: impl FnMut(u64) -> Option<u64>,
    read_byte: impl FnMut(u64) -> Option<u8>,
) -> usize {
    let mode = if la57 {
        PagingMode::Level5
    } else {
        PagingMode::Level4
    };
    read_linear_in(mode, cr3, la, buf, read_qword, read_byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Sparse physical memory of 8-byte words.
    struct Mem(HashMap<u64, u64>);

    impl Mem {
        fn q(&self, pa: u64) -> Option<u64> {
            Some(*self.0.get(&pa).unwrap_or(&0))
        }
        fn b(&self, pa: u64) -> Option<u8> {
            let word = self.q(pa & !7)?;
            Some((word >> ((pa & 7) * 8)) as u8)
        }
    }

    fn idx(la: u64, shift: u32) -> u64 {
        (la >> shift) & 0x1ff
    }

    #[test]
    fn four_level_4k_2m_and_1g() {
        let mut m = HashMap::new();
        let la_4k = 0x0000_7fff_1234_5678u64;
        let la_2m = 0xffff_8880_0060_0123u64;
        let la_1g = 0xffff_8881_4000_0042u64;
        // PML4 at 0x1000.
        m.insert(0x1000 + idx(la_4k, 39) * 8, 0x2000 | 1);
        m.insert(0x2000 + idx(la_4k, 30) * 8, 0x3000 | 1);
        m.insert(0x3000 + idx(la_4k, 21) * 8, 0x4000 | 1);
        m.insert(0x4000 + idx(la_4k, 12) * 8, 0xabc000 | 1);
        m.insert(0x1000 + idx(la_2m, 39) * 8, 0x5000 | 1);
        m.insert(0x5000 + idx(la_2m, 30) * 8, 0x6000 | 1);
        m.insert(0x6000 + idx(la_2m, 21) * 8, 0x0060_0000 | 0x80 | 1);
        m.insert(0x1000 + idx(la_1g, 39) * 8, 0x5000 | 1);
        m.insert(0x5000 + idx(la_1g, 30) * 8, 0x4000_0000 | 0x80 | 1);
        let mem = Mem(m);
        let rd = |pa| mem.q(pa);
        assert_eq!(translate(0x1000, false, la_4k, rd), Some(0xabc678));
        assert_eq!(translate(0x1000, false, la_2m, rd), Some(0x0060_0123));
        assert_eq!(translate(0x1000, false, la_1g, rd), Some(0x4000_0042));
        // PCID bits in CR3 are ignored; an unmapped address is None.
        assert_eq!(translate(0x1000 | 0x5, false, la_4k, rd), Some(0xabc678));
        assert_eq!(translate(0x1000, false, 0x1000, rd), None);
        // The fast path agrees with the full walk.
        for la in [la_4k, la_2m, la_1g, 0x1000, la_4k + 0x1000] {
            let full = walk(PagingMode::Level4, 0x1000, la, rd).map(|t| t.pa);
            assert_eq!(translate(0x1000, false, la, rd), full, "{la:#x}");
        }
    }

    #[test]
    fn large_page_pat_bit_is_not_address() {
        // Bit 12 of a 2 MiB or 1 GiB entry is PAT, not part of the frame address.
        let la = 0xffff_8880_0060_0123u64;
        let mut m = HashMap::new();
        m.insert(0x1000 + idx(la, 39) * 8, 0x5000 | 1);
        m.insert(0x5000 + idx(la, 30) * 8, 0x6000 | 1);
        m.insert(0x6000 + idx(la, 21) * 8, 0x0060_1000 | 0x80 | 1);
        let mem = Mem(m);
        assert_eq!(
            translate(0x1000, false, la, |pa| mem.q(pa)),
            Some(0x0060_0123)
        );
    }

    #[test]
    fn five_level() {
        let la = 0x00ff_0000_0000_1008u64;
        let mut m = HashMap::new();
        m.insert(0x1000 + idx(la, 48) * 8, 0x2000 | 1);
        m.insert(0x2000 + idx(la, 39) * 8, 0x3000 | 1);
        m.insert(0x3000 + idx(la, 30) * 8, 0x4000 | 1);
        m.insert(0x4000 + idx(la, 21) * 8, 0x5000 | 1);
        m.insert(0x5000 + idx(la, 12) * 8, 0x9000 | 1);
        let mem = Mem(m);
        assert_eq!(translate(0x1000, true, la, |pa| mem.q(pa)), Some(0x9008));
    }

    #[test]
    fn read_crosses_pages() {
        let la = 0x0000_0000_0040_0ffeu64;
        let mut m = HashMap::new();
        m.insert(idx(la, 39) * 8, 0x2000 | 1);
        m.insert(0x2000 + idx(la, 30) * 8, 0x3000 | 1);
        m.insert(0x3000 + idx(la, 21) * 8, 0x4000 | 1);
        m.insert(0x4000 + idx(la, 12) * 8, 0x10000 | 1);
        m.insert(0x4000 + idx(la + 2, 12) * 8, 0x20000 | 1);
        m.insert(0x10ff8, 0x0f01_0000_0000_0000); // bytes 0x10ffe, 0x10fff = 01 0f
        m.insert(0x20000, 0xd9);
        let mem = Mem(m);
        let mut buf = [0u8; 3];
        let n = read_linear(0, false, la, &mut buf, |pa| mem.q(pa), |pa| mem.b(pa));
        assert_eq!(n, 3);
        assert_eq!(buf, [0x01, 0x0f, 0xd9]);
        // The page after is unmapped: a read stops there.
        let mut long = [0u8; 8];
        let n = read_linear(0, false, la + 2, &mut long, |pa| mem.q(pa), |pa| mem.b(pa));
        assert_eq!(n, 8);
        let n = read_linear(
            0,
            false,
            la + 0x1000,
            &mut long,
            |pa| mem.q(pa),
            |pa| mem.b(pa),
        );
        assert_eq!(n, 2);
        let n = read_linear(
            0,
            false,
            0x1234_5000,
            &mut long,
            |pa| mem.q(pa),
            |pa| mem.b(pa),
        );
        assert_eq!(n, 0);
    }

    /// Stores the 4-byte entry `value` at `pa` (4-byte aligned) into quadword memory.
    fn put32(m: &mut HashMap<u64, u64>, pa: u64, value: u32) {
        let shift = (pa & 4) * 8;
        let q = m.entry(pa & !7).or_insert(0);
        *q = (*q & !(0xffff_ffff << shift)) | u64::from(value) << shift;
    }

    /// Memory that fails the test if read at an unaligned address.
    fn aligned(mem: &Mem) -> impl FnMut(u64) -> Option<u64> + '_ {
        |pa| {
            assert_eq!(pa & 7, 0, "unaligned read at {pa:#x}");
            mem.q(pa)
        }
    }

    #[test]
    fn mode_from_control_registers() {
        const PG: u64 = 1 << 31;
        const PE: u64 = 1;
        const PSE: u64 = 1 << 4;
        const PAE: u64 = 1 << 5;
        const LA57: u64 = 1 << 12;
        const LME: u64 = 1 << 8;
        const LMA: u64 = 1 << 10;
        use PagingMode::*;
        let mode = PagingMode::from_control_registers;
        assert_eq!(mode(0, 0, 0), Off);
        assert_eq!(mode(PE, PAE | PSE, LME), Off);
        assert_eq!(mode(PG | PE, 0, 0), Bits32 { pse: false });
        assert_eq!(mode(PG | PE, PSE, 0), Bits32 { pse: true });
        assert_eq!(mode(PG | PE, PAE, 0), Pae);
        // LME alone is not IA-32e mode.
        assert_eq!(mode(PG | PE, PAE | PSE, LME), Pae);
        assert_eq!(mode(PG | PE, PAE, LME | LMA), Level4);
        assert_eq!(mode(PG | PE, PAE | LA57, LME | LMA), Level5);
    }

    #[test]
    fn no_paging_is_identity() {
        let none = |_| -> Option<u64> { panic!("no table is read without paging") };
        let t = walk(PagingMode::Off, 0x1000, 0xb_8123, none).unwrap();
        assert_eq!(t, Translation::new(0xb_8123, 0x1000));
        let t = walk(PagingMode::Off, 0, 0x1_0000_fff0, none).unwrap();
        assert_eq!(t.pa, 0xfff0);
    }

    #[test]
    fn bits32_4k() {
        let la = 0xc052_3456u64;
        let mut m = HashMap::new();
        // Page directory at 0x5000; an odd index puts the PDE in the high half of a quadword.
        assert_eq!((la >> 22) & 1, 1);
        put32(&mut m, 0x5000 + (la >> 22) * 4, 0x7000 | 0b111);
        put32(
            &mut m,
            0x7000 + ((la >> 12) & 0x3ff) * 4,
            0x00ab_c000 | 0b101,
        );
        // Neighbouring entries in the same quadwords must not leak in.
        put32(&mut m, 0x5000 + ((la >> 22) - 1) * 4, 0xffff_ffff);
        put32(&mut m, 0x7000 + (((la >> 12) & 0x3ff) ^ 1) * 4, 0xffff_ffff);
        let mem = Mem(m);
        for pse in [false, true] {
            let t = walk(PagingMode::Bits32 { pse }, 0x5000, la, aligned(&mem)).unwrap();
            assert_eq!(t.pa, 0x00ab_c456);
            assert_eq!(t.page_size, 0x1000);
            // The PTE is read-only; both levels allow user; no XD in 32-bit paging.
            assert!(!t.write && t.user && t.exec);
        }
        // Bits 63:32 of CR3 and of the address are ignored.
        let t = walk(
            PagingMode::Bits32 { pse: false },
            0x5000 | 1 << 40,
            la | 1 << 40,
            aligned(&mem),
        );
        assert_eq!(t.unwrap().pa, 0x00ab_c456);
        // Not present at either level.
        assert_eq!(
            walk(
                PagingMode::Bits32 { pse: false },
                0x5000,
                0x1000,
                aligned(&mem)
            ),
            None
        );
        assert_eq!(
            walk(
                PagingMode::Bits32 { pse: false },
                0x5000,
                la ^ 0x4000,
                aligned(&mem)
            ),
            None
        );
    }

    #[test]
    fn bits32_4m_pages_need_pse() {
        let la = 0x0080_1234u64;
        let mut m = HashMap::new();
        // A PDE with PS: with PSE a 4 MiB page at 0x0c00_0000 (plus PSE-36 bits 39:32 = 0x12
        // in PDE bits 20:13); without PSE, PS is ignored and the PDE points at a page table.
        let pde = 0x0c00_0000 | 0x12 << 13 | 0x80 | 0b011;
        put32(&mut m, 0x5000 + (la >> 22) * 4, pde);
        // The "page table" the PDE names when PS is ignored (bits 31:12 of the PDE).
        let pt = u64::from(pde) & 0xffff_f000;
        put32(&mut m, pt + ((la >> 12) & 0x3ff) * 4, 0x0009_9000 | 0b111);
        let mem = Mem(m);
        let t = walk(PagingMode::Bits32 { pse: true }, 0x5000, la, aligned(&mem)).unwrap();
        assert_eq!(t.pa, 0x12_0c00_0000 | (la & 0x3f_ffff));
        assert_eq!(t.page_size, 4 << 20);
        assert!(t.write && !t.user && t.exec);
        let t = walk(PagingMode::Bits32 { pse: false }, 0x5000, la, aligned(&mem)).unwrap();
        assert_eq!((t.pa, t.page_size), (0x0009_9234, 0x1000));
        assert!(t.write && !t.user);
    }

    #[test]
    fn pae_4k_and_2m() {
        const NX: u64 = 1 << 63;
        let la_4k = 0x4020_3456u64; // PDPTE 1
        let la_2m = 0xc060_0123u64; // PDPTE 3
        let mut m = HashMap::new();
        // The PDPT sits at 0x3020: 32-byte aligned, not page aligned. PDPTEs hold only P and
        // the address (bits 2:1 are reserved, so no rights come from them).
        let pdpt = 0x3020u64;
        m.insert(pdpt + 8, 0x6000 | 1);
        m.insert(pdpt + 3 * 8, 0x7000 | 1);
        m.insert(0x6000 + ((la_4k >> 21) & 0x1ff) * 8, 0x8000 | 0b111);
        m.insert(
            0x8000 + ((la_4k >> 12) & 0x1ff) * 8,
            0x1_2345_6000 | 0b111 | NX,
        );
        m.insert(
            0x7000 + ((la_2m >> 21) & 0x1ff) * 8,
            0x0020_0000 | 0x80 | 0b011,
        );
        let mem = Mem(m);
        // CR3 bits 4:3 are PWT/PCD; bits 63:32 are ignored.
        let cr3 = pdpt | 0x18 | 1 << 36;
        let t = walk(PagingMode::Pae, cr3, la_4k, aligned(&mem)).unwrap();
        assert_eq!((t.pa, t.page_size), (0x1_2345_6456, 0x1000));
        assert!(t.write && t.user && !t.exec);
        let t = walk(PagingMode::Pae, cr3, la_2m, aligned(&mem)).unwrap();
        assert_eq!(
            (t.pa, t.page_size),
            (0x0020_0000 | (la_2m & 0x1f_ffff), 2 << 20)
        );
        assert!(t.write && !t.user && t.exec);
        // PDPTE 0 and 2 are not present; bits 63:32 of the address are ignored.
        assert_eq!(walk(PagingMode::Pae, cr3, 0x0000_1000, aligned(&mem)), None);
        assert_eq!(walk(PagingMode::Pae, cr3, 0x8000_1000, aligned(&mem)), None);
        let t = walk(
            PagingMode::Pae,
            cr3,
            0xffff_ffff_0000_0000 | la_4k,
            aligned(&mem),
        );
        assert_eq!(t.unwrap().pa, 0x1_2345_6456);
    }

    #[test]
    fn long_mode_rights_and_page_sizes() {
        let la = 0x0000_7fff_1234_5678u64;
        let la_1g = 0x0000_0001_4000_0042u64;
        let mut m = HashMap::new();
        m.insert(0x1000 + idx(la, 39) * 8, 0x2000 | 0b111);
        m.insert(0x2000 + idx(la, 30) * 8, 0x3000 | 0b101); // read-only from here down
        m.insert(0x3000 + idx(la, 21) * 8, 0x4000 | 0b111);
        m.insert(0x4000 + idx(la, 12) * 8, 0xabc000 | 0b111 | 1 << 63);
        m.insert(0x1000 + idx(la_1g, 39) * 8, 0x5000 | 0b011); // supervisor
        m.insert(0x5000 + idx(la_1g, 30) * 8, 0x4000_0000 | 0x80 | 0b111);
        let mem = Mem(m);
        let t = walk(PagingMode::Level4, 0x1000, la, aligned(&mem)).unwrap();
        assert_eq!((t.pa, t.page_size), (0xabc678, 0x1000));
        assert!(!t.write && t.user && !t.exec);
        let t = walk(PagingMode::Level4, 0x1000, la_1g, aligned(&mem)).unwrap();
        assert_eq!((t.pa, t.page_size), (0x4000_0042, 1 << 30));
        assert!(t.write && !t.user && t.exec);
        // The old entry point agrees.
        assert_eq!(translate(0x1000, false, la, aligned(&mem)), Some(0xabc678));
    }

    #[test]
    fn read_in_32bit_modes_crosses_pages_and_wraps() {
        let mut m = HashMap::new();
        // 32-bit paging, PD at 0x5000: 0xffff_f000 -> 0x10000, 0x0000_0000 -> 0x20000.
        put32(&mut m, 0x5000 + 0x3ff * 4, 0x6000 | 1);
        put32(&mut m, 0x6000 + 0x3ff * 4, 0x10000 | 1);
        put32(&mut m, 0x5000, 0x7000 | 1);
        put32(&mut m, 0x7000, 0x20000 | 1);
        m.insert(0x10ff8, 0x0f01_0000_0000_0000); // bytes 0x10ffe, 0x10fff = 01 0f
        m.insert(0x20000, 0xd9);
        let mem = Mem(m);
        let mut buf = [0u8; 3];
        let mode = PagingMode::Bits32 { pse: true };
        let n = read_linear_in(mode, 0x5000, 0xffff_fffe, &mut buf, aligned(&mem), |pa| {
            mem.b(pa)
        });
        assert_eq!((n, buf), (3, [0x01, 0x0f, 0xd9]));
        // Without paging the same bytes are at their physical addresses.
        let n = read_linear_in(
            PagingMode::Off,
            0,
            0x10ffe,
            &mut buf[..2],
            aligned(&mem),
            |pa| mem.b(pa),
        );
        assert_eq!((n, &buf[..2]), (2, &[0x01, 0x0f][..]));
    }
}

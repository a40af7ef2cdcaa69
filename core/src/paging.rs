//! Walking a guest's page tables in software.
//!
//! QEMU's SVM has no decode assists and no next-RIP save, so to skip an intercepted
//! instruction Keel reads its bytes at the guest's RIP. The root-mode code runs on its own page
//! tables, where a user-mode RIP of Dom0 is not mapped: it translates the linear address
//! through the guest's CR3 (4-level or 5-level paging, SDM Vol. 3A, 4.5) and reads physical
//! memory. The walk only reads; it sets no accessed bits and checks no permissions beyond
//! "present": the instruction was just fetched by the CPU, so it is executable.

/// Page-table entry bits.
const PRESENT: u64 = 1 << 0;
const PAGE_SIZE: u64 = 1 << 7;
/// Physical-address bits 51:12 of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Translates the linear address `la` through the page tables at `cr3` (4-level, or 5-level
/// when `la57`). `read_phys` reads the 8-byte entry at a physical address, or `None` when the
/// address is not RAM. Returns the physical address, or `None` if a level is not present.
pub fn translate(
    cr3: u64,
    la57: bool,
    la: u64,
    mut read_phys: impl FnMut(u64) -> Option<u64>,
) -> Option<u64> {
    let mut table = cr3 & ADDR_MASK;
    let top_shift = if la57 { 48 } else { 39 };
    let mut shift = top_shift;
    loop {
        let index = (la >> shift) & 0x1ff;
        let entry = read_phys(table + index * 8)?;
        if entry & PRESENT == 0 {
            return None;
        }
        // 1 GiB (shift 30) and 2 MiB (shift 21) pages end the walk early.
        if shift <= 30 && entry & PAGE_SIZE != 0 || shift == 12 {
            let page_mask = (1u64 << shift) - 1;
            let base = entry & ADDR_MASK & !page_mask;
            return Some(base | (la & page_mask));
        }
        table = entry & ADDR_MASK;
        shift -= 9;
    }
}

/// Reads up to `buf.len()` bytes at linear address `la`, crossing into the next page when
/// needed; `read_byte` reads one byte of physical memory. Returns the number of bytes read
/// (fewer when a page is not mapped).
pub fn read_linear(
    cr3: u64,
    la57: bool,
    la: u64,
    buf: &mut [u8],
    mut read_qword: impl FnMut(u64) -> Option<u64>,
    mut read_byte: impl FnMut(u64) -> Option<u8>,
) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let addr = la.wrapping_add(done as u64);
        let Some(pa) = translate(cr3, la57, addr, &mut read_qword) else {
            break;
        };
        let in_page = (0x1000 - (addr & 0xfff)) as usize;
        let n = in_page.min(buf.len() - done);
        for i in 0..n {
            match read_byte(pa + i as u64) {
                Some(b) => buf[done + i] = b,
                None => return done + i,
            }
        }
        done += n;
    }
    done
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
}

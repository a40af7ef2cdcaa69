//! The `paging` target: guest page walks (`keel_core::paging`) over page-table trees built for
//! a random linear address, then corrupted, checked against a reference walk.

use std::cell::RefCell;
use std::collections::HashMap;

use keel_core::paging::{read_linear_in, translate, walk, PagingMode, Translation};
use rand::Rng as _;

use crate::{Finding, Rng};

/// Guest physical memory: the frames the tables were built in, and elsewhere bytes computed
/// from the address, except in "holes", which are not RAM.
struct Memory {
    frames: HashMap<u64, Box<[u64; 512]>>,
    /// Frames at or above this are not RAM.
    ram_frames: u64,
    salt: u64,
}

impl Memory {
    fn qword(&self, pa: u64) -> Option<u64> {
        let frame = pa >> 12;
        if let Some(f) = self.frames.get(&frame) {
            return Some(f[(pa as usize >> 3) & 511]);
        }
        (frame < self.ram_frames).then(|| crate::mix(pa & !7 ^ self.salt))
    }

    fn byte(&self, pa: u64) -> Option<u8> {
        Some((self.qword(pa & !7)? >> ((pa & 7) * 8)) as u8)
    }

    fn frame(&mut self, frame: u64) -> &mut [u64; 512] {
        self.frames
            .entry(frame)
            .or_insert_with(|| Box::new([0; 512]))
    }
}

/// A reference walk written from the SDM Vol. 3A, chapter 4, with the same documented
/// simplifications as Keel's (only P is checked; reserved bits are not): the translation and
/// every 8-byte-aligned address read, in order.
fn reference(mode: PagingMode, cr3: u64, la: u64, mem: &Memory) -> (Option<Translation>, Vec<u64>) {
    let mut reads = Vec::new();
    let mut read = |pa: u64| {
        reads.push(pa & !7);
        mem.qword(pa & !7)
            .map(|q| if pa & 7 == 4 { q >> 32 } else { q })
    };
    let full = |pa, size| Translation {
        pa,
        page_size: size,
        write: true,
        user: true,
        exec: true,
    };
    let narrow = |t: &mut Translation, e: u64, xd: bool| {
        t.write &= e & 2 != 0;
        t.user &= e & 4 != 0;
        t.exec &= !(xd && e >> 63 != 0);
    };
    let la32 = la & 0xffff_ffff;
    let t = (|| match mode {
        PagingMode::Off => Some(full(la32, 4096)),
        PagingMode::Bits32 { pse } => {
            let pde = read((cr3 & 0xffff_f000) | (la32 >> 22) << 2)? & 0xffff_ffff;
            if pde & 1 == 0 {
                return None;
            }
            if pse && pde & 0x80 != 0 {
                let high = (pde >> 13 & 0xff) << 32;
                let mut t = full(high | pde & 0xffc0_0000 | la32 & 0x3f_ffff, 4 << 20);
                narrow(&mut t, pde, false);
                return Some(t);
            }
            let pte = read((pde & 0xffff_f000) | (la32 >> 12 & 0x3ff) << 2)? & 0xffff_ffff;
            if pte & 1 == 0 {
                return None;
            }
            let mut t = full(pte & 0xffff_f000 | la32 & 0xfff, 4096);
            narrow(&mut t, pde, false);
            narrow(&mut t, pte, false);
            Some(t)
        }
        _ => {
            // (first table, linear-address bits of each level, levels that may map a page)
            let (mut table, levels, la): (u64, &[u32], u64) = match mode {
                PagingMode::Pae => {
                    let pdpte = read((cr3 & 0xffff_ffe0) + (la32 >> 30) * 8)?;
                    if pdpte & 1 == 0 {
                        return None;
                    }
                    (pdpte, &[21, 12], la32)
                }
                PagingMode::Level4 => (cr3, &[39, 30, 21, 12], la),
                _ => (cr3, &[48, 39, 30, 21, 12], la),
            };
            let mut t = full(0, 0);
            for &shift in levels {
                let e = read((table & 0x000f_ffff_ffff_f000) + (la >> shift & 511) * 8)?;
                if e & 1 == 0 {
                    return None;
                }
                narrow(&mut t, e, true);
                let large = matches!(shift, 21 | 30) && e & 0x80 != 0;
                if large || shift == 12 {
                    let size = 1u64 << shift;
                    t.pa = e & 0x000f_ffff_ffff_f000 & !(size - 1) | la & (size - 1);
                    t.page_size = size;
                    return Some(t);
                }
                table = e;
            }
            None
        }
    })();
    (t, reads)
}

/// Builds the tables that map `la` in `mode` (and the page after it), from frames of `pool`,
/// with random rights, large pages and now and then a missing level.
fn build(rng: &mut Rng, mem: &mut Memory, mode: PagingMode, cr3: u64, la: u64, pool: &[u64]) {
    let entry = |rng: &mut Rng, large_ok: bool| -> u64 {
        let frame = pool[rng.random_range(0..pool.len())];
        let mut e = frame << 12 | u64::from(rng.random_ratio(15, 16)); // P
        e |= rng.random::<u64>() & 0x6; // R/W, U/S
        if rng.random_bool(0.3) {
            e |= 1 << 63; // XD
        }
        if large_ok && rng.random_bool(0.25) {
            e |= 0x80;
        }
        e
    };
    let put = |mem: &mut Memory, pa: u64, value: u64, four: bool| {
        let q = &mut mem.frame(pa >> 12)[(pa as usize >> 3) & 511];
        *q = if !four {
            value
        } else if pa & 4 != 0 {
            *q & 0xffff_ffff | value << 32
        } else {
            *q & !0xffff_ffff | value & 0xffff_ffff
        };
    };
    let pse = matches!(mode, PagingMode::Bits32 { pse: true });
    for la in [la, la.wrapping_add(0x1000)] {
        let la32 = la & 0xffff_ffff;
        match mode {
            PagingMode::Off => {}
            PagingMode::Bits32 { .. } => {
                let pde = entry(rng, pse) & 0xffff_ffff;
                put(mem, (cr3 & 0xffff_f000) | (la32 >> 22) << 2, pde, true);
                let pte = entry(rng, false) & 0xffff_ffff;
                put(
                    mem,
                    (pde & 0xffff_f000) | (la32 >> 12 & 0x3ff) << 2,
                    pte,
                    true,
                );
            }
            _ => {
                let (mut table, levels, la): (u64, &[u32], u64) = match mode {
                    PagingMode::Pae => {
                        let pdpte = entry(rng, false) & !(1 << 63);
                        put(mem, (cr3 & 0xffff_ffe0) + (la32 >> 30) * 8, pdpte, false);
                        (pdpte, &[21, 12], la32)
                    }
                    PagingMode::Level4 => (cr3, &[39, 30, 21, 12], la),
                    _ => (cr3, &[48, 39, 30, 21, 12], la),
                };
                for &shift in levels {
                    let large_ok = shift == 21 || shift == 30 || rng.random_ratio(1, 10);
                    let e = entry(rng, large_ok);
                    put(
                        mem,
                        (table & 0x000f_ffff_ffff_f000) + (la >> shift & 511) * 8,
                        e,
                        false,
                    );
                    table = e;
                }
            }
        }
    }
}

fn check(rng: &mut Rng) -> Result<(), Finding> {
    let (cr0, cr4, efer): (u64, u64, u64) = rng.random();
    let mode = PagingMode::from_control_registers(cr0, cr4, efer);
    let want = if cr0 >> 31 & 1 == 0 {
        PagingMode::Off
    } else if cr4 >> 5 & 1 == 0 {
        PagingMode::Bits32 {
            pse: cr4 >> 4 & 1 != 0,
        }
    } else if efer >> 10 & 1 == 0 {
        PagingMode::Pae
    } else if cr4 >> 12 & 1 != 0 {
        PagingMode::Level5
    } else {
        PagingMode::Level4
    };
    if mode != want {
        return Err(format!(
            "from_control_registers({cr0:#x}, {cr4:#x}, {efer:#x}) = {mode:?}, not {want:?}"
        ));
    }
    // Now a mode of our choosing, with the other modes as likely as no paging.
    let mode = [
        PagingMode::Off,
        PagingMode::Bits32 { pse: false },
        PagingMode::Bits32 { pse: true },
        PagingMode::Pae,
        PagingMode::Level4,
        PagingMode::Level5,
    ][rng.random_range(0..6)];
    let wide = matches!(mode, PagingMode::Level4 | PagingMode::Level5);
    // Frames for tables: low ones (32-bit modes can only reach those) and, in the 8-byte
    // modes, some near the top of the 52-bit physical address space.
    let pool: Vec<u64> = (0..rng.random_range(2..12))
        .map(|_| {
            if !matches!(mode, PagingMode::Bits32 { .. }) && rng.random_ratio(1, 4) {
                (1u64 << 40) - rng.random_range(1..64)
            } else {
                rng.random_range(0..0x2000)
            }
        })
        .collect();
    let mut mem = Memory {
        frames: HashMap::new(),
        ram_frames: rng.random_range(0x1000..0x4000),
        salt: rng.random(),
    };
    let mut cr3 = pool[0] << 12;
    if mode == PagingMode::Pae {
        cr3 |= rng.random_range(0..128) << 5;
    } else if rng.random_bool(0.2) {
        cr3 |= rng.random::<u64>() & 0xfff; // PCID, PWT, PCD
    }
    let la: u64 = match rng.random_range(0..4) {
        0 => rng.random(),
        1 => rng.random::<u64>() | 0xff0, // near a page's end
        2 => rng.random::<u32>().into(),
        _ => (rng.random::<u64>() & 0x0000_7fff_ffff_ffff) | 0xff8,
    };
    build(rng, &mut mem, mode, cr3, la, &pool);
    // Corruption: flip bits in the tables.
    let frames: Vec<u64> = mem.frames.keys().copied().collect();
    for _ in 0..rng.random_range(0..4) {
        if frames.is_empty() {
            break;
        }
        let f = frames[rng.random_range(0..frames.len())];
        let i = rng.random_range(0..512);
        mem.frame(f)[i] ^= 1 << rng.random_range(0..64);
    }

    let at = |l: u64| format!("{mode:?} cr3 {cr3:#x} la {l:#x}");
    for l in [la, la.wrapping_add(0x1000), rng.random()] {
        let reads = RefCell::new(Vec::new());
        let got = walk(mode, cr3, l, |pa| {
            reads.borrow_mut().push(pa);
            mem.qword(pa)
        });
        let (want, want_reads) = reference(mode, cr3, l, &mem);
        if got != want || *reads.borrow() != want_reads {
            return Err(format!("{}: walk gave {got:x?} reading {:x?}; the reference {want:x?} reading {want_reads:x?}", at(l), reads.borrow()));
        }
        if let Some(t) = got {
            let limit = if matches!(mode, PagingMode::Bits32 { pse: true }) {
                1 << 40
            } else if mode == PagingMode::Off || mode == (PagingMode::Bits32 { pse: false }) {
                1 << 32
            } else {
                1 << 52
            };
            if t.pa >= limit || (t.pa ^ l) & (t.page_size - 1) != 0 {
                return Err(format!(
                    "{}: {t:x?} past the address width or off the page offset",
                    at(l)
                ));
            }
        }
        if wide {
            let fast = translate(cr3, mode == PagingMode::Level5, l, |pa| mem.qword(pa));
            if fast != got.map(|t| t.pa) {
                return Err(format!(
                    "{}: translate gave {fast:x?}, walk {got:x?}",
                    at(l)
                ));
            }
        }
    }

    // read_linear_in: the bytes the reference translation of each address names, up to the
    // first that is unmapped or not RAM.
    let mut buf = vec![0u8; rng.random_range(0..24)];
    let n = read_linear_in(
        mode,
        cr3,
        la,
        &mut buf,
        |pa| mem.qword(pa),
        |pa| mem.byte(pa),
    );
    let mut expect = Vec::new();
    for k in 0..buf.len() as u64 {
        let a = la.wrapping_add(k);
        let Some(b) = reference(mode, cr3, a, &mem).0.and_then(|t| mem.byte(t.pa)) else {
            break;
        };
        expect.push(b);
    }
    if buf[..n.min(buf.len())] != expect[..] {
        return Err(format!(
            "{}: read_linear_in read {n} bytes {:02x?}, the reference {expect:02x?}",
            at(la),
            &buf[..n.min(buf.len())]
        ));
    }
    Ok(())
}

/// One input: control registers, a page-table tree and linear addresses.
pub fn run(rng: &mut Rng) -> Result<(), Finding> {
    check(rng)
}

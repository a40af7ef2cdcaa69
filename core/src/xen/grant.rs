//! Grant tables v1 from the grantee's side: the rules by which a backend in Dom0 may use a page
//! a DomU granted (X: xen/common/grant_table.c `_set_status_v1`, `map_grant_ref`,
//! `__release_grant_for_copy`; docs in xen/include/public/grant_table.h).
//!
//! The granting domain writes an entry `{flags u16, domid u16, frame u32}` and then sets
//! `GTF_permit_access` (with `GTF_readonly` for read-only grants). While the grantee uses the
//! page, `GTF_reading` (and `GTF_writing` for writes) stay set in the entry: a frontend ends
//! access only by a compare-and-swap of the flags to 0 that fails while either is set
//! (Linux's `gnttab_end_foreign_access_ref_v1`). The grantee sets them with a
//! compare-and-swap of the flags and domid together, so neither can change in between.
//!
//! [`ActiveGrants`] keeps the grantee's use counts per reference (Xen's active entries): the
//! first use sets the flags and records the frame; later uses share them; the last release
//! clears them. The entries themselves are reached through [`SharedEntries`], which the module
//! implements over the DomU's grant-table frames.

use core::sync::atomic::{AtomicU32, Ordering};

use super::abi::{gnttabop, gtf};

/// Attempts at the compare-and-swap before the entry is called unstable (Xen's `retry_max`).
const RETRIES: u32 = 4;

/// Access to the granting domain's table.
pub trait SharedEntries {
    /// The first word of entry `gref`: flags in bits 0-15, domid in bits 16-31 (the entry's
    /// little-endian layout); `None` when `gref` is outside the frames the domain placed.
    fn header(&self, gref: u32) -> Option<&AtomicU32>;
    /// The entry's `frame` field, read once.
    fn frame(&self, gref: u32) -> Option<u32>;
}

/// The grantee's use of one reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Active {
    /// Uses (reads and writes).
    pub pins: u16,
    /// Uses for writing.
    pub writers: u16,
    /// The frame recorded at the first use: later uses take this one.
    pub frame: u32,
}

/// The checks of a new use of an entry whose header is `word` by `grantee`, for writing or
/// not: the header to store, or the `GNTST_*` error. Xen's rule: the type must be
/// `permit_access`, the domid the grantee's, and a write needs no `GTF_readonly`; other flag
/// bits are left as they are.
pub fn check(word: u32, grantee: u16, write: bool) -> Result<u32, i16> {
    let flags = word as u16;
    let domid = (word >> 16) as u16;
    let mask = gtf::TYPE_MASK | if write { gtf::READONLY } else { 0 };
    if flags & mask != gtf::PERMIT_ACCESS || domid != grantee {
        return Err(gnttabop::ST_GENERAL_ERROR);
    }
    let set = gtf::READING | if write { gtf::WRITING } else { 0 };
    Ok(word | u32::from(set))
}

/// The grantee's use counts for every reference of one granting domain.
pub struct ActiveGrants<'a> {
    table: &'a mut [Active],
}

impl<'a> ActiveGrants<'a> {
    /// Over `table`: one slot per reference the domain may have (frames * 512).
    pub fn new(table: &'a mut [Active]) -> Self {
        Self { table }
    }

    /// A new use of `gref` by `grantee` (writing or not): the frame it grants, or the
    /// `GNTST_*` error, with nothing changed.
    pub fn acquire<E: SharedEntries>(
        &mut self,
        entries: &E,
        gref: u32,
        grantee: u16,
        write: bool,
    ) -> Result<u32, i16> {
        let a = self
            .table
            .get_mut(gref as usize)
            .ok_or(gnttabop::ST_BAD_GNTREF)?;
        if a.pins == u16::MAX {
            return Err(gnttabop::ST_NO_SPACE);
        }
        // The entry is (re)checked at the first use and at the first write; uses that add
        // nothing new share the recorded state, as Xen's pins do.
        if a.pins == 0 || (write && a.writers == 0) {
            let header = entries.header(gref).ok_or(gnttabop::ST_BAD_GNTREF)?;
            set_flags(header, grantee, write)?;
            if a.pins == 0 {
                match entries.frame(gref) {
                    Some(f) => a.frame = f,
                    None => {
                        header.fetch_and(!u32::from(gtf::READING | gtf::WRITING), Ordering::SeqCst);
                        return Err(gnttabop::ST_BAD_GNTREF);
                    }
                }
            }
        }
        a.pins += 1;
        if write {
            a.writers += 1;
        }
        Ok(a.frame)
    }

    /// Ends a use of `gref` that [`Self::acquire`] granted: the last writer clears
    /// `GTF_writing`, the last use `GTF_reading`. A release without a use is ignored.
    pub fn release<E: SharedEntries>(&mut self, entries: &E, gref: u32, write: bool) {
        let Some(a) = self.table.get_mut(gref as usize) else {
            return;
        };
        if a.pins == 0 || (write && a.writers == 0) {
            return;
        }
        a.pins -= 1;
        let mut clear = 0;
        if write {
            a.writers -= 1;
            if a.writers == 0 {
                clear |= gtf::WRITING;
            }
        }
        if a.pins == 0 {
            clear |= gtf::READING | gtf::WRITING;
        }
        if clear != 0 {
            if let Some(h) = entries.header(gref) {
                h.fetch_and(!u32::from(clear), Ordering::SeqCst);
            }
        }
    }

    /// Whether any reference is in use.
    pub fn any_in_use(&self) -> bool {
        self.table.iter().any(|a| a.pins != 0)
    }
}

/// Sets the use flags in `header` if [`check`] allows: a compare-and-swap of flags and domid
/// together, retried a few times while the granting domain changes the entry.
fn set_flags(header: &AtomicU32, grantee: u16, write: bool) -> Result<(), i16> {
    let mut word = header.load(Ordering::SeqCst);
    for _ in 0..RETRIES {
        let new = check(word, grantee, write)?;
        match header.compare_exchange(word, new, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Ok(()),
            Err(w) => word = w,
        }
    }
    Err(gnttabop::ST_GENERAL_ERROR)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    struct Table {
        headers: Vec<AtomicU32>,
        frames: Vec<u32>,
    }

    impl Table {
        fn new(n: usize) -> Self {
            Self {
                headers: (0..n).map(|_| AtomicU32::new(0)).collect(),
                frames: (0..n as u32).map(|i| 0x1000 + i).collect(),
            }
        }
        fn grant(&self, gref: u32, domid: u16, flags: u16) {
            self.headers[gref as usize]
                .store(u32::from(domid) << 16 | u32::from(flags), Ordering::SeqCst);
        }
        fn flags(&self, gref: u32) -> u16 {
            self.headers[gref as usize].load(Ordering::SeqCst) as u16
        }
    }

    impl SharedEntries for Table {
        fn header(&self, gref: u32) -> Option<&AtomicU32> {
            self.headers.get(gref as usize)
        }
        fn frame(&self, gref: u32) -> Option<u32> {
            self.frames.get(gref as usize).copied()
        }
    }

    #[test]
    fn check_follows_xen() {
        let w = |flags: u16, domid: u16| u32::from(domid) << 16 | u32::from(flags);
        let pa = gtf::PERMIT_ACCESS;
        assert_eq!(check(w(pa, 0), 0, false), Ok(w(pa | gtf::READING, 0)));
        assert_eq!(
            check(w(pa, 0), 0, true),
            Ok(w(pa | gtf::READING | gtf::WRITING, 0))
        );
        assert_eq!(
            check(w(pa | gtf::READONLY, 0), 0, false),
            Ok(w(pa | gtf::READONLY | gtf::READING, 0))
        );
        let bad = Err(gnttabop::ST_GENERAL_ERROR);
        assert_eq!(check(w(pa | gtf::READONLY, 0), 0, true), bad, "read-only");
        assert_eq!(check(w(pa, 3), 0, false), bad, "another grantee");
        assert_eq!(check(w(0, 0), 0, false), bad, "no grant");
        assert_eq!(check(w(gtf::ACCEPT_TRANSFER, 0), 0, false), bad);
        assert_eq!(check(w(gtf::TRANSITIVE, 0), 0, false), bad);
    }

    #[test]
    fn uses_set_and_clear_the_flags() {
        let t = Table::new(8);
        let mut slots = [Active::default(); 8];
        let mut a = ActiveGrants::new(&mut slots);
        t.grant(2, 0, gtf::PERMIT_ACCESS);
        assert_eq!(a.acquire(&t, 2, 0, false), Ok(0x1002));
        assert_eq!(t.flags(2), gtf::PERMIT_ACCESS | gtf::READING);
        assert_eq!(a.acquire(&t, 2, 0, true), Ok(0x1002));
        assert_eq!(t.flags(2), gtf::PERMIT_ACCESS | gtf::READING | gtf::WRITING);
        // The frontend cannot end access while in use: its cmpxchg of the flags to 0 from
        // permit_access fails.
        assert!(t.headers[2]
            .compare_exchange(
                u32::from(gtf::PERMIT_ACCESS),
                0,
                Ordering::SeqCst,
                Ordering::SeqCst
            )
            .is_err());
        a.release(&t, 2, true);
        assert_eq!(t.flags(2), gtf::PERMIT_ACCESS | gtf::READING);
        a.release(&t, 2, false);
        assert_eq!(t.flags(2), gtf::PERMIT_ACCESS);
        assert!(!a.any_in_use());
        // A release too many is ignored.
        a.release(&t, 2, false);
        assert_eq!(t.flags(2), gtf::PERMIT_ACCESS);
    }

    #[test]
    fn refused_uses_change_nothing() {
        let t = Table::new(4);
        let mut slots = [Active::default(); 4];
        let mut a = ActiveGrants::new(&mut slots);
        assert_eq!(
            a.acquire(&t, 1, 0, false),
            Err(gnttabop::ST_GENERAL_ERROR),
            "no grant"
        );
        assert_eq!(a.acquire(&t, 4, 0, false), Err(gnttabop::ST_BAD_GNTREF));
        assert_eq!(
            a.acquire(&t, u32::MAX, 0, false),
            Err(gnttabop::ST_BAD_GNTREF)
        );
        t.grant(1, 0, gtf::PERMIT_ACCESS | gtf::READONLY);
        assert_eq!(a.acquire(&t, 1, 0, true), Err(gnttabop::ST_GENERAL_ERROR));
        assert_eq!(t.flags(1), gtf::PERMIT_ACCESS | gtf::READONLY);
        // Read-only use is fine, and a write on top of it is still refused.
        assert!(a.acquire(&t, 1, 0, false).is_ok());
        assert_eq!(a.acquire(&t, 1, 0, true), Err(gnttabop::ST_GENERAL_ERROR));
        assert_eq!(
            t.flags(1),
            gtf::PERMIT_ACCESS | gtf::READONLY | gtf::READING
        );
        t.grant(3, 7, gtf::PERMIT_ACCESS);
        assert_eq!(a.acquire(&t, 3, 0, false), Err(gnttabop::ST_GENERAL_ERROR));
        assert_eq!(slots[3], Active::default());
    }

    #[test]
    fn later_uses_share_the_first_frame() {
        let mut t = Table::new(2);
        let mut slots = [Active::default(); 2];
        let mut a = ActiveGrants::new(&mut slots);
        t.grant(0, 0, gtf::PERMIT_ACCESS);
        assert_eq!(a.acquire(&t, 0, 0, false), Ok(0x1000));
        t.frames[0] = 0x9999;
        assert_eq!(a.acquire(&t, 0, 0, false), Ok(0x1000));
        a.release(&t, 0, false);
        a.release(&t, 0, false);
        assert_eq!(a.acquire(&t, 0, 0, false), Ok(0x9999));
    }
}

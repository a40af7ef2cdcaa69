// SPDX-License-Identifier: GPL-2.0
//! Dom0's use of pages a DomU granted (`KEEL_DOMAIN_GRANT_COPY` / `_MAP`): the DomU's grant
//! table is read in its own memory, at the frames it placed, with the core crate's rules
//! (`keel_core::xen::grant`). Uses are counted per reference under the domain's Xen lock; the
//! flags they set in the DomU's entries are cleared by the last release.

use core::{cell::Cell, sync::atomic::AtomicU32};

use kernel::prelude::*;

use super::{Xen, GNTTAB_FRAMES};
use crate::keel_core::xen::{
    abi::{gnttabop, gtf},
    grant::{Active, ActiveGrants, SharedEntries},
};
use crate::root::domain::DomainShared;

/// References a DomU may have: every v1 entry of its largest table.
pub(super) const MAX_REFS: usize = GNTTAB_FRAMES * gtf::V1_ENTRIES_PER_FRAME;
/// Dom0's domain id, the grantee of every backend's use.
const DOM0: u16 = 0;

/// The DomU's table as the frames it placed in its RAM, for one use of it under the Xen lock
/// (under which no RAM page leaves the domain's tables: the balloon unmaps holding it).
struct Frames<'a> {
    dom: &'a DomainShared,
    frames: &'a [Option<u64>; GNTTAB_FRAMES],
    /// The last entry found: its reference and where it is (a use reads an entry's header
    /// and frame, each a walk of the domain's tables otherwise).
    last: Cell<Option<(u32, *mut u8)>>,
}

impl<'a> Frames<'a> {
    fn new(dom: &'a DomainShared, frames: &'a [Option<u64>; GNTTAB_FRAMES]) -> Self {
        Frames {
            dom,
            frames,
            last: Cell::new(None),
        }
    }

    fn entry(&self, gref: u32, offset: u64) -> Option<*mut u8> {
        let p = match self.last.get() {
            Some((r, p)) if r == gref => p,
            _ => {
                let per = gtf::V1_ENTRIES_PER_FRAME as u32;
                let base = (*self.frames.get((gref / per) as usize)?)?;
                let p = self.dom.ram_ptr(base + u64::from(gref % per) * 8)?;
                self.last.set(Some((gref, p)));
                p
            }
        };
        // SAFETY: An entry is 8 bytes, 8-byte aligned in its page; `offset` is 0 or 4.
        Some(unsafe { p.add(offset as usize) })
    }
}

impl SharedEntries for Frames<'_> {
    fn header(&self, gref: u32) -> Option<&AtomicU32> {
        let p = self.entry(gref, 0)?;
        // SAFETY: `ram_ptr` points into a RAM page of the domain, valid while it lives (the
        // caller holds the domain); entries are 8-byte aligned in their page-aligned frame;
        // the DomU changes the word atomically too.
        Some(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    fn frame(&self, gref: u32) -> Option<u32> {
        let p = self.entry(gref, 4)?;
        // SAFETY: As in `header`; read once, the DomU may change it at any time.
        Some(unsafe { core::ptr::read_volatile(p.cast::<u32>()) })
    }
}

/// A page in use by Dom0: the direct-map address of the granted frame.
pub(crate) struct InUse {
    pub(crate) va: *mut u8,
}

impl Xen {
    /// Starts a use by Dom0 of reference `gref` (for writing or not): the granted page, or
    /// Xen's `GNTST_*` error with nothing kept.
    pub(crate) fn grant_acquire(
        &self,
        dom: &DomainShared,
        gref: u32,
        write: bool,
    ) -> core::result::Result<InUse, i16> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let frames = Frames::new(dom, &inner.gnttab);
        let mut active = ActiveGrants::new(&mut inner.grants);
        let frame = active.acquire(&frames, gref, DOM0, write)?;
        match dom.ram_ptr(u64::from(frame) << 12) {
            Some(va) => Ok(InUse { va }),
            None => {
                // Not a page of the DomU's RAM.
                active.release(&frames, gref, write);
                Err(gnttabop::ST_GENERAL_ERROR)
            }
        }
    }

    /// Ends a use [`Self::grant_acquire`] started.
    pub(crate) fn grant_release(&self, dom: &DomainShared, gref: u32, write: bool) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let frames = Frames::new(dom, &inner.gnttab);
        ActiveGrants::new(&mut inner.grants).release(&frames, gref, write);
    }
}

/// The per-reference use counts, all zero, for a new domain.
pub(super) fn new_table() -> Result<KVVec<Active>> {
    let mut v = KVVec::with_capacity(MAX_REFS, GFP_KERNEL)?;
    for _ in 0..MAX_REFS {
        v.push(Active::default(), GFP_KERNEL)?;
    }
    Ok(v)
}

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

/// The DomU's table as the frames it placed in its RAM, for one hold of the Xen lock (under
/// which no RAM page leaves the domain's tables: the balloon unmaps holding it).
struct Frames<'a> {
    dom: &'a DomainShared,
    frames: &'a [Option<u64>; GNTTAB_FRAMES],
    /// The table frame last found: its index and its page in Dom0's direct map (the uses
    /// of one hold read entries of the same frame, each a walk of the domain's tables
    /// otherwise).
    last: Cell<Option<(usize, *mut u8)>>,
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
        let per = gtf::V1_ENTRIES_PER_FRAME as u32;
        let index = (gref / per) as usize;
        let page = match self.last.get() {
            Some((i, p)) if i == index => p,
            _ => {
                // A frame's address is page-aligned (XENMAPSPACE_grant_table takes a gfn).
                let p = self.dom.ram_ptr((*self.frames.get(index)?)?)?;
                self.last.set(Some((index, p)));
                p
            }
        };
        // SAFETY: `page` is the start of a 4 KiB page in the direct map; an entry is 8 bytes,
        // 8-byte aligned, and the page holds `per` of them; `offset` is 0 or 4.
        Some(unsafe { page.add((gref % per) as usize * 8 + offset as usize) })
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

/// One use of a reference by Dom0: the reference and whether Dom0 writes the page.
#[derive(Clone, Copy)]
pub(crate) struct Use {
    pub(crate) gref: u32,
    pub(crate) write: bool,
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
        let mut out = [Err(gnttabop::ST_GENERAL_ERROR)];
        self.grant_acquire_many(dom, &[Some(Use { gref, write })], &mut out);
        let [r] = out;
        r
    }

    /// Starts the uses `uses` under one hold of the lock: `out[i]` becomes the page of
    /// `uses[i]` or its `GNTST_*` error (nothing kept for it), and stays as it is where
    /// `uses[i]` is `None`. Each started use ends with a release.
    pub(crate) fn grant_acquire_many(
        &self,
        dom: &DomainShared,
        uses: &[Option<Use>],
        out: &mut [core::result::Result<InUse, i16>],
    ) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let frames = Frames::new(dom, &inner.gnttab);
        let mut active = ActiveGrants::new(&mut inner.grants);
        for (u, o) in uses.iter().zip(out.iter_mut()) {
            let Some(u) = u else { continue };
            *o = active
                .acquire(&frames, u.gref, DOM0, u.write)
                .and_then(|frame| match dom.ram_ptr(u64::from(frame) << 12) {
                    Some(va) => Ok(InUse { va }),
                    None => {
                        // Not a page of the DomU's RAM.
                        active.release(&frames, u.gref, u.write);
                        Err(gnttabop::ST_GENERAL_ERROR)
                    }
                });
        }
    }

    /// Ends a use [`Self::grant_acquire`] started.
    pub(crate) fn grant_release(&self, dom: &DomainShared, gref: u32, write: bool) {
        self.grant_release_many(dom, [Use { gref, write }]);
    }

    /// Ends uses started by [`Self::grant_acquire_many`], under one hold of the lock.
    pub(crate) fn grant_release_many(
        &self,
        dom: &DomainShared,
        uses: impl IntoIterator<Item = Use>,
    ) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let frames = Frames::new(dom, &inner.gnttab);
        let mut active = ActiveGrants::new(&mut inner.grants);
        for u in uses {
            active.release(&frames, u.gref, u.write);
        }
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

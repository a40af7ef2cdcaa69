// SPDX-License-Identifier: GPL-2.0
//! A domain's memory: RAM allocated here (zeroed, in 2 MiB chunks where the layout allows),
//! and its second-level page tables (EPT or NPT, built with the core crate's `slat`).

use kernel::{bindings, prelude::*};

use crate::keel_core::slat::{self, Format, LargePages, Perms};
use crate::root::domain::{Range, RangeKind};

/// 2 MiB.
pub(super) const SIZE_2M: u64 = 2 << 20;
/// The page size.
pub(super) const PAGE: u64 = 4096;

/// Linux's direct-map offset.
pub(super) fn page_offset() -> u64 {
    // SAFETY: Set at boot, never changed after.
    unsafe { bindings::page_offset_base as u64 }
}

/// One physically contiguous piece of a range's memory: `pages` 4 KiB pages from `va` (direct
/// map), each an independent order-0 page (`split_page`).
pub(super) struct Chunk {
    va: u64,
    pub(super) pages: u64,
    /// The chunk's first byte, as an offset in its range (set when the range takes it).
    pub(super) offset: u64,
}

impl Chunk {
    /// Allocates a zeroed chunk of 2^order pages.
    pub(super) fn alloc(order: u32) -> Option<Self> {
        let mut gfp = bindings::GFP_KERNEL | bindings::__GFP_ZERO;
        if order > 0 {
            gfp |= bindings::__GFP_NOWARN;
        }
        // SAFETY: Allocating pages has no preconditions.
        let va = unsafe { bindings::get_free_pages_noprof(gfp, order) } as u64;
        if va == 0 {
            return None;
        }
        if order > 0 {
            // SAFETY: `va` is a fresh non-compound allocation of this order; splitting makes
            // each page an order-0 page with its own reference, freed one by one.
            unsafe { bindings::split_page(page_of(va), order) };
        }
        Some(Self {
            va,
            pages: 1 << order,
            offset: 0,
        })
    }

    pub(super) fn pa(&self) -> u64 {
        self.va - page_offset()
    }
}

impl Chunk {
    /// Frees the chunk's pages: only for a chunk that never went into the domain's tables
    /// (once mapped, the pages are the tables' to free: `balloon::free_mapped`).
    pub(super) fn free(self) {
        for i in 0..self.pages {
            // SAFETY: Each page of the chunk is an order-0 page this chunk allocated, mapped
            // nowhere.
            unsafe { bindings::free_pages((self.va + i * PAGE) as usize, 0) };
        }
    }
}

/// The `struct page` of a direct-map address.
pub(super) fn page_of(va: u64) -> *mut bindings::page {
    let pfn = (va - page_offset()) >> 12;
    // SAFETY: x86-64 uses SPARSEMEM_VMEMMAP: the page array starts at `vmemmap_base`, set at
    // boot, and covers every pfn of RAM.
    unsafe { (bindings::vmemmap_base as *mut bindings::page).add(pfn as usize) }
}

/// A guest-physical range and its memory.
pub(super) struct RangeMem {
    pub(super) range: Range,
    pub(super) chunks: KVec<Chunk>,
}

impl RangeMem {
    /// Frees the range's memory, which never went into the domain's tables.
    pub(super) fn free_chunks(mut self) {
        for c in self.chunks.drain_all() {
            c.free();
        }
    }

    /// The direct-map address of the page at `gpa`, inside the range.
    /// The chunks are in address order, each knowing its offset: a binary search (mmap asks
    /// for every page of a range, so a linear walk made it quadratic).
    pub(super) fn page_va(&self, gpa: u64) -> Option<u64> {
        let off = gpa.checked_sub(self.range.gpa)?;
        let i = self
            .chunks
            .partition_point(|c| c.offset <= off)
            .checked_sub(1)?;
        let c = &self.chunks[i];
        (off - c.offset < c.pages * PAGE).then(|| c.va + (off - c.offset))
    }
}

/// Second-level table pages, allocated here and freed as a set.
pub(super) struct TableSet {
    pub(super) pages: KVec<u64>,
    pub(super) root: u64,
}

impl TableSet {
    pub(super) fn new() -> Result<Self> {
        let mut t = Self {
            pages: KVec::new(),
            root: 0,
        };
        t.root = slat::Tables::alloc(&mut t).ok_or(ENOMEM)?;
        Ok(t)
    }
}

impl slat::Tables for TableSet {
    fn alloc(&mut self) -> Option<u64> {
        self.pages.reserve(1, GFP_KERNEL).ok()?;
        let gfp = bindings::GFP_KERNEL | bindings::__GFP_ZERO;
        // SAFETY: Allocating a page has no preconditions.
        let va = unsafe { bindings::get_free_pages_noprof(gfp, 0) } as u64;
        if va == 0 {
            return None;
        }
        self.pages.push(va, GFP_KERNEL).ok()?;
        Some(va - page_offset())
    }

    fn entries(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: `phys` is one of this set's pages (the builder only follows entries it
        // wrote), in the direct map and owned by the set.
        unsafe { &mut *((phys + page_offset()) as *mut [u64; 512]) }
    }
}

impl Drop for TableSet {
    fn drop(&mut self) {
        for &va in self.pages.iter() {
            // SAFETY: Each page was allocated by `alloc`; no vCPU uses the tables any more
            // (the set is dropped with the domain, or was never installed).
            unsafe { bindings::free_pages(va as usize, 0) };
        }
    }
}

/// Builds second-level tables for `ranges`.
pub(super) fn build_tables(
    ranges: &[RangeMem],
    fmt: Format,
    large: LargePages,
) -> Result<TableSet> {
    let mut t = TableSet::new()?;
    let root = t.root;
    for m in ranges {
        let perms = match m.range.kind {
            RangeKind::Ram => Perms::RWX,
            RangeKind::Rom => Perms::RX,
            _ => continue,
        };
        let mut gpa = m.range.gpa;
        for c in m.chunks.iter() {
            let size = c.pages * PAGE;
            slat::map(&mut t, fmt, root, gpa, c.pa(), size, perms, large).map_err(|e| {
                if matches!(e, slat::SlatError::OutOfMemory) {
                    ENOMEM
                } else {
                    EINVAL
                }
            })?;
            gpa += size;
        }
    }
    Ok(t)
}

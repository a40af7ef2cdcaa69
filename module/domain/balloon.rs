// SPDX-License-Identifier: GPL-2.0
//! Memory a Xen domain gives back and takes again (`XENMEM_decrease_reservation`,
//! `XENMEM_populate_physmap`, through [`crate::xen::Balloon`]).
//!
//! The second-level tables are the truth of what the domain owns: a RAM page is the domain's
//! while it is mapped there, so the domain's teardown frees whatever its tables map
//! ([`free_mapped`]), and a page given back is unmapped and freed at once. Unmapping goes
//! through the live tables (the core's `slat::remap`, writers serialized by the domain's
//! lock, the table pages it may need allocated before), under the Xen lock so that a grant
//! Dom0 uses keeps its page and no event path straddles the change; the page is freed only
//! after every vCPU's thread has let go of older translations (`Xen::quiesce`).

use kernel::{bindings, prelude::*};

use super::memory::{page_offset, TableSet, PAGE};
use super::Domain;
use crate::keel_core::slat::{self, Perms};
use crate::root::domain::RangeKind;
use crate::xen::Balloon;

/// A page table source for a change made under a spinlock: pages allocated beforehand.
struct Reserved<'a> {
    set: &'a mut TableSet,
    spare: KVec<u64>,
}

impl Reserved<'_> {
    /// `n` zeroed pages, and room in the set's list for them.
    fn fill(&mut self, n: usize) -> Result {
        self.set.pages.reserve(n, GFP_KERNEL)?;
        self.spare.reserve(n, GFP_KERNEL)?;
        while self.spare.len() < n {
            let gfp = bindings::GFP_KERNEL | bindings::__GFP_ZERO;
            // SAFETY: Allocating a page has no preconditions.
            let va = unsafe { bindings::get_free_pages_noprof(gfp, 0) } as u64;
            if va == 0 {
                return Err(ENOMEM);
            }
            self.spare.push(va, GFP_KERNEL)?;
        }
        Ok(())
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        for &va in self.spare.iter() {
            // SAFETY: A page `fill` allocated and nothing used.
            unsafe { bindings::free_pages(va as usize, 0) };
        }
    }
}

impl slat::Tables for Reserved<'_> {
    fn alloc(&mut self) -> Option<u64> {
        let va = self.spare.pop()?;
        // Within the capacity `fill` reserved: no allocation.
        if self.set.pages.push_within_capacity(va).is_err() {
            self.spare.push_within_capacity(va).ok()?;
            return None;
        }
        Some(va - page_offset())
    }

    fn entries(&mut self, phys: u64) -> &mut [u64; 512] {
        self.set.entries(phys)
    }
}

impl Domain {
    /// Whether `gpa` is in a RAM range of the domain.
    fn is_ram(inner: &super::DomainInner, gpa: u64) -> bool {
        inner.ranges.iter().any(|m| {
            m.range.kind == RangeKind::Ram && gpa >= m.range.gpa && gpa - m.range.gpa < m.range.size
        })
    }
}

impl Balloon for Domain {
    fn release(&self, me: u32, gfns: &[u64]) -> usize {
        let Some(x) = self.xen.as_deref() else {
            return 0;
        };
        let fmt = self.format();
        let mut freed: KVec<u64> = KVec::new();
        if freed.reserve(gfns.len(), GFP_KERNEL).is_err() {
            return 0;
        }
        let mut inner = self.inner.lock();
        let mut done = 0;
        for &gfn in gfns {
            let Some(gpa) = gfn.checked_mul(PAGE).filter(|&a| Self::is_ram(&inner, a)) else {
                break;
            };
            let Some(tables) = inner.tables.as_mut() else {
                break;
            };
            let root = tables.root;
            let need = slat::tables_needed(tables, fmt, root, gpa, true);
            let mut r = Reserved {
                set: tables,
                spare: KVec::new(),
            };
            if r.fill(need).is_err() {
                break;
            }
            let old = x.unmap_unless_granted(gfn, || slat::remap(&mut r, fmt, root, gpa, None));
            match old {
                Some(Ok(Some(m))) => {
                    let hpa = m.hpa & !(PAGE - 1);
                    // Within the capacity reserved above.
                    let _ = freed.push_within_capacity(hpa + page_offset());
                }
                // Not mapped (given back already), granted to Dom0, or a table missing.
                _ => break,
            }
            drop(r);
            inner.memory_used = inner.memory_used.saturating_sub(PAGE);
            done += 1;
        }
        drop(inner);
        if freed.is_empty() {
            return done;
        }
        if x.quiesce(me, || self.kick_all()) {
            for &va in freed.iter() {
                // SAFETY: An order-0 page of the domain (its chunks are split), unmapped
                // above: no vCPU can reach it any more (quiesce), and no kernel path holds a
                // pointer from an older walk (those run under the Xen lock taken for the
                // change, or in vCPU threads that quiesce waited for). Mappings in a builder's
                // process keep their own reference.
                unsafe { bindings::free_pages(va as usize, 0) };
            }
        } else {
            // A signal came first: the pages are freed with the domain instead.
            let mut inner = self.inner.lock();
            for &va in freed.iter() {
                if inner.deferred.push(va, GFP_KERNEL).is_err() {
                    // Leaked rather than freed while a vCPU might reach it.
                    pr_warn!("domain {}: a ballooned page is leaked\n", self.domid);
                }
            }
        }
        done
    }

    fn populate(&self, gfns: &[u64]) -> usize {
        let fmt = self.format();
        let mut inner = self.inner.lock();
        let mut done = 0;
        for &gfn in gfns {
            let Some(gpa) = gfn.checked_mul(PAGE).filter(|&a| Self::is_ram(&inner, a)) else {
                break;
            };
            let max = self.memory_size;
            let used = inner.memory_used;
            let Some(tables) = inner.tables.as_mut() else {
                break;
            };
            let root = tables.root;
            if slat::translate(tables, fmt, root, gpa).is_some() {
                // Backed already: nothing to do.
                done += 1;
                continue;
            }
            if used + PAGE > max {
                break;
            }
            let need = slat::tables_needed(tables, fmt, root, gpa, false);
            let mut r = Reserved {
                set: tables,
                spare: KVec::new(),
            };
            if r.fill(need).is_err() {
                break;
            }
            let gfp = bindings::GFP_KERNEL | bindings::__GFP_ZERO | bindings::__GFP_NOWARN;
            // SAFETY: Allocating a page has no preconditions.
            let va = unsafe { bindings::get_free_pages_noprof(gfp, 0) } as u64;
            if va == 0 {
                break;
            }
            // A new mapping needs no flush: no CPU caches a translation that was not there.
            match slat::remap(
                &mut r,
                fmt,
                root,
                gpa,
                Some((va - page_offset(), Perms::RWX)),
            ) {
                Ok(_) => {}
                Err(_) => {
                    // SAFETY: The page allocated above, never mapped.
                    unsafe { bindings::free_pages(va as usize, 0) };
                    break;
                }
            }
            drop(r);
            inner.memory_used += PAGE;
            done += 1;
        }
        done
    }
}

/// Frees every page the tables map in the RAM and ROM ranges of `inner` (the domain's
/// teardown: the tables say what the domain owns, given-back pages excluded, populated ones
/// included), then the pages a quiesce could not free.
pub(super) fn free_mapped(inner: &mut super::DomainInner, fmt: slat::Format) {
    let Some(tables) = inner.tables.as_mut() else {
        return;
    };
    let root = tables.root;
    for m in inner.ranges.iter() {
        if m.range.kind == RangeKind::Mmio {
            continue;
        }
        let _ = slat::unmap_range(
            tables,
            fmt,
            root,
            m.range.gpa,
            m.range.size,
            |_, hpa, size| {
                let mut off = 0;
                while off < size {
                    // SAFETY: Each 4 KiB of a mapped piece is an order-0 page of the domain (chunks
                    // are split; populated pages are order 0), owned by the tables' mapping; the
                    // domain is going and no vCPU runs.
                    unsafe { bindings::free_pages((hpa + off + page_offset()) as usize, 0) };
                    off += PAGE;
                }
            },
        );
    }
    for &va in inner.deferred.iter() {
        // SAFETY: A page given back whose free waited for the domain's end; no vCPU runs.
        unsafe { bindings::free_pages(va as usize, 0) };
    }
    inner.deferred.clear();
}

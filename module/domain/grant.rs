// SPDX-License-Identifier: GPL-2.0
//! `KEEL_DOMAIN_GRANT_COPY` and `KEEL_DOMAIN_GRANT_MAP`: Dom0 backends reach the pages a DomU
//! granted them, and nothing else (the rules: `crate::xen::grant`). A map is an fd of its own
//! whose mmap gives the granted pages; the grants stay in use, and the domain's memory
//! alive, until its last reference (the fd and every mapping) goes.

use core::ffi::{c_int, c_uint, c_void};

use kernel::{
    bindings,
    prelude::*,
    sync::Arc,
    uaccess::{UserPtr, UserSlice},
};

use super::fd::{new_fd, to_c, Fops};
use super::memory::{page_of, PAGE};
use super::Domain;
use crate::keel_core::xen::abi::gnttabop;
use crate::root::domain::DomainShared;
use crate::uapi;
use crate::xen::Use;

/// Segments of a `KEEL_DOMAIN_GRANT_COPY` taken under one hold of the Xen lock.
const COPY_BATCH: usize = 32;

impl Domain {
    /// Root mode's view of the domain, once it has run (made once, never replaced: it lives
    /// as long as the domain).
    fn shared_view(&self) -> Option<&DomainShared> {
        let p = self.inner.lock().shared.as_ref().map(|s| &raw const **s)?;
        // SAFETY: See above: the view is pinned and dropped only with the domain.
        Some(unsafe { &*p })
    }

    /// `KEEL_DOMAIN_GRANT_COPY`: the segments in batches of [`COPY_BATCH`], each batch's
    /// grants taken and given back under one hold of the Xen lock each, the copies between.
    pub(super) fn grant_copy(&self, a: &uapi::keel_grant_copy) -> Result<isize> {
        let x = self.xen.as_ref().ok_or(ENOTTY)?;
        if a.pad != 0 || a.count == 0 || a.count > uapi::KEEL_MAX_GRANT_COPY {
            return Err(EINVAL);
        }
        let n = a.count as usize;
        let size = n * core::mem::size_of::<uapi::keel_grant_copy_seg>();
        let (mut r, mut w) =
            UserSlice::new(UserPtr::from_addr(a.segs as usize), size).reader_writer();
        let dom = self.shared_view();
        let mut left = n;
        while left > 0 {
            let m = left.min(COPY_BATCH);
            left -= m;
            let mut segs = [uapi::keel_grant_copy_seg::default(); COPY_BATCH];
            let segs = &mut segs[..m];
            for seg in segs.iter_mut() {
                *seg = r.read()?;
                if seg.flags & !uapi::KEEL_GRANT_TO_GUEST != 0 || seg.pad != 0 {
                    return Err(EINVAL);
                }
            }
            // A segment past its page's end takes no grant.
            let fits = |s: &uapi::keel_grant_copy_seg| {
                usize::from(s.offset) + usize::from(s.len) <= PAGE as usize
            };
            let Some(dom) = dom else {
                // No table yet: the DomU has not run.
                for seg in segs.iter_mut() {
                    seg.status = if fits(seg) {
                        gnttabop::ST_BAD_GNTREF
                    } else {
                        gnttabop::ST_BAD_COPY_ARG
                    };
                    w.write(seg)?;
                }
                continue;
            };
            let mut uses = [None; COPY_BATCH];
            for (u, s) in uses.iter_mut().zip(segs.iter()) {
                if fits(s) {
                    *u = Some(Use {
                        gref: s.ref_,
                        write: s.flags & uapi::KEEL_GRANT_TO_GUEST != 0,
                    });
                }
            }
            let mut pages = [const { Err(gnttabop::ST_BAD_COPY_ARG) }; COPY_BATCH];
            x.grant_acquire_many(dom, &uses[..m], &mut pages[..m]);
            let mut fault = false;
            for (seg, page) in segs.iter_mut().zip(pages.iter()) {
                seg.status = match page {
                    Err(status) => *status,
                    Ok(_) if fault => gnttabop::ST_GENERAL_ERROR,
                    Ok(page) => {
                        // SAFETY: `page.va` is the granted page (4 KiB, direct map), in use by
                        // Dom0 until the release below; offset + len is within it (checked above).
                        let p = unsafe { page.va.add(usize::from(seg.offset)) }.cast::<c_void>();
                        let buf = seg.buf as usize as *mut c_void;
                        let len = usize::from(seg.len);
                        let missed = if seg.flags & uapi::KEEL_GRANT_TO_GUEST != 0 {
                            // SAFETY: Copies from a user address, checked by the call.
                            unsafe { bindings::_copy_from_user(p, buf, len) }
                        } else {
                            // SAFETY: Copies to a user address, checked by the call.
                            unsafe { bindings::_copy_to_user(buf, p, len) }
                        };
                        fault |= missed != 0;
                        gnttabop::ST_OKAY
                    }
                };
            }
            x.grant_release_many(
                dom,
                uses[..m]
                    .iter()
                    .zip(pages.iter())
                    .filter_map(|(u, p)| if p.is_ok() { *u } else { None }),
            );
            if fault {
                return Err(EFAULT);
            }
            for seg in segs.iter() {
                w.write(seg)?;
            }
        }
        Ok(0)
    }

    /// `KEEL_DOMAIN_GRANT_MAP`: a new fd whose mmap gives the granted pages.
    pub(super) fn grant_map(self: &Arc<Self>, a: &uapi::keel_grant_map) -> Result<isize> {
        let x = self.xen.as_ref().ok_or(ENOTTY)?;
        if a.flags & !uapi::KEEL_GRANT_MAP_WRITABLE != 0
            || a.count == 0
            || a.count > uapi::KEEL_MAX_GRANT_MAP
        {
            return Err(EINVAL);
        }
        let n = a.count as usize;
        let writable = a.flags & uapi::KEEL_GRANT_MAP_WRITABLE != 0;
        let mut r = UserSlice::new(UserPtr::from_addr(a.refs as usize), n * 4).reader();
        let mut refs = KVec::with_capacity(n, GFP_KERNEL)?;
        for _ in 0..n {
            refs.push(r.read::<u32>()?, GFP_KERNEL)?;
        }
        let dom = self.shared_view().ok_or(ENOENT)?;
        let mut map = GrantMap {
            domain: self.clone(),
            refs: KVec::with_capacity(n, GFP_KERNEL)?,
            pages: KVec::with_capacity(n, GFP_KERNEL)?,
            writable,
        };
        for &gref in refs.iter() {
            match x.grant_acquire(dom, gref, writable) {
                Ok(page) => {
                    // Within the capacity reserved above: these pushes do not allocate.
                    map.refs.push(gref, GFP_KERNEL)?;
                    map.pages.push(page.va as usize, GFP_KERNEL)?;
                }
                // `map` drops here, releasing what it took.
                Err(gnttabop::ST_BAD_GNTREF) => return Err(ENOENT),
                Err(_) => return Err(EACCES),
            }
        }
        new_fd(c"keel-grant", &GRANT_FOPS, Arc::new(map, GFP_KERNEL)?)
    }
}

/// Granted pages Dom0 mapped: the references in use and their pages (direct map).
struct GrantMap {
    domain: Arc<Domain>,
    refs: KVec<u32>,
    pages: KVec<usize>,
    writable: bool,
}

impl GrantMap {
    fn mmap(&self, vma: *mut bindings::vm_area_struct) -> Result<isize> {
        // SAFETY: The mmap callback gets a valid VMA that it may set up.
        let v = unsafe { kernel::mm::virt::VmaNew::from_raw(vma) };
        // SAFETY: As above.
        let pgoff = unsafe { (*vma).vm_pgoff };
        let len = v.end() - v.start();
        if pgoff != 0 || len != self.pages.len() * PAGE as usize {
            return Err(EINVAL);
        }
        // A private mapping would copy the pages at the first write.
        if v.flags() & bindings::VM_SHARED == 0 {
            return Err(EINVAL);
        }
        if !self.writable {
            if v.writable() {
                return Err(EACCES);
            }
            v.try_clear_maywrite()?;
        }
        v.set_dontcopy();
        v.set_dontexpand();
        for (i, &va) in self.pages.iter().enumerate() {
            // SAFETY: The VMA is being set up under the mmap lock; the page is an order-0
            // page of the domain, which gets its own reference from the mapping.
            let r = unsafe {
                bindings::vm_insert_page(vma, v.start() + i * PAGE as usize, page_of(va as u64))
            };
            if r != 0 {
                return Err(Error::from_errno(r));
            }
        }
        Ok(0)
    }
}

impl Drop for GrantMap {
    fn drop(&mut self) {
        let (Some(x), Some(dom)) = (self.domain.xen.as_ref(), self.domain.shared_view()) else {
            return;
        };
        for &gref in self.refs.iter() {
            x.grant_release(dom, gref, self.writable);
        }
    }
}

/// The `file_operations` callback: a map's fd has no ioctls.
///
/// # Safety
///
/// Called by the VFS only.
unsafe extern "C" fn grant_ioctl(_file: *mut bindings::file, _cmd: c_uint, _arg: usize) -> isize {
    to_c(Err(ENOTTY))
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for a [`GrantMap`].
unsafe extern "C" fn grant_mmap(
    file: *mut bindings::file,
    vma: *mut bindings::vm_area_struct,
) -> c_int {
    // SAFETY: The private data is the map's `Arc`, alive until `release`.
    let m = unsafe { &*((*file).private_data as *const GrantMap) };
    to_c(m.mmap(vma)) as c_int
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for a [`GrantMap`].
unsafe extern "C" fn grant_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: The file's last reference is gone (mappings hold one each): take back its `Arc`.
    drop(unsafe { Arc::from_raw((*file).private_data as *const GrantMap) });
    0
}

static GRANT_FOPS: Fops = super::fd::fops(grant_ioctl, Some(grant_mmap), grant_release);

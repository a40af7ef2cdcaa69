//! Dom0's side of a DomU's grants (`KEEL_DOMAIN_GRANT_COPY` and `KEEL_DOMAIN_GRANT_MAP`):
//! what the backends use to reach the pages a frontend granted to domain 0.
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr::NonNull;

use crate::domain::Domain;
use crate::error::Error;
use crate::ioctl;
use crate::uapi;

/// One segment of a grant copy: `len` bytes between the DomU's granted page `gref` at
/// `offset` and Dom0's buffer `buf`.
#[derive(Clone, Copy, Debug)]
pub struct GrantCopySeg {
    /// The DomU's grant reference.
    pub gref: u32,
    /// Byte offset in the granted page.
    pub offset: u16,
    /// Bytes; `offset + len <= 4096`.
    pub len: u16,
    /// Dom0's side.
    pub buf: *mut u8,
    /// From `buf` into the guest's page (which needs a writable grant), else the other way.
    pub to_guest: bool,
    /// After the copy: 0, or Xen's `GNTST_*` for this segment.
    pub status: i16,
}

/// A mapping of granted pages into this process, in the order of their references; the
/// grants stay in use until it is dropped.
///
/// # Invariants
///
/// `base` is the start of a live `MAP_SHARED` mapping of `len` bytes that this value owns.
#[derive(Debug)]
pub struct GrantMapping {
    base: NonNull<u8>,
    len: usize,
    writable: bool,
    _fd: OwnedFd,
}

// SAFETY: the mapping is plain memory owned by this value; it is not tied to a thread.
unsafe impl Send for GrantMapping {}
// SAFETY: the value hands out only a raw pointer; sharing it is as safe as sharing the pointer.
unsafe impl Sync for GrantMapping {}

impl GrantMapping {
    /// The first byte. Valid for [`GrantMapping::len`] bytes while this value lives; the guest
    /// writes the pages concurrently, so access them through raw pointers only.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Bytes mapped (4096 per reference).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: a map has at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the pages were mapped writable.
    pub fn writable(&self) -> bool {
        self.writable
    }
}

impl Drop for GrantMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours (type invariant) and nothing refers to it past this
        // value's life; the fd closes after, and the grants are released with the last of them.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl Domain {
    /// `KEEL_DOMAIN_GRANT_COPY`: copies every segment (in batches of the module's maximum),
    /// setting each one's `status`.
    ///
    /// # Safety
    ///
    /// Each segment's `buf` is valid for `len` bytes: readable when `to_guest`, else writable,
    /// and not otherwise accessed during the call.
    pub unsafe fn grant_copy(&self, segs: &mut [GrantCopySeg]) -> Result<(), Error> {
        for chunk in segs.chunks_mut(uapi::KEEL_MAX_GRANT_COPY as usize) {
            let mut raw: Vec<uapi::keel_grant_copy_seg> = chunk
                .iter()
                .map(|s| uapi::keel_grant_copy_seg {
                    ref_: s.gref,
                    offset: s.offset,
                    len: s.len,
                    buf: s.buf as u64,
                    flags: if s.to_guest {
                        uapi::KEEL_GRANT_TO_GUEST
                    } else {
                        0
                    },
                    status: 0,
                    pad: 0,
                })
                .collect();
            let arg = uapi::keel_grant_copy {
                count: raw.len() as u32,
                pad: 0,
                segs: raw.as_mut_ptr() as u64,
            };
            // SAFETY: KEEL_DOMAIN_GRANT_COPY is `iow::<keel_grant_copy>`; it reads the
            // segments at `segs` (held by `raw` for the call), writes their status back, and
            // copies to or from each `buf`, which the caller vouches for.
            unsafe {
                ioctl::ioctl_with_ref(
                    self.fd(),
                    "KEEL_DOMAIN_GRANT_COPY",
                    uapi::KEEL_DOMAIN_GRANT_COPY,
                    &arg,
                )
            }?;
            for (s, r) in chunk.iter_mut().zip(&raw) {
                s.status = r.status;
            }
        }
        Ok(())
    }

    /// `KEEL_DOMAIN_GRANT_MAP`: maps the pages of `refs` (all granted to Dom0, writable ones
    /// if `writable`) into this process.
    pub fn grant_map(&self, refs: &[u32], writable: bool) -> Result<GrantMapping, Error> {
        let arg = uapi::keel_grant_map {
            count: refs.len() as u32,
            flags: if writable {
                uapi::KEEL_GRANT_MAP_WRITABLE
            } else {
                0
            },
            refs: refs.as_ptr() as u64,
        };
        // SAFETY: KEEL_DOMAIN_GRANT_MAP is `iow::<keel_grant_map>`; it reads the structure and
        // `count` references at `refs`, which the slice holds for the call, and returns a new
        // fd, which we own below.
        let fd = unsafe {
            ioctl::ioctl_with_ref(
                self.fd(),
                "KEEL_DOMAIN_GRANT_MAP",
                uapi::KEEL_DOMAIN_GRANT_MAP,
                &arg,
            )
        }?;
        // SAFETY: the ioctl returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = refs.len() * 4096;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a new shared mapping chosen by the kernel (address NULL) overlaps nothing of
        // ours; the fd is open for the call.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        let err = |error| Error::Ioctl {
            name: "mmap of a KEEL_DOMAIN_GRANT_MAP fd",
            error,
        };
        if ptr == libc::MAP_FAILED {
            return Err(err(io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| err(io::Error::from_raw_os_error(libc::EFAULT)))?;
        // INVARIANT: mmap succeeded with `len` bytes; this value owns the mapping.
        Ok(GrantMapping {
            base,
            len,
            writable,
            _fd: fd,
        })
    }
}
